"""What the benchmarks ran on: CPU, memory, load, versions, GPU, commit. Recorded with every result."""

from __future__ import annotations

import datetime as dt
import importlib.metadata
import os
import platform
import shutil
import subprocess
from pathlib import Path
from typing import Any

PACKAGES = ("numpy", "onnxruntime", "onnxruntime-gpu", "torch", "fastapi", "starlette", "uvicorn", "uvloop",
            "httptools", "pydantic", "pillow", "pyspng", "pybase64", "orjson", "prometheus-client", "litserve")


def _read(path: str) -> str:
    try:
        return Path(path).read_text()
    except OSError:
        return ""


def _run(*command: str) -> str:
    try:
        return subprocess.run(command, capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""


def proc_stat(path: Path | str) -> tuple[str, list[str]] | None:
    """A /proc/.../stat file (a process's or a thread's): its name and the fields after it (the
    first is the state, then ppid, pgrp, ...); None if it is gone (the process or thread ended)."""
    try:
        text = Path(path).read_text()
    except OSError:
        return None
    head, _, rest = text.rpartition(")")
    return head[head.index("(") + 1:], rest.split()


def stat_cpu_seconds(fields: list[str]) -> float:
    """User plus system CPU seconds from proc_stat's fields (utime and stime, in clock ticks)."""
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def cpu_model() -> str:
    for line in _read("/proc/cpuinfo").splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def memory_gib() -> float | None:
    for line in _read("/proc/meminfo").splitlines():
        if line.startswith("MemTotal:"):
            return round(int(line.split()[1]) / 2**20, 1)
    return None


def busiest_processes(n: int = 5) -> list[str]:
    """The other processes using the CPU when the run started (the machine is shared)."""
    lines = _run("ps", "-eo", "pcpu,ni,comm,args", "--sort=-pcpu", "--no-headers").splitlines()
    return [" ".join(line.split())[:120] for line in lines[:n]]


def gpu() -> str | None:
    if shutil.which("nvidia-smi"):
        names = _run("nvidia-smi", "--query-gpu=name,memory.total", "--format=csv,noheader")
        if names:
            return names
    return None


def versions() -> dict[str, str]:
    found = {}
    for name in PACKAGES:
        try:
            found[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    wrk = _run("wrk", "-v").splitlines() if shutil.which("wrk") else []
    if wrk:
        found["wrk"] = wrk[0].split(" [")[0]
    return found


def checkout(root: Path) -> dict[str, Any]:
    """The commit a checkout is at, and whether its tracked files differ from it."""
    dirty = _run("git", "-C", str(root), "status", "--porcelain", "--untracked-files=no")
    return {"commit": _run("git", "-C", str(root), "rev-parse", "--short", "HEAD") or "unknown",
            "uncommitted_changes": bool(dirty)}


def describe(root: Path) -> dict[str, Any]:
    return {
        "date_utc": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%S"),
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "cores_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "memory_gib": memory_gib(),
        "load_average": list(os.getloadavg()),
        "busiest_processes": busiest_processes(),
        "gpu": gpu(),
        "os": platform.platform(),
        "python": platform.python_version(),
        "packages": versions(),
        **checkout(root),
    }
