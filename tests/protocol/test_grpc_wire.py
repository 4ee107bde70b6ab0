"""polystack's hand-written proto is wire-compatible with tritonclient's generated stubs."""

from __future__ import annotations

from typing import Any

import pytest
from tritonclient.grpc import model_config_pb2 as triton_config
from tritonclient.grpc import service_pb2 as triton_service

from polystack.protocol.grpc_gen import inference_pb2 as pb

OURS = pb.DESCRIPTOR


def _triton_message(name: str) -> Any:
    for module in (triton_service, triton_config):
        if name in module.DESCRIPTOR.message_types_by_name:
            return module.DESCRIPTOR.message_types_by_name[name]
    raise KeyError(name)


def _check(ours: Any, theirs: Any) -> None:
    for field in ours.fields:
        other = theirs.fields_by_number.get(field.number)
        assert other is not None, f"{ours.full_name}.{field.name} has no field {field.number} in Triton's proto"
        assert other.name == field.name, f"{ours.full_name}: field {field.number} is {other.name} there"
        assert other.type == field.type, f"{ours.full_name}.{field.name} has another wire type"
        assert other.is_repeated == field.is_repeated, f"{ours.full_name}.{field.name} repeated differs"
        if field.message_type is not None:
            _check(field.message_type, other.message_type)
        if field.enum_type is not None:
            theirs_values = {v.name: v.number for v in other.enum_type.values}
            for v in field.enum_type.values:
                assert theirs_values.get(v.name) == v.number, f"{field.enum_type.full_name}.{v.name}"
    for nested in ours.nested_types:
        _check(nested, theirs.nested_types_by_name[nested.name])


@pytest.mark.parametrize("name", sorted(OURS.message_types_by_name))
def test_every_message_matches_tritons(name: str) -> None:
    _check(OURS.message_types_by_name[name], _triton_message(name))


def test_service_methods_match_tritons() -> None:
    ours = OURS.services_by_name["GRPCInferenceService"]
    theirs = triton_service.DESCRIPTOR.services_by_name["GRPCInferenceService"]
    assert ours.full_name == theirs.full_name == "inference.GRPCInferenceService"
    for method in ours.methods:
        other = theirs.methods_by_name[method.name]
        assert other.input_type.name == method.input_type.name
        assert other.output_type.name == method.output_type.name


def test_messages_round_trip_between_the_two_stubs() -> None:
    req = triton_service.ModelInferRequest(model_name="m", model_version="2", id="r")
    t = req.inputs.add(name="x", datatype="FP32", shape=[1, 2])
    t.parameters["binary_data_size"].int64_param = 8
    req.raw_input_contents.append(b"\0" * 8)
    ours = pb.ModelInferRequest.FromString(req.SerializeToString())
    assert ours.inputs[0].shape == [1, 2] and ours.inputs[0].parameters["binary_data_size"].int64_param == 8
    config = pb.ModelConfig(name="m", max_batch_size=8)
    config.dynamic_batching.max_queue_delay_microseconds = 100
    back = triton_config.ModelConfig.FromString(config.SerializeToString())
    assert back.dynamic_batching.max_queue_delay_microseconds == 100
