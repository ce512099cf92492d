"""gRPC's standard health checking protocol (`grpc.health.v1.Health`), for what probes gRPC servers
that way: Kubernetes' `grpc` probes, Envoy, cloud load balancers.

The server as a whole (service "") and the inference service are SERVING once every model is
loaded and warmed up, as `GET /readyz` answers 200, and NOT_SERVING from the moment the server
begins to drain. Another service name is NOT_FOUND (Check) or SERVICE_UNKNOWN (Watch). No API
key is asked, as for the REST health routes. Check calls count in gloro_requests_total as REST's
probes do; Watch streams do not.
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
WATCH_POLL_S = 1.0  # how soon a Watch stream sees readiness change


class HealthService:
    def __init__(self, models: Models, metrics: Metrics) -> None:
        self.models = models
        self.metrics = metrics
        self.draining = False  # set when the gRPC server begins to stop

    def _status(self, service: str) -> str:
        if service not in CHECKED:
            return "SERVICE_UNKNOWN"
        return "SERVING" if self.models.ready and not self.draining else "NOT_SERVING"

    def _response(self, status: str) -> Message:
        response = message("HealthCheckResponse", HEALTH_PACKAGE)
        return response(status=response.ServingStatus.Value(status))

    def _request(self, data: bytes) -> Any:
        return parse(message("HealthCheckRequest", HEALTH_PACKAGE), data)

    async def check(self, data: bytes, context: grpc.aio.ServicerContext) -> Message:
        started = time.perf_counter()
        try:
            request = self._request(data)
        except BadRequest as exc:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        status = self._status(request.service)
        known = status != "SERVICE_UNKNOWN"
        self.metrics.record_request("", f"/{HEALTH_SERVICE}/Check", 200 if known else 404,
                                    time.perf_counter() - started)
        if not known:
            await context.abort(grpc.StatusCode.NOT_FOUND, f"no service {request.service[:64]!r} here; "
                                f"ask for '' or {SERVICE!r}")
        return self._response(status)

    async def watch(self, data: bytes, context: grpc.aio.ServicerContext) -> AsyncIterator[Message]:
        """The status now, then each change, until the client goes or the server drains."""
        try:
            request = self._request(data)
        except BadRequest as exc:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        sent = None
        while True:
            status = self._status(request.service)
            if status != sent:
                yield self._response(status)
                sent = status
            if self.draining:
                return  # a stream left open would hold the server's stop for its whole grace
            await asyncio.sleep(WATCH_POLL_S)

    def handler(self) -> grpc.GenericRpcHandler:
        (_, check_out), (_, watch_out) = (methods(HEALTH_SERVICE)[n] for n in ("Check", "Watch"))
        return grpc.method_handlers_generic_handler(HEALTH_SERVICE, {  # bytes in: parsed by the handlers
            "Check": grpc.unary_unary_rpc_method_handler(self.check, response_serializer=check_out.SerializeToString),
            "Watch": grpc.unary_stream_rpc_method_handler(self.watch, response_serializer=watch_out.SerializeToString),
        })
