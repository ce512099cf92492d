"""The onnxruntime backend: CPU, or CUDA when its provider is installed. Never imports torch."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort

from server.backends.base import Backend, BackendError, BatchOutput
from server.repository import ModelSpec
from server.settings import DEFAULT_SPIN_US

OUTPUTS = ("logits", "label", "radius")
CUDA = "CUDAExecutionProvider"
CPU = "CPUExecutionProvider"


def providers_for(device: str) -> list[str]:
    available = ort.get_available_providers()
    if device == "cuda" and CUDA not in available:
        raise BackendError(
            "--device cuda asked for, but onnxruntime has no CUDA provider "
            "(install onnxruntime-gpu, or use --device auto|cpu)"
        )
    if device in ("cuda", "auto") and CUDA in available:
        return [CUDA, CPU]
    return [CPU]


def session_options(threads: int = 0, spin_us: int = DEFAULT_SPIN_US) -> ort.SessionOptions:
    """The server's session settings (the benchmarks use them too, to compare like with like)."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    # A thread that sleeps between operators must be woken for the next one, which on two threads
    # made a one-image pass 1.6x slower; one that spins on after the pass takes the event loop's
    # core. So: spin, but only briefly (--spin-us).
    options.add_session_config_entry("session.intra_op.allow_spinning", "1" if spin_us else "0")
    if spin_us:
        options.add_session_config_entry("session.intra_op.spin_duration_us", str(spin_us))
    return options


class OnnxRuntimeBackend(Backend):
    def __init__(self, spec: ModelSpec, device: str = "auto", threads: int = 0,
                 spin_us: int = DEFAULT_SPIN_US) -> None:
        super().__init__(spec)
        self.device = device
        self.providers = providers_for(device)
        self.threads = threads
        self.spin_us = spin_us
        self._session: ort.InferenceSession | None = None

    @property
    def on_gpu(self) -> bool:
        return self._session is not None and self._session.get_providers()[0] == CUDA

    def load(self) -> None:
        try:
            session = ort.InferenceSession(
                str(self.spec.onnx_path), sess_options=session_options(self.threads, self.spin_us),
                providers=self.providers,
            )
        except Exception as exc:  # onnxruntime raises its own types for unreadable graphs
            raise BackendError(f"{self.spec.onnx_path}: onnxruntime cannot load it: {exc}") from None
        if self.device == "cuda" and session.get_providers()[0] != CUDA:
            # onnxruntime falls back to the CPU quietly when the CUDA provider cannot start
            raise BackendError(f"--device cuda asked for, but onnxruntime runs {self.spec.name} on "
                               f"{session.get_providers()[0]} (no usable GPU or CUDA libraries)")
        self._check_contract(session)
        self._session = session

    def _check_contract(self, session: ort.InferenceSession) -> None:
        inputs = session.get_inputs()
        outputs = {o.name for o in session.get_outputs()}
        if len(inputs) != 1 or inputs[0].name != "input":
            names = [i.name for i in inputs]
            raise BackendError(f"{self.spec.onnx_path}: inputs {names}; the contract is one named 'input'")
        shape = inputs[0].shape
        if len(shape) != 4 or [d for d in shape[1:]] != list(self.spec.input_shape):
            raise BackendError(
                f"{self.spec.onnx_path}: input shape {shape} does not match the manifest's "
                f"[N, {', '.join(map(str, self.spec.input_shape))}]"
            )
        missing = [name for name in OUTPUTS if name not in outputs]
        if missing:
            raise BackendError(f"{self.spec.onnx_path}: outputs {missing} are missing")

    def _forward(self, batch: np.ndarray) -> BatchOutput:
        if self._session is None:
            raise BackendError("run before load")
        logits, label, radius = self._session.run(OUTPUTS, {"input": batch})
        return BatchOutput(logits, label, radius)
