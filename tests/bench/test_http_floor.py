"""bench.http_floor: the bare-uvicorn floor answers like a server, and the tool measures it beside gloro-serve."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from starlette.testclient import TestClient

from bench import http_floor


@pytest.mark.unit
def test_the_floor_app_reads_the_body_and_answers_a_predict_shaped_json() -> None:
    with TestClient(http_floor.floor_app) as client:
        response = client.post("/v1/predict", content=b'{"instances": [{"b64": "x"}]}' * 100)
    assert response.status_code == 200
    assert response.json()["predictions"][0].keys() == {"label", "class_name", "certified", "radius"}


@pytest.mark.e2e
def test_one_short_round_measures_both_servers(tmp_path: Path) -> None:
    out = tmp_path / "floor.json"
    assert http_floor.main(["--connections", "2", "--duration", "0.5", "--rounds", "1", "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    for key in ("a", "f"):
        row = result["rounds"][0][key]
        assert row["successes"] > 0 and row["errors"] == {}
        assert row["server_cpu_ms_per_request"] > 0
    assert result["gloro_serve_minus_floor_ms"] == pytest.approx(
        result["median"]["a"]["server_cpu_ms_per_request"] - result["median"]["f"]["server_cpu_ms_per_request"])
