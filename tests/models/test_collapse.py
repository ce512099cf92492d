"""A collapsed epoch is named for what gave it away, and never replaces the last sound checkpoint."""

from __future__ import annotations

import json

import numpy as np
import pytest

from models import checkpoint
from models.cli import main
from models.collapse import collapse_reason
from models.evaluate import Evaluation

LABELS = np.arange(1000) % 10  # every class a tenth of the test set


def _tested(accuracy: float) -> Evaluation:
    predicted = LABELS.copy()
    wrong = int(len(LABELS) * (1 - accuracy))
    predicted[:wrong] = (predicted[:wrong] + 1) % 10
    return Evaluation(LABELS, predicted, np.ones(len(LABELS)))


def _record(train_accuracy: float = 0.95, loss: float = 1.3, body_lipschitz: float = 30.0) -> dict:
    return {"loss": loss, "train_accuracy": train_accuracy, "body_lipschitz": body_lipschitz}


@pytest.mark.unit
def test_a_healthy_epoch_is_no_collapse():
    assert collapse_reason(_tested(0.96), _record(0.95), _record(0.96)) is None
    assert collapse_reason(_tested(0.96), _record(0.95), None) is None


@pytest.mark.unit
def test_training_accuracy_halving_in_one_epoch_is_a_collapse_even_while_the_tested_average_looks_fine():
    # the from-scratch 4C3F, epoch 251: trained weights at 34.9%, the weight average still at 95.0%
    reason = collapse_reason(_tested(0.95), _record(0.349), _record(0.954))
    assert reason == "training accuracy fell from 95.40% to 34.90% in one epoch"


@pytest.mark.unit
def test_a_constant_classifier_on_the_test_set_is_a_collapse():
    assert collapse_reason(_tested(0.11), _record(0.9), None) == (
        "clean test accuracy 11.00% is at the largest class share (10.00%)")


@pytest.mark.unit
def test_a_vanishing_bound_or_a_non_finite_loss_is_a_collapse():
    assert collapse_reason(_tested(0.9), _record(body_lipschitz=1e-3), None) == (
        "the body's Lipschitz bound fell to 0.001")
    assert collapse_reason(_tested(0.9), _record(loss=float("nan")), None) == "the training loss is nan"


@pytest.mark.integration
def test_a_run_that_collapses_stops_with_one_line_and_keeps_the_epoch_before(tmp_path, mnist_dir, capsys):
    # eps ramped to 20 by the end of epoch 1: epoch 1 still learns, epoch 2 cannot
    code = main(["train", "--arch", "2c2f", "--data-dir", str(mnist_dir), "--epochs", "3",
                 "--train-eps", "20", "--ramp-fraction", "0.33", "--lr", "3e-3", "--lr-schedule", "constant",
                 "--train-subset", "2048", "--test-subset", "500", "--batch-size", "128", "--threads", "1",
                 "--no-progress", "--out", str(tmp_path)])
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert code == 1
    assert error.startswith("gloro-serve train: error: training collapsed in epoch 2: ")
    assert f"{tmp_path / 'checkpoint'} keeps epoch 1, the last before it" in error
    log = [json.loads(line) for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    assert [(r["epoch"], r["collapsed"]) for r in log] == [(1, False), (2, True)]
    assert checkpoint.load_state(tmp_path / "checkpoint")["epoch"] == 1


@pytest.mark.integration
def test_a_run_that_collapses_in_its_first_epoch_saves_nothing(tmp_path, mnist_dir, capsys):
    code = main(["train", "--arch", "2c2f", "--data-dir", str(mnist_dir), "--epochs", "1",
                 "--train-eps", "1000", "--eps-ramp", "constant", "--lr", "3e-3",
                 "--train-subset", "1024", "--test-subset", "500", "--batch-size", "128", "--threads", "1",
                 "--no-progress", "--out", str(tmp_path)])
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert code == 1
    assert error.startswith("gloro-serve train: error: training collapsed in epoch 1: ") and "nothing was saved" in error
    assert not (tmp_path / "checkpoint").exists()
