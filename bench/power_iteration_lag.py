"""How far a checkpoint's power-iteration iterates sit below the sound per-layer bounds.

    python -m bench.power_iteration_lag runs/mnist-4c3f-ft5/checkpoint
    python -m bench.power_iteration_lag runs/mnist-4c3f-ft7/checkpoint --weights trained

Training estimates K from each layer's stored iterate ``u`` (``power_steps`` steps a batch). Each
ratio printed is ||W u|| / (sound bound) for the iterate as training left it, with no further
step, so it shows how much smaller a K training saw than the truth; the product is the ratio for
the whole body. ``--weights trained`` reads the raw optimised weights of a run that keeps a
weight average (its iterates belong to those weights).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import torch

from models import checkpoint
from models.layers import _PowerIterated


def layer_lag(folder: Path, weights: str = "model") -> dict[str, object]:
    model, _, state = checkpoint.load_model(folder, weights=weights)
    model.eval()  # in eval mode the estimate reads the stored iterate and takes no step
    rows = []
    with torch.no_grad():
        for name, layer in model.body.named_modules():
            if isinstance(layer, _PowerIterated):
                bound = layer.lipschitz_bound()
                seen = float(layer.lipschitz_estimate())
                rows.append({"layer": f"body.{name}", "bound": bound, "iterate_estimate": seen, "ratio": seen / bound})
    return {"checkpoint": str(folder), "weights": weights, "epoch": state["epoch"], "layers": rows,
            "product": math.prod(r["ratio"] for r in rows)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.power_iteration_lag", description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint", type=Path)
    parser.add_argument("--weights", choices=["model", "trained"], default="model")
    args = parser.parse_args(argv)
    try:
        report = layer_lag(args.checkpoint, args.weights)
    except checkpoint.CheckpointError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
