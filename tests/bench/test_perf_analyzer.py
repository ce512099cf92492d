"""bench.perf_analyzer: gloro-serve configurations measured by NVIDIA's perf_analyzer, side by side."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from bench import perf_analyzer


@pytest.mark.e2e
def test_two_servers_at_two_concurrencies_with_server_side_numbers(tmp_path: Path) -> None:
    if shutil.which("perf_analyzer") is None:
        pytest.skip("perf_analyzer is not installed (bash bench/install_perf_analyzer.sh)")
    out = tmp_path / "pa.json"
    argv = ["--model", "mnist", "--server", "one=", "--server", "small=--max-batch-size 4",
            "--concurrency", "1", "4", "--interval-ms", "500", "--out", str(out), "--protocol", "http", "grpc", "grpc-stream",
            "--stability-percentage", "500"]  # behaviour, not figures: a busy machine must not fail it
    assert perf_analyzer.main(argv) == 0
    result = json.loads(out.read_text())
    assert result["model"] == "mnist-2c2f" and result["perf_analyzer"].startswith("Perf Analyzer Version")
    assert result["stability_percentage"] == 500 and result["protocols"] == ["http", "grpc", "grpc-stream"]
    assert set(result["rows"]) == {"one", "small", "one@grpc", "small@grpc", "one@grpc-stream", "small@grpc-stream"}
    assert result["servers"]["small"]["flags"] == ["--max-batch-size", "4"]  # without the port it drew
    for levels in result["rows"].values():
        assert set(levels) == {"1", "4"}
        for row in levels.values():
            assert row["infer_per_s"] > 0 and row["p99_us"] >= row["p50_us"] > 0
            assert row["server_compute_us"] > 0  # read from the statistics extension


@pytest.mark.unit
def test_without_perf_analyzer_it_says_how_to_install_it(tmp_path: Path, monkeypatch, capsys) -> None:
    monkeypatch.setattr(perf_analyzer.shutil, "which", lambda name: None)
    assert perf_analyzer.main(["--server", "a=", "--out", str(tmp_path / "pa.json")]) == 2
    assert capsys.readouterr().err == ("python -m bench.perf_analyzer: error: perf_analyzer is not on PATH; "
                                       "install it with: bash bench/install_perf_analyzer.sh\n")


@pytest.mark.unit
def test_a_bad_level_is_a_usage_error(tmp_path: Path, capsys) -> None:
    with pytest.raises(SystemExit) as exit_:
        perf_analyzer.main(["--server", "a=", "--concurrency", "0", "--out", str(tmp_path / "pa.json")])
    assert exit_.value.code == 2 and "--concurrency levels must be >= 1" in capsys.readouterr().err
