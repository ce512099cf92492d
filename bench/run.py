"""`python -m bench.run [--quick]`: the whole benchmark suite, one command.

Full mode writes bench/results/benchmarks.json, the PNG plots beside it, and the generated section
of docs/benchmarks.md. `--quick` runs a small version (MNIST only, two concurrencies, short runs)
into bench/results/tmp/quick/ and leaves the docs alone. `--backend torch --device cuda` runs the
same suite on a GPU.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench import machine, models, overhead, report, serving, training
from bench.models import ROOT

SECTIONS = ("overhead", "serving", "training")


@dataclass(frozen=True)
class Plan:
    batches: list[int]
    rounds: int
    round_s: float
    concurrency: list[int]
    duration_s: float
    warmup_s: float
    headline_connections: int
    headline_rounds: int


FULL = Plan([1, 32, 256, 1024], 15, 0.2, [1, 2, 4, 8, 16, 32, 64, 128], 10.0, 3.0, 64, 3)
QUICK = Plan([1, 32], 3, 0.03, [1, 8], 1.5, 0.5, 8, 1)


def _list(text: str) -> list[str]:
    return [part.strip() for part in text.split(",") if part.strip()]


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="a small, fast version of the suite")
    p.add_argument("--only", type=_list, default=list(SECTIONS), help=f"comma-separated subset of {','.join(SECTIONS)}")
    p.add_argument("--models", type=_list, default=None, help="mnist,cifar (quick: mnist)")
    p.add_argument("--backend", choices=["onnxruntime", "torch"], default="onnxruntime")
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    p.add_argument("--client", choices=["auto", "wrk", "python"], default="auto",
                   help="load generator: wrk when installed (auto), or the asyncio client")
    p.add_argument("--concurrency", type=lambda t: [int(x) for x in _list(t)], default=None)
    p.add_argument("--duration", type=float, default=None, help="seconds per load level")
    p.add_argument("--max-batch-size", type=int, default=32, help="gloro-serve's batch size for target (a)")
    p.add_argument("--overhead-threads", type=int, default=0,
                   help="onnxruntime intra-op threads for the overhead section (default 0: onnxruntime's own "
                        "choice, as the default single server process runs; 1 is what each --workers process runs)")
    p.add_argument("--no-peers", action="store_true", help="skip the plain FastAPI and LitServe servers")
    p.add_argument("--random-weights", action="store_true", help="a random 2C2F even if the MNIST model is shipped")
    p.add_argument("--out", type=Path, default=None, help="results folder (default: bench/results, quick: bench/results/tmp/quick)")
    p.add_argument("--docs", type=Path, default=None, help="Markdown page to update (default: docs/benchmarks.md; quick: OUT/benchmarks.md)")
    p.add_argument("--note", default=None, help="recorded with the results (e.g. what else ran on the machine)")
    return p


def _has_litserve() -> bool:
    try:
        import litserve  # noqa: F401
    except ImportError:
        return False
    return True


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    unknown = set(args.only) - set(SECTIONS)
    if unknown:
        print(f"bench: unknown section(s) {', '.join(sorted(unknown))}; choose from {', '.join(SECTIONS)}", file=sys.stderr)
        return 2
    plan = QUICK if args.quick else FULL
    keys = args.models or (["mnist"] if args.quick else ["mnist", "cifar"])
    out = (args.out or ROOT / "bench" / "results" / ("tmp/quick" if args.quick else "")).resolve()
    docs = (args.docs or (out / "benchmarks.md" if args.quick else ROOT / "docs" / "benchmarks.md")).resolve()
    work = out / "work" if args.out or args.quick else ROOT / "bench" / "results" / "tmp" / "work"
    out.mkdir(parents=True, exist_ok=True)
    work.mkdir(parents=True, exist_ok=True)
    shown = [a for i, a in enumerate(argv) if a != "--note" and (i == 0 or argv[i - 1] != "--note")]
    command = "python -m bench.run" + "".join(f" {shlex.quote(a)}" for a in shown)  # the note changes no figure
    sections = [s for s in SECTIONS if s in args.only]
    results: dict[str, Any] = {
        "quick": args.quick, "command": command, "note": args.note, "machine": machine.describe(ROOT),
        "commands": {s: command if sections == [s] else f"{command} --only {s}" for s in sections},
        "images": os.path.relpath(out, docs.parent),
    }
    started = time.monotonic()
    print(f"bench: {', '.join(sections)} on {', '.join(keys)} -> {out}", flush=True)
    cases = {key: models.prepare(key, work, use_shipped=not args.random_weights) for key in keys}
    if "overhead" in sections:
        results["overhead"] = []
        for key, case in cases.items():
            print(f"bench: certification overhead, {case.name}", flush=True)
            results["overhead"].append(overhead.run(case, plan.batches, plan.rounds, plan.round_s, args.backend,
                                                    args.device, threads=args.overhead_threads))
            if (args.backend, args.device) == ("torch", "cuda"):  # as the server runs it there
                try:
                    results["overhead"].append(overhead.run(case, plan.batches, plan.rounds, plan.round_s,
                                                            args.backend, args.device, graphs=True))
                except RuntimeError as exc:  # the eager figures stand alone
                    print(f"bench: certification overhead with CUDA graphs failed: {exc}", flush=True)
    if "serving" in sections:
        peers = not args.no_peers and args.device == "cpu"
        if not peers:
            results["serving_note"] = "peers skipped" + (" (they run onnxruntime on the CPU)" if args.device != "cpu" else "")
        elif not _has_litserve():
            print("bench: litserve is not installed (pip install 'gloro-serve[bench]'); skipping the peers", flush=True)
            peers = False
        results["serving"] = {}
        for key, case in cases.items():
            print(f"bench: serving, {case.name}", flush=True)
            results["serving"][key] = serving.run(
                case, work, args.concurrency or plan.concurrency, args.duration or plan.duration_s, plan.warmup_s,
                args.client, args.backend, args.device, args.max_batch_size, peers)
        results["headline"] = {}
        for key, case in cases.items():
            print(f"bench: serving side by side at {plan.headline_connections} connections, {case.name}", flush=True)
            results["headline"][key] = serving.headline(
                case, work, plan.headline_connections, args.duration or plan.duration_s, plan.headline_rounds,
                args.client, args.backend, args.device, args.max_batch_size, peers)
    if "training" in sections:
        print("bench: training and certify", flush=True)
        results["training"] = training.run(work, args.quick, args.device)
    if args.device == "cpu":
        results["gpu_note"] = ("Not run: this machine has no GPU. On one, run "
                               "`python -m bench.run --backend torch --device cuda` (absolute times count only there).")
    results["seconds"] = time.monotonic() - started
    results["verdicts"] = report.verdicts(results)
    (out / "benchmarks.json").write_text(json.dumps(results, indent=1) + "\n")
    report.plot(results, out)
    report.write_docs(results, docs, results["images"])
    if args.quick:
        print("bench: quick mode checks that the suite runs; its figures are too short to judge the targets", flush=True)
    for v in results["verdicts"]:
        print(f"bench: {v['target']}: {v['value'] if v['value'] is None else round(v['value'], 3)} "
              f"({'>=' if v['at_least'] else '<='} {v['bound']:g}) -> "
              f"{ {True: 'met', False: 'NOT met', None: 'not measured'}[v['met']] }", flush=True)
    print(f"bench: wrote {out / 'benchmarks.json'} and {docs} in {results['seconds']:.0f} s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
