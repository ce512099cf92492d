"""bench/json_bodies.py: every way of reading the large JSON bodies is timed."""

from __future__ import annotations

import json

import pytest

from bench import json_bodies


@pytest.mark.integration
def test_each_way_of_reading_each_body_is_timed(tmp_path, capsys):
    out = tmp_path / "json_bodies.json"
    assert json_bodies.main(["--repeats", "1", "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["command"].startswith("python -m bench.json_bodies") and result["machine"]["cpu"]
    assert [(r["body"], r["way"]) for r in result["rows"]] == [
        ("pixels", "orjson"), ("pixels", "read_predict_body"), ("pixels", "pydantic PredictRequest"),
        ("v2-json", "orjson"), ("v2-json", "pydantic InferRequest")]
    assert all(r["ms"] > 0 and r["bytes"] > 6 * 2**20 and r["images"] > 1000 for r in result["rows"])
    assert capsys.readouterr().out.count("bench: ") == 5
