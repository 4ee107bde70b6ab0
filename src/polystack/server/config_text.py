"""A model configuration's text: Triton's config.pbtxt or JSON into the JSON ``model_config.read`` takes
(``as_json``), a load's JSON read as Triton's protobuf reading takes it (keys without quotes, trailing commas, a lone
value where a field repeats: ``lists_where_repeated``), and parsed into a message of Triton's schema (``parse_json``,
``parse_config``, the label files its outputs name: ``label_files``).
"""

from __future__ import annotations

import importlib.metadata
import json
import re
from typing import Any

import orjson

from polystack.errors import InvalidRequest, quote
from polystack.protocol import http_codec
from polystack.server.config_schema import MAX_DEPTH, TRITON_FIELDS, read_message, read_string


def as_json(text: str) -> str:
    """A model configuration file's ``text`` as the JSON ``model_config.read`` takes: JSON as it is (what GET config
    returns), anything else read as Triton's config.pbtxt (protobuf text format, against the
    ModelConfig message tritonclient ships), so that a Triton model repository's files serve as they
    are. Text that is neither is refused, with the line and column where it stopped."""
    text = text.removeprefix("\ufeff")  # the byte-order mark some editors write
    if text.lstrip().startswith("{"):
        try:
            json.loads(text)
        except (ValueError, RecursionError) as e:
            raise InvalidRequest(f"not JSON: {e or 'nested too deep'}; fix it there") from None
        return lists_where_repeated(text)
    from google.protobuf import json_format, text_format
    from tritonclient.grpc import model_config_pb2  # Triton's model_config.proto, generated

    try:
        message = text_format.Parse(text, model_config_pb2.ModelConfig())
    except text_format.ParseError as e:
        where, reason = f"line {e.GetLine()}, column {e.GetColumn()}", _parse_reason(e)
        newer = re.search(r'Message type "inference\.([\w.]+)" has no field named "(\w+)"', reason)
        if newer and newer[2] in TRITON_FIELDS.get(_KINDS.get(newer[1], ""), ()):
            raise InvalidRequest(
                f"{where}: {newer[2]} is a field of newer Triton releases than the tritonclient "
                f"{importlib.metadata.version('tritonclient')} whose ModelConfig reads config.pbtxt here; leave it "
                "out, or give the config as JSON (the form GET config returns)"
            ) from None
        raise InvalidRequest(
            f"not a Triton config.pbtxt (protobuf text format): {where}: {reason}; fix that line, or give the JSON "
            "GET config returns"
        ) from None
    # as Triton's own JSON: field names as in the .proto, 64-bit integers as strings (read takes both)
    config = json_format.MessageToDict(message, preserving_proto_field_name=True)
    if "max_batch_size" not in config and "max_batch_size" in _top_level_fields(text):
        # protobuf drops a zero, but the file said it: 0 is no batching, where leaving it out lets polystack
        # choose (as Triton's auto-complete would)
        config["max_batch_size"] = 0
    return json.dumps(config)


def lists_where_repeated(text: str) -> str:
    """A load's JSON config as strict JSON, read as Triton's reading of it (protobuf's legacy JSON parser) reads it:
    keys without quotes, single-quoted strings and trailing commas taken (``_relaxed``), and a lone value where
    model_config.proto repeats a field (``"instance_group": {...}``) as a list of it; the text as it is where
    nothing changes or it is not a JSON object (``model_config.read`` says what is wrong with it)."""
    try:  # nesting no config has, refused by ``model_config.read``: not read here by parsers that recurse in Python,
        # whose depth leaves the collector's finalizers no stack (a test run failed on one's RecursionError)
        orjson.loads(text)
    except orjson.JSONDecodeError as e:
        if str(e).startswith("depth limit exceeded"):
            return text
    relaxed = False
    try:
        config = json.loads(text)
    except (ValueError, RecursionError):
        config, relaxed = _relaxed(text), True
    if not isinstance(config, dict):
        return text
    from tritonclient.grpc import model_config_pb2

    changed = _wrap_repeated(config, model_config_pb2.ModelConfig.DESCRIPTOR, 0)
    return json.dumps(config) if changed or relaxed else text


_MAX_RELAXED_CHARS = 1 << 20  # a config's text read by the slower relaxed parser (Triton's QA configs: a few KiB)


def _relaxed(text: str) -> Any:
    """``text`` read as JSON5 (the json5 package), a superset of what protobuf's legacy JSON parser takes beside JSON
    (keys without quotes, single-quoted strings, trailing commas: tritonserver 2.51 loads a config override so, and
    Triton's L0_iterative_sequence sends one); None where that fails too, or the text is too long to read slowly."""
    if len(text) > _MAX_RELAXED_CHARS:
        return None
    import json5

    try:
        return json5.loads(text, allow_duplicate_keys=False)
    except (ValueError, RecursionError):
        return None


def _wrap_repeated(d: dict[str, Any], descriptor: Any, depth: int) -> bool:
    """Wrap ``d``'s lone values of repeated fields of ``descriptor`` in lists, in place, through its messages;
    whether anything changed."""
    if depth > MAX_DEPTH:
        return False
    changed = False
    fields = {**descriptor.fields_by_name, **{f.json_name: f for f in descriptor.fields}}
    for key, value in d.items():
        field = fields.get(key)
        if field is None:
            continue
        is_map = field.message_type is not None and field.message_type.GetOptions().map_entry
        if field.is_repeated and not is_map and value is not None and not isinstance(value, list):
            d[key] = value = [value]
            changed = True
        if field.message_type is None:
            continue
        if is_map:
            inner = field.message_type.fields_by_name["value"]
            if inner.message_type is not None and isinstance(value, dict):
                for item in value.values():
                    if isinstance(item, dict):
                        changed |= _wrap_repeated(item, inner.message_type, depth + 1)
            continue
        for item in value if isinstance(value, list) else [value]:
            if isinstance(item, dict):
                changed |= _wrap_repeated(item, field.message_type, depth + 1)
    return changed


# the model_config.proto messages TRITON_FIELDS knows the fields of, by the name protobuf's errors give them
_KINDS = {
    "ModelConfig": "config",
    "ModelInput": "input",
    "ModelOutput": "output",
    "ModelInstanceGroup": "instance_group",
    "ModelDynamicBatching": "dynamic_batching",
    "ModelQueuePolicy": "default_queue_policy",
    "ModelWarmup": "model_warmup",
    "ModelWarmup.Input": "model_warmup.input",
    "ModelResponseCache": "response_cache",
}


def _parse_reason(e: Exception) -> str:
    """protobuf's message without its "line:column : " and the quoted line it repeats."""
    reason = str(e).split(" : ", 1)[-1]
    return re.sub(r"^'.*?': ", "", reason, count=1, flags=re.S)


def _top_level_fields(text: str) -> set[str]:
    """The fields protobuf text ``text`` sets at its top level (comments and strings skipped)."""
    from google.protobuf import text_format

    tokens = text_format.Tokenizer(text.splitlines())
    depth, names = 0, set()
    while not tokens.AtEnd():
        token = tokens.token
        if token in ("{", "<", "["):
            depth += 1
        elif token in ("}", ">", "]"):
            depth -= 1
        elif depth == 0 and (token[:1].isalpha() or token[:1] == "_"):
            names.add(token)
        tokens.NextToken()
    return names


def label_files(text: str, kind: str = "config") -> dict[str, str]:
    """The label files the outputs of config ``text`` (a model's, or of ``kind`` ensemble) name (``label_filename``),
    by output: what a load with model files must carry beside the model."""
    outputs = parse_config(text, kind).get("output", [])
    if not isinstance(outputs, list):
        raise InvalidRequest("output must be a list of tensors")
    found: dict[str, str] = {}
    for i, item in enumerate(outputs):
        where = f"output[{i}]"
        d = read_message(item, where, "output")
        label = read_string(d, "label_filename", where)
        if label:
            name = read_string(d, "name", where)
            if not name:
                raise InvalidRequest(f"{where} names label file {quote(label)} but no output; give the output's name")
            found[name] = label
    return found


def parse_config(text: str, kind: str = "config") -> dict[str, Any]:
    """A config's JSON ``text`` as a message of ``kind`` (a model's config, or an ensemble's)."""
    return read_message(parse_json(text), "config", kind)


def parse_json(text: str) -> Any:
    """A config's JSON ``text``, as it is (``parse_config`` reads it as a message)."""
    try:
        return http_codec.loads(text.encode())
    except InvalidRequest as e:
        # before the model is read: Triton's poll of it fails (tritonserver 2.51 answers such a load 500)
        raise InvalidRequest(  # Triton's words (its log's), then ours
            f"Invalid config override: the 'config' load parameter is not JSON: {e}"
        ).before_model_read() from None
