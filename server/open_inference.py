"""The Open Inference Protocol v2 as gloro-serve speaks it, whatever carries it (REST in
server/routes/v2.py, gRPC in server/grpc_v2/): the tensors' names and types, the model metadata,
and the checks of an inference request's model, input and outputs.

One input, `input` FP32 [-1, C, H, W]; outputs `label` INT64 [-1], `certified` BOOL [-1],
`radius` FP32 [-1], `logits` FP32 [-1, m]; eps in the request's `parameters.epsilon`.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import numpy as np

from prometheus_client import CollectorRegistry

from server.decode import DATATYPE_FP32
from server.errors import BadRequest
from server.model_config import triton_model_config
from server.model_stats import triton_statistics
from server.service import ModelService, Prediction

INPUT = "input"
# output name -> (datatype, little-endian numpy dtype)
OUTPUTS: dict[str, tuple[str, str]] = {
    "label": ("INT64", "<i8"),
    "certified": ("BOOL", "|b1"),
    "radius": ("FP32", "<f4"),
    "logits": ("FP32", "<f4"),
}


def platform(service: ModelService) -> str:
    return "gloro_" + type(service.backend).__name__


def per_image_shapes(service: ModelService) -> dict[str, list[int]]:
    """Each output's shape for one image (the metadata puts the batch axis, -1, in front)."""
    return {"label": [], "certified": [], "radius": [], "logits": [len(service.spec.classes)]}


def model_metadata(service: ModelService) -> dict[str, Any]:
    """`$metadata_model_response` (gRPC's ModelMetadataResponse has all but `parameters`)."""
    spec = service.spec
    shapes = per_image_shapes(service)
    return {
        "name": spec.name,
        "versions": [spec.version],
        "platform": platform(service),
        "inputs": [{"name": INPUT, "datatype": DATATYPE_FP32, "shape": [-1, *spec.input_shape]}],
        "outputs": [
            {"name": name, "datatype": datatype, "shape": [-1, *shapes[name]]}
            for name, (datatype, _) in OUTPUTS.items()
        ],
        "parameters": {"epsilon": spec.epsilon, "classes": spec.classes},
    }


def model_configuration(service: ModelService) -> dict[str, Any]:
    """The model configuration extension's answer: Triton's ModelConfig, in its JSON form."""
    shapes = per_image_shapes(service)
    outputs = {name: (datatype, shapes[name]) for name, (datatype, _) in OUTPUTS.items()}
    return triton_model_config(service, outputs, INPUT, platform(service))


def model_statistics(registry: CollectorRegistry, services: Iterable[ModelService]) -> dict[str, Any]:
    """The statistics extension's answer for `services`, from the metrics in `registry`."""
    return triton_statistics(registry, [(s.spec.name, s.spec.version) for s in services])


def check_model(model_name: str | None, model_version: str | None, service: ModelService) -> None:
    """A request naming its model (KServe's REST client always does) must name the one it is sent to."""
    spec = service.spec
    if model_name is not None and model_name != spec.name:
        raise BadRequest(f"model_name {model_name[:64]!r} in the request, but the path names {spec.name!r}")
    if model_version not in (None, "", spec.version):
        raise BadRequest(f"model_version {model_version[:16]!r} in the request, but {spec.name} "
                         f"serves version {spec.version}")


def check_input(names: list[str], datatype: str) -> None:
    """The request's inputs, by name: exactly one, `input`, of FP32."""
    if len(names) != 1 or names[0] != INPUT:
        shown = [name[:32] for name in names]
        raise BadRequest(f"inputs {shown}: this model takes exactly one input named {INPUT!r}")
    if datatype != DATATYPE_FP32:
        raise BadRequest(f"input datatype {datatype[:16]!r}: this model takes {DATATYPE_FP32}")


def check_output_asked(name: str, parameters: Iterable[str], wanted: Iterable[str]) -> None:
    """One output a request names, with its parameters' keys, against those named before it."""
    if name not in OUTPUTS:
        raise BadRequest(f"unknown output {name[:32]!r}; outputs are {', '.join(OUTPUTS)}")
    if name in wanted:
        raise BadRequest(f"output {name!r} is asked for twice")
    if "classification" in parameters:
        raise BadRequest(f"output {name!r}: the classification extension (class_count) is not "
                         "supported; ask for logits and take the top classes")


def output_tensor(prediction: Prediction, name: str) -> np.ndarray:
    """The output called `name`, as the model's array (not yet in its wire dtype)."""
    if name == "certified":
        return prediction.certified
    return getattr(prediction.output, name)


def output_bytes(prediction: Prediction, name: str) -> bytes:
    """The output called `name` as the binary extension and gRPC's raw contents carry it:
    little-endian, row-major, BOOL one byte an element."""
    return np.ascontiguousarray(output_tensor(prediction, name), dtype=OUTPUTS[name][1]).tobytes()
