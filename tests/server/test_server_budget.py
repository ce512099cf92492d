"""The bytes a process holds of requests: taken as a request reads and decodes, given back whole."""

from __future__ import annotations

import asyncio

import numpy as np
import orjson
import pytest

from server import decode
from server.budget import LARGE_JSON_BYTES, Hold, InFlightBytes
from server.errors import PayloadTooLarge, Unavailable
from server.repository import InputSpec
from server.routes.v1 import _decode_json

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


# -- large JSON bodies: one parsed document converted at a time per process ------------------------


def pixel_body(images: int, value: float) -> bytes:
    return orjson.dumps({"instances": np.full((images, 28, 28), value).tolist()})


def test_large_json_bodies_are_converted_one_at_a_time_small_ones_at_once(monkeypatch: pytest.MonkeyPatch) -> None:
    """Two large pixel-array bodies never have images converted in between each other's (each one's
    parsed document is alive until its last image), while a small body and other requests still run
    between the large one's images."""
    monkeypatch.setattr(decode, "TURN_S", 0.0)  # a turn after every image
    converted: list[float] = []
    pixels_into = decode._pixels_into
    monkeypatch.setattr(decode, "_pixels_into", lambda lists, *a: (converted.append(lists[0][0]), pixels_into(lists, *a)))
    first, second, small = pixel_body(40, 0.25), pixel_body(40, 0.5), pixel_body(1, 0.75)
    assert len(small) <= LARGE_JSON_BYTES < min(len(first), len(second))
    budget = InFlightBytes(2**30)

    async def main() -> None:
        await asyncio.gather(*(_decode_json(body, GREY, Hold(budget)) for body in (first, second, small)))

    asyncio.run(main())
    assert converted.index(0.75) < 40  # the small body went while the first large one was in turns
    large = [value for value in converted if value != 0.75]
    assert large == [0.25] * 40 + [0.5] * 40
