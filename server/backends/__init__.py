"""Inference backends behind one interface (`Backend`), chosen by name from a registry."""

from __future__ import annotations

from collections.abc import Callable

from server.backends.base import Backend, BackendError, BatchOutput
from server.repository import ModelSpec

BackendFactory = Callable[[ModelSpec], Backend]


def _onnxruntime(spec: ModelSpec, device: str, threads: int) -> Backend:
    from server.backends.ort import OnnxRuntimeBackend

    return OnnxRuntimeBackend(spec, device, threads)


def _torch(spec: ModelSpec, device: str, threads: int) -> Backend:
    from server.backends.pytorch import TorchBackend

    return TorchBackend(spec, device, threads)


BACKENDS: dict[str, Callable[[ModelSpec, str, int], Backend]] = {
    "onnxruntime": _onnxruntime,
    "torch": _torch,
}


def backend_factory(name: str, device: str, threads: int) -> BackendFactory:
    make = BACKENDS[name]
    return lambda spec: make(spec, device, threads)


__all__ = ["BACKENDS", "Backend", "BackendError", "BackendFactory", "BatchOutput", "backend_factory"]
