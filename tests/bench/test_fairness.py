"""bench.fairness: a small client's latency beside a client posting requests of many images."""

from __future__ import annotations

import json
from pathlib import Path

import orjson
import pytest

from bench import fairness
from bench.models import prepare


@pytest.mark.unit
def test_an_unknown_kind_is_a_one_line_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert fairness.main(["--server", "x=", "--kinds", "b64,gif", "--out", str(tmp_path / "f.json")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("python -m bench.fairness: error: unknown kind(s) gif") and err.count("\n") == 1


def test_every_large_body_fits_the_default_body_limit_and_holds_what_it_says(tmp_path: Path) -> None:
    case = prepare("mnist", tmp_path)
    bodies = fairness.large_bodies(case)
    assert set(bodies) == set(fairness.KINDS) - {"none"}
    for path, body, _, images in bodies.values():
        assert len(body) <= 8 * 1024 * 1024 and images > 1000
    assert len(orjson.loads(bodies["b64"][1])["instances"]) == bodies["b64"][3] == fairness.MAX_IMAGES
    assert len(orjson.loads(bodies["v2-json"][1])["inputs"][0]["data"]) == bodies["v2-json"][3] * 784


@pytest.mark.e2e
def test_one_short_round_measures_the_small_client_beside_each_kind(tmp_path: Path) -> None:
    out = tmp_path / "fairness.json"
    argv = ["--server", "here=", "--kinds", "none,b64,v2-binary", "--duration", "1", "--rounds", "1", "--out", str(out)]
    assert fairness.main(argv) == 0
    result = json.loads(out.read_text())
    runs = result["rounds"][0]["here"]
    assert runs["none"]["large_requests"] == 0 and runs["none"]["small_requests"] > 0
    for kind in ("b64", "v2-binary"):  # every large request was answered 200, or the run stops
        assert runs[kind]["large_requests"] >= 1 and runs[kind]["small_requests"] >= 1
        assert runs[kind]["small_errors"] == [] and runs[kind]["large_alone_median_ms"] > 0
    assert result["summary"]["here"]["b64"]["large_images"] == fairness.MAX_IMAGES
