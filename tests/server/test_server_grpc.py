"""The Open Inference Protocol v2 over gRPC (`--grpc-port`): real server processes (torch import
blocked), real MNIST digits, Triton's own gRPC client and Triton's .proto."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import grpc
import httpx
import numpy as np
import pytest
import tritonclient.grpc as triton
from google.protobuf import json_format
from tritonclient.grpc import model_config_pb2, service_pb2, service_pb2_grpc

from fault_server import FAIL_PIXEL, HANG_PIXEL
from server_support import NO_TORCH_SERVER, ROOT, GrpcServer, free_port, metric_samples, promtool_check_metrics

pytestmark = pytest.mark.e2e

SHIPPED = "mnist-2c2f"
MAX_BODY = 256 * 1024  # 83 digits as FP32: a larger message is refused
INFER = "/inference.GRPCInferenceService/ModelInfer"


def infer_count(metrics: str, status: str) -> float:
    """gloro_requests_total of the shipped model's ModelInfer calls that ended in `status`."""
    key = (("model", SHIPPED), ("route", INFER), ("status", status))
    return metric_samples(metrics, "gloro_requests_total").get(key, 0.0)


def digits(images: np.ndarray, n: int) -> np.ndarray:
    return (images[:n].astype(np.float32) / 255).reshape(n, 1, 28, 28)


def fp32_input(x: np.ndarray, name: str = "input") -> triton.InferInput:
    tensor = triton.InferInput(name, list(x.shape), "FP32")
    tensor.set_data_from_numpy(x)
    return tensor


def status_of(call) -> tuple[str, str]:
    """The status (as tritonclient names it: "StatusCode.NOT_FOUND") and message a failing call gets."""
    with pytest.raises(triton.InferenceServerException) as caught:
        call()
    return caught.value.status(), caught.value.message()


@pytest.fixture(scope="module")
def server():
    with GrpcServer(["--max-body-bytes", str(MAX_BODY), "--max-bytes-in-flight", str(4 * MAX_BODY)]) as process:
        yield process
    assert process.process.returncode == 0, process.output()


def test_health_and_metadata_answer_as_tritons_client_reads_them(server) -> None:
    client = server.client()
    assert client.is_server_live() and client.is_server_ready() and client.is_model_ready(SHIPPED)
    assert client.is_model_ready(SHIPPED, "1")
    assert status_of(lambda: client.is_model_ready("nope"))[0] == str(grpc.StatusCode.NOT_FOUND)
    server_metadata = client.get_server_metadata(as_json=True)
    assert server_metadata["name"] == "gloro-serve"
    assert server_metadata["extensions"] == ["classification", "model_configuration", "statistics"]
    meta = client.get_model_metadata(SHIPPED, as_json=True)
    assert meta["versions"] == ["1"]
    assert [(t["name"], t["datatype"], t["shape"]) for t in meta["inputs"]] == [("input", "FP32", ["-1", "1", "28", "28"])]
    assert [(t["name"], t["datatype"]) for t in meta["outputs"]] == [
        ("label", "INT64"), ("certified", "BOOL"), ("radius", "FP32"), ("logits", "FP32")]


def test_infer_gives_the_answers_of_the_rest_endpoint_for_real_digits(server, mnist_test) -> None:
    images, labels = mnist_test
    x = digits(images, 16)
    result = server.client().infer(SHIPPED, [fp32_input(x)], parameters={"epsilon": 0.3}, request_id="digits")
    rest = httpx.post(f"{server.url}/v2/models/{SHIPPED}/infer", json={
        "inputs": [{"name": "input", "datatype": "FP32", "shape": list(x.shape), "data": x.ravel().tolist()}],
        "parameters": {"epsilon": 0.3},
    }).json()
    by_name = {o["name"]: np.asarray(o["data"]) for o in rest["outputs"]}
    assert result.as_numpy("label").tolist() == by_name["label"].tolist()
    assert (result.as_numpy("label") == labels[:16]).mean() >= 0.9  # the shipped model reads digits
    assert result.as_numpy("certified").tolist() == by_name["certified"].tolist()
    np.testing.assert_allclose(result.as_numpy("radius"), by_name["radius"], rtol=1e-5)
    np.testing.assert_allclose(result.as_numpy("logits").ravel(), by_name["logits"], rtol=1e-5, atol=1e-6)
    response = result.get_response()
    assert (response.model_name, response.model_version, response.id) == (SHIPPED, "1", "digits")
    assert response.parameters["epsilon"].double_param == 0.3


def test_certified_means_a_radius_over_the_requested_epsilon(server, mnist_test) -> None:
    x = digits(mnist_test[0], 32)
    client = server.client()
    for epsilon in (0.3, 1.0):
        result = client.infer(SHIPPED, [fp32_input(x)], parameters={"epsilon": epsilon})
        assert result.as_numpy("certified").tolist() == (result.as_numpy("radius") > epsilon).tolist()
    # without one, the model's own epsilon
    default = client.infer(SHIPPED, [fp32_input(x)]).get_response().parameters["epsilon"].double_param
    assert default == pytest.approx(0.3)


def test_outputs_come_as_asked_in_that_order(server, mnist_test) -> None:
    x = digits(mnist_test[0], 4)
    asked = [triton.InferRequestedOutput("radius"), triton.InferRequestedOutput("label")]
    result = server.client().infer(SHIPPED, [fp32_input(x)], outputs=asked)
    assert [o.name for o in result.get_response().outputs] == ["radius", "label"]
    assert result.as_numpy("label").shape == (4,) and result.as_numpy("logits") is None


def test_classification_gives_each_images_top_classes_as_triton_writes_them(server, mnist_test) -> None:
    x = digits(mnist_test[0], 4)
    client = server.client()
    logits = client.infer(SHIPPED, [fp32_input(x)]).as_numpy("logits")
    asked = [triton.InferRequestedOutput("logits", class_count=3), triton.InferRequestedOutput("label")]
    result = client.infer(SHIPPED, [fp32_input(x)], outputs=asked)
    top = result.as_numpy("logits")
    assert top.shape == (4, 3) and result.get_response().outputs[0].datatype == "BYTES"
    for row, scores in zip(top, logits):
        values, indices, names = zip(*(entry.decode().split(":") for entry in row))
        assert [int(i) for i in indices] == np.argsort(-scores, kind="stable")[:3].tolist()
        assert [float(v) for v in values] == pytest.approx(sorted(scores, reverse=True)[:3], abs=1e-6)
        assert list(names) == list(indices)  # the shipped model's class names are its digits
    assert [int(row[0].decode().split(":")[1]) for row in top] == result.as_numpy("label").tolist()
    every = client.infer(SHIPPED, [fp32_input(x)], outputs=[triton.InferRequestedOutput("logits", class_count=50)])
    assert every.as_numpy("logits").shape == (4, 10)  # no more classes than the model has, as Triton clamps


def test_typed_contents_from_tritons_own_stub_give_the_raw_answer(server, mnist_test) -> None:
    x = digits(mnist_test[0], 3)
    request = service_pb2.ModelInferRequest(model_name=SHIPPED)
    tensor = request.inputs.add(name="input", datatype="FP32", shape=list(x.shape))
    tensor.contents.fp32_contents.extend(x.ravel().tolist())
    with grpc.insecure_channel(server.target) as channel:
        typed = service_pb2_grpc.GRPCInferenceServiceStub(channel).ModelInfer(request)
    labels = np.frombuffer(typed.raw_output_contents[0], dtype="<i8")
    raw = server.client().infer(SHIPPED, [fp32_input(x)])
    assert [o.name for o in typed.outputs] == ["label", "certified", "radius", "logits"]
    assert labels.tolist() == raw.as_numpy("label").tolist()


def _bad_requests(x: np.ndarray) -> dict[str, tuple[dict, grpc.StatusCode, str]]:
    """What a client can get wrong: infer() keyword arguments -> the status and a part of the message."""
    nan = x.copy()
    nan[0, 0, 0, 0] = np.nan
    wide = np.zeros((1, 1, 27, 28), np.float32)
    fp64 = triton.InferInput("input", [1, 1, 28, 28], "FP64")
    fp64.set_data_from_numpy(x[:1].astype(np.float64))
    classify = triton.InferRequestedOutput("label", class_count=3)
    invalid = grpc.StatusCode.INVALID_ARGUMENT
    return {
        "wrong shape": ({"inputs": [fp32_input(wide)]}, invalid, "model expects [-1, 1, 28, 28]"),
        "NaN pixel": ({"inputs": [fp32_input(nan)]}, invalid, "finite and in [0, 1]"),
        "pixel over 1": ({"inputs": [fp32_input(x * 255)]}, invalid, "finite and in [0, 1]"),
        "FP64": ({"inputs": [fp64]}, invalid, "this model takes FP32"),
        "input misnamed": ({"inputs": [fp32_input(x, "image")]}, invalid, "exactly one input named 'input'"),
        "two inputs": ({"inputs": [fp32_input(x), fp32_input(x)]}, invalid, "exactly one input"),
        "unknown output": ({"outputs": [triton.InferRequestedOutput("softmax")]}, invalid, "unknown output"),
        "classification of a label": ({"outputs": [classify]}, invalid, "ranks the classes of logits only"),
        "negative epsilon": ({"parameters": {"epsilon": -0.1}}, invalid, "epsilon must be a finite number >= 0"),
        "epsilon a word": ({"parameters": {"epsilon": "small"}}, invalid, "epsilon must be a number"),
        "epsilon a bool": ({"parameters": {"epsilon": True}}, invalid, "epsilon must be a number"),
        "unknown model": ({"model_name": "nope"}, grpc.StatusCode.NOT_FOUND, "model 'nope' is not served"),
        "unknown version": ({"model_version": "7"}, grpc.StatusCode.NOT_FOUND, "version '7'"),
        "over --max-body-bytes": ({"inputs": [fp32_input(np.zeros((100, 1, 28, 28), np.float32))]},
                                  grpc.StatusCode.RESOURCE_EXHAUSTED, "larger than max"),
    }


@pytest.mark.parametrize("case", list(_bad_requests(np.zeros((2, 1, 28, 28), np.float32))))
def test_a_bad_request_gets_the_status_that_names_it_and_harms_no_other(server, mnist_test, case) -> None:
    x = digits(mnist_test[0], 2)
    arguments, code, text = _bad_requests(x)[case]
    client = server.client()
    call = {"model_name": SHIPPED, "inputs": [fp32_input(x)], **arguments}
    status, details = status_of(lambda: client.infer(**call))
    assert status == str(code) and text in details, (status, details)
    assert client.infer(SHIPPED, [fp32_input(x)]).as_numpy("label").shape == (2,)


def test_requests_without_data_or_with_it_twice_are_refused(server, mnist_test) -> None:
    x = digits(mnist_test[0], 1)
    empty = service_pb2.ModelInferRequest(model_name=SHIPPED)
    empty.inputs.add(name="input", datatype="FP32", shape=list(x.shape))
    both = service_pb2.ModelInferRequest()
    both.CopyFrom(empty)
    both.inputs[0].contents.fp32_contents.extend(x.ravel().tolist())
    both.raw_input_contents.append(x.tobytes())
    nameless = service_pb2.ModelInferRequest()
    nameless.CopyFrom(both)
    nameless.model_name = ""
    with grpc.insecure_channel(server.target) as channel:
        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
        for request, text in [(empty, "neither contents nor raw_input_contents"),
                              (both, "both contents and raw_input_contents"), (nameless, "no model named")]:
            with pytest.raises(grpc.RpcError) as caught:
                stub.ModelInfer(request)
            assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT and text in caught.value.details()


def test_model_configuration_and_statistics_are_the_rest_extensions_answers(server, mnist_test) -> None:
    client = server.client()
    client.infer(SHIPPED, [fp32_input(digits(mnist_test[0], 3))])
    # read with Triton's own messages: the REST JSON parsed into them is the gRPC answer, field for field
    rest_config = httpx.get(f"{server.url}/v2/models/{SHIPPED}/config").json()
    config = client.get_model_config(SHIPPED).config
    assert config == json_format.ParseDict(rest_config, model_config_pb2.ModelConfig())
    assert config.max_batch_size == 32 and config.parameters["epsilon"].string_value == "0.3"
    rest_stats = httpx.get(f"{server.url}/v2/models/{SHIPPED}/stats").json()
    stats = client.get_inference_statistics(SHIPPED)
    assert stats == json_format.ParseDict(rest_stats, service_pb2.ModelStatisticsResponse())
    assert stats.model_stats[0].inference_count >= 3
    every = client.get_inference_statistics(as_json=True)["model_stats"]
    assert sorted(m["name"] for m in every) == ["mnist-2c2f", "mnist-4c3f"]
    assert status_of(lambda: client.get_model_config("nope"))[0] == str(grpc.StatusCode.NOT_FOUND)


def test_only_inference_calls_count_in_the_models_statistics(server) -> None:
    """As on REST: metadata, readiness, configuration and statistics calls are not inferences."""
    client = server.client()

    def successes() -> int:
        return client.get_inference_statistics(SHIPPED).model_stats[0].inference_stats.success.count

    before = successes()
    client.get_model_metadata(SHIPPED)
    client.is_model_ready(SHIPPED)
    client.get_model_config(SHIPPED)
    assert successes() == before


def test_tritons_calls_beyond_those_are_unimplemented(server) -> None:
    client = server.client()
    for call in (client.get_model_repository_index, client.get_system_shared_memory_status,
                 client.get_trace_settings, client.get_log_settings):
        assert status_of(call)[0] == str(grpc.StatusCode.UNIMPLEMENTED)


def test_a_backend_fault_a_server_timeout_and_a_client_deadline(mnist_test) -> None:
    x = digits(mnist_test[0], 1)
    failing, hanging = x.copy(), x.copy()
    failing[0, 0, 0, 0] = FAIL_PIXEL
    hanging[0, 0, 0, 0] = HANG_PIXEL
    with GrpcServer(["--request-timeout-s", "1"], faults=["--hang-s", "3"]) as process:
        client = process.client()
        status, details = status_of(lambda: client.infer(SHIPPED, [fp32_input(failing)]))
        assert status == str(grpc.StatusCode.INTERNAL) and "inference failed" in details
        status, details = status_of(lambda: client.infer(SHIPPED, [fp32_input(hanging)]))
        assert status == str(grpc.StatusCode.DEADLINE_EXCEEDED) and "did not answer within 1 s" in details
        status, _ = status_of(lambda: client.infer(SHIPPED, [fp32_input(hanging)], client_timeout=0.3))
        assert status == str(grpc.StatusCode.DEADLINE_EXCEEDED)  # the client's own deadline
        time.sleep(3.5)  # the hanging batches end
        assert client.infer(SHIPPED, [fp32_input(x)]).as_numpy("label").shape == (1,)
        metrics = process.metrics()
        assert [infer_count(metrics, status) for status in ("500", "504", "499", "200")] == [1, 1, 1, 1]


def test_grpc_calls_count_in_the_metrics_by_method_and_outcome(server, mnist_test) -> None:
    client = server.client()
    x = digits(mnist_test[0], 2)
    before = server.metrics()
    client.infer(SHIPPED, [fp32_input(x)])
    status_of(lambda: client.infer(SHIPPED, [fp32_input(x * 255)]))
    after = server.metrics()
    promtool_check_metrics(after)
    assert infer_count(after, "200") - infer_count(before, "200") == 1
    assert infer_count(after, "422") - infer_count(before, "422") == 1


def test_an_api_key_guards_every_call_but_the_health_checks(mnist_test) -> None:
    x = digits(mnist_test[0], 1)
    with GrpcServer(["--api-key", "s3cret"]) as process:
        client = process.client()
        assert client.is_server_live() and client.is_server_ready()
        status, details = status_of(lambda: client.infer(SHIPPED, [fp32_input(x)]))
        assert status == str(grpc.StatusCode.UNAUTHENTICATED) and "API key" in details
        status, _ = status_of(lambda: client.infer(SHIPPED, [fp32_input(x)], headers={"x-api-key": "wrong"}))
        assert status == str(grpc.StatusCode.UNAUTHENTICATED)
        for headers in ({"x-api-key": "s3cret"}, {"authorization": "Bearer s3cret"}):
            assert client.infer(SHIPPED, [fp32_input(x)], headers=headers).as_numpy("label").shape == (1,)


def test_every_worker_serves_grpc_on_the_one_port(mnist_test) -> None:
    x = digits(mnist_test[0], 2)
    with GrpcServer(["--workers", "2"]) as process:
        for _ in range(12):  # a new connection each, spread by the kernel over the workers' sockets
            client = process.client()
            assert client.infer(SHIPPED, [fp32_input(x)]).as_numpy("label").shape == (2,)
            client.close()
        assert infer_count(process.metrics(), "200") == 12  # summed over the workers
    assert process.process.returncode == 0, process.output()


def _serve(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", NO_TORCH_SERVER, "serve", *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=60)


def test_a_taken_grpc_port_is_a_one_line_error() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        for extra in ([], ["--workers", "2"]):
            run = _serve("--port", str(free_port()), "--grpc-port", str(port), *extra)
            assert run.returncode == 2
            assert run.stderr.strip().splitlines() == [
                f"gloro-serve: error: --grpc-port {port}: cannot listen on 127.0.0.1:{port} (Address already in use)"]


def test_the_grpc_port_cannot_be_the_http_port() -> None:
    run = _serve("--port", "8123", "--grpc-port", "8123")
    assert run.returncode == 2 and "gRPC needs a port of its own" in run.stderr


def test_a_cancelled_call_holds_its_bytes_until_its_batch_has_answered(mnist_test) -> None:
    """A client cannot free the in-flight budget early by cancelling: the request stays in its batch."""
    x = digits(mnist_test[0], 1)
    hanging = x.copy()
    hanging[0, 0, 0, 0] = HANG_PIXEL
    # one digit: a 3.2 KB message, decoded to 3,136 bytes; two such calls do not fit in 8 KB
    limits = ["--max-body-bytes", "4096", "--max-bytes-in-flight", "8192"]
    with GrpcServer(limits, faults=["--hang-s", "2"]) as process:
        client = process.client()
        status, _ = status_of(lambda: client.infer(SHIPPED, [fp32_input(hanging)], client_timeout=0.3))
        assert status == str(grpc.StatusCode.DEADLINE_EXCEEDED)
        status, details = status_of(lambda: client.infer(SHIPPED, [fp32_input(x)]))
        assert status == str(grpc.StatusCode.UNAVAILABLE) and "--max-bytes-in-flight" in details
        time.sleep(2.5)  # the hanging batch answers the request nobody waits for
        assert client.infer(SHIPPED, [fp32_input(x)]).as_numpy("label").shape == (1,)


def test_sigterm_stops_grpc_at_once_while_http_drains(mnist_test) -> None:
    """On SIGTERM both transports drain together: gRPC refuses new calls at once, while an HTTP request
    still in progress keeps the process up, and a gRPC call in progress is answered."""
    x = digits(mnist_test[0], 1)
    hanging = x.copy()
    hanging[0, 0, 0, 0] = HANG_PIXEL
    body = {"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 1, 28, 28], "data": hanging.ravel().tolist()}]}
    with GrpcServer(["--max-delay-ms", "0"], faults=["--hang-s", "3"]) as process:
        with ThreadPoolExecutor(2) as pool:
            rest = pool.submit(httpx.post, f"{process.url}/v2/models/{SHIPPED}/infer", json=body, timeout=30)
            in_progress = pool.submit(process.client().infer, SHIPPED, [fp32_input(hanging)])
            time.sleep(0.5)
            process.terminate()
            time.sleep(0.5)
            status, _ = status_of(lambda: process.client().infer(SHIPPED, [fp32_input(x)], client_timeout=5))
            assert status == str(grpc.StatusCode.UNAVAILABLE)
            assert process.process.poll() is None  # HTTP is still draining
            assert rest.result().status_code == 200
            assert in_progress.result().as_numpy("label").shape == (1,)
        assert process.process.wait(20) == 0, process.output()


def test_grpcs_health_protocol_says_serving_and_names_unknown_services(server) -> None:
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    with grpc.insecure_channel(server.target) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        for service in ("", "inference.GRPCInferenceService"):
            answer = health.Check(health_pb2.HealthCheckRequest(service=service))
            assert answer.status == health_pb2.HealthCheckResponse.SERVING
        with pytest.raises(grpc.RpcError) as caught:
            health.Check(health_pb2.HealthCheckRequest(service="nope"))
        assert caught.value.code() == grpc.StatusCode.NOT_FOUND
        watched = health.Watch(health_pb2.HealthCheckRequest(service=""))
        assert next(watched).status == health_pb2.HealthCheckResponse.SERVING
        watched.cancel()
        unknown = health.Watch(health_pb2.HealthCheckRequest(service="nope"))
        assert next(unknown).status == health_pb2.HealthCheckResponse.SERVICE_UNKNOWN
        unknown.cancel()


def test_a_health_watch_ends_not_serving_when_the_server_drains(mnist_test) -> None:
    """A Watch stream must not hold the server's stop open for its whole grace."""
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    with GrpcServer() as process:
        with grpc.insecure_channel(process.target) as channel:
            watched = health_pb2_grpc.HealthStub(channel).Watch(health_pb2.HealthCheckRequest(service=""))
            assert next(watched).status == health_pb2.HealthCheckResponse.SERVING
            started = time.monotonic()
            process.terminate()
            assert [a.status for a in watched] == [health_pb2.HealthCheckResponse.NOT_SERVING]
        assert process.process.wait(20) == 0
        assert time.monotonic() - started < 10  # not --drain-s (20 s)


@pytest.mark.parametrize("method", ["/inference.GRPCInferenceService/ModelInfer", "/grpc.health.v1.Health/Check"])
def test_a_corrupt_message_is_invalid_argument_and_harms_no_other(server, mnist_test, method) -> None:
    with grpc.insecure_channel(server.target) as channel:
        send = channel.unary_unary(method, request_serializer=lambda b: b, response_deserializer=lambda b: b)
        with pytest.raises(grpc.RpcError) as caught:
            send(b"\xff\xff\xff\xff not a protobuf message")
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "is not a valid" in caught.value.details()
    x = digits(mnist_test[0], 1)
    assert server.client().infer(SHIPPED, [fp32_input(x)]).as_numpy("label").shape == (1,)


@pytest.mark.parametrize("compression", ["gzip", "deflate"])
def test_compressed_calls_get_the_answers_of_plain_ones(server, mnist_test, compression) -> None:
    x = digits(mnist_test[0], 4)
    client = server.client()
    plain = client.infer(SHIPPED, [fp32_input(x)])
    packed = client.infer(SHIPPED, [fp32_input(x)], compression_algorithm=compression)
    assert packed.as_numpy("label").tolist() == plain.as_numpy("label").tolist()
    assert packed.as_numpy("radius").tolist() == plain.as_numpy("radius").tolist()


def test_sighup_replaces_the_workers_without_a_failed_call_on_a_kept_channel(mnist_test) -> None:
    """SIGHUP's rolling replacement under gRPC: a retiring worker finishes the calls it has and tells
    the client (GOAWAY) to go elsewhere, so a client keeping its channel loses none."""
    from proc_tree import children, spawned_worker

    x = digits(mnist_test[0], 1)
    with GrpcServer(["--workers", "2"]) as process:
        old = {p for p in children(process.process.pid) if spawned_worker(p)}
        client = process.client()
        outcomes: list[str] = []
        stop = time.monotonic() + 60

        def old_workers_left() -> bool:
            return bool(old & set(children(process.process.pid)))

        process.process.send_signal(signal.SIGHUP)
        while old_workers_left() and time.monotonic() < stop:
            try:
                client.infer(SHIPPED, [fp32_input(x)])
                outcomes.append("ok")
            except triton.InferenceServerException as error:
                outcomes.append(str(error.status()))
        assert not old_workers_left(), "the old workers are still there"
        assert len(outcomes) > 10 and set(outcomes) == {"ok"}, (len(outcomes), set(outcomes))
        assert client.infer(SHIPPED, [fp32_input(x)]).as_numpy("label").shape == (1,)


def _stream(client, requests: list[tuple[str, list]], headers: dict | None = None) -> dict[str, tuple]:
    """Send (request id, inputs) on one stream; each id's (result, error), as the callback got them
    (an error without a result keyed by its message)."""
    got: dict[str, tuple] = {}
    done = threading.Event()

    def callback(result, error) -> None:
        key = (result.get_response().id if result is not None else None) or (error and error.message())
        got[key] = (result, error)
        if len(got) == len(requests):
            done.set()

    client.start_stream(callback=callback, headers=headers)
    for request_id, inputs in requests:
        client.async_stream_infer(SHIPPED, inputs, request_id=request_id)
    assert done.wait(30), f"{len(got)} of {len(requests)} answered"
    client.stop_stream()
    return got


def test_a_stream_answers_each_request_as_a_call_would(server, mnist_test) -> None:
    images = digits(mnist_test[0], 12)
    client = server.client()
    unary = client.infer(SHIPPED, [fp32_input(images)]).as_numpy("label")
    got = _stream(client, [(f"r{i}", [fp32_input(images[i:i + 1])]) for i in range(12)])
    assert sorted(got) == sorted(f"r{i}" for i in range(12))
    for i in range(12):
        result, error = got[f"r{i}"]
        assert error is None and result.as_numpy("label").tolist() == [unary[i]]
    before = infer_count(server.metrics(), "200")
    _stream(client, [("again", [fp32_input(images[:1])])])
    key = (("model", SHIPPED), ("route", "/inference.GRPCInferenceService/ModelStreamInfer"), ("status", "200"))
    assert metric_samples(server.metrics(), "gloro_requests_total")[key] >= 13
    assert infer_count(server.metrics(), "200") == before  # counted under the stream's route, not ModelInfer's


def test_a_failed_request_on_a_stream_is_answered_with_its_error_and_the_stream_goes_on(server, mnist_test) -> None:
    images = digits(mnist_test[0], 2)
    bad = fp32_input(np.zeros((1, 1, 27, 28), np.float32))
    client = server.client()
    got = _stream(client, [("good", [fp32_input(images[:1])]), ("bad", [bad]), ("after", [fp32_input(images[1:])])])
    assert got["good"][1] is None and got["after"][1] is None
    (error_key,) = [k for k in got if k not in ("good", "after")]
    result, error = got[error_key]
    assert error is not None and "model expects [-1, 1, 28, 28]" in error.message()


def test_a_stream_needs_the_api_key(mnist_test) -> None:
    x = digits(mnist_test[0], 1)
    with GrpcServer(["--api-key", "s3cret"]) as process:
        ((result, error),) = _stream(process.client(), [("k", [fp32_input(x)])]).values()
        assert result is None and error is not None and "API key" in error.message()
        result, error = _stream(process.client(), [("k", [fp32_input(x)])], headers={"x-api-key": "s3cret"})["k"]
        assert error is None and result.as_numpy("label").shape == (1,)


def test_an_open_stream_ends_when_the_server_drains(mnist_test) -> None:
    """A client keeping a stream open does not hold SIGTERM's stop for the whole --drain-s (20 s)."""
    x = digits(mnist_test[0], 1)
    with GrpcServer() as process:
        client = process.client()
        answered: list = []
        client.start_stream(callback=lambda result, error: answered.append((result, error)))
        client.async_stream_infer(SHIPPED, [fp32_input(x)], request_id="before")
        deadline = time.monotonic() + 10
        while not answered and time.monotonic() < deadline:
            time.sleep(0.05)
        assert answered and answered[0][1] is None
        started = time.monotonic()
        process.terminate()
        assert process.process.wait(15) == 0
        assert time.monotonic() - started < 10
        client.stop_stream()
