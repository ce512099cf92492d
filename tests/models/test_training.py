"""Training learns, checkpoints resume exactly, and the same command runs under torchrun."""

from __future__ import annotations

import json
import subprocess
from dataclasses import replace
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from models import checkpoint
from models.checkpoint import TrainConfig
from models.train import train

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.integration
def test_tiny_run_on_real_mnist_reaches_85_percent_and_certifies_half(trained_run):
    log = [json.loads(line) for line in (trained_run / "log.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in log] == [1, 2, 3]
    assert log[-1]["test_accuracy"] >= 0.85
    assert log[-1]["test_vra"] >= 0.5
    assert not log[-1]["collapsed"]
    assert sorted(p.name for p in (trained_run / "checkpoint").iterdir()) == [
        "model.safetensors", "optimizer.safetensors", "state.json"]


def _config(mnist_dir: Path, epochs: int) -> TrainConfig:
    return TrainConfig(architecture="2c2f", data_dir=str(mnist_dir), epochs=epochs, train_subset=1024,
                       test_subset=200, batch_size=128)


@pytest.mark.integration
def test_resume_continues_exactly_where_it_stopped(tmp_path, mnist_dir):
    train(_config(mnist_dir, 2), tmp_path / "straight", progress=False)
    train(_config(mnist_dir, 2), tmp_path / "halves", progress=False, stop_after=1)
    assert checkpoint.load_state(tmp_path / "halves" / "checkpoint")["epoch"] == 1
    train(_config(mnist_dir, 2), tmp_path / "halves", resume=True, progress=False)
    straight = load_file(tmp_path / "straight" / "checkpoint" / "model.safetensors")
    resumed = load_file(tmp_path / "halves" / "checkpoint" / "model.safetensors")
    assert straight.keys() == resumed.keys()
    for key in straight:
        assert torch.allclose(straight[key], resumed[key], atol=1e-6), key
    assert checkpoint.load_state(tmp_path / "halves" / "checkpoint")["epoch"] == 2


@pytest.mark.integration
def test_resume_refuses_a_checkpoint_of_another_architecture(tmp_path, mnist_dir):
    train(_config(mnist_dir, 1), tmp_path, progress=False)
    other = _config(mnist_dir, 2)
    other.architecture = "4c3f"
    with pytest.raises(checkpoint.CheckpointError, match="architecture='2c2f'"):
        train(other, tmp_path, resume=True, progress=False)


@pytest.mark.integration
def test_fine_tuning_starts_from_the_given_weights_and_counts_their_epochs(tmp_path, trained_run):
    config = replace(checkpoint.load_config(trained_run / "checkpoint"), epochs=1, lr=1e-9, final_lr=1e-9,
                     init_from=str(trained_run / "checkpoint"))
    record = train(config, tmp_path / "tuned", progress=False)
    start = load_file(trained_run / "checkpoint" / "model.safetensors")
    tuned = load_file(tmp_path / "tuned" / "checkpoint" / "model.safetensors")
    for key in start:
        if not key.endswith(".u"):  # power-iteration iterates move without any lr
            assert torch.allclose(start[key], tuned[key], atol=1e-6), key
    before = json.loads((trained_run / "log.jsonl").read_text().splitlines()[-1])
    assert record["test_accuracy"] == pytest.approx(before["test_accuracy"], abs=0.01)
    saved = checkpoint.load_config(tmp_path / "tuned" / "checkpoint")
    assert saved.init_from == str(trained_run / "checkpoint") and saved.init_epochs == 3
    assert checkpoint.trained_epochs(saved, checkpoint.load_state(tmp_path / "tuned" / "checkpoint")) == 4


@pytest.mark.integration
def test_fine_tuning_can_start_from_an_exported_model_version(tmp_path, trained_run):
    """A shipped repository entry (gloro.json + model.safetensors) is enough to fine-tune from."""
    from models.export import export_checkpoint

    exported = tmp_path / "repo" / "tiny" / "1"
    export_checkpoint(trained_run / "checkpoint", exported, test_subset=200, train_command="pytest fixture")
    config = replace(checkpoint.load_config(trained_run / "checkpoint"), epochs=1, lr=1e-9, final_lr=1e-9,
                     init_from=str(exported))
    record = train(config, tmp_path / "tuned", progress=False)
    start = load_file(trained_run / "checkpoint" / "model.safetensors")
    tuned = load_file(tmp_path / "tuned" / "checkpoint" / "model.safetensors")
    for key in start:
        if not key.endswith(".u"):
            assert torch.allclose(start[key], tuned[key], atol=1e-6), key
    before = json.loads((trained_run / "log.jsonl").read_text().splitlines()[-1])
    assert record["test_accuracy"] == pytest.approx(before["test_accuracy"], abs=0.01)
    assert checkpoint.load_config(tmp_path / "tuned" / "checkpoint").init_epochs == 3


def test_an_exported_version_without_training_provenance_is_refused(tmp_path):
    (tmp_path / "gloro.json").write_text(json.dumps({"format_version": 1, "name": "x", "version": "1"}))
    with pytest.raises(checkpoint.CheckpointError, match="no usable training provenance"):
        checkpoint.load_trained(tmp_path)


@pytest.mark.integration
def test_fine_tuning_refuses_a_checkpoint_of_another_network(tmp_path, trained_run):
    config = replace(checkpoint.load_config(trained_run / "checkpoint"), epochs=1, activation="relu",
                     init_from=str(trained_run / "checkpoint"))
    with pytest.raises(checkpoint.CheckpointError, match="activation='minmax'"):
        train(config, tmp_path / "tuned", progress=False)
    assert not (tmp_path / "tuned" / "checkpoint").exists()


@pytest.mark.e2e
def test_two_process_torchrun_on_cpu(tmp_path, mnist_dir):
    out = tmp_path / "ddp"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
           "-m", "models.cli", "train", "--arch", "2c2f", "--data-dir", str(mnist_dir), "--epochs", "1",
           "--train-subset", "2048", "--test-subset", "500", "--batch-size", "128", "--threads", "1",
           "--no-progress", "--out", str(out)]
    result = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300)
    # the ranks' own output comes first, torchrun's summary of a failure last: show both
    assert result.returncode == 0, result.stderr[:3000] + "\n...\n" + result.stderr[-1500:]
    (record,) = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    # each of the two ranks trained on half the data: 1024 images = 8 steps of 128
    assert record["epoch"] == 1 and record["test_accuracy"] > 0.5
    assert checkpoint.load_state(out / "checkpoint")["epoch"] == 1


@pytest.mark.integration
def test_training_flushes_denormals_and_gives_the_calling_thread_its_setting_back(tmp_path, mnist_dir):
    """Saturated losses can give denormal gradients, which made a 4C3F step 6x slower on the CPU;
    the flush must reach torch's worker threads, and not outlive training on the calling thread."""
    code = (
        "import torch; from models.numerics import flushed_denormals\n"
        "with flushed_denormals():\n"
        "    torch.set_num_threads(2); x = torch.full((1 << 16,), 1e-39)\n"  # split across both threads
        "    inside = float((x * 1.0).sum())\n"
        "print(inside, float(x[:1] * 1.0))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, check=True)
    inside, after = map(float, out.stdout.split())
    assert inside == 0.0  # kept, the sum would be 6.6e-35
    assert after == pytest.approx(1e-39)
    from models.numerics import _flushing

    train(_config(mnist_dir, 1), tmp_path, progress=False)
    assert not _flushing()


@pytest.mark.unit
def test_cpu_training_layout_is_channels_last_with_the_same_step(mnist_dir):
    from models import data
    from models.losses import make_loss
    from models.train import TrainStep, training_layout

    layout = training_layout(torch.device("cpu"))
    assert layout == torch.channels_last and training_layout(torch.device("cuda")) == torch.contiguous_format
    config = TrainConfig(architecture="2c2f", data_dir=str(mnist_dir), input_shape=[1, 28, 28],
                         classes=[str(i) for i in range(10)])
    test_set = data.load("mnist", str(mnist_dir), train=False)
    images, labels = test_set.images[:64], torch.as_tensor(test_set.labels[:64])
    results = []
    for memory_format in (torch.contiguous_format, layout):
        torch.manual_seed(0)
        model = config.build_model().to(memory_format=memory_format)
        logits, K = TrainStep(model)(data.to_float(images).contiguous(memory_format=memory_format))
        make_loss("gloro")(logits, labels, K, 0.3).backward()
        results.append((logits.detach(), [p.grad for p in model.parameters()]))
    (logits_a, grads_a), (logits_b, grads_b) = results
    torch.testing.assert_close(logits_b, logits_a, rtol=1e-5, atol=1e-5)
    for a, b in zip(grads_a, grads_b):
        torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("bound", [{"safety_factor": "1.005"}, {"safety_factor": 0.5}, {"safety_factor": True}, "x"])
def test_an_exported_version_with_a_malformed_safety_factor_is_refused(tmp_path, bound):
    provenance = {"config": {"architecture": "2c2f"}, "epochs": 3}
    (tmp_path / "gloro.json").write_text(json.dumps({"provenance": provenance, "bound": bound}))
    with pytest.raises(checkpoint.CheckpointError, match="bound.safety_factor must be a number of at least 1"):
        checkpoint.load_trained(tmp_path)
