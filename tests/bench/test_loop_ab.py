"""bench/loop_ab.py: two checkouts' apps measured in turn, each in a process of its own."""

from __future__ import annotations

import json

import pytest

from bench import loop_ab
from bench.models import ROOT


@pytest.mark.integration
def test_both_sides_are_measured_window_by_window_and_paired(tmp_path, capsys) -> None:
    out = tmp_path / "loop_ab.json"
    # This checkout against itself: two processes, the same code.
    argv = ["--root", str(ROOT), "--models", "mnist", "--windows", "2", "--batches", "1", "--out", str(out)]
    assert loop_ab.main(argv) == 0
    result = json.loads(out.read_text())
    assert result["command"].startswith("python -m bench.loop_ab") and result["other_checkout"]["commit"]
    [model] = result["models"]
    assert model["model"] == "mnist-2c2f"
    rows = model["per_window"]
    assert set(rows) == {"this", "other"} and all(len(v) == 2 and min(v) > 0 for v in rows.values())
    differences = sorted(b - a for a, b in zip(rows["this"], rows["other"]))
    assert model["paired_difference_us"] == pytest.approx(sum(differences) / 2)  # the median of two
    assert capsys.readouterr().out.count("bench: ") == 1


def test_a_root_that_is_not_a_checkout_is_refused_in_one_line(tmp_path, capsys) -> None:
    with pytest.raises(SystemExit) as exited:
        loop_ab.main(["--root", str(tmp_path)])
    assert exited.value.code == 2
    assert "not a gloro-serve checkout" in capsys.readouterr().err
