"""Shared fixtures for the models tests: the real MNIST and one small trained checkpoint."""

from __future__ import annotations

from pathlib import Path

import pytest

pytest.importorskip("torch", reason="the models tests need the [train] extra (torch)")

MNIST = Path(__file__).resolve().parents[2].parent / "shared" / "datasets" / "mnist"


@pytest.fixture(scope="session")
def mnist_dir() -> Path:
    if not (MNIST / "t10k-images-idx3-ubyte.gz").is_file():
        pytest.skip(f"real MNIST not found at {MNIST}")
    return MNIST


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory: pytest.TempPathFactory, mnist_dir: Path) -> Path:
    """A 2C2F trained for 3 epochs on 6,000 MNIST images (about 15 s on 2 cores)."""
    from models.checkpoint import TrainConfig
    from models.train import train

    out = tmp_path_factory.mktemp("run")
    config = TrainConfig(architecture="2c2f", data_dir=str(mnist_dir), eps=0.3, train_eps=0.45, epochs=3,
                         train_subset=6000, test_subset=1000, lr=3e-3, final_lr=1e-4)
    train(config, out, progress=False)
    return out
