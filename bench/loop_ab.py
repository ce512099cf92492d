"""`python -m bench.loop_ab --root OTHER_CHECKOUT`: the event loop's CPU a predict request, this
checkout's app against another checkout's, side by side.

Each app runs in a process of its own, as a `--workers` process runs it (onnxruntime with one
intra-op thread, prometheus_client's multiprocess mode, `server.cli.settle_heap`), driven in
process with 64 requests at a time and no HTTP (`bench.gc_cost`'s driver and body). The two
processes take turns, one window each, the order alternating (ABBA...), the other one idle
meanwhile, so both see the same machine; the CPU time of each event-loop thread is read from
the thread's own clock. Reported: each side's median, and the median of the paired differences
(other minus this), which the machine's drift from window to window moves least. Changes of a
few microseconds do not show in separate runs on a shared machine (bench.cpu_split's medians
moved by 77-106 us between runs of one checkout).

    git worktree add /tmp/before <rev>
    python -m bench.loop_ab --root /tmp/before [--models mnist,cifar] [--windows 40] [--out FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import IO, Any

from bench import machine, microbench
from bench.models import ROOT

PROG = "python -m bench.loop_ab"

# Run in each checkout (its own `server` and `bench` packages): build the app, warm it up, then
# answer every "window" line read on stdin with one window's microseconds of event-loop CPU a
# request, until stdin closes. Only names that every checkout since bench.gc_cost has.
CHILD = """
import asyncio, json, sys, time
from pathlib import Path
from bench.gc_cost import CONCURRENT, one_request
from bench.models import prepare
from server.app import create_app
from server.cli import settle_heap
from server.settings import ServerSettings

model, batches, work = sys.argv[1], int(sys.argv[2]), Path(sys.argv[3])
case = prepare(model, work)  # a folder of its own: two children laying out one folder at once raced
settings = ServerSettings(repository=case.repository, default_model=case.name, threads=1)
app = create_app(settings)

async def run():
    async with app.router.lifespan_context(app):
        for _ in range(20):
            await asyncio.gather(*(one_request(app, case.body) for _ in range(CONCURRENT)))
        settle_heap(settings)
        print(json.dumps({"ready": case.name}), flush=True)
        for line in sys.stdin:
            cpu, done = time.thread_time(), 0
            for _ in range(batches):
                statuses = await asyncio.gather(*(one_request(app, case.body) for _ in range(CONCURRENT)))
                if set(statuses) != {200}:
                    raise SystemExit(f"the app answered {sorted(set(statuses))}")
                done += CONCURRENT
            print(json.dumps({"us": (time.thread_time() - cpu) / done * 1e6}), flush=True)

import uvloop
uvloop.run(run())
"""


def _read(child: subprocess.Popen) -> dict[str, Any]:
    stdout: IO[str] = child.stdout  # type: ignore[assignment]
    line = stdout.readline()
    if not line:
        raise RuntimeError(f"a measuring process exited ({child.wait()}): {child.stderr.read()[-1500:]}")  # type: ignore[union-attr]
    return json.loads(line)


def compare(model: str, roots: dict[str, Path], windows: int, batches: int) -> dict[str, Any]:
    """Windows of each side's app in turn; microseconds of event-loop CPU a request."""
    from server.metrics import MULTIPROCESS_DIR_VARIABLE

    children: dict[str, subprocess.Popen] = {}
    folders = [tempfile.TemporaryDirectory(prefix="gloro-bench-") for _ in roots]
    works = [tempfile.TemporaryDirectory(prefix="gloro-bench-models-") for _ in roots]
    try:
        for (side, root), folder, work in zip(roots.items(), folders, works):
            env = {**os.environ, MULTIPROCESS_DIR_VARIABLE: folder.name, "PYTHONPATH": str(root)}
            children[side] = subprocess.Popen([sys.executable, "-c", CHILD, model, str(batches), work.name], cwd=root,
                                              env=env,
                                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                              text=True)
        name = {side: _read(child)["ready"] for side, child in children.items()}
        rows: dict[str, list[float]] = {side: [] for side in roots}
        for window in range(windows):
            order = list(roots) if window % 2 == 0 else list(roots)[::-1]
            for side in order:
                children[side].stdin.write("window\n")  # type: ignore[union-attr]
                children[side].stdin.flush()  # type: ignore[union-attr]
                rows[side].append(_read(children[side])["us"])
    finally:
        for child in children.values():
            child.stdin.close()  # type: ignore[union-attr]
            child.wait(30)
        for folder in folders + works:
            folder.cleanup()
    this, other = list(roots)
    return {"model": next(iter(name.values())), "concurrent_requests": 64, "windows": windows,
            "event_loop_us": {side: statistics.median(v) for side, v in rows.items()},
            "paired_difference_us": statistics.median(b - a for a, b in zip(rows[this], rows[other])),
            "per_window": rows}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    p = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0])
    p.add_argument("--root", type=Path, required=True, help="the other checkout (e.g. a git worktree)")
    p.add_argument("--models", default="mnist,cifar", help="comma-separated: mnist, cifar")
    p.add_argument("--windows", type=int, default=40, help="windows of each side, alternating")
    p.add_argument("--batches", type=int, default=15, help="rounds of 64 requests a window")
    p.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "loop_ab.json")
    args = p.parse_args(argv)
    if not (args.root / "server" / "app.py").is_file():
        p.error(f"--root {args.root}: not a gloro-serve checkout (no server/app.py)")
    if args.windows < 2 or args.batches < 1:
        p.error("--windows must be at least 2 and --batches at least 1")
    roots = {"this": ROOT, "other": args.root.resolve()}
    results = [compare(m.strip(), roots, args.windows, args.batches) for m in args.models.split(",") if m.strip()]
    microbench.write(args.out, PROG, argv, {"other_root": str(roots["other"]),
                                            "other_checkout": machine.checkout(roots["other"]), "models": results})
    for r in results:
        us = r["event_loop_us"]
        print(f"bench: {r['model']}, event-loop CPU a request in process (medians of {r['windows']} windows): "
              f"this checkout {us['this']:.1f} us, the other {us['other']:.1f} us; paired difference (other - "
              f"this) {r['paired_difference_us']:+.1f} us", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
