"""The protocol's message classes, built from the compiled descriptor set (open_inference.binpb)
in a descriptor pool of their own.

No generated `_pb2` module: generated code pins the protobuf runtime it needs to protoc's
version, and a module registering `inference.*` in protobuf's default pool would clash with
tritonclient's, which registers the same names, in any process that imports both.
"""

from __future__ import annotations

import functools
from pathlib import Path

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
from google.protobuf.message import DecodeError, Message

from server.errors import BadRequest

PACKAGE = "inference"
SERVICE = f"{PACKAGE}.GRPCInferenceService"
HEALTH_PACKAGE = "grpc.health.v1"
HEALTH_SERVICE = f"{HEALTH_PACKAGE}.Health"
DESCRIPTOR_SET = Path(__file__).resolve().parent / "open_inference.binpb"  # open_inference.proto, health.proto


@functools.cache
def _pool() -> descriptor_pool.DescriptorPool:
    files = descriptor_pb2.FileDescriptorSet.FromString(DESCRIPTOR_SET.read_bytes())
    pool = descriptor_pool.DescriptorPool()
    for file in files.file:
        pool.Add(file)
    return pool


@functools.cache
def message(name: str, package: str = PACKAGE) -> type[Message]:
    """The class of message `name` of `package` ("ModelInferRequest", "ModelInferResponse.InferOutputTensor")."""
    return message_factory.GetMessageClass(_pool().FindMessageTypeByName(f"{package}.{name}"))


def methods(service: str = SERVICE) -> dict[str, tuple[type[Message], type[Message]]]:
    """Each call of `service` (a full name): its name -> (request class, response class)."""
    return {
        method.name: (message_factory.GetMessageClass(method.input_type),
                      message_factory.GetMessageClass(method.output_type))
        for method in _pool().FindServiceByName(service).methods
    }


def parse(message_class: type[Message], data: bytes) -> Message:
    """`data` as a `message_class`, or BadRequest naming it: parsed here rather than by grpc, which
    would answer a corrupt message UNKNOWN and log a traceback for each one a client sends."""
    try:
        return message_class.FromString(data)
    except DecodeError as exc:
        raise BadRequest(f"the request is not a valid {message_class.DESCRIPTOR.full_name} message ({exc})") from None
