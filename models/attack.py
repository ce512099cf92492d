"""An l2 PGD attack with random restarts, to check certificates empirically.

A certificate says no x' with ||x' - x||_2 <= eps changes the prediction; the attack searches that
ball (not clipped to [0, 1]: the certificate covers the whole ball) for a point that does.
"""

from __future__ import annotations

from typing import Callable

import torch


def _normalize(v: torch.Tensor) -> torch.Tensor:
    norms = v.flatten(1).norm(dim=1).clamp_min(1e-12)
    return v / norms.view(-1, *([1] * (v.dim() - 1)))


def _project(delta: torch.Tensor, eps: float) -> torch.Tensor:
    norms = delta.flatten(1).norm(dim=1).clamp_min(1e-12)
    factor = (eps / norms).clamp(max=1.0)
    return delta * factor.view(-1, *([1] * (delta.dim() - 1)))


def pgd_l2(forward: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, labels: torch.Tensor, eps: float,
           steps: int = 50, restarts: int = 5, seed: int = 0) -> torch.Tensor:
    """Return a bool mask [N]: True where an x' within eps of x changes the predicted ``labels``.

    Maximises the best wrong-class margin max_{j != y} f_j - f_y with normalised-gradient steps.
    """
    generator = torch.Generator(device=x.device).manual_seed(seed)
    broken = torch.zeros(len(x), dtype=torch.bool, device=x.device)
    step_size = 2.5 * eps / steps
    for restart in range(restarts):
        if restart == 0:
            delta = torch.zeros_like(x)
        else:
            noise = torch.randn(x.shape, generator=generator, device=x.device)
            radius = torch.rand(len(x), generator=generator, device=x.device).view(-1, *([1] * (x.dim() - 1)))
            delta = _normalize(noise) * radius * eps
        for _ in range(steps):
            delta.requires_grad_(True)
            logits = forward(x + delta)
            true = logits.gather(1, labels[:, None]).squeeze(1)
            others = logits.scatter(1, labels[:, None], float("-inf")).amax(dim=1)
            margin = others - true
            broken |= (margin > 0).detach()
            (grad,) = torch.autograd.grad(margin.sum(), delta)
            delta = _project(delta.detach() + step_size * _normalize(grad), eps)
        with torch.no_grad():
            broken |= forward(x + delta).argmax(dim=1) != labels
    return broken
