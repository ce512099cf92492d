"""`gloro-serve certify`: clean accuracy and VRA, sound bound beside the power-iteration estimate."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np

from models import checkpoint, data
from models.evaluate import Evaluation, evaluate
from models.gloro import BoundMode
from models.train import resolve_device


def eps_key(eps: float) -> str:
    """0.3 -> "0.3", with enough digits that two eps asked for never share a key (%g keeps six)."""
    return f"{eps:.15g}"


def radius_histogram(evaluation: Evaluation, bins: int = 20) -> dict[str, list[float]]:
    """Histogram of certified radii of the correctly classified points."""
    radii = evaluation.radius[evaluation.correct]
    radii = radii[np.isfinite(radii)]  # a degenerate head (two equal rows: K = 0) gives inf or NaN
    top = float(radii.max()) if radii.size else 1.0
    counts, edges = np.histogram(radii, bins=bins, range=(0.0, top))
    return {"edges": edges.round(6).tolist(), "counts": counts.tolist()}


def certified_accuracy_curve(evaluation: Evaluation, max_eps: float, points: int = 101) -> tuple[np.ndarray, np.ndarray]:
    grid = np.linspace(0.0, max_eps, points)
    return grid, np.array([evaluation.vra(e) for e in grid])


def plot_extent(eps_values: list[float]) -> float:
    """How far the eps axis runs: 2.5 x the largest eps asked, kept finite (--eps 1e308 made it
    inf, which matplotlib refuses) and above 0 (--eps 0 alone would give an empty axis)."""
    return min(2.5 * max(eps_values), 1e300) or 1.0


def plot_curve(curves: dict[str, Evaluation], max_eps: float, path: Path, title: str, marks: list[float]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 3.8), dpi=120)
    for label, evaluation in curves.items():
        grid, acc = certified_accuracy_curve(evaluation, max_eps)
        ax.plot(grid, 100 * acc, label=label)
    for eps in marks:
        ax.axvline(eps, color="grey", linestyle=":", linewidth=1)
    ax.set_xlabel("eps (l2, pixels in [0, 1])")
    ax.set_ylabel("certified accuracy (%)")
    ax.set_ylim(0, 100)
    ax.set_xlim(0, max_eps)
    ax.grid(alpha=0.3)
    ax.set_title(title)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def certify_checkpoint(folder: Path, eps_values: list[float] | None, data_dir: str | None, test_subset: int | None,
                       plot: Path | None, device: str = "auto") -> dict[str, Any]:
    source = checkpoint.load_source(Path(folder))
    model, config, epochs, factor = source.model, source.config, source.epochs, source.safety_factor
    dev = resolve_device(device)
    model.to(dev)
    eps_values = eps_values or sorted({config.eps, config.train_eps})
    test_set = data.load(config.dataset, data_dir or config.data_dir, train=False).subset(test_subset)
    started = time.perf_counter()
    allowance = source.margin_allowance  # an exported version's; a training checkpoint has none yet
    sound = evaluate(model, test_set, BoundMode.SOUND, device=dev, safety_factor=factor, margin_allowance=allowance)
    seconds = time.perf_counter() - started
    estimate = evaluate(model, test_set, BoundMode.ESTIMATE, device=dev)
    layers = model.body.named_bounds()
    for row in layers:
        row["ratio"] = row["bound"] / row["estimate"] if row["estimate"] else float("inf")
    report = {
        "checkpoint": str(folder), "architecture": config.architecture, "dataset": config.dataset,
        "epochs": epochs, "n": int(len(test_set.labels)),
        "clean_accuracy": sound.clean_accuracy,
        "sound": {"body_lipschitz": model.body.lipschitz_bound() * factor,
                  "safety_factor": factor, "margin_allowance": allowance,
                  "vra": {eps_key(e): sound.vra(e) for e in eps_values}},
        "estimate": {"body_lipschitz": float(model.body.lipschitz_estimate().detach()),
                     "vra": {eps_key(e): estimate.vra(e) for e in eps_values}},
        "layers": layers,
        "radius_histogram": radius_histogram(sound),
        "images_per_second": len(test_set.labels) / seconds,
    }
    if plot is not None:
        plot_curve({"sound bound": sound, "power-iteration estimate (unsound)": estimate},
                   max_eps=plot_extent(eps_values), path=Path(plot),
                   title=f"{config.architecture} on {config.dataset} ({epochs} epochs)", marks=eps_values)
        report["plot"] = str(plot)
    return report
