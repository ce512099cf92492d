"""bench/denormals.py: training-step time with denormals kept and flushed, each in its own process."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

pytest.importorskip("torch", reason="it times torch training steps (the [train] extra)")

from bench import denormals  # noqa: E402
from models import checkpoint  # noqa: E402
from models.checkpoint import TrainConfig  # noqa: E402

MNIST = Path(__file__).resolve().parents[2].parent / "shared" / "datasets" / "mnist"


@pytest.mark.integration
@pytest.mark.skipif(not (MNIST / "train-images-idx3-ubyte.gz").is_file(), reason="real MNIST not found")
def test_both_settings_are_timed_on_the_checkpoint(tmp_path, capsys):
    config = TrainConfig(architecture="2c2f", data_dir=str(MNIST), input_shape=[1, 28, 28],
                         classes=[str(i) for i in range(10)])
    checkpoint.save(tmp_path, config.build_model(), config, epoch=0, history=[])
    assert denormals.main([str(tmp_path), "--weights", "model", "--steps", "1", "--threads", "1"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["seconds_per_step_denormals_kept"] > 0 and result["seconds_per_step_denormals_flushed"] > 0


@pytest.mark.unit
def test_a_folder_without_a_checkpoint_is_a_one_line_error(tmp_path, capsys):
    assert denormals.main([str(tmp_path)]) == 2
    assert capsys.readouterr().err.count("\n") == 1
