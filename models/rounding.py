"""Float32 certificates against exact ones where rounding matters most: at the decision boundary.

A served radius comes from float32 logits; the bound is about exact arithmetic. Far from the
boundary the safety factor and the margin allowance (docs/artifact.md, "Rounding") leave room to
spare; where two logits are a few float32 steps apart, a radius from rounded logits can exceed
the true one. This finds such points, by bisection between test images the model labels
differently, and compares the served radius (onnxruntime, float32) with the float64 radius under
the sound K without the safety factor.

    python -m models.rounding server/model_repository/mnist-4c3f/10 [--onnx OTHER.onnx] [--pairs 12]
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch

from models import data
from models.cli import OneLineParser, positive_int
from models.export import CertifiedModel

Run = Callable[[np.ndarray], list[np.ndarray]]  # float32 [N, C, H, W] -> [label, radius]
CHUNK = 1000
SCALES = (1e-9, 1e-7, 1e-5, 1e-3, 3e-2)  # l2 length of a move is about scale * sqrt(pixels)


def boundary_points(run: Run, images: np.ndarray, labels: np.ndarray, pairs: int, seed: int = 0) -> np.ndarray:
    """Points near the decision boundary, in [0, 1]: bisection, as served, on the segment between
    two images labelled differently, then 16 random moves around the point found at each of
    SCALES, from float32 steps (no certificate is due) to where small radii are (one is due)."""
    rng = np.random.default_rng(seed)
    points = []
    while len(points) < len(SCALES) * pairs:
        a, b = rng.choice(len(images), 2, replace=False)
        if labels[a] == labels[b]:
            continue
        x0, x1 = images[a].astype(np.float64), images[b].astype(np.float64)
        lo, hi = 0.0, 1.0
        for _ in range(48):
            mid = (lo + hi) / 2
            if run(((1 - mid) * x0 + mid * x1).astype(np.float32)[None])[0][0] == labels[a]:
                lo = mid
            else:
                hi = mid
        near = ((1 - lo) * x0 + lo * x1).astype(np.float32)
        for scale in SCALES:
            moved = near[None] + rng.standard_normal((16, *near.shape)).astype(np.float32) * np.float32(scale)
            points.append(np.clip(moved, 0, 1))
    return np.concatenate(points)


@torch.no_grad()
def exact_radius(module: CertifiedModel, points: np.ndarray, label: np.ndarray, safety_factor: float) -> np.ndarray:
    """The float64 radius of each point for the served label (negative where another class is
    ahead), under the sound K: the module's frozen K without its safety factor."""
    wide = module.double()
    logits = wide.logits(torch.from_numpy(points).double()).numpy()
    inverse = wide.radius.inverse_K.numpy() * safety_factor  # 1 / K_sound, 0 on the diagonal
    margins = logits[np.arange(len(points)), label][:, None] - logits
    off = ~np.eye(inverse.shape[0], dtype=bool)[label]
    return np.where(off, margins * inverse[label], np.inf).min(axis=1)


def check(version_dir: Path, onnx_path: Path | None, data_dir: str, pairs: int) -> dict[str, float | int]:
    """How many boundary points get a served radius above the exact one (and the largest such)."""
    import onnxruntime as ort

    from models.torch_backend import TorchPredictor

    manifest_path = version_dir / "gloro.json"
    try:
        manifest = json.loads(manifest_path.read_text())
        dataset, factor = manifest["metrics"]["dataset"], float(manifest["bound"]["safety_factor"])
    except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError) as exc:
        raise ValueError(f"{manifest_path} is not a usable manifest ({type(exc).__name__}: {exc})") from None
    graph = onnx_path or version_dir / "model.onnx"
    try:
        session = ort.InferenceSession(str(graph), providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime raises its own types for files it cannot read
        raise ValueError(f"{graph}: onnxruntime cannot load it ({str(exc).splitlines()[0][:120]})") from None

    def run(x: np.ndarray) -> list[np.ndarray]:
        return session.run(["label", "radius"], {"input": x})

    module = TorchPredictor(version_dir, "cpu").module
    test = data.load(dataset, data_dir, train=False)
    images = test.images[:2000].astype(np.float32) / np.float32(255)
    with torch.no_grad():  # the graph must compute this version's network, or the comparison means nothing
        same = np.allclose(session.run(["logits"], {"input": images[:64]})[0],
                           module.logits(torch.from_numpy(images[:64])).numpy(), rtol=1e-3, atol=1e-3)
    if not same:
        raise ValueError(f"{graph} does not compute the logits of {version_dir}'s weights")
    labels = np.concatenate([run(images[i:i + CHUNK])[0] for i in range(0, len(images), CHUNK)])
    points = boundary_points(run, images, labels, pairs)
    label, radius = run(points)
    exact = exact_radius(module, points, label, factor)
    over = radius > np.maximum(exact, 0)
    return {"points": int(len(points)), "served_radius_over_exact": int(over.sum()),
            "largest_such_radius": float(radius[over].max()) if over.any() else 0.0,
            "certified_points": int((radius > 0).sum())}


def main(argv: Sequence[str] | None = None) -> int:
    parser = OneLineParser(prog="python -m models.rounding", description=__doc__.splitlines()[0])
    parser.add_argument("version_dir", type=Path, help="an exported model version (its weights give the exact radius)")
    parser.add_argument("--onnx", type=Path, help="serve this graph instead of the version's (the same weights)")
    parser.add_argument("--data-dir", default="../shared/datasets/mnist")
    parser.add_argument("--pairs", type=positive_int, default=12, help="image pairs to bisect between (80 points each)")
    try:
        args = parser.parse_args(argv)
        result = check(args.version_dir, args.onnx, args.data_dir, args.pairs)
    except (OSError, KeyError, ValueError) as exc:
        print(f"python -m models.rounding: error: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
