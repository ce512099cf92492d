"""Fixtures for the server tests: real MNIST images, a tiny model repository, in-process apps."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from prometheus_client import CollectorRegistry

from server.app import create_app
from server.settings import ServerSettings
from server_support import MNIST, load_idx, png_bytes
from tiny_model import fit_linear, write_model


@pytest.fixture(scope="session")
def mnist_test() -> tuple[np.ndarray, np.ndarray]:
    """The first 200 MNIST test images (uint8 [N, 28, 28]) and labels."""
    images = load_idx(MNIST / "t10k-images-idx3-ubyte.gz")[:200]
    labels = load_idx(MNIST / "t10k-labels-idx1-ubyte.gz")[:200]
    return images, labels


@pytest.fixture(scope="session")
def mnist_pngs(mnist_test: tuple[np.ndarray, np.ndarray]) -> list[bytes]:
    return [png_bytes(image) for image in mnist_test[0][:32]]


@pytest.fixture(scope="session")
def linear_weights() -> tuple[np.ndarray, np.ndarray]:
    """A linear MNIST classifier fitted (ridge regression) on 6,000 training images."""
    images = load_idx(MNIST / "train-images-idx3-ubyte.gz")[:6000].astype(np.float64) / 255
    labels = load_idx(MNIST / "train-labels-idx1-ubyte.gz")[:6000]
    return fit_linear(images, labels)


@pytest.fixture(scope="session")
def tiny_repo(tmp_path_factory: pytest.TempPathFactory, linear_weights: tuple[np.ndarray, np.ndarray]) -> Path:
    """A repository with model 'tiny' (versions 1 and 2, the fitted classifier in 2) and 'tiny-rgb'."""
    root = tmp_path_factory.mktemp("repository")
    write_model(root, "tiny", "1")
    write_model(root, "tiny", "2", weights=linear_weights[0], bias=linear_weights[1])
    write_model(root, "tiny-rgb", "1", shape=(3, 8, 8))
    return root


def make_settings(repository: Path, **overrides: object) -> ServerSettings:
    return ServerSettings(repository=repository, default_model="tiny", **overrides)


@pytest.fixture
def client(tiny_repo: Path) -> Iterator[TestClient]:
    app = create_app(make_settings(tiny_repo), registry=CollectorRegistry())
    with TestClient(app) as test_client:
        yield test_client
