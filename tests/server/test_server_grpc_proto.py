"""The gRPC protocol's definition: the descriptor set gloro-serve ships is its .proto compiled, and
every message and call has the field numbers, types and names of Triton's own .proto (so Triton's
and KServe's clients read what it sends)."""

from __future__ import annotations

from pathlib import Path

import pytest
from google.protobuf import descriptor_pb2
from tritonclient.grpc import model_config_pb2, service_pb2

from server.grpc_v2.messages import DESCRIPTOR_SET, message

pytestmark = pytest.mark.unit

PROTO = DESCRIPTOR_SET.with_suffix(".proto")


def test_the_shipped_descriptor_set_is_the_proto_compiled(tmp_path: Path) -> None:
    from grpc_tools import protoc

    out = tmp_path / "compiled.binpb"
    protos = [str(PROTO), str(PROTO.parent / "health.proto")]  # in the order the .proto's header names them
    assert protoc.main(["protoc", f"-I{PROTO.parent}", f"--descriptor_set_out={out}", *protos]) == 0
    compiled = descriptor_pb2.FileDescriptorSet.FromString(out.read_bytes())
    shipped = descriptor_pb2.FileDescriptorSet.FromString(DESCRIPTOR_SET.read_bytes())
    assert shipped == compiled, f"regenerate {DESCRIPTOR_SET.name} as {PROTO.name}'s header says"


def _fields(descriptor) -> dict[str, tuple]:
    """Every field of a message and its nested messages (map entries aside): path -> (number, type,
    the type's name for a message or enum field), and every nested enum: path -> its values."""
    out: dict[str, tuple] = {}
    for f in descriptor.fields:
        of = f.message_type or f.enum_type
        out[f"{descriptor.name}.{f.name}"] = (f.number, f.type, of.name if of else None)
    for enum in descriptor.enum_types:
        out[f"{descriptor.name}.{enum.name}"] = tuple((v.name, v.number) for v in enum.values)
    for nested in descriptor.nested_types:
        if not nested.GetOptions().map_entry:
            out.update({f"{descriptor.name}.{k}": v for k, v in _fields(nested).items()})
    return out


def _tritons(name: str):
    """Triton's message `name`, from grpc_service.proto or model_config.proto."""
    for file in (service_pb2.DESCRIPTOR, model_config_pb2.DESCRIPTOR):
        if name in file.message_types_by_name:
            return file.message_types_by_name[name]
    raise AssertionError(f"Triton has no message {name}")


def test_the_health_service_is_grpcs_own() -> None:
    from grpc_health.v1 import health_pb2

    ours = message("HealthCheckRequest", "grpc.health.v1").DESCRIPTOR.file
    theirs = health_pb2.DESCRIPTOR
    for name, descriptor in ours.message_types_by_name.items():
        assert _fields(descriptor) == _fields(theirs.message_types_by_name[name]), name
    (service,) = ours.services_by_name.values()
    assert service.full_name == "grpc.health.v1.Health"
    their_service = theirs.services_by_name["Health"]
    for method in service.methods:
        their = their_service.methods_by_name[method.name]
        assert (method.input_type.name, method.output_type.name, method.server_streaming) == (
            their.input_type.name, their.output_type.name, their.server_streaming)


def test_every_message_has_tritons_field_numbers_and_types() -> None:
    ours = message("ModelInferRequest").DESCRIPTOR.file
    for name, descriptor in ours.message_types_by_name.items():
        mine, theirs = _fields(descriptor), _fields(_tritons(name))
        # every field of ours is Triton's; Triton's has more (the ones gloro-serve never fills)
        assert {k: theirs.get(k) for k in mine} == mine, name
    for name, enum in ours.enum_types_by_name.items():
        assert [(v.name, v.number) for v in enum.values] == [
            (v.name, v.number) for v in model_config_pb2.DESCRIPTOR.enum_types_by_name[name].values]
    (service,) = ours.services_by_name.values()
    theirs = service_pb2.DESCRIPTOR.services_by_name[service.name]
    assert service.full_name == theirs.full_name == "inference.GRPCInferenceService"
    for method in service.methods:
        their = theirs.methods_by_name[method.name]
        assert (method.input_type.name, method.output_type.name) == (their.input_type.name, their.output_type.name)
