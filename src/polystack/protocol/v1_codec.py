"""KServe's V1 protocol body codec (``POST /v1/models/{m}:predict``), both directions: the TensorFlow Serving
REST API's request and response bodies, as KServe's V1 model servers and its ``InferenceRESTClient`` with
``protocol="v1"`` speak them. Transport-free: the HTTP adapter hands it a body and the model's inputs.

A request gives its tensors in one of two forms:

- **row** (``{"instances": [...]}``): one entry per batch item, stacked on a new first dimension. An entry
  is the item's value for a model of one input, or an object of every input's value (the same inputs in
  each entry).
- **columnar** (``{"inputs": ...}``): the whole tensor for a model of one input, or an object of whole
  tensors by input name.

The answer is ``{"predictions": ...}`` for both, as KServe's servers answer (TensorFlow Serving answers the
columnar form ``{"outputs": ...}``): the one output whole (a batch's is the list of its rows), or for several
outputs an object per instance (row form, where every output has a row for each) or an object of the outputs.

A tensor's shape is read from its nesting, which must be rectangular; its datatype is the model's for that
input. BYTES values are strings (sent as UTF-8) or ``{"b64": "..."}`` objects, as TensorFlow Serving reads
binary data; BYTES outputs come back as strings, or ``{"b64": ...}`` where they are not UTF-8. There are no
versions, request ids or requested outputs in V1: a request runs the model's latest served version and gets
every output. Non-finite floats are written ``null``, as KServe's own servers (orjson) write them.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import orjson

from polystack.errors import InvalidRequest, InvalidTensor, quote
from polystack.protocol import http_codec
from polystack.protocol.wire import InferRequest
from polystack.types import DType

Form = Literal["row", "columnar"]
_MAX_DIMS = 64  # numpy's limit, and far past any model's


@dataclass(frozen=True)
class Predict:
    """A decoded V1 request: the inference request, the form it took, and (row form) how many instances it gave:
    several outputs with a row for each are answered an object per instance."""

    request: InferRequest
    form: Form
    items: int | None  # row form: the number of instances


def decode_predict(body: bytes | memoryview, inputs: Mapping[str, DType]) -> Predict:
    """A V1 request body for a model whose inputs are ``inputs`` (name -> datatype, in the model's order);
    InvalidRequest / InvalidTensor say what is wrong."""
    doc = http_codec.loads(body)
    if not isinstance(doc, dict):
        raise InvalidRequest('the request body must be a JSON object: {"instances": [...]} or {"inputs": ...}')
    forms = [k for k in ("instances", "inputs") if k in doc]
    if len(forms) != 1:
        raise InvalidRequest(
            'a V1 request gives its tensors once, as "instances" (a list, one entry per item) or "inputs" (the '
            f"whole tensors){'; not both' if forms else ''}"
        )
    if forms[0] == "instances":
        instances = doc["instances"]
        if not isinstance(instances, list) or not instances:
            raise InvalidRequest('"instances" must be a non-empty list, one entry per item')
        tensors = _rows(instances, inputs)
        return Predict(_request(tensors, inputs), "row", len(instances))
    given = doc["inputs"]
    if isinstance(given, dict) and not _is_b64(given):
        tensors = dict(given)
    elif len(inputs) == 1:
        tensors = {next(iter(inputs)): given}
    else:
        raise InvalidRequest(
            f'"inputs" must be an object of the model\'s inputs by name ({", ".join(inputs)}): it takes more than one'
        )
    return Predict(_request(tensors, inputs), "columnar", None)


def _rows(instances: list[Any], inputs: Mapping[str, DType]) -> dict[str, list[Any]]:
    """The row form's instances, as each input's list of items."""
    if all(isinstance(i, dict) and not _is_b64(i) for i in instances):
        names = list(instances[0])
        for n, instance in enumerate(instances):
            if set(instance) != set(names):
                raise InvalidRequest(
                    f"instance {n} gives inputs {sorted(instance)} and instance 0 {sorted(names)}; every instance "
                    "gives the same inputs"
                )
        return {name: [instance[name] for instance in instances] for name in names}
    if any(isinstance(i, dict) and not _is_b64(i) for i in instances):
        raise InvalidRequest("every instance is an object of inputs by name, or none is")
    if len(inputs) != 1:
        raise InvalidRequest(
            f"the model takes {len(inputs)} inputs ({', '.join(inputs)}): each instance must be an object of them "
            'by name, {"<input>": <value>, ...}'
        )
    return {next(iter(inputs)): instances}


def _request(tensors: dict[str, Any], inputs: Mapping[str, DType]) -> InferRequest:
    arrays: dict[str, np.ndarray] = {}
    for name, value in tensors.items():
        dtype = inputs.get(name)
        # a name the model does not take is left, unread, to its checks, which say so in Triton's words
        arrays[name] = tensor(name, dtype, value) if dtype is not None else np.empty(0, dtype=object)
    return InferRequest(arrays)


def tensor(name: str, dtype: DType, value: Any) -> np.ndarray:
    """The tensor ``value`` (nested lists, or a scalar) holds, in ``dtype``."""
    shape = _shape(name, value)
    if dtype is DType.BYTES:
        flat = _leaves(value, len(shape))
        arr = np.empty(len(flat), dtype=object)
        arr[:] = [_bytes(name, v) for v in flat]
        return arr.reshape(shape)
    return http_codec.from_json(name, dtype, shape, value)


def _shape(name: str, value: Any) -> tuple[int, ...]:
    """The shape of nested lists, which must be rectangular (a loop, not recursion: the JSON parser takes
    nesting deeper than Python's recursion goes)."""
    shape: list[int] = []
    level = [value]
    while level and all(isinstance(v, list) for v in level):
        if len(shape) == _MAX_DIMS:
            raise InvalidTensor(f"input {name!r}: its lists nest deeper than {_MAX_DIMS} levels, the most dimensions a tensor has")
        size = len(level[0])
        if any(len(v) != size for v in level):
            raise InvalidTensor(f"input {name!r}: its nested lists are of different lengths at depth {len(shape)}")
        shape.append(size)
        level = [x for v in level for x in v]
    if any(isinstance(v, list) for v in level):
        raise InvalidTensor(
            f"input {name!r}: its nested lists hold values and lists side by side at depth {len(shape)}"
        )
    return tuple(shape)


def _leaves(value: Any, depth: int) -> list[Any]:
    level = [value]
    for _ in range(depth):
        level = [x for v in level for x in v]
    return level


def _is_b64(value: Any) -> bool:
    return isinstance(value, dict) and list(value) == ["b64"]


def _bytes(name: str, value: Any) -> bytes:
    if isinstance(value, str):
        return value.encode("utf-8")
    if _is_b64(value) and isinstance(value["b64"], str):
        try:
            return base64.b64decode(value["b64"], validate=True)
        except (binascii.Error, ValueError):
            raise InvalidTensor(f"input {name!r}: {quote(value['b64'])} is not base64") from None
    raise InvalidTensor(f'input {name!r}: BYTES values are strings or {{"b64": "<base64>"}}, not {quote(value)}')


def encode_predict(outputs: Mapping[str, np.ndarray], predict: Predict) -> bytes:
    """The answer's body, ``{"predictions": ...}`` whichever form the request took, as KServe's V1 servers answer:
    the one output whole (for a batch, a list of its rows); several outputs, an object per instance where every
    output has a row for each (the row form), else an object of the outputs whole."""
    values = {name: _value(arr) for name, arr in outputs.items()}
    if len(values) == 1:
        return orjson.dumps({"predictions": next(iter(values.values()))})
    n = predict.items
    if n is not None and all(arr.ndim and arr.shape[0] == n for arr in outputs.values()):
        return orjson.dumps({"predictions": [{name: values[name][i] for name in values} for i in range(n)]})
    return orjson.dumps({"predictions": values})


def _value(arr: np.ndarray) -> Any:
    if arr.dtype == np.object_:
        flat = [_text(v) for v in arr.reshape(-1)]
        out = np.empty(len(flat), dtype=object)
        out[:] = flat
        return out.reshape(arr.shape).tolist()
    if arr.dtype.name == "bfloat16":  # ml_dtypes' scalars are not JSON numbers
        arr = arr.astype(np.float32)
    return arr.tolist()


def _text(v: Any) -> Any:
    if not isinstance(v, bytes):
        return str(v)
    try:
        return v.decode("utf-8")
    except UnicodeDecodeError:
        return {"b64": base64.b64encode(v).decode("ascii")}
