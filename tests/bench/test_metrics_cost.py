"""bench/metrics_cost.py: the event loop's metric updates are timed in both prometheus_client modes,
written at once and tallied an event-loop iteration at a time."""

from __future__ import annotations

import json

import pytest

from bench import metrics_cost


@pytest.mark.integration
def test_both_modes_are_timed_each_in_its_own_process(tmp_path, capsys) -> None:
    out = tmp_path / "metrics_cost.json"
    assert metrics_cost.main(["--number", "200", "--repeats", "1", "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["command"].startswith("python -m bench.metrics_cost") and result["machine"]["cpu"]
    us = result["us_per_request"]
    assert set(us) == {"one process", "multiprocess"} and all(v > 0 for v in us.values())
    assert result["extra_us"] == pytest.approx(us["multiprocess"] - us["one process"])
    for mode in us:  # the batch thread's updates, both ways, at each batch size
        batch = result["batch_thread_us_per_request"][mode]
        assert set(batch) == {"1", "16", "32"}
        assert all(b["one_by_one"] > 0 and b["at_once"] > 0 for b in batch.values())
        loop = result["loop_tallied_us_per_request"][mode]  # the loop's updates, both ways, a request
        assert set(loop) == {"1", "16", "32"}
        assert all(t["at_once"] > 0 and t["tallied"] > 0 for t in loop.values())
    assert capsys.readouterr().out.count("bench: ") == 1
