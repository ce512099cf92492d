"""`python -m bench.spy`: where one gloro-serve process's CPU goes under load, by thread and by
function, for (a) batching and (b) `--max-batch-size 1`.

While wrk (or the Python client) holds `--connections` open, it reads each thread's CPU from /proc
for `--seconds`, then samples the server's Python stacks with py-spy for as long again (every
thread's stacks, then only the thread holding the GIL; skipped, and said so, without py-spy). Profiling for issue 6, not a benchmark:
py-spy stops the process to sample it, so its windows serve fewer requests than bench.run's would.

    python -m bench.spy [--models cifar] [--backend torch --device cuda] [--max-batch-size 64] \
        [--connections 64] [--seconds 6] [--serve-flags '--switch-interval-ms 0.5'] [--out bench/results/spy]

Writes OUT/spy.json (each thread's CPU in cores, req/s in the CPU window, the heaviest functions
by share of samples) and py-spy's collapsed stacks, OUT/spy-<server>[-gil].txt.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import shlex
import shutil
import subprocess
import sys
import threading
import urllib.request
import time
from collections import Counter
from pathlib import Path
from typing import Any

from bench import machine, models, serving
from bench.load import run_load
from bench.models import ROOT


def thread_cpu_seconds(pid: int) -> dict[int, tuple[str, float]]:
    """Each live thread of `pid`: (its name, its user + system CPU seconds)."""
    out: dict[int, tuple[str, float]] = {}
    for path in Path(f"/proc/{pid}/task").glob("*/stat"):
        stat = machine.proc_stat(path)
        if stat is not None:  # else the thread ended
            out[int(path.parent.name)] = (stat[0], machine.stat_cpu_seconds(stat[1]))
    return out


def heaviest_functions(collapsed: Path, top: int = 25) -> dict[str, Any]:
    """From py-spy's collapsed stacks ("frame;frame;... count" a line): each function's share of
    samples, inclusive (on the stack) and self (the innermost frame)."""
    inclusive: Counter[str] = Counter()
    own: Counter[str] = Counter()
    total = 0
    for line in collapsed.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n, frames = int(count), stack.split(";")
        total += n
        for frame in set(frames):
            inclusive[frame] += n
        own[frames[-1]] += n
    share = lambda counter: [[f, round(c / total, 4)] for f, c in counter.most_common(top)]  # noqa: E731
    return {"samples": total, "inclusive": share(inclusive), "self": share(own)}


def served_so_far(url: str) -> dict[str, float]:
    """From the server's /metrics: requests answered, images and batches run, seconds in the backend."""
    from prometheus_client.parser import text_string_to_metric_families

    base = url.split("/v1/")[0]
    with urllib.request.urlopen(base + "/metrics", timeout=5) as response:
        text = response.read().decode()
    wanted = {"gloro_requests_total": "requests", "gloro_batch_size_sum": "images", "gloro_batch_size_count": "batches",
              "gloro_inference_duration_seconds_sum": "backend_s"}
    out = dict.fromkeys(wanted.values(), 0.0)
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name in wanted:
                out[wanted[sample.name]] += sample.value
    return out


def thread_names(collapsed: Path) -> dict[int, str]:
    """py-spy --threads starts each stack with "thread (TID): NAME": Python's names for the threads."""
    names: dict[int, str] = {}
    for line in collapsed.read_text().splitlines() if collapsed.exists() else []:
        head = line.split(";", 1)[0]
        if head.startswith("thread (") and "): " in head:
            tid, name = head[len("thread ("):].split("): ", 1)
            if tid.isdigit():
                names[int(tid)] = name
    return names


def py_spy(pid: int, seconds: float, out: Path, gil: bool) -> dict[str, Any]:
    if shutil.which("py-spy") is None:
        return {"error": "py-spy is not on PATH (pip install py-spy; it is in the bench extra)"}
    command = ["py-spy", "record", "-p", str(pid), "-d", str(max(1, round(seconds))), "-r", "200", "--format", "raw",
               "--threads", "-o", str(out), *(["--gil"] if gil else [])]
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0 or not out.exists():
        return {"error": f"py-spy failed ({done.returncode}): {done.stderr.strip()[-300:]}"}
    return heaviest_functions(out)


def profile(case: models.ModelCase, target: serving.Target, connections: int, seconds: float, work: Path,
            out: Path, client: str) -> dict[str, Any]:
    with serving.running(target, case, work / f"spy-{target.key}.log") as server:
        run_load(server.url, case.body, connections, 2.0, work, client)  # warm-up
        load: dict[str, Any] = {}
        spell = 1 + 3 * seconds + 2  # covers the CPU window and both py-spy recordings
        loader = threading.Thread(target=lambda: load.update(
            result=run_load(server.url, case.body, connections, spell, work, client)))
        loader.start()
        time.sleep(1.0)
        served_before = served_so_far(server.url)
        before, started = thread_cpu_seconds(server.pgid), time.perf_counter()
        time.sleep(seconds)
        after, window = thread_cpu_seconds(server.pgid), time.perf_counter() - started
        served = {k: v - served_before[k] for k, v in served_so_far(server.url).items()}
        threads = sorted(({"tid": tid, "name": name, "cores": round((cpu - before.get(tid, (name, 0.0))[1]) / window, 3)}
                          for tid, (name, cpu) in after.items()), key=lambda t: -t["cores"])
        stacks = py_spy(server.pgid, seconds, out / f"spy-{target.key}.txt", gil=False)
        holding_gil = py_spy(server.pgid, seconds, out / f"spy-{target.key}-gil.txt", gil=True)
        loader.join()
    names = {} if "error" in stacks else thread_names(out / f"spy-{target.key}.txt")  # not an earlier run's
    for thread in threads:
        thread["name"] = names.get(thread["tid"], thread["name"])
    result = dataclasses.asdict(load["result"])
    return {"label": target.label, "command": " ".join(target.command), "load_over_whole_spell": result,
            "threads_in_cpu_window": threads, "process_cores": round(sum(t["cores"] for t in threads), 3),
            "in_cpu_window": {"seconds": round(window, 3), "req_per_s": round(served["requests"] / window, 1),
                              "mean_batch": round(served["images"] / max(served["batches"], 1), 2),
                              "backend_ms_per_batch": round(1000 * served["backend_s"] / max(served["batches"], 1), 3),
                              "process_cpu_ms_per_request": round(1000 * sum(t["cores"] for t in threads) * window
                                                                  / max(served["requests"], 1), 4)},
            "stacks": stacks, "stacks_holding_gil": holding_gil}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.spy", description=__doc__.split("\n\n")[0])
    p.add_argument("--models", default="cifar", help="mnist or cifar")
    p.add_argument("--backend", choices=["onnxruntime", "torch"], default="onnxruntime")
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    p.add_argument("--max-batch-size", type=int, default=64)
    p.add_argument("--connections", type=int, default=64)
    p.add_argument("--seconds", type=float, default=6.0)
    p.add_argument("--client", choices=["auto", "wrk", "python"], default="auto")
    p.add_argument("--serve-flags", default="", help="more gloro-serve flags for both servers, e.g. "
                   "'--switch-interval-ms 0.5' (the server sets its own interval at start)")
    p.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "spy")
    args = p.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    work = args.out / "work"
    work.mkdir(exist_ok=True)
    case = models.prepare(args.models, work)
    extra = shlex.split(args.serve_flags)
    chosen = {t.key: dataclasses.replace(t, command=[*t.command, *extra])
              for t in serving.targets(case, args.backend, args.device, args.max_batch_size, peers=False)}
    results: dict[str, Any] = {"command": "python -m bench.spy " + " ".join(argv or sys.argv[1:]),
                               "model": case.name, "backend": args.backend, "device": args.device,
                               "connections": args.connections, "servers": {}}
    for key in ("a", "b"):
        results["servers"][key] = profile(case, chosen[key], args.connections, args.seconds, work, args.out,
                                          args.client)
        s = results["servers"][key]
        print(f"bench.spy {key}: {s['in_cpu_window']}, {s['process_cores']} cores, threads "
              + ", ".join(f"{t['name']} {t['cores']}" for t in s["threads_in_cpu_window"][:4]), flush=True)
    (args.out / "spy.json").write_text(json.dumps(results, indent=1) + "\n")
    print(f"bench.spy: wrote {args.out / 'spy.json'}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
