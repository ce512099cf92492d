"""Load and soak, CI-sized (issue 7, item 3): bench/soak.py's short mode against a real server process.

2,000 requests, 64 at a time, batches of 1, 4 and 16 real MNIST digits: every request gets a
well-formed 200 with one prediction per image, none is lost, the labels are the model's (its
accuracy, not chance), the server survives and exits 0 on SIGTERM, and its resident memory grows by
less than a generous bound. `python -m bench.soak` is the full 20,000-request run.
"""

from __future__ import annotations

import json

import pytest

from bench import soak

pytestmark = [pytest.mark.e2e]
REQUESTS = 2000
# Generous: the server holds ~110 MiB after start; a per-request leak of even 30 KiB would exceed it.
MAX_GROWTH_MIB = 60


def test_soak_ci_mode_loses_nothing_and_memory_stays_bounded(tmp_path):
    out = tmp_path / "soak.json"
    # A longer server-side timeout than the default 10 s: on a shared 2-core CI machine the client
    # itself competes with the server for CPU; a 504 there would measure the machine, not the server.
    code = soak.main(["--ci", "--out", str(out), "--", "--request-timeout-s", "60"])
    result = json.loads(out.read_text())
    assert result["requests"] == REQUESTS and result["concurrency"] == 64
    assert result["sent"] == REQUESTS
    assert result["errors"] == 0, result["errors_by_kind"]
    assert result["lost"] == 0, result["lost_by_kind"]
    assert result["successes"] == result["answered"] == REQUESTS
    # the mix 1, 4, 16 in turn, every image answered
    assert result["images"] == sum(soak.BATCH_SIZES[i % 3] for i in range(REQUESTS))
    assert result["label_accuracy"] > 0.95
    assert result["server"]["alive_after_load"] and result["server"]["exit_code_after_sigterm"] == 0
    assert result["rss_start_kib"] > 0 and result["rss_end_kib"] > 0
    assert result["rss_growth_kib"] < MAX_GROWTH_MIB * 1024, result["rss_growth_mib"]
    assert code == 0
