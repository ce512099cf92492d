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


@pytest.mark.integration
def test_a_failed_capture_is_reported_and_every_batch_runs_eagerly(monkeypatch) -> None:
    from pathlib import Path

    from models import torch_backend

    shipped = Path(__file__).resolve().parents[2] / "server" / "model_repository" / "mnist-2c2f" / "1"
    predictor = torch_backend.TorchPredictor(shipped, "cpu")
    x = np.random.default_rng(0).random((3, 1, 28, 28), dtype=np.float32)
    expected = predictor.run(x)
    assert predictor.capture((1, 28, 28)) is None and predictor._graphs == {}  # no graphs on the CPU

    def out_of_memory(*_args, **_kwargs):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB\nmore detail")

    monkeypatch.setattr(torch_backend, "CapturedForward", out_of_memory)
    predictor.device = torch.device("cuda")  # as if on a GPU: capture is attempted
    assert predictor.capture((1, 28, 28)) == "OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB"
    predictor.device = torch.device("cpu")
    assert predictor._graphs == {}
    got = predictor.run(x)
    assert got["label"].tolist() == expected["label"].tolist() and np.array_equal(got["radius"], expected["radius"])
