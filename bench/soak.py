"""Load and soak (issue 7, item 3): many requests, a mix of batch sizes, nothing lost, memory bounded.

    python -m bench.soak                                   # 20,000 requests, 64 at a time
    python -m bench.soak --requests 50000 --concurrency 64
    python -m bench.soak --ci                              # 2,000 requests (what the test runs)

Starts a real server process (`python -m server serve`, the shipped model), waits for /readyz, and
runs a closed-loop asyncio + httpx client: `concurrency` connections, each sending its next request
when the last is answered, until `requests` were sent. Request i is JSON `{"instances": [{"b64":
PNG}, ...]}` to /v1/predict with 1, 4 or 16 real MNIST test digits (cycling), so every answer can be
checked: 200, one prediction per image with an int label, a bool certificate and a finite radius
(and the labels are compared with the true ones, for information). Reports successes, errors (any
other answer, by kind), lost (no answer at all: transport errors, client timeouts), req/s and
images/s, and the server's resident memory (VmRSS from /proc/<pid>/status) at start (ready, before
load), at its peak, at the end, and the growth. Writes bench/results/soak.json (or --out).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import gzip
import io
import json
import math
import os
import platform
import signal
import socket
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import httpx
import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
MNIST = ROOT.parent / "shared" / "datasets" / "mnist"
OUT = ROOT / "bench" / "results" / "soak.json"
BATCH_SIZES = (1, 4, 16)


def load_idx(path: Path) -> np.ndarray:
    raw = gzip.decompress(path.read_bytes())
    ndim = raw[3]
    dims = [int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim)]
    return np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim).reshape(dims)


def digits(n: int) -> tuple[list[str], np.ndarray]:
    """The first n MNIST test digits as base64 PNGs, and their labels."""
    images = load_idx(MNIST / "t10k-images-idx3-ubyte.gz")[:n]
    labels = load_idx(MNIST / "t10k-labels-idx1-ubyte.gz")[:n].astype(int)
    encoded = []
    for image in images:
        buffer = io.BytesIO()
        Image.fromarray(image, mode="L").save(buffer, format="PNG")
        encoded.append(base64.b64encode(buffer.getvalue()).decode())
    return encoded, labels


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for pid {pid}")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(extra_args: list[str], ready_timeout: float = 120.0, root: Path = ROOT) -> tuple[subprocess.Popen, str]:
    """`python -m server serve` of the checkout at `root`, on a free port, once it is ready."""
    port = free_port()
    env = {**os.environ, "PYTHONPATH": str(root), "GLORO_PORT": str(port)}
    process = subprocess.Popen([sys.executable, "-m", "server", "serve", *extra_args], cwd=root, env=env,
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + ready_timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"server exited with {process.returncode}: {process.stderr.read().decode()[-2000:]}")
        try:
            if httpx.get(url + "/readyz", timeout=1.0).status_code == 200:
                return process, url
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    process.kill()
    raise RuntimeError(f"server not ready in {ready_timeout} s")


def check_answer(response: httpx.Response, labels: np.ndarray) -> tuple[str | None, int]:
    """(None, correct labels) for a well-formed 200 answer to these images, else (error kind, 0)."""
    if response.status_code != 200:
        return f"status {response.status_code}", 0
    try:
        predictions = response.json()["predictions"]
    except (ValueError, KeyError, TypeError):
        return "malformed body", 0
    if not isinstance(predictions, list) or len(predictions) != len(labels):
        return "wrong number of predictions", 0
    correct = 0
    for prediction, truth in zip(predictions, labels):
        label, certified, radius = prediction.get("label"), prediction.get("certified"), prediction.get("radius")
        if (not isinstance(label, int) or isinstance(label, bool) or not 0 <= label < 10
                or not isinstance(certified, bool) or not isinstance(radius, (int, float))
                or isinstance(radius, bool) or not math.isfinite(radius)):
            return "malformed prediction", 0
        correct += label == truth
    return None, correct


async def drive(url: str, requests: int, concurrency: int, timeout: float, pool: list[str], labels: np.ndarray,
                pid: int, rss_every_s: float = 0.5) -> dict:
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    next_index = 0
    successes = images = correct = lost = 0
    errors: Counter[str] = Counter()
    lost_kinds: Counter[str] = Counter()
    latencies: list[float] = []
    rss_samples: list[int] = []
    stop_sampling = asyncio.Event()

    async def sample_rss() -> None:
        while not stop_sampling.is_set():
            rss_samples.append(rss_kib(pid))
            try:
                await asyncio.wait_for(stop_sampling.wait(), rss_every_s)
            except asyncio.TimeoutError:
                pass

    async with httpx.AsyncClient(base_url=url, limits=limits, timeout=timeout) as client:

        async def worker() -> None:
            nonlocal next_index, successes, images, correct, lost
            while next_index < requests:
                i = next_index
                next_index += 1
                size = BATCH_SIZES[i % len(BATCH_SIZES)]
                first = (i * 16) % (len(pool) - 16)
                body = {"instances": [{"b64": b} for b in pool[first:first + size]]}
                started = time.perf_counter()
                try:
                    response = await client.post("/v1/predict", json=body)
                except httpx.HTTPError as exc:  # no answer: the request is lost
                    lost += 1
                    lost_kinds[type(exc).__name__] += 1
                    continue
                latencies.append(time.perf_counter() - started)
                error, n_correct = check_answer(response, labels[first:first + size])
                if error:
                    errors[error] += 1
                else:
                    successes += 1
                    images += size
                    correct += n_correct

        sampler = asyncio.create_task(sample_rss())
        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        duration = time.perf_counter() - started
        stop_sampling.set()
        await sampler
    latency = np.array(latencies) * 1000 if latencies else np.array([float("nan")])
    return {
        "sent": next_index, "answered": len(latencies), "successes": successes,
        "errors": sum(errors.values()), "errors_by_kind": dict(errors),
        "lost": lost, "lost_by_kind": dict(lost_kinds),
        "duration_s": round(duration, 2), "req_per_s": round(successes / duration, 1),
        "images_per_s": round(images / duration, 1), "images": images,
        "label_accuracy": round(correct / images, 4) if images else None,
        "latency_ms": {q: round(float(np.percentile(latency, p)), 2)
                       for q, p in (("p50", 50), ("p95", 95), ("p99", 99), ("max", 100))},
        "rss_peak_kib": max(rss_samples) if rss_samples else None,
    }


def soak(requests: int, concurrency: int, timeout: float = 60.0, server_args: list[str] = (),
         pool_size: int = 2000) -> dict:
    pool, labels = digits(pool_size)
    process, url = start_server(list(server_args))
    try:
        rss_start = rss_kib(process.pid)
        run = asyncio.run(drive(url, requests, concurrency, timeout, pool, labels, process.pid))
        rss_end = rss_kib(process.pid)
        alive = process.poll() is None
        process.send_signal(signal.SIGTERM)
        exit_code = process.wait(60)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    return {
        "requests": requests, "concurrency": concurrency, "batch_sizes": list(BATCH_SIZES),
        "request": "POST /v1/predict, JSON base64 PNGs of MNIST test digits",
        **run,
        "server": {"pid": process.pid, "alive_after_load": alive, "exit_code_after_sigterm": exit_code,
                   "args": list(server_args)},
        "rss_start_kib": rss_start, "rss_end_kib": rss_end, "rss_growth_kib": rss_end - rss_start,
        "rss_growth_mib": round((rss_end - rss_start) / 1024, 1),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=20000)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--ci", action="store_true", help="short mode: 2,000 requests (unless --requests is given)")
    parser.add_argument("--timeout", type=float, default=60.0, help="client timeout per request, seconds")
    parser.add_argument("--note", default="")
    parser.add_argument("--out", type=Path, default=OUT)
    parser.add_argument("server_args", nargs="*", help="after --: extra `gloro-serve serve` flags")
    args = parser.parse_args(argv)
    given = argv if argv is not None else sys.argv[1:]
    requests = 2000 if args.ci and not any(a.startswith("--requests") for a in given) else args.requests
    result = {
        "command": ("python -m bench.soak " + " ".join(given)).strip(),
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count()}, "note": args.note,
        **soak(requests, args.concurrency, args.timeout, args.server_args),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(result, indent=1))
    ok = result["errors"] == 0 and result["lost"] == 0 and result["sent"] == result["successes"]
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
