"""Closed-loop load generators: each connection sends its next request when its last one is answered.

`wrk` (Debian: `apt-get install -y wrk`) with a Lua script for the POST body when it is installed;
otherwise a small asyncio HTTP/1.1 keep-alive client (it costs more CPU per request than wrk, and on a
2-core machine that CPU is taken from the server: compare servers only under one client).

Both report what they saw: responses, successes (2xx), errors by kind, successes per second, and
latency percentiles over all responses.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import subprocess
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import numpy as np

WRK_LUA = r"""
local f = assert(io.open(os.getenv("BENCH_BODY"), "rb"))
wrk.method = "POST"
wrk.body = f:read("*a")
f:close()
wrk.headers["Content-Type"] = os.getenv("BENCH_CONTENT_TYPE") or "application/json"

done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'BENCH_JSON {"duration_us": %d, "responses": %d, "connect": %d, "read": %d, "write": %d, "status": %d, ' ..
    '"timeout": %d, "p50_us": %d, "p95_us": %d, "p99_us": %d, "max_us": %d, "mean_us": %.1f}\n',
    summary.duration, summary.requests, e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50), latency:percentile(95), latency:percentile(99), latency.max, latency.mean))
end
"""


@dataclass
class LoadResult:
    client: str
    connections: int
    duration_s: float
    responses: int  # HTTP responses received, any status
    successes: int  # 2xx
    errors: dict[str, int] = field(default_factory=dict)  # non-2xx status, socket errors, timeouts
    req_per_s: float = 0.0  # successes per second
    p50_ms: float = float("nan")
    p95_ms: float = float("nan")
    p99_ms: float = float("nan")
    max_ms: float = float("nan")

    def to_dict(self) -> dict:
        return asdict(self)


def wrk_available() -> bool:
    return shutil.which("wrk") is not None


def run_wrk(url: str, body: Path, connections: int, duration_s: float, work: Path,
            content_type: str = "application/json", timeout_s: float = 10.0) -> LoadResult:
    script = work / "post.lua"
    script.write_text(WRK_LUA)  # always: a post.lua left in `work` by anything else would not report
    env = {**os.environ, "BENCH_BODY": str(body), "BENCH_CONTENT_TYPE": content_type}
    command = ["wrk", "-t1", f"-c{connections}", f"-d{max(1, round(duration_s))}s", f"--timeout={timeout_s:g}s",
               "-s", str(script), url]
    out = subprocess.run(command, capture_output=True, text=True, env=env, timeout=duration_s + 60)
    match = re.search(r"^BENCH_JSON (\{.*\})$", out.stdout, re.M)
    if out.returncode != 0 or match is None:
        raise RuntimeError(f"wrk failed ({out.returncode}): {out.stdout[-500:]} {out.stderr[-500:]}")
    r = json.loads(match.group(1))
    seconds = r["duration_us"] / 1e6
    errors = {k: r[k] for k in ("status", "connect", "read", "write", "timeout") if r[k]}
    successes = r["responses"] - r["status"]
    return LoadResult("wrk -t1", connections, seconds, r["responses"], successes, errors, successes / seconds,
                      r["p50_us"] / 1e3, r["p95_us"] / 1e3, r["p99_us"] / 1e3, r["max_us"] / 1e3)


async def _connection(host: str, port: int, request: bytes, deadline: float, latencies: list[float],
                      statuses: dict[int, int], errors: dict[str, int]) -> None:
    try:
        reader, writer = await asyncio.open_connection(host, port)
    except OSError:
        errors["connect"] = errors.get("connect", 0) + 1
        return
    try:
        while time.perf_counter() < deadline:
            started = time.perf_counter()
            writer.write(request)
            head = await reader.readuntil(b"\r\n\r\n")
            status = int(head[9:12])
            length = re.search(rb"(?i)\r\ncontent-length:\s*(\d+)", head)
            if length is None:
                raise ConnectionError("response without Content-Length")
            await reader.readexactly(int(length.group(1)))
            latencies.append(time.perf_counter() - started)
            statuses[status] = statuses.get(status, 0) + 1
    except (OSError, asyncio.IncompleteReadError, ConnectionError, ValueError):
        errors["read"] = errors.get("read", 0) + 1
    finally:
        writer.close()


def run_python(url: str, body: bytes, connections: int, duration_s: float,
               content_type: str = "application/json") -> LoadResult:
    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    request = (f"POST {parts.path or '/'} HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Type: {content_type}\r\n"
               f"Content-Length: {len(body)}\r\n\r\n").encode() + body
    latencies: list[float] = []
    statuses: dict[int, int] = {}
    errors: dict[str, int] = {}

    async def main() -> float:
        started = time.perf_counter()
        deadline = started + duration_s
        await asyncio.gather(*(_connection(host, port, request, deadline, latencies, statuses, errors)
                               for _ in range(connections)))
        return time.perf_counter() - started

    seconds = asyncio.run(main())
    successes = sum(n for s, n in statuses.items() if 200 <= s < 300)
    bad = sum(n for s, n in statuses.items() if not 200 <= s < 300)
    if bad:
        errors["status"] = bad
    ms = np.asarray(latencies) * 1e3
    p50, p95, p99, top = (np.percentile(ms, [50, 95, 99, 100]) if ms.size else [float("nan")] * 4)
    return LoadResult("python asyncio", connections, seconds, len(latencies), successes, errors,
                      successes / seconds, float(p50), float(p95), float(p99), float(top))


def run_load(url: str, body: bytes, connections: int, duration_s: float, work: Path, client: str = "auto") -> LoadResult:
    """`client`: wrk, python, or auto (wrk when installed)."""
    if client == "wrk" or (client == "auto" and wrk_available()):
        path = work / "body.json"
        path.write_bytes(body)
        return run_wrk(url, path, connections, duration_s, work)
    return run_python(url, body, connections, duration_s)
