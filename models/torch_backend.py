"""The torch serving backend: the exported model's own tensors, run by torch (CUDA when present).

It loads ``model.safetensors`` (written by the exporter beside model.onnx) into the same
:class:`~models.export.CertifiedModel` that was exported, so both backends give the same answers.

On CUDA a small model's forward pass costs its kernel launches, not its arithmetic (6C2F on an
H200: 0.76 ms a call at batch 1, 0.82 ms at batch 32, docs/benchmarks-gpu.md), and every launch is
Python work in the batch thread, which shares the GIL with the server's event loop. So the forward pass
is captured once per batch size bucket as a CUDA graph and replayed: one launch a batch. A batch
is padded to its bucket; the padding rows are never read back.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Literal, TypeVar

import numpy as np
import torch

from models.checkpoint import fill, read_exported
from models.export import CertifiedModel
from models.numerics import set_tf32

GRAPH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)  # larger batches run eagerly
T = TypeVar("T")
CudaWait = Literal["spin", "block"]
Wait = Callable[[], None]


def device_wait(device: torch.device, how: CudaWait) -> Wait:
    """Waits, without the GIL, for the work queued so far on the device's current stream.

    "spin": the stream's own synchronize, which with CUDA's default scheduling busy-waits while a
    process has fewer active threads than there are cores: the answer comes soonest, but the core
    stays busy for the whole pass. "block": a blocking event (cudaEventBlockingSync), whose waiter
    sleeps until the GPU signals, leaving the core to other processes' event loops (many
    `--workers` on one GPU). A fresh event each wait: the eager path runs unlocked, so two batch
    threads may wait at once. On the CPU there is nothing to wait for.
    """
    if device.type != "cuda":
        return lambda: None
    if how == "spin":
        return lambda: torch.cuda.current_stream(device).synchronize()

    def block() -> None:
        done = torch.cuda.Event(blocking=True)
        done.record(torch.cuda.current_stream(device))
        done.synchronize()

    return block


def pack(logits: torch.Tensor, label: torch.Tensor, radius: torch.Tensor) -> torch.Tensor:
    """The three outputs as one float32 tensor, so one copy (one wait) brings them to the host.
    Labels are class indices, exact in float32 below 2**24 classes (the manifest allows 100,000)."""
    return torch.cat([logits, radius[:, None].to(logits.dtype), label[:, None].to(logits.dtype)], dim=1)


def unpack(packed: np.ndarray) -> dict[str, np.ndarray]:
    return {"logits": packed[:, :-2], "radius": packed[:, -2], "label": packed[:, -1].astype(np.int64)}


def record_cuda_graph(work: Callable[[], T], device: torch.device) -> tuple[torch.cuda.CUDAGraph, T]:
    """`work()` captured as a CUDA graph, after two warm-up runs off the default stream as capture
    requires; returns the graph and what the captured run returned (replays rewrite it in place)."""
    side = torch.cuda.Stream(device)
    side.wait_stream(torch.cuda.current_stream(device))
    with torch.cuda.stream(side):
        for _ in range(2):
            work()
    torch.cuda.current_stream(device).wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    # thread_local: another model's batch thread may launch work while this one captures.
    with torch.cuda.graph(graph, capture_error_mode="thread_local"):
        out = work()
    return graph, out


class CapturedForward:
    """The module's forward pass at one batch size, captured as a CUDA graph with its own input
    and output buffers (pinned on the host, so the copies are asynchronous)."""

    def __init__(self, module: CertifiedModel, shape: tuple[int, ...], device: torch.device, wait: Wait) -> None:
        self.wait = wait
        self.host_input = torch.zeros(shape, dtype=torch.float32).pin_memory()
        self.input = self.host_input.to(device)
        self.graph, self.output = record_cuda_graph(lambda: pack(*module(self.input)), device)
        self.host_output = torch.empty(self.output.shape, dtype=torch.float32).pin_memory()

    def __call__(self, x: np.ndarray) -> np.ndarray:
        n = x.shape[0]
        self.host_input.numpy()[:n] = x  # rows past n keep an earlier batch's images: finite, ignored
        self.input.copy_(self.host_input, non_blocking=True)
        self.graph.replay()
        self.host_output.copy_(self.output, non_blocking=True)
        self.wait()
        return self.host_output.numpy()[:n].copy()


class TorchPredictor:
    """Raises CheckpointError (one line) when the version's provenance or tensors are unusable."""

    def __init__(self, version_dir: Path, device: str = "auto", cuda_wait: CudaWait = "spin"):
        version_dir = Path(version_dir)
        exported = read_exported(version_dir)
        module = fill(CertifiedModel.empty, exported.config, exported.tensors, version_dir / "model.safetensors")
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        self.device = torch.device(device)
        if self.device.type == "cuda":
            set_tf32(False)  # process-wide: a serving process only serves, and certificates need IEEE float32
        self.module = module.to(self.device).eval()
        self._wait = device_wait(self.device, cuda_wait)
        self._graphs: dict[int, CapturedForward] = {}
        self._graph_shape: tuple[int, ...] | None = None
        self._lock = threading.Lock()  # a graph's buffers serve one batch at a time (--instances N)

    @torch.inference_mode()
    def capture(self, image_shape: Sequence[int], buckets: Sequence[int] = GRAPH_BUCKETS) -> str | None:
        """On CUDA, capture the forward pass for each bucket of batch sizes (at load, before serving).
        Graphs only save launches: if capture fails (out of memory, say), every batch runs eagerly
        and the reason is returned for the caller to log."""
        if self.device.type != "cuda":
            return None
        try:
            graphs = {b: CapturedForward(self.module, (b, *image_shape), self.device, self._wait) for b in sorted(buckets)}
        except RuntimeError as exc:  # torch.OutOfMemoryError is one
            return f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
        self._graph_shape, self._graphs = tuple(image_shape), graphs
        return None

    @torch.inference_mode()
    def run(self, x: np.ndarray) -> dict[str, np.ndarray]:
        x = np.ascontiguousarray(x, dtype=np.float32)
        bucket = next((b for b in self._graphs if b >= x.shape[0]), None)
        if bucket is not None and x.shape[1:] == self._graph_shape:
            with self._lock:
                return unpack(self._graphs[bucket](x))
        packed = pack(*self.module(torch.from_numpy(x).to(self.device)))
        host = packed.to("cpu", non_blocking=True)  # into pinned memory, read only after the wait
        self._wait()
        return unpack(host.numpy())
