"""bench.compare: servers (flags or git revisions) side by side, with the ceiling in every round."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from bench import compare
from bench.models import ROOT


@pytest.mark.unit
def test_a_server_is_a_label_an_optional_revision_and_flags() -> None:
    assert compare.parse_spec("after=--instances 2 --max-batch-size 8") == compare.ServerSpec(
        "after", None, ["--instances", "2", "--max-batch-size", "8"])
    assert compare.parse_spec("before@HEAD~1=") == compare.ServerSpec("before", "HEAD~1", [])


@pytest.mark.unit
@pytest.mark.parametrize("spec", ["--instances 2", "=--instances 2", "a b=", "@HEAD="])
def test_a_malformed_server_is_a_one_line_error(spec: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert compare.main(["--server", spec, "--out", str(tmp_path / "c.json")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("python -m bench.compare: error: --server") and err.count("\n") == 1


@pytest.mark.unit
def test_an_unknown_revision_is_a_one_line_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert compare.main(["--server", "x@no-such-revision=", "--model", "mnist", "--out", str(tmp_path / "c.json")]) == 2
    assert capsys.readouterr().err == "python -m bench.compare: error: unknown git revision 'no-such-revision'\n"


@pytest.mark.e2e
def test_one_short_round_serves_a_revision_beside_this_checkout(tmp_path: Path) -> None:
    out = tmp_path / "compare.json"
    argv = ["--model", "mnist", "--server", "head@HEAD=", "--server", "here=--max-batch-size 8",
            "--connections", "2", "--duration", "0.5", "--rounds", "1", "--out", str(out)]
    assert compare.main(argv) == 0
    result = json.loads(out.read_text())
    assert result["servers"] == {"head": {"revision": "HEAD", "flags": []},
                                 "here": {"revision": None, "flags": ["--max-batch-size", "8"]}}
    row = result["rounds"][0]
    assert row["e"]["req_per_s"] > 0
    for label in ("head", "here"):
        assert row[label]["successes"] > 0 and row[label]["errors"] == {}
        assert result["summary"][label]["ratio_to_ceiling"] == pytest.approx(
            row[label]["req_per_s"] / row["e"]["req_per_s"])
    assert result["summary"]["head"]["ratio_to_first"] == 1.0
    worktrees = subprocess.run(["git", "worktree", "list"], cwd=ROOT, capture_output=True, text=True).stdout
    assert str(tmp_path) not in worktrees  # the revision's checkout is removed afterwards


def test_the_servers_and_the_ceiling_can_run_the_torch_backend(tmp_path: Path, monkeypatch) -> None:
    """As on a GPU host (--backend torch --device cuda); here on the CPU."""
    started = []
    real_running = compare.running

    def running(target, *args, **kwargs):
        started.append(target.command)
        return real_running(target, *args, **kwargs)

    monkeypatch.setattr(compare, "running", running)
    out = tmp_path / "compare.json"
    argv = ["--model", "mnist", "--server", "a=--max-batch-size 8", "--backend", "torch", "--device", "cpu",
            "--connections", "2", "--duration", "0.5", "--rounds", "1", "--out", str(out)]
    assert compare.main(argv) == 0
    result = json.loads(out.read_text())
    assert (result["backend"], result["device"]) == ("torch", "cpu")
    [command] = started
    assert " --backend torch --device cpu " in " ".join(command)
    log = (tmp_path / "tmp" / "compare" / "compare-a.log").read_text()
    row = result["rounds"][0]
    assert row["e"]["req_per_s"] > 0 and row["a"]["successes"] > 0 and row["a"]["errors"] == {}, log
