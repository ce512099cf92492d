"""`--workers N`: N server processes sharing one listening socket, supervised by uvicorn.

Each worker is the whole server (its own event loop, models and batchers), started by uvicorn's
`Multiprocess` supervisor, which restarts a worker that dies and, on SIGTERM or SIGINT, passes the
signal on so each worker drains as a single server does. On SIGHUP it replaces the workers one at
a time, each new one serving before the old one drains: a new model version in the repository is
then served with no gap (a replacement that cannot load, or not within uvicorn's 5 s health-check
timeout, keeps the old worker; the same timeout bounds the supervisor's ping of a live worker,
which is why it is not raised here). The kernel spreads connections over the workers, so a
model's queue and batches are per worker.

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
import sys
import tempfile

import uvicorn
from uvicorn.config import STARTUP_FAILURE
from uvicorn.supervisors import Multiprocess

from server.app import GloroApp
from server.cli import configure_process, loaded_app, uvicorn_options
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
        return loaded_app(settings)
    except RepositoryError as exc:
        log.error("worker %d cannot start: %s", os.getpid(), exc)
        sys.exit(STARTUP_FAILURE)


def check_servable(settings: ServerSettings) -> None:
    """Load every model once in the supervisor and let it go again: a repository that cannot be
    served is then the CLI's one-line refusal (RepositoryError), not a worker failing at startup.
    On the CPU: a CUDA context made here would hold GPU memory for the supervisor's lifetime."""
    models = loaded_app(settings.model_copy(update={"device": "cpu"})).state.models
    models.stop_all(0.0)
    del models
    gc.collect()  # the app's reference cycles would keep the sessions' memory until much later


def serve_workers(settings: ServerSettings) -> int:
    """Run `settings.workers` workers until SIGINT/SIGTERM: 0 after a clean stop, 3 if a worker
    could not start (uvicorn then stops them all)."""
    check_servable(settings)
    config = uvicorn.Config(
        functools.partial(worker_app, settings), factory=True, workers=settings.workers, **uvicorn_options(settings)
    )
    supervisor = Multiprocess(config, sockets=[config.bind_socket()])
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
    return 3 if any(p.exitcode == STARTUP_FAILURE for p in supervisor.processes) else 0
