"""In-process: the server serves the demo page and its files, offline, and nothing else changes."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from prometheus_client import CollectorRegistry

from server.app import STATIC, create_app
from server.settings import ServerSettings
from tiny_model import write_model

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def client(tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("repository")
    write_model(root, "tiny", "1")
    app = create_app(ServerSettings(repository=root, default_model="tiny"), registry=CollectorRegistry())
    with TestClient(app) as test_client:
        yield test_client


def test_root_serves_the_page_and_every_file_it_names(client: TestClient) -> None:
    r = client.get("/")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    assert r.text == (STATIC / "index.html").read_text()
    assets = re.findall(r'(?:href|src)="([^"]+)"', r.text)
    assert {"static/demo.js", "static/demo.css", "docs", "metrics"} <= set(assets)
    for asset in assets:
        assert client.get("/" + asset).status_code == 200, asset


def test_nothing_is_fetched_from_elsewhere() -> None:
    for path in STATIC.iterdir():
        text = path.read_text()
        assert not re.search(r"https?://|//[a-z0-9.-]+\.[a-z]{2,}/", text, re.I), path.name
        assert "@import" not in text and "import(" not in text, path.name


@pytest.mark.parametrize("method", ["GET", "POST"])
def test_unknown_routes_are_still_json_404s(client: TestClient, method: str) -> None:
    r = client.request(method, "/etc/passwd/predict")
    assert r.status_code == 404 and "error" in r.json()
