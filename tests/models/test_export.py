"""Export: onnxruntime agrees with torch, refusals leave nothing half-written, the torch backend agrees."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from torch import nn

from models import checkpoint, data
from models.export import CertifiedModel, ExportError, _code_version, export_checkpoint, export_model
from models.gloro import SAFETY_FACTOR, BoundMode
from models.layers import UnboundedLayerError
from server.repository import sha256_file

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def exported(trained_run: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("repo") / "tiny-2c2f" / "1"
    export_checkpoint(trained_run / "checkpoint", out, test_subset=1000, train_command="pytest fixture")
    return out


def test_repository_entry_has_the_contracted_files_and_manifest(exported):
    assert sorted(p.name for p in exported.iterdir()) == ["README.md", "gloro.json", "model.onnx", "model.safetensors"]
    manifest = json.loads((exported / "gloro.json").read_text())
    assert manifest["name"] == "tiny-2c2f" and manifest["version"] == "1"
    assert manifest["epsilon"] == 0.3 and manifest["train_epsilon"] == 0.45
    assert manifest["input"] == {"shape": [1, 28, 28], "color_mode": "L", "range": [0.0, 1.0]}
    assert manifest["onnx"]["sha256"] == sha256_file(exported / "model.onnx")
    assert manifest["safetensors"]["sha256"] == sha256_file(exported / "model.safetensors")
    assert manifest["bound"]["safety_factor"] == SAFETY_FACTOR
    for layer in manifest["bound"]["layers"]:
        assert layer["bound"] >= layer["estimate"] * (1 - 1e-6)


def test_graph_has_dynamic_batch_and_the_constants_as_initializers(exported):
    graph = onnx.load(str(exported / "model.onnx")).graph
    assert [o.name for o in graph.output] == ["logits", "label", "radius"]
    assert graph.input[0].type.tensor_type.shape.dim[0].dim_param == "batch"
    init_names = {i.name for i in graph.initializer}
    assert any("inverse_K" in name for name in init_names)


def test_convolutions_pad_inside_themselves(exported):
    """'Same' padding lives in each Conv's pads attribute: a separate Pad node would copy every
    activation once more (a tenth of a 6C2F's forward in onnxruntime)."""
    nodes = onnx.load(str(exported / "model.onnx")).graph.node
    convs = [n for n in nodes if n.op_type == "Conv"]
    assert convs and not [n for n in nodes if n.op_type == "Pad"]
    for conv in convs:
        pads = next(a.ints for a in conv.attribute if a.name == "pads")
        assert list(pads) == [1, 1, 1, 1]


def test_minmax_splits_its_channels_at_a_constant(exported):
    """Each MinMax is Split, Min, Max, Concat: its half of the channels is a constant of the graph,
    not computed from the input's shape on every call."""
    nodes = onnx.load(str(exported / "model.onnx")).graph.node
    types = [n.op_type for n in nodes]
    assert types.count("Split") == types.count("Min") == types.count("Max") >= 1
    assert "Shape" not in types and "Slice" not in types


def test_onnxruntime_agrees_with_torch_on_the_mnist_test_set(exported, trained_run, mnist_dir):
    model, config, _ = checkpoint.load_model(trained_run / "checkpoint")
    allowance = json.loads((exported / "gloro.json").read_text())["bound"]["margin_allowance"]
    reference = CertifiedModel.from_gloro(model.eval()).eval()
    reference.radius.set_margin_allowance(allowance)
    test = data.load("mnist", mnist_dir, train=False).subset(2000)
    x = test.images.astype(np.float32) / 255.0
    session = ort.InferenceSession(str(exported / "model.onnx"), providers=["CPUExecutionProvider"])
    logits, label, radius = session.run(None, {"input": x})
    with torch.no_grad():
        t_logits, t_label, t_radius = reference(torch.from_numpy(x))
    assert np.array_equal(label, t_label.numpy())
    np.testing.assert_allclose(radius, t_radius.numpy(), rtol=1e-5, atol=1e-6)
    # and with the training-side computation, through GloroNet.certify
    cert = model.certify(torch.from_numpy(x), eps=0.3, mode=BoundMode.SOUND, margin_allowance=allowance)
    np.testing.assert_allclose(radius, cert.radius.detach().numpy(), rtol=1e-5, atol=1e-6)


def test_manifest_metrics_are_what_onnxruntime_measures(exported, mnist_dir):
    manifest = json.loads((exported / "gloro.json").read_text())
    test = data.load("mnist", mnist_dir, train=False).subset(manifest["metrics"]["n"])
    session = ort.InferenceSession(str(exported / "model.onnx"), providers=["CPUExecutionProvider"])
    _, label, radius = session.run(None, {"input": test.images.astype(np.float32) / 255.0})
    correct = label == test.labels
    assert manifest["metrics"]["clean_accuracy"] == pytest.approx(correct.mean())
    assert manifest["metrics"]["vra"]["0.3"] == pytest.approx((correct & (radius > 0.3)).mean())


def test_certify_reads_an_exported_version_and_measures_what_its_manifest_says(exported, mnist_dir):
    from models.certify import certify_checkpoint

    manifest = json.loads((exported / "gloro.json").read_text())
    metrics = manifest["metrics"]
    report = certify_checkpoint(exported, [0.3], str(mnist_dir), metrics["n"], None, "cpu")
    assert report["epochs"] == manifest["provenance"]["epochs"] and report["n"] == metrics["n"]
    # torch here, onnxruntime at export: one test point either way is the most float32 may move
    assert report["clean_accuracy"] == pytest.approx(metrics["clean_accuracy"], abs=1 / metrics["n"])
    assert report["sound"]["vra"]["0.3"] == pytest.approx(metrics["vra"]["0.3"], abs=1 / metrics["n"])


def test_torch_backend_gives_the_same_answers(exported, mnist_dir):
    from models.torch_backend import TorchPredictor

    x = data.load("mnist", mnist_dir, train=False).images[:256].astype(np.float32) / 255.0
    torch_out = TorchPredictor(exported, "cpu").run(x)
    session = ort.InferenceSession(str(exported / "model.onnx"), providers=["CPUExecutionProvider"])
    logits, label, radius = session.run(None, {"input": x})
    assert np.array_equal(torch_out["label"], label)
    np.testing.assert_allclose(torch_out["radius"], radius, rtol=1e-5, atol=1e-6)


def test_torch_backend_refuses_tensors_that_do_not_fit_the_manifest(exported, tmp_path):
    from safetensors.torch import load_file, save_file

    from models.torch_backend import TorchPredictor

    folder = tmp_path / "version"
    shutil.copytree(exported, folder)
    tensors = load_file(folder / "model.safetensors")
    del tensors["bias"]
    save_file(tensors, folder / "model.safetensors")
    with pytest.raises(checkpoint.CheckpointError, match=r"model\.safetensors does not fit architecture '2c2f'"):
        TorchPredictor(folder, "cpu")


def test_exporting_the_same_model_again_is_fine_but_a_different_one_is_refused(exported, trained_run, tmp_path):
    target = tmp_path / "m" / "1"
    shutil.copytree(exported, target)
    export_checkpoint(trained_run / "checkpoint", target, test_subset=1000)  # same weights: same file
    model, config, _ = checkpoint.load_model(trained_run / "checkpoint")
    with torch.no_grad():
        model.head.linear.bias.add_(1.0)
    before = {p.name: p.read_bytes() for p in target.iterdir()}
    with pytest.raises(ExportError, match="already holds a different model"):
        export_model(model, config, target, epochs=3, test_subset=1000)
    assert {p.name: p.read_bytes() for p in target.iterdir()} == before
    assert [p.name for p in target.parent.iterdir()] == ["1"]  # no temporary folder left behind


def test_a_model_with_an_unknown_layer_is_refused(trained_run, tmp_path):
    model, config, _ = checkpoint.load_model(trained_run / "checkpoint")
    model.body.layers.append(nn.Tanh())
    with pytest.raises(UnboundedLayerError, match="Tanh"):
        export_model(model, config, tmp_path / "bad" / "1", epochs=3, test_subset=100)
    assert not (tmp_path / "bad" / "1").exists()


def test_a_corrupt_checkpoint_is_refused_and_nothing_is_written(trained_run, tmp_path):
    broken = tmp_path / "ckpt"
    shutil.copytree(trained_run / "checkpoint", broken)
    raw = (broken / "model.safetensors").read_bytes()
    (broken / "model.safetensors").write_bytes(raw[: len(raw) // 2])
    with pytest.raises(checkpoint.CheckpointError, match="corrupt"):
        export_checkpoint(broken, tmp_path / "out" / "1")
    assert not (tmp_path / "out").exists()


def test_version_folder_must_be_a_positive_integer(trained_run, tmp_path):
    with pytest.raises(ExportError, match="positive integer"):
        export_checkpoint(trained_run / "checkpoint", tmp_path / "m" / "latest", test_subset=100)


def test_an_exported_version_re_exports_with_the_same_weights_bound_and_answers(exported, tmp_path):
    again = tmp_path / "tiny-2c2f" / "2"
    export_checkpoint(exported, again, test_subset=1000)
    first, second = (json.loads((v / "gloro.json").read_text()) for v in (exported, again))
    assert second["bound"]["body_lipschitz"] == first["bound"]["body_lipschitz"]
    assert second["metrics"] == first["metrics"]
    assert second["provenance"]["train_command"] == "pytest fixture"  # kept from the version, not "unknown"
    assert second["provenance"]["epochs"] == first["provenance"]["epochs"]
    before = {k: first["provenance"][k] for k in ("date", "code_version")} | {"sha256": first["onnx"]["sha256"]}
    assert second["provenance"]["earlier_exports"] == [before]
    assert f"Exported before (the same weights): {before['date']}" in (again / "README.md").read_text()
    x = np.random.default_rng(0).random((64, 1, 28, 28), dtype=np.float32)
    answers = [ort.InferenceSession(str(v / "model.onnx"), providers=["CPUExecutionProvider"]).run(None, {"input": x})
               for v in (exported, again)]
    for a, b in zip(*answers):
        np.testing.assert_array_equal(a, b)


def test_a_re_export_keeps_the_safety_factor_its_version_was_certified_with(exported, tmp_path):
    older = tmp_path / "old" / "tiny-2c2f" / "1"
    shutil.copytree(exported, older)
    manifest = json.loads((older / "gloro.json").read_text())
    manifest["bound"]["safety_factor"] = 1.001  # as versions exported before the factor became 1.005 say
    (older / "gloro.json").write_text(json.dumps(manifest))
    again = tmp_path / "new" / "tiny-2c2f" / "1"
    export_checkpoint(older, again, test_subset=1000)
    assert json.loads((again / "gloro.json").read_text())["bound"]["safety_factor"] == 1.001
    x = np.random.default_rng(1).random((64, 1, 28, 28), dtype=np.float32)
    radii = [ort.InferenceSession(str(v / "model.onnx"), providers=["CPUExecutionProvider"]).run(["radius"], {"input": x})[0]
             for v in (exported, again)]
    np.testing.assert_allclose(radii[1], radii[0] * SAFETY_FACTOR / 1.001, rtol=1e-5)


def test_certify_measures_a_version_under_the_safety_factor_it_was_exported_with(exported, tmp_path, mnist_dir):
    from models.certify import certify_checkpoint

    older = tmp_path / "tiny-2c2f" / "1"
    shutil.copytree(exported, older)
    manifest = json.loads((older / "gloro.json").read_text())
    manifest["bound"]["safety_factor"] = 1.001
    (older / "gloro.json").write_text(json.dumps(manifest))
    again = tmp_path / "tiny-2c2f" / "2"
    exported_metrics = export_checkpoint(older, again, test_subset=1000)["metrics"]
    report = certify_checkpoint(again, [0.3, 0.45], str(mnist_dir), 1000, None, "cpu")
    assert report["sound"]["safety_factor"] == 1.001
    for eps in ("0.3", "0.45"):  # torch here, onnxruntime at export: one test point at most
        assert report["sound"]["vra"][eps] == pytest.approx(exported_metrics["vra"][eps], abs=1 / 1000)


@pytest.mark.unit
def test_an_export_from_uncommitted_code_says_so(tmp_path: Path) -> None:
    """provenance.code_version names the commit, and marks a tree whose tracked files differ from
    it: the graph such code writes may be one that commit does not."""
    def git(*args: str) -> str:
        return subprocess.run(["git", "-c", "user.email=t@example.com", "-c", "user.name=t", *args], cwd=tmp_path,
                              check=True, capture_output=True, text=True).stdout.strip()

    git("init", "-q")
    (tmp_path / "layers.py").write_text("a = 1\n")
    git("add", "layers.py")
    git("commit", "-qm", "first")
    sha = git("rev-parse", "--short=7", "HEAD")
    assert _code_version(tmp_path) == sha
    (tmp_path / "layers.py").write_text("a = 2\n")
    assert _code_version(tmp_path) == f"{sha}-dirty"
