"""The GloRo certification head (DESIGN section 1).

For logits f and a body that is k-Lipschitz, the margin f_i - f_j is K_ij-Lipschitz with
K_ij = k * ||w_i - w_j||, w the rows of the last (affine) layer. The functions here are the one
implementation of that idea: training, certification, export and the torch backend all call them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from enum import Enum

import torch
import torch.nn.functional as F
from torch import nn

from models.layers import BoundedSequential, Linear

# Frozen constants are multiplied by this before certification, so that float32 rounding in the
# logits can never flip a certificate: it buys eps * (factor - 1) * K_ij of margin for each pair,
# which tests/models/test_shipped_models.py requires to be 100x the float32-vs-float64 error on
# the test set. 1.001 bought only 69x on a 4C3F whose classes 4 and 9 have nearly equal head rows
# (K = 0.57); 1.005 buys about 340x there. Models exported earlier keep theirs (gloro.json says which).
SAFETY_FACTOR = 1.005


class BoundMode(str, Enum):
    ESTIMATE = "estimate"  # power iteration: training and monitoring only
    SOUND = "sound"  # guaranteed upper bound: certification and export


def head_distances(weight: torch.Tensor) -> torch.Tensor:
    """||w_i - w_j||_2 for all pairs of rows of the last layer's weight [m, d] -> [m, m]."""
    diff = weight.unsqueeze(1) - weight.unsqueeze(0)
    # sqrt of a clamped sum keeps the gradient finite on the zero diagonal
    return diff.pow(2).sum(-1).clamp_min(1e-24).sqrt() * (1 - torch.eye(weight.shape[0], device=weight.device))


def margin_lipschitz(k: torch.Tensor | float, weight: torch.Tensor) -> torch.Tensor:
    """K [m, m]: the Lipschitz constant of each margin f_i - f_j."""
    return k * head_distances(weight)


def bottom_logit(logits: torch.Tensor, K: torch.Tensor, eps: float, reference: torch.Tensor) -> torch.Tensor:
    """max over j != reference of f_j + eps * K[reference, j]  -> [N]."""
    raised = logits + eps * K[reference]
    mask = F.one_hot(reference, logits.shape[1]).bool()
    return raised.masked_fill(mask, float("-inf")).amax(dim=1)


class RadiusHead(nn.Module):
    """logits -> (label, radius), radius = max(0, min_{j != label} (f_label - f_j - a) / K[label, j]).

    `a`, the margin allowance, is the float32 rounding a margin may carry, taken off before the
    division. The safety factor on K buys eps * (factor - 1) * K of margin, which vanishes as eps
    does: without `a` a review found points certified at eps near 1e-6 that an image within eps
    of them broke, the two logits a few float32 steps apart (docs/artifact.md, "Rounding").
    The export sets `a` from the float32-vs-float64 logit error it measures (`set_margin_allowance`).

    Holds 1 / K (zero diagonal) and an offset (-a / K, and a huge penalty on the diagonal) as
    buffers, so the exported graph is two row gathers, a multiply-add, a min and a clamp: no
    division, no mask built per request.
    """

    def __init__(self, K: torch.Tensor, dtype: torch.dtype = torch.float32, margin_allowance: float = 0.0):
        super().__init__()
        eye = torch.eye(K.shape[0], dtype=torch.bool, device=K.device)
        inverse = torch.zeros_like(K, dtype=torch.float64)
        inverse[~eye] = 1.0 / K.to(torch.float64)[~eye]
        self.register_buffer("inverse_K", inverse.to(dtype))
        self.register_buffer("offset", torch.zeros_like(inverse, dtype=dtype))
        self.set_margin_allowance(margin_allowance)

    def set_margin_allowance(self, allowance: float) -> None:
        if not (allowance >= 0.0 and math.isfinite(allowance)):
            raise ValueError(f"a margin allowance must be finite and >= 0, not {allowance}")
        eye = torch.eye(self.offset.shape[0], dtype=torch.bool, device=self.offset.device)
        offset = -allowance * self.inverse_K.to(torch.float64)
        offset[eye] = torch.finfo(self.offset.dtype).max
        self.offset.copy_(offset)

    def forward(self, logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        label = logits.argmax(dim=1)
        top = logits.amax(dim=1, keepdim=True)
        radius = ((top - logits) * self.inverse_K[label] + self.offset[label]).amin(dim=1)
        return label, radius.clamp_min(0.0)


@dataclass
class Certificate:
    logits: torch.Tensor  # [N, m]
    label: torch.Tensor  # [N]
    radius: torch.Tensor  # [N]
    bottom: torch.Tensor  # [N] bottom logit at the eps asked for

    def certified(self, eps: float) -> torch.Tensor:
        return self.radius > eps


class GloroNet(nn.Module):
    """A bounded body followed by an affine head, with certification from one forward pass."""

    def __init__(self, body: BoundedSequential, num_classes: int, normalize_rows: bool = False):
        super().__init__()
        (features,) = body.output_shape
        self.body = body
        self.head = Linear(features, num_classes)
        self.normalize_rows = normalize_rows  # last-layer row normalisation (LLN)

    @property
    def head_weight(self) -> torch.Tensor:
        w = self.head.weight
        return w / w.norm(dim=1, keepdim=True) if self.normalize_rows else w

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(self.body(x), self.head_weight, self.head.linear.bias)

    def body_lipschitz(self, mode: BoundMode, safety_factor: float = SAFETY_FACTOR) -> torch.Tensor:
        if mode is BoundMode.SOUND:
            return torch.tensor(self.body.lipschitz_bound() * safety_factor, dtype=torch.float64)
        return self.body.lipschitz_estimate()

    def lipschitz_matrix(self, mode: BoundMode, safety_factor: float = SAFETY_FACTOR) -> torch.Tensor:
        """K [m, m] under the chosen bound (float64 for SOUND, differentiable for ESTIMATE); a
        re-export passes the safety factor its version was certified with."""
        k = self.body_lipschitz(mode, safety_factor)
        if mode is BoundMode.SOUND:
            return margin_lipschitz(k, self.head_weight.detach().to(torch.float64))
        return margin_lipschitz(k, self.head_weight)

    def certify(self, x: torch.Tensor, eps: float, mode: BoundMode = BoundMode.SOUND,
                K: torch.Tensor | None = None, margin_allowance: float = 0.0) -> Certificate:
        """Logits, label, radius and the bottom logit at ``eps``, from one forward pass."""
        logits = self(x)
        K = (self.lipschitz_matrix(mode) if K is None else K).to(device=logits.device, dtype=logits.dtype)
        label, radius = RadiusHead(K, logits.dtype, margin_allowance)(logits)
        return Certificate(logits, label, radius, bottom_logit(logits, K, eps, label))
