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
    (["train", "--lr", "-1"], ["--lr", "expected a positive finite number", "-1"]),
    (["train", "--lr", "1e300"], ["--lr", "float32", "1e300"]),
    (["train", "--final-lr", "nan"], ["--final-lr", "nan"]),
    (["train", "--ramp-fraction", "nan"], ["--ramp-fraction", "from 0 to 1", "nan"]),
    (["train", "--ramp-fraction", "-5"], ["--ramp-fraction", "-5"]),
    (["train", "--seed", "99999999999999999999999"], ["--seed", "from 0 to 4294967295"]),
    (["train", "--resume"], ["--resume", "holds no checkpoint to continue from"]),
])
def test_train_rejects_bad_arguments(tmp_path, args, fragments):
    assert_one_line_error(run_cli(*args, "--out", str(tmp_path / "run")), *fragments)
    assert not (tmp_path / "run").exists()  # a refused run leaves no folder behind


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


def test_resume_refuses_a_flag_that_would_change_the_run(trained_run, tmp_path):
    """It used to keep the saved settings and say nothing: --lr 0.01 trained on at the saved 0.003."""
    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    before = (run / "checkpoint" / "state.json").read_bytes()
    for flags, fragment in ((["--lr", "0.01"], "cannot resume with --lr 0.01: the run was trained with 0.003"),
                            (["--train-sub", "100"], "cannot resume with --train-subset 100: the run was trained with 6000"),
                            (["--lln"], "cannot resume with --lln True: the run was trained with False")):
        assert_one_line_error(run_cli("train", "--resume", "--out", str(run), *flags), fragment, "drop")
    assert (run / "checkpoint" / "state.json").read_bytes() == before


def test_resume_extends_a_run_with_its_saved_settings(trained_run, tmp_path, mnist_dir):
    """Flags that agree with the run are fine; --epochs extends it; the saved --train-subset holds
    though not repeated (the data were read with the defaults before the saved settings were)."""
    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    result = run_cli("train", "--resume", "--out", str(run), "--epochs", "4", "--lr", "0.003", "--arch", "2c2f",
                     "--data-dir", str(mnist_dir), "--no-progress", "--threads", "1")
    assert result.returncode == 0, result.stderr
    log = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in log] == [1, 2, 3, 4]
    assert log[3]["train_images"] == log[0]["train_images"] == 6000 // 256 * 256
    saved = json.loads((run / "checkpoint" / "state.json").read_text())["config"]
    assert saved["epochs"] == 4 and saved["lr"] == 0.003 and saved["train_subset"] == 6000
    # without --epochs the run keeps its own 4 (the flag's default of 100 once replaced it)
    again = run_cli("train", "--resume", "--out", str(run), "--no-progress", "--threads", "1")
    assert again.returncode == 0, again.stderr
    assert json.loads((run / "checkpoint" / "state.json").read_text())["config"]["epochs"] == 4
    assert len((run / "log.jsonl").read_text().splitlines()) == 4


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


@pytest.mark.parametrize("eps", ["1e308", "0"])
def test_certify_plots_at_the_edges_of_eps(tmp_path, trained_run, eps):
    """2.5 x 1e308 overflowed the plot's axis ('Axis limits cannot be NaN or Inf'), and the VRA's
    comparison in float32 warned of an overflow; eps 0 alone gave an empty axis."""
    plot = tmp_path / "curve.png"
    result = run_cli("certify", str(trained_run / "checkpoint"), "--eps", eps, "--test-subset", "100",
                     "--plot", str(plot))
    assert result.returncode == 0 and result.stderr == "", result.stderr
    report = json.loads(result.stdout)
    vra = report["sound"]["vra"][eps.replace("1e308", "1e+308")]
    assert vra == 0.0 if eps == "1e308" else 0.5 < vra <= report["clean_accuracy"]
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


SMALL = ("--epochs", "1", "--train-subset", "256", "--test-subset", "100", "--batch-size", "64", "--no-progress",
         "--threads", "1")


def test_training_into_an_earlier_run_without_resume_is_refused(trained_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    before = (run / "checkpoint" / "state.json").read_bytes()
    assert_one_line_error(run_cli("train", "--out", str(run), *SMALL), "already holds a run", "--resume")
    assert (run / "checkpoint" / "state.json").read_bytes() == before


def test_a_diverging_run_stops_with_the_collapse_message(tmp_path, mnist_dir):
    """A learning rate of 1e10 turns the weights to NaN in the first epoch: the sound bound's SVD
    cannot run on them, so the epoch is called collapsed before it is evaluated."""
    result = run_cli("train", "--data-dir", str(mnist_dir), "--out", str(tmp_path / "run"), "--lr", "1e10", *SMALL)
    assert_one_line_error(result, "training collapsed in epoch 1: the weights are no longer finite", "nothing was saved")
    assert not (tmp_path / "run" / "checkpoint").exists()


def test_eps_0_trains_plainly_with_the_default_log_ramp(tmp_path, mnist_dir):
    result = run_cli("train", "--data-dir", str(mnist_dir), "--out", str(tmp_path / "run"), "--eps", "0",
                     "--train-eps", "0", *SMALL)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout.splitlines()[-1])["train_eps"] == 0


def test_certify_and_export_refuse_weights_that_are_not_finite(trained_run, tmp_path):
    from safetensors.torch import load_file, save_file

    ckpt = tmp_path / "ckpt"
    shutil.copytree(trained_run / "checkpoint", ckpt)
    tensors = load_file(ckpt / "model.safetensors")
    name = next(k for k, v in tensors.items() if v.is_floating_point())
    tensors[name] = tensors[name] * float("nan")
    save_file(tensors, ckpt / "model.safetensors")
    assert_one_line_error(run_cli("certify", str(ckpt)), "holds weights that are not finite", name)
    out = tmp_path / "repo" / "m" / "1"
    assert_one_line_error(run_cli("export", str(ckpt), "--out", str(out)), "not finite")
    assert not (tmp_path / "repo" / "m").exists()  # no empty NAME folder for a server to trip on


@pytest.mark.parametrize(("change", "fragment"), [
    (lambda s: s.pop("epoch"), "needs an epoch count"),
    (lambda s: s.update(history=None), "history list"),
    (lambda s: s["config"].update(classes=5), "classes must be a list"),
    (lambda s: s["config"].update(input_shape=None), "input_shape must be a list"),
    (lambda s: s["config"].update(epochs="ten"), "epochs must be a int"),
])
def test_certify_names_a_corrupt_state_file(trained_run, tmp_path, change, fragment):
    ckpt = tmp_path / "ckpt"
    shutil.copytree(trained_run / "checkpoint", ckpt)
    state = json.loads((ckpt / "state.json").read_text())
    change(state)
    (ckpt / "state.json").write_text(json.dumps(state))
    assert_one_line_error(run_cli("certify", str(ckpt)), "state.json", fragment)


def test_paths_that_cannot_be_written_are_one_line_errors(trained_run, tmp_path):
    a_file = tmp_path / "a-file"
    a_file.write_text("")
    assert_one_line_error(run_cli("export", str(trained_run / "checkpoint"), "--out", str(a_file / "m" / "1")),
                          "Not a directory")
    assert_one_line_error(run_cli("certify", str(trained_run / "checkpoint"), "--test-subset", "10",
                                  "--out", str(tmp_path)), "Is a directory")


def test_export_needs_enough_test_images_to_judge_the_model(trained_run, tmp_path):
    """On one image any classifier is 'at the largest class share': the export refused it as collapsed."""
    out = tmp_path / "repo" / "m" / "1"
    assert_one_line_error(run_cli("export", str(trained_run / "checkpoint"), "--out", str(out), "--test-subset", "1"),
                          "on 1 test images; it needs at least 100")
    assert not (tmp_path / "repo" / "m").exists()


def test_certify_keeps_eps_values_apart_that_six_digits_would_merge(trained_run):
    result = run_cli("certify", str(trained_run / "checkpoint"), "--eps", "0.3", "0.3000001", "--test-subset", "100")
    assert result.returncode == 0, result.stderr
    assert set(json.loads(result.stdout)["sound"]["vra"]) == {"0.3", "0.3000001"}


def test_the_radius_histogram_leaves_out_radii_that_are_not_finite():
    """Two equal head rows give K = 0 for their pair: a radius of inf (a constant margin) or NaN (a tie)."""
    import numpy as np

    from models.certify import radius_histogram
    from models.evaluate import Evaluation

    evaluation = Evaluation(np.zeros(4, np.int64), np.zeros(4, np.int64), np.array([0.5, 1.0, np.inf, np.nan]))
    histogram = radius_histogram(evaluation, bins=2)
    assert histogram == {"edges": [0.0, 0.5, 1.0], "counts": [0, 2]}
