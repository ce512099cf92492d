"""bench/gc_cost.py: Python's collector settings against the server's, in one process, side by side."""

from __future__ import annotations

import json

import pytest

from bench import gc_cost


@pytest.mark.integration
def test_both_settings_are_measured_and_only_python_s_collects_under_this_load(tmp_path, capsys) -> None:
    out = tmp_path / "gc_cost.json"
    assert gc_cost.main(["--windows", "2", "--window-s", "0.5", "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["command"].startswith("python -m bench.gc_cost") and result["machine"]["cpu"]
    assert all(len(v) == 2 and min(v) > 0 for v in result["cpu_us_per_request_windows"].values())
    assert all(n > 0 for n in result["requests"].values())
    # Python's 700-allocation threshold collects many times a second under 64 requests at a time;
    # the server's 10,000 with the startup heap frozen, far less.
    python_gen0, server_gen0 = (result["collections"][k].get("gen0", {}).get("count", 0) for k in ("python", "server"))
    assert python_gen0 > 10 * max(1, server_gen0)
    assert capsys.readouterr().out.count("bench: ") == 1
