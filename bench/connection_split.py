"""`python -m bench.connection_split`: how `--workers` spreads connections over its workers.

Starts each server named (LABEL=FLAGS or LABEL@REV=FLAGS, as `bench.compare` takes them), opens
`--connections` keep-alive connections at once, each sending one request, and counts from /proc
which process holds the server end of each connection; `--bursts` times. A worker that gets few
connections also gets few requests to batch: keep-alive clients stay where they land.

    python -m bench.connection_split --server 'shared@bee72a0=--workers 2' --server 'own=--workers 2 --reuse-port'
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import shlex
import socket
import sys
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Any

from bench import machine
from bench.compare import CompareError, checkout, parse_spec
from bench.models import ROOT, prepare
from bench.serving import Target, running, serve_command

PROG = "python -m bench.connection_split"
ESTABLISHED = "01"


def connection_holders(port: int) -> dict[int, int]:
    """{pid: connections} for the server ends of established TCP connections on local `port`."""
    inodes = set()
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        if int(fields[1].split(":")[1], 16) == port and fields[3] == ESTABLISHED:
            inodes.add(fields[9])
    counts: dict[int, int] = {}
    for fd in glob.glob("/proc/[0-9]*/fd/*"):
        try:
            if os.readlink(fd).removeprefix("socket:[").removesuffix("]") in inodes:
                pid = int(fd.split("/")[2])
                counts[pid] = counts.get(pid, 0) + 1
        except OSError:  # closed meanwhile
            continue
    return counts


def burst(port: int, connections: int) -> list[int]:
    """Connections held by each process, fewest first, with `connections` open at once."""
    opened = [socket.create_connection(("127.0.0.1", port), timeout=10) for _ in range(connections)]
    try:
        for c in opened:
            c.sendall(b"GET /healthz HTTP/1.1\r\nHost: bench\r\n\r\n")
        for c in opened:
            c.recv(4096)  # answered: accepted by some worker
        return sorted(connection_holders(port).values())
    finally:
        for c in opened:
            c.close()
        time.sleep(0.3)  # the closed connections leave the workers before the next burst


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    p = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0])
    p.add_argument("--server", action="append", required=True, metavar="LABEL[@REV]=FLAGS")
    p.add_argument("--connections", type=int, default=64)
    p.add_argument("--bursts", type=int, default=20)
    p.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "tmp" / "connection_split.json")
    args = p.parse_args(argv)
    work = args.out.resolve().parent / "tmp" / "connection_split"
    work.mkdir(parents=True, exist_ok=True)
    try:
        specs = [parse_spec(text) for text in args.server]
        case = prepare("mnist", work)
        splits: dict[str, Any] = {}
        for spec in specs:
            with ExitStack() as stack:
                cwd = stack.enter_context(checkout(spec.revision, work)) if spec.revision else ROOT
                target = Target(spec.label, spec.label, [*serve_command(case), *spec.flags], "/v1/predict", cwd)
                server = stack.enter_context(running(target, case, work / f"{spec.label}.log"))
                port = int(server.url.split(":")[2].split("/")[0])
                rows = [burst(port, args.connections) for _ in range(args.bursts)]
            fewest = [r[0] if len(r) > 1 else 0 for r in rows]  # one holder: the other worker got none
            splits[spec.label] = {"revision": spec.revision, "flags": spec.flags, "bursts": rows,
                                  "fewest_min": min(fewest), "fewest_median": sorted(fewest)[len(fewest) // 2]}
            print(f"{spec.label}: fewest connections on a worker, per burst: {fewest}", flush=True)
    except CompareError as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 2
    args.out.write_text(json.dumps({"command": f"{PROG} " + shlex.join(argv), "machine": machine.describe(ROOT),
                                    "connections": args.connections, "splits": splits}, indent=1) + "\n")
    print(f"bench: {len(specs)} servers, {args.bursts} bursts each -> {args.out}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
