"""The torch backend: the models team's TorchPredictor (safetensors weights), CUDA when present.

torch and the `models` package are imported only when this backend is loaded.
"""

from __future__ import annotations

import logging

import numpy as np

from server.backends.base import Backend, BackendError, BatchOutput
from server.errors import RepositoryError
from server.repository import ModelSpec
from server.settings import CudaWaitName

log = logging.getLogger("server.backends")

INSTALL_HINT = "the torch backend needs torch and the models package: pip install 'gloro-serve[train]'"


def resolve_device(device: str) -> str:
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise BackendError("--device cuda asked for, but torch sees no CUDA device")
    return device


class TorchBackend(Backend):
    def __init__(self, spec: ModelSpec, device: str = "auto", threads: int = 0, cuda_wait: CudaWaitName = "spin"
                 ) -> None:
        super().__init__(spec)
        self.device = device
        self.threads = threads
        self.cuda_wait = cuda_wait
        self._predictor = None
        self._resolved_device = ""

    @property
    def on_gpu(self) -> bool:
        return self._resolved_device == "cuda"

    def load(self) -> None:
        try:
            from models.checkpoint import CheckpointError
            from models.torch_backend import TorchPredictor
        except ImportError as exc:
            raise BackendError(f"{INSTALL_HINT} ({exc})") from None
        if self.threads:
            import torch

            torch.set_num_threads(self.threads)
        device = resolve_device(self.device)
        try:
            self.spec.weights_path()  # the tensors it reads are the ones exported, as model.onnx's are
        except RepositoryError as exc:
            raise BackendError(f"torch backend cannot load {self.spec.name}: {exc}") from None
        try:
            self._predictor = TorchPredictor(self.spec.directory, device, self.cuda_wait)
        except CheckpointError as exc:
            raise BackendError(f"torch backend cannot load {self.spec.name}: {exc}") from None
        self._resolved_device = device
        failed = self._predictor.capture(self.spec.manifest.input.shape)  # CUDA graphs; nothing on the CPU
        if failed:
            log.warning("%s: CUDA graphs not captured, every batch runs eagerly (%s)", self.spec.name, failed)

    def _forward(self, batch: np.ndarray) -> BatchOutput:
        if self._predictor is None:
            raise BackendError("run before load")
        out = self._predictor.run(batch)
        return BatchOutput(
            np.asarray(out["logits"], dtype=np.float32),
            np.asarray(out["label"], dtype=np.int64),
            np.asarray(out["radius"], dtype=np.float32),
        )
