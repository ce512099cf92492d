"""Wire models of the image API (`/v1`), gloro-serve's own protocol (docs/server.md).

POST /v1/models/{name}/predict (and /v1/predict for the default model) takes multipart image
files, a raw image/* body, or the JSON body below, and answers `PredictResponse`.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field


class B64Image(BaseModel):
    """An encoded image (PNG, JPEG, ...) as standard base64."""

    model_config = ConfigDict(extra="forbid")

    b64: str


class PredictRequest(BaseModel):
    """JSON body: `{"instances": [{"b64": "..."} | pixels [C][H][W] in [0, 1]], "epsilon": 0.3,
    "return_logits": false}`. All instances are images, or all are pixel arrays."""

    model_config = ConfigDict(extra="forbid")

    instances: list[B64Image | list[Any]] = Field(min_length=1, max_length=4096)
    epsilon: float | None = Field(None, description="certify at this eps (default: the model's)")
    return_logits: bool = False


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
