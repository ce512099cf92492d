"""The Open Inference Protocol's statistics extension (Triton's `model_stats`), read from the
Prometheus series the server keeps, so under --workers it adds up every worker as /metrics does.
Two series exist for it: gloro_successful_request_seconds (one more number a request, added up
once an event-loop iteration) and gloro_request_compute_seconds (one a batch).

Per model, in Triton's terms (durations in ns, each summed over requests):
- success / fail: inference requests answered 200 / anything else, and their time in the server;
- queue: time from a request's arrival at the batcher to the start of its (first) batch;
- compute_infer: the forward pass of each batch holding (part of) each request; compute_input and
  compute_output are part of it here (the batch thread stacks the inputs and splits the outputs
  around the backend call), so they count the same requests in 0 ns;
- inference_count / execution_count: images run / forward passes (batches);
- last_inference: ms since the Unix epoch when the model's last batch finished, 0 if none ran.
A batch whose model raised adds nothing but its requests' failures, as in Triton; a request
answered 504 while its batch still ran is a failure whose batch's work is counted all the same.
There is no response cache (cache_hit and cache_miss read 0) and no per-batch-size breakdown
(batch_stats is empty; gloro_batch_size on /metrics has the distribution).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from typing import Any

from prometheus_client import CollectorRegistry

_DURATIONS = ("success", "fail", "queue", "compute_input", "compute_infer", "compute_output", "cache_hit", "cache_miss")
_SUMMED = frozenset({
    "gloro_request_duration_seconds_sum", "gloro_successful_request_seconds_total", "gloro_queue_wait_seconds_sum",
    "gloro_queue_wait_seconds_count", "gloro_request_compute_seconds_total", "gloro_batch_size_sum",
    "gloro_batch_size_count",
})
_LATEST = "gloro_last_inference_timestamp_seconds"


def _ns(seconds: float) -> int:
    return max(0, round(seconds * 1e9))


def _by_model(registry: CollectorRegistry) -> dict[str, dict[str, float]]:
    """model -> the series this module reads, added up over routes and statuses (and workers,
    which `Metrics.current` has merged)."""
    sums: dict[str, dict[str, float]] = defaultdict(lambda: defaultdict(float))
    for family in registry.collect():
        for sample in family.samples:
            model = sample.labels.get("model")
            if not model:
                continue
            if sample.name == "gloro_requests_total":
                sums[model]["ok" if sample.labels.get("status") == "200" else "failed"] += sample.value
            elif sample.name in _SUMMED:
                sums[model][sample.name] += sample.value
            elif sample.name == _LATEST:
                sums[model][_LATEST] = max(sums[model][_LATEST], sample.value)
    return sums


def triton_statistics(registry: CollectorRegistry, models: Iterable[tuple[str, str]]) -> dict[str, Any]:
    """The body of GET /v2/models[/{name}[/versions/{v}]]/stats for these (name, version) pairs."""
    sums = _by_model(registry)
    stats = []
    for name, version in models:
        s = sums.get(name, {})
        ok, failed = int(s.get("ok", 0)), int(s.get("failed", 0))
        total_s, ok_s = s.get("gloro_request_duration_seconds_sum", 0.0), s.get("gloro_successful_request_seconds_total", 0.0)
        durations = {key: {"count": 0, "ns": 0} for key in _DURATIONS}
        durations["success"] = {"count": ok, "ns": _ns(ok_s)}
        durations["fail"] = {"count": failed, "ns": _ns(total_s - ok_s)}
        ran = int(s.get("gloro_queue_wait_seconds_count", 0))
        durations["queue"] = {"count": ran, "ns": _ns(s.get("gloro_queue_wait_seconds_sum", 0.0))}
        durations["compute_infer"] = {"count": ran, "ns": _ns(s.get("gloro_request_compute_seconds_total", 0.0))}
        # the same count as compute_infer's: Triton's counts agree, and perf_analyzer stops if not
        durations["compute_input"]["count"] = durations["compute_output"]["count"] = ran
        stats.append({
            "name": name,
            "version": version,
            "last_inference": round(s.get(_LATEST, 0.0) * 1000),
            "inference_count": int(s.get("gloro_batch_size_sum", 0)),
            "execution_count": int(s.get("gloro_batch_size_count", 0)),
            "inference_stats": durations,
            "batch_stats": [],
        })
    return {"model_stats": stats}
