"""Exponential moving average of the weights (Polyak averaging), via torch's ``AveragedModel``.

Why it matters here: with Adam at any but the smallest learning rates, the weights of a GloRo
net jitter from step to step, and the certified margin is sensitive to that jitter (run 4 of the
shipped 4C3F certified 54.6% of the test set at lr 2.8e-5 and 60.0% once annealed to 1e-6; its
log is docs/results/mnist-4c3f-finetune3-log.jsonl). The average of the recent iterates sits in
the middle of that jitter, and because a spectral norm is convex, each layer's bound under the
average is at most the average of that layer's bounds.

Only parameters are averaged. Buffers are copied from the trained model: the power-iteration
iterates track the current weights (an average of unit vectors is not one), and the input
normalisation is constant.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn


class WeightAverage:
    """The averaged copy of ``model``; ``update`` after every optimiser step."""

    def __init__(self, model: nn.Module, decay: float):
        if not 0.0 < decay < 1.0:
            raise ValueError(f"the weight average's decay must lie strictly between 0 and 1, not {decay}")
        self._model = model
        self._average = AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(decay), use_buffers=False)

    def update(self) -> None:
        self._average.update_parameters(self._model)

    @property
    def updates(self) -> int:
        return int(self._average.n_averaged)

    def averaged(self) -> nn.Module:
        """The averaged network, its buffers synchronised with the trained model's."""
        with torch.no_grad():
            for mine, theirs in zip(self._average.module.buffers(), self._model.buffers(), strict=True):
                mine.copy_(theirs)
        return self._average.module

    def restore(self, averaged_state: dict[str, torch.Tensor], updates: int) -> None:
        """Continue an average saved by a checkpoint (its weights and how many steps it has seen)."""
        self._average.module.load_state_dict(averaged_state, strict=True)
        self._average.n_averaged.fill_(updates)
