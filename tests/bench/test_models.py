"""bench/models.py: random-weight exports keep their weights and bound, never a stale graph."""

from __future__ import annotations

import json

import onnx
import pytest

from bench import models
from models import export

pytestmark = pytest.mark.integration


def test_an_earlier_random_export_keeps_its_bound_but_its_graph_is_written_again(tmp_path, monkeypatch):
    folder = tmp_path / "tiny" / "1"
    models.export_random("2c2f", (1, 12, 12), 10, folder, "tiny")
    weights = (folder / "model.safetensors").read_bytes()
    graph = onnx.load(str(folder / "model.onnx"))
    nodes = len(graph.graph.node)
    graph.graph.node.pop()  # as a graph written by an older exporter would differ
    onnx.save(graph, str(folder / "model.onnx"))

    def no_bound(*_args, **_kwargs):
        raise AssertionError("the sound bound was computed again")

    monkeypatch.setattr(export.CertifiedModel, "from_gloro", classmethod(no_bound))
    onnx_path = models.export_random("2c2f", (1, 12, 12), 10, folder, "tiny")
    assert (folder / "model.safetensors").read_bytes() == weights
    manifest = json.loads((folder / "gloro.json").read_text())
    assert manifest["onnx"]["sha256"] == models.sha256(onnx_path)
    assert len(onnx.load(str(onnx_path)).graph.node) == nodes
    with pytest.raises(AssertionError, match="computed again"):  # another seed: other weights, another bound
        models.export_random("2c2f", (1, 12, 12), 10, folder, "tiny", seed=1)


def test_a_random_export_is_served_by_the_torch_backend_as_by_onnxruntime(tmp_path):
    """The GPU suite serves random weights with --backend torch: its manifest must read as an export."""
    import numpy as np

    from server.backends import backend_factory
    from server.repository import load_repository

    models.export_random("2c2f", (1, 12, 12), 10, tmp_path / "tiny" / "1", "tiny")
    x = np.random.default_rng(0).random((3, 1, 12, 12), dtype=np.float32)
    answers = []
    for backend in ("torch", "onnxruntime"):
        served = backend_factory(backend, "cpu", 0)(load_repository(tmp_path)["tiny"])
        served.load()
        answers.append(served.run(x))
    assert answers[0].label.tolist() == answers[1].label.tolist()
    np.testing.assert_allclose(answers[0].radius, answers[1].radius, rtol=1e-4, atol=1e-6)
