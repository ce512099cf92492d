"""bench/machine.py: reading a process's or a thread's /proc stat file."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from bench import machine

pytestmark = [pytest.mark.unit, pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")]


def test_a_stat_file_gives_its_name_and_fields_even_when_the_name_holds_brackets(tmp_path) -> None:
    stat = tmp_path / "stat"
    ticks = os.sysconf("SC_CLK_TCK")
    fields = ["S", "1", "42", "42"] + ["0"] * 7 + [str(3 * ticks), str(ticks)] + ["0"] * 5
    stat.write_text(f"123 (a) (b c) {' '.join(fields)}\n")
    name, got = machine.proc_stat(stat)
    assert name == "a) (b c" and got == fields
    assert machine.stat_cpu_seconds(got) == 4.0


def test_this_process_is_read_and_a_gone_one_is_none(tmp_path) -> None:
    name, fields = machine.proc_stat("/proc/self/stat")
    assert name and int(fields[2]) == os.getpgrp() and machine.stat_cpu_seconds(fields) >= 0
    assert machine.proc_stat(Path(tmp_path) / "no-such-process" / "stat") is None
