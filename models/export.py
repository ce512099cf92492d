"""Export a checkpoint to a model repository entry: model.onnx + gloro.json (docs/artifact.md).

The ONNX graph holds the network *and* its certification head; the sound constants (times
:data:`~models.gloro.SAFETY_FACTOR`) and the margin allowance for float32 rounding (measured here,
times :data:`ALLOWANCE_CUSHION`) are initializers. ``model.safetensors`` beside it carries the
same tensors for the optional torch backend. Everything is written to a temporary sibling folder
and renamed into place, so a failure leaves nothing half-written.
"""

from __future__ import annotations

import copy
import datetime as dt
import io
import json
import os
import shutil
import subprocess
import tempfile
import warnings
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from torch import nn

from models import checkpoint, data
from models.checkpoint import TrainConfig
from models.evaluate import MIN_JUDGED_IMAGES, Evaluation, is_collapsed
from models.gloro import SAFETY_FACTOR, BoundMode, GloroNet, RadiusHead
from models.layers import BoundedSequential, require_bounded
from models.numerics import exact_float32
from server.repository import sha256_file

FORMAT_VERSION = 1
OPSET = 17
BOUND_METHOD = "sound: exact SVD in float64 (dense); FFT over an N x N torus with space-to-depth for strides (conv)"
# The head takes this many times the largest float32 margin error measured at export (twice the
# largest logit error against float64) off every margin: the cushion that
# tests/models/test_shipped_models.py asked of the safety factor at the model's eps, at every eps.
ALLOWANCE_CUSHION = 100.0
VRA_GRID = (0.0, 0.1, 0.2, 0.3, 0.5, 1.0, 1.58, 2.0)


class ExportError(ValueError):
    """The model cannot be exported as asked; nothing was written."""


class CertifiedModel(nn.Module):
    """What gets exported: x -> (logits, label, radius), with K frozen as buffers."""

    def __init__(self, body: BoundedSequential, weight: torch.Tensor, bias: torch.Tensor, K: torch.Tensor):
        super().__init__()
        self.body = body
        self.register_buffer("weight", weight.detach().float().clone())
        self.register_buffer("bias", bias.detach().float().clone())
        self.radius = RadiusHead(K)

    @classmethod
    def from_gloro(cls, model: GloroNet, safety_factor: float = SAFETY_FACTOR) -> "CertifiedModel":
        require_bounded(model.body.layers)
        K = model.lipschitz_matrix(BoundMode.SOUND, safety_factor)
        if not torch.isfinite(K).all():
            raise ExportError("the sound Lipschitz bound is not finite; refusing to export")
        return cls(model.body, model.head_weight, model.head.linear.bias, K)

    @classmethod
    def empty(cls, config: TrainConfig) -> "CertifiedModel":
        """The right shapes for ``config``, to load a saved state dict into."""
        model = config.build_model()
        m = len(config.classes)
        return cls(model.body, model.head_weight, model.head.linear.bias, torch.ones(m, m))

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(self.body(x), self.weight, self.bias)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        logits = self.logits(x)
        label, radius = self.radius(logits)
        return logits, label, radius


def write_onnx(module: CertifiedModel, input_shape: tuple[int, ...], path: Path) -> None:
    module.eval()
    buffer = io.BytesIO()
    with torch.no_grad(), warnings.catch_warnings():
        # The tracer warns about Python-level shape checks; shapes are fixed but the batch axis.
        warnings.simplefilter("ignore")
        torch.onnx.export(
            module, (torch.zeros(1, *input_shape),), buffer, dynamo=False, opset_version=OPSET,
            input_names=["input"], output_names=["logits", "label", "radius"],
            dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}, "label": {0: "batch"}, "radius": {0: "batch"}},
        )
    path.write_bytes(buffer.getvalue())


@torch.no_grad()
def float32_logit_error(module: CertifiedModel, onnx_path: Path, dataset: data.Dataset, batch_size: int = 1000) -> float:
    """The largest |logit| difference over `dataset` between float32 as served (torch on the CPU,
    and onnxruntime running `onnx_path`) and the same network in float64."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    wide = copy.deepcopy(module).double()
    error = 0.0
    with exact_float32():
        for start in range(0, len(dataset.labels), batch_size):
            x = dataset.images[start:start + batch_size].astype(np.float32) / np.float32(255.0)
            exact = wide.logits(torch.from_numpy(x).double())
            onnx_logits = torch.from_numpy(session.run(["logits"], {"input": x})[0])
            for served in (module.logits(torch.from_numpy(x)), onnx_logits):
                error = max(error, float((served.double() - exact).abs().max()))
    return error


def onnx_evaluate(path: Path, dataset: data.Dataset, batch_size: int = 1000) -> Evaluation:
    """Label and radius of every test point, from the exported file with onnxruntime."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    labels, radii = [], []
    for start in range(0, len(dataset.labels), batch_size):
        x = dataset.images[start:start + batch_size].astype(np.float32) / np.float32(255.0)
        _, label, radius = session.run(["logits", "label", "radius"], {"input": x})
        labels.append(label)
        radii.append(radius)
    return Evaluation(dataset.labels, np.concatenate(labels), np.concatenate(radii))


def _code_version(checkout: Path = Path(__file__).parent) -> str:
    """The commit the exporter runs from, with "-dirty" when tracked files differ from it: an
    export from uncommitted code must not claim a commit that writes another graph."""
    try:
        out = subprocess.run(["git", "describe", "--always", "--dirty", "--abbrev=7", "--exclude=*"],
                             capture_output=True, text=True, timeout=5, cwd=checkout)
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def _check_target(out: Path, new_sha: str, force: bool) -> None:
    manifest = out / "gloro.json"
    if not out.exists():
        return
    if not manifest.is_file():
        if any(out.iterdir()):
            raise ExportError(f"{out} exists and is not a model version folder; refusing to overwrite it")
        return
    try:
        old_sha = json.loads(manifest.read_text())["onnx"]["sha256"]
    except (json.JSONDecodeError, KeyError, TypeError):
        old_sha = "unreadable"
    if old_sha != new_sha and not force:
        raise ExportError(f"{out} already holds a different model (sha256 {old_sha[:12]}); "
                          "export to a new version folder or pass --force")


def model_card(manifest: dict[str, Any]) -> str:
    m, b, p = manifest["metrics"], manifest["bound"], manifest["provenance"]
    vra = ", ".join(f"{float(k):g}: {100 * v:.2f}%" for k, v in m["vra"].items())
    earlier = "".join(f"- Exported before (the same weights): {e.get('date')} from code {e.get('code_version')}\n"
                      for e in p.get("earlier_exports", ()))
    return (
        f"# {manifest['name']} (version {manifest['version']})\n\n"
        f"A GloRo net ({manifest['architecture']}) for {m['dataset']}: every prediction comes with an l2 "
        f"certificate. It certifies at eps = {manifest['epsilon']} by default (trained at eps = "
        f"{manifest['train_epsilon']}).\n\n"
        f"- Input: {manifest['input']['shape']} ({manifest['input']['color_mode']}), pixels in [0, 1]\n"
        f"- Clean accuracy on the {m['n']} {m['split']} images: {100 * m['clean_accuracy']:.2f}%\n"
        f"- Verified-robust accuracy (sound bound) by eps: {vra}\n"
        f"- Body Lipschitz bound k = {b['body_lipschitz']:.6g} (times safety factor {b['safety_factor']})\n"
        f"- Margin allowance for float32 rounding: {b['margin_allowance']:.3g} ({b['allowance_cushion']:g}x the "
        f"largest margin error measured, {2 * b['float32_logit_error']:.3g})\n"
        f"- Trained for {p['epochs']} epochs; exported {p['date']} from code {p['code_version']}\n"
        f"{earlier}"
        f"- Training command: `{p['train_command']}`\n\n"
        "Measured by `gloro-serve export` with onnxruntime on the test set; see gloro.json.\n"
    )


def export_checkpoint(checkpoint_dir: Path, out: Path, eps: float | None = None, data_dir: str | None = None,
                      test_subset: int | None = None, train_command: str | None = None,
                      force: bool = False) -> dict[str, Any]:
    """Export a training checkpoint, or re-export a model repository version: the same weights,
    sound bound and safety factor (so the same certificates) in the graph this code writes (a
    faster one, when the exporter improves), keeping the training command the version recorded."""
    source = checkpoint.load_source(Path(checkpoint_dir))
    return export_model(source.model, source.config, Path(out), epochs=source.epochs, eps=eps, data_dir=data_dir,
                        test_subset=test_subset, train_command=train_command or source.train_command, force=force,
                        safety_factor=source.safety_factor, earlier_exports=list(source.exports))


def export_model(model: GloroNet, config: TrainConfig, out: Path, epochs: int, eps: float | None = None,
                 data_dir: str | None = None, test_subset: int | None = None, train_command: str | None = None,
                 force: bool = False, safety_factor: float = SAFETY_FACTOR,
                 earlier_exports: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    out = Path(out)
    name, version = out.parent.name, out.name
    if not version.isdigit() or int(version) < 1:
        raise ExportError(f"--out must end in NAME/VERSION with VERSION a positive integer, got {out}")
    model = model.cpu().eval()
    require_bounded(model.body.layers)  # before anything else touches a layer
    layers = model.body.named_bounds()  # converges the power iterations: the estimates are for reference
    certified = CertifiedModel.from_gloro(model, safety_factor)
    eps = config.eps if eps is None else eps
    test_set = data.load(config.dataset, data_dir or config.data_dir, train=False).subset(test_subset)
    if len(test_set.labels) < MIN_JUDGED_IMAGES:  # the manifest's metrics, and the collapse check, need them
        raise ExportError(f"the export measures the model on {len(test_set.labels)} test images; it needs at "
                          f"least {MIN_JUDGED_IMAGES} (--test-subset)")

    made_parent = not out.parent.exists()  # a failed export takes it away again: a NAME folder
    out.parent.mkdir(parents=True, exist_ok=True)  # with no version would stop a server starting
    tmp = Path(tempfile.mkdtemp(prefix=f".{version}.", dir=out.parent))
    try:
        onnx_path = tmp / "model.onnx"
        write_onnx(certified, tuple(config.input_shape), onnx_path)  # the logits: the allowance is not in them
        logit_error = float32_logit_error(certified, onnx_path, test_set)
        allowance = ALLOWANCE_CUSHION * 2 * logit_error
        certified.radius.set_margin_allowance(allowance)
        write_onnx(certified, tuple(config.input_shape), onnx_path)
        evaluation = onnx_evaluate(onnx_path, test_set)
        if is_collapsed(evaluation):
            raise ExportError(f"refusing to export a collapsed model: clean accuracy {100 * evaluation.clean_accuracy:.2f}% "
                              f"is at the largest class share ({100 * evaluation.majority_share():.2f}%)")
        sha = sha256_file(onnx_path)
        _check_target(out, sha, force)
        save_file({k: v.contiguous() for k, v in certified.state_dict().items()}, tmp / "model.safetensors")
        grid = sorted({*VRA_GRID, float(eps), float(config.train_eps)})
        manifest = {
            "format_version": FORMAT_VERSION,
            "name": name,
            "version": version,
            "input": {"shape": list(config.input_shape), "color_mode": config.color_mode, "range": [0.0, 1.0]},
            "classes": list(config.classes),
            "epsilon": float(eps),
            "train_epsilon": float(config.train_eps),
            "architecture": config.architecture,
            "bound": {
                "method": BOUND_METHOD,
                "safety_factor": safety_factor,
                "body_lipschitz": model.body.lipschitz_bound(),
                "layers": layers,
                "float32_logit_error": logit_error,
                "margin_allowance": allowance,
                "allowance_cushion": ALLOWANCE_CUSHION,
            },
            "onnx": {"file": "model.onnx", "sha256": sha, "opset": OPSET},
            "safetensors": {"file": "model.safetensors", "sha256": sha256_file(tmp / "model.safetensors")},
            "metrics": {
                "dataset": config.dataset, "split": "test", "n": int(len(test_set.labels)),
                "clean_accuracy": evaluation.clean_accuracy,
                "vra": {f"{e:g}": evaluation.vra(e) for e in grid},
            },
            "provenance": {
                "epochs": epochs,
                "date": dt.date.today().isoformat(),
                "code_version": _code_version(),
                "train_command": train_command or "unknown",
                "config": asdict(config),
                **({"earlier_exports": earlier_exports} if earlier_exports else {}),
            },
        }
        (tmp / "gloro.json").write_text(json.dumps(manifest, indent=1) + "\n")
        (tmp / "README.md").write_text(model_card(manifest))
        for path in tmp.iterdir():
            path.chmod(0o644)
        tmp.chmod(0o755)  # mkdtemp makes 0700; a server may run as another user
        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        if made_parent and not any(out.parent.iterdir()):
            out.parent.rmdir()
        raise
    return manifest
