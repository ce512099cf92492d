"""The models shipped in server/model_repository are what their manifests say, and their certificates hold."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch

from models import data
from models.attack import pgd_l2
from models.torch_backend import TorchPredictor
from server.repository import sha256_file

REPOSITORY = Path(__file__).resolve().parents[2] / "server" / "model_repository"
SHIPPED = sorted(p for p in REPOSITORY.glob("*/*") if (p / "gloro.json").is_file())
pytestmark = pytest.mark.integration
CHUNK = 1000  # test images per onnxruntime call


def manifest_of(version_dir: Path) -> dict:
    return json.loads((version_dir / "gloro.json").read_text())


def test_the_default_model_is_shipped():
    assert (REPOSITORY / "mnist-2c2f" / "1" / "gloro.json").is_file()


@pytest.mark.parametrize("version_dir", SHIPPED, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_manifest_matches_its_files_and_its_measured_numbers(version_dir, mnist_dir):
    manifest = manifest_of(version_dir)
    assert manifest["onnx"]["sha256"] == sha256_file(version_dir / "model.onnx")
    test = data.load(manifest["metrics"]["dataset"], mnist_dir, train=False)
    assert manifest["metrics"]["n"] == len(test.labels) == 10000
    session = ort.InferenceSession(str(version_dir / "model.onnx"), providers=["CPUExecutionProvider"])
    x = test.images.astype(np.float32) / np.float32(255)
    # in chunks of 1000 as the export measured (a 4C3F on all 10,000 at once takes gigabytes)
    outputs = [session.run(["label", "radius"], {"input": x[i:i + CHUNK]}) for i in range(0, len(x), CHUNK)]
    label, radius = (np.concatenate(parts) for parts in zip(*outputs))
    correct = label == test.labels
    assert manifest["metrics"]["clean_accuracy"] == pytest.approx(correct.mean(), abs=1e-9)
    for eps, vra in manifest["metrics"]["vra"].items():
        assert vra == pytest.approx((correct & (radius > float(eps))).mean(), abs=1e-9), eps


def _module(version_dir: Path) -> torch.nn.Module:
    return TorchPredictor(version_dir, "cpu").module


@pytest.mark.slow
def test_no_certified_point_of_the_shipped_2c2f_is_broken_by_pgd(mnist_dir):
    """A CI-sized sample; bench/certificate_attack.py attacks every certified test point."""
    version_dir = REPOSITORY / "mnist-2c2f" / "1"
    eps = manifest_of(version_dir)["epsilon"]
    module = _module(version_dir)
    test = data.load("mnist", mnist_dir, train=False)
    rng = np.random.default_rng(0)
    index = rng.choice(len(test.labels), 400, replace=False)
    x = torch.from_numpy(test.images[index].astype(np.float32) / 255)
    with torch.no_grad():
        _, label, radius = module(x)
    certified = radius > eps
    assert int(certified.sum()) > 300
    forward = lambda z: module(z)[0]  # noqa: E731
    broken = pgd_l2(forward, x[certified], label[certified], eps, steps=40, restarts=3)
    assert int(broken.sum()) == 0
    # the attack is not toothless: at 3x eps it breaks some of the same points
    assert int(pgd_l2(forward, x[certified][:100], label[certified][:100], 3 * eps, steps=40, restarts=1).sum()) > 0


@pytest.mark.parametrize("version_dir", SHIPPED, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_float32_margin_error_is_far_below_what_the_safety_factor_buys(version_dir, mnist_dir):
    """A certificate needs f_i - f_j > eps * K_ij in exact arithmetic; the served check uses float32
    logits and K inflated by the safety factor, which buys eps * (factor - 1) * K_ij of margin."""
    manifest = manifest_of(version_dir)
    module = _module(version_dir)
    test = data.load("mnist", mnist_dir, train=False)
    x = torch.from_numpy(test.images.astype(np.float32) / 255)
    with torch.no_grad():
        logits32 = module(x)[0].double()
        logits64 = module.double()(x.double())[0]
        K = 1.0 / module.radius.inverse_K.double()  # already inflated: K_sound * factor
    error = (logits32 - logits64).abs().max()
    factor = manifest["bound"]["safety_factor"]
    off_diagonal = ~torch.eye(K.shape[0], dtype=torch.bool)
    bought = manifest["epsilon"] * (1 - 1 / factor) * K[off_diagonal].min()
    # the margin error is at most 2 * error; ask for a 100x cushion
    assert 2 * error * 100 < bought, (float(error), float(bought))
