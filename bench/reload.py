"""`python -m bench.reload`: requests lost while `gloro-serve --workers N` replaces its workers on
SIGHUP, under clients that open a new connection for every request.

A real server (the shipped MNIST model, `--workers 2` and any `--flag`s given) is loaded by
`--clients` threads, each posting the serving benchmarks' JSON body one request after another, on
a fresh connection each time or, with `--keep-alive`, on one kept-alive connection (reopened
when the server closes it), while SIGHUP is sent `--reloads` times, `--interval-s` apart (each
replacement loads a worker and retires one). Every answer is counted by status, every failure
by its exception's name. `--root` serves another checkout (a worktree of an older commit) for a
before/after comparison.

    python -m bench.reload [--clients 8] [--reloads 3] [--interval-s 6] [--runs 1] [--keep-alive] [--root DIR]
        [--out FILE] [-- FLAGS...]
"""

from __future__ import annotations

import argparse
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import httpx

from bench import machine, microbench
from bench.models import ROOT, prepare
from bench.soak import start_server

PROG = "python -m bench.reload"


def measure(root: Path, flags: list[str], clients: int, reloads: int, interval_s: float,
            keep_alive: bool = False) -> dict[str, Any]:
    case = prepare("mnist", ROOT / "bench" / "results" / "tmp")
    body = case.body
    process, url = start_server(["--repository", str(case.repository), "--default-model", case.name,
                                 "--workers", "2", *flags], root=root)
    outcomes: Counter[str] = Counter()
    lock = threading.Lock()
    stop = threading.Event()

    def client() -> None:
        # A new connection a request (httpx.post opens and closes its own), or with keep_alive one
        # pooled connection a client, reopened when the server closes it.
        with httpx.Client(base_url=url, timeout=30) as pooled:
            post = pooled.post if keep_alive else (lambda path, **kw: httpx.post(url + path, timeout=30, **kw))
            while not stop.is_set():
                try:
                    outcome = str(post("/v1/predict", content=body, headers={"Content-Type": "application/json"}).status_code)
                except httpx.HTTPError as exc:
                    outcome = type(exc).__name__
                with lock:
                    outcomes[outcome] += 1

    try:
        threads = [threading.Thread(target=client) for _ in range(clients)]
        for thread in threads:
            thread.start()
        started = time.monotonic()
        time.sleep(1.0)
        for _ in range(reloads):
            process.send_signal(signal.SIGHUP)
            time.sleep(interval_s)
        stop.set()
        for thread in threads:
            thread.join()
        elapsed = time.monotonic() - started
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(60)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    answered = sum(n for k, n in outcomes.items() if k.isdigit())
    return {"flags": ["--workers", "2", *flags], "clients": clients, "keep_alive": keep_alive, "reloads": reloads,
            "interval_s": interval_s,
            "seconds": elapsed, "requests": sum(outcomes.values()), "answered_200": outcomes.get("200", 0),
            "answered_other": answered - outcomes.get("200", 0), "failed": sum(outcomes.values()) - answered,
            "outcomes": dict(outcomes)}


def server_flags(argv: list[str]) -> tuple[list[str], list[str]]:
    """This command's options, and the server flags after `--`."""
    if "--" not in argv:
        return argv, []
    i = argv.index("--")
    return argv[:i], argv[i + 1 :]


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    own, flags = server_flags(argv)
    p = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0])
    p.add_argument("--clients", type=int, default=8)
    p.add_argument("--reloads", type=int, default=3)
    p.add_argument("--interval-s", type=float, default=6.0, help="seconds between SIGHUPs (and after the last)")
    p.add_argument("--runs", type=int, default=1, help="servers started and reloaded, one after another")
    p.add_argument("--keep-alive", action="store_true", help="each client keeps one connection open (pooled)")
    p.add_argument("--root", type=Path, default=ROOT, help="the checkout to serve")
    p.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "reload.json")
    args = p.parse_args(own)
    runs = [measure(args.root.resolve(), flags, args.clients, args.reloads, args.interval_s, args.keep_alive)
            for _ in range(args.runs)]
    totals = {k: sum(r[k] for r in runs) for k in ("requests", "answered_200", "answered_other", "failed")}
    outcomes: Counter[str] = Counter()
    for r in runs:
        outcomes.update(r["outcomes"])
    served = machine.checkout(args.root)["commit"]
    microbench.write(args.out, PROG, argv, {"served_checkout": str(args.root), "served_commit": served, "runs": runs,
                                            **totals, "outcomes": dict(outcomes)})
    print(f"bench: {totals['requests']} requests through {args.runs} x {args.reloads} SIGHUPs, {args.clients} "
          f"clients: {totals['answered_200']} answered 200, {totals['answered_other']} other answers, "
          f"{totals['failed']} failed {dict(outcomes)}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
