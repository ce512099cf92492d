"""`--workers N`: N server processes on one port, supervised by uvicorn.

Each worker is the whole server (its own event loop, models and batchers), started by uvicorn's
`Multiprocess` supervisor, which restarts a worker that dies and, on SIGTERM or SIGINT, passes the
signal on so each worker drains as a single server does. On SIGHUP it replaces the workers one at
a time, each new one serving before the old one drains: a new model version in the repository is
then served with no gap (a replacement that cannot load, or not within uvicorn's 5 s health-check
timeout, keeps the old worker; the same timeout bounds the supervisor's ping of a live worker,
which is why it is not raised here). The workers share one listening socket, or with
--reuse-port each listens on a socket of its own and the kernel spreads connections over them
(`OwnListener`); a model's queue and batches are per worker.

Metrics: prometheus_client's multiprocess mode. Every worker writes its series to files in a
directory made for this run (PROMETHEUS_MULTIPROC_DIR, which must be set before a worker imports
prometheus_client: spawned workers inherit it), and /metrics, whichever worker answers it, adds
them up (`server.metrics.Metrics.exposition`).
"""

from __future__ import annotations

import functools
import gc
import logging
import os
import socket
import sys
import tempfile

import uvicorn
from uvicorn.config import STARTUP_FAILURE
from uvicorn.supervisors import Multiprocess

from server.app import GloroApp
from server.cli import configure_process, loaded_app, settle_heap, uvicorn_options
from server.errors import RepositoryError
from server.metrics import MULTIPROCESS_DIR_VARIABLE
from server.settings import ServerSettings

log = logging.getLogger("server.workers")


def worker_app(settings: ServerSettings) -> GloroApp:
    """The app factory each worker process calls: the app, its models loaded (before the worker
    takes connections, as a single process loads them before uvicorn starts).

    A repository that the supervisor's check accepted can change before a worker (a replacement
    for one that died, or a SIGHUP's) reads it. Such a worker says why in one line and exits
    with uvicorn's STARTUP_FAILURE: a SIGHUP replacement is then given up and the old workers
    kept; a dead worker that cannot be replaced stops the server (exit 3), since every restart
    would fail alike, instead of a restart loop of tracebacks (a repository error) or the
    lifespan's traceback (a model that cannot load).
    """
    configure_process(settings)
    try:
        app = loaded_app(settings)
    except RepositoryError as exc:
        log.error("worker %d cannot start: %s", os.getpid(), exc)
        sys.exit(STARTUP_FAILURE)
    settle_heap(settings)
    return app


def check_servable(settings: ServerSettings) -> None:
    """Load every model once in the supervisor and let it go again: a repository that cannot be
    served is then the CLI's one-line refusal (RepositoryError), not a worker failing at startup.
    On the CPU: a CUDA context made here would hold GPU memory for the supervisor's lifetime."""
    models = loaded_app(settings.model_copy(update={"device": "cpu"})).state.models
    models.stop_all(0.0)
    del models
    gc.collect()  # the app's reference cycles would keep the sessions' memory until much later


def _family(host: str) -> socket.AddressFamily:
    return socket.AF_INET6 if ":" in host else socket.AF_INET


def reuse_port_socket(host: str, port: int) -> socket.socket:
    """A TCP socket bound to host:port with SO_REUSEPORT (and SO_REUSEADDR, as uvicorn binds)."""
    sock = socket.socket(_family(host), socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    try:
        sock.bind((host, port))
    except OSError:
        sock.close()
        raise
    return sock


def _bind_in_worker(host: str, port: int) -> socket.socket:
    try:
        return reuse_port_socket(host, port)
    except OSError as exc:  # uvicorn's logging is not set up yet in the new process
        print(f"worker {os.getpid()} cannot listen on {host}:{port}: {exc}", file=sys.stderr, flush=True)
        sys.exit(STARTUP_FAILURE)


class OwnListener:
    """Stands in for the listening socket that uvicorn's supervisor hands every worker it starts.

    Sent to a new worker (spawn pickles it), it becomes there a listening socket of that worker's
    own, bound to the same port with SO_REUSEPORT. The kernel then spreads new connections over
    the workers' sockets by a hash of each connection's addresses. With one socket shared by all,
    whichever worker wins the race to accept() takes most connections: with keep-alive clients it
    keeps them (64 wrk connections measured split 5/59, 61/3 and 64/0 over two workers, which
    then served at the speed of one; docs/benchmarks.md, item 12).
    """

    def __init__(self, host: str, port: int) -> None:
        self.host = host
        self.port = port

    def __reduce__(self) -> tuple:
        return _bind_in_worker, (self.host, self.port)


def reuse_port_spreads_connections() -> bool:
    """Linux, and a kernel (or sandbox) that takes SO_REUSEPORT: elsewhere the option is missing,
    refused, or lets every socket bind without spreading connections over them."""
    if not sys.platform.startswith("linux") or not hasattr(socket, "SO_REUSEPORT"):
        return False
    with socket.socket() as probe:
        try:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        except OSError:
            return False
    return True


def worker_listeners(settings: ServerSettings, config: uvicorn.Config) -> tuple[socket.socket, list]:
    """The socket the supervisor holds, and what it hands each worker it starts.

    With --reuse-port, on Linux, every worker listens on a socket of its own (`OwnListener`) and
    the supervisor holds
    one bound to the port (never listened on, so it takes no connection): the port stays taken
    while workers restart, and a port in use is an OSError here, before any worker starts. Two
    servers of the same user asking for SO_REUSEPORT on one port would share it (the kernel
    allows that); anything else holding the port refuses it. Where SO_REUSEPORT does not spread
    connections, or without --reuse-port, all workers share the one socket, as uvicorn does: a
    SIGHUP then never resets a connection, where a retiring worker's own socket drops those still
    waiting in its accept queue when it closes (unless net.ipv4.tcp_migrate_req is set).
    """
    if not (settings.reuse_port and reuse_port_spreads_connections()):
        shared = config.bind_socket()
        return shared, [shared]
    held = reuse_port_socket(settings.host, settings.port)
    port = held.getsockname()[1]  # the port chosen, if 0 was asked for
    shown = f"[{settings.host}]" if _family(settings.host) == socket.AF_INET6 else settings.host
    log.info("listening on http://%s:%d with %d workers, each on its own socket (SO_REUSEPORT)",
             shown, port, settings.workers)
    return held, [OwnListener(settings.host, port)]


def serve_workers(settings: ServerSettings) -> int:
    """Run `settings.workers` workers until SIGINT/SIGTERM: 0 after a clean stop, 3 if a worker
    could not start (uvicorn then stops them all)."""
    check_servable(settings)
    config = uvicorn.Config(
        functools.partial(worker_app, settings), factory=True, workers=settings.workers, **uvicorn_options(settings)
    )
    try:
        held, listeners = worker_listeners(settings, config)
    except OSError as exc:
        log.error("cannot listen on %s:%d: %s", settings.host, settings.port, exc)
        return STARTUP_FAILURE
    supervisor = Multiprocess(config, sockets=listeners)
    previous = os.environ.get(MULTIPROCESS_DIR_VARIABLE)
    with tempfile.TemporaryDirectory(prefix="gloro-metrics-") as metrics_dir:
        os.environ[MULTIPROCESS_DIR_VARIABLE] = metrics_dir  # spawned workers inherit it
        try:
            supervisor.run()
        finally:
            if previous is None:
                del os.environ[MULTIPROCESS_DIR_VARIABLE]
            else:
                os.environ[MULTIPROCESS_DIR_VARIABLE] = previous
            held.close()
    return 3 if any(p.exitcode == STARTUP_FAILURE for p in supervisor.processes) else 0
