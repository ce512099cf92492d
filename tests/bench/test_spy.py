"""bench/spy.py: a real server's CPU by thread under load, with its requests, batches and stacks."""

from __future__ import annotations

import json
import os
import shutil
import sys
import threading
import time

import pytest

from bench import spy

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")


@pytest.mark.unit
def test_collapsed_stacks_give_each_function_its_share_and_each_thread_its_name(tmp_path) -> None:
    collapsed = tmp_path / "stacks.txt"
    collapsed.write_text(
        "thread (11): MainThread;run (a.py:1);decode (d.py:2) 3\n"
        "thread (11): MainThread;run (a.py:1) 1\n"
        "thread (12): batcher-m-0;forward (f.py:9) 4\n")
    top = spy.heaviest_functions(collapsed)
    assert top["samples"] == 8
    assert dict(top["inclusive"])["run (a.py:1)"] == 0.5 and dict(top["self"])["decode (d.py:2)"] == 0.375
    assert spy.thread_names(collapsed) == {11: "MainThread", 12: "batcher-m-0"}


@pytest.mark.unit
def test_a_busy_thread_shows_its_cpu_and_an_idle_one_none() -> None:
    stop = threading.Event()
    tids: list[int] = []

    def spin() -> None:
        tids.append(threading.get_native_id())
        while not stop.is_set():
            pass

    worker = threading.Thread(target=spin)
    worker.start()
    before = spy.thread_cpu_seconds(os.getpid())
    time.sleep(0.3)
    after = spy.thread_cpu_seconds(os.getpid())
    stop.set()
    worker.join()
    busy = after[tids[0]][1] - before[tids[0]][1]
    assert busy > 0.05
    idle_main = after[threading.get_native_id()][1] - before[threading.get_native_id()][1]
    assert idle_main < busy


@pytest.mark.e2e
def test_both_servers_are_measured_under_load(tmp_path, capsys) -> None:
    argv = ["--models", "mnist", "--seconds", "1", "--connections", "8", "--serve-flags", "--switch-interval-ms 0.5",
            "--out", str(tmp_path)]
    assert spy.main(argv) == 0
    result = json.loads((tmp_path / "spy.json").read_text())
    a, b = result["servers"]["a"], result["servers"]["b"]
    assert a["command"].endswith("--switch-interval-ms 0.5") and b["command"].endswith("--switch-interval-ms 0.5")
    for server in (a, b):
        window = server["in_cpu_window"]
        assert window["req_per_s"] > 0 and window["process_cpu_ms_per_request"] > 0
        assert server["process_cores"] > 0 and server["threads_in_cpu_window"]
        assert server["load_over_whole_spell"]["successes"] > 0 and not server["load_over_whole_spell"]["errors"]
        if shutil.which("py-spy") is None:
            assert "py-spy is not on PATH" in server["stacks"]["error"]
    assert b["in_cpu_window"]["mean_batch"] == 1.0
    assert a["in_cpu_window"]["mean_batch"] >= 1.0
    assert capsys.readouterr().out.count("bench.spy a:") == 1
