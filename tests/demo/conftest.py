"""The demo tests reuse the server tests' helpers (a real server process, MNIST reading, PNGs)."""

from __future__ import annotations

import sys
from pathlib import Path

SERVER_TESTS = Path(__file__).resolve().parents[1] / "server"
if str(SERVER_TESTS) not in sys.path:
    sys.path.insert(0, str(SERVER_TESTS))
