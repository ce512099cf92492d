"""`python -m bench.cpu_split`: where a predict request's CPU goes in process, by thread, beside
the in-process ceiling, for the shipped MNIST 2C2F and the 6C2F.

The app runs as a `--workers` process runs it (onnxruntime with one intra-op thread,
prometheus_client's multiprocess mode, `server.cli.settle_heap`), driven in process with 64
requests at a time and no HTTP (`bench.gc_cost`'s driver, the serving benchmarks' body). Each
window reads from /proc (Linux) the CPU time of the event-loop thread and of the batch thread,
and from the app's own metrics the wall time its batches spent in the backend
(`gloro_inference_duration_seconds`). Windows alternate with the in-process ceiling (JSON, base64
and image decoding plus the backend, batches of 32: `bench.serving.ceiling`) in one thread, the
other core idle, and in two, both cores busy as they are while the app runs (the app's event loop
and batch thread share them); its CPU a request is the process's. Medians of `--windows` windows
of each. What the app costs above the ceiling here is its own Python, and what running beside
it costs onnxruntime, before any HTTP (uvicorn's share: `bench.http_floor`).

    python -m bench.cpu_split [--models mnist,cifar] [--windows 5] [--window-s 2] [--out bench/results/cpu_split.json]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import threading
import time
from pathlib import Path
from typing import Any

from bench import machine, microbench
from bench.gc_cost import CONCURRENT, one_request
from bench.models import ROOT, prepare

PROG = "python -m bench.cpu_split"
CEILING_BATCH = 32


def thread_cpu_s(native_id: int) -> float:
    """User plus system CPU seconds of one thread of this process (Linux)."""
    stat = machine.proc_stat(f"/proc/self/task/{native_id}/stat")
    if stat is None:
        raise OSError(f"thread {native_id} of this process has ended")
    return machine.stat_cpu_seconds(stat[1])


def measure(model: str, windows: int, window_s: float) -> dict[str, Any]:
    """In this process (started with the multiprocess metrics directory set): the split for `model`."""
    from bench.serving import ceiling, in_process_backend
    from server.app import create_app
    from server.cli import settle_heap
    from server.settings import ServerSettings

    case = prepare(model, ROOT / "bench" / "results" / "tmp")
    body = case.body
    settings = ServerSettings(repository=case.repository, default_model=case.name, threads=1)
    app = create_app(settings)
    ceiling_model = in_process_backend(case, "onnxruntime", "cpu", 1)
    rows: dict[str, list[float]] = {"event_loop": [], "batch_thread": [], "backend_wall": [], "ceiling": [],
                                    "ceiling_2_threads": []}

    async def app_window(loop_id: int, batch_id: int, inference: Any) -> None:
        loop0, batch0, wall0 = thread_cpu_s(loop_id), thread_cpu_s(batch_id), inference._sum.get()
        done, started = 0, time.perf_counter()
        while time.perf_counter() - started < window_s:
            statuses = await asyncio.gather(*(one_request(app, body) for _ in range(CONCURRENT)))
            if set(statuses) != {200}:
                raise RuntimeError(f"the app answered {sorted(set(statuses))}")
            done += CONCURRENT
        rows["event_loop"].append((thread_cpu_s(loop_id) - loop0) / done * 1e6)
        rows["batch_thread"].append((thread_cpu_s(batch_id) - batch0) / done * 1e6)
        rows["backend_wall"].append((inference._sum.get() - wall0) / done * 1e6)

    def ceiling_window(threads: int, row: str) -> None:
        cpu = time.process_time()
        measured = ceiling(case, ceiling_model, CEILING_BATCH, window_s, threads)
        rows[row].append((time.process_time() - cpu) / measured["requests"] * 1e6)

    async def run() -> None:
        async with app.router.lifespan_context(app):
            for _ in range(20):  # warm up: onnxruntime, the first batches
                await asyncio.gather(*(one_request(app, body) for _ in range(CONCURRENT)))
            settle_heap(settings)
            service = app.state.models.get()
            [batch_thread] = [t for t in threading.enumerate() if t.name.startswith(f"batcher-{case.name}-")]
            assert batch_thread.native_id is not None
            for _ in range(windows):
                await app_window(threading.get_native_id(), batch_thread.native_id, service.metrics.inference)
                # the app's batch thread idles meanwhile: it waits on an empty queue
                ceiling_window(1, "ceiling")
                ceiling_window(2, "ceiling_2_threads")

    import uvloop

    uvloop.run(run())
    split = {k: statistics.median(v) for k, v in rows.items()}
    app_total = split["event_loop"] + split["batch_thread"]
    return {
        "model": case.name, "concurrent_requests": CONCURRENT, "ceiling_batch": CEILING_BATCH,
        "us_per_request": {**split, "app_total": app_total, "app_above_ceiling": app_total - split["ceiling"],
                           "app_above_ceiling_2_threads": app_total - split["ceiling_2_threads"]},
        "windows": rows,
    }


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    p = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0])
    p.add_argument("--models", default="mnist,cifar", help="comma-separated: mnist, cifar")
    p.add_argument("--windows", type=int, default=5, help="windows of the app and of the ceiling, alternating")
    p.add_argument("--window-s", type=float, default=2.0)
    p.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "cpu_split.json")
    args = p.parse_args(argv)
    if not sys.platform.startswith("linux"):
        p.error("reads each thread's CPU time from /proc: Linux only")
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    results = [microbench.measure_as_worker("bench.cpu_split", m, args.windows, args.window_s) for m in models]
    microbench.write(args.out, PROG, argv, {"models": results})
    for r in results:
        us = r["us_per_request"]
        print(f"bench: {r['model']}, CPU a request in process (medians of {args.windows} windows): event loop "
              f"{us['event_loop']:.1f} us, batch thread {us['batch_thread']:.1f} us (backend wall "
              f"{us['backend_wall']:.1f}); ceiling {us['ceiling']:.1f} us in one thread, "
              f"{us['ceiling_2_threads']:.1f} in two; app above them {us['app_above_ceiling']:.1f} and "
              f"{us['app_above_ceiling_2_threads']:.1f} us",
              flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
