"""The usual JSON predict bodies (base64 images, or pixel arrays) are read without pydantic; whatever
that reader accepts, the pydantic model accepts with the same values, and it leaves everything else
to the model."""

from __future__ import annotations

import json

import numpy as np
import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from server.wire_v1 import MAX_INSTANCES, PredictRequest, read_predict_body

IMAGE = {"b64": "iVBORw0KGgo="}


def pydantic_reading(body: bytes) -> tuple[list, float | None, bool] | None:
    """What PredictRequest makes of `body` in the reader's terms; None if it refuses it (or the
    route would: a mix of images and arrays)."""
    try:
        request = PredictRequest.model_validate_json(body)
    except ValidationError:
        return None
    arrays = [i for i in request.instances if isinstance(i, list)]
    if arrays:
        return (arrays, request.epsilon, request.return_logits) if len(arrays) == len(request.instances) else None
    return [i.b64 for i in request.instances], request.epsilon, request.return_logits


@pytest.mark.parametrize(
    ("body", "read"),
    [
        ({"instances": [IMAGE]}, (["iVBORw0KGgo="], None, False)),
        ({"instances": [IMAGE, IMAGE], "epsilon": 0.3, "return_logits": True}, (["iVBORw0KGgo="] * 2, 0.3, True)),
        ({"instances": [IMAGE], "epsilon": 1}, (["iVBORw0KGgo="], 1.0, False)),  # an integer eps, as a float
        ({"instances": [IMAGE], "epsilon": None}, (["iVBORw0KGgo="], None, False)),
        ({"instances": [[[0.5, 1]], [[0, 0.25]]], "epsilon": 0.5}, ([[[0.5, 1]], [[0, 0.25]]], 0.5, False)),
        ({"instances": [[[[0.5]]]], "return_logits": True}, ([[[[0.5]]]], None, True)),
        ({"instances": [[]]}, ([[]], None, False)),  # not an image, but an array: decoding says what is wrong
    ],
)
def test_the_usual_body_is_read_as_pydantic_reads_it(body, read) -> None:
    raw = json.dumps(body).encode()
    assert read_predict_body(raw) == read == pydantic_reading(raw)


@pytest.mark.parametrize(
    "body",
    [
        b'{"instances": [[[[0.5]]], {"b64": "iVBO"}]}',  # a mix: pydantic takes it, the route refuses it
        b'{"instances": [{"b64": "iVBO"}, [[[0.5]]]]}',
        b'{"instances": [{"b64": "iVBO"}], "return_logits": "true"}',  # pydantic converts it; left to pydantic
        b'{"instances": [{"b64": "iVBO"}], "epsilon": "0.3"}',
        b'{"instances": [{"b64": "iVBO"}], "epsilon": true}',
        b'{"instances": [{"b64": "iVBO", "x": 1}]}',  # extra field in an image
        b'{"instances": [{"b64": "iVBO"}], "extra": 1}',
        b'{"instances": []}',
        b'{"instances": {"b64": "iVBO"}}',
        b'[{"b64": "iVBO"}]',
        b'{"instances": [{"b64": 5}]}',
        b'{"instances": [{"b64": "iVBO"}]',  # truncated
        b"",
        b'{"instances": [{"b64": "iVBO"}], "epsilon": NaN}',
    ],
)
def test_anything_else_is_left_to_pydantic(body) -> None:
    assert read_predict_body(body) is None


def test_more_images_than_a_request_may_hold_are_left_to_pydantic() -> None:
    body = orjson.dumps({"instances": [IMAGE] * (MAX_INSTANCES + 1)})
    assert read_predict_body(body) is None and pydantic_reading(body) is None
    assert read_predict_body(orjson.dumps({"instances": [IMAGE] * MAX_INSTANCES})) is not None


scalars = st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats(allow_nan=False) | st.text(max_size=8)
values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner,
                                                                                            max_size=3), max_leaves=8)
b64_images = st.fixed_dictionaries({"b64": st.text(max_size=12)})
arrays = st.lists(st.lists(st.floats(allow_nan=False) | st.integers(-(2**70), 2**70) | values, max_size=3), max_size=3)
images = b64_images | arrays | values
# Mostly bodies the reader accepts, with one thing off now and then.
near_usual = st.fixed_dictionaries(
    {"instances": st.lists(b64_images, min_size=1, max_size=3) | st.lists(arrays, min_size=1, max_size=3)
     | st.lists(images, max_size=3)},
    optional={"epsilon": st.none() | st.integers(-(2**70), 2**70) | st.floats(allow_nan=False) | values,
              "return_logits": st.booleans() | values, "other": values})
bodies = near_usual | st.dictionaries(st.sampled_from(["instances", "epsilon", "return_logits", "other"]),
                                      st.lists(images, max_size=3) | values, max_size=3) | values


@settings(max_examples=400, deadline=None)
@given(bodies)
def test_what_the_reader_accepts_pydantic_accepts_with_the_same_values(body) -> None:
    try:
        raw = orjson.dumps(body)
    except (TypeError, orjson.JSONEncodeError):  # integers past 64 bits: not JSON orjson writes
        raw = json.dumps(body).encode()
    read = read_predict_body(raw)
    if read is None:
        return
    expected = pydantic_reading(raw)
    assert expected is not None and read[1:] == expected[1:]
    if read[0] and isinstance(read[0][0], list):  # pixel arrays: the same pixels, or refused both ways
        assert as_pixels(read[0]) == as_pixels(expected[0])
    else:
        assert read[0] == expected[0]


def as_pixels(instances: list) -> list[bytes] | str:
    """What the server makes of pixel arrays, shapes aside: float32 pixels in [0, 1], or a refusal.
    (orjson reads an integer below -2**63 as a float where pydantic keeps it whole: as float32 pixels
    the two are the same.)"""
    try:
        with np.errstate(over="ignore"):  # a number past float32's range becomes inf, refused below
            arrays = [np.asarray(i, dtype=np.float32) for i in instances]
    except (TypeError, ValueError, OverflowError):
        return "refused"
    if not all(a.size == 0 or (a.min() >= 0 and a.max() <= 1) for a in arrays):
        return "refused"
    return [a.tobytes() + repr(a.shape).encode() for a in arrays]
