"""The server's one typed configuration object: every field is a CLI flag and a GLORO_* variable.

`ServerSettings()` reads the environment when it is built, so only the CLI (or a test) builds it;
nothing here runs at import time.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

DEFAULT_MODEL = "mnist-2c2f"
# onnxruntime's intra-op threads spin this long for more work before sleeping (docs/benchmarks.md,
# "Spinning, briefly")
DEFAULT_SPIN_US = 100

BackendName = Literal["onnxruntime", "torch"]
# Settings only one backend reads: that backend, and why the others ignore it. Set to anything
# but its default with another backend, one is refused rather than silently dropped.
ONE_BACKEND_SETTINGS: dict[str, tuple[str, str]] = {
    "cuda_wait": ("torch", "waits its own way"),
    "spin_us": ("onnxruntime", "does not use onnxruntime's thread pool"),
}
DeviceName = Literal["auto", "cpu", "cuda"]
CudaWaitName = Literal["spin", "block"]
LogLevel = Literal["critical", "error", "warning", "info", "debug"]


def shipped_repository() -> Path:
    """The model repository that ships inside the `server` package."""
    return Path(__file__).resolve().parent / "model_repository"


class ServerSettings(BaseSettings):
    """Flags of `gloro-serve serve`; each is also the environment variable GLORO_<NAME>."""

    model_config = SettingsConfigDict(env_prefix="GLORO_", extra="forbid", frozen=True)

    repository: Path | None = Field(
        None, description="model repository folder (default: the one shipped with gloro-serve)"
    )
    host: str = Field("127.0.0.1", description="address to listen on")
    port: int = Field(8000, ge=0, le=65535, description="TCP port to listen on")
    grpc_port: int | None = Field(
        None, ge=1, le=65535,
        description="also serve the Open Inference Protocol v2 over gRPC on this port of --host (KServe and "
        "Triton clients; KServe's default is 8081); unset or off: HTTP only",
    )
    max_batch_size: int = Field(
        32, ge=1, le=4096, description="most images in one forward pass (Triton: max_batch_size)"
    )
    max_delay_ms: float = Field(
        2.0, ge=0, le=10_000,
        description="longest a request waits for others to fill its batch (Triton: max_queue_delay)",
    )
    max_queue: int = Field(
        256, ge=1, le=1_000_000,
        description="requests that may wait per model; more answer 503 (Triton: queue size)",
    )
    request_timeout_s: float = Field(
        10.0, gt=0, le=3600, description="a request not answered in this time gets 504"
    )
    instances: int = Field(
        1, ge=1, le=64,
        description="worker threads per model, each running its own batches on the one loaded model "
        "(Triton: instance_group count); 2 can help a compute-bound model on a CPU",
    )
    workers: int = Field(
        1, ge=1, le=64,
        description="server processes sharing the port, each with its own event loop and copy of every model "
        "(uvicorn's workers); more than 1 uses more cores for the HTTP path",
    )
    reuse_port: bool = Field(
        False,
        description="with --workers: each worker listens on a socket of its own (SO_REUSEPORT, Linux) and the "
        "kernel spreads connections evenly; without it the workers share one socket and the first to accept "
        "takes most, but a SIGHUP replacement never resets a connection waiting to be accepted",
    )
    backend: BackendName = Field("onnxruntime", description="inference backend")
    device: DeviceName = Field("auto", description="auto: CUDA when available, else CPU")
    cuda_wait: CudaWaitName = Field(
        "spin",
        description="how the torch backend's batch threads wait for the GPU: spin answers soonest but keeps a "
        "core busy for the whole pass; block sleeps until the GPU is done, leaving the core to the other "
        "--workers (CUDA: a blocking event)",
    )
    threads: int = Field(
        0, ge=0, le=256,
        description="intra-op threads per model (0: the backend's default with one instance; with more, "
        "the cores shared among them)",
    )
    spin_us: int = Field(
        DEFAULT_SPIN_US, ge=0, le=1_000_000,
        description="how long onnxruntime's intra-op threads spin for more work before they sleep, in "
        "microseconds (0: they never spin): within a forward pass a spinning thread starts each operator at "
        "once instead of being woken, which makes a one-image pass on two threads much faster; spinning "
        "longer takes cores from the event loop between batches",
    )
    switch_interval_ms: float = Field(
        5.0, gt=0, le=100,
        description="Python's GIL switch interval for the server process (5 is Python's own): 0.5 lets a "
        "batch worker whose forward pass has ended take the GIL from a busy event loop sooner, a few "
        "percent faster for a compute-bound model with --instances 2, slower for a tiny model",
    )
    gc_threshold: int = Field(
        10_000, ge=100, le=10_000_000,
        description="allocations between collections of Python's youngest garbage-collector generation "
        "(Python's own: 700); each serving process also freezes what it built at startup out of the "
        "collector's reach (gc.freeze): less CPU a request (docs/benchmarks.md)",
    )
    api_key: SecretStr | None = Field(
        None, description="require this key (X-API-Key or Authorization: Bearer) except on health and metrics"
    )
    max_body_bytes: int = Field(
        8 * 1024 * 1024, ge=1024, le=1 << 31, description="larger request bodies answer 413"
    )
    max_bytes_in_flight: int = Field(
        256 * 1024 * 1024, ge=1024, le=1 << 40,
        description="bytes of requests one server process may hold at once, summed over the requests it is "
        "reading or answering: their bodies and the inputs decoded from them; a request that would pass it "
        "answers 503, or 413 if its decoded inputs alone would (at least --max-body-bytes)",
    )
    default_model: str = Field(
        DEFAULT_MODEL, description="model served by /v1/predict (must be in the repository)"
    )
    log_level: LogLevel = Field("info", description="log level")
    access_log: bool = Field(False, description="log every request (slower)")
    read_timeout_s: float = Field(
        60.0, gt=0, le=3600,
        description="a request (head and body) must arrive in full within this time of its first byte, and "
        "a new connection must send one within this time: else 408 and the connection closed",
    )
    drain_s: float = Field(
        20.0, ge=0, le=3600,
        description="on SIGTERM, how long accepted requests may take to finish before the process exits",
    )

    @model_validator(mode="after")
    def _one_body_fits_in_flight(self) -> ServerSettings:
        if self.max_bytes_in_flight < self.max_body_bytes:
            raise ValueError(
                f"--max-bytes-in-flight ({self.max_bytes_in_flight}) must be at least --max-body-bytes "
                f"({self.max_body_bytes}), or no body of the largest size allowed could be read"
            )
        return self

    @field_validator("grpc_port", mode="before")
    @classmethod
    def _grpc_off(cls, value: object) -> object:
        """`off` (or empty, as GLORO_GRPC_PORT= leaves it) turns off the gRPC port an image sets."""
        return None if isinstance(value, str) and value.strip().lower() in ("", "off") else value

    @model_validator(mode="after")
    def _grpc_port_is_its_own(self) -> ServerSettings:
        if self.grpc_port is not None and self.grpc_port == self.port:
            raise ValueError(f"--grpc-port {self.grpc_port} is --port too: gRPC needs a port of its own")
        return self

    @model_validator(mode="after")
    def _one_backend_settings_need_that_backend(self) -> ServerSettings:
        for name, (owner, why_not) in ONE_BACKEND_SETTINGS.items():
            value = getattr(self, name)
            if value != type(self).model_fields[name].default and self.backend != owner:
                raise ValueError(f"--{name.replace('_', '-')} {value} applies to --backend {owner} only "
                                 f"(the {self.backend} backend {why_not})")
        return self

    def intra_op_threads(self) -> int:
        """--threads, or for 0: the backend's own default (0) when one thread in one process runs
        batches, else the cores this process may use shared among the --workers x --instances batch
        threads: two batches on one core each beat two batches each spread over both
        (docs/benchmarks.md, "One core per worker")."""
        runners = self.instances * self.workers
        if self.threads or runners == 1:
            return self.threads
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
        return max(1, cores // runners)

    def repository_path(self) -> Path:
        return self.repository if self.repository is not None else shipped_repository()
