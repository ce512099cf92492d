"""bench.ratios: the ratio of two servers of a side-by-side result, the median of the rounds' ratios."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench import ratios

ROUNDS = [
    {"a": {"req_per_s": 100.0}, "b": {"req_per_s": 50.0}, "e": {"req_per_s": 400.0}},
    {"a": {"req_per_s": 90.0}, "b": {"req_per_s": 30.0}, "e": {"req_per_s": 410.0}},
    {"a": {"req_per_s": 80.0}, "b": {"req_per_s": 20.0}, "e": {"req_per_s": 390.0}},
]


def result(tmp_path: Path, rounds: object = ROUNDS) -> Path:
    path = tmp_path / "compare.json"
    path.write_text(json.dumps({"rounds": rounds}))
    return path


@pytest.mark.unit
def test_a_ratio_is_the_median_of_the_ratios_within_rounds(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # within rounds 2, 3 and 4: median 3; the medians of the columns would give 90 / 30 = 3 too,
    # so the second pair tells them apart: a/e within rounds 0.25, 0.2195, 0.2051 -> 0.2195.
    assert ratios.main([str(result(tmp_path)), "a/b", "a/e"]) == 0
    assert capsys.readouterr().out == ("a/b: 3.000 (median of the rounds' ratios: 2.000, 3.000, 4.000)\n"
                                       "a/e: 0.220 (median of the rounds' ratios: 0.250, 0.220, 0.205)\n")


@pytest.mark.unit
@pytest.mark.parametrize("pair, message", [
    ("a-b", "'a-b': expected X/Y, two server labels"),
    ("a/", "'a/': expected X/Y, two server labels"),
    ("a/zz", "'a/zz': no server 'zz' in the rounds (they hold a, b, e)"),
])
def test_a_pair_the_file_cannot_answer_is_a_one_line_error(pair: str, message: str, tmp_path: Path,
                                                            capsys: pytest.CaptureFixture[str]) -> None:
    assert ratios.main([str(result(tmp_path)), pair]) == 2
    assert capsys.readouterr().err == f"python -m bench.ratios: error: {message}\n"


@pytest.mark.unit
def test_a_server_that_never_served_is_named(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rounds = [{"a": {"req_per_s": 10.0}, "b": {"req_per_s": 0.0}}]
    assert ratios.main([str(result(tmp_path, rounds)), "a/b"]) == 2
    assert capsys.readouterr().err == "python -m bench.ratios: error: 'a/b': no round where 'b' served anything\n"


@pytest.mark.unit
@pytest.mark.parametrize("text", ["not json", "{}", '{"rounds": 3}', '{"rounds": [1]}'])
def test_a_file_that_is_not_a_comparison_is_a_one_line_error(text: str, tmp_path: Path,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "x.json"
    path.write_text(text)
    assert ratios.main([str(path), "a/b"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"python -m bench.ratios: error: {path}: not a bench.compare result") and err.count("\n") == 1


@pytest.mark.unit
def test_a_missing_file_is_a_one_line_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert ratios.main([str(tmp_path / "none.json"), "a/b"]) == 2
    assert capsys.readouterr().err.count("\n") == 1


@pytest.mark.unit
def test_the_kept_gpu_comparison_reads_back() -> None:
    path = Path(__file__).resolve().parents[2] / "bench" / "results" / "gpu" / "compare-gpu.json"
    rounds = ratios.read_rounds(path)
    median, each = ratios.ratio(rounds, "a-w4/b-w4")
    assert median == pytest.approx(5.608, abs=5e-4) and len(each) == 3
