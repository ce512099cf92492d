"""GloRo training objectives (DESIGN section 1), registered by name."""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F

from models.gloro import bottom_logit

# (logits [N, m], labels [N], K [m, m], eps) -> scalar loss
Loss = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, float], torch.Tensor]


def gloro_ce(logits: torch.Tensor, labels: torch.Tensor, K: torch.Tensor, eps: float) -> torch.Tensor:
    """Cross-entropy on [f, f_bot], f_bot taken w.r.t. the predicted class; the label is never bottom."""
    bottom = bottom_logit(logits, K, eps, logits.argmax(dim=1))
    return F.cross_entropy(torch.cat([logits, bottom.unsqueeze(1)], dim=1), labels)


def make_trades(lam: float) -> Loss:
    """TRADES-style: CE on the clean logits + lam * KL(softmax(f) || softmax([f, f_bot]))."""

    def trades(logits: torch.Tensor, labels: torch.Tensor, K: torch.Tensor, eps: float) -> torch.Tensor:
        bottom = bottom_logit(logits, K, eps, logits.argmax(dim=1))
        clean = F.log_softmax(logits, dim=1)
        robust = F.log_softmax(torch.cat([logits, bottom.unsqueeze(1)], dim=1), dim=1)[:, :-1]
        # The clean distribution puts no mass on bottom, so the KL sums over the m real classes.
        kl = (clean.exp() * (clean - robust)).sum(dim=1).mean()
        return F.cross_entropy(logits, labels) + lam * kl

    return trades


def emma(logits: torch.Tensor, labels: torch.Tensor, K: torch.Tensor, eps: float) -> torch.Tensor:
    """EMMA (Hu et al. 2023): raise every other logit by eps * K[y, j], using the true label y."""
    raised = logits + eps * K[labels]  # K[y, y] = 0 leaves the true logit as it is
    return F.cross_entropy(raised, labels)


def make_loss(name: str, trades_lambda: float = 1.0) -> Loss:
    registry: dict[str, Callable[[], Loss]] = {
        "gloro": lambda: gloro_ce,
        "trades": lambda: make_trades(trades_lambda),
        "emma": lambda: emma,
        "ce": lambda: (lambda logits, labels, K, eps: F.cross_entropy(logits, labels)),
    }
    if name not in registry:
        raise ValueError(f"unknown loss {name!r}; choose from {', '.join(registry)}")
    return registry[name]()


LOSSES = ("gloro", "trades", "emma", "ce")
