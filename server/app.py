"""The application factory: repository -> backends -> batchers -> routes. Nothing at import time."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from fastapi import FastAPI
from prometheus_client import CollectorRegistry
from starlette.responses import HTMLResponse, Response
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Receive, Scope, Send

from server import package_version
from server.backends import BackendError, BackendFactory, backend_factory
from server.batcher import BatchConfig
from server.budget import InFlightBytes
from server.errors import RepositoryError, install_error_handlers
from server.metrics import Metrics
from server.middleware import ApiKey, BodyLimit, ContentDecoding, RequestMetrics
from server.repository import ModelSpec, load_repository
from server.responses import FastJSONResponse
from server.routes import DirectDispatch, direct_routes, install
from server.routes.health import HealthAPI
from server.routes.v1 import ImageAPI
from server.routes.v2 import OpenInferenceAPI
from server.service import ModelService, Models
from server.settings import ServerSettings

log = logging.getLogger("server.app")

STATIC = Path(__file__).resolve().parent / "static"
STOP_TIMEOUT_S = 2.0


def choose_default(settings: ServerSettings, specs: dict[str, ModelSpec]) -> str:
    """The configured default model; when left unset and absent, the repository's first model."""
    if settings.default_model in specs:
        return settings.default_model
    if "default_model" in settings.model_fields_set:
        raise RepositoryError(
            f"default model {settings.default_model!r} is not in {settings.repository_path()} "
            f"(it holds: {', '.join(specs)})"
        )
    first = next(iter(specs))
    log.info("no model %s in the repository; the default model is %s", settings.default_model, first)
    return first


def batch_config(settings: ServerSettings) -> BatchConfig:
    return BatchConfig(
        max_batch_size=settings.max_batch_size,
        max_queue_delay=settings.max_delay_ms / 1000.0,
        queue_size=settings.max_queue,
        timeout=settings.request_timeout_s,
        instances=settings.instances,
    )


def build_models(settings: ServerSettings, factory: BackendFactory, metrics: Metrics) -> Models:
    """Validate the repository (manifests, sha256, paths) and pair each model with a backend."""
    specs = load_repository(settings.repository_path())
    default = choose_default(settings, specs)
    config = batch_config(settings)
    try:
        services = {name: ModelService(spec, factory(spec), config, metrics) for name, spec in specs.items()}
    except BackendError as exc:
        raise RepositoryError(str(exc)) from None
    return Models(services, default)


# Request headers a file is not sent in part for: Starlette answers a malformed or unsatisfiable
# Range in plain text, where every error of this server is JSON, and the demo's files are a few KB.
# A server may ignore Range (RFC 9110, 14.2) and send the whole file.
RANGE_HEADERS = (b"range", b"if-range")


class WholeStaticFiles(StaticFiles):
    """StaticFiles, each file sent whole whatever Range asks."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        headers = [(name, value) for name, value in scope["headers"] if name not in RANGE_HEADERS]
        await super().__call__({**scope, "headers": headers}, receive, send)


async def demo_page() -> Response:
    return HTMLResponse((STATIC / "index.html").read_bytes())  # whole, as WholeStaticFiles sends its files


async def index() -> Response:
    return FastJSONResponse({"name": "gloro-serve", "docs": "/docs", "models": "/v1/models"})


@asynccontextmanager
async def grpc_endpoint(settings: ServerSettings, models: Models, metrics: Metrics,
                        budget: InFlightBytes) -> AsyncIterator[None]:
    """The gRPC server of --grpc-port, on the app's event loop, while the app serves; with none set,
    nothing (and grpc is not imported)."""
    if settings.grpc_port is None:
        yield
        return
    from server.grpc_v2.endpoint import serving_grpc

    async with serving_grpc(settings, models, metrics, budget):
        yield


class GloroApp(FastAPI):
    """FastAPI, with the server's own ASGI middleware in front of FastAPI's per-request layers.

    `front` (request metrics, API key, body limit, then `DirectDispatch`) sees every HTTP request
    first, and sends a predict or infer request straight to its route: past FastAPI's telemetry
    check, Starlette's error and exception middleware and the router's scan, which cost about a
    tenth of the event loop's time a request (docs/benchmarks.md, item 10). Anything else reaches
    `through_fastapi`: FastAPI as usual. The lifespan always goes to FastAPI. So middleware that
    an embedding application adds with `add_middleware` sees only what reaches FastAPI.
    """

    front: ASGIApp | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self.front is None or scope["type"] != "http":
            await super().__call__(scope, receive, send)
            return
        if scope["method"] == "HEAD":
            # Answered as GET: FastAPI's GET routes do not take HEAD (Starlette's own routes do), and
            # uvicorn, whose scope still says HEAD, sends the answer's head without its body.
            scope = {**scope, "method": "GET"}
        scope["app"] = self
        await self.front(scope, receive, send)

    async def through_fastapi(self, scope: Scope, receive: Receive, send: Send) -> None:
        await super().__call__(scope, receive, send)


def front_middleware(app: GloroApp, settings: ServerSettings, metrics: Metrics, budget: InFlightBytes) -> ASGIApp:
    """Outermost first: metrics, then the API key (when one is set), the body limit, compressed
    bodies, dispatch."""
    dispatch = DirectDispatch(app.through_fastapi, direct_routes(app))
    inner: ASGIApp = BodyLimit(ContentDecoding(dispatch, settings.max_body_bytes), settings.max_body_bytes, budget)
    if settings.api_key is not None:
        inner = ApiKey(inner, settings.api_key.get_secret_value())
    return RequestMetrics(inner, metrics)


def create_app(
    settings: ServerSettings,
    *,
    backends: BackendFactory | None = None,
    registry: CollectorRegistry | None = None,
) -> GloroApp:
    """Build the server. Raises RepositoryError (one line) if the repository cannot be served.

    Models are loaded and warmed up in the lifespan (so /readyz says when they are); on shutdown
    the batchers finish their queues for up to `settings.drain_s` seconds.
    """
    metrics = Metrics(registry if registry is not None else CollectorRegistry())
    factory = backends or backend_factory(settings.backend, settings.device, settings.intra_op_threads(),
                                          cuda_wait=settings.cuda_wait, spin_us=settings.spin_us)
    models = build_models(settings, factory, metrics)
    budget = InFlightBytes(settings.max_bytes_in_flight)  # one count for HTTP and gRPC requests

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        await asyncio.to_thread(models.load_all)
        async with grpc_endpoint(settings, models, metrics, budget):
            yield
        # uvicorn has already drained the connections for up to drain_s; what is left is abandoned.
        await asyncio.to_thread(models.stop_all, min(STOP_TIMEOUT_S, settings.drain_s))
        metrics.close()

    app = GloroApp(
        title="gloro-serve",
        version=package_version(),
        summary="Certifiably robust (GloRo) image classification: class, certificate and radius",
        lifespan=lifespan,
    )
    app.state.models = models
    app.state.metrics = metrics
    install_error_handlers(app)
    install(app, ImageAPI(models).routes(), "image API")
    install(app, OpenInferenceAPI(models, metrics).routes(), "Open Inference Protocol v2")
    install(app, HealthAPI(models, metrics).routes(), "health")
    if (STATIC / "index.html").is_file():
        # The page at / only, its files under /static: a catch-all mount at / would answer
        # unknown routes itself (405 for POST) instead of the JSON 404 of every other route.
        app.mount("/static", WholeStaticFiles(directory=STATIC), name="static")
        app.add_api_route("/", demo_page, methods=["GET"], include_in_schema=False)
    else:
        app.add_api_route("/", index, methods=["GET"], include_in_schema=False)
    app.front = front_middleware(app, settings, metrics, budget)
    return app
