"""Prometheus's own promtool, run for real, or the test skipped where it is not installed."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest


def promtool(*args: str, stdin: str | None = None, cwd: Path | None = None) -> subprocess.CompletedProcess:
    exe = shutil.which("promtool")
    if exe is None:
        pytest.skip("promtool is not installed (Debian package `prometheus`)")
    return subprocess.run([exe, *args], input=stdin, capture_output=True, text=True, cwd=cwd)
