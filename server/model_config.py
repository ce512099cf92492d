"""The Open Inference Protocol's model configuration extension: a served model described as
Triton's ModelConfig (model_config.proto) in JSON, as Triton answers GET /v2/models/{name}/config.

Triton's own tools read it: perf_analyzer takes the batch size limit and the input's shape
and type from it, and Model Analyzer the dynamic batching and instance settings. With
max_batch_size above 0 a tensor's dims leave out the batch axis, and an output of one number an
image (label, certified, radius) is dims [1] reshaped to [] as Triton writes it.
"""

from __future__ import annotations

import json
from typing import Any

from server.service import ModelService

# the protocol's datatype -> model_config.proto's DataType
_TYPES = {"FP32": "TYPE_FP32", "INT64": "TYPE_INT64", "BOOL": "TYPE_BOOL"}


def _output(name: str, datatype: str, dims: list[int]) -> dict[str, Any]:
    entry: dict[str, Any] = {"name": name, "data_type": _TYPES[datatype], "dims": dims or [1]}
    if not dims:
        entry["reshape"] = {"shape": []}
    return entry


def triton_model_config(service: ModelService, outputs: dict[str, tuple[str, list[int]]], input_name: str,
                        platform: str) -> dict[str, Any]:
    """`outputs` maps each output's name to its protocol datatype and its shape for one image, in the
    order the metadata lists them."""
    spec, config = service.spec, service.config
    body: dict[str, Any] = {
        "name": spec.name,
        "platform": platform,
        "max_batch_size": config.max_batch_size,
        "input": [{"name": input_name, "data_type": "TYPE_FP32", "format": "FORMAT_NONE",
                   "dims": list(spec.input_shape)}],
        "output": [_output(name, datatype, dims) for name, (datatype, dims) in outputs.items()],
        "dynamic_batching": {
            "max_queue_delay_microseconds": round(config.max_queue_delay * 1e6),
            "default_queue_policy": {
                "timeout_action": "REJECT",
                "default_timeout_microseconds": round(config.timeout * 1e6),
                "allow_timeout_override": False,
                "max_queue_size": config.queue_size,
            },
        },
        "instance_group": [{
            "name": f"{spec.name}_0",
            "kind": "KIND_GPU" if service.backend.on_gpu else "KIND_CPU",
            "count": config.instances,
        }],
        # model_config.proto's parameters are strings (ModelParameter.string_value)
        "parameters": {
            "epsilon": {"string_value": repr(spec.epsilon)},
            "classes": {"string_value": json.dumps(spec.classes)},
        },
    }
    if spec.version.isdigit():  # the repository's are 1 to 9 ASCII digits (repository.VERSION); Triton's int64s
        body["version_policy"] = {"specific": {"versions": [int(spec.version)]}}
    return body
