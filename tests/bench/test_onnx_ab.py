"""bench/onnx_ab.py: two graphs of one model side by side, their outputs compared, their time by operator."""

from __future__ import annotations

import json
import shutil

import pytest

from bench import onnx_ab
from bench.models import SHIPPED

MODEL = SHIPPED / "mnist-2c2f" / "1" / "model.onnx"


@pytest.mark.integration
def test_two_graphs_are_timed_compared_and_profiled(tmp_path, capsys):
    twin = tmp_path / "twin.onnx"
    shutil.copy(MODEL, twin)
    out = tmp_path / "ab.json"
    argv = [str(MODEL), str(twin), "--batches", "1,4", "--rounds", "2", "--round-s", "0.02", "--out", str(out)]
    assert onnx_ab.main(argv) == 0
    result = json.loads(out.read_text())
    assert result["command"].startswith("python -m bench.onnx_ab") and result["machine"]["cpu"]
    assert [r["batch"] for r in result["rows"]] == [1, 4]
    for row in result["rows"]:
        assert row["a_us_per_image"] > 0 and row["b_us_per_image"] > 0
        assert row["b_over_a"] == pytest.approx(row["b_us_per_image"] / row["a_us_per_image"])
        assert row["max_abs_difference"] == {"logits": 0.0, "label": 0.0, "radius": 0.0}
    for side in ("a", "b"):
        profile = result["profile_us_per_image"][side]
        assert "Conv" in profile and all(us >= 0 for us in profile.values())
    assert "identical outputs" in capsys.readouterr().out


@pytest.mark.unit
def test_a_missing_or_unreadable_graph_is_a_one_line_error(tmp_path, capsys):
    with pytest.raises(SystemExit) as missing:
        onnx_ab.main([str(MODEL), str(tmp_path / "none.onnx"), "--out", str(tmp_path / "o.json")])
    assert missing.value.code == 2 and "none.onnx: no such file" in capsys.readouterr().err
    garbage = tmp_path / "garbage.onnx"
    garbage.write_bytes(b"not a graph")
    with pytest.raises(SystemExit, match=r"garbage\.onnx: onnxruntime cannot load it"):
        onnx_ab.main([str(MODEL), str(garbage), "--out", str(tmp_path / "o.json")])
    assert not (tmp_path / "o.json").exists()
