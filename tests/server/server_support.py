"""Helpers for the server tests: MNIST files, PNG bytes, a real server process, metric parsing."""

from __future__ import annotations

import asyncio
import gzip
import io
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np
from PIL import Image
from prometheus_client.parser import text_string_to_metric_families
from promtool_run import promtool

ROOT = Path(__file__).resolve().parents[2]
TESTS = Path(__file__).resolve().parent
# The server with `import torch` made to fail: serving must work without ever importing it.
NO_TORCH_SERVER = (
    "import sys; sys.modules['torch'] = None; from server.cli import main; "
    "code = main(sys.argv[1:]); assert 'torch' in sys.modules and sys.modules['torch'] is None; sys.exit(code)"
)
MNIST = ROOT.parent / "shared" / "datasets" / "mnist"


def load_idx(path: Path) -> np.ndarray:
    """An IDX file (gzip), as in ../shared/datasets/README.md."""
    data = gzip.decompress(path.read_bytes())
    ndim = data[3]
    dims = [int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(dims)


def png_bytes(pixels: np.ndarray, mode: str | None = None) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels, mode=mode).save(buffer, format="PNG")
    return buffer.getvalue()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def promtool_check_metrics(text: str) -> None:
    """`promtool check metrics` must parse the exposition (exit 1 is naming advice, 3 unparsable text)."""
    check = promtool("check", "metrics", stdin=text)
    assert check.returncode in (0, 1) and "error while linting" not in check.stderr, check.stderr


def metric_samples(text: str, name: str) -> dict[tuple[tuple[str, str], ...], float]:
    """Samples of one metric family: {sorted label items: value}, sample names included in labels."""
    out = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name:
                out[tuple(sorted(sample.labels.items()))] = sample.value
    return out


def histogram_buckets(text: str, name: str, model: str) -> dict[float, float]:
    """Cumulative bucket counts {le: count} of a histogram for one model."""
    buckets = {}
    for labels, value in metric_samples(text, name + "_bucket").items():
        labels = dict(labels)
        if labels.get("model") == model:
            buckets[float(labels["le"])] = value
    return buckets


def burst(
    url: str, n: int, concurrency: int = 64, timeout: float = 30.0, **request: object
) -> list[httpx.Response | httpx.HTTPError]:
    """POST the same request n times, `concurrency` at a time; answers (or transport errors) in order."""

    async def main() -> list[httpx.Response | httpx.HTTPError]:
        limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
        gate = asyncio.Semaphore(concurrency)
        async with httpx.AsyncClient(limits=limits, timeout=timeout) as client:

            async def one() -> httpx.Response | httpx.HTTPError:
                async with gate:
                    try:
                        return await client.post(url, **request)
                    except httpx.HTTPError as exc:
                        return exc

            return await asyncio.gather(*(one() for _ in range(n)))

    return asyncio.run(main())


class ServerProcess:
    """A real server process (default: `python -m server serve`, torch import blocked), ready-waited.

    The port goes in GLORO_PORT, so `argv` can be the bare `gloro-serve` command.
    """

    def __init__(self, args: list[str] = (), env: dict[str, str] | None = None, argv: list[str] | None = None) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        command = argv if argv is not None else [sys.executable, "-c", NO_TORCH_SERVER, "serve"]
        python_path = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
        full_env = {**os.environ, "PYTHONPATH": python_path, "GLORO_PORT": str(self.port), **(env or {})}
        self.process = subprocess.Popen(
            [*command, *args],
            cwd=ROOT, env=full_env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        )

    def wait_ready(self, timeout: float = 60.0) -> ServerProcess:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"server exited with {self.process.returncode}:\n{self.output()}")
            try:
                if httpx.get(self.url + "/readyz", timeout=1.0).status_code == 200:
                    return self
            except httpx.TransportError:
                pass
            time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"server not ready in {timeout} s:\n{self.output()}")

    def metrics(self) -> str:
        return httpx.get(self.url + "/metrics", timeout=10).text

    def terminate(self) -> None:
        self.process.send_signal(signal.SIGTERM)

    def stop(self, timeout: float = 15.0) -> int:
        if self.process.poll() is None:
            self.terminate()
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        return self.process.returncode

    def output(self) -> str:
        if self.process.poll() is None:
            return "(still running)"
        return self.process.stdout.read().decode(errors="replace") if self.process.stdout else ""

    def __enter__(self) -> ServerProcess:
        return self.wait_ready()

    def __exit__(self, *exc: object) -> None:
        self.stop()


class GrpcServer(ServerProcess):
    """A server process with --grpc-port on a free port, and a Triton client of it; `faults`
    serves through fault_server.py's misbehaving backend (its flags first)."""

    def __init__(self, args: list[str] = (), faults: list[str] | None = None) -> None:
        self.grpc_port = free_port()
        argv = None if faults is None else [sys.executable, str(TESTS / "fault_server.py"), *faults]
        super().__init__(["--grpc-port", str(self.grpc_port), *args], argv=argv)
        self.target = f"127.0.0.1:{self.grpc_port}"

    def client(self) -> Any:
        """tritonclient.grpc's client (imported here: the other tests need no gRPC packages)."""
        import tritonclient.grpc as triton_grpc

        return triton_grpc.InferenceServerClient(self.target)
