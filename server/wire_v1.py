"""Wire models of the image API (`/v1`), gloro-serve's own protocol (docs/server.md).

POST /v1/models/{name}/predict (and /v1/predict for the default model) takes multipart image
files, a raw image/* body, or the JSON body below, and answers `PredictResponse`.
"""

from __future__ import annotations

from typing import Any

import orjson
from pydantic import BaseModel, ConfigDict, Field

MAX_INSTANCES = 4096


class B64Image(BaseModel):
    """An encoded image (PNG, JPEG, ...) as standard base64."""

    model_config = ConfigDict(extra="forbid")

    b64: str


class PredictRequest(BaseModel):
    """JSON body: `{"instances": [{"b64": "..."} | pixels [C][H][W] in [0, 1]], "epsilon": 0.3,
    "return_logits": false}`. All instances are images, or all are pixel arrays."""

    model_config = ConfigDict(extra="forbid")

    instances: list[B64Image | list[Any]] = Field(min_length=1, max_length=MAX_INSTANCES)
    epsilon: float | None = Field(None, description="certify at this eps (default: the model's)")
    return_logits: bool = False


PREDICT_FIELDS = frozenset(PredictRequest.model_fields)  # the fields a body may have, from the model


def read_predict_body(body: bytes) -> tuple[list[str] | list[list[Any]], float | None, bool] | None:
    """The usual JSON bodies, read without pydantic: their instances (all base64 strings, or all
    pixel arrays as nested lists), epsilon and return_logits.

    None for anything else: a mix of images and arrays, other value types (pydantic converts some,
    such as "true" for a boolean), extra fields, invalid JSON. Such a body goes to `PredictRequest`,
    which accepts or refuses it and names what is wrong; what this function accepts,
    PredictRequest accepts with the same values (tests/server/test_server_wire.py). On the
    event loop it costs about 10 us a request less than pydantic (docs/benchmarks.md, item 17),
    and 7 MiB of pixel arrays 151 ms against 206 (`python -m bench.json_bodies`).
    """
    try:
        request = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None
    if type(request) is not dict or not request.keys() <= PREDICT_FIELDS:
        return None
    instances = request.get("instances")
    epsilon = request.get("epsilon")
    return_logits = request.get("return_logits", False)
    if (
        type(instances) is not list
        or not 0 < len(instances) <= MAX_INSTANCES
        or type(return_logits) is not bool
        or (epsilon is not None and type(epsilon) not in (int, float))
    ):
        return None
    if type(instances[0]) is list:
        return (instances, None if epsilon is None else float(epsilon), return_logits) if all(
            type(instance) is list for instance in instances) else None
    images = []
    for instance in instances:
        if type(instance) is not dict or len(instance) != 1 or type(b64 := instance.get("b64")) is not str:
            return None
        images.append(b64)
    return images, (None if epsilon is None else float(epsilon)), return_logits


class ClassPrediction(BaseModel):
    """One image's answer: `certified` is true exactly when `radius > epsilon`."""

    label: int
    class_name: str
    certified: bool
    radius: float | None = Field(description="certified l2 radius (null only if the model returned NaN)")
    logits: list[float] | None = Field(None, description="only when return_logits is set")


class PredictResponse(BaseModel):
    model: str
    version: str
    epsilon: float
    predictions: list[ClassPrediction]


class InputInfo(BaseModel):
    shape: tuple[int, int, int]
    color_mode: str
    range: tuple[float, float]


class ModelInfo(BaseModel):
    """What is served, with the manifest's key facts."""

    name: str
    version: str
    ready: bool
    epsilon: float
    train_epsilon: float | None
    classes: list[str]
    input: InputInfo
    architecture: str | None
    metrics: dict[str, Any] | None = Field(description="clean accuracy and VRA measured at export")
    backend: str
    max_batch_size: int


class ModelList(BaseModel):
    models: list[ModelInfo]


class ErrorBody(BaseModel):
    """Every error answer, on every route."""

    error: str
