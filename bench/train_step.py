"""`python -m bench.train_step CHECKPOINT`: seconds per training step of a checkpoint, per setting.

A setting is whether denormals are flushed and which memory layout the model and batches use
(`models.train.training_layout` picks channels-last on the CPU). Each setting runs in its own
process, since torch's worker threads take the flush setting from the thread that starts them. A
step is the training step of `gloro-serve train` (forward with the Lipschitz bound, the
checkpoint's loss, backward; no optimiser update, so every step sees the same weights) on
consecutive batches of the MNIST training set, at the checkpoint's current train eps.

    python -m bench.train_step runs/mnist-4c3f-long/checkpoint [--denormals kept,flushed]
        [--layouts contiguous,channels_last] [--threads 2] [--steps 8] [--weights trained]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch  # importing starts no worker threads: a child can still set the flush first

MEMORY_FORMATS = {"contiguous": torch.contiguous_format, "channels_last": torch.channels_last}
LAYOUTS = tuple(MEMORY_FORMATS)
DENORMALS = ("kept", "flushed")


def cpu_training_layout() -> str:
    """The name of the layout `gloro-serve train` uses on the CPU."""
    from models.train import training_layout

    cpu = training_layout(torch.device("cpu"))
    return next(name for name, memory_format in MEMORY_FORMATS.items() if memory_format == cpu)


def step_seconds(folder: Path, weights: str, threads: int, steps: int, flush: bool, layout: str) -> float:
    if flush:  # for the whole child process, before torch starts its worker threads
        torch.set_flush_denormal(True)
    torch.set_num_threads(threads)
    from models import checkpoint, data
    from models.layers import set_power_steps
    from models.losses import make_loss
    from models.train import TrainStep

    memory_format = MEMORY_FORMATS[layout]
    model, config, state = checkpoint.load_model(folder, weights=weights)
    model.to(memory_format=memory_format)
    set_power_steps(model, config.power_steps)
    model.train()
    eps = state["history"][-1]["train_eps"] if state.get("history") else config.train_eps
    train_set = data.load(config.dataset, config.data_dir, train=True)
    loss_fn, step = make_loss(config.loss, config.trades_lambda), TrainStep(model)
    b = config.batch_size

    def run(first: int, n: int) -> float:
        started = time.perf_counter()
        for i in range(first, first + n):
            x = data.to_float(train_set.images[i * b:(i + 1) * b]).contiguous(memory_format=memory_format)
            logits, K = step(x)
            model.zero_grad(set_to_none=True)
            loss_fn(logits, torch.as_tensor(train_set.labels[i * b:(i + 1) * b]), K, eps).backward()
        return (time.perf_counter() - started) / n

    run(0, 2)  # warm-up
    return run(2, steps)


def _choices(text: str, allowed: tuple[str, ...], what: str) -> list[str]:
    chosen = [c.strip() for c in text.split(",") if c.strip()]
    unknown = [c for c in chosen if c not in allowed]
    if unknown or not chosen:
        raise argparse.ArgumentTypeError(f"{what} must be among {', '.join(allowed)}, got {text!r}")
    return chosen


def measure(checkpoint: Path, weights: str, threads: int, steps: int, denormals: list[str],
            layouts: list[str]) -> list[dict[str, Any]]:
    """One child process per setting, settings in the order given (denormals outer)."""
    rows = []
    for setting in denormals:
        for layout in layouts:
            out = subprocess.run([sys.executable, "-m", "bench.train_step", str(checkpoint), "--threads", str(threads),
                                  "--steps", str(steps), "--weights", weights, "--one", f"{setting}:{layout}"],
                                 capture_output=True, text=True, check=True)
            rows.append({"denormals": setting, "layout": layout,
                         "seconds_per_step": float(out.stdout.strip().splitlines()[-1])})
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.train_step", description=__doc__.split("\n\n")[0])
    p.add_argument("checkpoint", type=Path)
    p.add_argument("--denormals", type=lambda t: _choices(t, DENORMALS, "--denormals"), default=list(DENORMALS))
    p.add_argument("--layouts", type=lambda t: _choices(t, LAYOUTS, "--layouts"), default=list(LAYOUTS))
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--steps", type=int, default=8)
    p.add_argument("--weights", choices=["model", "trained"], default="trained")
    p.add_argument("--one", help=argparse.SUPPRESS)  # the child process: "kept|flushed:layout"
    args = p.parse_args(argv)
    if not (args.checkpoint / "state.json").is_file():
        print(f"bench.train_step: no checkpoint at {args.checkpoint}", file=sys.stderr)
        return 2
    if args.one:
        setting, layout = args.one.split(":")
        print(step_seconds(args.checkpoint, args.weights, args.threads, args.steps, setting == "flushed", layout))
        return 0
    rows = measure(args.checkpoint, args.weights, args.threads, args.steps, args.denormals, args.layouts)
    print(json.dumps({"checkpoint": str(args.checkpoint), "threads": args.threads, "steps": args.steps, "rows": rows}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
