"""`python -m bench.perf_analyzer`: gloro-serve measured by NVIDIA's perf_analyzer, Triton's own
load generator, over the Open Inference Protocol (binary tensors, one image a request), with
perf_analyzer's server-side breakdown read from the statistics extension.

    bash bench/install_perf_analyzer.sh
    python -m bench.perf_analyzer --model mnist --server 'default=' --server 'w2=--workers 2 --reuse-port' \\
        --concurrency 1 8 64 --protocol http grpc grpc-stream

With `--protocol http grpc grpc-stream` every server also serves gRPC (`--grpc-port`) and perf_analyzer
measures it each way in turn (grpc-stream: `-i grpc --streaming`, requests on one stream a client
thread), each level in each protocol before the next level; those rows are LABEL@PROTOCOL (no label
holds an @, so none can be taken for another's).

Every server named starts at once; each concurrency level loads them in turn (the same level for
each before the next), so the servers are compared within one stretch of the machine's weather.
The images are real MNIST test digits (the 6C2F gets random RGB ones, as the main suite does).
Results: JSON at --out (perf_analyzer's CSV rows, parsed), a table on stdout.
"""

from __future__ import annotations

import csv
import json
import shutil
import subprocess
import sys
from contextlib import ExitStack
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from bench.compare import CompareError, measured, parse_specs, server_parser, start_servers
from bench.models import ROOT, ModelCase, mnist_digit, prepare, random_rgb
from bench.serving import free_port

PROG = "python -m bench.perf_analyzer"
# perf_analyzer's CSV column -> this benchmark's name (latencies in microseconds)
COLUMNS = {
    "Inferences/Second": "infer_per_s", "p50 latency": "p50_us", "p90 latency": "p90_us",
    "p95 latency": "p95_us", "p99 latency": "p99_us", "Server Queue": "server_queue_us",
    "Server Compute Infer": "server_compute_us", "Network+Server Send/Recv": "network_and_server_us",
}
DEFAULT_STABILITY = 10.0  # perf_analyzer's own default, in percent
# --protocol -> perf_analyzer's flags for it
PROTOCOLS = {"http": ["-i", "http"], "grpc": ["-i", "grpc"], "grpc-stream": ["-i", "grpc", "--streaming"]}


def input_data(case: ModelCase, path: Path, images: int = 16) -> Path:
    """perf_analyzer's --input-data file: `images` inputs in [0, 1], one a request, used in turn."""
    if case.key == "mnist":
        pixels = [mnist_digit(i)[None] for i in range(images)]
    else:
        pixels = [random_rgb(case.input_shape[1:], seed=i).transpose(2, 0, 1) for i in range(images)]
    data = [{"input": {"content": (p / 255).astype(np.float32).ravel().tolist(), "shape": list(case.input_shape)}}
            for p in pixels]
    path.write_text(json.dumps({"data": data}))
    return path


def measure_one(exe: str, case: ModelCase, address: str, protocol: str, data: Path, concurrency: int,
                interval_ms: int, stability: float, work: Path) -> dict[str, Any]:
    """One perf_analyzer run at one concurrency, to host:port `address` over `protocol`: its CSV row, converted."""
    report = work / "perf_analyzer.csv"
    report.unlink(missing_ok=True)
    command = [exe, "-m", case.name, "-u", address, *PROTOCOLS[protocol], "--input-data", str(data),
               "--concurrency-range", str(concurrency), "--measurement-interval", str(interval_ms),
               "--stability-percentage", str(stability), "-f", str(report)]
    run = subprocess.run(command, capture_output=True, text=True, timeout=600)
    if run.returncode != 0 or not report.is_file():
        raise CompareError(f"perf_analyzer failed ({run.returncode}): {(run.stdout + run.stderr).strip()[-400:]}")
    (row,) = list(csv.DictReader(report.open()))
    return {name: float(row[column]) for column, name in COLUMNS.items()}


def perf_analyzer_runs(specs_text: list[str], model: str, concurrency: list[int], interval_ms: int,
                       work: Path, stability: float = DEFAULT_STABILITY,
                       protocols: tuple[str, ...] = ("http",)) -> dict[str, Any]:
    exe = shutil.which("perf_analyzer")
    if exe is None:
        raise CompareError("perf_analyzer is not on PATH; install it with: bash bench/install_perf_analyzer.sh")
    asked = parse_specs(specs_text)
    grpc_ports = {s.label: free_port() for s in asked} if set(protocols) - {"http"} else {}
    specs = [replace(s, flags=[*s.flags, "--grpc-port", str(grpc_ports[s.label])]) if grpc_ports else s
             for s in asked]
    case = prepare(model, work)
    data = input_data(case, work / f"{case.key}-perf-analyzer-input.json")
    said = subprocess.run([exe, "--version"], capture_output=True, text=True)
    version = (said.stdout + said.stderr).strip()  # on stderr
    rows: dict[str, dict[str, Any]] = {}
    with ExitStack() as stack:
        servers = start_servers(stack, specs, case, work, "perf-analyzer")
        for level in concurrency:
            for protocol in protocols:
                for label, server in servers.items():
                    if protocol != "http":
                        row, address = f"{label}@{protocol}", f"127.0.0.1:{grpc_ports[label]}"
                    else:
                        row, address = label, server.url.removeprefix("http://").split("/", 1)[0]
                    measured_row = measure_one(exe, case, address, protocol, data, level, interval_ms, stability, work)
                    rows.setdefault(row, {})[str(level)] = measured_row
                    print(f"bench: {row} at concurrency {level}: {measured_row['infer_per_s']:,.0f} infer/s", flush=True)
    return {"model": case.name, "weights": case.weights, "perf_analyzer": version, "interval_ms": interval_ms,
            "stability_percentage": stability, "protocols": list(protocols),
            # the flags as given: the gRPC port each drew is no part of the configuration
            "servers": {s.label: {"revision": s.revision, "flags": s.flags} for s in asked}, "rows": rows}


def table(rows: dict[str, dict[str, Any]]) -> str:
    lines = ["| server | concurrency | infer/s | p50 ms | p99 ms | server queue ms | server compute ms |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    for label, levels in rows.items():
        for level, r in levels.items():
            lines.append(f"| {label} | {level} | {r['infer_per_s']:,.0f} | {r['p50_us'] / 1000:.2f} | "
                         f"{r['p99_us'] / 1000:.2f} | {r['server_queue_us'] / 1000:.3f} | "
                         f"{r['server_compute_us'] / 1000:.3f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    p = server_parser(PROG, __doc__, "mnist")
    p.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 64], help="concurrency levels")
    p.add_argument("--interval-ms", type=int, default=2000, help="perf_analyzer's measurement window")
    p.add_argument("--stability-percentage", type=float, default=DEFAULT_STABILITY,
                   help="perf_analyzer's: how far three windows in a row may differ for a level to count as "
                   "measured; it gives up after ten windows (a busy shared machine may need more)")
    p.add_argument("--protocol", nargs="+", choices=PROTOCOLS, default=["http"],
                   help="measure over these (grpc, grpc-stream: each server also serves --grpc-port)")
    p.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "tmp" / "perf_analyzer.json")
    args = p.parse_args(argv)
    if any(level < 1 for level in args.concurrency) or args.interval_ms < 100 or args.stability_percentage <= 0:
        p.error("--concurrency levels must be >= 1, --interval-ms >= 100 and --stability-percentage > 0")
    if len(set(args.protocol)) != len(args.protocol):
        p.error("--protocol names each protocol once")

    def measure(work: Path) -> dict[str, Any]:
        return perf_analyzer_runs(args.server, args.model, args.concurrency, args.interval_ms, work,
                                  args.stability_percentage, tuple(args.protocol))

    result = measured(PROG, argv, args.out, measure)
    if result is None:
        return 2
    print(table(result["rows"]))
    print(f"bench: {len(result['servers'])} servers -> {args.out}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
