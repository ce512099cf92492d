"""The bytes a process holds of requests: taken as a request reads and decodes, given back whole."""

from __future__ import annotations

import pytest

from server.budget import Hold, InFlightBytes
from server.errors import PayloadTooLarge, Unavailable
from server.repository import InputSpec

pytestmark = pytest.mark.unit
GREY = InputSpec(shape=(1, 28, 28), color_mode="L")


def test_each_request_gives_back_exactly_what_it_took() -> None:
    budget = InFlightBytes(10_000)
    first, second = Hold(budget), Hold(budget)
    first.take(1_000, "body bytes")
    second.take(2_000, "body bytes")
    first.inputs(1, GREY)  # 3,136 bytes of float32
    assert budget.held == 6_136
    first.release()
    assert budget.held == 2_000 and first.bytes == 0
    second.release()
    assert budget.held == 0


def test_past_the_limit_a_request_is_refused_for_now_and_takes_nothing() -> None:
    budget = InFlightBytes(5_000)
    Hold(budget).take(4_000, "body bytes")
    late = Hold(budget)
    with pytest.raises(Unavailable, match=r"holds 4000 bytes .* another 3136 \(decoded images\) would pass its limit of 5000"):
        late.inputs(1, GREY)
    assert budget.held == 4_000 and late.bytes == 0


def test_inputs_that_could_never_fit_are_too_large_not_unavailable() -> None:
    with pytest.raises(PayloadTooLarge, match="2 images of 1x28x28 decode to 6272 bytes, more than a server process holds"):
        Hold(InFlightBytes(5_000)).inputs(2, GREY)
