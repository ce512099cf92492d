"""bench/gil_wait.py: a GIL-free wait's lateness, for each switch interval and loop duty asked for."""

from __future__ import annotations

import json
import sys

import pytest

from bench import gil_wait

pytestmark = pytest.mark.integration


def test_every_interval_and_duty_is_measured_and_the_interval_is_restored(tmp_path) -> None:
    out = tmp_path / "gil_wait.json"
    before = sys.getswitchinterval()
    assert gil_wait.main(["--intervals-ms", "5,0.5", "--duties", "0,1", "--waits", "5", "--out", str(out)]) == 0
    assert sys.getswitchinterval() == before
    result = json.loads(out.read_text())
    assert result["command"].startswith("python -m bench.gil_wait") and result["machine"]["cpu"]
    rows = {(r["switch_interval_ms"], r["loop_duty"]): r for r in result["rows"]}
    assert set(rows) == {(5.0, 0.0), (5.0, 1.0), (0.5, 0.0), (0.5, 1.0)}
    for row in rows.values():
        assert row["waits"] == 5 and 0 <= row["late_ms_median"] <= row["late_ms_p90"] <= row["late_ms_max"]


@pytest.mark.parametrize("argv", [["--intervals-ms", "five"], ["--duties", "1.5"], ["--waits", "0"]])
def test_bad_arguments_are_a_one_line_error(argv, capsys) -> None:
    with pytest.raises(SystemExit) as exit_:
        gil_wait.main(argv)
    assert exit_.value.code == 2
    assert capsys.readouterr().err.strip().splitlines()[-1].startswith("python -m bench.gil_wait: error:")
