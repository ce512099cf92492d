"""The Open Inference Protocol v2 as gloro-serve speaks it, whatever carries it (REST in
server/routes/v2.py, gRPC in server/grpc_v2/): the tensors' names and types, the model metadata,
and the checks of an inference request's model, input and outputs.

One input, `input` FP32 [-1, C, H, W]; outputs `label` INT64 [-1], `certified` BOOL [-1],
`radius` FP32 [-1], `logits` FP32 [-1, m]; eps in the request's `parameters.epsilon`. With Triton's
classification extension an output asked for with `parameters.classification` k is `logits` as its
top k classes instead: BYTES [-1, k], each "logit:index:class name", the highest first.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from server.decode import DATATYPE_FP32
from server.errors import BadRequest
from server.model_config import triton_model_config
from server.model_stats import triton_statistics
from server.service import ModelService, Prediction

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry

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


def check_output_asked(name: str, parameters: Mapping[str, Any], wanted: Iterable[str]) -> int | None:
    """One output a request names, with its parameters, against those named before it: the number
    of top classes it asks for (classification extension), or None for the tensor itself."""
    if name not in OUTPUTS:
        raise BadRequest(f"unknown output {name[:32]!r}; outputs are {', '.join(OUTPUTS)}")
    if name in wanted:
        raise BadRequest(f"output {name!r} is asked for twice")
    count = parameters.get("classification")
    if count is None:
        return None
    if name != "logits":
        raise BadRequest(f"output {name!r}: classification (class_count) ranks the classes of logits only")
    if isinstance(count, bool) or not isinstance(count, int) or count < 1:
        raise BadRequest(f"output {name!r}: classification must be an integer >= 1, not {str(count)[:20]!r}")
    return count


@dataclass(frozen=True)
class OutputTensor:
    """One output of an answer, as the protocol carries it."""

    name: str
    datatype: str
    values: np.ndarray  # in the wire dtype; BYTES as an object array of str

    @property
    def shape(self) -> list[int]:
        return list(self.values.shape)

    def json_data(self) -> Any:
        """The flat `data` list of the JSON answer (orjson writes numeric arrays itself)."""
        return self.values.ravel().tolist() if self.datatype == "BYTES" else self.values.ravel()

    def raw(self) -> bytes:
        """The binary extension's and gRPC's raw bytes: little-endian and row-major, BOOL one byte
        an element, BYTES each element's UTF-8 after its length as 4 bytes."""
        if self.datatype == "BYTES":
            encoded = [text.encode() for text in self.values.ravel()]
            return b"".join(struct.pack("<I", len(item)) + item for item in encoded)
        return self.values.tobytes()  # row-major whatever the array's layout


def top_classes(logits: np.ndarray, names: list[str], count: int) -> np.ndarray:
    """Each row's `count` highest logits (every class when it has fewer), the highest first and a
    tie to the lower index, as Triton's "value:index:label" strings (NaN last). Formatted on the
    event loop: about 0.6 us a string with its encoding, plus a sort of each row (`python -m
    bench.classification`), so N x k is the cost to watch for models of many classes."""
    order = np.argsort(-logits, axis=1, kind="stable")[:, :count]
    rows = [[f"{value:f}:{index}:{names[index]}" for value, index in zip(row[indices].tolist(), indices.tolist())]
            for row, indices in zip(logits, order)]
    return np.array(rows, dtype=object).reshape(len(rows), order.shape[1])


def output_tensor(prediction: Prediction, name: str, classes: int | None = None) -> OutputTensor:
    """The output called `name` (its top `classes` classes when asked for) in its wire form."""
    if classes is not None:
        return OutputTensor(name, "BYTES", top_classes(prediction.output.logits, prediction.spec.classes, classes))
    datatype, dtype = OUTPUTS[name]
    array = prediction.certified if name == "certified" else getattr(prediction.output, name)
    return OutputTensor(name, datatype, np.asarray(array, dtype=dtype))
