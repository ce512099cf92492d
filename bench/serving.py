"""Serving throughput and latency: the same model, body and client against every server, in one run.

Targets (issue 6): (a) gloro-serve with batching, (b) gloro-serve `--max-batch-size 1`, (c) a plain
unbatched FastAPI endpoint, (d) LitServe with batching, (e) the in-process ceiling (the server's
own decoding and backend, no HTTP). Each server runs alone, is checked to give the same label as the
in-process model, warmed up, then loaded at each concurrency in turn.
"""

from __future__ import annotations

import json
import os
import resource
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import statistics
import threading
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import orjson

from bench import machine
from bench.load import run_load
from bench.models import ROOT, ModelCase
from server.decode import decode_base64, decode_images
from server.settings import DEFAULT_SPIN_US


@dataclass(frozen=True)
class Target:
    key: str  # a .. d
    label: str
    command: list[str]  # {port} and {model} are filled in
    path: str  # the predict route
    cwd: Path = ROOT  # where it starts: another checkout runs that checkout's server


def serve_command(case: ModelCase, backend: str = "onnxruntime", device: str = "cpu") -> list[str]:
    """`gloro-serve` serving `case` as every benchmark starts it (a port of `{port}`, flags to add)."""
    return [sys.executable, "-m", "server", "serve", "--repository", str(case.repository), "--port", "{port}",
            "--default-model", case.name, "--backend", backend, "--device", device, "--log-level", "warning",
            "--max-queue", "1024"]


def targets(case: ModelCase, backend: str, device: str, max_batch_size: int, peers: bool) -> list[Target]:
    serve = serve_command(case, backend, device)
    out = [
        Target("a", f"gloro-serve (batching, max {max_batch_size})", [*serve, "--max-batch-size", str(max_batch_size)],
               "/v1/predict"),
        Target("b", "gloro-serve --max-batch-size 1", [*serve, "--max-batch-size", "1"], "/v1/predict"),
        # (a) with two worker threads sharing the model: what --instances buys, model by model.
        Target("a2", f"gloro-serve (batching, max {max_batch_size}) --instances 2",
               [*serve, "--max-batch-size", str(max_batch_size), "--instances", "2"], "/v1/predict"),
        # (a) as two processes: what --workers buys when the event loop or the GIL is the limit.
        Target("w2", f"gloro-serve (batching, max {max_batch_size}) --workers 2 --reuse-port",
               [*serve, "--max-batch-size", str(max_batch_size), "--workers", "2", "--reuse-port"], "/v1/predict"),
    ]
    if device == "cuda":
        # (b) as two processes too: on a GPU host, where (w2) serves, batching against unbatching
        # at the same process count (docs/benchmarks-gpu.md).
        out.append(Target("bw2", "gloro-serve --max-batch-size 1 --workers 2 --reuse-port",
                          [*serve, "--max-batch-size", "1", "--workers", "2", "--reuse-port"], "/v1/predict"))
    if peers:
        peer = [sys.executable, "-m", "bench.peers"]
        out.append(Target("c", "plain FastAPI (unbatched)", [*peer, "plain", "--model", "{model}", "--port", "{port}"],
                          "/predict"))
        out.append(Target("d", "LitServe (batching, max 64, 5 ms)",
                          [*peer, "litserve", "--model", "{model}", "--port", "{port}", "--max-batch-size", "64",
                           "--batch-timeout", "0.005"], "/predict"))
    return out


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def post(url: str, body: bytes, timeout: float = 5.0) -> tuple[int, bytes]:
    request = urllib.request.Request(url, data=body, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def group_cpu_seconds(pgid: int) -> float:
    """User + system CPU seconds of every live process in a process group (LitServe runs several)."""
    total = 0.0
    for path in Path("/proc").glob("[0-9]*/stat"):
        stat = machine.proc_stat(path)
        if stat is not None and int(stat[1][2]) == pgid:  # fields: state, ppid, pgrp, ...
            total += machine.stat_cpu_seconds(stat[1])
    return total


@dataclass
class Running:
    url: str
    pgid: int


def client_cpu_seconds() -> float:
    """CPU seconds of this process and of its children that have exited: during a load level, the
    load generator's (wrk, a child waited for, or the asyncio client in this process)."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def machine_cpu_seconds() -> tuple[float, float]:
    """(busy, idle) CPU seconds of the whole machine since boot, from /proc/stat (idle includes
    iowait; busy includes the kernel's interrupt work, which no process is charged for)."""
    fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:8]]
    tick = os.sysconf("SC_CLK_TCK")
    idle = fields[3] + fields[4]
    return (sum(fields) - idle) / tick, idle / tick


def load_with_server_cpu(server: Running, body: bytes, connections: int, duration_s: float, work: Path,
                         client: str) -> dict[str, Any]:
    """One load level's row, plus the CPU cores the server's process group and the load generator
    used meanwhile (they share the machine's cores: the in-process ceiling pays for neither), and
    the machine's busy and idle cores (what neither process was charged for shows there)."""
    cpu, client_cpu, (busy, idle) = group_cpu_seconds(server.pgid), client_cpu_seconds(), machine_cpu_seconds()
    row = run_load(server.url, body, connections, duration_s, work, client).to_dict()
    seconds = row["duration_s"]
    row["server_cpu_cores"] = (group_cpu_seconds(server.pgid) - cpu) / seconds
    row["client_cpu_cores"] = (client_cpu_seconds() - client_cpu) / seconds
    busy_after, idle_after = machine_cpu_seconds()
    row["machine_busy_cores"], row["machine_idle_cores"] = (busy_after - busy) / seconds, (idle_after - idle) / seconds
    return row


@contextmanager
def running(target: Target, case: ModelCase, log: Path, start_timeout: float = 120.0) -> Iterator[Running]:
    """Start the target, wait until it answers the benchmark body with 200; yield its URL and group."""
    port = free_port()
    folder = case.repository / case.name / "1"
    command = [part.format(port=port, model=folder) for part in target.command]
    url = f"http://127.0.0.1:{port}{target.path}"
    with log.open("w") as out:
        process = subprocess.Popen(command, cwd=target.cwd, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
                                   env={**os.environ, "PYTHONUNBUFFERED": "1"})
    try:
        deadline = time.monotonic() + start_timeout
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"{target.label} exited ({process.returncode}): {log.read_text()[-1500:]}")
            try:
                status, _ = post(url, case.body, timeout=2.0)
                if status == 200:
                    break
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"{target.label} did not answer within {start_timeout:g} s")
            time.sleep(0.25)
        yield Running(url, process.pid)  # start_new_session: its pid is its process group
    finally:
        try:
            os.killpg(process.pid, signal.SIGTERM)
        except ProcessLookupError:  # it exited (and said why, above)
            pass
        try:
            process.wait(20)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


def answered_label(body: bytes) -> int:
    return int(json.loads(body)["predictions"][0]["label"])


def in_process_backend(case: ModelCase, backend: str, device: str, threads: int = 0,
                       spin_us: int = DEFAULT_SPIN_US) -> Any:
    from server.backends import backend_factory
    from server.repository import load_repository

    spec = load_repository(case.repository)[case.name]
    model = backend_factory(backend, device, threads, spin_us=spin_us)(spec)
    model.load()
    return model


CEILING_THREADS = (1, 2)  # the server's default of one worker, and --instances 2


def ceiling_backends(case: ModelCase, backend: str, device: str) -> dict[int, Any]:
    """For each count of Python threads in CEILING_THREADS, the backend set up as the server sets
    it up for that many --instances (the same intra-op threads)."""
    from server.settings import ServerSettings

    return {t: in_process_backend(case, backend, device, ServerSettings(instances=t).intra_op_threads())
            for t in CEILING_THREADS}


def ceiling(case: ModelCase, model: Any, batch_size: int, duration_s: float, threads: int = 1) -> dict[str, Any]:
    """Requests per second through the server's JSON parsing, base64 + image decoding and backend
    (batches of `batch_size` requests), in `threads` Python threads at once, with no HTTP, and
    the server's default GIL switch interval."""
    from server.settings import ServerSettings

    switch_interval_s = ServerSettings.model_fields["switch_interval_ms"].default / 1000.0
    input_spec = model.spec.manifest.input
    body = case.body

    def one_batch() -> int:
        images = []
        for _ in range(batch_size):
            instances = orjson.loads(body)["instances"]
            images.append(decode_images([decode_base64(i["b64"], n) for n, i in enumerate(instances)], input_spec))
        out = model.run(np.concatenate(images) if batch_size > 1 else images[0])
        return len(out)

    one_batch()
    done = [0] * threads
    interval = sys.getswitchinterval()
    sys.setswitchinterval(switch_interval_s)  # as `gloro-serve` sets it for its process
    started = time.perf_counter()

    def worker(i: int) -> None:
        while time.perf_counter() - started < duration_s:
            done[i] += one_batch()

    pool = [threading.Thread(target=worker, args=(i,)) for i in range(threads)]
    try:
        for thread in pool:
            thread.start()
        for thread in pool:
            thread.join()
    finally:
        sys.setswitchinterval(interval)
    elapsed = time.perf_counter() - started
    return {"batch": batch_size, "threads": threads, "req_per_s": sum(done) / elapsed, "requests": sum(done),
            "duration_s": elapsed}


def best_ceiling(case: ModelCase, models: dict[int, Any], batch_size: int, duration_s: float) -> dict[str, Any]:
    """The higher of the ceilings with one thread and with several (each for `duration_s`): the
    server runs concurrent batches (--instances), so the ceiling gets the same chance."""
    rows = [ceiling(case, models[t], batch_size, duration_s, t) for t in CEILING_THREADS]
    return max(rows, key=lambda r: r["req_per_s"])


# The batch sizes the ceiling tries, up to the server's largest. The largest is not always the
# fastest: on the 2-core Intel Xeon the 6C2F's backend took 620.1 us an image in batches of 32 and
# 563.6 in batches of 8 (`python -m bench.batch_sizes --model cifar`,
# bench/results/batch_sizes-cifar.json; docs/benchmarks.md, "The ceiling's batch size").
CEILING_BATCHES = (4, 8, 16, 32)


def ceiling_batch_sizes(max_batch_size: int) -> tuple[int, ...]:
    """CEILING_BATCHES up to the server's largest batch, and that one."""
    return tuple(sorted({b for b in CEILING_BATCHES if b < max_batch_size} | {max_batch_size}))


def fastest_ceiling_batch(case: ModelCase, models: dict[int, Any], batch_sizes: tuple[int, ...],
                          duration_s: float) -> tuple[int, list[dict[str, Any]]]:
    """The batch size whose ceiling (the better of one and two threads) is highest in a run of
    `duration_s` each, and every row measured; the rounds after measure that batch size only."""
    rows = [ceiling(case, models[t], b, duration_s, t) for b in batch_sizes for t in CEILING_THREADS]
    return max(rows, key=lambda r: r["req_per_s"])["batch"], rows


def settle(url: str, body: bytes, quiet_ms: float = 50.0, limit_s: float = 30.0) -> None:
    """Wait until the server has drained what the last load level left queued (one request at a
    time until one answers within `quiet_ms`), so a level does not pay for the one before."""
    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline:
        started = time.perf_counter()
        try:
            post(url, body, timeout=limit_s)
        except OSError:
            pass
        if time.perf_counter() - started < quiet_ms / 1000:
            return
        time.sleep(0.2)


def run(case: ModelCase, work: Path, concurrency: list[int], duration_s: float, warmup_s: float,
        client: str = "auto", backend: str = "onnxruntime", device: str = "cpu", max_batch_size: int = 32,
        peers: bool = True, headline: int = 64) -> dict[str, Any]:
    """All targets at every concurrency. The ceiling is measured at the start (batches of one,
    and of each size it tries up to `max_batch_size`), and again, at the fastest of those batch
    sizes, just before and just after target (a)'s `headline` level (the machine is shared: the
    target ratio uses the highest ceiling measured, the one least disturbed)."""
    models = ceiling_backends(case, backend, device)
    x = decode_images([case.png], models[1].spec.manifest.input)
    expected = int(models[1].run(x).label[0])
    ceilings = [ceiling(case, models[t], 1, duration_s / 2, t) for t in CEILING_THREADS]
    fastest, tried = fastest_ceiling_batch(case, models, ceiling_batch_sizes(max_batch_size), duration_s / 2)
    ceilings += tried
    results: dict[str, Any] = {
        "model": case.name, "architecture": case.architecture, "weights": case.weights, "body_bytes": len(case.body),
        "expected_label": expected, "backend": backend, "device": device, "targets": {},
        "ceiling": {"label": "in-process ceiling (decode + backend, no HTTP)", "rows": ceilings,
                    "req_per_s": max(c["req_per_s"] for c in ceilings)},
    }
    for target in targets(case, backend, device, max_batch_size, peers):
        log = work / f"server-{case.key}-{target.key}.log"
        entry: dict[str, Any] = {"label": target.label, "command": " ".join(target.command), "rows": []}
        results["targets"][target.key] = entry
        try:
            with running(target, case, log) as server:
                url = server.url
                status, answer = post(url, case.body)
                entry["label_answered"] = answered_label(answer)
                if entry["label_answered"] != expected:
                    raise RuntimeError(f"{target.label} answered label {entry['label_answered']}, expected {expected}")
                run_load(url, case.body, max(concurrency), warmup_s, work, client)
                for c in concurrency:
                    settle(url, case.body)
                    beside = target.key == "a" and c == headline
                    if beside:
                        ceilings.append({**best_ceiling(case, models, fastest, duration_s / 2),
                                         "when": f"just before (a) at {c} connections"})
                        settle(url, case.body)
                    row = load_with_server_cpu(server, case.body, c, duration_s, work, client)
                    entry["rows"].append(row)
                    if beside:
                        ceilings.append({**best_ceiling(case, models, fastest, duration_s / 2),
                                         "when": f"just after (a) at {c} connections"})
                    print(f"  {case.key} {target.key} c={c}: {entry['rows'][-1]['req_per_s']:.0f} req/s, "
                          f"p99 {entry['rows'][-1]['p99_ms']:.1f} ms, errors {entry['rows'][-1]['errors']}",
                          flush=True)
        except Exception as exc:  # one server failing must not lose the others' results
            entry["error"] = f"{type(exc).__name__}: {exc}"
            print(f"  {case.key} {target.key}: FAILED {entry['error']}", flush=True)
    results["ceiling"]["req_per_s"] = max(c["req_per_s"] for c in ceilings)
    return results


def round_ratios(per_round: list[dict[str, Any]], x: str, y: str, field: str = "req_per_s") -> list[float]:
    """x's `field` over y's in each round that has both (and a nonzero y)."""
    return [e[x][field] / e[y][field] for e in per_round if x in e and y in e and e[y].get(field)]


def median_ratio(per_round: list[dict[str, Any]], x: str, y: str, field: str = "req_per_s") -> float | None:
    """The median over rounds of x's `field` over y's, each ratio taken within one round."""
    pairs = round_ratios(per_round, x, y, field)
    return statistics.median(pairs) if pairs else None


def side_by_side(case: ModelCase, servers: dict[str, Running], models: dict[int, Any], connections: int,
                 duration_s: float, rounds: int, work: Path, client: str, batch_sizes: tuple[int, ...],
                 tag: str) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Rounds in which each running server in turn (the order rotating) is loaded for `duration_s`
    and the in-process ceiling ("e") is measured: ratios taken within a round hold on a shared
    machine, where absolute numbers drift. Each server's row has its CPU and the machine's idle
    cores (`load_with_server_cpu`). The ceiling runs the fastest of `batch_sizes`, found first
    (`fastest_ceiling_batch`, 1.5 s each or a quarter of `duration_s` if less); returns the rounds
    and that search's rows."""
    # 1.5 s a batch size and thread count, less in a short run (--quick, tests)
    fastest, tried = fastest_ceiling_batch(case, models, batch_sizes, min(1.5, duration_s / 4))
    for server in servers.values():
        run_load(server.url, case.body, connections, 2.0, work, client)
    keys = [*servers, "e"]
    per_round: list[dict[str, Any]] = []
    for r in range(rounds):
        entry: dict[str, Any] = {}
        for key in keys[r % len(keys):] + keys[: r % len(keys)]:
            if key == "e":
                entry["e"] = best_ceiling(case, models, fastest, duration_s / 2)
                continue
            settle(servers[key].url, case.body)
            entry[key] = load_with_server_cpu(servers[key], case.body, connections, duration_s, work, client)
        per_round.append(entry)
        print(f"  {tag} round {r + 1}: " + ", ".join(f"{k} {v['req_per_s']:.0f}" for k, v in entry.items()),
              flush=True)
    return per_round, tried


def headline(case: ModelCase, work: Path, connections: int, duration_s: float, rounds: int, client: str = "auto",
             backend: str = "onnxruntime", device: str = "cpu", max_batch_size: int = 32,
             peers: bool = True) -> dict[str, Any]:
    """The targets' comparison at one concurrency, robust to a shared machine: every server runs at
    once (idle between turns), and each round loads each in turn (order rotating), with the
    in-process ceiling measured in the same round. Ratios are taken within a round, then the
    median over rounds."""
    models = ceiling_backends(case, backend, device)
    chosen = targets(case, backend, device, max_batch_size, peers)
    with ExitStack() as stack:
        servers = {t.key: stack.enter_context(running(t, case, work / f"headline-{case.key}-{t.key}.log"))
                   for t in chosen}
        per_round, tried = side_by_side(case, servers, models, connections, duration_s, rounds, work, client,
                                        ceiling_batch_sizes(max_batch_size), f"{case.key} headline")
    keys = [*servers, "e"]
    labels = {t.key: t.label for t in chosen} | {"e": "in-process ceiling (decode + backend, no HTTP)"}

    def ratio(x: str, y: str, field: str = "req_per_s") -> float | None:
        return median_ratio(per_round, x, y, field)

    return {
        "model": case.name, "connections": connections, "duration_s": duration_s, "rounds": per_round,
        "ceiling_search": tried, "labels": labels,
        "median_req_per_s": {k: statistics.median(e[k]["req_per_s"] for e in per_round) for k in keys},
        "median_p99_ms": {k: statistics.median(e[k]["p99_ms"] for e in per_round) for k in servers},
        "ratios": {"a2/a": ratio("a2", "a"), "a2/e": ratio("a2", "e"), "w2/a": ratio("w2", "a"),
                   "w2/e": ratio("w2", "e"), "a/b": ratio("a", "b"), "w2/bw2": ratio("w2", "bw2"),
                   "a/c": ratio("a", "c"), "a/d": ratio("a", "d"), "a/e": ratio("a", "e"),
                   "p99 a/d": ratio("a", "d", "p99_ms")},
    }
