"""bench/decode.py: both of the server's PNG paths are timed on the same images."""

from __future__ import annotations

import json

import pytest

from bench import decode


@pytest.mark.integration
def test_both_paths_are_timed_on_both_images(tmp_path, capsys):
    out = tmp_path / "decode.json"
    assert decode.main(["--number", "20", "--repeats", "1", "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["command"].startswith("python -m bench.decode") and result["machine"]["cpu"]
    assert [r["image"] for r in result["rows"]] == list(decode.CASES)
    for row in result["rows"]:
        assert row["pillow_us"] > 0 and row["libspng_us"] > 0 and row["png_bytes"] > 0
        assert row["speedup"] == pytest.approx(row["pillow_us"] / row["libspng_us"])
        assert row["b64_chars"] > row["png_bytes"] and row["b64_stdlib_us"] > 0 and row["b64_pybase64_us"] > 0
        assert row["b64_speedup"] == pytest.approx(row["b64_stdlib_us"] / row["b64_pybase64_us"])
    assert capsys.readouterr().out.count("bench: ") == len(decode.CASES)
