"""The CUDA path (torch backend): on a GPU it gives onnxruntime's answers, in process and through a real server.

Skipped where torch sees no CUDA device, as in CI; run these on a GPU machine.
"""

from __future__ import annotations

import sys
from pathlib import Path

import httpx
import numpy as np
import pytest

from server.backends import backend_factory
from server.backends.base import BatchOutput
from server.repository import load_repository
from server_support import ServerProcess, png_bytes

torch = pytest.importorskip("torch", reason="the torch backend needs the train extra")
pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device here")

SHIPPED = Path(__file__).resolve().parents[2] / "server" / "model_repository"


def answers_on_the_cpu(name: str, pixels: np.ndarray) -> BatchOutput:
    backend = backend_factory("onnxruntime", "cpu", 0)(load_repository(SHIPPED)[name])
    backend.load()
    return backend.run((pixels.astype(np.float32) / 255)[:, None])


@pytest.mark.integration
@pytest.mark.parametrize("name", ["mnist-2c2f", "mnist-4c3f"])
def test_torch_on_cuda_certifies_as_onnxruntime_does(name: str, mnist_test) -> None:
    """Same labels, radii within float32 rounding: the safety factor assumes IEEE float32 arithmetic, not TF32."""
    pixels = mnist_test[0]
    gpu = backend_factory("torch", "cuda", 0)(load_repository(SHIPPED)[name])
    assert not gpu.on_gpu  # known once loaded
    gpu.load()
    assert gpu._predictor.device.type == "cuda" and gpu.on_gpu
    on_gpu, on_cpu = gpu.run((pixels.astype(np.float32) / 255)[:, None]), answers_on_the_cpu(name, pixels)
    assert on_gpu.label.tolist() == on_cpu.label.tolist()
    assert np.allclose(on_gpu.radius, on_cpu.radius, rtol=1e-4, atol=1e-5)


@pytest.mark.e2e
def test_a_server_on_cuda_answers_real_pngs_as_the_cpu_does(mnist_test) -> None:
    images, labels = mnist_test
    args = ["--repository", str(SHIPPED), "--default-model", "mnist-4c3f", "--backend", "torch", "--device", "cuda"]
    with ServerProcess(args, argv=[sys.executable, "-m", "server", "serve"]) as process:
        files = [("files", (f"{i}.png", png_bytes(im), "image/png")) for i, im in enumerate(images[:100])]
        response = httpx.post(process.url + "/v1/predict", files=files, timeout=60)
        config = httpx.get(process.url + "/v2/models/mnist-4c3f/config").json()
    assert response.status_code == 200, response.text
    assert config["instance_group"][0]["kind"] == "KIND_GPU"  # Triton's tools read where it runs
    predictions = response.json()["predictions"]
    expected = answers_on_the_cpu("mnist-4c3f", images[:100])
    assert [p["label"] for p in predictions] == expected.label.tolist()
    assert np.allclose([p["radius"] for p in predictions], expected.radius, rtol=1e-4, atol=1e-5)
    assert all(p["certified"] == (p["radius"] > 1.58) for p in predictions)
    assert sum(p["label"] == y for p, y in zip(predictions, labels[:100])) >= 90


@pytest.mark.integration
@pytest.mark.parametrize("cuda_wait", ["spin", "block"])
def test_captured_cuda_graphs_answer_as_onnxruntime_at_every_batch_size(mnist_test, cuda_wait: str) -> None:
    """Batches run as CUDA graphs padded to a bucket (larger ones eagerly): a smaller batch after a
    larger one must not see the rows the larger one left in the buffers, and however the batch
    thread waits for the GPU, it reads the outputs only once they are there."""
    from models.torch_backend import GRAPH_BUCKETS

    gpu = backend_factory("torch", "cuda", 0, cuda_wait=cuda_wait)(load_repository(SHIPPED)["mnist-4c3f"])
    gpu.load()
    assert sorted(gpu._predictor._graphs) == list(GRAPH_BUCKETS)
    for n in (64, 3, 1, 200, 300):
        pixels = mnist_test[0][1000: 1000 + n]
        on_gpu, on_cpu = gpu.run((pixels.astype(np.float32) / 255)[:, None]), answers_on_the_cpu("mnist-4c3f", pixels)
        assert on_gpu.label.tolist() == on_cpu.label.tolist(), n
        assert np.allclose(on_gpu.radius, on_cpu.radius, rtol=1e-4, atol=1e-5), n
        assert np.allclose(on_gpu.logits, on_cpu.logits, rtol=1e-4, atol=1e-4), n


@pytest.mark.integration
def test_a_blocking_wait_sleeps_until_the_gpu_is_done() -> None:
    """--cuda-wait block: the waiting thread returns only when the stream's work is done, and leaves
    its core free meanwhile (a spinning wait would use about all of it)."""
    import time

    from models.torch_backend import device_wait

    device = torch.device("cuda")
    wait = device_wait(device, "block")
    torch.cuda._sleep(1)  # the context and the kernel loaded before anything is timed
    torch.cuda.synchronize()
    started, cpu_started = time.perf_counter(), time.thread_time()
    torch.cuda._sleep(500_000_000)  # GPU clock cycles: a few hundred ms of GPU time, no CPU time
    wait()
    wall, cpu = time.perf_counter() - started, time.thread_time() - cpu_started
    assert torch.cuda.current_stream(device).query()  # nothing left queued
    assert wall > 0.05, wall  # the kernel really ran while we waited
    assert cpu < 0.5 * wall, (cpu, wall)
