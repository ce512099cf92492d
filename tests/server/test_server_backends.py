"""Backends: onnxruntime against a float64 reference, the model contract, CUDA and torch paths."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from server.backends import BackendError, backend_factory
from server.backends.ort import OnnxRuntimeBackend
from server.cli import main
from server.repository import load_repository, load_version, sha256_file
from tiny_model import reference, write_model

SHIPPED = Path(__file__).resolve().parents[2] / "server" / "model_repository" / "mnist-2c2f"
HAS_CUDA_PROVIDER = "CUDAExecutionProvider" in ort.get_available_providers()


def mnist_batch(mnist_test, n: int = 64) -> np.ndarray:
    return (mnist_test[0][:n].astype(np.float32) / 255).reshape(n, 1, 28, 28)


@pytest.mark.unit
def test_onnxruntime_matches_the_float64_reference(tiny_repo: Path, mnist_test, linear_weights) -> None:
    backend = OnnxRuntimeBackend(load_repository(tiny_repo)["tiny"], "cpu")
    backend.load()
    backend.warm_up(8)
    x = mnist_batch(mnist_test)
    out = backend.run(x)
    logits, label, radius = reference(x, *linear_weights)
    assert out.label.tolist() == label.tolist()
    assert np.allclose(out.radius, radius, rtol=1e-4, atol=1e-6)
    assert np.allclose(out.logits, logits, atol=1e-4)


@pytest.mark.unit
def test_a_graph_that_breaks_the_contract_is_refused(tmp_path: Path) -> None:
    folder = write_model(tmp_path, "tiny", "1")
    import onnx

    model = onnx.load(folder / "model.onnx")
    model.graph.output[2].name = "margin"  # rename the `radius` output
    model.graph.node[-1].output[0] = "margin"
    onnx.save(model, folder / "model.onnx")
    manifest = json.loads((folder / "gloro.json").read_text())
    manifest["onnx"]["sha256"] = sha256_file(folder / "model.onnx")
    (folder / "gloro.json").write_text(json.dumps(manifest))
    backend = OnnxRuntimeBackend(load_version(tmp_path.resolve(), "tiny", "1"), "cpu")
    with pytest.raises(BackendError, match=r"outputs \['radius'\] are missing"):
        backend.load()


@pytest.mark.unit
def test_a_model_that_cannot_load_is_refused_at_start_in_one_line(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A graph onnxruntime cannot parse, with a manifest whose sha256 vouches for it anyway."""
    folder = write_model(tmp_path, "tiny", "1")
    (folder / "model.onnx").write_bytes(b"not an onnx graph")
    manifest = json.loads((folder / "gloro.json").read_text())
    manifest["onnx"]["sha256"] = sha256_file(folder / "model.onnx")
    (folder / "gloro.json").write_text(json.dumps(manifest))
    assert main(["--repository", str(tmp_path), "--port", "0"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("gloro-serve: error: cannot serve:") and "onnxruntime cannot load it" in err
    assert len(err.splitlines()) == 1


@pytest.mark.integration
@pytest.mark.parametrize(("damage", "match"), [
    ("truncate", r"model\.safetensors is corrupt"),
    ("drop the provenance", "no usable training provenance"),
])
def test_torch_backend_refuses_a_version_it_cannot_read_in_one_line(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], damage: str, match: str) -> None:
    pytest.importorskip("torch", reason="the torch backend needs the train extra")
    folder = tmp_path / "mnist-2c2f" / "1"
    shutil.copytree(SHIPPED / "1", folder)
    if damage == "truncate":
        weights = folder / "model.safetensors"
        weights.write_bytes(weights.read_bytes()[:1000])
        manifest = json.loads((folder / "gloro.json").read_text())
        manifest["safetensors"]["sha256"] = sha256_file(weights)  # past the hash check, to the reader
        (folder / "gloro.json").write_text(json.dumps(manifest))
    else:
        manifest = json.loads((folder / "gloro.json").read_text())
        del manifest["provenance"]
        (folder / "gloro.json").write_text(json.dumps(manifest))
    assert main(["--repository", str(tmp_path), "--backend", "torch", "--device", "cpu", "--port", "0"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("gloro-serve: error: cannot serve: torch backend cannot load mnist-2c2f:")
    assert re.search(match, err) and len(err.splitlines()) == 1


@pytest.mark.unit
@pytest.mark.skipif(HAS_CUDA_PROVIDER, reason="this machine has the CUDA provider")
def test_cuda_without_a_provider_is_refused_at_start(tiny_repo: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--repository", str(tiny_repo), "--default-model", "tiny", "--device", "cuda"]) == 2
    assert "onnxruntime has no CUDA provider" in capsys.readouterr().err


@pytest.mark.unit
@pytest.mark.skipif(HAS_CUDA_PROVIDER, reason="a real CUDA provider is installed here")
@pytest.mark.filterwarnings("ignore:Specified provider 'CUDAExecutionProvider':UserWarning")  # the premise
def test_cuda_that_quietly_falls_back_to_the_cpu_is_refused(tiny_repo: Path, monkeypatch) -> None:
    """With the CUDA provider present but unusable, onnxruntime would run on the CPU without a word."""
    monkeypatch.setattr(ort, "get_available_providers", lambda: ["CUDAExecutionProvider", "CPUExecutionProvider"])
    backend = OnnxRuntimeBackend(load_repository(tiny_repo)["tiny"], "cuda")
    with pytest.raises(BackendError, match="runs tiny on CPUExecutionProvider"):
        backend.load()


@pytest.mark.integration
@pytest.mark.skipif(not HAS_CUDA_PROVIDER, reason="no onnxruntime CUDA provider (onnxruntime-gpu and a GPU) here")
def test_onnxruntime_cuda_matches_cpu(tiny_repo: Path, mnist_test) -> None:
    spec = load_repository(tiny_repo)["tiny"]
    cpu, cuda = OnnxRuntimeBackend(spec, "cpu"), OnnxRuntimeBackend(spec, "cuda")
    cpu.load()
    cuda.load()
    x = mnist_batch(mnist_test)
    a, b = cpu.run(x), cuda.run(x)
    assert a.label.tolist() == b.label.tolist() and np.allclose(a.radius, b.radius, rtol=1e-4)


@pytest.mark.integration
@pytest.mark.skipif(not (SHIPPED / "1" / "model.safetensors").is_file(),
                    reason="the torch backend reads model.safetensors of the shipped model, not shipped yet")
def test_torch_backend_gives_the_onnxruntime_answers(mnist_test) -> None:
    pytest.importorskip("torch", reason="the torch backend needs the train extra")
    spec = load_repository(SHIPPED.parent)["mnist-2c2f"]
    onnx_backend = backend_factory("onnxruntime", "cpu", 0)(spec)
    torch_backend = backend_factory("torch", "auto", 0)(spec)
    onnx_backend.load()
    torch_backend.load()
    x = mnist_batch(mnist_test)
    a, b = onnx_backend.run(x), torch_backend.run(x)
    assert a.label.tolist() == b.label.tolist()
    assert np.allclose(a.radius, b.radius, rtol=1e-3, atol=1e-5)


@pytest.mark.integration
def test_the_cuda_wait_setting_reaches_the_torch_backend(tiny_repo: Path) -> None:
    pytest.importorskip("torch", reason="the torch backend needs the train extra")
    from server.app import create_app
    from server.settings import ServerSettings

    app = create_app(ServerSettings(repository=tiny_repo, backend="torch", device="cpu", cuda_wait="block"))
    backend = app.state.models.services["tiny"].backend
    assert type(backend).__name__ == "TorchBackend" and backend.cuda_wait == "block"


@pytest.mark.integration
@pytest.mark.parametrize(("spin_us", "allow", "duration"), [(250, "1", "250"), (0, "0", None)])
def test_the_spin_setting_reaches_the_onnxruntime_session(tiny_repo: Path, spin_us: int, allow: str,
                                                          duration: str | None) -> None:
    """--spin-us: onnxruntime's intra-op threads spin that long for more work, or (0) never."""
    from server.app import create_app
    from server.settings import ServerSettings

    app = create_app(ServerSettings(repository=tiny_repo, spin_us=spin_us))
    backend = app.state.models.services["tiny"].backend
    backend.load()
    options = backend._session.get_session_options()
    assert options.get_session_config_entry("session.intra_op.allow_spinning") == allow
    if duration is None:  # never spinning: no duration is set at all
        with pytest.raises(RuntimeError, match="does not have configuration"):
            options.get_session_config_entry("session.intra_op.spin_duration_us")
    else:
        assert options.get_session_config_entry("session.intra_op.spin_duration_us") == duration


@pytest.mark.integration
@pytest.mark.parametrize("spoil", ["edited weights", "manifest without their hash"])
def test_the_torch_backend_serves_only_the_weights_that_were_exported(tmp_path: Path, spoil: str) -> None:
    """model.onnx is checked against its sha256 at start; the torch backend reads model.safetensors
    instead, so it is checked the same way before torch reads it."""
    pytest.importorskip("torch", reason="the torch backend needs the train extra")
    version = tmp_path / "mnist-2c2f" / "1"
    shutil.copytree(SHIPPED / "1", version)
    if spoil == "edited weights":
        data = bytearray((version / "model.safetensors").read_bytes())
        data[-1] ^= 1
        (version / "model.safetensors").write_bytes(bytes(data))
        needle = r"model\.safetensors: sha256 [0-9a-f]{64} does not match the manifest's"
    else:
        manifest = json.loads((version / "gloro.json").read_text())
        del manifest["safetensors"]
        (version / "gloro.json").write_text(json.dumps(manifest))
        needle = "lists no safetensors file with its sha256.*re-export the version"
    backend = backend_factory("torch", "cpu", 0)(load_repository(tmp_path)["mnist-2c2f"])
    with pytest.raises(BackendError, match="torch backend cannot load mnist-2c2f: .*" + needle):
        backend.load()
