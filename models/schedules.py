"""Schedules as small pure objects: progress in [0, 1] -> value. Parsed from names, never by prefix."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Protocol


class Schedule(Protocol):
    def __call__(self, progress: float) -> float: ...


def geometric(a: float, b: float, t: float) -> float:
    """The point a fraction ``t`` of the way from ``a`` to ``b`` on a log scale (both > 0)."""
    return math.exp(math.log(a) * (1 - t) + math.log(b) * t)


@dataclass(frozen=True)
class Constant:
    value: float

    def __call__(self, progress: float) -> float:
        return self.value


@dataclass(frozen=True)
class Ramp:
    """From ``start`` to ``end`` over the first ``fraction`` of training, then ``end``."""

    start: float
    end: float
    fraction: float

    def __call__(self, progress: float) -> float:
        if self.fraction <= 0 or progress >= self.fraction:
            return self.end
        return self.between(progress / self.fraction)

    def between(self, t: float) -> float:
        raise NotImplementedError


class LogRamp(Ramp):
    """Log-linear: equal ratios in equal times, so the small eps at the start get their share."""

    def between(self, t: float) -> float:
        return geometric(self.start, self.end, t)


class LinearRamp(Ramp):
    def between(self, t: float) -> float:
        return self.start + (self.end - self.start) * t


@dataclass(frozen=True)
class DecayAfterHalf:
    """Constant ``initial`` for the first half, then log-linear decay to ``final`` (the paper's recipe)."""

    initial: float
    final: float

    def __call__(self, progress: float) -> float:
        if progress < 0.5:
            return self.initial
        return geometric(self.initial, self.final, min((progress - 0.5) / 0.5, 1.0))


@dataclass(frozen=True)
class Cosine:
    initial: float
    final: float

    def __call__(self, progress: float) -> float:
        return self.final + 0.5 * (self.initial - self.final) * (1 + math.cos(math.pi * min(progress, 1.0)))


def eps_schedule(kind: str, train_eps: float, ramp_fraction: float, start: float = 0.01) -> Schedule:
    kinds = {
        # a log scale cannot start at or reach 0: training at eps 0 is plain training, constant
        "log": lambda: LogRamp(min(start, train_eps), train_eps, ramp_fraction) if train_eps > 0 else Constant(0.0),
        "linear": lambda: LinearRamp(0.0, train_eps, ramp_fraction),
        "constant": lambda: Constant(train_eps),
    }
    if kind not in kinds:
        raise ValueError(f"unknown eps ramp {kind!r}; choose from {', '.join(kinds)}")
    return kinds[kind]()


def lr_schedule(kind: str, lr: float, final_lr: float) -> Schedule:
    kinds = {
        "decay-after-half": lambda: DecayAfterHalf(lr, final_lr),
        "cosine": lambda: Cosine(lr, final_lr),
        "constant": lambda: Constant(lr),
    }
    if kind not in kinds:
        raise ValueError(f"unknown lr schedule {kind!r}; choose from {', '.join(kinds)}")
    return kinds[kind]()


EPS_RAMPS = ("log", "linear", "constant")
LR_SCHEDULES = ("decay-after-half", "cosine", "constant")
