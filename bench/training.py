"""Training and certification speed.

- GloRo training step against plain cross-entropy on the same network, data and batch
  (`models.train.plain_epoch_seconds`), interleaved so that noise hits both alike; epoch time is the
  step time times the steps of one MNIST epoch.
- `gloro-serve certify` throughput: images per second of the sound evaluation, on a checkpoint the
  benchmark trains for one short epoch (the speed does not depend on how well it is trained).
"""

from __future__ import annotations

import json
import math
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Any

from bench.models import MNIST_DIR, ROOT

MNIST_TRAIN = 60_000
THREADS = 1  # as the project trains on these shared 2-core machines (--threads 1)


def epoch_ratio(architecture: str, steps: int, repeats: int, device: str = "cpu",
                batch_size: int = 256) -> dict[str, Any]:
    from models.checkpoint import TrainConfig
    from models.train import plain_epoch_seconds

    del device  # plain_epoch_seconds runs on the CPU; the GPU path is `gloro-serve train --device cuda`
    config = TrainConfig(architecture=architecture, data_dir=str(MNIST_DIR), batch_size=batch_size)
    times: dict[str, list[float]] = {"gloro": [], "plain": []}
    for r in range(repeats):
        for gloro in ((True, False) if r % 2 == 0 else (False, True)):
            seconds = plain_epoch_seconds(config, gloro=gloro, steps=steps, threads=THREADS)
            times["gloro" if gloro else "plain"].append(seconds)
    gloro_s, plain_s = statistics.median(times["gloro"]), statistics.median(times["plain"])
    # each pair ran back to back: the median of the pair ratios is the least disturbed by other jobs
    ratio = statistics.median(g / p for g, p in zip(times["gloro"], times["plain"]))
    steps_per_epoch = math.ceil(MNIST_TRAIN / batch_size)
    return {
        "architecture": architecture, "batch_size": batch_size, "steps_timed": steps, "repeats": repeats,
        "threads": THREADS, "gloro_step_s": gloro_s, "plain_step_s": plain_s, "ratio": ratio,
        "gloro_epoch_s": gloro_s * steps_per_epoch, "plain_epoch_s": plain_s * steps_per_epoch,
        "steps_per_epoch": steps_per_epoch, "all_step_s": times,
    }


def gloro_serve(*args: str, timeout: float = 1800) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "server", *args]
    out = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=timeout)
    if out.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed ({out.returncode}): {out.stderr[-1500:]}")
    return out


def certify_throughput(work: Path, test_subset: int, device: str = "cpu") -> dict[str, Any]:
    run = work / "certify-run"
    train_args = ["train", "--arch", "2c2f", "--data-dir", str(MNIST_DIR), "--epochs", "1", "--train-subset", "2048",
                  "--test-subset", "256", "--no-progress", "--out", str(run), "--device", device]
    if not (run / "checkpoint" / "state.json").is_file():
        gloro_serve(*train_args)
    report = work / "certify.json"
    certify_args = ["certify", str(run / "checkpoint"), "--test-subset", str(test_subset), "--out", str(report),
                    "--device", device]
    gloro_serve(*certify_args)
    result = json.loads(report.read_text())
    def shown(args: list[str]) -> str:
        return "gloro-serve " + " ".join(args).replace(f"{ROOT}/", "")

    return {
        "architecture": result["architecture"], "n": result["n"], "device": device,
        "images_per_second": result["images_per_second"],
        "command": shown(certify_args),
        "checkpoint_from": shown(train_args),
    }


def run(work: Path, quick: bool, device: str = "cpu") -> dict[str, Any]:
    steps, repeats, subset = (3, 1, 500) if quick else (20, 5, 10_000)
    return {
        "epoch": epoch_ratio("2c2f", steps, repeats, device),
        "certify": certify_throughput(work, subset, device),
    }
