"""Triton's classification extension in the server's own terms: the top classes of a batch of logits,
and the BYTES tensor that carries them (server/open_inference.py)."""

from __future__ import annotations

import struct

import numpy as np
import pytest

from server.open_inference import OutputTensor, top_classes

pytestmark = pytest.mark.unit

NAMES = ["zero", "one", "two", "three"]


def test_the_highest_come_first_and_a_tie_goes_to_the_lower_index() -> None:
    logits = np.array([[0.5, 2.0, -1.0, 2.0], [3.0, 1.0, 2.0, 0.0]], dtype=np.float32)
    assert top_classes(logits, NAMES, 3).tolist() == [
        ["2.000000:1:one", "2.000000:3:three", "0.500000:0:zero"],
        ["3.000000:0:zero", "2.000000:2:two", "1.000000:1:one"],
    ]


def test_more_than_the_model_has_gives_every_class_and_nan_comes_last() -> None:
    logits = np.array([[np.nan, 1.0, -2.0, 0.0]], dtype=np.float32)
    top = top_classes(logits, NAMES, 50)
    assert top.shape == (1, 4)
    assert [entry.split(":")[1] for entry in top[0]] == ["1", "3", "2", "0"]
    assert top[0, -1] == "nan:0:zero"


def test_a_bytes_tensor_is_each_strings_utf8_after_its_length_in_four_little_endian_bytes() -> None:
    tensor = OutputTensor("logits", "BYTES", np.array([["1.0:0:zéro", ""]], dtype=object))
    assert tensor.shape == [1, 2] and tensor.json_data() == ["1.0:0:zéro", ""]
    first = "1.0:0:zéro".encode()
    assert tensor.raw() == struct.pack("<I", len(first)) + first + struct.pack("<I", 0)


def test_numeric_outputs_are_little_endian_row_major_whatever_their_layout() -> None:
    values = np.asarray(np.arange(6, dtype="<f4").reshape(2, 3).T)  # a transposed, non-contiguous view
    tensor = OutputTensor("logits", "FP32", values)
    assert tensor.raw() == np.ascontiguousarray(values).tobytes()
    assert OutputTensor("certified", "BOOL", np.array([True, False])).raw() == b"\x01\x00"
