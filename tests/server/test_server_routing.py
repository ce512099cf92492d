"""Direct routes: the predict and infer routes are served by `DirectDispatch` ahead of the router,
answer their own errors with the app's handlers, and everything else still reaches the router."""

from __future__ import annotations

import asyncio

import pytest
from fastapi import FastAPI
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response

from server.errors import NotFound
from server.routes import DirectDispatch, Route, direct_routes, install, read_body


async def call(app, method: str, path: str) -> tuple[int, bytes]:
    """One request through an ASGI app, in process."""
    scope = {"type": "http", "method": method, "path": path, "raw_path": path.encode(), "root_path": "",
             "query_string": b"", "headers": [], "http_version": "1.1", "scheme": "http"}
    answer: dict = {"body": b""}

    async def receive() -> dict:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict) -> None:
        if message["type"] == "http.response.start":
            answer["status"] = message["status"]
        else:
            answer["body"] += message.get("body", b"")

    await app(scope, receive, send)
    return answer["status"], answer["body"]


class Inner:
    """Stands for the router and the middleware inside DirectDispatch: records what reaches it."""

    def __init__(self) -> None:
        self.paths: list[tuple[str, str]] = []

    async def __call__(self, scope, receive, send) -> None:
        self.paths.append((scope["method"], scope["path"]))
        await Response(status_code=299)(scope, receive, send)


@pytest.fixture
def dispatch() -> tuple[DirectDispatch, Inner]:
    async def predict(request: Request) -> Response:
        name = request.path_params["name"]
        if name == "missing":
            raise NotFound(f"model {name!r} is not served")
        if name == "broken":
            raise RuntimeError("bug")
        return JSONResponse({"model": name, "route": request.scope["route"].path})

    async def describe(name: str) -> Response:
        return JSONResponse({"model": name})

    async def predict_default(request: Request) -> Response:
        scope = request.scope
        return JSONResponse({"route": scope["route"].path, "endpoint": scope["endpoint"] is predict_default,
                             "path_params": request.path_params})

    app = FastAPI()
    install(app, [Route("POST", "/m/{name}/predict", predict, "predict", direct=True),
                  Route("POST", "/predict", predict_default, "predict with the default", direct=True),
                  Route("GET", "/m/{name}", describe, "describe")], "test")
    inner = Inner()
    return DirectDispatch(inner, direct_routes(app)), inner


def test_only_the_direct_routes_are_dispatched(dispatch) -> None:
    app, inner = dispatch
    assert [r.path for r in app.routes] == ["/m/{name}/predict", "/predict"]


def test_a_direct_route_is_served_without_reaching_the_router(dispatch) -> None:
    app, inner = dispatch
    status, body = asyncio.run(call(app, "POST", "/m/digits/predict"))
    assert status == 200 and body == b'{"model":"digits","route":"/m/{name}/predict"}'
    assert inner.paths == []


def test_other_methods_paths_and_routes_go_on_to_the_router(dispatch) -> None:
    app, inner = dispatch
    others = [("GET", "/m/digits/predict"), ("POST", "/m/a/b/predict"), ("GET", "/m/digits"), ("POST", "/x"),
              ("GET", "/predict"), ("POST", "/predict/")]
    for method, path in others:
        assert asyncio.run(call(app, method, path))[0] == 299
    assert inner.paths == others


def test_a_direct_route_without_parameters_gets_the_scope_matching_would_give(dispatch) -> None:
    """Found by its path and method in one lookup, it still sees its route, endpoint and (no) path
    parameters, as FastAPI's matching sets them (the route's path labels the request metrics)."""
    app, inner = dispatch
    status, body = asyncio.run(call(app, "POST", "/predict"))
    assert status == 200 and body == b'{"route":"/predict","endpoint":true,"path_params":{}}'
    assert inner.paths == []


def test_a_direct_route_answers_its_errors_with_the_app_handlers(dispatch) -> None:
    app, _ = dispatch
    assert asyncio.run(call(app, "POST", "/m/missing/predict")) == (404, b'{"error":"model \'missing\' is not served"}')
    assert asyncio.run(call(app, "POST", "/m/broken/predict")) == (500, b'{"error":"internal error: RuntimeError"}')


def body_of(messages: list[dict]) -> bytes:
    """read_body over an ASGI channel that delivers `messages` in turn."""
    pending = list(messages)

    async def receive() -> dict:
        return pending.pop(0)

    return asyncio.run(read_body(Request({"type": "http", "method": "POST", "headers": []}, receive)))


def test_read_body_joins_the_parts_of_a_streamed_body_as_request_body_does() -> None:
    assert body_of([{"type": "http.request", "body": b"one", "more_body": False}]) == b"one"
    parts = [{"type": "http.request", "body": b"a", "more_body": True}, {"type": "http.request", "more_body": True},
             {"type": "http.request", "body": b"bc", "more_body": False}]
    assert body_of(parts) == b"abc"
    assert body_of([{"type": "http.request"}]) == b""


def test_read_body_raises_client_disconnect_when_the_client_leaves_midway() -> None:
    with pytest.raises(ClientDisconnect):
        body_of([{"type": "http.request", "body": b"a", "more_body": True}, {"type": "http.disconnect"}])
