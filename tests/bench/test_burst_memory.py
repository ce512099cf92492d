"""bench.burst_memory: a fresh server's peak memory under a burst of large requests."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench import burst_memory


@pytest.mark.unit
def test_an_unknown_kind_is_a_one_line_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert burst_memory.main(["--server", "x=", "--kinds", "none", "--out", str(tmp_path / "b.json")]) == 2
    assert capsys.readouterr().err.startswith("python -m bench.burst_memory: error: unknown kind(s) none")


@pytest.mark.e2e
def test_a_small_burst_is_answered_and_its_peak_read(tmp_path: Path) -> None:
    out = tmp_path / "burst.json"
    assert burst_memory.main(["--server", "here=", "--kinds", "b64", "--clients", "2", "--out", str(out)]) == 0
    (row,) = json.loads(out.read_text())["rows"]
    assert row["server"] == "here" and row["kind"] == "b64" and row["statuses"] == {"200": 2}
    assert row["rss_peak_mib"] >= row["rss_start_mib"] > 10
