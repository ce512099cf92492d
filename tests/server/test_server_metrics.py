"""The metric updates the batcher makes a batch at a time are the ones made one by one."""

from __future__ import annotations

import math

import numpy as np
import pytest
from prometheus_client import CollectorRegistry, Histogram

from server.metrics import LATENCY_BUCKETS, RADIUS_BUCKETS, observe_many


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
