"""The metric updates made a batch at a time (the batcher) or an event-loop iteration at a time (the
loop's tally) are the ones made one by one, and a scrape or a shutdown never misses one."""

from __future__ import annotations

import asyncio
import math

import numpy as np
import pytest
from prometheus_client import CollectorRegistry, Counter, Histogram

from server.metrics import LATENCY_BUCKETS, RADIUS_BUCKETS, LoopTally, Metrics, observe_many


def histogram_state(histogram: Histogram) -> tuple[dict[str, float], float]:
    """Cumulative bucket counts by bound, and the sum, as /metrics shows them."""
    samples = histogram.collect()[0].samples
    buckets = {s.labels["le"]: s.value for s in samples if s.name.endswith("_bucket")}
    total = next(s.value for s in samples if s.name.endswith("_sum"))
    return buckets, total


def pair(buckets: tuple[float, ...]) -> tuple[Histogram, Histogram]:
    return tuple(Histogram("h", "h", buckets=buckets, registry=CollectorRegistry()) for _ in range(2))


@pytest.mark.parametrize(
    ("buckets", "values"),
    [
        # on a bound (counts in that bucket), between bounds, zero, past the last finite bound
        (RADIUS_BUCKETS, [0.0, 0.05, 0.0500001, 0.3, 0.31, 1.58, 4.9, 5.0, 7.5, 1e9]),
        (LATENCY_BUCKETS, [0.0004, 0.001, 0.002, 0.0021, 0.9, 30.0, 31.0]),
        (RADIUS_BUCKETS, np.random.default_rng(0).exponential(0.5, 1000).astype(np.float32)),
    ],
)
def test_observe_many_gives_the_buckets_and_sum_observe_gives(buckets, values) -> None:
    one_by_one, at_once = pair(buckets)
    for v in np.asarray(values).tolist():
        one_by_one.observe(v)
    observe_many(at_once, np.asarray(values).tolist())
    expected_buckets, expected_sum = histogram_state(one_by_one)
    got_buckets, got_sum = histogram_state(at_once)
    assert got_buckets == expected_buckets
    assert got_sum == pytest.approx(expected_sum, rel=1e-9)
    assert got_buckets["+Inf"] == len(values)


def test_observe_many_of_nothing_changes_nothing_and_nan_counts_in_no_bucket() -> None:
    one_by_one, at_once = pair(RADIUS_BUCKETS)
    observe_many(at_once, [])
    assert histogram_state(at_once) == histogram_state(one_by_one)
    one_by_one.observe(float("nan"))
    observe_many(at_once, [float("nan")])
    (expected, _), (got, total) = histogram_state(one_by_one), histogram_state(at_once)
    assert got == expected and got["+Inf"] == 0 and math.isnan(total)


def test_the_loop_tally_writes_at_once_outside_an_event_loop() -> None:
    counter = Counter("c", "c", registry=CollectorRegistry())
    LoopTally().inc(counter, 2)
    assert counter._value.get() == 2


def test_the_loop_tally_writes_an_iterations_updates_once_that_iteration_is_over() -> None:
    registry = CollectorRegistry()
    counter = Counter("c", "c", registry=registry)
    one_by_one, tallied = pair(LATENCY_BUCKETS)
    values = [0.0004, 0.001, 0.02, 0.02, 31.0]
    tally = LoopTally()

    async def one_iteration() -> tuple[float, float]:
        for v in values:
            tally.inc(counter)
            tally.observe(tallied, v)
            one_by_one.observe(v)
        unwritten = counter._value.get()
        await asyncio.sleep(0)  # the loop's next iteration runs the queued write first
        return unwritten, counter._value.get()

    assert asyncio.run(one_iteration()) == (0, len(values))
    assert histogram_state(tallied) == histogram_state(one_by_one)


def test_a_refresh_asked_for_many_times_in_an_iteration_runs_once_after_it() -> None:
    tally = LoopTally()
    calls: list[str] = []

    def update() -> None:
        calls.append("set")

    async def one_iteration() -> tuple[int, int]:
        for _ in range(3):
            tally.refresh(update)
        during = len(calls)
        await asyncio.sleep(0)
        return during, len(calls)

    assert asyncio.run(one_iteration()) == (0, 1)


def test_a_scrape_and_a_shutdown_include_updates_of_the_current_iteration() -> None:
    metrics = Metrics(CollectorRegistry())
    model = metrics.for_model("m")

    async def answered_then_scraped() -> tuple[bytes, float | None]:
        metrics.record_request("m", "/v1/predict", 200, 0.004)
        model.record_predictions(certified=2, total=3)
        text = metrics.exposition()  # before the loop's next iteration
        metrics.record_request("m", "/v1/predict", 503, 0.001)
        metrics.close()
        return text, metrics.registry.get_sample_value(
            "gloro_requests_total", {"model": "m", "route": "/v1/predict", "status": "503"})

    text, after_close = asyncio.run(answered_then_scraped())
    assert b'gloro_requests_total{model="m",route="/v1/predict",status="200"} 1.0' in text
    assert b'gloro_predictions_total{model="m",outcome="certified"} 2.0' in text
    assert b'gloro_predictions_total{model="m",outcome="abstained"} 1.0' in text
    assert b'gloro_request_duration_seconds_count{model="m",route="/v1/predict"} 1.0' in text
    assert after_close == 1
