"""Liveness, readiness (ours and the v2 protocol's) and Prometheus metrics."""

from __future__ import annotations

from prometheus_client import CONTENT_TYPE_LATEST
from starlette.responses import Response

from server.errors import Unavailable
from server.metrics import Metrics
from server.responses import FastJSONResponse
from server.routes import Route
from server.service import Models


class HealthAPI:
    def __init__(self, models: Models, metrics: Metrics) -> None:
        self.models = models
        self.metrics = metrics

    # "live" and "ready" are the protocol's bodies ($live_server_response, $ready_server_response),
    # which KServe's client reads; "status" is ours.
    async def live(self) -> Response:
        return FastJSONResponse({"status": "alive", "live": True})

    async def ready(self) -> Response:
        """200 only once every model is loaded and warmed up (and until shutdown begins)."""
        if not self.models.ready:
            waiting = [n for n, s in self.models.services.items() if not s.ready]
            raise Unavailable(f"not ready: models {', '.join(waiting)} not loaded")
        return FastJSONResponse({"status": "ready", "ready": True, "models": list(self.models.services)})

    async def model_ready(self, name: str) -> Response:
        service = self.models.get(name)
        if not service.ready:
            raise Unavailable(f"model {name} is not ready")
        return FastJSONResponse({"name": name, "ready": True})

    async def version_ready(self, name: str, version: str) -> Response:
        return await self.model_ready(self.models.version(name, version).spec.name)

    async def prometheus(self) -> Response:
        return Response(self.metrics.exposition(), media_type=CONTENT_TYPE_LATEST)

    def routes(self) -> list[Route]:
        return [
            Route("GET", "/healthz", self.live, "Liveness"),
            Route("GET", "/readyz", self.ready, "Readiness: models loaded and warmed up"),
            Route("GET", "/v2/health/live", self.live, "v2 liveness"),
            Route("GET", "/v2/health/ready", self.ready, "v2 readiness"),
            Route("GET", "/v2/models/{name}/ready", self.model_ready, "v2 model readiness"),
            Route("GET", "/v2/models/{name}/versions/{version}/ready", self.version_ready, "v2 model version readiness"),
            Route("GET", "/metrics", self.prometheus, "Prometheus metrics", {"include_in_schema": False}),
        ]
