"""Pure ASGI middleware (no BaseHTTPMiddleware: it costs a task per request): request metrics,
API key, body-size limit, compressed bodies."""

from __future__ import annotations

import hmac
import time
import zlib
from collections.abc import Iterable
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from server.budget import Hold, InFlightBytes
from server.errors import BadRequest, PayloadTooLarge, Unauthorized, UnsupportedMediaType, error_response
from server.headers import scope_header
from server.metrics import Metrics

# Only the APIs need the key; probes, metrics, docs and the demo page stay open.
PRIVATE_PREFIXES = ("/v1/", "/v2")
PUBLIC_PATHS = frozenset({"/v2/health/live", "/v2/health/ready"})


class RequestMetrics:
    """gloro_requests_total and gloro_request_duration_seconds, by model, route template, status."""

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500

        async def send_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        finally:
            route = scope.get("route")
            template = getattr(route, "path", None) or "<other>"
            self.metrics.record_request(
                scope.get("gloro.model", ""), template, status, time.perf_counter() - started
            )


API_KEY_HELP = "send it as X-API-Key or Authorization: Bearer <key>"


def carries_key(headers: Iterable[tuple[bytes, bytes]], key: bytes) -> bool:
    """Whether X-API-Key, or Authorization: Bearer, among `headers` (names lower-case: HTTP/1.1's
    as uvicorn gives them, gRPC's metadata) is `key`."""
    for name, value in headers:
        if name == b"x-api-key":
            candidate = value
        elif name == b"authorization" and value[:7].lower() == b"bearer ":
            candidate = value[7:].strip()
        else:
            continue
        if hmac.compare_digest(candidate, key):
            return True
    return False


class ApiKey:
    """401 unless X-API-Key or Authorization: Bearer carries the key (public paths excepted)."""

    def __init__(self, app: ASGIApp, key: str) -> None:
        self.app = app
        self.key = key.encode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path", "")
        if (
            scope["type"] != "http"
            or path in PUBLIC_PATHS
            or not path.startswith(PRIVATE_PREFIXES)
            or carries_key(scope["headers"], self.key)
        ):
            await self.app(scope, receive, send)
            return
        response = error_response(401, f"missing or wrong API key: {API_KEY_HELP}", Unauthorized.headers)
        await response(scope, receive, send)


class BodyLimit:
    """413 for a declared Content-Length over the limit, and for a streamed body that grows past it;
    503 (Retry-After) for a body whose bytes would take what the process holds of requests past
    `--max-bytes-in-flight` (`server.budget`).

    The per-request limit alone bounds one request; many at once (a body that stops halfway holds
    its bytes until --read-timeout-s) could still take all the memory there is. Counted as they
    arrive, so a request pays for the bytes it has sent, not for a Content-Length it declares.
    The request's `Hold` is in the scope as "gloro.hold" for the routes to add what they decode;
    all of it is given back when the request ends.
    """

    def __init__(self, app: ASGIApp, max_bytes: int, budget: InFlightBytes) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.budget = budget

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = scope_header(scope, b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            await self._refuse(int(declared))(scope, receive, send)
            return
        hold = scope["gloro.hold"] = Hold(self.budget)
        body = 0

        async def limited_receive() -> Message:
            nonlocal body
            message = await receive()
            if message["type"] == "http.request" and (size := len(message.get("body", b""))):
                if body + size > self.max_bytes:
                    raise PayloadTooLarge(self._message(body + size))
                hold.take(size, "body bytes")
                body += size
            return message

        try:
            await self.app(scope, limited_receive, send)
        finally:
            hold.release()

    def _message(self, size: int) -> str:
        return f"body of {size}+ bytes exceeds the limit of {self.max_bytes} bytes (--max-body-bytes)"

    def _refuse(self, size: int) -> Any:
        return error_response(413, self._message(size))


# Content-Encodings a request body may come in, as Triton's HTTP endpoint takes them (tritonclient's
# request_compression_algorithm): zlib's window bits for each. "deflate" is the zlib format (RFC 9110).
CODINGS = {"gzip": 16 + zlib.MAX_WBITS, "deflate": zlib.MAX_WBITS}


class ContentDecoding:
    """A body sent with Content-Encoding gzip or deflate reaches the routes decompressed, as it
    arrives; another coding is a 415 when the route reads the body (a GET never does).

    Decompressed, a body may take at most `max_bytes` (413 past it), so a small compressed body
    cannot grow without end, and each decompressed byte counts in the request's `Hold` (inside
    `BodyLimit`, which counts the bytes as sent). A stream that is corrupt, ends early or has
    bytes after its end is a 400.
    """

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        value = scope_header(scope, b"content-encoding") if scope["type"] == "http" else None
        coding = None if value is None else value.decode("latin-1").strip().lower()
        if coding is None or coding == "identity":
            await self.app(scope, receive, send)
            return
        await self.app(scope, self._decoding(receive, coding, scope["gloro.hold"]), send)

    def _decoding(self, receive: Receive, coding: str, hold: Hold) -> Receive:
        wbits = CODINGS.get(coding)
        inflater = zlib.decompressobj(wbits) if wbits is not None else None
        size = 0

        async def decoded_receive() -> Message:
            nonlocal size
            message = await receive()
            if message["type"] != "http.request":
                return message
            if inflater is None:
                raise UnsupportedMediaType(
                    f"Content-Encoding {coding[:40]!r} is not accepted; send the body as is, gzip or deflate"
                )
            data = message.get("body", b"")
            if inflater.eof and data:
                raise BadRequest(f"bytes after the end of the {coding} body")
            try:  # at most one byte past the limit: enough to know it is passed
                body = inflater.decompress(data, self.max_bytes - size + 1)
            except zlib.error as exc:
                raise BadRequest(f"the body is not valid {coding} ({exc})") from None
            size += len(body)
            if size > self.max_bytes:
                raise PayloadTooLarge(
                    f"body decompressed exceeds the limit of {self.max_bytes} bytes (--max-body-bytes)"
                )
            if inflater.unused_data:
                raise BadRequest(f"bytes after the end of the {coding} body")
            if not message.get("more_body", False) and not inflater.eof:
                raise BadRequest(f"the {coding} body ends before its stream does (truncated)")
            hold.take(len(body), "decompressed body bytes")
            return {**message, "body": body}

        return decoded_receive
