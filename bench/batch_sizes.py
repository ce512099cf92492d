"""`python -m bench.batch_sizes`: what an image costs the backend at each batch size.

The server's largest batch is not always the model's cheapest an image: on a CPU with small
caches a compute-bound model can run faster in smaller batches (docs/benchmarks.md, "The
ceiling's batch size"). This runs the server's backend (`server.backends`, the server's session
settings, one intra-op thread as a `--workers` process runs it) on the same random images at each
batch size, the sizes interleaved round by round, and reports the median time an image.

    python -m bench.batch_sizes --model cifar [--batches 1 4 8 16 32 64] [--rounds 6] [--round-s 1.5]
"""

from __future__ import annotations

import argparse
import json
import shlex
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from bench import machine
from bench.models import ROOT, prepare
from bench.serving import in_process_backend

PROG = "python -m bench.batch_sizes"


def time_an_image(model: Any, batch: np.ndarray, seconds: float) -> float:
    """Microseconds an image, batches of `batch` run back to back for `seconds`."""
    model.run(batch)
    started, images = time.perf_counter(), 0
    while time.perf_counter() - started < seconds:
        model.run(batch)
        images += len(batch)
    return (time.perf_counter() - started) / images * 1e6


def measure(model_key: str, batches: list[int], rounds: int, round_s: float, threads: int, work: Path) -> dict[str, Any]:
    case = prepare(model_key, work)
    model = in_process_backend(case, "onnxruntime", "cpu", threads)
    rng = np.random.default_rng(0)
    inputs = {b: rng.random((b, *case.input_shape), dtype=np.float32) for b in batches}
    per_round: list[dict[int, float]] = []
    for r in range(rounds):
        order = batches[r % len(batches):] + batches[: r % len(batches)]  # rotate who goes first
        per_round.append({b: time_an_image(model, inputs[b], round_s) for b in order})
    medians = {b: statistics.median(row[b] for row in per_round) for b in batches}
    return {"model": case.name, "weights": case.weights, "threads": threads, "round_s": round_s,
            "us_per_image": {str(b): medians[b] for b in batches},
            "rounds": [{str(b): v for b, v in row.items()} for row in per_round]}


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    p = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0])
    p.add_argument("--model", choices=["mnist", "cifar"], default="cifar")
    p.add_argument("--batches", type=int, nargs="+", default=[1, 4, 8, 16, 32, 64])
    p.add_argument("--rounds", type=int, default=6)
    p.add_argument("--round-s", type=float, default=1.5, help="seconds a batch size runs in each round")
    p.add_argument("--threads", type=int, default=1, help="onnxruntime intra-op threads")
    p.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "tmp" / "batch_sizes.json")
    args = p.parse_args(argv)
    if min(args.batches) < 1 or args.rounds < 1 or args.round_s <= 0 or args.threads < 1:
        p.error("--batches, --rounds and --threads must be >= 1 and --round-s > 0")
    work = args.out.resolve().parent / "tmp" / "batch_sizes"
    work.mkdir(parents=True, exist_ok=True)
    result = {"command": f"{PROG} " + shlex.join(argv), "machine": machine.describe(ROOT),
              **measure(args.model, args.batches, args.rounds, args.round_s, args.threads, work)}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    smallest = min(result["us_per_image"].values())
    print("| batch | us an image | / the cheapest |\n| --- | --- | --- |")
    for b, us in result["us_per_image"].items():
        print(f"| {b} | {us:,.1f} | {us / smallest:.3f} |")
    print(f"bench: {result['model']}, {args.rounds} rounds -> {args.out}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
