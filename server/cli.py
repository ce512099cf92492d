"""`gloro-serve`: serve (the default) and, delegated lazily to the models package, train/certify/export.

Flags mirror `ServerSettings` field by field; each is also a GLORO_* environment variable. argv and
the environment are read here and nowhere else.
"""

from __future__ import annotations

import argparse
import functools
import gc
import logging
import signal
import sys
from collections.abc import Sequence
from types import FrameType
from typing import TYPE_CHECKING, Any

from pydantic import ValidationError

from server.backends.base import BackendError
from server.errors import RepositoryError
from server.settings import ServerSettings

if TYPE_CHECKING:  # only a type here: importing the data plane waits until serve() needs it
    from server.app import GloroApp

PROG = "gloro-serve"
DELEGATED = ("train", "certify", "export")
TRAIN_HINT = "pip install 'gloro-serve[train]'"


class CliError(Exception):
    """A bad flag or value: one line on stderr, exit 2."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> Any:  # argparse would print usage and exit itself
        raise CliError(message)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog=f"{PROG} serve",
        description="Serve GloRo models: class, certificate and radius from one forward pass. "
        f"Other commands: {', '.join(DELEGATED)} (need {TRAIN_HINT}).",
    )
    for name, field in ServerSettings.model_fields.items():
        flag = "--" + name.replace("_", "-")
        help_text = f"{field.description} [env GLORO_{name.upper()}]"
        if field.annotation is bool:
            parser.add_argument(flag, dest=name, action=argparse.BooleanOptionalAction,
                                default=argparse.SUPPRESS, help=help_text)
        else:
            parser.add_argument(flag, dest=name, default=argparse.SUPPRESS, metavar=name.upper(),
                                help=help_text)
    return parser


def _describe(exc: ValidationError, from_flags: set[str]) -> str:
    parts = []
    for err in exc.errors():
        if not err["loc"]:  # a check across settings names them itself
            parts.append(str(err["msg"]).removeprefix("Value error, "))
            continue
        name = str(err["loc"][0])
        where = "--" + name.replace("_", "-") if name in from_flags else f"GLORO_{name.upper()}"
        parts.append(f"{where}: {err['msg']} (got {str(err.get('input'))[:60]!r})")
    return "; ".join(parts)


def parse_settings(argv: Sequence[str]) -> ServerSettings:
    values = vars(build_parser().parse_args(list(argv)))
    try:
        return ServerSettings(**values)
    except ValidationError as exc:
        raise CliError(_describe(exc, set(values))) from None


class DrainingServer:
    """uvicorn's Server, except that SIGTERM means: drain, then exit 0 (uvicorn re-raises it)."""

    def __init__(self, config: Any) -> None:
        import uvicorn

        class _Server(uvicorn.Server):
            def handle_exit(self, sig: int, frame: FrameType | None) -> None:
                if sig == signal.SIGTERM:
                    self.should_exit = True
                else:
                    super().handle_exit(sig, frame)

        self.server = _Server(config)

    def run(self) -> bool:
        self.server.run()
        return self.server.started


def loaded_app(settings: ServerSettings, backends: Any = None) -> GloroApp:
    """The app with its models loaded before uvicorn starts (in this process or in a worker), so
    that a model that cannot load is a one-line RepositoryError, not uvicorn's startup traceback;
    the lifespan then finds them loaded."""
    from server.app import create_app

    app = create_app(settings, backends=backends)
    try:
        app.state.models.load_all()
    except BackendError as exc:
        app.state.models.stop_all(0.0)
        raise RepositoryError(str(exc)) from None
    return app


def configure_process(settings: ServerSettings) -> None:
    """What each serving process sets for itself: process-wide, so here and not in create_app
    (the GIL switch interval: docs/benchmarks.md, "GIL hand-over")."""
    sys.setswitchinterval(settings.switch_interval_ms / 1000.0)
    logging.basicConfig(level=settings.log_level.upper(), format="%(levelname)s:     %(name)s: %(message)s")


def settle_heap(settings: ServerSettings) -> None:
    """Once the app and its models are built, in each serving process: what lives as long as the
    process (modules, the app, the models) leaves the collector's generations, so full collections
    stop walking it, and the youngest generation is collected every `gc_threshold` allocations,
    by when most of a request's objects are freed already (docs/benchmarks.md, item 13)."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(settings.gc_threshold, *gc.get_threshold()[1:])


def uvicorn_options(settings: ServerSettings) -> dict[str, Any]:
    from server.http_protocol import ServingHttpProtocol

    return {
        "http": functools.partial(ServingHttpProtocol, read_timeout_s=settings.read_timeout_s),
        "host": settings.host,
        "port": settings.port,
        "log_level": settings.log_level,
        "access_log": settings.access_log,
        "timeout_graceful_shutdown": settings.drain_s,
        "server_header": False,
        "ws": "none",  # no WebSocket routes: an Upgrade request is served as the plain HTTP it also is
    }


def check_grpc_port(settings: ServerSettings) -> None:
    if settings.grpc_port is None:
        return
    from server.grpc_v2.endpoint import why_unusable

    reason = why_unusable(settings.host, settings.grpc_port)
    if reason is not None:
        raise CliError(f"--grpc-port {settings.grpc_port}: cannot listen on {settings.host}:{settings.grpc_port} "
                       f"({reason})")


def serve(settings: ServerSettings, backends: Any = None) -> int:
    """Run the server until SIGINT/SIGTERM; `backends` replaces the configured backend factory
    (in one process only: worker processes build the configured one)."""
    import uvicorn

    if settings.workers > 1 and backends is not None:
        raise ValueError("a replacement backend factory serves one process; worker processes build their own")
    configure_process(settings)
    check_grpc_port(settings)
    if settings.workers > 1:
        from server.workers import serve_workers

        return serve_workers(settings)
    app = loaded_app(settings, backends)
    settle_heap(settings)
    config = uvicorn.Config(app, **uvicorn_options(settings))
    return 0 if DrainingServer(config).run() else 3


def delegate(argv: list[str]) -> int:
    try:
        from models.cli import main as models_main
    except ImportError as exc:
        print(f"{PROG}: error: '{argv[0]}' needs torch and the models package ({exc}); "
              f"install them with: {TRAIN_HINT}", file=sys.stderr)
        return 2
    return models_main(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if args and args[0] in DELEGATED:
        return delegate(args)
    if args and args[0] == "serve":
        args = args[1:]
    try:
        settings = parse_settings(args)
        return serve(settings)
    except CliError as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 2
    except RepositoryError as exc:
        print(f"{PROG}: error: cannot serve: {exc}", file=sys.stderr)
        return 2
    except SystemExit as exc:  # --help
        return int(exc.code or 0)
