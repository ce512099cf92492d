"""Route tables: each protocol lists its routes in one table; `install` adds them to the app."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from fastapi import FastAPI
from fastapi.routing import APIRoute
from pydantic import BaseModel
from starlette.requests import Request
from starlette.types import Receive, Scope, Send

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


@dataclass(frozen=True)
class Route:
    method: str
    path: str
    endpoint: Callable[..., Any]
    summary: str
    options: dict[str, Any] = field(default_factory=dict)
    direct: bool = False  # endpoint(request) -> Response, served by DirectRoute


class DirectRoute(APIRoute):
    """A route whose endpoint takes the Request and returns a Response itself.

    OpenAPI documents it like any other (from `openapi_extra`), but a request skips FastAPI's
    per-request machinery (dependency solving, two exit stacks, a second exception wrapper): on
    the predict routes that cost more than running a small model. Exceptions go up to the app's
    ExceptionMiddleware, so errors are mapped to status codes in the one place as before.
    """

    def __init__(self, path: str, endpoint: Callable[..., Any], **kwargs: Any) -> None:
        super().__init__(path, endpoint, **kwargs)

        async def app(scope: Scope, receive: Receive, send: Send) -> None:
            response = await endpoint(Request(scope, receive, send))
            await response(scope, receive, send)

        self.app = app


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
