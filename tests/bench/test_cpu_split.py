"""bench/cpu_split.py: a request's CPU in process, by thread, beside the in-process ceiling."""

from __future__ import annotations

import json
import sys

import pytest

from bench import cpu_split

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")


@pytest.mark.integration
def test_each_thread_and_the_ceiling_are_measured_and_the_split_adds_up(tmp_path, capsys) -> None:
    out = tmp_path / "cpu_split.json"
    assert cpu_split.main(["--models", "mnist", "--windows", "1", "--window-s", "0.5", "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["command"].startswith("python -m bench.cpu_split") and result["machine"]["cpu"]
    [model] = result["models"]
    us = model["us_per_request"]
    assert model["model"] == "mnist-2c2f" and all(len(v) == 1 for v in model["windows"].values())
    assert min(us["event_loop"], us["batch_thread"], us["backend_wall"], us["ceiling"], us["ceiling_2_threads"]) > 0
    assert us["app_total"] == pytest.approx(us["event_loop"] + us["batch_thread"])
    assert us["app_above_ceiling"] == pytest.approx(us["app_total"] - us["ceiling"])
    assert us["app_above_ceiling_2_threads"] == pytest.approx(us["app_total"] - us["ceiling_2_threads"])
    assert capsys.readouterr().out.count("bench: ") == 1
