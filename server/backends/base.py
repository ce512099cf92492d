"""The narrow interface every inference backend implements: load, warm up, run a batch."""

from __future__ import annotations

import abc
from dataclasses import dataclass

import numpy as np

from server.repository import ModelSpec


class BackendError(RuntimeError):
    """A backend cannot load or run its model."""


@dataclass(frozen=True, slots=True)
class BatchOutput:
    """What the model computes for N images, in the contract's names (docs/artifact.md)."""

    logits: np.ndarray  # float32 [N, m]
    label: np.ndarray  # int64 [N]
    radius: np.ndarray  # float32 [N]

    def __len__(self) -> int:
        return len(self.label)

    def rows(self, start: int, stop: int) -> BatchOutput:
        return BatchOutput(self.logits[start:stop], self.label[start:stop], self.radius[start:stop])

    @staticmethod
    def concat(parts: list[BatchOutput]) -> BatchOutput:
        if len(parts) == 1:
            return parts[0]
        return BatchOutput(
            np.concatenate([p.logits for p in parts]),
            np.concatenate([p.label for p in parts]),
            np.concatenate([p.radius for p in parts]),
        )

    def checked(self, n: int, classes: int) -> BatchOutput:
        """Refuse outputs that break the contract rather than answer with them."""
        if self.logits.shape != (n, classes) or self.label.shape != (n,) or self.radius.shape != (n,):
            raise BackendError(
                f"model returned logits {self.logits.shape}, label {self.label.shape}, "
                f"radius {self.radius.shape} for a batch of {n} images and {classes} classes"
            )
        if n and not (0 <= self.label.min() and self.label.max() < classes):
            raise BackendError(f"model returned labels outside 0..{classes - 1}")
        return self


class Backend(abc.ABC):
    """One loaded model. `run` may be called from several worker threads at once (`--instances`),
    so implementations must be thread-safe (onnxruntime sessions and torch inference are)."""

    def __init__(self, spec: ModelSpec) -> None:
        self.spec = spec

    @abc.abstractmethod
    def load(self) -> None:
        """Load the model; raise BackendError with a one-line reason if it cannot be served."""

    @abc.abstractmethod
    def _forward(self, batch: np.ndarray) -> BatchOutput:
        """Run the model on float32 [N, C, H, W] in [0, 1]."""

    @property
    def on_gpu(self) -> bool:
        """Whether batches run on a GPU (Triton's instance kind); known once loaded."""
        return False

    def run(self, batch: np.ndarray) -> BatchOutput:
        return self._forward(batch).checked(len(batch), len(self.spec.classes))

    def warm_up(self, max_batch_size: int) -> None:
        """Run the batch sizes the server will use first, so the first client waits for nothing."""
        for n in sorted({1, max_batch_size}):
            self.run(np.zeros((n, *self.spec.input_shape), dtype=np.float32))
