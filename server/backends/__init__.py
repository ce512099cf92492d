"""Inference backends behind one interface (`Backend`), chosen by name from a registry."""

from __future__ import annotations

from collections.abc import Callable

from server.backends.base import Backend, BackendError, BatchOutput
from server.repository import ModelSpec
from server.settings import CudaWaitName

BackendFactory = Callable[[ModelSpec], Backend]


def _onnxruntime(spec: ModelSpec, device: str, threads: int, cuda_wait: CudaWaitName) -> Backend:
    from server.backends.ort import OnnxRuntimeBackend

    return OnnxRuntimeBackend(spec, device, threads)  # its CUDA provider waits its own way


def _torch(spec: ModelSpec, device: str, threads: int, cuda_wait: CudaWaitName) -> Backend:
    from server.backends.pytorch import TorchBackend

    return TorchBackend(spec, device, threads, cuda_wait)


BACKENDS: dict[str, Callable[[ModelSpec, str, int, CudaWaitName], Backend]] = {
    "onnxruntime": _onnxruntime,
    "torch": _torch,
}


def backend_factory(name: str, device: str, threads: int, cuda_wait: CudaWaitName = "spin") -> BackendFactory:
    make = BACKENDS[name]
    return lambda spec: make(spec, device, threads, cuda_wait)


__all__ = ["BACKENDS", "Backend", "BackendError", "BackendFactory", "BatchOutput", "backend_factory"]
