"""The torch serving backend: the exported model's own tensors, run by torch (CUDA when present).

It loads ``model.safetensors`` (written by the exporter beside model.onnx) into the same
:class:`~models.export.CertifiedModel` that was exported, so both backends give the same answers.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file

from models.checkpoint import TrainConfig
from models.export import CertifiedModel
from models.numerics import set_tf32


class TorchPredictor:
    def __init__(self, version_dir: Path, device: str = "auto"):
        version_dir = Path(version_dir)
        manifest = json.loads((version_dir / "gloro.json").read_text())
        config = TrainConfig(**manifest["provenance"]["config"])
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        self.device = torch.device(device)
        if self.device.type == "cuda":
            set_tf32(False)  # process-wide: a serving process only serves, and certificates need IEEE float32
        module = CertifiedModel.empty(config)
        module.load_state_dict(load_file(version_dir / "model.safetensors"), strict=True)
        self.module = module.to(self.device).eval()

    @torch.inference_mode()
    def run(self, x: np.ndarray) -> dict[str, np.ndarray]:
        logits, label, radius = self.module(torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)).to(self.device))
        return {"logits": logits.cpu().numpy(), "label": label.cpu().numpy(), "radius": radius.cpu().numpy()}
