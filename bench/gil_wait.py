"""`python -m bench.gil_wait`: how long a thread returning from a wait without the GIL (a GPU
synchronisation, an onnxruntime run) then waits to get the GIL back while another thread runs
Python, at several GIL switch intervals.

The server's batch thread does this once a batch at least: it lets go of the GIL while the model
runs and needs it back to hand the answers over, while the event loop thread runs Python. Here
the "batch" thread sleeps `--wait-ms` (time.sleep lets go of the GIL, as the model's wait does)
and measures how much later than that it is running Python again; the "loop" thread runs pure
Python in bursts of `--burst-us` separated by idle gaps (select with a timeout, as the event loop
waits for sockets) so that it is busy `duty` of the time. Duty 0 is the baseline: the sleep's own
lateness with nobody holding the GIL. Medians and 90th percentiles of `--waits` waits a setting.

    python -m bench.gil_wait [--intervals-ms 5,1,0.5] [--duties 0,0.75,1] [--wait-ms 0.8] [--out FILE]
"""

from __future__ import annotations

import argparse
import json
import select
import statistics
import sys
import threading
import time
from pathlib import Path
from typing import Any

from bench import machine
from bench.models import ROOT

PROG = "python -m bench.gil_wait"


def busy_python(seconds: float) -> None:
    """Pure Python work (holds the GIL, checks the eval breaker) for `seconds`."""
    end = time.perf_counter() + seconds
    x = 0
    while time.perf_counter() < end:
        for i in range(50):
            x += i


def loop_thread(duty: float, burst_s: float, stop: threading.Event) -> None:
    """Busy `duty` of the time in bursts of `burst_s`, idle without the GIL in between."""
    gap = burst_s * (1 - duty) / duty if 0 < duty < 1 else 0.0
    while not stop.is_set():
        busy_python(burst_s)
        if gap:
            select.select([], [], [], gap)


def lateness(wait_s: float, waits: int) -> list[float]:
    """Seconds past `wait_s` each GIL-free wait took before this thread ran Python again."""
    out = []
    for _ in range(waits):
        started = time.perf_counter()
        time.sleep(wait_s)
        out.append(time.perf_counter() - started - wait_s)
        time.sleep(0.0002)  # the batch thread's own Python between batches, roughly
    return out


def measure(interval_s: float, duty: float, wait_s: float, burst_s: float, waits: int) -> dict[str, Any]:
    previous = sys.getswitchinterval()
    sys.setswitchinterval(interval_s)
    stop = threading.Event()
    loop = threading.Thread(target=loop_thread, args=(duty, burst_s, stop), daemon=True) if duty else None
    try:
        if loop:
            loop.start()
            time.sleep(0.05)
        late: list[float] = []
        waiter = threading.Thread(target=lambda: late.extend(lateness(wait_s, waits)))
        waiter.start()
        waiter.join()
    finally:
        stop.set()
        if loop:
            loop.join()
        sys.setswitchinterval(previous)
    ms = sorted(1000 * t for t in late)
    return {"switch_interval_ms": 1000 * interval_s, "loop_duty": duty, "waits": waits,
            "late_ms_median": statistics.median(ms), "late_ms_p90": ms[int(0.9 * (len(ms) - 1))],
            "late_ms_max": ms[-1]}


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    p = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0])
    p.add_argument("--intervals-ms", default="5,1,0.5", help="GIL switch intervals to try, comma-separated")
    p.add_argument("--duties", default="0,0.75,1", help="the loop thread's busy share, comma-separated (0: none)")
    p.add_argument("--wait-ms", type=float, default=0.8, help="each GIL-free wait (6C2F batch 32 on an H200: 0.8)")
    p.add_argument("--burst-us", type=float, default=2000.0, help="the loop thread's bursts of Python")
    p.add_argument("--waits", type=int, default=200)
    p.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "tmp" / "gil_wait.json")
    args = p.parse_args(argv)
    try:
        intervals = [float(x) / 1000 for x in args.intervals_ms.split(",")]
        duties = [float(x) for x in args.duties.split(",")]
    except ValueError as exc:
        p.error(f"--intervals-ms and --duties take comma-separated numbers: {exc}")
    if any(not 0 < i <= 0.1 for i in intervals) or any(not 0 <= d <= 1 for d in duties) or args.waits < 1:
        p.error("intervals must be in (0, 100] ms, duties in [0, 1], --waits at least 1")
    rows = []
    for interval in intervals:
        for duty in duties:
            row = measure(interval, duty, args.wait_ms / 1000, args.burst_us / 1e6, args.waits)
            rows.append(row)
            print(f"{PROG}: switch {row['switch_interval_ms']:g} ms, loop busy {duty:.0%}: late by "
                  f"{row['late_ms_median']:.3f} ms (median), {row['late_ms_p90']:.3f} (p90)", flush=True)
    result = {"command": f"{PROG} " + " ".join(argv), "machine": machine.describe(ROOT), "wait_ms": args.wait_ms,
              "burst_us": args.burst_us, "rows": rows}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
