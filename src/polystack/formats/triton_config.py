"""A Triton model config as Triton hands it to a model's code (a Python model's ``args["model_config"]``).

tritonserver 2.51 gives ``initialize`` the completed ModelConfig as protobuf's JSON with every field printed at its
default (``"kind": "CONTROL_SEQUENCE_START"``, ``"optional": false``, ``"state": []``), its 64-bit integers as
numbers (``"max_sequence_idle_microseconds": 5000000``, where protobuf's JSON writes a string), its instance groups
named and placed, and its optimization and version policy at their defaults; a message field no one set (a
``response_cache``, a strategy) stays out, as in its GET config. Models read it so (``control["kind"]``), and one
failed to load where polystack left the defaults out (helper-206). Written by hand on protobuf's JSON printer: the
int64 fix-up and the completion are Triton's own steps, which no library does.
"""

from __future__ import annotations

import json
from typing import Any

_OPTIMIZATION = {
    "priority": "PRIORITY_DEFAULT",
    "input_pinned_memory": {"enable": True},
    "output_pinned_memory": {"enable": True},
    "gather_kernel_buffer_threshold": 0,
    "eager_batching": False,
}


def as_handed(config: dict[str, Any], name: str, default_filename: str) -> str:
    """``config`` (a model's, completed as far as polystack completes it) as Triton hands it to the model's code,
    as JSON; as it is where protobuf cannot read it (a field of a newer Triton's, say)."""
    from google.protobuf import json_format
    from tritonclient.grpc import model_config_pb2  # Triton's model_config.proto, generated

    try:
        message = json_format.ParseDict(config, model_config_pb2.ModelConfig(), ignore_unknown_fields=True)
    except json_format.ParseError:
        return json.dumps(config)
    doc = json_format.MessageToDict(
        message, preserving_proto_field_name=True, always_print_fields_with_no_presence=True
    )
    _numbers(doc, model_config_pb2.ModelConfig.DESCRIPTOR)
    doc["name"] = doc.get("name") or name
    _newer_fields(doc, config)
    doc["default_model_filename"] = doc.get("default_model_filename") or default_filename
    if not doc.get("version_policy"):  # (one given, ``all: {}`` say, is kept)
        doc["version_policy"] = {"latest": {"num_versions": 1}}
    optimization = doc.setdefault("optimization", {})
    for key, value in _OPTIMIZATION.items():  # Triton's normalization: pinned memory on unless a config turns it off
        optimization.setdefault(key, value)
    for i, group in enumerate(doc.get("instance_group", [])):
        group["name"] = group.get("name") or f"{doc['name']}_{i}"
        group["count"] = group.get("count") or 1
        if group.get("kind", "KIND_AUTO") == "KIND_AUTO":  # where a host without GPUs places it
            group["kind"] = "KIND_CPU"
    return json.dumps(doc)


def _newer_fields(doc: dict[str, Any], config: dict[str, Any]) -> None:
    """The fields of Triton 24.x's config that the proto polystack reads with (tritonclient's) lacks, as 2.51 hands
    them: ``runtime`` and each input's and output's ``is_non_linear_format_io``, the config's own or the default."""
    runtime = config.get("runtime")
    doc["runtime"] = runtime if isinstance(runtime, str) else ""
    for key in ("input", "output"):
        given = {t.get("name"): t for t in config.get(key) or () if isinstance(t, dict)}
        for tensor in doc.get(key) or ():
            flag = given.get(tensor.get("name"), {}).get("is_non_linear_format_io")
            tensor["is_non_linear_format_io"] = flag if isinstance(flag, bool) else False


def _numbers(doc: dict[str, Any], descriptor: Any) -> None:
    """``doc``'s 64-bit integer fields (protobuf's JSON writes them as strings) as numbers, in place, as Triton's
    ModelConfigToJson fixes them up."""
    for field in descriptor.fields:
        value = doc.get(field.name)
        if value is None:
            continue
        message = field.message_type
        if message is not None and message.GetOptions().map_entry:
            inner = message.fields_by_name["value"]
            for key, item in value.items():
                if inner.message_type is not None:
                    _numbers(item, inner.message_type)
                elif _is_int64(inner):
                    value[key] = int(item)
        elif message is not None:
            for item in value if isinstance(value, list) else [value]:
                _numbers(item, message)
        elif _is_int64(field):
            doc[field.name] = [int(v) for v in value] if isinstance(value, list) else int(value)


def _is_int64(field: Any) -> bool:
    return field.cpp_type in (field.CPPTYPE_INT64, field.CPPTYPE_UINT64)
