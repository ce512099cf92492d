"""The torch serving backend: the exported model's own tensors, run by torch (CUDA when present).

It loads ``model.safetensors`` (written by the exporter beside model.onnx) into the same
:class:`~models.export.CertifiedModel` that was exported, so both backends give the same answers.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from models.checkpoint import fill, read_exported
from models.export import CertifiedModel
from models.numerics import set_tf32


class TorchPredictor:
    """Raises CheckpointError (one line) when the version's provenance or tensors are unusable."""

    def __init__(self, version_dir: Path, device: str = "auto"):
        version_dir = Path(version_dir)
        exported = read_exported(version_dir)
        module = fill(CertifiedModel.empty, exported.config, exported.tensors, version_dir / "model.safetensors")
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        self.device = torch.device(device)
        if self.device.type == "cuda":
            set_tf32(False)  # process-wide: a serving process only serves, and certificates need IEEE float32
        self.module = module.to(self.device).eval()

    @torch.inference_mode()
    def run(self, x: np.ndarray) -> dict[str, np.ndarray]:
        logits, label, radius = self.module(torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)).to(self.device))
        return {"logits": logits.cpu().numpy(), "label": label.cpu().numpy(), "radius": radius.cpu().numpy()}
