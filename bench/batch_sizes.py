"""`python -m bench.batch_sizes`: what an image costs the backend at each batch size.

The server's largest batch is not always the model's cheapest an image: on a CPU with small
caches a compute-bound model can run faster in smaller batches (docs/benchmarks.md, "The
ceiling's batch size"). This runs the server's backend (`server.backends`, the server's session
settings, one intra-op thread as a `--workers` process runs it) on the same random images at each
batch size, the sizes interleaved round by round, and reports the median time an image. With
`--threads 2 --spin-us 0 100` it also compares how long onnxruntime's threads spin for more work
(the server's `--spin-us`; docs/benchmarks.md, "Spinning, briefly"), every setting in every round.

    python -m bench.batch_sizes --model cifar [--batches 1 4 8 16 32 64] [--rounds 6] [--round-s 1.5]
                                [--threads 1] [--spin-us 100]
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
from server.settings import DEFAULT_SPIN_US

PROG = "python -m bench.batch_sizes"


def time_an_image(model: Any, batch: np.ndarray, seconds: float) -> float:
    """Microseconds an image, batches of `batch` run back to back for `seconds`."""
    model.run(batch)
    started, images = time.perf_counter(), 0
    while time.perf_counter() - started < seconds:
        model.run(batch)
        images += len(batch)
    return (time.perf_counter() - started) / images * 1e6


def _key(batch: int, spin_us: int, spins: list[int]) -> str:
    """A result's name: the batch size, and the spin setting when more than one is compared."""
    return str(batch) if len(spins) == 1 else f"{batch} spin {spin_us}"


def measure(model_key: str, batches: list[int], rounds: int, round_s: float, threads: int, spins: list[int],
            work: Path) -> dict[str, Any]:
    case = prepare(model_key, work)
    models = {s: in_process_backend(case, "onnxruntime", "cpu", threads, spin_us=s) for s in spins}
    rng = np.random.default_rng(0)
    inputs = {b: rng.random((b, *case.input_shape), dtype=np.float32) for b in batches}
    runs = [(b, s) for b in batches for s in spins]
    per_round: list[dict[str, float]] = []
    for r in range(rounds):
        order = runs[r % len(runs):] + runs[: r % len(runs)]  # rotate who goes first
        per_round.append({_key(b, s, spins): time_an_image(models[s], inputs[b], round_s) for b, s in order})
    keys = [_key(b, s, spins) for b, s in runs]
    return {"model": case.name, "weights": case.weights, "threads": threads, "spin_us": spins, "round_s": round_s,
            "us_per_image": {k: statistics.median(row[k] for row in per_round) for k in keys},
            "rounds": per_round}


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    p = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0])
    p.add_argument("--model", choices=["mnist", "cifar"], default="cifar")
    p.add_argument("--batches", type=int, nargs="+", default=[1, 4, 8, 16, 32, 64])
    p.add_argument("--rounds", type=int, default=6)
    p.add_argument("--round-s", type=float, default=1.5, help="seconds a batch size runs in each round")
    p.add_argument("--threads", type=int, default=1, help="onnxruntime intra-op threads")
    p.add_argument("--spin-us", type=int, nargs="+", default=[DEFAULT_SPIN_US],
                   help="how long onnxruntime's threads spin for more work (the server's --spin-us); several compare")
    p.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "tmp" / "batch_sizes.json")
    args = p.parse_args(argv)
    if min(args.batches) < 1 or args.rounds < 1 or args.round_s <= 0 or args.threads < 1 or min(args.spin_us) < 0:
        p.error("--batches, --rounds and --threads must be >= 1, --round-s > 0 and --spin-us >= 0")
    if len(set(args.spin_us)) < len(args.spin_us) or (len(args.spin_us) > 1 and args.threads == 1):
        p.error("--spin-us: give each setting once, and compare several only with --threads 2 or more "
                "(one thread has no pool to spin)")
    work = args.out.resolve().parent / "tmp" / "batch_sizes"
    work.mkdir(parents=True, exist_ok=True)
    result = {"command": f"{PROG} " + shlex.join(argv), "machine": machine.describe(ROOT),
              **measure(args.model, args.batches, args.rounds, args.round_s, args.threads, args.spin_us, work)}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    smallest = min(result["us_per_image"].values())
    print("| batch | us an image | / the cheapest |\n| --- | --- | --- |")
    for key, us in result["us_per_image"].items():
        print(f"| {key} | {us:,.1f} | {us / smallest:.3f} |")
    print(f"bench: {result['model']}, {args.rounds} rounds -> {args.out}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
