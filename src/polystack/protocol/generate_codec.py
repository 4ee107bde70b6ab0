"""Triton's generate extension body codec (``POST /v2/models/{m}/generate`` and ``.../generate_stream``), both
directions, as tritonserver 2.51 reads and writes it (its ``GenerateRequestClass``). Transport-free: the HTTP
adapter hands it a body and the model's inputs as its metadata gives them.

The extension is meant for text models (``{"text_input": "...", "parameters": {...}}`` answered
``{"text_output": "..."}``), but Triton reads any model's inputs this way, and so does this:

- **Request**: a JSON object. A key naming one of the model's inputs is that input's tensor, its value one JSON
  scalar or a flat list of them; any other key is a request parameter (a string, number or bool), as is each key
  of ``parameters`` (an object) that does not name an input; ``id`` (a string) is the request's id, echoed in the
  answer. A tensor's shape is the input's (the metadata's, with the batch dimension where the
  model batches), filled from the innermost dimension out: each fixed size takes its share of the elements, then
  the innermost ``-1`` takes what is left and any other ``-1`` is 1. So ``[-1, 4]`` takes 4 values as
  ``[1, 4]`` and 8 as ``[2, 4]``; 6 are refused, in Triton's words.
- **Response**: ``model_name``, ``model_version``, then each output by name: its values flat, or the value alone
  where the tensor has one element; BYTES as text; FP32 values as the float64 each one is, as ``/infer`` writes
  them. ``generate_stream`` sends the same object as one Server-Sent Event (``data: {...}``), since polystack's
  models answer each request once.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import numpy as np
import orjson

from polystack.errors import InvalidRequest, InvalidTensor
from polystack.protocol import http_codec
from polystack.protocol.wire import InferRequest, InferResponse, input_twice
from polystack.types import DType

Input = tuple[str, DType, Sequence[int]]  # name, datatype, shape as the model's metadata gives them

SSE_TYPE = b"text/event-stream; charset=utf-8"


def decode_generate(body: bytes | memoryview, inputs: Sequence[Input]) -> InferRequest:
    """A generate request body for a model whose inputs are ``inputs``; InvalidRequest / InvalidTensor say what
    is wrong (a missing input is the model's to refuse, in its own words, as Triton leaves it to its core)."""
    doc = http_codec.loads(body)
    if not isinstance(doc, dict):
        raise InvalidRequest('a generate request must be a JSON object, e.g. {"text_input": "...", "parameters": {}}')
    by_name = {name: (dtype, shape) for name, dtype, shape in inputs}
    twice = _named_twice(body, by_name)
    if twice is not None:
        raise input_twice(twice)
    tensors: dict[str, np.ndarray] = {}
    params: dict[str, Any] = {}
    request_id: str | None = None
    for key, value in doc.items():
        if key == "id" and key not in by_name and isinstance(value, str):
            request_id = value or None  # echoed, as Triton echoes it (an empty one is none)
        elif key == "parameters":
            if key in by_name:
                raise InvalidRequest(
                    "Keyword 'parameters' for nested schema also given as input tensor name; this model's input "
                    "'parameters' cannot be sent to the generate endpoint: send it to /infer"
                )
            if not isinstance(value, dict):
                raise InvalidRequest("Expected JSON object for keyword: 'parameters'")
            for inner, inner_value in value.items():
                _place(inner, inner_value, by_name, tensors, params)
        else:
            _place(key, value, by_name, tensors, params)
    if params:
        http_codec.check_params(params, reserved=False)  # Triton's generate endpoint takes triton_ keys
    return InferRequest(inputs=tensors, id=request_id, parameters=params)


def _named_twice(body: bytes | memoryview, inputs: dict[str, Any]) -> str | None:
    """An input an object of the body names twice, which a JSON reader (orjson, Python's) keeps the last of and
    tritonserver refuses; read again, keeping each object's keys (the body was read once: it is JSON, and nests
    1,024 levels at most)."""
    found: list[str] = []

    def pairs(items: list[tuple[str, Any]]) -> dict[str, Any]:
        seen: set[str] = set()
        for key, _ in items:  # the first key met again, as Triton's reading in order meets it
            if key in seen and key in inputs:
                found.append(key)
                break
            seen.add(key)
        return dict(items)

    try:
        json.loads(bytes(body), object_pairs_hook=pairs)
    except (RecursionError, ValueError):  # nested past Python's reader (no input is that deep), or read otherwise
        return None  # than orjson read it: the body is taken as orjson read it
    return found[0] if found else None


def _place(
    key: str,
    value: Any,
    by_name: dict[str, tuple[DType, Sequence[int]]],
    tensors: dict[str, np.ndarray],
    params: dict[str, Any],
) -> None:
    """``key`` as an input's tensor, where the model has that input, else as a request parameter."""
    spec = by_name.get(key)
    if spec is None:
        params[key] = value
        return
    if key in tensors:  # "x" at the top and again in "parameters"
        raise input_twice(key)
    dtype, dims = spec
    values = value if isinstance(value, list) else [value]
    if any(isinstance(v, list | dict) for v in values):
        raise InvalidTensor(
            f"The schema can not convert input {key!r} to tensor with proper shape: the generate endpoint takes "
            "one value or a flat list of values per input; send nested tensors to /infer"
        )
    shape = _shape(key, len(values), dims)
    tensors[key] = http_codec.from_json(key, dtype, shape, values)


def _shape(name: str, count: int, dims: Sequence[int]) -> tuple[int, ...]:
    """``count`` elements in the shape ``dims`` (its -1s resolved), as Triton's generate endpoint fills it."""
    shape = list(dims)
    left = count
    for d in reversed(shape):  # the fixed dimensions first, from the innermost out
        if d != -1:
            if d == 0 or left % d:
                raise _no_shape(name, count, dims)
            left //= d
    for i in range(len(shape) - 1, -1, -1):  # the innermost -1 takes what is left, any other is 1
        if shape[i] == -1:
            shape[i], left = left, 1
    if left != 1:
        raise _no_shape(name, count, dims)
    return tuple(shape)


def _no_shape(name: str, count: int, dims: Sequence[int]) -> InvalidTensor:
    return InvalidTensor(  # Triton's words, then why
        f"The schema can not convert input {name!r} to tensor with proper shape: {count} value(s) do not fill its "
        f"shape [{','.join(map(str, dims))}] (-1: any size)"
    )


def encode_generate(result: InferResponse) -> bytes:
    """The generate answer's JSON: the model, its answer's parameters (an ensemble's sequence parameters), as
    Triton's generate writes them, then each output by name (one element: the value alone)."""
    doc: dict[str, Any] = {}
    if result.id:
        doc["id"] = result.id
    doc["model_name"] = result.model_name
    doc["model_version"] = result.model_version
    doc.update(result.parameters)
    for name, arr in result.outputs.items():
        how = "the generate endpoints answer JSON alone: ask the infer endpoint for it as binary data (binary_data: true)"
        data = http_codec.json_data(arr, DType.from_numpy(arr.dtype), name, how)
        doc[name] = data[0] if len(data) == 1 else data
    return orjson.dumps(doc, option=orjson.OPT_SERIALIZE_NUMPY)


def event(payload: bytes) -> bytes:
    """One Server-Sent Event carrying ``payload`` (a JSON answer or error), as generate_stream sends each."""
    return b"data: " + payload + b"\n\n"
