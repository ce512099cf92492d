"""Clean accuracy and verified-robust accuracy (VRA) of a GloroNet on a data set."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from models.data import Dataset, to_float
from models.gloro import SAFETY_FACTOR, BoundMode, GloroNet, RadiusHead
from models.numerics import exact_float32


@dataclass
class Evaluation:
    labels: np.ndarray  # true labels [N]
    predicted: np.ndarray  # [N]
    radius: np.ndarray  # [N] certified radius (0 where wrong is still reported as the radius)

    @property
    def correct(self) -> np.ndarray:
        return self.predicted == self.labels

    @property
    def clean_accuracy(self) -> float:
        return float(self.correct.mean())

    def vra(self, eps: float) -> float:
        """Share of points both correct and certified at ``eps``."""
        # float64: a Python float beside float32 radii is cast to float32, and 1e300 overflows (a warning)
        return float((self.correct & (self.radius > np.float64(eps))).mean())

    def majority_share(self) -> float:
        return float(np.bincount(self.labels).max() / len(self.labels))


@torch.no_grad()
def evaluate(model: GloroNet, data: Dataset, mode: BoundMode = BoundMode.SOUND, batch_size: int = 1000,
             device: str | torch.device = "cpu", safety_factor: float = SAFETY_FACTOR,
             margin_allowance: float = 0.0) -> Evaluation:
    model.eval()
    predicted, radius = [], []
    with exact_float32():
        head = RadiusHead(model.lipschitz_matrix(mode, safety_factor).detach(), margin_allowance=margin_allowance)
        head = head.to(device)
        for start in range(0, len(data.labels), batch_size):
            x = to_float(data.images[start:start + batch_size]).to(device)
            label, r = head(model(x))
            predicted.append(label.cpu().numpy())
            radius.append(r.cpu().numpy())
    return Evaluation(data.labels, np.concatenate(predicted), np.concatenate(radius))


# Fewer test images than this cannot tell a constant classifier from a good one (one image is
# always "at the largest class share").
MIN_JUDGED_IMAGES = 100


def is_collapsed(evaluation: Evaluation, margin: float = 0.02) -> bool:
    """A constant-ish classifier: clean accuracy at or below the largest class share (plus a margin);
    never on fewer than MIN_JUDGED_IMAGES test images."""
    if len(evaluation.labels) < MIN_JUDGED_IMAGES:
        return False
    return evaluation.clean_accuracy <= evaluation.majority_share() + margin
