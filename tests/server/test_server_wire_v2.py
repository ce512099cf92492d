"""A v2 inference request is read with simdjson, its JSON `data` left parsed but not made into
Python numbers until its turn; whatever it reads, pydantic's JSON parser reads the same, and every
request it cannot read, or whose fields are wrong, gets pydantic's answer."""

from __future__ import annotations

import asyncio

import orjson
import pytest
import simdjson
from hypothesis import given, settings
from hypothesis import strategies as st
from json_text import json_bytes

from server import decode
from server.decode import tensor_from_array_in_turns, tensor_from_list
from server.errors import BadRequest, parse_wire
from server.repository import InputSpec
from server.routes.v2 import _invalid_request, read_infer_request
from server.wire_v2 import InferRequest

GREY = InputSpec(shape=(1, 2, 2), color_mode="L")


def pydantic_reading(body: bytes) -> str:
    try:
        return repr(parse_wire(InferRequest, body, "inference header", _invalid_request).model_dump())  # NaN == NaN
    except BadRequest as exc:
        return str(exc)


def reading(body: bytes) -> str:
    """`read_infer_request`, its `data` as the Python lists pydantic would have made."""
    try:
        request = read_infer_request(body)
    except BadRequest as exc:
        return str(exc)
    for tensor in request.inputs:
        if type(tensor.data) is simdjson.Array:
            tensor.data = tensor.data.as_list()
    return repr(request.model_dump())


USUAL = {"id": "a", "parameters": {"epsilon": 0.3}, "outputs": [{"name": "label"}],
         "inputs": [{"name": "input", "shape": [1, 1, 2, 2], "datatype": "FP32", "data": [0, 0.5, 1, 0.25]}]}


@pytest.mark.parametrize(
    "body",
    [
        orjson.dumps(USUAL),
        orjson.dumps({"inputs": [{"name": "input", "shape": [1, 1, 2, 2], "datatype": "FP32", "data": [[[[0, 1], [1, 0]]]]}]}),
        orjson.dumps({"inputs": [{"name": "input", "shape": [1], "datatype": "FP32", "parameters": {"binary_data_size": 4}}]}),
        b'{"inputs": [{"name": "input", "name": "other", "shape": [1], "datatype": "FP32", "data": [1]}]}',  # the last name
        b'{"id": "a", "id": "b", "inputs": [{"name": "input", "shape": [1], "datatype": "FP32", "data": [1]}]}',
        b'{"inputs": [{"name": "input", "shape": [1], "datatype": "FP32", "data": [18446744073709551616]}]}',  # past 64 bits
        b'{"inputs": [{"name": "input", "shape": ["1"], "datatype": "FP32", "data": [1]}]}',  # pydantic converts "1"
        b'{"inputs": [{"name": 5, "shape": [1], "datatype": "FP32", "data": [1]}]}',
        b'{"inputs": [{"name": "input", "shape": [1], "datatype": "FP32", "data": [1], "extra": 1}]}',
        b'{"inputs": "all of them"}',
        b'{"inputs": [{"name": "input", "shape": [1], "datatype": "FP32", "data": [1]}], "\\u0000": 1}',
        b'{"inputs": [{"name": "input", "shape": [1], "datatype": "FP32", "data": [1], "\\u0000": 1}]}',
        b'{"inputs": [5]}',
        b"{}",
        b"[]",
        b'{"inputs": [',
        b'{"inputs": [{"name": "input", "shape": [1], "datatype": "FP32", "data": [NaN]}]}',
    ],
)
def test_a_request_is_read_as_pydantic_reads_it(body: bytes) -> None:
    assert reading(body) == pydantic_reading(body)


def test_the_usual_request_keeps_its_data_parsed_but_not_converted() -> None:
    request = read_infer_request(orjson.dumps(USUAL))
    assert type(request.inputs[0].data) is simdjson.Array and request.inputs[0].data.as_list() == [0, 0.5, 1, 0.25]


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats(allow_nan=False) | st.text(max_size=6),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
    max_leaves=8,
)
tensors = st.fixed_dictionaries(
    {"name": st.just("input") | json_values, "shape": st.lists(st.integers(0, 4), max_size=4) | json_values,
     "datatype": st.just("FP32") | json_values},
    optional={"data": st.lists(st.floats(0, 1) | json_values, max_size=4) | json_values,
              "parameters": st.dictionaries(st.text(max_size=6), json_values, max_size=2) | json_values,
              "other": json_values},
)
requests = st.fixed_dictionaries(
    {"inputs": st.lists(tensors, max_size=2) | json_values},
    optional={"id": st.text(max_size=6) | json_values, "parameters": st.dictionaries(st.text(max_size=6), json_values) | json_values,
              "outputs": st.lists(st.fixed_dictionaries({"name": st.text(max_size=6)}), max_size=2) | json_values,
              "other": json_values},
) | json_values


@settings(max_examples=300, deadline=None)
@given(requests)
def test_any_request_is_read_as_pydantic_reads_it(request) -> None:
    body = json_bytes(request)
    assert reading(body) == pydantic_reading(body)


# -- `data` made into a tensor a piece at a time ---------------------------------------------------


def parsed(data: list) -> simdjson.Array:
    return simdjson.Parser().parse(orjson.dumps({"data": data}))["data"]


def converted(data: list, shape: list[int]) -> tuple[str, bytes | str]:
    """What tensor_from_list and tensor_from_array_in_turns make of `data`: the tensor or the refusal."""
    outcomes = []
    for convert in (lambda: tensor_from_list(data, shape, GREY),
                    lambda: asyncio.run(tensor_from_array_in_turns(parsed(data), shape, GREY))):
        try:
            tensor = convert()
            outcomes.append(tensor.tobytes() + repr(tensor.shape).encode())
        except (BadRequest, decode.InvalidInput) as exc:
            outcomes.append(str(exc))
    return tuple(outcomes)


@pytest.fixture
def pieces_of_two_numbers(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(decode, "TENSOR_PIECE", 2)


@pytest.mark.parametrize(
    ("data", "shape"),
    [
        ([0, 0.25, 0.5, 1] * 3, [3, 1, 2, 2]),  # flat
        ([[[[0, 0.25], [0.5, 1]]]] * 3, [3, 1, 2, 2]),  # nested
        ([[0, 0.25, 0.5, 1]] * 3, [3, 1, 2, 2]),  # nested otherwise, the same count
        ([[[[0, 0.25], [0.5, 1]]], [[[0, 0.25], [0.5]]]], [2, 1, 2, 2]),  # ragged in the last piece
        ([[0, 0.25], [0.5, 1], 0.5, 0.5], [1, 1, 2, 2]),  # pieces of different depth
        ([0, 0.25, 0.5], [1, 1, 2, 2]),  # a value short
        ([0, 0.25, 0.5, 1, 1], [1, 1, 2, 2]),
        ([0, "0.25", True, 1], [1, 1, 2, 2]),  # numpy reads these as it did from pydantic's lists
        ([0, None, 0.5, 1], [1, 1, 2, 2]),
        ([0, 0.25, 0.5, 2], [1, 1, 2, 2]),
        ([0, "x", 0.5, 1], [1, 1, 2, 2]),
        ([], [1, 1, 2, 2]),
        ([0, 0.25, 0.5, 1], [1, 1, 2]),
    ],
)
def test_data_made_a_piece_at_a_time_is_what_it_is_made_at_once(data: list, shape: list[int], pieces_of_two_numbers) -> None:
    at_once, in_pieces = converted(data, shape)
    assert in_pieces == at_once


def test_data_is_made_in_turns_with_other_requests(monkeypatch: pytest.MonkeyPatch, pieces_of_two_numbers) -> None:
    monkeypatch.setattr(decode, "TURN_S", 0.0)
    order: list[str] = []

    async def run(name: str, work) -> None:
        await work
        order.append(name)

    async def main() -> None:
        data = parsed([0.5] * 16)
        await asyncio.gather(run("large", tensor_from_array_in_turns(data, [4, 1, 2, 2], GREY)), run("small", asyncio.sleep(0)))

    asyncio.run(main())
    assert order == ["small", "large"]
