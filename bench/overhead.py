"""Certification overhead: the exported graph (logits, label, radius) against the same weights
returning logits only, at several batch sizes, run A/B interleaved so that noise hits both alike.

onnxruntime CPU uses the server's own session settings (`server.backends.ort.session_options`).
With `backend="torch"` the same comparison runs on the torch modules (CUDA when asked for).
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from bench.models import ModelCase

Runner = Callable[[np.ndarray], object]


def _per_call(run: Runner, x: np.ndarray, iterations: int, sync: Callable[[], None]) -> float:
    started = time.perf_counter()
    for _ in range(iterations):
        run(x)
    sync()
    return (time.perf_counter() - started) / iterations


def compare(head: Runner, plain: Runner, x: np.ndarray, rounds: int, round_s: float,
            sync: Callable[[], None] = lambda: None) -> dict[str, float]:
    """Median seconds per call of each, over `rounds` interleaved rounds (order alternating)."""
    for _ in range(2):
        head(x), plain(x)
    sync()
    one = max(_per_call(head, x, 1, sync), 1e-6)
    iterations = max(1, int(round_s / one))
    rounds = rounds if iterations > 1 else max(5, rounds // 3)  # calls of seconds each: fewer rounds
    times: dict[str, list[float]] = {"head": [], "plain": []}
    for r in range(rounds):
        order = (("head", head), ("plain", plain)) if r % 2 == 0 else (("plain", plain), ("head", head))
        for name, run in order:
            times[name].append(_per_call(run, x, iterations, sync))
    ratios = [h / p for h, p in zip(times["head"], times["plain"])]
    head_s, plain_s = statistics.median(times["head"]), statistics.median(times["plain"])
    return {
        "head_us": 1e6 * head_s,
        "logits_only_us": 1e6 * plain_s,
        "ratio": head_s / plain_s,
        "ratio_of_round_medians": statistics.median(ratios),
        "iterations_per_round": iterations,
        "rounds": rounds,
    }


def onnxruntime_runners(case: ModelCase, threads: int) -> tuple[Runner, Runner, dict[str, Any]]:
    import onnxruntime as ort

    from server.backends.ort import session_options

    providers = ["CPUExecutionProvider"]
    head = ort.InferenceSession(str(case.onnx), sess_options=session_options(threads), providers=providers)
    plain = ort.InferenceSession(str(case.logits_onnx), sess_options=session_options(threads), providers=providers)
    outputs = ["logits", "label", "radius"]
    info = {"backend": "onnxruntime", "device": "cpu", "onnxruntime": ort.__version__, "threads": threads}
    return (lambda x: head.run(outputs, {"input": x})), (lambda x: plain.run(["logits"], {"input": x})), info


def torch_runners(case: ModelCase, device: str) -> tuple[Runner, Runner, dict[str, Any], Callable[[], None]]:
    """Both as torch modules from the version folder's safetensors: head vs body + last linear layer."""
    import torch
    import torch.nn.functional as F

    from models.torch_backend import TorchPredictor

    module = TorchPredictor(case.onnx.parent, device).module
    dev = next(module.parameters()).device

    def sync() -> None:
        if dev.type == "cuda":
            torch.cuda.synchronize()

    @torch.inference_mode()
    def head(x: torch.Tensor) -> object:
        return module(x)

    @torch.inference_mode()
    def plain(x: torch.Tensor) -> object:
        return F.linear(module.body(x), module.weight, module.bias)

    info = {"backend": "torch", "device": str(dev), "torch": torch.__version__}
    if dev.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(dev)
    return head, plain, info, sync


def as_cuda_graph(run: Runner, x: Any) -> Runner:
    """`run(x)` captured once as a CUDA graph, as the torch backend serves on CUDA: the runner
    returned replays it on that same x, whatever it is given."""
    from models.torch_backend import record_cuda_graph

    graph, _ = record_cuda_graph(lambda: run(x), x.device)
    return lambda _x: graph.replay()


def run(case: ModelCase, batch_sizes: list[int], rounds: int, round_s: float, backend: str = "onnxruntime",
        device: str = "cpu", threads: int = 0, graphs: bool = False) -> dict[str, Any]:
    """`graphs`: both sides as CUDA graphs, one per batch size (torch on CUDA only)."""
    if graphs and (backend, device) != ("torch", "cuda"):
        raise ValueError("CUDA graphs need the torch backend on CUDA")
    rng = np.random.default_rng(0)
    sync: Callable[[], None] = lambda: None
    if backend == "torch":
        head, plain, info, sync = torch_runners(case, device)
    else:
        head, plain, info = onnxruntime_runners(case, threads)
    rows = []
    for n in batch_sizes:
        x = rng.random((n, *case.input_shape), dtype=np.float32)
        if backend == "torch":
            import torch

            x = torch.from_numpy(x).to(info["device"])
        runners = (as_cuda_graph(head, x), as_cuda_graph(plain, x)) if graphs else (head, plain)
        row = compare(*runners, x, rounds, round_s, sync)
        row["batch"] = n
        row["head_images_per_s"] = n / (row["head_us"] / 1e6)
        rows.append(row)
    name = case.name + (" (CUDA graphs)" if graphs else "")
    return {"model": name, "architecture": case.architecture, "weights": case.weights, **info, "rows": rows}
