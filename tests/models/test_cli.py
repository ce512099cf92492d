"""Bad input to train / certify / export: one line on stderr, a non-zero exit, no traceback."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.e2e


def run_cli(*args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "server", *args], cwd=REPO, capture_output=True,
                          text=True, timeout=timeout)


def assert_one_line_error(result: subprocess.CompletedProcess, *fragments: str) -> None:
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(f"gloro-serve {result.args[3]}: error: "), lines[0]
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


@pytest.mark.parametrize("args,fragments", [
    (["train", "--arch", "resnet50"], ["--arch", "resnet50"]),
    (["train", "--dataset", "svhn"], ["--dataset", "svhn"]),
    (["train", "--eps", "-0.1"], ["eps", "-0.1"]),
    (["train", "--eps", "nan"], ["eps", "nan"]),
    (["train", "--eps", "abc"], ["eps", "abc"]),
    (["train", "--train-eps", "inf"], ["eps", "inf"]),
    (["train", "--epochs", "0"], ["--epochs"]),
    (["train", "--data-dir", "/nonexistent/mnist"], ["/nonexistent/mnist", "does not exist"]),
    (["train", "--init-from", "/nonexistent/ckpt"], ["/nonexistent/ckpt", "missing state.json"]),
])
def test_train_rejects_bad_arguments(tmp_path, args, fragments):
    assert_one_line_error(run_cli(*args, "--out", str(tmp_path / "run")), *fragments)


def test_train_names_a_missing_or_corrupt_data_file(tmp_path, mnist_dir):
    folder = tmp_path / "mnist"
    shutil.copytree(mnist_dir, folder)
    (folder / "train-labels-idx1-ubyte.gz").unlink()
    assert_one_line_error(run_cli("train", "--data-dir", str(folder), "--out", str(tmp_path / "a")),
                          "missing train-labels-idx1-ubyte")
    (folder / "train-labels-idx1-ubyte.gz").write_bytes(b"garbage that is not gzip nor idx")
    assert_one_line_error(run_cli("train", "--data-dir", str(folder), "--out", str(tmp_path / "b")),
                          "train-labels-idx1-ubyte")


def test_certify_and_export_refuse_a_checkpoint_of_another_architecture(tmp_path, trained_run):
    ckpt = tmp_path / "ckpt"
    shutil.copytree(trained_run / "checkpoint", ckpt)
    state = json.loads((ckpt / "state.json").read_text())
    state["config"]["architecture"] = "4c3f"
    (ckpt / "state.json").write_text(json.dumps(state))
    assert_one_line_error(run_cli("certify", str(ckpt)), "does not fit architecture '4c3f'")
    assert_one_line_error(run_cli("export", str(ckpt), "--out", str(tmp_path / "r" / "m" / "1")),
                          "does not fit architecture '4c3f'")
    assert not (tmp_path / "r" / "m" / "1").exists()


def test_resume_with_another_architecture_is_refused(trained_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    assert_one_line_error(run_cli("train", "--arch", "4c3f", "--resume", "--out", str(run)),
                          "cannot resume", "2c2f")


def test_certify_rejects_a_folder_that_is_not_a_checkpoint_and_bad_eps(tmp_path, trained_run):
    assert_one_line_error(run_cli("certify", str(tmp_path)), "missing state.json")
    assert_one_line_error(run_cli("certify", str(trained_run / "checkpoint"), "--eps", "-1"), "eps")


def test_certify_reports_sound_and_estimate_side_by_side_with_a_plot(tmp_path, trained_run):
    plot = tmp_path / "curve.png"
    result = run_cli("certify", str(trained_run / "checkpoint"), "--eps", "0.1", "0.3", "--test-subset", "500",
                     "--plot", str(plot))
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert set(report["sound"]["vra"]) == {"0.1", "0.3"} == set(report["estimate"]["vra"])
    # the sound bound is larger, so it certifies no more than the (unsound) estimate
    assert report["sound"]["vra"]["0.3"] <= report["estimate"]["vra"]["0.3"]
    assert all(layer["ratio"] >= 1 - 1e-6 for layer in report["layers"])
    assert sum(report["radius_histogram"]["counts"]) == round(report["clean_accuracy"] * report["n"])
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
