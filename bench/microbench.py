"""What the micro-benchmarks share: the command line and result file (`bench.decode`,
`bench.metrics_cost`: best of `--repeats` timings of `--number` calls, JSON at `--out`), and a
measurement run in a process of its own in prometheus_client's multiprocess mode
(`bench.gc_cost`, `bench.cpu_split`)."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
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


def measure_as_worker(module: str, *args: Any) -> Any:
    """`module.measure(*args)` run in a new Python process in prometheus_client's multiprocess
    mode, as a `--workers` process runs (the mode is chosen when prometheus_client is first
    imported, so it takes a process of its own, with a metrics directory made for it): its JSON."""
    from server.metrics import MULTIPROCESS_DIR_VARIABLE

    call = f"measure({', '.join(map(repr, args))})"
    with tempfile.TemporaryDirectory(prefix="gloro-bench-") as folder:
        done = subprocess.run(
            [sys.executable, "-c", f"import json; from {module} import measure; print(json.dumps({call}))"],
            cwd=ROOT, env={**os.environ, MULTIPROCESS_DIR_VARIABLE: folder}, capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])
