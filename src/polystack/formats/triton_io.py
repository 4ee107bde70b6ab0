"""A model's signature from its Triton config, for models whose files do not say what they take and give
(Triton's Python-backend models, TorchScript modules): the config's inputs and outputs, with the batch
dimension where it batches, each in the shape the model sees (a ``reshape``'s where the config gives one, as
Triton hands the backend the reshaped tensor), and the control inputs its sequence batching sets."""

from __future__ import annotations

import json
from typing import Any

from polystack.errors import InvalidModelFile, InvalidRequest, quote
from polystack.types import DType, Signature, TensorSpec

TYPES = {f"TYPE_{d.value}": d for d in DType if d is not DType.BYTES} | {"TYPE_STRING": DType.BYTES}
PYTHON = "a Python model"  # the kind of model that may take no inputs
_INT32, _INT64 = 1 << 31, 1 << 63  # the ranges of a config's int32 and int64 fields: from -N to N - 1
_CONTROL_TYPES = {"int32_false_true": DType.INT32, "fp32_false_true": DType.FP32, "bool_false_true": DType.BOOL}


def signature(config: dict[str, Any], kind: str) -> Signature:
    """The inputs and outputs ``config`` declares for ``kind`` of model (as errors name it: "a Python model"); a
    config whose fields hold values of the wrong kind is refused saying which (a load's config is the client's)."""
    batched = whole(config.get("max_batch_size") or 0, "the config's max_batch_size", -_INT32, _INT32 - 1) > 0
    found: dict[str, list[TensorSpec]] = {"input": [], "output": [], "optional": []}
    for key in ("input", "output"):
        items = config.get(key) or []
        if isinstance(items, dict):  # a lone message where the field repeats, as protobuf's JSON reading takes it
            items = [items]
        if not isinstance(items, list):
            raise InvalidModelFile(f"the config's {key} must be a list of tensors (name, data_type, dims)")
        # a model taking nothing (a generator, a self-test; batched, every request is refused, as Triton's are),
        # or giving nothing (its answers then carry no outputs), as Triton loads one
        if not items and kind == PYTHON:
            continue
        if not items:
            raise InvalidModelFile(
                f"{kind}'s config lists its {key}s (name, data_type, dims): nothing else says what its code "
                f"{'takes' if key == 'input' else 'returns'}"
            )
        for item in items:
            if not isinstance(item, dict):
                raise InvalidModelFile(
                    f"the config's {key} {json.dumps(item)} is not a tensor: give an object with a name, a data_type "
                    "(TYPE_FP32, ...) and dims"
                )
            name, dtype, dims = item.get("name"), item.get("data_type"), item.get("dims")
            known = isinstance(dtype, str) and dtype in TYPES
            if not isinstance(name, str) or not name or not known or not isinstance(dims, list):
                raise InvalidModelFile(
                    f"{_triton_words(key, name, dtype, dims, config.get('name'))}the config's {key} "
                    f"{json.dumps(item)} needs a name, a data_type (TYPE_FP32, ...) and dims"
                )
            reshape, what = item.get("reshape"), f"the config's {key} {name!r}'s dims"
            if isinstance(reshape, dict) and isinstance(reshape.get("shape", []), list):
                dims = reshape.get("shape", [])  # the shape the model sees; model_config checks it against dims
                what = f"the config's {key} {name!r}'s reshape"
            shape = tuple(whole(d, what, -_INT64, _INT64 - 1) for d in dims)
            spec = TensorSpec(name, TYPES[str(dtype)], ((-1,) if batched else ()) + shape)
            found["optional" if key == "input" and item.get("optional") else key].append(spec)
    listed = {t.name for t in found["input"] + found["optional"]}
    found["input"] += [c for c in controls(config, batched) if c.name not in listed]
    return Signature(tuple(found["input"]), tuple(found["output"]), tuple(found["optional"]))


def whole(v: Any, what: str, lo: int, hi: int) -> int:
    """A config's whole number ``v`` from ``lo`` to ``hi``, as protobuf's JSON reading takes one (a number, 1.0
    for 1, or a string of one for 64-bit fields); refused saying ``what`` it is otherwise (``config_schema`` reads
    every config's numbers with it)."""
    if isinstance(v, str) and len(v) <= 21 and v.isascii() and (v.isdigit() or (v[:1] == "-" and v[1:].isdigit())):
        v = int(v)  # protobuf's JSON writes 64-bit integers as strings
    elif isinstance(v, float) and v.is_integer():
        v = int(v)  # and its parsers take 1.0 for 1
    if isinstance(v, bool) or not isinstance(v, int) or not lo <= v <= hi:
        raise InvalidRequest(f"{what}: {quote(v)} is not a whole number from {lo} to {hi}")
    return v


def _triton_words(key: str, name: Any, dtype: Any, dims: Any, model: Any) -> str:
    """Triton's words (ValidateIOShape) for a config tensor without its name, data_type or dims, followed by
    ": "; "" for another fault (a data_type that is not Triton's)."""
    if not isinstance(name, str) or not name:
        words = f"model {key} must specify 'name'"
    elif not dtype:
        words = f"model {key} '{name}' must specify 'data_type'"
    elif isinstance(dtype, str) and dtype in TYPES and not isinstance(dims, list):
        words = f"model {key} '{name}' must specify 'dims'"
    else:
        return ""
    return f"{words} for {model}: " if isinstance(model, str) and model else f"{words}: "


def controls(config: dict[str, Any], batched: bool) -> list[TensorSpec]:
    """The control inputs its sequence batching sets (START, END, READY, CORRID): inputs of the model that its
    config lists there alone, one value per request."""
    specs = []
    sequence = config.get("sequence_batching")
    # a config of the wrong shape here lists no controls: the config's own checks refuse it, in Triton's words
    inputs = sequence.get("control_input") if isinstance(sequence, dict) else None
    for control_input in inputs if isinstance(inputs, list) else []:
        listed = control_input.get("control") if isinstance(control_input, dict) else None
        listed = listed if isinstance(listed, list) and listed and isinstance(listed[0], dict) else [{}]
        # the values given (GET config shows those not used as empty lists, as Triton prints them)
        kind = next((_CONTROL_TYPES[k] for k in _CONTROL_TYPES if listed[0].get(k)), None)
        if kind is None:  # CONTROL_SEQUENCE_CORRID: its data_type (one the server's checks of the config read)
            kind = TYPES.get(str(listed[0].get("data_type")), DType.UINT64)
        name = control_input.get("name") if isinstance(control_input, dict) else None
        if isinstance(name, str) and name:
            specs.append(TensorSpec(name, kind, ((-1,) if batched else ()) + (1,)))
    return specs
