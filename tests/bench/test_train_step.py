"""bench/train_step.py (and bench/denormals.py, its denormal half): a checkpoint's training step
timed per setting (denormals x layout), each setting in its own process."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

pytest.importorskip("torch", reason="it times torch training steps (the [train] extra)")

from bench import denormals, train_step  # noqa: E402
from models import checkpoint  # noqa: E402
from models.checkpoint import TrainConfig  # noqa: E402

MNIST = Path(__file__).resolve().parents[2].parent / "shared" / "datasets" / "mnist"


@pytest.fixture
def untrained_2c2f(tmp_path: Path) -> Path:
    if not (MNIST / "train-images-idx3-ubyte.gz").is_file():
        pytest.skip("real MNIST not found")
    config = TrainConfig(architecture="2c2f", data_dir=str(MNIST), input_shape=[1, 28, 28],
                         classes=[str(i) for i in range(10)])
    checkpoint.save(tmp_path, config.build_model(), config, epoch=0, history=[])
    return tmp_path


@pytest.mark.integration
def test_every_chosen_setting_is_timed(untrained_2c2f, capsys):
    assert train_step.main([str(untrained_2c2f), "--weights", "model", "--steps", "1", "--threads", "1",
                            "--denormals", "flushed", "--layouts", "contiguous,channels_last"]) == 0
    rows = json.loads(capsys.readouterr().out)["rows"]
    assert [(r["denormals"], r["layout"]) for r in rows] == [("flushed", "contiguous"), ("flushed", "channels_last")]
    assert all(r["seconds_per_step"] > 0 for r in rows)


@pytest.mark.integration
def test_denormals_times_both_settings_in_the_training_layout(untrained_2c2f, capsys):
    assert denormals.main([str(untrained_2c2f), "--weights", "model", "--steps", "1", "--threads", "1"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["layout"] == "channels_last"  # what training uses on the CPU
    assert result["seconds_per_step_denormals_kept"] > 0 and result["seconds_per_step_denormals_flushed"] > 0


@pytest.mark.unit
@pytest.mark.parametrize("tool", [train_step, denormals])
def test_a_folder_without_a_checkpoint_is_a_one_line_error(tool, tmp_path, capsys):
    assert tool.main([str(tmp_path)]) == 2
    assert capsys.readouterr().err.count("\n") == 1


@pytest.mark.unit
def test_an_unknown_layout_is_a_one_line_error(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        train_step.main([str(tmp_path), "--layouts", "nhwc"])
    assert exit_info.value.code == 2 and "--layouts must be among contiguous, channels_last" in capsys.readouterr().err
