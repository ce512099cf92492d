"""Route tables: each protocol lists its routes in one table; `install` adds them to the app."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from fastapi import FastAPI
from fastapi.routing import APIRoute
from pydantic import BaseModel
from starlette.requests import ClientDisconnect, Request
from starlette.routing import Match
from starlette.types import ASGIApp, Receive, Scope, Send

from server.errors import handle_error
from server.headers import scope_header
from server.wire_v1 import ErrorBody

ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorBody, "description": text}
    for code, text in {
        400: "malformed request",
        401: "API key missing or wrong",
        404: "unknown model or version",
        413: "body too large",
        415: "unsupported content type",
        422: "input the model cannot take (size, range, eps...)",
        500: "inference failed for this request's batch",
        503: "queue full, not ready or shutting down (see Retry-After)",
        504: "not answered within the request timeout",
    }.items()
}


def inline_schema(model: type[BaseModel]) -> dict[str, Any]:
    """A model's JSON schema with its $defs inlined, for use inside an OpenAPI requestBody."""
    schema = model.model_json_schema()
    defs = schema.pop("$defs", {})

    def resolve(node: Any) -> Any:
        if isinstance(node, dict):
            ref = node.get("$ref", "")
            if ref.startswith("#/$defs/"):
                return resolve(defs[ref.removeprefix("#/$defs/")])
            return {k: resolve(v) for k, v in node.items()}
        if isinstance(node, list):
            return [resolve(v) for v in node]
        return node

    return resolve(schema)


def path_parameter(name: str) -> dict[str, Any]:
    """OpenAPI for a string path parameter: direct routes document theirs in `openapi_extra`."""
    return {"name": name, "in": "path", "required": True, "schema": {"type": "string"}}


@dataclass(frozen=True)
class Route:
    method: str
    path: str
    endpoint: Callable[..., Any]
    summary: str
    options: dict[str, Any] = field(default_factory=dict)
    direct: bool = False  # endpoint(request) -> Response, served by DirectRoute


def header(request: Request, name: str) -> str | None:
    """What `request.headers.get(name)` returns (`name` in lower case), read from the scope."""
    value = scope_header(request.scope, name.encode("latin-1"))
    return None if value is None else value.decode("latin-1")


async def read_body(request: Request) -> bytes:
    """The whole body, read from the ASGI channel as it comes: what `await request.body()` returns,
    without Starlette's stream generator in between (a direct route reads its body once)."""
    chunks = []
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            raise ClientDisconnect()
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            return chunks[0] if len(chunks) == 1 else b"".join(chunks)


class DirectRoute(APIRoute):
    """A route whose endpoint takes the Request and returns a Response itself.

    OpenAPI documents it like any other (from `openapi_extra`), but a request skips FastAPI's
    per-request machinery (dependency solving, two exit stacks, a second exception wrapper): on
    the predict routes that cost more than running a small model. It answers its own errors
    with the app's handlers (`server.errors.HANDLERS`), so `DirectDispatch` can serve it.
    """

    def __init__(self, path: str, endpoint: Callable[..., Any], **kwargs: Any) -> None:
        super().__init__(path, endpoint, **kwargs)

        async def app(scope: Scope, receive: Receive, send: Send) -> None:
            request = Request(scope, receive, send)
            try:
                response = await endpoint(request)
            except Exception as exc:
                response = await handle_error(request, exc)
            await response(scope, receive, send)

        self.app = app


class DirectDispatch:
    """A request for a direct route goes to it from here; anything else, including a direct
    route's path with another method, goes on to `app` (the FastAPI application)."""

    def __init__(self, app: ASGIApp, routes: Sequence[DirectRoute]) -> None:
        self.app = app
        self.routes = tuple(routes)
        # A route without path parameters (/v1/predict) is found by its path and method in one
        # lookup, without each route's regex or FastAPI's route context (docs/benchmarks.md, item 14).
        self.exact = {(r.path, method): r for r in self.routes if not r.param_convertors for method in r.methods or ()}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            route = self.exact.get((scope["path"], scope["method"])) if not scope.get("root_path") else None
            if route is not None:  # what matching it would add to the scope, and its handler
                scope["endpoint"], scope["path_params"], scope["route"] = route.endpoint, {}, route
                await route.app(scope, receive, send)
                return
            for route in self.routes:
                match, child_scope = route.matches(scope)
                if match is Match.FULL:
                    scope.update(child_scope)
                    await route.handle(scope, receive, send)
                    return
        await self.app(scope, receive, send)


def direct_routes(app: FastAPI) -> list[DirectRoute]:
    return [r for r in app.router.routes if isinstance(r, DirectRoute)]


def install(app: FastAPI, routes: Iterable[Route], tag: str) -> None:
    for route in routes:
        app.router.add_api_route(
            route.path,
            route.endpoint,
            methods=[route.method],
            summary=route.summary,
            tags=[tag],
            responses=ERRORS,
            route_class_override=DirectRoute if route.direct else None,
            **route.options,
        )
