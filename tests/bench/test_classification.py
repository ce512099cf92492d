"""bench/classification.py: the classification extension's strings are timed for each request shape."""

from __future__ import annotations

import json

import pytest

from bench import classification


@pytest.mark.unit
def test_every_case_is_timed_and_written(tmp_path) -> None:
    out = tmp_path / "classification.json"
    assert classification.main(["--number", "1", "--repeats", "1", "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["command"].startswith("python -m bench.classification") and result["machine"]["cpu"]
    assert len(result["cases"]) == len(classification.CASES)
    for (images, classes, k), row in zip(classification.CASES, result["cases"].values()):
        assert row["strings"] == images * min(k, classes)
        assert row["top_classes_ms"] > 0 and row["raw_ms"] > 0 and row["us_a_string"] > 0
