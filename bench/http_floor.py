"""`python -m bench.http_floor`: what uvicorn alone costs a request, beside gloro-serve, in one run.

Issue 6's 6C2F target needs the HTTP path far cheaper than it is (docs/benchmarks.md works out
0.10 ms of CPU a request on 2 cores; docs/benchmarks-gpu.md, under 0.1 ms for the GPU ratio). This
measures the floor under that: a bare ASGI app on uvicorn with the server's settings (httptools,
uvloop, no access log) that reads the body and answers a fixed predict-shaped JSON without looking
at it. It is loaded with the same client, body and connections as gloro-serve (a) on the MNIST
model, alternating for a few rounds, and both servers' CPU per request is read from /proc.

    python -m bench.http_floor [--connections 64] [--duration 10] [--rounds 3] [--out FILE]
    python -m bench.http_floor serve-floor --port PORT   # the floor server alone
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

from bench import machine
from bench.load import run_load
from bench.models import ROOT, prepare
from bench.serving import Target, load_with_server_cpu, running, settle, targets

# What gloro-serve answers for one MNIST digit, so both responses are the same size.
FIXED_ANSWER = json.dumps({
    "model": "mnist-2c2f", "version": "1", "epsilon": 0.3,
    "predictions": [{"label": 7, "class_name": "7", "certified": True, "radius": 1.2345678}],
}).encode()
HEADERS = [(b"content-type", b"application/json"), (b"content-length", str(len(FIXED_ANSWER)).encode())]


async def floor_app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """Read the whole request body, answer FIXED_ANSWER; nothing else (lifespan accepted)."""
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return
    more = True
    while more:
        message = await receive()
        more = message.get("more_body", False)
    await send({"type": "http.response.start", "status": 200, "headers": HEADERS})
    await send({"type": "http.response.body", "body": FIXED_ANSWER})


def serve_floor(port: int) -> None:
    import uvicorn

    from server.cli import uvicorn_options
    from server.settings import ServerSettings

    # the settings server/cli.py gives uvicorn, so the floor differs from gloro-serve only in the app
    uvicorn.run(floor_app, **uvicorn_options(ServerSettings(host="127.0.0.1", port=port, log_level="warning")))


def measure(connections: int, duration_s: float, rounds: int, work: Path, client: str) -> dict[str, Any]:
    case = prepare("mnist", work)
    floor = Target("f", "bare ASGI app on uvicorn (reads the body, fixed answer)",
                   [sys.executable, "-m", "bench.http_floor", "serve-floor", "--port", "{port}"], "/v1/predict")
    chosen = [targets(case, "onnxruntime", "cpu", 32, peers=False)[0], floor]
    per_round: list[dict[str, Any]] = []
    for r in range(rounds):
        entry: dict[str, Any] = {}
        for target in chosen if r % 2 == 0 else chosen[::-1]:
            with running(target, case, work / f"floor-{target.key}.log") as server:
                run_load(server.url, case.body, connections, min(duration_s, 2.0), work, client)  # warm up
                settle(server.url, case.body)
                row = load_with_server_cpu(server, case.body, connections, duration_s, work, client)
                cores = row["server_cpu_cores"]
                row["server_cpu_ms_per_request"] = 1000 * cores / row["req_per_s"] if row["req_per_s"] else None
                entry[target.key] = row
                print(f"  round {r + 1} {target.key}: {row['req_per_s']:.0f} req/s, "
                      f"{row['server_cpu_ms_per_request']:.3f} ms CPU/request, errors {row['errors']}", flush=True)
        per_round.append(entry)
    median = {k: {field: statistics.median(e[k][field] for e in per_round)
                  for field in ("req_per_s", "server_cpu_ms_per_request")} for k in ("a", "f")}
    return {"labels": {t.key: t.label for t in chosen}, "connections": connections, "duration_s": duration_s,
            "body_bytes": len(case.body), "rounds": per_round, "median": median,
            "gloro_serve_minus_floor_ms": median["a"]["server_cpu_ms_per_request"]
            - median["f"]["server_cpu_ms_per_request"]}


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["serve-floor"]:
        p = argparse.ArgumentParser(prog="python -m bench.http_floor serve-floor")
        p.add_argument("--port", type=int, required=True)
        serve_floor(p.parse_args(argv[1:]).port)
        return 0
    p = argparse.ArgumentParser(prog="python -m bench.http_floor", description=__doc__.split("\n\n")[0])
    p.add_argument("--connections", type=int, default=64)
    p.add_argument("--duration", type=float, default=10.0, help="seconds per measurement")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--client", choices=["auto", "wrk", "python"], default="auto")
    p.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "http_floor.json")
    args = p.parse_args(argv)
    work = args.out.parent / "tmp" / "http-floor"
    work.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    result = {"command": "python -m bench.http_floor " + " ".join(argv), "machine": machine.describe(ROOT),
              **measure(args.connections, args.duration, args.rounds, work, args.client)}
    result["seconds"] = time.monotonic() - started
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    m = result["median"]
    print(f"bench: at {args.connections} connections, medians of {args.rounds} rounds: gloro-serve "
          f"{m['a']['req_per_s']:.0f} req/s, {m['a']['server_cpu_ms_per_request']:.3f} ms CPU a request; bare "
          f"uvicorn {m['f']['req_per_s']:.0f} req/s, {m['f']['server_cpu_ms_per_request']:.3f} ms -> {args.out}",
          flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
