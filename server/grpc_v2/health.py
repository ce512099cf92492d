"""gRPC's standard health checking protocol (`grpc.health.v1.Health`), for what probes gRPC servers
that way: Kubernetes' `grpc` probes, Envoy, cloud load balancers.

The server as a whole (service "") and the inference service are SERVING once every model is
loaded and warmed up, as `GET /readyz` answers 200. When the server begins to drain, its gRPC port
refuses new calls (UNAVAILABLE, Checks included) and each Watch stream gets NOT_SERVING and ends.
Another service name is NOT_FOUND (Check) or SERVICE_UNKNOWN (Watch). No API key is asked, as for
the REST health routes. Check calls count in gloro_requests_total with the status /readyz would
have (200 serving, 503 not, 404 unknown, 400 corrupt); Watch streams do not count.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

import grpc
from google.protobuf.message import Message

from server.errors import BadRequest
from server.grpc_v2.messages import HEALTH_PACKAGE, HEALTH_SERVICE, SERVICE, message, methods, parse
from server.metrics import Metrics
from server.service import Models

CHECKED = frozenset({"", SERVICE})
CHECK_ROUTE = f"/{HEALTH_SERVICE}/Check"
# the REST status of each answer to Check, for the metrics
CHECK_STATUS = {"SERVING": 200, "NOT_SERVING": 503, "SERVICE_UNKNOWN": 404}


class HealthService:
    def __init__(self, models: Models, metrics: Metrics, draining: asyncio.Event) -> None:
        self.models = models
        self.metrics = metrics
        # Set when the gRPC server begins to stop. Models are loaded before gRPC starts, so this is
        # the one change a Watch stream waits for: an event, not a poll.
        self.draining = draining

    def _status(self, service: str) -> str:
        if service not in CHECKED:
            return "SERVICE_UNKNOWN"
        return "SERVING" if self.models.ready and not self.draining.is_set() else "NOT_SERVING"

    @staticmethod
    def _response(status: str) -> Message:
        response = message("HealthCheckResponse", HEALTH_PACKAGE)
        return response(status=response.ServingStatus.Value(status))

    @staticmethod
    async def _request(data: bytes, context: grpc.aio.ServicerContext) -> Any:
        try:
            return parse(message("HealthCheckRequest", HEALTH_PACKAGE), data)
        except BadRequest as exc:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))

    async def check(self, data: bytes, context: grpc.aio.ServicerContext) -> Message:
        started = time.perf_counter()
        status = "CORRUPT"
        try:
            request = await self._request(data, context)
            status = self._status(request.service)
        finally:
            self.metrics.record_request("", CHECK_ROUTE, CHECK_STATUS.get(status, 400), time.perf_counter() - started)
        if status == "SERVICE_UNKNOWN":
            await context.abort(grpc.StatusCode.NOT_FOUND, f"no service {request.service[:64]!r} here; "
                                f"ask for '' or {SERVICE!r}")
        return self._response(status)

    async def watch(self, data: bytes, context: grpc.aio.ServicerContext) -> AsyncIterator[Message]:
        """The status now, and NOT_SERVING when the server begins to drain, which ends the stream:
        one left open would hold the server's stop for its whole grace."""
        request = await self._request(data, context)
        yield self._response(self._status(request.service))
        await self.draining.wait()
        if request.service in CHECKED:
            yield self._response("NOT_SERVING")

    def handler(self) -> grpc.GenericRpcHandler:
        (_, check_out), (_, watch_out) = (methods(HEALTH_SERVICE)[n] for n in ("Check", "Watch"))
        return grpc.method_handlers_generic_handler(HEALTH_SERVICE, {  # bytes in: parsed by the handlers
            "Check": grpc.unary_unary_rpc_method_handler(self.check, response_serializer=check_out.SerializeToString),
            "Watch": grpc.unary_stream_rpc_method_handler(self.watch, response_serializer=watch_out.SerializeToString),
        })
