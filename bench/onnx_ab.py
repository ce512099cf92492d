"""`python -m bench.onnx_ab A.onnx B.onnx`: two graphs of one model side by side in onnxruntime.

For an exporter change: the same weights written by two versions of the code (an older checkout's
export against this one's, or a version against its re-export with `gloro-serve export VERSION`).
Both run with the server's session settings (`server.backends.ort.session_options`, one intra-op
thread by default, as a `--workers` process runs) on the same random input, in interleaved rounds
(`bench.overhead.compare`), at each batch size. It reports the time an image of each and B's ratio
to A, whether their outputs are identical, and where each graph's time goes: onnxruntime's own
profile summed by operator type at the largest batch size.

    python -m bench.onnx_ab A.onnx B.onnx [--batches 1,32] [--rounds 30] [--round-s 0.2] [--threads 1] [--out FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

from bench import microbench
from bench.models import ROOT
from bench.overhead import compare

PROG = "python -m bench.onnx_ab"


def _session(path: Path, threads: int, profile: bool = False) -> Any:
    import onnxruntime as ort

    from server.backends.ort import session_options

    options = session_options(threads)
    options.enable_profiling = profile
    try:
        return ort.InferenceSession(str(path), sess_options=options, providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime raises its own types for unreadable graphs
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise SystemExit(f"{PROG}: error: {path}: onnxruntime cannot load it: {first}") from None


def input_for(session: Any, batch: int, seed: int = 0) -> np.ndarray:
    """Uniform [0, 1) images of the graph's input shape (its batch axis set to `batch`)."""
    shape = session.get_inputs()[0].shape[1:]
    if not all(isinstance(d, int) for d in shape):
        raise SystemExit(f"{PROG}: error: the input shape {shape} has named axes beyond the batch")
    return np.random.default_rng(seed).random((batch, *shape), dtype=np.float32)


def op_profile(path: Path, x: np.ndarray, threads: int, runs: int = 20) -> dict[str, float]:
    """Microseconds an image in each operator type (onnxruntime's profile, kernels only), largest first."""
    session = _session(path, threads, profile=True)
    name = session.get_inputs()[0].name
    for _ in range(runs):
        session.run(None, {name: x})
    trace = Path(session.end_profiling())
    try:
        events = json.loads(trace.read_text())
    finally:
        trace.unlink(missing_ok=True)
    spent: Counter[str] = Counter()
    for event in events:
        if event.get("cat") == "Node" and event.get("name", "").endswith("_kernel_time"):
            spent[event["args"]["op_name"]] += event["dur"]
    return {op: us / runs / len(x) for op, us in spent.most_common()}


def differences(a: Any, b: Any, x: np.ndarray) -> dict[str, float]:
    """The largest absolute difference of each output (0.0: identical)."""
    name = a.get_inputs()[0].name
    names = [o.name for o in a.get_outputs()]
    outs_a, outs_b = a.run(names, {name: x}), b.run(names, {b.get_inputs()[0].name: x})
    return {n: float(np.max(np.abs(p.astype(np.float64) - q.astype(np.float64)), initial=0.0))
            for n, p, q in zip(names, outs_a, outs_b)}


def measure(a: Path, b: Path, batches: list[int], rounds: int, round_s: float, threads: int) -> dict[str, Any]:
    sessions = {"a": _session(a, threads), "b": _session(b, threads)}
    if [o.name for o in sessions["a"].get_outputs()] != [o.name for o in sessions["b"].get_outputs()]:
        raise SystemExit(f"{PROG}: error: {a} and {b} have different outputs; compare graphs of one model")
    # the input's name looked up once, not in every timed call
    runners = {k: (lambda data, s=s, name=s.get_inputs()[0].name: s.run(None, {name: data}))
               for k, s in sessions.items()}
    rows = []
    for batch in batches:
        x = input_for(sessions["a"], batch)
        timed = compare(runners["b"], runners["a"], x, rounds, round_s)
        rows.append({"batch": batch, "a_us_per_image": timed["logits_only_us"] / batch,
                     "b_us_per_image": timed["head_us"] / batch, "b_over_a": timed["ratio"],
                     "b_over_a_round_medians": timed["ratio_of_round_medians"], "rounds": timed["rounds"],
                     "max_abs_difference": differences(sessions["a"], sessions["b"], x)})
    largest = input_for(sessions["a"], max(batches))
    return {"a": str(a), "b": str(b), "threads": threads, "rows": rows,
            "profile_us_per_image": {"a": op_profile(a, largest, threads), "b": op_profile(b, largest, threads)},
            "profile_batch": max(batches)}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    p = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0])
    p.add_argument("a", type=Path, help="the graph to compare against (before)")
    p.add_argument("b", type=Path, help="the graph compared (after)")
    p.add_argument("--batches", default="1,32", help="comma-separated batch sizes")
    p.add_argument("--rounds", type=int, default=30)
    p.add_argument("--round-s", type=float, default=0.2, help="seconds of each graph a round")
    p.add_argument("--threads", type=int, default=1, help="onnxruntime intra-op threads (0: its default)")
    p.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "onnx_ab.json")
    args = p.parse_args(argv)
    try:
        batches = [int(v) for v in args.batches.split(",")]
    except ValueError:
        p.error(f"--batches must be comma-separated integers, got {args.batches!r}")
    if min(batches) < 1 or args.rounds < 1 or args.round_s <= 0 or args.threads < 0:
        p.error("--batches and --rounds must be at least 1, --round-s above 0, --threads at least 0")
    for path in (args.a, args.b):
        if not os.path.isfile(path):
            p.error(f"{path}: no such file")
    result = microbench.write(args.out, PROG, argv, measure(args.a, args.b, batches, args.rounds, args.round_s,
                                                            args.threads))
    for row in result["rows"]:
        same = "identical outputs" if not any(row["max_abs_difference"].values()) else \
            f"outputs differ by up to {max(row['max_abs_difference'].values()):.3g}"
        print(f"batch {row['batch']}: A {row['a_us_per_image']:.1f} us an image, B {row['b_us_per_image']:.1f} "
              f"({row['b_over_a']:.3f}x), {same}")
    print(f"bench: {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
