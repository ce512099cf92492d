"""`python -m bench.denormals CHECKPOINT`: seconds per training step with and without denormals flushed.

Each setting runs in its own process, since torch's worker threads take the flush setting from the
thread that starts them. A step is the training step of `gloro-serve train` (forward with the
Lipschitz bound, the checkpoint's loss, backward; no optimiser update, so every step sees the same
weights) on consecutive batches of the MNIST training set, at the checkpoint's current train eps.

    python -m bench.denormals runs/mnist-4c3f-long/checkpoint [--threads 2] [--steps 8] [--weights trained]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path


def step_seconds(folder: Path, weights: str, threads: int, steps: int, flush: bool) -> float:
    import torch

    if flush:  # for the whole child process, before torch starts its worker threads
        torch.set_flush_denormal(True)
    torch.set_num_threads(threads)
    from models import checkpoint, data
    from models.layers import set_power_steps
    from models.losses import make_loss
    from models.train import TrainStep

    model, config, state = checkpoint.load_model(folder, weights=weights)
    set_power_steps(model, config.power_steps)
    model.train()
    eps = state["history"][-1]["train_eps"] if state.get("history") else config.train_eps
    train_set = data.load(config.dataset, config.data_dir, train=True)
    loss_fn, step = make_loss(config.loss, config.trades_lambda), TrainStep(model)
    b = config.batch_size

    def run(first: int, n: int) -> float:
        started = time.perf_counter()
        for i in range(first, first + n):
            x = data.to_float(train_set.images[i * b:(i + 1) * b])
            logits, K = step(x)
            model.zero_grad(set_to_none=True)
            loss_fn(logits, torch.as_tensor(train_set.labels[i * b:(i + 1) * b]), K, eps).backward()
        return (time.perf_counter() - started) / n

    run(0, 2)  # warm-up
    return run(2, steps)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.denormals", description=__doc__.split("\n\n")[0])
    p.add_argument("checkpoint", type=Path)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--steps", type=int, default=8)
    p.add_argument("--weights", choices=["model", "trained"], default="trained")
    p.add_argument("--one", choices=["flushed", "kept"], help=argparse.SUPPRESS)  # the child process
    args = p.parse_args(argv)
    if not (args.checkpoint / "state.json").is_file():
        print(f"bench.denormals: no checkpoint at {args.checkpoint}", file=sys.stderr)
        return 2
    if args.one:
        print(step_seconds(args.checkpoint, args.weights, args.threads, args.steps, args.one == "flushed"))
        return 0
    result = {"checkpoint": str(args.checkpoint), "threads": args.threads, "steps": args.steps}
    for setting in ("kept", "flushed"):
        out = subprocess.run([sys.executable, "-m", "bench.denormals", str(args.checkpoint), "--threads",
                              str(args.threads), "--steps", str(args.steps), "--weights", args.weights,
                              "--one", setting], capture_output=True, text=True, check=True)
        result[f"seconds_per_step_denormals_{setting}"] = float(out.stdout.strip().splitlines()[-1])
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
