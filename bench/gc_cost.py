"""`python -m bench.gc_cost`: CPU a predict request costs with Python's garbage-collector settings
and with the server's (`server.cli.settle_heap`: the startup heap frozen, the youngest generation
collected every `--gc-threshold` allocations), in one process, alternating, side by side.

The whole app runs in process with no HTTP (the ASGI app driven with 64 requests at a time, the
MNIST body the serving benchmarks post), its models on onnxruntime with one intra-op thread, and
prometheus_client in its multiprocess mode, as a `--workers` process runs them. Windows of the two
settings alternate in the one process (ABBA...; separate processes differed by more than the
effect), and the medians of process CPU a request are reported, with the collections each setting
made in its windows (count and milliseconds by generation, from `gc.callbacks`) and their time a
request.

    python -m bench.gc_cost [--windows 8] [--window-s 1.5] [--out bench/results/gc_cost.json]
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import statistics
import sys
import time
from pathlib import Path
from typing import Any

from bench import microbench
from bench.models import ROOT, prepare

PROG = "python -m bench.gc_cost"
CONCURRENT = 64


class CollectionLog:
    """Collections and their time, by generation."""

    def __init__(self) -> None:
        self.counts: dict[int, list[float]] = {}
        self._started = 0.0

    def __call__(self, phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            self._started = time.perf_counter()
            return
        generation = self.counts.setdefault(info["generation"], [0, 0.0])
        generation[0] += 1
        generation[1] += time.perf_counter() - self._started

    def summary(self) -> dict[str, dict[str, float]]:
        return {f"gen{g}": {"count": n, "ms": round(t * 1000, 1)} for g, (n, t) in sorted(self.counts.items())}


def scope(body: bytes) -> dict[str, Any]:
    """What uvicorn hands the app for `POST /v1/predict` with a JSON body."""
    return {"type": "http", "asgi": {"version": "3.0", "spec_version": "2.4"}, "http_version": "1.1",
            "server": ("127.0.0.1", 8000), "client": ("127.0.0.1", 50000), "scheme": "http",
            "method": "POST", "root_path": "", "path": "/v1/predict", "raw_path": b"/v1/predict",
            "query_string": b"", "state": {},
            "headers": [(b"host", b"127.0.0.1:8000"), (b"content-length", str(len(body)).encode()),
                        (b"content-type", b"application/json")]}


async def one_request(app: Any, body: bytes) -> int:
    delivered = False
    status = 0

    async def receive() -> dict[str, Any]:
        nonlocal delivered
        if not delivered:
            delivered = True
            return {"type": "http.request", "body": body, "more_body": False}
        await asyncio.Event().wait()  # no disconnect while the request runs
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        nonlocal status
        if message["type"] == "http.response.start":
            status = message["status"]

    await app(scope(body), receive, send)
    return status


async def window(app: Any, body: bytes, seconds: float) -> tuple[float, int]:
    """Microseconds of this process's CPU (event loop and batch thread) a request, and requests."""
    done = 0
    cpu, started = time.process_time(), time.perf_counter()
    while time.perf_counter() - started < seconds:
        statuses = await asyncio.gather(*(one_request(app, body) for _ in range(CONCURRENT)))
        if set(statuses) != {200}:
            raise RuntimeError(f"the app answered {sorted(set(statuses))}")
        done += CONCURRENT
    return (time.process_time() - cpu) / done * 1e6, done


def measure(windows: int, window_s: float) -> dict[str, Any]:
    from server.app import create_app
    from server.cli import settle_heap
    from server.settings import ServerSettings

    python_default = gc.get_threshold()  # a fresh process: Python's own thresholds
    case = prepare("mnist", ROOT / "bench" / "results" / "tmp")
    settings = ServerSettings(repository=case.repository, default_model=case.name, threads=1)
    app = create_app(settings)
    logs = {"python": CollectionLog(), "server": CollectionLog()}
    cpu: dict[str, list[float]] = {"python": [], "server": []}
    requests = {"python": 0, "server": 0}

    def use(setting: str) -> None:
        # Unfrozen, the startup heap is back in the oldest generation, as in a process never frozen.
        if setting == "server":
            settle_heap(settings)  # its own full collection is no window's
        else:
            gc.unfreeze()
            gc.set_threshold(*python_default)

    async def run() -> None:
        async with app.router.lifespan_context(app):
            for _ in range(20):  # warm up: onnxruntime, the first batches
                await asyncio.gather(*(one_request(app, case.body) for _ in range(CONCURRENT)))
            try:
                for i in range(windows):
                    for setting in ("python", "server") if i % 2 == 0 else ("server", "python"):
                        use(setting)
                        gc.callbacks.append(logs[setting])
                        try:
                            us, n = await window(app, case.body, window_s)
                        finally:
                            gc.callbacks.remove(logs[setting])
                        cpu[setting].append(us)
                        requests[setting] += n
            finally:
                use("python")

    import uvloop

    uvloop.run(run())
    return {
        "model": case.name, "concurrent_requests": CONCURRENT, "windows": windows, "window_s": window_s,
        "settings": {"python": f"Python's own: gc.set_threshold{python_default}, nothing frozen",
                     "server": f"server.cli.settle_heap: gc.freeze(), gen0 threshold {settings.gc_threshold}"},
        "cpu_us_per_request": {k: statistics.median(v) for k, v in cpu.items()},
        "cpu_us_per_request_windows": cpu,
        "requests": requests,
        "collections": {k: log.summary() for k, log in logs.items()},
        "collection_us_per_request": {k: sum(g[1] for g in logs[k].counts.values()) / max(1, requests[k]) * 1e6
                                      for k in logs},
    }


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    p = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0])
    p.add_argument("--windows", type=int, default=8, help="windows of each setting, alternating")
    p.add_argument("--window-s", type=float, default=1.5)
    p.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "gc_cost.json")
    args = p.parse_args(argv)
    measured = microbench.measure_as_worker("bench.gc_cost", args.windows, args.window_s)
    microbench.write(args.out, PROG, argv, measured)
    us, gc_us = measured["cpu_us_per_request"], measured["collection_us_per_request"]
    print(f"bench: CPU a request, medians of {args.windows} windows each: Python's settings {us['python']:.1f} us "
          f"(collections {gc_us['python']:.1f}), the server's {us['server']:.1f} us (collections {gc_us['server']:.1f})",
          flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
