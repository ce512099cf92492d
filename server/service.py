"""The data plane: the served models, each a backend behind its batcher, and their lifecycle."""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

from server.backends import Backend, BatchOutput
from server.batcher import BatchConfig, Batcher
from server.errors import NotFound, Unavailable
from server.metrics import Metrics
from server.repository import ModelSpec

log = logging.getLogger("server.service")


@dataclass(frozen=True, slots=True)
class Prediction:
    spec: ModelSpec
    epsilon: float
    output: BatchOutput
    certified: np.ndarray  # bool [N]: radius > epsilon


class ModelService:
    def __init__(self, spec: ModelSpec, backend: Backend, config: BatchConfig, metrics: Metrics) -> None:
        self.spec = spec
        self.backend = backend
        self.config = config
        self.ready = False
        self.metrics = metrics.for_model(spec.name)
        self.batcher = Batcher(spec.name, backend, config, self.metrics)

    def load(self) -> None:
        """Load, warm up, start the worker: blocking, so call it off the event loop."""
        self.backend.load()
        self.backend.warm_up(self.config.max_batch_size)
        self.batcher.start()
        self.ready = True
        log.info("model %s version %s ready (%s)", self.spec.name, self.spec.version, type(self.backend).__name__)

    async def predict(self, inputs: np.ndarray, epsilon: float) -> Prediction:
        if not self.ready:
            raise Unavailable(f"model {self.spec.name} is not ready")
        output = await self.batcher.infer(inputs)
        certified = output.radius > epsilon
        self.metrics.record_predictions(int(np.count_nonzero(certified)), len(certified))
        return Prediction(self.spec, epsilon, output, certified)

    def stop(self, timeout: float) -> None:
        self.ready = False
        self.batcher.stop(timeout)


class Models:
    """The models being served, by name, and which one answers the default routes."""

    def __init__(self, services: dict[str, ModelService], default: str) -> None:
        self.services = services
        self.default = default

    def get(self, name: str | None = None) -> ModelService:
        service = self.services.get(self.default if name is None else name)
        if service is None:
            shown = name if len(name or "") <= 64 else name[:64] + "..."
            raise NotFound(f"model {shown!r} is not served; served: {', '.join(self.services)}")
        return service

    def version(self, name: str, version: str) -> ModelService:
        service = self.get(name)
        if version != service.spec.version:
            shown = version if len(version) <= 16 else version[:16] + "..."
            raise NotFound(
                f"version {shown!r} of model {name} is not served (serving version {service.spec.version})"
            )
        return service

    @property
    def ready(self) -> bool:
        return all(s.ready for s in self.services.values())

    def load_all(self) -> None:
        """Load the models not loaded yet (the CLI loads them before uvicorn, tests in the lifespan)."""
        for service in self.services.values():
            if not service.ready:
                service.load()

    def stop_all(self, timeout: float) -> None:
        for service in self.services.values():
            service.stop(timeout)
