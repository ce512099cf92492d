"""The command line and result file shared by the micro-benchmarks (`bench.decode`,
`bench.metrics_cost`): best of `--repeats` timings of `--number` calls, JSON at `--out`."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from bench import machine
from bench.models import ROOT


def parser(prog: str, doc: str, number: int, repeats: int, out_name: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=prog, description=doc.split("\n\n")[0])
    p.add_argument("--number", type=int, default=number, help="calls per timing")
    p.add_argument("--repeats", type=int, default=repeats, help="timings per case; the best is kept")
    p.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / out_name)
    return p


def write(out: Path, prog: str, argv: list[str], measured: dict[str, Any]) -> dict[str, Any]:
    """The result with its command and machine, written as JSON to `out`."""
    result = {"command": " ".join([prog, *argv]), "machine": machine.describe(ROOT), **measured}
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1) + "\n")
    return result
