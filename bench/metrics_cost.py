"""`python -m bench.metrics_cost`: microseconds of the metric updates the event loop makes for one
predict request (`server.metrics`), in one process and in prometheus_client's multiprocess mode,
which `--workers` uses (each update also written to a memory-mapped file): each written at once,
and as the server makes them, added up by its `LoopTally` and written once an event-loop
iteration that answers 1, 16 or 32 requests (docs/benchmarks.md, item 17).

Beside them, the batch thread's updates for a batch of single-image requests, a request's share:
the queue waits and radii observed one by one with prometheus_client's `observe()` and the queue
depth lowered once a request, against the server's way, `server.metrics.observe_many` and the
depth set once a batch (docs/benchmarks.md, items 15 and 17).

prometheus_client picks its mode when it is imported, so each mode is timed in a child process of
its own. Each figure is the best of `--repeats` timings of `--number` requests.

    python -m bench.metrics_cost [--number 100000] [--repeats 7] [--out bench/results/metrics_cost.json]
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from typing import Any

from bench import microbench
from bench.models import ROOT
from server.metrics import MULTIPROCESS_DIR_VARIABLE

PROG = "python -m bench.metrics_cost"

# The updates of one answered request on the event loop: enqueued, predictions counted, request
# counted and timed (server.batcher.Batcher.submit, ModelService.predict, RequestMetrics). "loop" is
# each written at once (the server before item 17); "loop_tallied" the server's way.
CHILD = """
import asyncio, json, sys, threading, time, timeit
import uvloop
from prometheus_client import CollectorRegistry
from server.metrics import Metrics, multiprocess_mode, observe_many
BATCH_SIZES = (1, 16, 32)
metrics = Metrics(CollectorRegistry())
model = metrics.for_model("m")
depth_lock = threading.Lock()

def show_depth():  # as Batcher._show_depth sets the gauge
    with depth_lock:
        model.queue_depth.set(0)

def one_request():  # the server's updates: tallied, the queue depth set once an iteration
    model.tally.refresh(show_depth)
    model.record_predictions(1, 1)
    metrics.record_request("m", "/v1/predict", 200, 0.004)

children = (metrics.requests.labels("m", "/v1/predict", "200"), metrics.request_duration.labels("m", "/v1/predict"))

def one_request_immediately():  # the updates as the server made them before: each written at once
    model.queue_depth.inc()
    model.certified.inc(1)
    children[0].inc()
    children[1].observe(0.004)

number, repeats = int(sys.argv[1]), int(sys.argv[2])
assert multiprocess_mode() == (sys.argv[3] == "multiprocess")

def one_by_one(waits, radii):
    for w in waits:
        model.queue_depth.dec()
        model.queue_wait.observe(w)
    for r in radii:
        model.radius.observe(r)

def at_once(waits, radii):
    show_depth()
    observe_many(model.queue_wait, waits)
    observe_many(model.radius, radii)

def best_us(call, requests):
    return min(timeit.repeat(call, number=max(1, number // requests), repeat=repeats)) / max(1, number // requests) / requests * 1e6

batches = {}
for size in BATCH_SIZES:
    waits = [0.001 * (i % 7) for i in range(size)]
    radii = [0.25 * (i % 9) for i in range(size)]
    batches[size] = {"one_by_one": best_us(lambda: one_by_one(waits, radii), size),
                     "at_once": best_us(lambda: at_once(waits, radii), size)}
async def iterations(update, requests, rounds):
    # `requests` answered in each event-loop iteration; the loop's turn (sleep(0)) is paid by both ways
    started = time.perf_counter()
    for _ in range(rounds):
        for _ in range(requests):
            update()
        await asyncio.sleep(0)
    return (time.perf_counter() - started) / rounds / requests * 1e6

async def on_the_loop():
    out = {}
    for size in BATCH_SIZES:
        rounds = max(1, number // size)
        best = {"at_once": float("inf"), "tallied": float("inf")}
        for _ in range(repeats):
            best["at_once"] = min(best["at_once"], await iterations(one_request_immediately, size, rounds))
            best["tallied"] = min(best["tallied"], await iterations(one_request, size, rounds))
        out[size] = best
    return out

loop_tallied = uvloop.run(on_the_loop())
print(json.dumps({"loop": min(timeit.repeat(one_request_immediately, number=number, repeat=repeats)) / number * 1e6,
                  "loop_tallied": loop_tallied, "batch": batches}))
"""


def measure(mode: str, number: int, repeats: int) -> dict[str, Any]:
    env = {k: v for k, v in os.environ.items() if k != MULTIPROCESS_DIR_VARIABLE}
    with tempfile.TemporaryDirectory(prefix="gloro-metrics-cost-") as folder:
        if mode == "multiprocess":
            env[MULTIPROCESS_DIR_VARIABLE] = folder
        done = subprocess.run([sys.executable, "-c", CHILD, str(number), str(repeats), mode], cwd=ROOT, env=env,
                              capture_output=True, text=True, check=True)
    return json.loads(done.stdout)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = microbench.parser(PROG, __doc__, number=100_000, repeats=7, out_name="metrics_cost.json").parse_args(argv)
    measured = {mode: measure(mode, args.number, args.repeats) for mode in ("one process", "multiprocess")}
    us = {mode: m["loop"] for mode, m in measured.items()}
    tallied = {mode: m["loop_tallied"] for mode, m in measured.items()}
    batch = {mode: m["batch"] for mode, m in measured.items()}
    result = microbench.write(args.out, PROG, argv, {
        "us_per_request": us, "extra_us": us["multiprocess"] - us["one process"],
        "loop_tallied_us_per_request": tallied, "batch_thread_us_per_request": batch,
    })
    shares = ", ".join(f"batch of {size}: {b['one_by_one']:.2f} one by one, {b['at_once']:.2f} at once"
                       for size, b in batch["multiprocess"].items())
    loop = ", ".join(f"{size} an iteration: {t['at_once']:.2f} at once, {t['tallied']:.2f} tallied"
                     for size, t in tallied["multiprocess"].items())
    print(f"bench: metric updates of one request: {us['one process']:.2f} us in one process, "
          f"{us['multiprocess']:.2f} us in multiprocess mode (+{result['extra_us']:.2f}) written at once; "
          f"on a running event loop, multiprocess: {loop}; the batch thread's, multiprocess, a request's share: {shares}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
