"""bench/reload.py: requests through SIGHUP replacements of --workers, counted by outcome."""

from __future__ import annotations

import json

import pytest

from bench import reload


def test_server_flags_are_what_follows_the_double_dash() -> None:
    assert reload.server_flags(["--runs", "2", "--", "--reuse-port"]) == (["--runs", "2"], ["--reuse-port"])
    assert reload.server_flags(["--runs", "2"]) == (["--runs", "2"], [])


@pytest.mark.e2e
@pytest.mark.parametrize("keep_alive", [False, True], ids=["a connection a request", "kept alive"])
def test_a_short_run_counts_every_request_by_outcome(tmp_path, capsys, keep_alive: bool) -> None:
    out = tmp_path / "reload.json"
    own = ["--clients", "2", "--reloads", "1", "--interval-s", "2", "--out", str(out)]
    assert reload.main(own + (["--keep-alive"] if keep_alive else [])) == 0
    result = json.loads(out.read_text())
    assert result["command"].startswith("python -m bench.reload") and result["served_commit"]
    [run] = result["runs"]
    assert run["flags"] == ["--workers", "2"] and run["keep_alive"] == keep_alive and run["answered_200"] > 0
    assert run["requests"] == sum(run["outcomes"].values())
    assert run["requests"] == run["answered_200"] + run["answered_other"] + run["failed"]
    assert result["requests"] == run["requests"] and result["outcomes"] == run["outcomes"]
    assert capsys.readouterr().out.count("bench: ") == 1
