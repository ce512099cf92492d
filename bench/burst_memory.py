"""`python -m bench.burst_memory`: a server's peak memory when many clients post large requests
at once, and what they got.

`--max-bytes-in-flight` is meant to bound the memory requests take; what a body turns into once
read (Python objects for JSON numbers, float32 pixels for images) can be many times its bytes. For
each server named (LABEL=FLAGS, or LABEL@REV=FLAGS as `bench.compare` takes them) and each kind of
large body of `bench.fairness`, a fresh server process is started, `--clients` requests of that
body are posted at once, and the server's peak resident memory (VmHWM) is read before it stops.

    python -m bench.burst_memory --server 'before@HEAD~1=' --server 'after=' --clients 32
"""

from __future__ import annotations

import asyncio
import sys
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import httpx

from bench.compare import measured, parse_specs, server_parser, start_servers
from bench.fairness import KINDS, Large, large_bodies, parse_kinds
from bench.models import ROOT, prepare

PROG = "python -m bench.burst_memory"


def vm_kib(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"no {field} for process {pid}")


async def burst(base: str, large: Large, clients: int) -> dict[int, int]:
    path, body, headers, _ = large
    async with httpx.AsyncClient(timeout=120, limits=httpx.Limits(max_connections=clients)) as client:
        answers = await asyncio.gather(*[client.post(base + path, content=body, headers=headers) for _ in range(clients)])
    statuses: dict[int, int] = {}
    for answer in answers:
        statuses[answer.status_code] = statuses.get(answer.status_code, 0) + 1
    return statuses


def measure(texts: list[str], model: str, kinds: list[str], clients: int, work: Path) -> dict[str, Any]:
    case = prepare(model, work)
    bodies = large_bodies(case)
    specs = parse_specs(texts)
    rows: list[dict[str, Any]] = []
    for kind in kinds:
        for spec in specs:
            with ExitStack() as stack:  # a fresh process for each: its peak is this burst's
                server = start_servers(stack, [spec], case, work, "burst")[spec.label]
                started = vm_kib(server.pgid, "VmRSS")
                statuses = asyncio.run(burst(server.url.removesuffix("/v1/predict"), bodies[kind], clients))
                peak = vm_kib(server.pgid, "VmHWM")
            rows.append({"server": spec.label, "kind": kind, "clients": clients, "body_bytes": len(bodies[kind][1]),
                         "statuses": statuses, "rss_start_mib": started / 1024, "rss_peak_mib": peak / 1024})
            print(f"  {spec.label} {kind}: {statuses}, peak {peak / 1024:.0f} MiB (from {started / 1024:.0f})", flush=True)
    return {"model": case.name, "servers": {s.label: {"revision": s.revision, "flags": s.flags} for s in specs},
            "rows": rows}


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    p = server_parser(PROG, __doc__, "mnist")
    p.add_argument("--kinds", default="b64,pixels,v2-json", help=f"comma-separated subset of {','.join(KINDS[1:])}")
    p.add_argument("--clients", type=int, default=32, help="requests posted at once")
    p.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "tmp" / "burst_memory.json")
    args = p.parse_args(argv)

    def run(work: Path) -> dict[str, Any]:
        return measure(args.server, args.model, parse_kinds(args.kinds, KINDS[1:]), args.clients, work)

    result = measured(PROG, argv, args.out, run)
    if result is None:
        return 2
    for row in result["rows"]:
        print(f"| {row['server']} | {row['kind']} | {row['statuses']} | {row['rss_start_mib']:.0f} | {row['rss_peak_mib']:.0f} |")
    print(f"bench: {len(result['rows'])} bursts -> {args.out}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
