"""`python -m bench.denormals CHECKPOINT`: seconds per training step with and without denormals flushed.

The denormal half of `python -m bench.train_step` (each setting in its own process, the same
step), in the layout training uses on the CPU (`models.train.training_layout`).

    python -m bench.denormals runs/mnist-4c3f-long/checkpoint [--threads 2] [--steps 8] [--weights trained]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from bench.train_step import DENORMALS, cpu_training_layout, measure


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.denormals", description=__doc__.split("\n\n")[0])
    p.add_argument("checkpoint", type=Path)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--steps", type=int, default=8)
    p.add_argument("--weights", choices=["model", "trained"], default="trained")
    args = p.parse_args(argv)
    if not (args.checkpoint / "state.json").is_file():
        print(f"bench.denormals: no checkpoint at {args.checkpoint}", file=sys.stderr)
        return 2
    layout = cpu_training_layout()
    rows = measure(args.checkpoint, args.weights, args.threads, args.steps, list(DENORMALS), [layout])
    result = {"checkpoint": str(args.checkpoint), "threads": args.threads, "steps": args.steps, "layout": layout}
    for row in rows:
        result[f"seconds_per_step_denormals_{row['denormals']}"] = row["seconds_per_step"]
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
