"""Training on a GPU: the checkpoint it writes loads on the CPU and certifies there as the GPU said.

Skipped where torch sees no CUDA device, as in CI; run these on a GPU machine.
"""

from __future__ import annotations

import json

import pytest
import torch

from models import checkpoint
from models.checkpoint import TrainConfig
from models.data import load
from models.evaluate import evaluate
from models.gloro import BoundMode
from models.train import train

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device here")


@pytest.mark.integration
def test_a_checkpoint_trained_on_cuda_certifies_the_same_on_the_cpu(tmp_path, mnist_dir):
    config = TrainConfig(architecture="2c2f", data_dir=str(mnist_dir), eps=0.3, train_eps=0.45, epochs=3,
                         train_subset=6000, test_subset=1000, lr=3e-3, final_lr=1e-4)
    train(config, tmp_path, device="cuda", progress=False)
    on_gpu = json.loads((tmp_path / "log.jsonl").read_text().splitlines()[-1])
    model, saved, _ = checkpoint.load_model(tmp_path / "checkpoint")
    on_cpu = evaluate(model, load("mnist", str(mnist_dir), train=False).subset(1000), BoundMode.SOUND, device="cpu")
    assert on_gpu["test_accuracy"] > 0.8
    # the GPU evaluated in full float32, so at most a borderline image or two may differ
    assert abs(on_cpu.clean_accuracy - on_gpu["test_accuracy"]) <= 0.002
    assert abs(on_cpu.vra(0.3) - on_gpu["test_vra"]) <= 0.002
    assert model.body.lipschitz_bound() == pytest.approx(on_gpu["body_lipschitz"], rel=1e-4)
