"""Direct routes: the predict and infer routes are served by `DirectDispatch` ahead of the router,
answer their own errors with the app's handlers, and everything else still reaches the router."""

from __future__ import annotations

import asyncio

import pytest
from fastapi import FastAPI
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from server.errors import NotFound
from server.routes import DirectDispatch, Route, direct_routes, install


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

    app = FastAPI()
    install(app, [Route("POST", "/m/{name}/predict", predict, "predict", direct=True),
                  Route("GET", "/m/{name}", describe, "describe")], "test")
    inner = Inner()
    return DirectDispatch(inner, direct_routes(app)), inner


def test_only_the_direct_routes_are_dispatched(dispatch) -> None:
    app, inner = dispatch
    assert [r.path for r in app.routes] == ["/m/{name}/predict"]


def test_a_direct_route_is_served_without_reaching_the_router(dispatch) -> None:
    app, inner = dispatch
    status, body = asyncio.run(call(app, "POST", "/m/digits/predict"))
    assert status == 200 and body == b'{"model":"digits","route":"/m/{name}/predict"}'
    assert inner.paths == []


def test_other_methods_paths_and_routes_go_on_to_the_router(dispatch) -> None:
    app, inner = dispatch
    for method, path in [("GET", "/m/digits/predict"), ("POST", "/m/a/b/predict"), ("GET", "/m/digits"), ("POST", "/x")]:
        assert asyncio.run(call(app, method, path))[0] == 299
    assert inner.paths == [("GET", "/m/digits/predict"), ("POST", "/m/a/b/predict"), ("GET", "/m/digits"), ("POST", "/x")]


def test_a_direct_route_answers_its_errors_with_the_app_handlers(dispatch) -> None:
    app, _ = dispatch
    assert asyncio.run(call(app, "POST", "/m/missing/predict")) == (404, b'{"error":"model \'missing\' is not served"}')
    assert asyncio.run(call(app, "POST", "/m/broken/predict")) == (500, b'{"error":"internal error: RuntimeError"}')
