"""`python -m bench.compare`: gloro-serve configurations, or revisions, side by side in one run.

A before/after figure taken from two runs on a shared machine measures the machine as much as the
change. This starts every server named at once and loads each in turn, rounds rotating, with the
in-process ceiling measured in each round (`bench.serving.side_by_side`, as the suite's headline
does), so a change's effect is a ratio taken within rounds.

    python -m bench.compare --model cifar \\
        --server 'before@a43efc4=--instances 2' --server 'after=--instances 2'

A server is LABEL=FLAGS (this checkout's `gloro-serve` with those flags) or LABEL@REV=FLAGS (the
server of git revision REV, checked out in a temporary worktree). Results: JSON at --out, and a
table on stdout: req/s, p99, the ratio to the ceiling and to the first server, the server's CPU
per request and the machine's idle cores.
"""

from __future__ import annotations

import argparse
import json
import shlex
import statistics
import subprocess
import sys
import time
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

from bench import machine
from bench.models import ROOT, ModelCase, prepare
from bench.serving import (CEILING_BATCHES, Running, Target, ceiling_backends, median_ratio, running,
                           serve_command, side_by_side)

PROG = "python -m bench.compare"


class CompareError(Exception):
    """A bad --server spec or revision: one line, exit 2."""


@dataclass(frozen=True)
class ServerSpec:
    label: str
    revision: str | None  # None: this checkout
    flags: list[str]


def parse_spec(text: str) -> ServerSpec:
    name, sep, flags = text.partition("=")
    label, _, revision = name.partition("@")
    if not sep or not label or not label.replace("-", "").replace("_", "").isalnum():
        raise CompareError(f"--server {text!r}: expected LABEL=FLAGS or LABEL@REV=FLAGS, LABEL of letters, "
                           "digits, - and _")
    return ServerSpec(label, revision or None, shlex.split(flags))


@contextmanager
def checkout(revision: str, work: Path) -> Iterator[Path]:
    """A detached worktree of `revision` under `work`, removed afterwards."""
    try:
        sha = subprocess.run(["git", "rev-parse", "--verify", f"{revision}^{{commit}}"], cwd=ROOT, check=True,
                             capture_output=True, text=True).stdout.strip()
    except subprocess.CalledProcessError:
        raise CompareError(f"unknown git revision {revision!r}") from None
    folder = work / f"rev-{sha[:12]}"
    subprocess.run(["git", "worktree", "remove", "--force", str(folder)], cwd=ROOT, capture_output=True)
    subprocess.run(["git", "worktree", "add", "--detach", str(folder), sha], cwd=ROOT, check=True,
                   capture_output=True)
    try:
        yield folder
    finally:
        subprocess.run(["git", "worktree", "remove", "--force", str(folder)], cwd=ROOT, capture_output=True)


def parse_specs(texts: list[str]) -> list[ServerSpec]:
    specs = [parse_spec(text) for text in texts]
    if len({s.label for s in specs}) != len(specs):
        raise CompareError("each --server needs its own LABEL")
    return specs


def start_servers(stack: ExitStack, specs: list[ServerSpec], case: ModelCase, work: Path,
                  tag: str, backend: str = "onnxruntime", device: str = "cpu") -> dict[str, Running]:
    """Each server named, started (a revision's from its own worktree) and answering, until `stack` closes."""
    serve = serve_command(case, backend, device)
    servers: dict[str, Running] = {}
    for spec in specs:
        cwd = stack.enter_context(checkout(spec.revision, work)) if spec.revision else ROOT
        target = Target(spec.label, spec.label, [*serve, *spec.flags], "/v1/predict", cwd)
        servers[spec.label] = stack.enter_context(running(target, case, work / f"{tag}-{spec.label}.log"))
    return servers


def server_parser(prog: str, doc: str, model: str) -> argparse.ArgumentParser:
    """The command line the server-side-by-side tools share: --server (repeat) and --model."""
    p = argparse.ArgumentParser(prog=prog, description=doc.split("\n\n")[0])
    p.add_argument("--server", action="append", required=True, metavar="LABEL[@REV]=FLAGS",
                   help="a server to measure (repeat); FLAGS are gloro-serve's")
    p.add_argument("--model", choices=["mnist", "cifar"], default=model)
    return p


def measured(prog: str, argv: list[str], out: Path, measure: Callable[[Path], dict[str, Any]]) -> dict[str, Any] | None:
    """`measure(work folder)` with the command, machine and duration around it, written as JSON to
    `out`; None, after one line on stderr, if it raised CompareError (a bad spec, kind or revision)."""
    try:
        work = out.resolve().parent / "tmp" / prog.rsplit(".", 1)[-1]
        work.mkdir(parents=True, exist_ok=True)
        started = time.monotonic()
        result = {"command": f"{prog} " + shlex.join(argv), "machine": machine.describe(ROOT), **measure(work)}
    except CompareError as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return None
    result["seconds"] = time.monotonic() - started
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1) + "\n")
    return result


def summarise(per_round: list[dict[str, Any]], labels: list[str]) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for label in labels:
        rows = [e[label] for e in per_round]
        out[label] = {
            "req_per_s": statistics.median(r["req_per_s"] for r in rows),
            "p99_ms": statistics.median(r["p99_ms"] for r in rows),
            "ratio_to_ceiling": median_ratio(per_round, label, "e"),
            "ratio_to_first": median_ratio(per_round, label, labels[0]),
            "server_cpu_ms_per_request": statistics.median(
                1000 * r["server_cpu_cores"] / r["req_per_s"] for r in rows if r["req_per_s"]),
            "machine_idle_cores": statistics.median(r["machine_idle_cores"] for r in rows),
            "errors": sum(sum(r["errors"].values()) for r in rows),
        }
    return out


def compare(specs: list[ServerSpec], model: str, connections: int, duration_s: float, rounds: int,
            batch_sizes: tuple[int, ...], work: Path, client: str, backend: str = "onnxruntime",
            device: str = "cpu") -> dict[str, Any]:
    case = prepare(model, work)
    models = ceiling_backends(case, backend, device)
    with ExitStack() as stack:
        servers = start_servers(stack, specs, case, work, "compare", backend, device)
        per_round, tried = side_by_side(case, servers, models, connections, duration_s, rounds, work, client,
                                        batch_sizes, f"{case.key} compare")
    labels = [s.label for s in specs]
    return {"model": case.name, "backend": backend, "device": device, "connections": connections, "duration_s": duration_s,
            "ceiling_batch": per_round[0]["e"]["batch"] if per_round else None, "ceiling_search": tried,
            "servers": {s.label: {"revision": s.revision, "flags": s.flags} for s in specs},
            "rounds": per_round, "summary": summarise(per_round, labels)}


def table(summary: dict[str, dict[str, Any]]) -> str:
    lines = ["| server | req/s | p99 ms | / ceiling | / first | server CPU ms a request | idle cores | errors |",
             "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for label, s in summary.items():
        lines.append(f"| {label} | {s['req_per_s']:,.0f} | {s['p99_ms']:.1f} | {s['ratio_to_ceiling']:.3f} | "
                     f"{s['ratio_to_first']:.3f} | {s['server_cpu_ms_per_request']:.3f} | "
                     f"{s['machine_idle_cores']:.2f} | {s['errors']} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    p = server_parser(PROG, __doc__, "cifar")
    p.add_argument("--connections", type=int, default=64)
    p.add_argument("--duration", type=float, default=10.0, help="seconds per server per round")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--ceiling-batch", type=int, nargs="+", default=list(CEILING_BATCHES),
                   help="batch sizes the in-process ceiling tries; the fastest runs in every round (default: %(default)s)")
    p.add_argument("--client", choices=["auto", "wrk", "python"], default="auto")
    p.add_argument("--backend", choices=["onnxruntime", "torch"], default="onnxruntime",
                   help="every server's backend, and the ceiling's")
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    p.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "tmp" / "compare.json")
    args = p.parse_args(argv)

    def measure(work: Path) -> dict[str, Any]:
        return compare(parse_specs(args.server), args.model, args.connections, args.duration, args.rounds,
                       tuple(args.ceiling_batch), work, args.client, args.backend, args.device)

    result = measured(PROG, argv, args.out, measure)
    if result is None:
        return 2
    print(table(result["summary"]))
    print(f"bench: {len(result['servers'])} servers, {args.rounds} rounds -> {args.out}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
