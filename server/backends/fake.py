"""A model-free backend for tests: deterministic answers, optional delay and failure.

label = round(mean pixel * (m - 1)); radius = 0.5 for every image; logits peak at the label.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import numpy as np

from server.backends.base import Backend, BatchOutput
from server.repository import ModelSpec


class FakeBackend(Backend):
    def __init__(
        self,
        spec: ModelSpec,
        delay_s: float = 0.0,
        fail_if: Callable[[np.ndarray], bool] | None = None,
    ) -> None:
        super().__init__(spec)
        self.delay_s = delay_s
        self.fail_if = fail_if
        self.batch_sizes: list[int] = []
        self.loaded = False

    def load(self) -> None:
        self.loaded = True

    def _forward(self, batch: np.ndarray) -> BatchOutput:
        self.batch_sizes.append(len(batch))
        if self.delay_s:
            time.sleep(self.delay_s)
        if self.fail_if is not None and self.fail_if(batch):
            raise RuntimeError("injected failure")
        m = len(self.spec.classes)
        label = np.rint(batch.reshape(len(batch), -1).mean(axis=1) * (m - 1)).astype(np.int64)
        logits = -np.abs(np.arange(m, dtype=np.float32)[None, :] - label[:, None]).astype(np.float32)
        return BatchOutput(logits, label, np.full(len(batch), 0.5, dtype=np.float32))
