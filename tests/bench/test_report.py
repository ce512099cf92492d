"""bench.report: a saved benchmarks.json rebuilds the plots and the page's generated section."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from bench import report
from bench.models import ROOT

pytestmark = pytest.mark.unit

SAVED = ROOT / "bench" / "results" / "benchmarks-2026-11-26-xeon.json"


def test_a_saved_run_rebuilds_its_section_and_keeps_the_text_around_it(tmp_path: Path) -> None:
    results = tmp_path / "benchmarks.json"
    shutil.copy(SAVED, results)
    page = tmp_path / "page.md"
    page.write_text(f"# Kept above\n\n{report.BEGIN}\nstale\n{report.END}\n\nKept below.\n")
    assert report.main([str(results), str(page)]) == 0
    text = page.read_text()
    assert text.startswith("# Kept above\n") and text.endswith("Kept below.\n") and "stale" not in text
    assert "commit `366325b`" in text and "Intel(R) Xeon(R) Processor" in text
    assert (tmp_path / "serving-cifar.png").stat().st_size > 0


@pytest.mark.parametrize("content", [None, "not json", "[1, 2]"])
def test_a_missing_or_foreign_file_is_a_one_line_error(
    content: str | None, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    results = tmp_path / "benchmarks.json"
    if content is not None:
        results.write_text(content)
    assert report.main([str(results), str(tmp_path / "page.md")]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"python -m bench.report: error: {results}: ") and err.count("\n") == 1
    assert not (tmp_path / "page.md").exists()
