"""Schedules map training progress in [0, 1] to an eps or a learning rate."""

from __future__ import annotations

import math

import pytest

from models.schedules import eps_schedule, lr_schedule

pytestmark = pytest.mark.unit


def test_a_log_ramp_climbs_in_equal_ratios_then_holds_the_training_eps() -> None:
    ramp = eps_schedule("log", train_eps=1.0, ramp_fraction=0.5, start=0.01)
    assert ramp(0.0) == pytest.approx(0.01)
    assert ramp(0.25) == pytest.approx(0.1)  # halfway through the ramp: the geometric mean
    assert ramp(0.5) == ramp(0.9) == 1.0


def test_a_linear_ramp_climbs_from_zero_in_equal_steps() -> None:
    ramp = eps_schedule("linear", train_eps=0.45, ramp_fraction=0.5)
    assert [ramp(p) for p in (0.0, 0.25, 0.5, 1.0)] == pytest.approx([0.0, 0.225, 0.45, 0.45])


def test_no_ramp_trains_at_the_full_eps_from_the_first_step() -> None:
    ramp = eps_schedule("constant", train_eps=1.75, ramp_fraction=0.5)
    assert ramp(0.0) == ramp(1.0) == 1.75
    assert eps_schedule("log", train_eps=1.75, ramp_fraction=0.0)(0.0) == 1.75


def test_the_papers_learning_rate_holds_for_half_then_decays_log_linearly() -> None:
    lr = lr_schedule("decay-after-half", 1e-3, 1e-6)
    assert lr(0.0) == lr(0.49) == 1e-3
    assert lr(0.75) == pytest.approx(math.sqrt(1e-3 * 1e-6))
    assert lr(1.0) == pytest.approx(1e-6)


def test_cosine_goes_from_the_initial_to_the_final_rate() -> None:
    lr = lr_schedule("cosine", 5e-5, 1e-6)
    assert lr(0.0) == pytest.approx(5e-5) and lr(1.0) == pytest.approx(1e-6)
    assert lr(0.5) == pytest.approx((5e-5 + 1e-6) / 2)


@pytest.mark.parametrize(("make", "name"), [(eps_schedule, "exponential"), (lr_schedule, "step")])
def test_unknown_names_are_refused_with_the_choices(make, name: str) -> None:
    with pytest.raises(ValueError, match=f"unknown .* '{name}'; choose from"):
        make(name, 1.0, 0.5)
