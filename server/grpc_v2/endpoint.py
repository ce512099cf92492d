"""The gRPC server of `--grpc-port`: grpc's asyncio server on the app's own event loop, beside
uvicorn, started and stopped by the app's lifespan (`server.app.grpc_endpoint`).

Under `--workers` every worker serves the port, each listening with SO_REUSEPORT (grpc's way to
share one) and the kernel spreading connections over them; one process listens alone, so that a
second server started on the same port fails instead of taking half its calls.
"""

from __future__ import annotations

import errno
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import grpc

from server.budget import InFlightBytes
from server.grpc_v2.service import OpenInferenceService
from server.metrics import Metrics
from server.service import Models
from server.settings import ServerSettings


def address(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def why_unusable(host: str, port: int) -> str | None:
    """Why host:port cannot be listened on (in use, not this machine's address), or None: checked
    before the server starts, so a taken port is the CLI's one line, not a failed lifespan."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as grpc binds: TIME_WAIT is no obstacle
        try:
            probe.bind((host, port))
        except OSError as exc:
            return exc.strerror or errno.errorcode.get(exc.errno or 0, str(exc))
    return None


def server_options(settings: ServerSettings) -> list[tuple[str, int]]:
    return [
        # a larger message is refused with RESOURCE_EXHAUSTED before it is handed to the service
        ("grpc.max_receive_message_length", settings.max_body_bytes),
        ("grpc.so_reuseport", 1 if settings.workers > 1 else 0),
    ]


@asynccontextmanager
async def serving_grpc(settings: ServerSettings, models: Models, metrics: Metrics,
                       budget: InFlightBytes) -> AsyncIterator[grpc.aio.Server]:
    """Serve `models` over gRPC until the block ends; then calls in progress may finish for up to
    --drain-s, and new ones are refused."""
    assert settings.grpc_port is not None
    api_key = settings.api_key.get_secret_value() if settings.api_key is not None else None
    server = grpc.aio.server(options=server_options(settings))
    server.add_generic_rpc_handlers((OpenInferenceService(models, metrics, budget, api_key).handler(),))
    server.add_insecure_port(address(settings.host, settings.grpc_port))
    await server.start()
    try:
        yield server
    finally:
        await server.stop(settings.drain_s)
