"""models/torch_backend.py's host side: what it packs on the device comes back unchanged."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from models.torch_backend import pack, unpack

pytestmark = pytest.mark.unit


def test_the_three_outputs_come_back_from_one_packed_tensor_exactly() -> None:
    logits = torch.tensor([[0.25, -1.5, 3.0], [1e-30, 7.0, -0.0]])
    label = torch.tensor([2, 99_999])  # the most classes a manifest may name, less one
    radius = torch.tensor([0.3, float("inf")])
    out = unpack(pack(logits, label, radius).numpy())
    assert out["logits"].tolist() == logits.tolist()
    assert out["label"].dtype == np.int64 and out["label"].tolist() == [2, 99_999]
    assert out["radius"].tolist() == [pytest.approx(0.3), float("inf")]
