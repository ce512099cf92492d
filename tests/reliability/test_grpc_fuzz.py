"""Fuzzing the gRPC half: hypothesis builds ModelInferRequest messages (well-formed and not: names,
datatypes, shapes, raw and typed contents, outputs, parameters of every kind) and sends them with
Triton's own stub to a real server process. Every answer must be a success or a client error that
names its problem, never INTERNAL or UNKNOWN, and the server must still serve afterwards."""

from __future__ import annotations

import grpc
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tritonclient.grpc import service_pb2, service_pb2_grpc

from server_support import GrpcServer

pytestmark = [pytest.mark.e2e]

CLIENT_ERRORS = {grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND, grpc.StatusCode.RESOURCE_EXHAUSTED}
NAMES = st.sampled_from(["input", "label", "certified", "radius", "logits", "", "x" * 100, "ïnput"])
DATATYPES = st.sampled_from(["FP32", "FP64", "INT64", "BOOL", "BYTES", "", "fp32"])
SHAPES = st.lists(st.integers(min_value=-3, max_value=40), max_size=6) | st.just([1, 1, 28, 28])
PARAMETER = st.one_of(
    st.builds(lambda v: service_pb2.InferParameter(bool_param=v), st.booleans()),
    st.builds(lambda v: service_pb2.InferParameter(int64_param=v), st.integers(-2**63, 2**63 - 1)),
    st.builds(lambda v: service_pb2.InferParameter(double_param=v), st.floats(allow_nan=True)),
    st.builds(lambda v: service_pb2.InferParameter(string_param=v), st.text(max_size=20)),
    st.builds(lambda v: service_pb2.InferParameter(uint64_param=v), st.integers(0, 2**64 - 1)),
    st.just(service_pb2.InferParameter()),
)
PARAMETERS = st.dictionaries(st.sampled_from(["epsilon", "classification", "binary_data", "other"]), PARAMETER,
                             max_size=3)


@st.composite
def infer_requests(draw) -> service_pb2.ModelInferRequest:
    request = service_pb2.ModelInferRequest(
        model_name=draw(st.sampled_from(["mnist-2c2f", "mnist-4c3f", "", "nope"])),
        model_version=draw(st.sampled_from(["", "1", "10", "x"])),
        id=draw(st.text(max_size=10)),
    )
    for key, value in draw(PARAMETERS).items():
        request.parameters[key].CopyFrom(value)
    for _ in range(draw(st.integers(0, 2))):
        tensor = request.inputs.add(name=draw(NAMES), datatype=draw(DATATYPES), shape=draw(SHAPES))
        if draw(st.booleans()):
            values = draw(st.lists(st.floats(width=32, allow_nan=True), max_size=800))
            tensor.contents.fp32_contents.extend(values)
    for _ in range(draw(st.integers(0, 2))):
        raw = draw(st.sampled_from(["digit", "bytes"]))
        if raw == "digit":
            request.raw_input_contents.append(np.full((1, 1, 28, 28), draw(st.floats(-1, 2, width=32)), "<f4").tobytes())
        else:
            request.raw_input_contents.append(draw(st.binary(max_size=4000)))
    for _ in range(draw(st.integers(0, 3))):
        output = request.outputs.add(name=draw(NAMES))
        for key, value in draw(PARAMETERS).items():
            output.parameters[key].CopyFrom(value)
    return request


@pytest.fixture(scope="module")
def stub():
    with GrpcServer() as process:
        with grpc.insecure_channel(process.target) as channel:
            yield service_pb2_grpc.GRPCInferenceServiceStub(channel)
        assert process.process.poll() is None, "the server died under fuzzing"


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                  HealthCheck.too_slow])
@given(request=infer_requests())
def test_no_message_gets_more_than_a_client_error(stub, request) -> None:
    try:
        answer = stub.ModelInfer(request, timeout=30)
    except grpc.RpcError as error:
        assert error.code() in CLIENT_ERRORS, (error.code(), error.details(), request)
        assert error.details(), "an error names its problem"
    else:
        assert len(answer.outputs) == len(answer.raw_output_contents) >= 1
    ok = service_pb2.ModelInferRequest(model_name="mnist-2c2f")
    ok.inputs.add(name="input", datatype="FP32", shape=[1, 1, 28, 28])
    ok.raw_input_contents.append(np.zeros((1, 1, 28, 28), "<f4").tobytes())
    assert len(stub.ModelInfer(ok, timeout=30).outputs) == 4


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                 HealthCheck.too_slow])
@given(requests=st.lists(infer_requests(), min_size=1, max_size=8))
def test_a_stream_answers_every_message_with_a_result_or_an_error_that_names_it(stub, requests) -> None:
    answers = list(stub.ModelStreamInfer(iter(requests), timeout=60))
    assert len(answers) == len(requests)
    for answer in answers:
        assert answer.error_message or len(answer.infer_response.outputs) >= 1, answer
        assert "internal error" not in answer.error_message
