"""The paper's architectures by name (DESIGN section 1), plus a small LiResNet.

Convolutions use 'same' padding; strided convolutions have kernel 4, others kernel 3, as in the
official GloRo code. The activation is a choice: MinMax (GroupSort-2) or ReLU.
"""

from __future__ import annotations

from typing import Callable

from torch import nn

from models.gloro import GloroNet
from models.layers import (BoundedSequential, Conv2d, Flatten, InputNormalization, LipschitzModule, Linear,
                           MinMax, ReLU, ResidualConv, Shape)

ACTIVATIONS: dict[str, Callable[[], LipschitzModule]] = {"minmax": MinMax, "relu": ReLU}

# (kind, width, stride): "c" a convolution, "d" a dense layer; the final dense head is separate.
Spec = list[tuple[str, int, int]]

SPECS: dict[str, Spec] = {
    "2c2f": [("c", 16, 2), ("c", 32, 2), ("d", 100, 1)],
    "4c3f": [("c", 32, 1), ("c", 32, 2), ("c", 64, 1), ("c", 64, 2), ("d", 512, 1), ("d", 512, 1)],
    "6c2f": [("c", 32, 1), ("c", 32, 1), ("c", 32, 2), ("c", 64, 1), ("c", 64, 1), ("c", 64, 2), ("d", 512, 1)],
    "8c2f": [("c", 64, 1), ("c", 64, 1), ("c", 64, 2), ("c", 128, 1), ("c", 128, 1), ("c", 128, 2),
             ("c", 256, 1), ("c", 256, 2), ("d", 256, 1)],
}


def _layers_from_spec(spec: Spec, input_shape: Shape, activation: str) -> list[nn.Module]:
    act = ACTIVATIONS[activation]
    layers: list[nn.Module] = []
    channels = input_shape[0]
    features: int | None = None
    for kind, width, stride in spec:
        if kind == "c":
            layers += [Conv2d(channels, width, kernel_size=4 if stride > 1 else 3, stride=stride), act()]
            channels = width
        else:
            if features is None:
                layers.append(Flatten())
                features = _flat_features(layers, input_shape)
            layers += [Linear(features, width), act()]
            features = width
    return layers


def _flat_features(layers: list[nn.Module], input_shape: Shape) -> int:
    shape = input_shape
    for layer in layers:
        shape = layer.bind(shape)
    return int(shape[0])


def _liresnet_layers(input_shape: Shape, activation: str, width: int = 32, blocks: int = 4) -> list[nn.Module]:
    """A small LiResNet: stem, residual blocks x + conv(x), a strided neck, one dense layer."""
    act = ACTIVATIONS[activation]
    layers: list[nn.Module] = [Conv2d(input_shape[0], width, 3), act()]
    for _ in range(blocks):
        layers += [ResidualConv(width, 3), act()]
    layers += [Conv2d(width, width, 4, stride=2), act(), Conv2d(width, width, 4, stride=2), act(), Flatten()]
    features = _flat_features(layers, input_shape)
    return layers + [Linear(features, 256), act()]


ARCHITECTURES: dict[str, Callable[[Shape, str], list[nn.Module]]] = {
    **{name: (lambda spec: lambda shape, act: _layers_from_spec(spec, shape, act))(spec) for name, spec in SPECS.items()},
    "liresnet": _liresnet_layers,
}


def build(name: str, input_shape: Shape, num_classes: int, activation: str = "minmax",
          normalize_rows: bool = False, mean: list[float] | None = None,
          std: list[float] | None = None) -> GloroNet:
    """Build a GloroNet by architecture name. Raises ValueError on an unknown name or activation."""
    if name not in ARCHITECTURES:
        raise ValueError(f"unknown architecture {name!r}; choose from {', '.join(ARCHITECTURES)}")
    if activation not in ACTIVATIONS:
        raise ValueError(f"unknown activation {activation!r}; choose from {', '.join(ACTIVATIONS)}")
    layers = ARCHITECTURES[name](tuple(input_shape), activation)
    if mean is not None and std is not None:
        layers = [InputNormalization(mean, std), *layers]
    body = BoundedSequential(*layers, input_shape=tuple(input_shape))
    return GloroNet(body, num_classes, normalize_rows=normalize_rows)
