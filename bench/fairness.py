"""`python -m bench.fairness`: how long one client's single image waits while another client
posts requests of thousands of images.

A request of many images costs its decoding on the server's event loop and many forward passes;
what it must not do is hold every other client's request until it is done. Each server named
(LABEL=FLAGS, or LABEL@REV=FLAGS for another revision, as `bench.compare` takes them) runs alone
in turn, rounds rotating; for each kind of large body, one client thread posts it back to back
while another posts the one-image JSON body one request after another (5 ms apart) and records
its latency. "none" is the same client with no large requests beside it. Each large request is
also timed alone, so that what sharing costs it shows apart from the machine's drift.

    python -m bench.fairness --server 'before@HEAD~1=' --server 'after='
"""

from __future__ import annotations

import base64
import json
import statistics
import sys
import threading
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from bench.compare import CompareError, ServerSpec, measured, parse_specs, server_parser, start_servers
from bench.models import ROOT, ModelCase, prepare

PROG = "python -m bench.fairness"
BODY_BUDGET = 7 * 1024 * 1024  # under the server's default --max-body-bytes (8 MiB)
MAX_IMAGES = 4096  # the most images a /v1 request may carry
KINDS = ("none", "b64", "multipart", "pixels", "v2-json", "v2-binary")


Large = tuple[str, bytes, dict[str, str], int]  # path, body, headers, images


def large_bodies(case: ModelCase) -> dict[str, Large]:
    """Each kind of large request: as many copies of the benchmark image as fit in BODY_BUDGET,
    up to MAX_IMAGES."""
    png, shape = case.png, case.input_shape
    b64 = json.dumps({"b64": base64.b64encode(png).decode()})
    n = min(MAX_IMAGES, BODY_BUDGET // (len(b64) + 1))
    out = {"b64": ("/v1/predict", ('{"instances":[' + ",".join([b64] * n) + "]}").encode(),
                   {"Content-Type": "application/json"}, n)}
    files = [("files", (f"{i}.png", png, "image/png")) for i in range(min(MAX_IMAGES, BODY_BUDGET // (len(png) + 160)))]
    multipart = httpx.Request("POST", "http://x/", files=files)
    out["multipart"] = ("/v1/predict", multipart.read(), {"Content-Type": multipart.headers["content-type"]},
                        len(files))
    image = json.dumps(np.full(shape, 0.5).tolist())
    n = min(MAX_IMAGES, BODY_BUDGET // (len(image) + 1))
    out["pixels"] = ("/v1/predict", ('{"instances":[' + ",".join([image] * n) + "]}").encode(),
                     {"Content-Type": "application/json"}, n)
    values = ",".join(["0.5"] * int(np.prod(shape)))
    n = min(MAX_IMAGES, BODY_BUDGET // (len(values) + 1))
    out["v2-json"] = (f"/v2/models/{case.name}/infer", json.dumps({"inputs": [
        {"name": "input", "shape": [n, *shape], "datatype": "FP32", "data": "DATA"}]}).replace(
        '"DATA"', "[" + ",".join([values] * n) + "]").encode(), {"Content-Type": "application/json"}, n)
    n = min(MAX_IMAGES, BODY_BUDGET // (4 * int(np.prod(shape))))
    tensor = np.full((n, *shape), 0.5, np.float32).tobytes()
    header = json.dumps({"inputs": [{"name": "input", "shape": [n, *shape], "datatype": "FP32",
                                     "parameters": {"binary_data_size": len(tensor)}}]}).encode()
    out["v2-binary"] = (f"/v2/models/{case.name}/infer", header + tensor,
                        {"Content-Type": "application/octet-stream", "Inference-Header-Content-Length": str(len(header))},
                        n)
    return out


def parse_kinds(text: str, allowed: tuple[str, ...]) -> list[str]:
    """A comma-separated list of kinds of large body; CompareError naming any not in `allowed`."""
    kinds = [k for k in text.split(",") if k]
    if unknown := set(kinds) - set(allowed):
        raise CompareError(f"unknown kind(s) {', '.join(sorted(unknown))}; choose from {', '.join(allowed)}")
    return kinds


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def post_large(client: httpx.Client, base: str, large: Large) -> float:
    """One large request; how long it took (ms). It must be answered 200."""
    path, body, headers, _ = large
    began = time.perf_counter()
    answer = client.post(base + path, content=body, headers=headers)
    if answer.status_code != 200:  # the figures would measure the error path
        raise RuntimeError(f"the large {path} request got {answer.status_code}: {answer.text[:200]}")
    return (time.perf_counter() - began) * 1000


def large_alone_ms(base: str, large: Large, duration_s: float) -> float:
    """The median time of the large request with no other client: what sharing costs it is the
    difference from its time beside the small client."""
    times: list[float] = []
    end = time.monotonic() + duration_s
    with httpx.Client(timeout=120) as client:
        while time.monotonic() < end or len(times) < 2:
            times.append(post_large(client, base, large))
    return statistics.median(times)


def one_run(base: str, case: ModelCase, large: Large | None,
            duration_s: float) -> dict[str, Any]:
    """The small client's latencies (ms) while the large client posts back to back, and how long
    the large client's requests took (each must be answered 200)."""
    stop = threading.Event()
    latencies: list[float] = []
    small_errors: list[int] = []

    def small_client() -> None:
        with httpx.Client(timeout=60) as client:
            while not stop.is_set():
                began = time.perf_counter()
                r = client.post(base + "/v1/predict", content=case.body, headers={"Content-Type": "application/json"})
                latencies.append((time.perf_counter() - began) * 1000)
                if r.status_code != 200:
                    small_errors.append(r.status_code)
                time.sleep(0.005)

    large_ms: list[float] = []
    thread = threading.Thread(target=small_client)
    thread.start()
    end = time.monotonic() + duration_s
    try:
        with httpx.Client(timeout=120) as client:
            while time.monotonic() < end:
                if large is None:
                    time.sleep(0.05)
                    continue
                large_ms.append(post_large(client, base, large))
    finally:
        stop.set()
        thread.join()
    return {
        "small_requests": len(latencies), "small_errors": small_errors,
        "small_p50_ms": statistics.median(latencies), "small_p99_ms": percentile(latencies, 0.99),
        "small_max_ms": max(latencies),
        "large_requests": len(large_ms),
        "large_median_ms": statistics.median(large_ms) if large_ms else None,
    }


def measure(specs: list[ServerSpec], model: str, kinds: list[str], duration_s: float, rounds: int,
            work: Path) -> dict[str, Any]:
    case = prepare(model, work)
    bodies = large_bodies(case)
    per_round: list[dict[str, dict[str, Any]]] = []
    with ExitStack() as stack:
        servers = start_servers(stack, specs, case, work, "fairness")
        labels = list(servers)
        for r in range(rounds):
            entry: dict[str, dict[str, Any]] = {}
            for label in labels[r % len(labels):] + labels[: r % len(labels)]:
                base = servers[label].url.removesuffix("/v1/predict")
                entry[label] = {kind: one_run(base, case, bodies.get(kind), duration_s) for kind in kinds}
                for kind in set(kinds) & set(bodies):
                    entry[label][kind]["large_alone_median_ms"] = large_alone_ms(base, bodies[kind], duration_s / 2)
                print(f"  round {r + 1} {label}: " + ", ".join(
                    f"{k} p50 {v['small_p50_ms']:.1f} p99 {v['small_p99_ms']:.1f} ms" for k, v in entry[label].items()),
                    flush=True)
            per_round.append(entry)
    summary = {
        label: {kind: {field: statistics.median(e[label][kind][field] for e in per_round)
                       for field in ("small_p50_ms", "small_p99_ms", "small_max_ms")}
                | {"large_requests": sum(e[label][kind]["large_requests"] for e in per_round),
                   "large_images": bodies[kind][3] if kind in bodies else 0,
                   **{field: statistics.median(e[label][kind][field] for e in per_round) if kind in bodies else None
                      for field in ("large_median_ms", "large_alone_median_ms")}}
                for kind in kinds}
        for label in [s.label for s in specs]
    }
    return {"model": case.name, "duration_s": duration_s, "rounds": per_round,
            "large_bodies": {k: {"bytes": len(v[1]), "images": v[3]} for k, v in bodies.items()},
            "servers": {s.label: {"revision": s.revision, "flags": s.flags} for s in specs}, "summary": summary}


def table(summary: dict[str, dict[str, dict[str, float]]]) -> str:
    lines = ["| server | large requests beside | small p50 ms | small p99 ms | small max ms | large requests answered "
             "| large request ms (median): beside the small client / alone |", "| --- | --- | --- | --- | --- | --- | --- |"]
    for label, kinds in summary.items():
        for kind, s in kinds.items():
            large = (f"{s['large_median_ms']:.0f} / {s['large_alone_median_ms']:.0f} ({s['large_images']} images)"
                     if s["large_median_ms"] else "-")
            lines.append(f"| {label} | {kind} | {s['small_p50_ms']:.1f} | {s['small_p99_ms']:.1f} | "
                         f"{s['small_max_ms']:.1f} | {s['large_requests']} | {large} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    p = server_parser(PROG, __doc__, "mnist")
    p.add_argument("--kinds", default=",".join(KINDS), help=f"comma-separated subset of {','.join(KINDS)}")
    p.add_argument("--duration", type=float, default=6.0, help="seconds per server, kind and round")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "tmp" / "fairness.json")
    args = p.parse_args(argv)

    def run(work: Path) -> dict[str, Any]:
        kinds = parse_kinds(args.kinds, KINDS)
        return measure(parse_specs(args.server), args.model, kinds, args.duration, args.rounds, work)

    result = measured(PROG, argv, args.out, run)
    if result is None:
        return 2
    print(table(result["summary"]))
    print(f"bench: {len(result['servers'])} servers, {args.rounds} rounds -> {args.out}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
