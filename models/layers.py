"""Lipschitz-bounded layers.

Every layer derives from :class:`LipschitzModule` and answers two questions about its l2
Lipschitz constant:

- :meth:`~LipschitzModule.lipschitz_estimate`: a differentiable power-iteration estimate with a
  persistent iterate, one step per call (training);
- :meth:`~LipschitzModule.lipschitz_bound`: a sound upper bound in float64 (certification).

Neither depends on train/eval mode. :class:`BoundedSequential` folds over its children and raises
on a child with no bound: there is no silent "Lipschitz 1".
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from typing import Iterable

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.grad import conv2d_input

from models import bounds

Shape = tuple[int, ...]  # (C, H, W) or (features,), without the batch axis


class UnboundedLayerError(TypeError):
    """A module has no known Lipschitz bound, so nothing built on it can be certified."""


class LipschitzModule(nn.Module, ABC):
    """A layer with a training estimate and a sound bound on its l2 Lipschitz constant."""

    def bind(self, input_shape: Shape) -> Shape:
        """Record the input shape (bounds of convolutions depend on it); return the output shape."""
        with torch.no_grad():
            return tuple(self(torch.zeros(1, *input_shape)).shape[1:])

    @abstractmethod
    def lipschitz_estimate(self) -> torch.Tensor:
        """Differentiable estimate (may under-estimate); advances the power iteration one step."""

    @abstractmethod
    def lipschitz_bound(self) -> float:
        """Sound upper bound, computed in float64."""


class FreeLayer(LipschitzModule):
    """A parameter-free 1-Lipschitz layer."""

    def lipschitz_estimate(self) -> torch.Tensor:
        return torch.ones(())

    def lipschitz_bound(self) -> float:
        return 1.0


class ReLU(FreeLayer):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(x)


class MinMax(FreeLayer):
    """GroupSort with groups of 2 along the channel axis: channel i pairs with channel i + C/2.

    Each pair (a, b) becomes (min, max): a permutation of its inputs, so 1-Lipschitz and
    gradient-norm preserving. Pairing across halves keeps it two elementwise ops (no reshape).
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # A plain int, not a traced size: the exported graph then splits at a constant (one Split
        # node) instead of computing the half from Shape, Gather and Div for two Slices, which made
        # a one-image 2C2F pass about a tenth slower in onnxruntime (docs/benchmarks.md, item 21).
        # The channel count of a layer is fixed, so nothing is lost.
        c = int(x.shape[1])
        if c % 2:
            raise ValueError(f"MinMax needs an even number of channels, got {c}")
        if self.training and torch.is_grad_enabled():
            return _MinMaxPairs.apply(x)
        a, b = x.split(c // 2, dim=1)
        return torch.cat([torch.minimum(a, b), torch.maximum(a, b)], dim=1)


class _MinMaxPairs(torch.autograd.Function):
    """MinMax for training: one comparison, and a backward that routes each gradient back.

    Autograd's minimum/maximum backward splits gradients at ties (eq, div, where, masked_fill for
    each op), which cost a third of a 4C3F training step on a CPU. Routing by the saved comparison
    gives the same values and, except at exact ties, the same gradients. Export and evaluation
    (eval mode) keep the plain minimum/maximum, so the ONNX graph is unchanged.
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        a, b = x.chunk(2, dim=1)
        a_larger = a > b
        ctx.save_for_backward(a_larger)
        return torch.cat([torch.where(a_larger, b, a), torch.where(a_larger, a, b)], dim=1)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        (a_larger,) = ctx.saved_tensors
        grad_low, grad_high = grad.chunk(2, dim=1)
        return torch.cat([torch.where(a_larger, grad_high, grad_low),
                          torch.where(a_larger, grad_low, grad_high)], dim=1)


class Flatten(FreeLayer):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.flatten(1)


class InputNormalization(LipschitzModule):
    """(x - mean) / std per channel; costs 1 / min(std) because eps lives in pixel space."""

    def __init__(self, mean: list[float], std: list[float]):
        super().__init__()
        if min(std) <= 0:
            raise ValueError("normalisation std must be positive")
        self.register_buffer("mean", torch.tensor(mean).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std).view(1, -1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std

    def lipschitz_estimate(self) -> torch.Tensor:
        return 1.0 / self.std.min()

    def lipschitz_bound(self) -> float:
        return float(1.0 / self.std.to(torch.float64).min())


class _PowerIterated(LipschitzModule):
    """Shared power-iteration machinery: a persistent iterate ``u`` and ``power_steps`` steps per
    training-time estimate (the gloro reference takes 5; see :func:`set_power_steps`)."""

    u: torch.Tensor
    power_steps: int = 1

    def _init_iterate(self, shape: Shape) -> None:
        u = torch.randn(1, *shape)
        self.register_buffer("u", u / u.norm(), persistent=True)

    @abstractmethod
    def _apply_linear(self, u: torch.Tensor) -> torch.Tensor:
        """The layer's linear part (no bias) applied to ``u``."""

    @abstractmethod
    def _apply_adjoint(self, v: torch.Tensor) -> torch.Tensor:
        """The adjoint of :meth:`_apply_linear`."""

    @torch.no_grad()
    def power_step(self, steps: int = 1) -> None:
        u = self.u
        for _ in range(steps):
            u = self._apply_adjoint(self._apply_linear(u))
            u = u / u.norm().clamp_min(1e-12)
        self.u.copy_(u)

    def lipschitz_estimate(self) -> torch.Tensor:
        if self.training:
            self.power_step(self.power_steps)
        u = self.u.detach()
        return self._apply_linear(u).norm() / u.norm()

    @torch.no_grad()
    def converge(self, tol: float = 1e-5, max_steps: int = 2000) -> float:
        """Iterate until the estimate changes by less than ``tol`` (relative); return it."""
        threads = torch.get_num_threads()
        torch.set_num_threads(1)  # one image at a time: extra threads only add synchronisation
        try:
            previous = 0.0
            for _ in range(max_steps // 10):
                self.power_step(10)
                value = float(self._apply_linear(self.u).norm())
                if abs(value - previous) <= tol * value:
                    break
                previous = value
            return value
        finally:
            torch.set_num_threads(threads)


def set_power_steps(model: nn.Module, steps: int) -> None:
    """Power-iteration steps per training step for every layer of ``model``.

    Lipschitz training flattens each layer's spectrum, so one step a batch cannot follow the top
    singular vector as the weights move: on a 4C3F at Adam lr 3e-5 the iterates' estimates sat
    1.5-2.6 % under the sound per-layer bounds (11 % for the product), so training saw a smaller K,
    and hence a smaller effective eps, than it was asked to. More steps shrink that lag.
    """
    if steps < 1:
        raise ValueError(f"power_steps must be at least 1, got {steps}")
    for module in model.modules():
        if isinstance(module, _PowerIterated):
            module.power_steps = steps


class Linear(_PowerIterated):
    """Dense layer; sound bound is the exact largest singular value."""

    def __init__(self, in_features: int, out_features: int, bias: bool = True):
        super().__init__()
        self.linear = nn.Linear(in_features, out_features, bias=bias)
        self._init_iterate((in_features,))

    @property
    def weight(self) -> torch.Tensor:
        return self.linear.weight

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(x)

    def _apply_linear(self, u: torch.Tensor) -> torch.Tensor:
        return F.linear(u, self.linear.weight)

    def _apply_adjoint(self, v: torch.Tensor) -> torch.Tensor:
        return F.linear(v, self.linear.weight.t())

    def lipschitz_bound(self) -> float:
        return bounds.dense_bound(self.linear.weight)


def same_padding(size: int, kernel: int, stride: int) -> tuple[int, int]:
    """TensorFlow-style 'same' padding (before, after) so that output = ceil(size / stride)."""
    total = max((math.ceil(size / stride) - 1) * stride + kernel - size, 0)
    return total // 2, total - total // 2


class Conv2d(_PowerIterated):
    """Convolution with 'same' zero padding and any stride.

    The padding is explicit (possibly asymmetric, as TensorFlow's 'same'), so the operator whose
    norm is bounded is exactly the one run: pad (an isometric embedding), then a valid convolution.
    Call :meth:`bind` with the input shape before use.

    The forward pass pads inside the convolution (its symmetric part), which computes the same zeros
    times the same weights: the exported graph then holds one Conv with its own pads, not a Pad
    copying every activation before it (that copy cost about a tenth of a 6C2F's onnxruntime time,
    docs/benchmarks.md item 18).
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int = 1, bias: bool = True):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size, stride=stride, padding=0, bias=bias)
        self.stride = stride
        self.kernel_size = kernel_size
        self.pad: tuple[int, int, int, int] | None = None  # (left, right, top, bottom) for F.pad
        self.padded_size: tuple[int, int] | None = None

    @property
    def weight(self) -> torch.Tensor:
        return self.conv.weight

    def bind(self, input_shape: Shape) -> Shape:
        c, h, w = input_shape
        if c != self.conv.in_channels:
            raise ValueError(f"{type(self).__name__} expects {self.conv.in_channels} channels, got {c}")
        top, bottom = same_padding(h, self.kernel_size, self.stride)
        left, right = same_padding(w, self.kernel_size, self.stride)
        self.pad = (left, right, top, bottom)
        self.padded_size = (h + top + bottom, w + left + right)
        self._init_iterate((c, *self.padded_size))
        return super().bind(input_shape)

    def _require_bound(self) -> None:
        if self.pad is None:
            raise RuntimeError(f"{type(self).__name__} used before bind(input_shape)")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self._require_bound()
        left, right, top, bottom = self.pad
        across, down = min(left, right), min(top, bottom)  # torch pads both sides of an axis alike
        extra = (left - across, right - across, top - down, bottom - down)
        if any(extra):  # the rest of an asymmetric padding
            x = F.pad(x, extra)
        return F.conv2d(x, self.conv.weight, self.conv.bias, stride=self.stride, padding=(down, across))

    def _apply_linear(self, u: torch.Tensor) -> torch.Tensor:
        return F.conv2d(u, self.conv.weight, stride=self.stride)

    def _apply_adjoint(self, v: torch.Tensor) -> torch.Tensor:
        return conv2d_input(self.u.shape, self.conv.weight, v, stride=self.stride)

    def lipschitz_bound(self) -> float:
        self._require_bound()
        return bounds.conv_bound(self.conv.weight, self.stride, self.padded_size)


class ResidualConv(Conv2d):
    """LiResNet block x + conv(x) (stride 1, odd kernel, c_in == c_out).

    Its bound is the FFT bound of the kernel with the identity added at the centre tap, which is
    tighter than 1 + ||conv||.
    """

    def __init__(self, channels: int, kernel_size: int = 3, bias: bool = True):
        if kernel_size % 2 == 0:
            raise ValueError("ResidualConv needs an odd kernel")
        super().__init__(channels, channels, kernel_size, stride=1, bias=bias)
        # Small init keeps the block close to the identity, as LiResNet does.
        nn.init.normal_(self.conv.weight, std=0.01)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + super().forward(x)

    def _apply_linear(self, u: torch.Tensor) -> torch.Tensor:
        # u lives on the padded grid; the identity part is the centre crop of the padded input.
        left, right, top, bottom = self.pad
        h, w = u.shape[-2] - top - bottom, u.shape[-1] - left - right
        return u[..., top : top + h, left : left + w] + super()._apply_linear(u)

    def _apply_adjoint(self, v: torch.Tensor) -> torch.Tensor:
        return F.pad(v, self.pad) + super()._apply_adjoint(v)

    def lipschitz_bound(self) -> float:
        self._require_bound()
        return bounds.conv_bound(bounds.residual_kernel(self.conv.weight), 1, self.padded_size)


def require_bounded(layers: Iterable[nn.Module]) -> None:
    """Raise :class:`UnboundedLayerError` naming the first layer with no known Lipschitz bound."""
    for i, layer in enumerate(layers):
        if not isinstance(layer, LipschitzModule):
            raise UnboundedLayerError(
                f"layer {i} ({type(layer).__name__}) has no known Lipschitz bound; "
                "only layers from models.layers can be certified"
            )


class BoundedSequential(LipschitzModule):
    """A chain of bounded layers; its constants are the products of its children's.

    Raises :class:`UnboundedLayerError` on construction if any child has no known bound.
    """

    def __init__(self, *layers: nn.Module, input_shape: Shape):
        super().__init__()
        require_bounded(layers)
        self.layers = nn.ModuleList(layers)
        self.input_shape = tuple(input_shape)
        self.output_shape = self.bind(self.input_shape)

    def bind(self, input_shape: Shape) -> Shape:
        shape = tuple(input_shape)
        for layer in self.layers:
            shape = layer.bind(shape)
        return shape

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.layers:
            x = layer(x)
        return x

    def lipschitz_estimate(self) -> torch.Tensor:
        k = torch.ones(())
        for layer in self.layers:
            k = k * layer.lipschitz_estimate()
        return k

    def lipschitz_bound(self) -> float:
        return math.prod(layer.lipschitz_bound() for layer in self.layers)

    def named_bounds(self) -> list[dict[str, object]]:
        """Per-layer sound bound and converged estimate, for manifests and reports."""
        rows = []
        for i, layer in enumerate(self.layers):
            estimate = layer.converge() if isinstance(layer, _PowerIterated) else float(layer.lipschitz_estimate())
            rows.append({"name": f"body.{i}", "kind": type(layer).__name__,
                         "bound": layer.lipschitz_bound(), "estimate": estimate})
        return rows
