"""Inference backends behind one interface (`Backend`), chosen by name from a registry."""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

from server.backends.base import Backend, BackendError, BatchOutput
from server.repository import ModelSpec
from server.settings import DEFAULT_SPIN_US, CudaWaitName

BackendFactory = Callable[[ModelSpec], Backend]


class _Make(Protocol):
    def __call__(self, spec: ModelSpec, device: str, threads: int, *, cuda_wait: CudaWaitName,
                 spin_us: int) -> Backend: ...


def _onnxruntime(spec: ModelSpec, device: str, threads: int, *, cuda_wait: CudaWaitName, spin_us: int) -> Backend:
    from server.backends.ort import OnnxRuntimeBackend

    return OnnxRuntimeBackend(spec, device, threads, spin_us)  # its CUDA provider waits its own way


def _torch(spec: ModelSpec, device: str, threads: int, *, cuda_wait: CudaWaitName, spin_us: int) -> Backend:
    from server.backends.pytorch import TorchBackend

    return TorchBackend(spec, device, threads, cuda_wait)  # torch's own pool: --spin-us is refused


BACKENDS: dict[str, _Make] = {
    "onnxruntime": _onnxruntime,
    "torch": _torch,
}


def backend_factory(name: str, device: str, threads: int, *, cuda_wait: CudaWaitName = "spin",
                    spin_us: int = DEFAULT_SPIN_US) -> BackendFactory:
    """Settings that apply to one backend only (cuda_wait: torch; spin_us: onnxruntime) are
    keywords, and each backend takes the one it uses."""
    make = BACKENDS[name]
    return lambda spec: make(spec, device, threads, cuda_wait=cuda_wait, spin_us=spin_us)


__all__ = ["BACKENDS", "Backend", "BackendError", "BackendFactory", "BatchOutput", "backend_factory"]
