"""bench/certificate_attack.py: attacks the shipped models' certified points and keeps one entry per model.

A tiny attack (a few points, two steps) so that it runs in seconds: the real run is the benchmark.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

pytest.importorskip("torch", reason="the attack runs the models in torch (the [train] extra)")

from bench import certificate_attack  # noqa: E402

MNIST = Path(__file__).resolve().parents[2].parent / "shared" / "datasets" / "mnist"
TINY = ["--limit", "4", "--steps", "2", "--restarts", "1", "--teeth-points", "4", "--batch-size", "4"]
pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(not (MNIST / "t10k-images-idx3-ubyte.gz").is_file(), reason="real MNIST not found"),
]


def test_a_run_over_one_model_keeps_the_others_results_and_drops_stale_ones(tmp_path: Path) -> None:
    out = tmp_path / "attack.json"
    earlier = {"version": "1", "attacked": 7, "broken": 0, "complete": True, "command": "an earlier run"}
    out.write_text(json.dumps({"command": "old", "date": "then", "machine": {}, "models": [
        {"model": "no-longer-shipped", **earlier},
        {"model": "mnist-2c2f", "version": "0", "attacked": 1, "broken": 1, "complete": True},  # an old version
    ]}))
    assert certificate_attack.main([*TINY, "--models", "mnist-2c2f", "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    (entry,) = [m for m in result["models"] if m["model"] == "mnist-2c2f"]
    assert entry["version"] == "1" and entry["attacked"] == 4 and entry["broken"] == 0
    assert entry["command"].endswith("--models mnist-2c2f --out " + str(out)) and entry["date"] and entry["machine"]
    assert entry["complete"] is False and entry["certified"] > 9000  # 4 of the shipped 2C2F's 9,663
    assert "no-longer-shipped" not in {m["model"] for m in result["models"]}
    assert result["total_broken"] == sum(m["broken"] for m in result["models"])


def test_an_unknown_model_name_is_a_one_line_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert certificate_attack.main([*TINY, "--models", "mnist-9c9f", "--out", str(tmp_path / "a.json")]) == 2
    assert "no shipped model named mnist-9c9f" in capsys.readouterr().err
    assert not (tmp_path / "a.json").exists()
