"""The gRPC server of `--grpc-port`: grpc's asyncio server on the app's own event loop, beside
uvicorn, started and stopped by the app's lifespan (`server.app.grpc_endpoint`).

Under `--workers` every worker serves the port, each listening with SO_REUSEPORT (grpc's way to
share one) and the kernel spreading connections over them; one process listens alone, so that a
second server started on the same port fails instead of taking half its calls.
"""

from __future__ import annotations

import asyncio
import errno
import signal
import socket
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from types import FrameType

import grpc

from server.budget import InFlightBytes
from server.grpc_v2.health import HealthService
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


STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)  # the signals uvicorn drains on


@contextmanager
def on_stop_signal(begin: Callable[[], None]) -> Iterator[None]:
    """Call `begin` on the event loop as soon as a stop signal arrives, then let the handler that
    was there (uvicorn's) have it. uvicorn drains its HTTP connections before the lifespan ends;
    a gRPC server stopped only then would take new calls all through that drain and then drain
    for as long again. In the main thread only (where signal handlers live)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    loop = asyncio.get_running_loop()
    previous = {sig: signal.getsignal(sig) for sig in STOP_SIGNALS}

    def handler(sig: int, frame: FrameType | None) -> None:
        if not loop.is_closed():
            loop.call_soon_threadsafe(begin)
        before = previous[sig]
        if callable(before):
            before(sig, frame)
        elif before == signal.SIG_DFL:
            signal.signal(sig, signal.SIG_DFL)
            signal.raise_signal(sig)

    for sig in STOP_SIGNALS:
        signal.signal(sig, handler)
    try:
        yield
    finally:
        for sig, before in previous.items():
            if signal.getsignal(sig) is handler:
                signal.signal(sig, before)


@asynccontextmanager
async def serving_grpc(settings: ServerSettings, models: Models, metrics: Metrics,
                       budget: InFlightBytes) -> AsyncIterator[grpc.aio.Server]:
    """Serve `models` over gRPC until the block ends or a stop signal arrives, whichever is first;
    then new calls are refused and those in progress may finish for up to --drain-s, as uvicorn
    drains HTTP at the same time."""
    assert settings.grpc_port is not None
    api_key = settings.api_key.get_secret_value() if settings.api_key is not None else None
    server = grpc.aio.server(options=server_options(settings))
    draining = asyncio.Event()  # set as the stop begins: streams end, health says NOT_SERVING
    services = (OpenInferenceService(models, metrics, budget, api_key, draining),
                HealthService(models, metrics, draining))
    server.add_generic_rpc_handlers(tuple(service.handler() for service in services))
    server.add_insecure_port(address(settings.host, settings.grpc_port))
    await server.start()
    stopping: asyncio.Task | None = None

    def begin_stop() -> None:
        nonlocal stopping
        if stopping is None:
            draining.set()
            stopping = asyncio.ensure_future(server.stop(settings.drain_s))

    try:
        with on_stop_signal(begin_stop):
            yield server
    finally:
        begin_stop()
        assert stopping is not None
        await stopping
