"""End to end: real uvicorn processes (torch import blocked), real PNGs, real tritonclient."""

from __future__ import annotations

import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import tritonclient.http as triton

from server_support import TESTS, ServerProcess, burst, histogram_buckets, png_bytes, promtool_check_metrics

pytestmark = pytest.mark.e2e

SHIPPED = Path(__file__).resolve().parents[2] / "server" / "model_repository" / "mnist-2c2f" / "1" / "gloro.json"
PNG = {"Content-Type": "image/png"}


@pytest.fixture(scope="module")
def server(tiny_repo: Path):
    with ServerProcess(["--repository", str(tiny_repo), "--default-model", "tiny",
                        "--max-batch-size", "16", "--max-delay-ms", "5"]) as process:
        yield process
    assert process.process.returncode == 0, process.output()


def test_serves_without_torch_and_answers_a_png(server, mnist_test) -> None:
    import httpx

    images, labels = mnist_test
    r = httpx.post(server.url + "/v1/predict", content=png_bytes(images[0]), headers=PNG)
    assert r.status_code == 200
    p = r.json()["predictions"][0]
    assert p["label"] == labels[0] and isinstance(p["certified"], bool) and p["radius"] > 0


def test_tritonclient_defaults_match_the_image_api(server, mnist_test) -> None:
    import httpx

    images, _ = mnist_test
    client = triton.InferenceServerClient(server.url.removeprefix("http://"))
    assert client.is_server_live() and client.is_server_ready() and client.is_model_ready("tiny")
    meta = client.get_model_metadata("tiny")
    assert meta["inputs"][0]["shape"] == [-1, 1, 28, 28]
    x = (images[:8].astype(np.float32) / 255).reshape(8, 1, 28, 28)
    tensor = triton.InferInput("input", list(x.shape), "FP32")
    tensor.set_data_from_numpy(x)  # binary by default
    result = client.infer("tiny", [tensor], parameters={"epsilon": 0.1})
    files = [("files", (f"{i}.png", png_bytes(im), "image/png")) for i, im in enumerate(images[:8])]
    image_api = httpx.post(server.url + "/v1/models/tiny/predict?epsilon=0.1", files=files).json()["predictions"]
    assert result.as_numpy("label").tolist() == [p["label"] for p in image_api]
    assert result.as_numpy("certified").tolist() == [p["certified"] for p in image_api]
    assert np.allclose(result.as_numpy("radius"), [p["radius"] for p in image_api], rtol=1e-6)
    assert result.as_numpy("logits").shape == (8, 10)
    # explicit outputs, one in JSON and one binary
    outputs = [triton.InferRequestedOutput("label", binary_data=False), triton.InferRequestedOutput("radius")]
    again = client.infer("tiny", [tensor], outputs=outputs)
    assert again.as_numpy("label").tolist() == result.as_numpy("label").tolist()
    with pytest.raises(triton.InferenceServerException, match="not served"):
        client.infer("nope", [tensor])


@pytest.mark.parametrize("binary", [True, False])
def test_tritonclient_classification_gives_the_top_logits_highest_first(server, mnist_test, binary) -> None:
    x = (mnist_test[0][:5].astype(np.float32) / 255).reshape(5, 1, 28, 28)
    tensor = triton.InferInput("input", list(x.shape), "FP32")
    tensor.set_data_from_numpy(x)
    client = triton.InferenceServerClient(server.url.removeprefix("http://"))
    logits = client.infer("tiny", [tensor]).as_numpy("logits")
    classes = client.get_model_metadata("tiny")["parameters"]["classes"]
    asked = [triton.InferRequestedOutput("logits", binary_data=binary, class_count=2)]
    top = client.infer("tiny", [tensor], outputs=asked).as_numpy("logits")
    assert top.shape == (5, 2)
    for row, scores in zip(top, logits):
        entries = [(e.decode() if isinstance(e, bytes) else e).split(":") for e in row]
        order = np.argsort(-scores, kind="stable")[:2].tolist()
        assert [int(index) for _, index, _ in entries] == order
        assert [name for _, _, name in entries] == [classes[i] for i in order]
        assert [float(value) for value, _, _ in entries] == pytest.approx(scores[order].tolist(), abs=1e-6)


@pytest.mark.parametrize("compression", ["gzip", "deflate"])
def test_tritonclient_compressed_requests_get_the_answers_of_plain_ones(server, mnist_test, compression) -> None:
    client = triton.InferenceServerClient(server.url.removeprefix("http://"))
    x = (mnist_test[0][:8].astype(np.float32) / 255).reshape(8, 1, 28, 28)
    tensor = triton.InferInput("input", list(x.shape), "FP32")
    tensor.set_data_from_numpy(x)
    plain = client.infer("tiny", [tensor])
    compressed = client.infer("tiny", [tensor], request_compression_algorithm=compression)
    later = client.async_infer("tiny", [tensor], request_compression_algorithm=compression).get_result()
    for name in ("label", "certified", "radius", "logits"):
        assert compressed.as_numpy(name).tolist() == plain.as_numpy(name).tolist(), name
        assert later.as_numpy(name).tolist() == plain.as_numpy(name).tolist(), name


def batches(process: ServerProcess) -> tuple[float, float]:
    """(forward passes, forward passes of exactly one image) so far."""
    buckets = histogram_buckets(process.metrics(), "gloro_batch_size", "tiny")
    return buckets[float("inf")], buckets[1.0]


def test_concurrent_load_is_batched(server, mnist_test) -> None:
    total0, ones0 = batches(server)
    answers = burst(server.url + "/v1/predict", 256, content=png_bytes(mnist_test[0][1]), headers=PNG)
    assert all(not isinstance(a, Exception) and a.status_code == 200 for a in answers)
    total, ones = batches(server)
    assert total - total0 < 256  # fewer forward passes than requests
    assert (total - total0) - (ones - ones0) > 0  # some pass held more than one image


def test_metrics_pass_promtool(server, mnist_test) -> None:
    import httpx

    assert httpx.post(server.url + "/v1/predict", content=png_bytes(mnist_test[0][3]), headers=PNG).status_code == 200
    promtool_check_metrics(server.metrics())


def test_max_batch_size_one_never_batches(tiny_repo: Path, mnist_test) -> None:
    with ServerProcess(["--repository", str(tiny_repo), "--default-model", "tiny", "--max-batch-size", "1",
                        "--max-delay-ms", "5"]) as process:
        answers = burst(process.url + "/v1/predict", 128, content=png_bytes(mnist_test[0][1]), headers=PNG)
        assert all(a.status_code == 200 for a in answers)
        total, ones = batches(process)
        assert total == ones == 128  # one pass per request (warm-up runs outside the batcher)


def test_overload_sheds_with_503_and_recovers(tiny_repo: Path, mnist_test) -> None:
    args = [str(TESTS / "fault_server.py"), "--delay-ms", "40", "--repository", str(tiny_repo),
            "--default-model", "tiny", "--max-batch-size", "1", "--max-queue", "4"]
    with ServerProcess(argv=[sys.executable, *args]) as process:
        png = png_bytes(mnist_test[0][2])
        answers = burst(process.url + "/v1/predict", 40, content=png, headers=PNG)  # ten times the queue
        codes = [a.status_code for a in answers]
        assert set(codes) <= {200, 503} and codes.count(503) > 0 and codes.count(200) >= 4
        for a in answers:
            if a.status_code == 503:
                assert a.headers["Retry-After"] == "1" and "overloaded" in a.json()["error"]
        after = burst(process.url + "/v1/predict", 4, concurrency=1, content=png, headers=PNG)
        assert [a.status_code for a in after] == [200] * 4
        assert 'gloro_queue_depth{model="tiny"} 0.0' in process.metrics()


def test_a_one_image_request_is_not_held_behind_a_large_one(tiny_repo: Path, mnist_test) -> None:
    import httpx

    args = [str(TESTS / "fault_server.py"), "--delay-ms", "20", "--repository", str(tiny_repo),
            "--default-model", "tiny", "--max-batch-size", "16"]
    images, labels = mnist_test
    files = [("files", (f"{i}.png", png_bytes(images[i % 64]), "image/png")) for i in range(512)]

    def post(**request: object) -> tuple[httpx.Response, float]:
        answer = httpx.post(process.url + "/v1/predict", timeout=60, **request)
        return answer, time.monotonic()

    with ServerProcess(argv=[sys.executable, *args]) as process, ThreadPoolExecutor(1) as pool:
        large = pool.submit(post, files=files)  # 32 batches of 20 ms or more
        time.sleep(0.1)  # decoding it, or running its first batches
        small, small_answered = post(content=png_bytes(images[0]), headers=PNG)
        (large_answer, large_answered), expected = large.result(), post(files=files[:64])[0].json()
    assert small.status_code == 200 and small.json()["predictions"][0]["label"] == labels[0]
    assert small_answered < large_answered  # sent later, answered first: the two shared the batches
    assert large_answer.status_code == 200
    assert large_answer.json()["predictions"] == expected["predictions"] * 8


@pytest.mark.skipif(not SHIPPED.is_file(), reason="the models team has not shipped server/model_repository/mnist-2c2f yet")
def test_bare_gloro_serve_answers_a_real_mnist_image(mnist_test) -> None:
    import httpx
    import shutil

    command = shutil.which("gloro-serve")
    assert command, "install the project (pip install -e .) for the gloro-serve command"
    images, labels = mnist_test
    with ServerProcess(argv=[command]) as process:
        r = httpx.post(process.url + "/v1/predict", content=png_bytes(images[0]), headers=PNG)
        assert r.status_code == 200
        body = r.json()
        assert body["model"] == "mnist-2c2f" and body["epsilon"] == pytest.approx(0.3)
        p = body["predictions"][0]
        assert p["label"] == labels[0] and p["certified"] is True and p["radius"] > 0.3
        # most of the first 100 test digits are right and certified at 0.3
        files = [("files", (f"{i}.png", png_bytes(im), "image/png")) for i, im in enumerate(images[:100])]
        predictions = httpx.post(process.url + "/v1/predict", files=files, timeout=30).json()["predictions"]
        right = sum(p["label"] == y for p, y in zip(predictions, labels[:100]))
        vra = sum(p["label"] == y and p["certified"] for p, y in zip(predictions, labels[:100]))
        assert right >= 95 and vra >= 85
