"""Domain errors and the one place that maps them to HTTP status codes and JSON bodies.

Every error a client sees is `{"error": "<what is wrong>"}` (the Open Inference Protocol's error
body), whichever route or layer raised it.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Mapping
from typing import TypeVar

import orjson
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect
from starlette.responses import Response

log = logging.getLogger("server.errors")

RETRY_AFTER_S = "1"


class GloroError(Exception):
    """An error with an HTTP status; its message is shown to the client."""

    status = 500
    headers: Mapping[str, str] = {}


class BadRequest(GloroError):
    status = 400


class Unauthorized(GloroError):
    status = 401
    headers = {"WWW-Authenticate": "Bearer"}


class NotFound(GloroError):
    status = 404


class PayloadTooLarge(GloroError):
    status = 413


class UnsupportedMediaType(GloroError):
    status = 415


class InvalidInput(GloroError):
    """Well-formed request whose content the model cannot take (size, range, eps...)."""

    status = 422


class Unavailable(GloroError):
    """Temporarily unable to serve: full queue, not ready, shutting down."""

    status = 503
    headers = {"Retry-After": RETRY_AFTER_S}


class QueueFull(Unavailable):
    pass


class RequestTimeout(GloroError):
    status = 504


class InferenceFailed(GloroError):
    status = 500


class RepositoryError(Exception):
    """The model repository cannot be served; raised at start, never per request."""


def error_body(message: str) -> bytes:
    """Every error's JSON body, in the app and below it (server/http_protocol.py)."""
    return orjson.dumps({"error": message})


def error_response(status: int, message: str, headers: Mapping[str, str] | None = None) -> Response:
    return Response(
        error_body(message),
        status_code=status,
        media_type="application/json",
        headers=dict(headers) if headers else None,
    )


async def _gloro_error(_: Request, exc: Exception) -> Response:
    assert isinstance(exc, GloroError)
    return error_response(exc.status, str(exc), exc.headers)


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, StarletteHTTPException)
    message = exc.detail if isinstance(exc.detail, str) else str(exc.detail)
    if exc.status_code == 404 and message == "Not Found":
        message = f"no route {request.method} {request.url.path}"
    elif exc.status_code == 405:
        message = f"method {request.method} not allowed on {request.url.path}"
    return error_response(exc.status_code, message, exc.headers)


async def _validation_error(_: Request, exc: Exception) -> Response:
    assert isinstance(exc, RequestValidationError)
    return error_response(422, describe_validation_errors(exc.errors()))


async def _client_gone(_: Request, exc: Exception) -> Response:
    # Nobody will read this answer; it only keeps the disconnect out of the 500s.
    return error_response(400, "client disconnected before sending the whole body")


async def _unexpected(request: Request, exc: Exception) -> Response:
    log.exception("unexpected error on %s %s", request.method, request.url.path)
    return error_response(500, f"internal error: {type(exc).__name__}")


def describe_validation_errors(errors: list | tuple, limit: int = 3) -> str:
    """Pydantic's error list as one short line: 'inputs.0.shape: Field required; ...'."""
    parts = []
    for err in list(errors)[:limit]:
        where = ".".join(str(p) for p in err.get("loc", ()) if p != "body")
        parts.append(f"{where}: {err.get('msg')}" if where else str(err.get("msg")))
    more = len(errors) - limit
    return "; ".join(parts) + (f" (and {more} more)" if more > 0 else "")


Wire = TypeVar("Wire", bound=BaseModel)


def parse_wire(model: type[Wire], data: bytes, what: str, invalid: Callable[[str], GloroError]) -> Wire:
    """`data` (JSON) as `model`: BadRequest naming the JSON error if it is not JSON at all, else
    `invalid(one line naming the fields at fault)` if it does not fit the model."""
    try:
        return model.model_validate_json(data)
    except ValidationError as exc:
        errors = exc.errors()
        if errors and errors[0]["type"] == "json_invalid":
            raise BadRequest(f"{what} is not valid JSON: {errors[0]['msg']}") from None
        raise invalid(describe_validation_errors(errors)) from None


Handler = Callable[[Request, Exception], Awaitable[Response]]

# Exception type -> its answer, for the app's exception middleware and for the direct routes.
HANDLERS: dict[type[Exception], Handler] = {
    GloroError: _gloro_error,
    StarletteHTTPException: _http_error,
    RequestValidationError: _validation_error,
    ClientDisconnect: _client_gone,
    Exception: _unexpected,
}


async def handle_error(request: Request, exc: Exception) -> Response:
    """The answer for `exc`: the handler of its nearest class in HANDLERS (as Starlette looks up)."""
    handler = next(HANDLERS[cls] for cls in type(exc).__mro__ if cls in HANDLERS)
    return await handler(request, exc)


def install_error_handlers(app: FastAPI) -> None:
    for exc_class, handler in HANDLERS.items():
        app.add_exception_handler(exc_class, handler)
