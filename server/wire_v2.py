"""Wire models of the Open Inference Protocol v2 (KServe "V2 inference protocol", REST/JSON,
as implemented by Triton and KServe), with the binary tensor data extension.

See https://kserve.github.io/website/latest/modelserving/data_plane/v2_protocol/ and Triton's
docs/protocol/extension_binary_data.md. Only the parts a REST client uses are modelled; unknown
keys in `parameters` are kept.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, StrictInt

BINARY_HEADER = "inference-header-content-length"


class ServerMetadataResponse(BaseModel):
    """GET /v2: `$metadata_server_response`."""

    name: str
    version: str
    extensions: list[str]


class MetadataTensor(BaseModel):
    """`$metadata_tensor`: name, datatype, shape (-1 for a dynamic axis)."""

    name: str
    datatype: str
    shape: list[int]


class ModelMetadataResponse(BaseModel):
    """GET /v2/models/{name}[/versions/{v}]: `$metadata_model_response`."""

    name: str
    versions: list[str]
    platform: str
    inputs: list[MetadataTensor]
    outputs: list[MetadataTensor]
    parameters: dict[str, Any] | None = None


class RequestInput(BaseModel):
    """`$request_input`: the tensor as JSON `data`, or as `parameters.binary_data_size` bytes
    after the JSON header (binary extension)."""

    model_config = ConfigDict(extra="forbid")

    name: str
    shape: list[StrictInt] = Field(max_length=16)  # 28, not "28" or 28.0
    datatype: str
    parameters: dict[str, Any] | None = None
    data: Any = None


class RequestOutput(BaseModel):
    """`$request_output`: `parameters.binary_data` asks for the tensor in binary."""

    model_config = ConfigDict(extra="forbid")

    name: str
    parameters: dict[str, Any] | None = None


class InferRequest(BaseModel):
    """`$inference_request`. gloro-serve reads `parameters.epsilon` (default: the model's) and
    `parameters.binary_data_output`. `model_name` and `model_version` are not in the protocol's
    request, but KServe's client sends them in every one (and Triton's examples do): they must
    agree with the path."""

    model_config = ConfigDict(extra="forbid")

    id: str | None = None
    model_name: str | None = None
    model_version: str | None = None
    parameters: dict[str, Any] | None = None
    inputs: list[RequestInput] = Field(min_length=1, max_length=16)
    outputs: list[RequestOutput] | None = Field(None, max_length=16)


class ResponseOutput(BaseModel):
    """`$response_output`: `data`, or `parameters.binary_data_size` bytes after the JSON."""

    name: str
    shape: list[int]
    datatype: str
    parameters: dict[str, Any] | None = None
    data: list[Any] | None = None


class InferResponse(BaseModel):
    """`$inference_response`."""

    model_name: str
    model_version: str | None = None
    id: str | None = None
    parameters: dict[str, Any] | None = None
    outputs: list[ResponseOutput]


class StatDuration(BaseModel):
    """`$statistic_duration`: how many, and their time summed in nanoseconds."""

    count: int
    ns: int


class InferStatistics(BaseModel):
    """`$inference_statistics`."""

    success: StatDuration
    fail: StatDuration
    queue: StatDuration
    compute_input: StatDuration
    compute_infer: StatDuration
    compute_output: StatDuration
    cache_hit: StatDuration
    cache_miss: StatDuration


class ModelStatistics(BaseModel):
    """`$model_stat` (statistics extension)."""

    name: str
    version: str
    last_inference: int
    inference_count: int
    execution_count: int
    inference_stats: InferStatistics
    batch_stats: list[dict[str, Any]]


class StatisticsResponse(BaseModel):
    """GET /v2/models[/{name}[/versions/{v}]]/stats: `$stats_model_response`."""

    model_stats: list[ModelStatistics]
