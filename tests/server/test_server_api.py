"""The image API and the v2 protocol, in process (real onnxruntime on the tiny model)."""

from __future__ import annotations

import base64
import json
import time
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from prometheus_client import CollectorRegistry

from conftest import make_settings
from server.app import create_app
from server_support import png_bytes
from tiny_model import reference

pytestmark = pytest.mark.integration


def expected(images: np.ndarray, weights) -> tuple[list[int], np.ndarray]:
    _, label, radius = reference(images.astype(np.float64) / 255, *weights)
    return label.tolist(), radius


def test_raw_png_answers_class_certificate_radius_and_eps(client, mnist_test, linear_weights) -> None:
    images, labels = mnist_test
    r = client.post("/v1/predict", content=png_bytes(images[0]), headers={"Content-Type": "image/png"})
    assert r.status_code == 200
    body = r.json()
    label, radius = expected(images[:1], linear_weights)
    assert body["model"] == "tiny" and body["version"] == "2" and body["epsilon"] == 0.3
    (p,) = body["predictions"]
    assert p["label"] == label[0] == labels[0] and p["class_name"] == str(labels[0])
    assert p["radius"] == pytest.approx(radius[0], rel=1e-4)
    assert p["certified"] == (p["radius"] > 0.3)
    assert "logits" not in p


def test_multipart_many_files_in_order_with_form_eps(client, mnist_test, linear_weights) -> None:
    images, _ = mnist_test
    files = [("files", (f"{i}.png", png_bytes(images[i]), "image/png")) for i in range(12)]
    r = client.post("/v1/models/tiny/predict", files=files, data={"epsilon": "0.05", "return_logits": "true"})
    assert r.status_code == 200, r.text
    body = r.json()
    label, radius = expected(images[:12], linear_weights)
    assert [p["label"] for p in body["predictions"]] == label
    assert body["epsilon"] == 0.05
    assert [p["certified"] for p in body["predictions"]] == (radius > 0.05).tolist()
    assert len(body["predictions"][0]["logits"]) == 10
    # mostly right: the fitted linear model is a real (weak) classifier
    assert sum(p["label"] == y for p, y in zip(body["predictions"], mnist_test[1][:12])) >= 9


def test_json_base64_and_pixel_arrays_agree(client, mnist_test) -> None:
    images, _ = mnist_test
    b64 = {"instances": [{"b64": base64.b64encode(png_bytes(im)).decode()} for im in images[:3]], "epsilon": 0.1}
    pixels = {"instances": (images[:3] / 255).tolist(), "epsilon": 0.1}
    grey2d = {"instances": [(images[0] / 255).tolist()], "return_logits": True}
    a, b = client.post("/v1/predict", json=b64).json(), client.post("/v1/predict", json=pixels).json()
    assert a == b and a["epsilon"] == 0.1
    assert "logits" in client.post("/v1/predict", json=grey2d).json()["predictions"][0]


def test_json_bodies_of_numbers_agree_with_images_and_binary_tensors(client, mnist_test) -> None:
    images = mnist_test[0][:64]
    pixels = {"instances": (images / 255).tolist()}
    b64 = {"instances": [{"b64": base64.b64encode(png_bytes(im)).decode()} for im in images]}
    x = (images / 255).astype(np.float32)
    outputs = [{"name": "label"}, {"name": "radius"}]
    v2_json = {"inputs": [{"name": "input", "shape": [64, 1, 28, 28], "datatype": "FP32", "data": x.ravel().tolist()}],
               "outputs": outputs}
    answer = client.post("/v1/predict", json=pixels)
    assert answer.status_code == 200 and answer.json() == client.post("/v1/predict", json=b64).json()
    body, headers = v2_binary(images, outputs=outputs)
    binary, by_json = client.post("/v2/models/tiny/infer", content=body, headers=headers), \
        client.post("/v2/models/tiny/infer", json=v2_json)
    assert by_json.status_code == 200 and by_json.json()["outputs"] == binary.json()["outputs"]
    assert len(by_json.json()["outputs"][0]["data"]) == 64


def test_query_eps_and_model_default(client, mnist_test) -> None:
    png = png_bytes(mnist_test[0][0])
    r0 = client.post("/v1/predict?epsilon=0", content=png, headers={"Content-Type": "image/png"}).json()
    assert r0["epsilon"] == 0 and r0["predictions"][0]["certified"] is True
    big = client.post("/v1/predict?epsilon=100", content=png, headers={"Content-Type": "image/png"}).json()
    assert big["predictions"][0]["certified"] is False


def test_rgb_model_converts_grey_images(client) -> None:
    grey = png_bytes(np.full((8, 8), 128, np.uint8))
    r = client.post("/v1/models/tiny-rgb/predict", content=grey, headers={"Content-Type": "image/png"})
    assert r.status_code == 200 and r.json()["model"] == "tiny-rgb"


def test_model_listing_shows_manifest_facts(client) -> None:
    models = {m["name"]: m for m in client.get("/v1/models").json()["models"]}
    assert set(models) == {"tiny", "tiny-rgb"}
    tiny = client.get("/v1/models/tiny").json()
    assert tiny == models["tiny"]
    assert tiny["version"] == "2" and tiny["epsilon"] == 0.3 and tiny["classes"][3] == "3"
    assert tiny["input"] == {"shape": [1, 28, 28], "color_mode": "L", "range": [0.0, 1.0]}
    assert tiny["ready"] is True and "metrics" in tiny


def v2_binary(images: np.ndarray, outputs: list[dict] | None = None, parameters: dict | None = None):
    blob = (images.astype(np.float32) / 255).reshape(len(images), 1, 28, 28).tobytes()
    header = {"inputs": [{"name": "input", "shape": [len(images), 1, 28, 28], "datatype": "FP32",
                          "parameters": {"binary_data_size": len(blob)}}]}
    if outputs is not None:
        header["outputs"] = outputs
    if parameters is not None:
        header["parameters"] = parameters
    head = json.dumps(header).encode()
    return head + blob, {"Inference-Header-Content-Length": str(len(head)), "Content-Type": "application/octet-stream"}


def test_v2_binary_in_binary_out(client, mnist_test, linear_weights) -> None:
    images, _ = mnist_test
    body, headers = v2_binary(images[:5], parameters={"binary_data_output": True, "epsilon": 0.05})
    r = client.post("/v2/models/tiny/infer", content=body, headers=headers)
    assert r.status_code == 200, r.text
    n = int(r.headers["inference-header-content-length"])
    header = json.loads(r.content[:n])
    assert header["model_name"] == "tiny" and header["parameters"] == {"epsilon": 0.05}
    offset, tensors = n, {}
    dtypes = {"INT64": "<i8", "BOOL": "|b1", "FP32": "<f4"}
    for out in header["outputs"]:
        size = out["parameters"]["binary_data_size"]
        tensors[out["name"]] = np.frombuffer(r.content[offset : offset + size], dtypes[out["datatype"]]).reshape(out["shape"])
        offset += size
    assert offset == len(r.content)
    label, radius = expected(images[:5], linear_weights)
    assert tensors["label"].tolist() == label
    assert np.allclose(tensors["radius"], radius, rtol=1e-4)
    assert tensors["certified"].tolist() == (tensors["radius"] > 0.05).tolist()
    assert tensors["logits"].shape == (5, 10)


def test_v2_json_and_selected_outputs(client, mnist_test) -> None:
    x = (mnist_test[0][:2] / 255).astype(np.float32)
    request = {"id": "abc", "inputs": [{"name": "input", "shape": [2, 1, 28, 28], "datatype": "FP32", "data": x.ravel().tolist()}],
               "outputs": [{"name": "certified"}, {"name": "label"}]}
    r = client.post("/v2/models/tiny/versions/2/infer", json=request)
    assert r.status_code == 200
    body = r.json()
    assert body["id"] == "abc" and [o["name"] for o in body["outputs"]] == ["certified", "label"]
    assert body["outputs"][0]["datatype"] == "BOOL" and len(body["outputs"][1]["data"]) == 2
    assert client.post("/v2/models/tiny/versions/1/infer", json=request).status_code == 404


def test_v2_metadata_and_health(client) -> None:
    assert client.get("/v2").json()["extensions"] == ["binary_tensor_data", "classification", "model_configuration",
                                                      "statistics"]
    meta = client.get("/v2/models/tiny").json()
    assert meta["inputs"] == [{"name": "input", "datatype": "FP32", "shape": [-1, 1, 28, 28]}]
    assert {o["name"]: o["datatype"] for o in meta["outputs"]} == {
        "label": "INT64", "certified": "BOOL", "radius": "FP32", "logits": "FP32"}
    assert client.get("/v2/models/tiny/versions/2").status_code == 200
    for path in ("/healthz", "/readyz", "/v2/health/live", "/v2/health/ready", "/v2/models/tiny/ready"):
        assert client.get(path).status_code == 200, path
    # the protocol's bodies, which KServe's client reads (tritonclient looks at the status only)
    assert client.get("/v2/health/live").json()["live"] is True
    assert client.get("/v2/health/ready").json()["ready"] is True
    assert client.get("/v2/models/tiny/ready").json()["ready"] is True


def test_v2_model_config_is_tritons_with_the_servers_batching(tiny_repo: Path) -> None:
    settings = make_settings(tiny_repo, max_batch_size=8, max_delay_ms=3.0, max_queue=40, instances=2)
    with TestClient(create_app(settings, registry=CollectorRegistry())) as client:
        config = client.get("/v2/models/tiny/config").json()
        assert client.get("/v2/models/tiny/versions/2/config").json() == config
        rgb = client.get("/v2/models/tiny-rgb/config").json()
        missing = [client.get(path) for path in ("/v2/models/nope/config", "/v2/models/tiny/versions/1/config")]
    assert config["name"] == "tiny" and config["max_batch_size"] == 8
    assert config["platform"] == "gloro_OnnxRuntimeBackend" and config["version_policy"] == {"specific": {"versions": [2]}}
    # with max_batch_size > 0 the dims leave out the batch axis, and a number an image is [1] reshaped to []
    assert config["input"] == [{"name": "input", "data_type": "TYPE_FP32", "format": "FORMAT_NONE", "dims": [1, 28, 28]}]
    assert rgb["input"][0]["dims"] == [3, 8, 8]
    outputs = {o["name"]: o for o in config["output"]}
    assert outputs["label"] == {"name": "label", "data_type": "TYPE_INT64", "dims": [1], "reshape": {"shape": []}}
    assert outputs["certified"]["data_type"] == "TYPE_BOOL" and outputs["radius"]["data_type"] == "TYPE_FP32"
    assert outputs["logits"] == {"name": "logits", "data_type": "TYPE_FP32", "dims": [10]}
    batching = config["dynamic_batching"]
    assert batching["max_queue_delay_microseconds"] == 3000
    assert batching["default_queue_policy"]["max_queue_size"] == 40
    assert config["instance_group"] == [{"name": "tiny_0", "kind": "KIND_CPU", "count": 2}]
    assert float(config["parameters"]["epsilon"]["string_value"]) == 0.3
    assert json.loads(config["parameters"]["classes"]["string_value"]) == [str(i) for i in range(10)]
    assert [r.status_code for r in missing] == [404, 404]


def test_v2_statistics_count_requests_images_batches_and_failures(client, mnist_test) -> None:
    def stats(path: str = "/v2/models/tiny/stats") -> dict:
        r = client.get(path)
        assert r.status_code == 200, r.text
        return r.json()["model_stats"]

    (before,) = stats()
    assert before["name"] == "tiny" and before["version"] == "2" and before["inference_count"] == 0
    assert before["last_inference"] == 0 and before["batch_stats"] == []
    images = mnist_test[0]
    body, headers = v2_binary(images[:5])
    assert client.post("/v2/models/tiny/infer", content=body, headers=headers).status_code == 200
    png = {"Content-Type": "image/png"}
    assert client.post("/v1/predict", content=png_bytes(images[5]), headers=png).status_code == 200
    assert client.post("/v1/predict", content=b"not a png", headers=png).status_code == 422
    (after,) = stats()
    assert after == stats("/v2/models/tiny/versions/2/stats")[0]
    inference = after["inference_stats"]
    assert after["inference_count"] == 6  # images
    assert 1 <= after["execution_count"] <= 2  # forward passes
    assert inference["success"]["count"] == 2 and inference["success"]["ns"] > 0
    assert inference["fail"]["count"] == 1 and inference["fail"]["ns"] > 0
    # the two that reached the model, each with its queue wait and its batch's forward pass
    assert inference["queue"]["count"] == inference["compute_infer"]["count"] == 2
    assert inference["compute_input"]["count"] == inference["compute_output"]["count"] == 2
    assert 0 < inference["compute_infer"]["ns"] < inference["success"]["ns"]
    assert inference["cache_hit"] == inference["cache_miss"] == {"count": 0, "ns": 0}
    assert time.time() - 60 < after["last_inference"] / 1000 <= time.time()
    everything = {s["name"]: s for s in stats("/v2/models/stats")}
    assert set(everything) == {"tiny", "tiny-rgb"} and everything["tiny"] == after
    assert everything["tiny-rgb"]["inference_count"] == 0
    assert client.get("/v2/models/nope/stats").status_code == 404
    assert client.get("/v2/models/tiny/versions/1/stats").status_code == 404


def test_v2_statistics_leave_a_failed_batch_out_of_the_work_done(tiny_repo: Path) -> None:
    """As Triton counts: a batch whose model raised fails its requests (500) and adds no queue,
    compute, images or executions; the batch series on /metrics leave it out too."""
    from server.backends.fake import FakeBackend

    def backends(spec):
        return FakeBackend(spec, fail_if=lambda batch: bool((batch == 1.0).any()))

    settings = make_settings(tiny_repo, max_batch_size=1)
    with TestClient(create_app(settings, backends=backends, registry=CollectorRegistry())) as client:
        for pixel, status in ((1.0, 500), (0.0, 200), (1.0, 500)):
            r = client.post("/v1/predict", json={"instances": [[[pixel] * 28] * 28]})
            assert r.status_code == status, r.text
        (stats,) = client.get("/v2/models/tiny/stats").json()["model_stats"]
        metrics = client.get("/metrics").text
    inference = stats["inference_stats"]
    assert inference["success"]["count"] == 1 and inference["fail"]["count"] == 2
    assert inference["queue"]["count"] == inference["compute_infer"]["count"] == 1
    assert stats["inference_count"] == stats["execution_count"] == 1
    assert 'gloro_batch_size_count{model="tiny"} 1.0' in metrics


def v2_json(images: np.ndarray, **fields) -> dict:
    x = (images / 255).astype(np.float32)
    return {"inputs": [{"name": "input", "shape": [len(x), 1, 28, 28], "datatype": "FP32",
                        "data": x.ravel().tolist()}], **fields}


def test_v2_requests_may_name_their_model_as_kserves_client_does(client, mnist_test) -> None:
    images = mnist_test[0][:2]
    for fields in ({"model_name": "tiny"}, {"model_name": "tiny", "model_version": "2"}, {"model_version": ""}):
        r = client.post("/v2/models/tiny/infer", json=v2_json(images, id="k", **fields))
        assert r.status_code == 200 and r.json()["id"] == "k", (fields, r.text)
    r = client.post("/v2/models/tiny/infer", json=v2_json(images, model_name="other"))
    assert r.status_code == 400 and "model_name 'other' in the request, but the path names 'tiny'" in r.json()["error"]
    r = client.post("/v2/models/tiny/infer", json=v2_json(images, model_version="7"))
    assert r.status_code == 400 and "serves version 2" in r.json()["error"]


def test_v2_outputs_an_empty_list_asks_for_all_and_bad_asks_are_400(client, mnist_test) -> None:
    images = mnist_test[0][:2]
    r = client.post("/v2/models/tiny/infer", json=v2_json(images, outputs=[]))
    assert r.status_code == 200 and [o["name"] for o in r.json()["outputs"]] == ["label", "certified", "radius", "logits"]
    bad = {
        "asked twice": ([{"name": "label"}, {"name": "label"}], None, "output 'label' is asked for twice"),
        "class_count of a label": ([{"name": "label", "parameters": {"classification": 3}}], None,
                                   "output 'label': classification (class_count) ranks the classes of logits only"),
        "class_count 0": ([{"name": "logits", "parameters": {"classification": 0}}], None,
                          "classification must be an integer >= 1, not '0'"),
        "class_count as text": ([{"name": "logits", "parameters": {"classification": "3"}}], None,
                                "classification must be an integer >= 1, not '3'"),
        "binary_data as text": ([{"name": "label", "parameters": {"binary_data": "false"}}], None,
                                "output 'label': parameters.binary_data must be true or false, not 'false'"),
        "binary_data_output as a number": (None, {"binary_data_output": 1},
                                           "parameters.binary_data_output must be true or false, not '1'"),
    }
    for case, (outputs, parameters, needle) in bad.items():
        fields = {k: v for k, v in (("outputs", outputs), ("parameters", parameters)) if v is not None}
        r = client.post("/v2/models/tiny/infer", json=v2_json(images, **fields))
        assert r.status_code == 400 and needle in r.json()["error"], (case, r.text)


def test_docs_and_openapi(client) -> None:
    assert client.get("/docs").status_code == 200
    paths = client.get("/openapi.json").json()["paths"]
    assert {"/v1/predict", "/v1/models/{name}/predict", "/v2/models/{name}/infer", "/readyz"} <= set(paths)
    assert "multipart/form-data" in paths["/v1/predict"]["post"]["requestBody"]["content"]


def test_metrics_use_route_templates_and_count_outcomes(client, mnist_test) -> None:
    png = png_bytes(mnist_test[0][0])
    for eps in (0, 100):
        client.post(f"/v1/models/tiny/predict?epsilon={eps}", content=png, headers={"Content-Type": "image/png"})
    client.post("/v1/models/nope/predict", content=png, headers={"Content-Type": "image/png"})
    text = client.get("/metrics").text
    assert 'gloro_requests_total{model="tiny",route="/v1/models/{name}/predict",status="200"} 2.0' in text
    assert 'route="/v1/models/{name}/predict",status="404"' in text and "nope" not in text
    assert 'gloro_predictions_total{model="tiny",outcome="certified"} 1.0' in text
    assert 'gloro_predictions_total{model="tiny",outcome="abstained"} 1.0' in text
    for name in ("gloro_request_duration_seconds", "gloro_queue_wait_seconds", "gloro_inference_duration_seconds",
                 "gloro_batch_size", "gloro_certified_radius"):
        assert f'{name}_count{{model="tiny"' in text, name
    assert 'gloro_queue_depth{model="tiny"} 0.0' in text


@pytest.fixture
def keyed(tiny_repo: Path):
    app = create_app(make_settings(tiny_repo, api_key="k3y", max_body_bytes=4096), registry=CollectorRegistry())
    with TestClient(app) as c:
        yield c


def test_api_key_guards_the_apis_but_not_health(keyed, mnist_test) -> None:
    png = png_bytes(mnist_test[0][0])
    post = lambda h: keyed.post("/v1/predict", content=png, headers={"Content-Type": "image/png", **h})  # noqa: E731
    r = post({})
    assert r.status_code == 401 and "API key" in r.json()["error"]
    assert post({"X-API-Key": "wrong"}).status_code == 401
    assert post({"X-API-Key": "k3y"}).status_code == 200
    assert post({"Authorization": "Bearer k3y"}).status_code == 200
    assert keyed.get("/v2/models/tiny").status_code == 401
    for path in ("/healthz", "/readyz", "/metrics", "/v2/health/ready", "/docs"):
        assert keyed.get(path).status_code == 200, path


def test_body_limit_gives_413(keyed) -> None:
    r = keyed.post("/v1/predict", content=b"\0" * 5000, headers={"Content-Type": "image/png", "X-API-Key": "k3y"})
    assert r.status_code == 413 and "4096" in r.json()["error"]

    def chunks():
        for _ in range(10):
            yield b"\0" * 1000

    r = keyed.post("/v1/predict", content=chunks(), headers={"Content-Type": "image/png", "X-API-Key": "k3y"})
    assert r.status_code == 413
