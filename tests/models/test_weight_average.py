"""The weight average: an exponential moving average of the parameters, checkpointed and resumed."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch
from safetensors.torch import load_file

from models import checkpoint
from models.checkpoint import TrainConfig
from models.layers import Linear
from models.train import train
from models.weight_average import WeightAverage


def test_the_average_follows_the_exponential_moving_average_of_the_parameters():
    layer = Linear(3, 2)
    average = WeightAverage(layer, decay=0.9)
    history = []
    for step in range(4):
        with torch.no_grad():
            layer.linear.weight.fill_(float(step + 1))
        history.append(float(step + 1))
        average.update()
    expected = history[0]  # the first update copies; every later one moves 10 % of the way
    for value in history[1:]:
        expected = 0.9 * expected + 0.1 * value
    averaged = average.averaged()
    assert torch.allclose(averaged.linear.weight, torch.full((2, 3), expected))
    assert average.updates == 4
    assert not torch.allclose(averaged.linear.weight, layer.linear.weight)


def test_buffers_are_copied_from_the_trained_model_not_averaged():
    layer = Linear(3, 2)
    average = WeightAverage(layer, decay=0.5)
    average.update()
    with torch.no_grad():
        layer.u.copy_(torch.tensor([[0.0, 1.0, 0.0]]))
    average.update()
    assert torch.equal(average.averaged().u, layer.u)


@pytest.mark.parametrize("decay", [0.0, 1.0, -0.5, 2.0])
def test_a_decay_outside_zero_one_is_refused(decay):
    with pytest.raises(ValueError, match="strictly between 0 and 1"):
        WeightAverage(Linear(3, 2), decay)


def _config(mnist_dir, epochs: int) -> TrainConfig:
    return TrainConfig(architecture="2c2f", data_dir=str(mnist_dir), epochs=epochs, train_subset=1024,
                       test_subset=200, batch_size=128, ema_decay=0.9)


@pytest.mark.integration
def test_a_run_with_an_average_checkpoints_the_average_and_the_trained_weights(tmp_path, mnist_dir):
    record = train(_config(mnist_dir, 1), tmp_path, progress=False)
    folder = tmp_path / "checkpoint"
    assert sorted(p.name for p in folder.iterdir()) == [
        "model.safetensors", "optimizer.safetensors", "state.json", "trained.safetensors"]
    averaged, trained = load_file(folder / "model.safetensors"), load_file(folder / "trained.safetensors")
    assert averaged.keys() == trained.keys()
    assert not torch.allclose(averaged["body.layers.0.conv.weight"], trained["body.layers.0.conv.weight"])
    assert checkpoint.load_state(folder)["average_updates"] == 1024 // 128
    # The epoch's test numbers are the average's: the checkpoint's network is what was tested.
    model, _, _ = checkpoint.load_model(folder)
    assert model.body.lipschitz_bound() == pytest.approx(record["body_lipschitz"], rel=1e-9)


@pytest.mark.integration
def test_resuming_a_run_with_an_average_continues_both_exactly(tmp_path, mnist_dir):
    train(_config(mnist_dir, 2), tmp_path / "straight", progress=False)
    train(_config(mnist_dir, 2), tmp_path / "halves", progress=False, stop_after=1)
    train(_config(mnist_dir, 2), tmp_path / "halves", resume=True, progress=False)
    for name in ("model.safetensors", "trained.safetensors"):
        straight = load_file(tmp_path / "straight" / "checkpoint" / name)
        resumed = load_file(tmp_path / "halves" / "checkpoint" / name)
        for key in straight:
            assert torch.allclose(straight[key], resumed[key], atol=1e-6), (name, key)
    assert checkpoint.load_state(tmp_path / "halves" / "checkpoint")["average_updates"] == 2 * (1024 // 128)


@pytest.mark.integration
def test_fine_tuning_from_a_run_with_an_average_starts_from_the_average(tmp_path, mnist_dir):
    train(_config(mnist_dir, 1), tmp_path / "first", progress=False)
    source = tmp_path / "first" / "checkpoint"
    config = replace(_config(mnist_dir, 1), ema_decay=None, lr=1e-12, final_lr=1e-12, init_from=str(source))
    train(config, tmp_path / "tuned", progress=False)
    start, tuned = load_file(source / "model.safetensors"), load_file(tmp_path / "tuned" / "checkpoint" / "model.safetensors")
    for key in start:
        if not key.endswith(".u"):
            assert torch.allclose(start[key], tuned[key], atol=1e-6), key
