"""Linux process trees over /proc, for tests of servers that start worker processes."""

from __future__ import annotations

import os
from pathlib import Path


def parent_pid(pid: int) -> int | None:
    """The parent of `pid`, or None once it has gone."""
    try:
        # the command name in parentheses may hold spaces: the fields after its ")" do not
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
    except OSError:
        return None


def children(pid: int) -> list[int]:
    """The processes whose parent is `pid`."""
    return [int(p) for p in os.listdir("/proc") if p.isdigit() and parent_pid(int(p)) == pid]


def spawned_worker(pid: int) -> bool:
    """A worker process started by multiprocessing's spawn (uvicorn's --workers), still there."""
    try:
        return b"multiprocessing.spawn" in Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:  # gone
        return False
