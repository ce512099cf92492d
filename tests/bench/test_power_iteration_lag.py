"""bench/power_iteration_lag.py: how far the stored iterates sit below the sound per-layer bounds."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

pytest.importorskip("torch", reason="the lag is measured on torch checkpoints (the [train] extra)")

from bench import power_iteration_lag  # noqa: E402
from models import checkpoint  # noqa: E402
from models.checkpoint import TrainConfig  # noqa: E402

pytestmark = pytest.mark.unit


def _checkpoint(folder: Path) -> Path:
    config = TrainConfig(architecture="2c2f", input_shape=[1, 28, 28], classes=[str(i) for i in range(10)])
    checkpoint.save(folder, config.build_model(), config, epoch=0, history=[])
    return folder


def test_every_bounded_layer_is_reported_with_its_iterate_at_or_below_the_bound(tmp_path, capsys):
    folder = _checkpoint(tmp_path / "checkpoint")
    assert power_iteration_lag.main([str(folder)]) == 0
    report = json.loads(capsys.readouterr().out)
    assert [row["layer"] for row in report["layers"]] == ["body.layers.0", "body.layers.2", "body.layers.5"]
    for row in report["layers"]:
        assert 0 < row["ratio"] <= 1 + 1e-6
        assert row["ratio"] == pytest.approx(row["iterate_estimate"] / row["bound"])
    assert report["product"] == pytest.approx(math.prod(row["ratio"] for row in report["layers"]))


def test_a_folder_that_is_not_a_checkpoint_is_a_one_line_error(tmp_path, capsys):
    assert power_iteration_lag.main([str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "not a checkpoint" in err and err.count("\n") == 1


def test_trained_weights_are_asked_for_only_where_a_run_kept_an_average(tmp_path, capsys):
    folder = _checkpoint(tmp_path / "checkpoint")
    assert power_iteration_lag.main([str(folder), "--weights", "trained"]) == 2
    assert "trained.safetensors" in capsys.readouterr().err
