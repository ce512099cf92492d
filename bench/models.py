"""The models the benchmarks run, as model repositories the server can serve, and one request body.

- MNIST 2C2F: the shipped model (`server/model_repository/mnist-2c2f`) when it is there, otherwise
  a 2C2F with random weights exported the same way (`CertifiedModel.from_gloro` + `write_onnx`).
- CIFAR-sized 6C2F (3 x 32 x 32, 10 classes) with random weights: compute-bound on a CPU.

Each gets a logits-only twin cut from the same file at `logits` (onnx.utils.extract_model), so the
certification overhead compares one set of weights with and without the head.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image

if TYPE_CHECKING:
    from models.checkpoint import TrainConfig
    from models.export import CertifiedModel

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = ROOT / "server" / "model_repository"
MNIST_DIR = ROOT.parent / "shared" / "datasets" / "mnist"
VERSION = "1"


@dataclass(frozen=True)
class ModelCase:
    """One benchmarked model: where it is served from and what a client sends it."""

    key: str  # "mnist" or "cifar"
    name: str  # the model's name in its repository
    architecture: str
    repository: Path  # holds only this model, as <name>/1
    onnx: Path
    logits_onnx: Path  # the same graph cut at `logits`
    input_shape: tuple[int, int, int]
    weights: str  # "shipped (trained)" or "random (seed N)"
    png: bytes  # the one image every client sends

    @property
    def body(self) -> bytes:
        """The JSON request body: one base64 PNG, the same for every server."""
        return json.dumps({"instances": [{"b64": base64.b64encode(self.png).decode()}]}).encode()

    @property
    def color_mode(self) -> str:
        return "L" if self.input_shape[0] == 1 else "RGB"


def png_bytes(pixels: np.ndarray) -> bytes:
    """uint8 [H, W] (grey) or [H, W, 3] (RGB) as PNG."""
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, format="PNG")
    return out.getvalue()


def mnist_digit(index: int = 0) -> np.ndarray:
    """A real MNIST test digit when the data set is here, else a drawn stroke (same size)."""
    path = MNIST_DIR / "t10k-images-idx3-ubyte.gz"
    if path.is_file():
        from models.data import read_idx

        return read_idx(path)[index]
    pixels = np.zeros((28, 28), dtype=np.uint8)
    pixels[6:22, 13:16] = 255
    return pixels


def random_rgb(shape: tuple[int, int], seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (*shape, 3), dtype=np.uint8)


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def export_random(architecture: str, input_shape: tuple[int, int, int], classes: int, folder: Path,
                  name: str, seed: int = 0) -> Path:
    """Export a random-weight GloRo net with its sound certification head; returns model.onnx.

    model.safetensors and the training config go beside it, so `--backend torch` serves it too.
    The graph is written again on every call, so it is always what this code's exporter writes;
    only the weights and their sound bound (a minute for the 6C2F) are kept from an earlier call
    with the same config.
    """
    from dataclasses import asdict

    import torch
    from safetensors.torch import save_file

    from models.checkpoint import TrainConfig
    from models.export import OPSET, CertifiedModel, write_onnx

    torch.manual_seed(seed)
    color_mode = "L" if input_shape[0] == 1 else "RGB"
    config = TrainConfig(architecture=architecture, dataset="random", data_dir="", input_shape=list(input_shape),
                         classes=[str(i) for i in range(classes)], color_mode=color_mode, seed=seed,
                         eps=0.3 if color_mode == "L" else 36 / 255)
    certified = _earlier_export(folder, config) or CertifiedModel.from_gloro(config.build_model().eval())
    folder.mkdir(parents=True, exist_ok=True)
    onnx_path = folder / "model.onnx"
    write_onnx(certified, input_shape, onnx_path)
    save_file({k: v.contiguous() for k, v in certified.state_dict().items()}, folder / "model.safetensors")
    manifest = {
        "format_version": 1, "name": name, "version": folder.name,
        "input": {"shape": list(input_shape), "color_mode": color_mode, "range": [0.0, 1.0]},
        "classes": config.classes,
        "epsilon": config.eps,
        "architecture": architecture,
        "onnx": {"file": "model.onnx", "sha256": sha256(onnx_path), "opset": OPSET},
        "safetensors": {"file": "model.safetensors", "sha256": sha256(folder / "model.safetensors")},
        "provenance": {"note": f"random weights (seed {seed}) for benchmarks; certifies nothing useful",
                       "config": asdict(config), "epochs": 0},  # untrained: the torch backend reads this
    }
    (folder / "gloro.json").write_text(json.dumps(manifest, indent=1) + "\n")
    return onnx_path


def _earlier_export(folder: Path, config: TrainConfig) -> CertifiedModel | None:
    """The CertifiedModel an earlier export_random left in `folder` for the same config, or None."""
    from dataclasses import asdict

    from safetensors.torch import load_file

    from models.export import CertifiedModel

    try:
        manifest = json.loads((folder / "gloro.json").read_text())
        if manifest["provenance"]["config"] != json.loads(json.dumps(asdict(config))):
            return None
        certified = CertifiedModel.empty(config)
        certified.load_state_dict(load_file(folder / "model.safetensors"), strict=True)
        return certified.eval()
    except (OSError, ValueError, KeyError, TypeError, RuntimeError):
        return None


def logits_only(onnx_path: Path, out: Path) -> Path:
    """The same graph cut at `logits`: the network without its certification head."""
    import onnx.utils

    onnx.utils.extract_model(str(onnx_path), str(out), ["input"], ["logits"])
    return out


def shipped(name: str) -> Path | None:
    """The highest version folder of a shipped model, if it has landed."""
    folder = SHIPPED / name
    versions = sorted((p for p in folder.glob("*") if p.name.isdigit() and (p / "gloro.json").is_file()),
                      key=lambda p: int(p.name)) if folder.is_dir() else []
    return versions[-1] if versions else None


def prepare(key: str, work: Path, use_shipped: bool = True) -> ModelCase:
    """Lay out the repository for `key` ("mnist" or "cifar") under `work`."""
    if key == "mnist":
        name, architecture, shape = "mnist-2c2f", "2c2f", (1, 28, 28)
        png = png_bytes(mnist_digit())
    elif key == "cifar":
        name, architecture, shape = "cifar-6c2f", "6c2f", (3, 32, 32)
        png = png_bytes(random_rgb(shape[1:]))
    else:
        raise ValueError(f"unknown model case {key!r}; choose mnist or cifar")
    source = shipped(name) if use_shipped else None
    repository = work / f"repo-{key}-{'shipped' if source else 'random'}"
    folder = repository / name / VERSION
    onnx_path = folder / "model.onnx"
    if source is not None:
        if folder.parent.exists():
            shutil.rmtree(folder.parent)
        shutil.copytree(source, folder)
        weights = f"shipped (trained), {source.relative_to(ROOT)}"
        architecture = json.loads((folder / "gloro.json").read_text()).get("architecture") or architecture
    else:
        export_random(architecture, shape, 10, folder, name)
        weights = "random (seed 0)"
    cut = logits_only(onnx_path, work / f"{key}-logits-only.onnx")
    return ModelCase(key, name, architecture, repository, onnx_path, cut, shape, weights, png)
