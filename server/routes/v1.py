"""The image API: POST images (multipart, raw image/*, or JSON), get class + certificate + radius."""

from __future__ import annotations

from collections.abc import AsyncGenerator
from typing import Any

import numpy as np
from fastapi import Request
from starlette.datastructures import UploadFile
from starlette.responses import Response

from server.budget import Hold
from server.decode import Turns, decode_base64, decode_images_in_turns, decode_pixel_lists, parse_epsilon
from server.errors import InvalidInput, UnsupportedMediaType, parse_wire
from server.repository import InputSpec
from server.responses import FastJSONResponse
from server.routes import Route, header, inline_schema, path_parameter, read_body
from server.service import ModelService, Models, Prediction
from server.wire_v1 import ModelInfo, ModelList, PredictRequest, PredictResponse, read_predict_body

MAX_FILES = 4096
# Starlette's multipart parser parses each piece of body it is given at once, and uvicorn hands a
# body that has arrived whole to the app as one piece: 4096 files were parsed in one go while
# every other request waited (docs/server.md, "Large requests").
MULTIPART_PIECE = 16 * 1024
IMAGE_BODY = {"type": "string", "format": "binary"}
PREDICT_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "properties": {
                        "files": {"type": "array", "items": IMAGE_BODY},
                        "epsilon": {"type": "number", "minimum": 0},
                        "return_logits": {"type": "boolean"},
                    },
                    "required": ["files"],
                }
            },
            "image/png": {"schema": IMAGE_BODY},
            "image/jpeg": {"schema": IMAGE_BODY},
            "application/json": {"schema": inline_schema(PredictRequest)},
        },
    }
}


NAME = path_parameter("name")
QUERY = [
    {"name": "epsilon", "in": "query", "required": False, "description": "certify at this eps (default: the model's)",
     "schema": {"type": "number", "minimum": 0}},
    {"name": "return_logits", "in": "query", "required": False, "schema": {"type": "boolean", "default": False}},
]


def _truthy(value: Any) -> bool:
    return str(value).strip().lower() in ("1", "true", "yes", "on")


def model_info(service: ModelService) -> dict[str, Any]:
    m = service.spec.manifest
    return {
        "name": service.spec.name,
        "version": service.spec.version,
        "ready": service.ready,
        "epsilon": m.epsilon,
        "train_epsilon": m.train_epsilon,
        "classes": m.classes,
        "input": {"shape": list(m.input.shape), "color_mode": m.input.color_mode, "range": list(m.input.range)},
        "architecture": m.architecture,
        "metrics": m.metrics,
        "backend": type(service.backend).__name__,
        "max_batch_size": service.config.max_batch_size,
    }


def predict_body(prediction: Prediction, return_logits: bool) -> dict[str, Any]:
    classes = prediction.spec.classes
    output = prediction.output
    rows = zip(output.label.tolist(), prediction.certified.tolist(), output.radius.tolist())
    predictions = [
        {"label": label, "class_name": classes[label], "certified": certified, "radius": radius}
        for label, certified, radius in rows
    ]
    if return_logits:
        for p, logits in zip(predictions, output.logits):
            p["logits"] = logits
    return {
        "model": prediction.spec.name,
        "version": prediction.spec.version,
        "epsilon": prediction.epsilon,
        "predictions": predictions,
    }


async def _decode_json(body: bytes, spec: InputSpec, hold: Hold) -> tuple[np.ndarray, Any, bool]:
    read = read_predict_body(body)  # the usual bodies, without pydantic
    if read is None:
        request = parse_wire(PredictRequest, body, "body", InvalidInput)
        images = [i.b64 for i in request.instances if not isinstance(i, list)]
        if images and len(images) != len(request.instances):
            raise InvalidInput("instances must be all {'b64': ...} images or all pixel arrays, not a mix")
        read = images or request.instances, request.epsilon, request.return_logits
    instances, epsilon, return_logits = read
    hold.inputs(len(instances), spec)
    if isinstance(instances[0], list):
        return decode_pixel_lists(instances, spec), epsilon, return_logits  # then the lists are freed
    files = [decode_base64(b64, n) for n, b64 in enumerate(instances)]
    return await decode_images_in_turns(files, spec), epsilon, return_logits


class PiecewiseRequest(Request):
    """A request whose body stream comes in pieces of MULTIPART_PIECE bytes, the event loop
    serving other requests between them once this one has had its `Turns`."""

    async def stream(self) -> AsyncGenerator[bytes, None]:
        turns = Turns()
        async for chunk in super().stream():
            for start in range(0, len(chunk), MULTIPART_PIECE):
                yield chunk[start : start + MULTIPART_PIECE]
                await turns.between()
        yield b""


async def _decode_multipart(request: Request, spec: InputSpec, hold: Hold) -> tuple[np.ndarray, Any, bool]:
    form = await PiecewiseRequest(request.scope, request.receive).form(max_files=MAX_FILES, max_fields=64)
    try:
        files = [await v.read() for _, v in form.multi_items() if isinstance(v, UploadFile)]
    finally:
        await form.close()
    if not files:
        raise InvalidInput("the multipart body holds no file; send images as parts named 'files'")
    hold.inputs(len(files), spec)
    epsilon = form.get("epsilon")
    return await decode_images_in_turns(files, spec), epsilon, _truthy(form.get("return_logits", ""))


async def decode_predict_request(request: Request, spec: InputSpec) -> tuple[np.ndarray, Any, bool]:
    """The body as a float32 batch, plus the eps and return_logits it carries (None, False if none);
    the batch is counted in the request's `Hold` before it is allocated."""
    hold: Hold = request.scope["gloro.hold"]
    content_type = (header(request, "content-type") or "").split(";", 1)[0].strip().lower()
    if content_type == "multipart/form-data":
        return await _decode_multipart(request, spec, hold)
    body = await read_body(request)
    if not body:
        raise InvalidInput("empty body; send image files, an image, or JSON instances")
    if content_type == "application/json":
        return await _decode_json(body, spec, hold)
    if content_type.startswith("image/") or content_type == "application/octet-stream":
        hold.inputs(1, spec)
        return await decode_images_in_turns([body], spec), None, False
    raise UnsupportedMediaType(
        f"content type {content_type[:64] or '(none)'!r} is not accepted; send multipart/form-data, "
        "image/* or application/json"
    )


class ImageAPI:
    """Predict endpoints read their parameters from the request themselves (documented in
    PREDICT_PARAMETERS): FastAPI's per-request parameter validation costs more than the model."""

    def __init__(self, models: Models) -> None:
        self.models = models

    async def predict(self, request: Request) -> Response:
        return await self._predict(request, self.models.get(request.path_params["name"]))

    async def predict_default(self, request: Request) -> Response:
        return await self._predict(request, self.models.get())

    async def _predict(self, request: Request, service: ModelService) -> Response:
        request.scope["gloro.model"] = service.spec.name
        inputs, body_epsilon, body_logits = await decode_predict_request(request, service.spec.manifest.input)
        query = request.query_params if request.scope["query_string"] else {}  # parsing "" costs too
        eps = parse_epsilon(body_epsilon if body_epsilon is not None else query.get("epsilon"), service.spec.epsilon)
        prediction = await service.predict(inputs, eps)
        return FastJSONResponse(predict_body(prediction, body_logits or _truthy(query.get("return_logits", ""))))

    async def list_models(self) -> Response:
        return FastJSONResponse({"models": [model_info(s) for s in self.models.services.values()]})

    async def get_model(self, name: str) -> Response:
        return FastJSONResponse(model_info(self.models.get(name)))

    def routes(self) -> list[Route]:
        predict = {"response_model": PredictResponse, "openapi_extra": {**PREDICT_BODY, "parameters": QUERY}}
        named = {"response_model": PredictResponse, "openapi_extra": {**PREDICT_BODY, "parameters": [NAME, *QUERY]}}
        return [
            Route("GET", "/v1/models", self.list_models, "List the served models", {"response_model": ModelList}),
            Route("GET", "/v1/models/{name}", self.get_model, "Describe a model", {"response_model": ModelInfo}),
            Route("POST", "/v1/models/{name}/predict", self.predict, "Classify and certify images", named, direct=True),
            Route("POST", "/v1/predict", self.predict_default, "Classify and certify with the default model", predict,
                  direct=True),
        ]
