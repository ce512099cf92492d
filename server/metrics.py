"""Prometheus metrics, on a registry the app is given (never the global one).

Labels stay bounded: model names come from the repository, routes are templates, status codes
are three digits. Under `--workers` (server/workers.py) prometheus_client runs in its multiprocess
mode and /metrics adds up every worker's series.
"""

from __future__ import annotations

import asyncio
import os
from bisect import bisect_left
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest, multiprocess

# prometheus_client chooses its multiprocess mode from this variable when it is first imported.
MULTIPROCESS_DIR_VARIABLE = "PROMETHEUS_MULTIPROC_DIR"


def multiprocess_mode() -> bool:
    """Whether this process writes its metrics for others to add up (prometheus_client's test)."""
    return MULTIPROCESS_DIR_VARIABLE in os.environ

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)
RADIUS_BUCKETS = (0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 1.58, 2.0, 3.0, 5.0)


def observe_many(histogram: Histogram, values: Iterable[float]) -> None:
    """`histogram.observe(v)` for every v in `values`, as one update a bucket hit plus one of the
    sum: under --workers each update is a locked write to a memory-mapped file, and a batch's
    radii and queue waits observed one by one cost about 5 us a single-image request, 0.7-1.2 us
    this way at batches of 16-32 (`python -m bench.metrics_cost`; docs/benchmarks.md, item 15).

    prometheus_client has no public bulk observe, so this updates the child's bucket and sum
    values itself, counting v in the first bucket whose bound is >= v (NaN in none), as observe()
    does; tests/server/test_server_metrics.py checks the result is observe()'s.
    """
    bounds = histogram._upper_bounds
    hits: dict[int, int] = {}
    total = 0.0
    for v in values:
        total += v
        if v == v:  # not NaN
            bucket = bisect_left(bounds, v)
            hits[bucket] = hits.get(bucket, 0) + 1
    if not hits and total == 0.0:
        return
    histogram._sum.inc(total)
    for bucket, count in hits.items():
        histogram._buckets[bucket].inc(count)


class LoopTally:
    """The event loop's counter increments and histogram observations, added up in memory and
    written once an event-loop iteration, and the gauges it changed set once too (`refresh`).

    Under load one iteration resumes a whole batch's requests, and under --workers every write is
    a locked update of a memory-mapped file (`python -m bench.metrics_cost`; docs/benchmarks.md,
    item 17). The writes are made by a callback queued on the first update of an iteration
    (`call_soon`), which runs before the loop handles any more I/O; `flush()` also runs before
    /metrics is answered and at shutdown. Outside a running event loop an update is written at
    once. Event-loop thread only: the batch threads write their own (`observe_many`).
    """

    def __init__(self) -> None:
        self._counts: dict[Counter, float] = {}
        self._observations: dict[Histogram, list[float]] = {}
        self._refreshes: dict[Callable[[], None], None] = {}  # an ordered set
        self._queued = False

    def inc(self, counter: Counter, amount: float = 1.0) -> None:
        self._counts[counter] = self._counts.get(counter, 0.0) + amount
        if not self._queued:
            self._queue_flush()

    def observe(self, histogram: Histogram, value: float) -> None:
        values = self._observations.get(histogram)
        if values is None:
            self._observations[histogram] = [value]
        else:
            values.append(value)
        if not self._queued:
            self._queue_flush()

    def refresh(self, update: Callable[[], None]) -> None:
        """Call `update` (which sets a gauge) once with this iteration's writes, however often asked."""
        self._refreshes[update] = None
        if not self._queued:
            self._queue_flush()

    def _queue_flush(self) -> None:
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            self.flush()
            return
        self._queued = True
        loop.call_soon(self.flush)

    def flush(self) -> None:
        """Write what was added up (a flush with nothing to write writes nothing)."""
        self._queued = False
        counts, self._counts = self._counts, {}
        observations, self._observations = self._observations, {}
        refreshes, self._refreshes = self._refreshes, {}
        for counter, amount in counts.items():
            counter.inc(amount)
        for histogram, values in observations.items():
            observe_many(histogram, values)
        for update in refreshes:
            update()


@dataclass(frozen=True)
class ModelMetrics:
    """The children of the per-model series, resolved once so the hot path does no label lookups."""

    queue_wait: Histogram
    inference: Histogram
    batch_size: Histogram
    radius: Histogram
    certified: Counter
    abstained: Counter
    queue_depth: Gauge
    request_compute: Counter
    last_inference: Gauge
    tally: LoopTally = field(default_factory=LoopTally)

    def record_predictions(self, certified: int, total: int) -> None:
        """On the event loop: the predictions of one answer, certified or abstained."""
        if certified:
            self.tally.inc(self.certified, certified)
        if total - certified:
            self.tally.inc(self.abstained, total - certified)


class Metrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        self.requests = Counter(
            "gloro_requests", "HTTP requests answered", ["model", "route", "status"], registry=registry
        )
        self.request_duration = Histogram(
            "gloro_request_duration_seconds", "time from request to response",
            ["model", "route"], buckets=LATENCY_BUCKETS, registry=registry,
        )
        self.queue_wait = Histogram(
            "gloro_queue_wait_seconds", "time a request waited before its batch ran",
            ["model"], buckets=LATENCY_BUCKETS, registry=registry,
        )
        self.inference = Histogram(
            "gloro_inference_duration_seconds", "time of one forward pass (one batch)",
            ["model"], buckets=LATENCY_BUCKETS, registry=registry,
        )
        self.batch_size = Histogram(
            "gloro_batch_size", "images per forward pass", ["model"], buckets=BATCH_BUCKETS,
            registry=registry,
        )
        self.predictions = Counter(
            "gloro_predictions", "predictions returned, certified at the request's eps or abstained",
            ["model", "outcome"], registry=registry,
        )
        self.radius = Histogram(
            "gloro_certified_radius", "certified l2 radius of each prediction", ["model"],
            buckets=RADIUS_BUCKETS, registry=registry,
        )
        # With gloro_requests_total and the duration histogram, what the Open Inference Protocol's
        # statistics extension reports (server/model_stats.py): the histogram's sum mixes answers
        # of every status, and Triton's "success" duration counts only the 200s.
        self.successful_request_seconds = Counter(
            "gloro_successful_request_seconds", "time from request to response, summed over the "
            "inference requests answered 200", ["model"], registry=registry,
        )
        self.request_compute = Counter(
            "gloro_request_compute_seconds", "forward-pass time summed over the requests each batch "
            "answered (a batch of 8 requests that ran 2 ms adds 16 ms)", ["model"], registry=registry,
        )
        self.last_inference = Gauge(
            "gloro_last_inference_timestamp_seconds", "Unix time the model's last batch finished",
            ["model"], registry=registry, multiprocess_mode="max",
        )
        self._request_children: dict[tuple[str, str, int], tuple[Counter, Histogram, Counter | None]] = {}
        self.tally = LoopTally()
        # Set by the batcher whenever its number changes (Batcher._show_depth; a gauge read by a
        # function at scrape time would see only the worker that answers the scrape); with
        # --workers the sum over the workers alive.
        self.queue_depth = Gauge(
            "gloro_queue_depth", "requests queued, their batch not yet running", ["model"],
            registry=registry, multiprocess_mode="livesum",
        )

    def current(self) -> CollectorRegistry:
        """The series as they stand: this process's, or with --workers every worker's added up."""
        self.tally.flush()
        if not multiprocess_mode():
            return self.registry
        merged = CollectorRegistry()
        multiprocess.MultiProcessCollector(merged)
        return merged

    def exposition(self) -> bytes:
        """The text /metrics answers."""
        return generate_latest(self.current())

    def close(self) -> None:
        """At a worker's exit: its queue depth leaves the sum (its counters stay in the totals)."""
        self.tally.flush()
        if multiprocess_mode():
            multiprocess.mark_process_dead(os.getpid())

    def for_model(self, model: str) -> ModelMetrics:
        return ModelMetrics(
            queue_wait=self.queue_wait.labels(model),
            inference=self.inference.labels(model),
            batch_size=self.batch_size.labels(model),
            radius=self.radius.labels(model),
            certified=self.predictions.labels(model, "certified"),
            abstained=self.predictions.labels(model, "abstained"),
            queue_depth=self.queue_depth.labels(model),
            request_compute=self.request_compute.labels(model),
            last_inference=self.last_inference.labels(model),
            tally=self.tally,
        )

    def record_request(self, model: str, route: str, status: int, seconds: float) -> None:
        key = (model, route, status)
        children = self._request_children.get(key)
        if children is None:  # label values are bounded, so this cache is too
            succeeded = self.successful_request_seconds.labels(model) if model and status == 200 else None
            children = (self.requests.labels(model, route, str(status)), self.request_duration.labels(model, route),
                        succeeded)
            self._request_children[key] = children
        self.tally.inc(children[0])
        self.tally.observe(children[1], seconds)
        if children[2] is not None:
            self.tally.inc(children[2], seconds)
