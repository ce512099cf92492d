"""Open Inference Protocol v2 (KServe/Triton REST) with the binary tensor data extension; the
protocol's tensors and checks are server/open_inference.py's, shared with gRPC (server/grpc_v2/).
"""

from __future__ import annotations

from typing import Any, NamedTuple

import numpy as np
from fastapi import Request
from starlette.responses import Response

from server import package_version
from server.budget import Hold
from server.decode import parse_epsilon, tensor_from_bytes, tensor_from_list
from server.errors import BadRequest, parse_wire
from server.metrics import Metrics
from server.open_inference import (OUTPUTS, check_input, check_model, check_output_asked, model_configuration,
                                   model_metadata, model_statistics, output_tensor)
from server.responses import FastJSONResponse, dumps
from server.routes import Route, header, inline_schema, path_parameter, read_body
from server.service import ModelService, Models, Prediction
from server.wire_v2 import (
    BINARY_HEADER,
    InferRequest,
    InferResponse,
    ModelMetadataResponse,
    RequestInput,
    ServerMetadataResponse,
    StatisticsResponse,
)

NAME = path_parameter("name")
VERSION = path_parameter("version")
INFER_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {"schema": inline_schema(InferRequest)},
            "application/octet-stream": {
                "schema": {"type": "string", "format": "binary",
                           "description": "JSON header (Inference-Header-Content-Length bytes), then tensors"}
            },
        },
    }
}


def _split_body(body: bytes, header_length: str | None) -> tuple[bytes, memoryview]:
    if header_length is None:
        return body, memoryview(b"")
    try:
        n = int(header_length)
    except ValueError:
        raise BadRequest(f"Inference-Header-Content-Length {header_length[:20]!r} is not an integer") from None
    if not 0 < n <= len(body):
        raise BadRequest(f"Inference-Header-Content-Length {n} does not fit a body of {len(body)} bytes")
    return body[:n], memoryview(body)[n:]


def _invalid_request(problems: str) -> BadRequest:
    return BadRequest(f"inference request: {problems}")


def _input_tensor(request: InferRequest, binary: memoryview, service: ModelService, hold: Hold) -> np.ndarray:
    """The input as a float32 batch, counted in the request's `Hold` (at most twice the body's bytes,
    so counted once made; a binary tensor counts as a copy, though an aligned one is a view of the
    body). A JSON `data` list is dropped from `request` once converted, before the model runs: as
    Python numbers it takes several times its JSON (docs/server.md, "Memory")."""
    check_input([i.name for i in request.inputs], request.inputs[0].datatype)
    tensor: RequestInput = request.inputs[0]
    spec = service.spec.manifest.input
    size = (tensor.parameters or {}).get("binary_data_size")
    if size is None:
        if len(binary):
            raise BadRequest(f"{len(binary)} bytes follow the JSON header but no input has binary_data_size")
        if tensor.data is None:
            raise BadRequest("input has neither data nor parameters.binary_data_size")
        array, tensor.data = tensor_from_list(tensor.data, tensor.shape, spec), None
        hold.take(array.nbytes, "the decoded input")
        return array
    if tensor.data is not None:
        raise BadRequest("input has both data and parameters.binary_data_size")
    if isinstance(size, bool) or not isinstance(size, int) or size != len(binary):
        raise BadRequest(f"binary_data_size {size!r} does not match the {len(binary)} bytes after the header")
    array = tensor_from_bytes(binary, tensor.shape, spec)
    hold.take(array.nbytes, "the decoded input")
    return array


def _flag(parameters: dict[str, Any] | None, key: str, default: bool, where: str) -> bool:
    """A boolean parameter of the binary extension: true or false, nothing else ("false" is truthy)."""
    value = (parameters or {}).get(key, default)
    if not isinstance(value, bool):
        raise BadRequest(f"{where}parameters.{key} must be true or false, not {str(value)[:20]!r}")
    return value


class Asked(NamedTuple):
    """An output a request asks for: in binary or JSON, and as its top classes or itself."""

    name: str
    binary: bool
    classes: int | None


def _requested_outputs(request: InferRequest) -> list[Asked]:
    """Each output asked for; all of them when none is named (an empty list too: an answer with no
    outputs is of no use)."""
    binary_default = _flag(request.parameters, "binary_data_output", False, "")
    if not request.outputs:
        return [Asked(name, binary_default, None) for name in OUTPUTS]
    wanted: dict[str, Asked] = {}
    for output in request.outputs:
        classes = check_output_asked(output.name, output.parameters or {}, wanted)
        binary = _flag(output.parameters, "binary_data", binary_default, f"output {output.name!r}: ")
        wanted[output.name] = Asked(output.name, binary, classes)
    return list(wanted.values())


def encode_response(request: InferRequest, wanted: list[Asked], prediction: Prediction) -> Response:
    """The answer holding the `wanted` outputs (`_requested_outputs`), each in JSON or binary."""
    outputs: list[dict[str, Any]] = []
    blobs: list[bytes] = []
    for asked in wanted:
        tensor = output_tensor(prediction, asked.name, asked.classes)
        entry: dict[str, Any] = {"name": tensor.name, "datatype": tensor.datatype, "shape": tensor.shape}
        if asked.binary:
            blob = tensor.raw()
            entry["parameters"] = {"binary_data_size": len(blob)}
            blobs.append(blob)
        else:
            entry["data"] = tensor.json_data()
        outputs.append(entry)
    body: dict[str, Any] = {
        "model_name": prediction.spec.name,
        "model_version": prediction.spec.version,
        "parameters": {"epsilon": prediction.epsilon},
        "outputs": outputs,
    }
    if request.id is not None:
        body["id"] = request.id
    header = dumps(body)
    if not blobs:
        return Response(header, media_type="application/json")
    return Response(
        b"".join([header, *blobs]),
        media_type="application/octet-stream",
        headers={"Inference-Header-Content-Length": str(len(header))},
    )


EXTENSIONS = ["binary_tensor_data", "classification", "model_configuration", "statistics"]


class OpenInferenceAPI:
    def __init__(self, models: Models, metrics: Metrics) -> None:
        self.models = models
        self.metrics = metrics

    async def server_metadata(self) -> Response:
        return FastJSONResponse({"name": "gloro-serve", "version": package_version(), "extensions": EXTENSIONS})

    def _metadata(self, service: ModelService) -> Response:
        return FastJSONResponse(model_metadata(service))

    async def model_metadata(self, name: str) -> Response:
        return self._metadata(self.models.get(name))

    async def version_metadata(self, name: str, version: str) -> Response:
        return self._metadata(self.models.version(name, version))

    def _config(self, service: ModelService) -> Response:
        return FastJSONResponse(model_configuration(service))

    async def config(self, name: str) -> Response:
        return self._config(self.models.get(name))

    async def version_config(self, name: str, version: str) -> Response:
        return self._config(self.models.version(name, version))

    def _statistics(self, services: list[ModelService]) -> Response:
        return FastJSONResponse(model_statistics(self.metrics.current(), services))

    async def all_statistics(self) -> Response:
        return self._statistics(list(self.models.services.values()))

    async def statistics(self, name: str) -> Response:
        return self._statistics([self.models.get(name)])

    async def version_statistics(self, name: str, version: str) -> Response:
        return self._statistics([self.models.version(name, version)])

    async def infer(self, request: Request) -> Response:
        return await self._infer(request, self.models.get(request.path_params["name"]))

    async def version_infer(self, request: Request) -> Response:
        params = request.path_params
        return await self._infer(request, self.models.version(params["name"], params["version"]))

    async def _infer(self, request: Request, service: ModelService) -> Response:
        request.scope["gloro.model"] = service.spec.name
        body = await read_body(request)
        json_part, binary = _split_body(body, header(request, BINARY_HEADER))
        infer_request = parse_wire(InferRequest, json_part, "inference header", _invalid_request)
        check_model(infer_request.model_name, infer_request.model_version, service)
        inputs = _input_tensor(infer_request, binary, service, request.scope["gloro.hold"])
        wanted = _requested_outputs(infer_request)  # bad asks refused before the model runs
        epsilon = parse_epsilon((infer_request.parameters or {}).get("epsilon"), service.spec.epsilon)
        return encode_response(infer_request, wanted, await service.predict(inputs, epsilon))

    def routes(self) -> list[Route]:
        infer = {"response_model": InferResponse, "openapi_extra": {**INFER_BODY, "parameters": [NAME]}}
        version_infer = {"response_model": InferResponse, "openapi_extra": {**INFER_BODY, "parameters": [NAME, VERSION]}}
        meta = {"response_model": ModelMetadataResponse}
        stats = {"response_model": StatisticsResponse}
        config = {"response_model": dict[str, Any]}
        return [
            Route("GET", "/v2", self.server_metadata, "Server metadata", {"response_model": ServerMetadataResponse}),
            # before /v2/models/{name}, which would take "stats" for a model's name
            Route("GET", "/v2/models/stats", self.all_statistics, "Statistics of every model", stats),
            Route("GET", "/v2/models/{name}/stats", self.statistics, "Model statistics", stats),
            Route("GET", "/v2/models/{name}/versions/{version}/stats", self.version_statistics,
                  "Model version statistics", stats),
            Route("GET", "/v2/models/{name}/config", self.config, "Model configuration (Triton's)", config),
            Route("GET", "/v2/models/{name}/versions/{version}/config", self.version_config,
                  "Model version configuration (Triton's)", config),
            Route("GET", "/v2/models/{name}", self.model_metadata, "Model metadata", meta),
            Route("GET", "/v2/models/{name}/versions/{version}", self.version_metadata, "Model version metadata", meta),
            Route("POST", "/v2/models/{name}/infer", self.infer, "Inference", infer, direct=True),
            Route("POST", "/v2/models/{name}/versions/{version}/infer", self.version_infer, "Inference on a version",
                  version_infer, direct=True),
        ]
