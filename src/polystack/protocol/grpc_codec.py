"""The gRPC codec: ``ModelInferRequest`` to ``InferRequest`` and ``InferResponse`` to ``ModelInferResponse``.

Inputs arrive either all as ``raw_input_contents`` (what tritonclient sends: one raw little-endian
buffer per input, in input order) or as typed ``contents``. Outputs always go back as
``raw_output_contents``, as Triton does and tritonclient expects.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from polystack.errors import InvalidRequest, InvalidTensor
from polystack.protocol import classification
from polystack.protocol.grpc_gen import inference_pb2 as pb
from polystack.protocol.grpc_raw import VIEW_FROM_BYTES, ViewedResponse
from polystack.protocol.wire import (
    TRITON_PARAMETERS,
    InferRequest,
    InferResponse,
    RegionReader,
    RequestedOutput,
    cast_numbers,
    check_name,
    from_raw,
    from_shared_memory,
    input_twice,
    no_shared_memory,
    parse_dtype,
    parse_shape,
    raw_view,
    requested_once,
    shared_memory_ref,
    to_raw,
)
from polystack.types import DType

# datatype -> the typed-contents field that carries it
_CONTENTS_FIELD = {
    DType.BOOL: "bool_contents",
    DType.UINT8: "uint_contents",
    DType.UINT16: "uint_contents",
    DType.UINT32: "uint_contents",
    DType.UINT64: "uint64_contents",
    DType.INT8: "int_contents",
    DType.INT16: "int_contents",
    DType.INT32: "int_contents",
    DType.INT64: "int64_contents",
    DType.FP32: "fp32_contents",
    DType.FP64: "fp64_contents",
    DType.BYTES: "bytes_contents",
}


# the typed contents fields in the order Triton reads them (InferGRPCToInput): each one's datatype, given the
# input's (int_contents and uint_contents carry the 8- and 16-bit types too)
_FIELD_ORDER = (
    ("bool_contents", lambda d: DType.BOOL),
    ("int_contents", lambda d: d if d in (DType.INT8, DType.INT16) else DType.INT32),
    ("int64_contents", lambda d: DType.INT64),
    ("uint_contents", lambda d: d if d in (DType.UINT8, DType.UINT16) else DType.UINT32),
    ("uint64_contents", lambda d: DType.UINT64),
    ("fp32_contents", lambda d: DType.FP32),
    ("fp64_contents", lambda d: DType.FP64),
    ("bytes_contents", lambda d: DType.BYTES),
)
# the integer fields, at the width protobuf holds them
_WIDE = {"uint_contents": np.uint64, "uint64_contents": np.uint64, "int_contents": np.int64, "int64_contents": np.int64}


def param_value(p: Any) -> Any:
    """The Python value of an InferParameter / ModelRepositoryParameter."""
    which = p.WhichOneof("parameter_choice")
    return getattr(p, which) if which else None


def params_dict(params: Mapping[str, Any]) -> dict[str, Any]:
    return {k: param_value(v) for k, v in params.items()}


_RESERVED_PARAMETER = "triton_enable_empty_final_response"  # the one triton_ key a request may carry


def request_params(params: Mapping[str, Any]) -> dict[str, Any]:
    """A request's parameters; a ``sequence_id`` given as a negative ``int64_param`` is the unsigned 64-bit ID
    with those bits, as Triton reads it (its C++ and Java clients send every uint64 ID so). Refused in Triton's
    words: a ``triton_`` key other than ``triton_enable_empty_final_response`` (a bool, which changes nothing
    here: every model answers once), and a parameter of the model's own (custom) that is a uint64 (Triton's
    backends take an int64, a bool, a string or a double)."""
    out: dict[str, Any] = {}
    for key, value in params.items():
        which = value.WhichOneof("parameter_choice")
        out[key] = getattr(value, which) if which else None
        if key == "timeout" and which != "int64_param":  # priority may be a uint64_param, as tritonclient sends it
            raise InvalidRequest("invalid value type for 'timeout' parameter, expected int64_param.")
        if key == "priority" and which not in ("int64_param", "uint64_param"):  # Triton's types and words (helper-114)
            raise InvalidRequest("invalid value type for 'priority' parameter, expected int64_param or uint64_param.")
        if key == "priority" and which == "int64_param" and value.int64_param < 0:
            raise InvalidRequest("invalid value for 'priority', expected value >= 0.")
        if key == "sequence_id" and which not in ("int64_param", "string_param"):  # Triton's types and words
            raise InvalidRequest("invalid value type for 'sequence_id' parameter, expected int64_param or string_param.")
        if key in ("sequence_start", "sequence_end") and which != "bool_param":
            raise InvalidRequest(f"invalid value type for '{key}' parameter, expected bool_param.")
        if key in TRITON_PARAMETERS:
            continue
        if key.startswith("triton_"):
            if key != _RESERVED_PARAMETER:
                raise InvalidRequest(
                    "parameter keys starting with 'triton_' are reserved for Triton usage. Only the following keys "
                    f"starting with 'triton_' are allowed: {_RESERVED_PARAMETER}; rename {key!r}"
                )
            if which != "bool_param":
                raise InvalidRequest(f"invalid value type for '{key}' parameter, expected bool_param.")
        elif which not in ("int64_param", "bool_param", "string_param", "double_param"):  # Triton's (2.51: double too)
            raise InvalidRequest(
                f"invalid value type for '{key}' parameter, expected int64_param, bool_param, or string_param."
            )
    sid = params.get("sequence_id")
    if sid is not None and sid.WhichOneof("parameter_choice") == "int64_param" and out["sequence_id"] < 0:
        out["sequence_id"] &= (1 << 64) - 1
    return out


def has_contents(tensor: pb.ModelInferRequest.InferInputTensor) -> bool:
    """Whether ``tensor`` carries typed contents: an empty ``contents`` (MLServer's gRPC converter sets one beside
    raw data) holds no values, so it is none, where Triton refuses it as data sent both ways."""
    return tensor.HasField("contents") and tensor.contents.ByteSize() > 0


def decode_infer_request(req: pb.ModelInferRequest, regions: RegionReader | None = None) -> InferRequest:
    """``regions``: the registered shared memory regions inputs may be read from (None: refused)."""
    raw = req.raw_input_contents  # no inputs: the model's to refuse (one whose inputs are all optional takes it)
    typed = next((t.name for t in req.inputs if has_contents(t)), None) if raw else None
    if typed is not None:  # Triton's words (its explicit-content example looks for them), then what to do
        raise InvalidRequest(
            f"contents field must not be specified when using raw_input_contents for {typed!r} for model "
            f"{req.model_name!r}; send every input one way or the other"
        )
    # parameters read only when a tensor has some: an empty protobuf map cost ~1 us a tensor to convert
    shared = [
        shared_memory_ref(params_dict(t.parameters), f"input {t.name!r}") if t.parameters else None for t in req.inputs
    ]
    # raw_input_contents hold the inputs not in shared memory, in order (as tritonclient sends them); any past
    # the last input's are left unread, as Triton leaves them (tritonserver 2.51 answers such a request: helper-107)
    in_request = shared.count(None)
    if raw and len(raw) < in_request:
        unfed = [t.name for t, shm in zip(req.inputs, shared, strict=True) if shm is None][len(raw)]
        raise InvalidRequest(  # Triton's words, then what to do
            f"unable to find data for input tensor {unfed!r} for model {req.model_name!r} in request.: the request "
            f"has {in_request} inputs outside shared memory but {len(raw)} raw_input_contents; send one per input"
        )
    inputs: dict[str, np.ndarray] = {}
    next_raw = 0
    for t, shm in zip(req.inputs, shared, strict=True):
        name = check_name(t.name, "input")
        if name in inputs:
            raise input_twice(name)
        dtype = parse_dtype(t.datatype, name)
        shape = parse_shape(list(t.shape), name)
        if shm is not None:
            if has_contents(t):
                raise InvalidTensor(
                    f"input {name!r} has shared memory parameters and contents in the request; send its data one way"
                )
            if regions is None:
                raise no_shared_memory(f"input {name!r}")
            inputs[name] = from_shared_memory(name, dtype, shape, regions, shm, req.model_name)
        elif raw:
            inputs[name] = from_raw(name, dtype, shape, raw[next_raw], req.model_name)
            next_raw += 1
        else:
            inputs[name] = _from_contents(name, req.model_name, dtype, shape, t.contents)
    outputs: list[RequestedOutput] = []
    for o in req.outputs:
        check_name(o.name, "output")
        oparams = params_dict(o.parameters) if o.parameters else {}
        shm = shared_memory_ref(oparams, f"output {o.name!r}") if oparams else None
        if shm is not None and regions is None:
            raise no_shared_memory(f"output {o.name!r}")
        k = oparams.get("classification")
        outputs.append(RequestedOutput(o.name, True, 0 if k is None else classification.parse_count(k, o.name), shm))
    outputs = requested_once(outputs)
    return InferRequest(
        inputs=inputs, id=req.id or None, outputs=outputs or None, parameters=request_params(req.parameters)
    )


def _from_contents(name: str, model: str, dtype: DType, shape: tuple[int, ...], contents: Any) -> np.ndarray:
    _one_typed_field(name, model, dtype, contents)
    field = _CONTENTS_FIELD.get(dtype)
    if field is None:
        raise InvalidTensor(f"input {name!r}: {dtype.value} has no typed contents field; send raw_input_contents")
    values = getattr(contents, field)
    count = int(np.prod(shape, dtype=np.int64)) if shape else 1
    if len(values) != count:
        raise InvalidTensor(
            f"input {name!r}: shape {list(shape)} needs {count:,} elements but contents.{field} holds {len(values):,}"
        )
    if dtype is DType.BYTES:
        arr = np.empty(count, dtype=object)
        arr[:] = list(values)
        return arr.reshape(shape)
    wide = _WIDE.get(field)
    if wide is not None:  # read at the field's own width, then range-checked: numpy would wrap 300 to 44 in UINT8
        return cast_numbers(name, dtype, np.fromiter(values, dtype=wide, count=count)).reshape(shape)
    return np.asarray(values, dtype=dtype.numpy).reshape(shape)


def _one_typed_field(name: str, model: str, dtype: DType, contents: Any) -> None:
    """Triton's checks of an input's typed contents, in its words, then what to do: one field holds the data
    (a second one was dropped unread), and that field is the input's datatype's."""
    given = None
    for field, kind in _FIELD_ORDER:
        if not len(getattr(contents, field)):
            continue
        if given is not None:
            raise InvalidTensor(
                f"unexpected explicit tensor data for input tensor {name!r} for model {model!r}, binary data was "
                f"already supplied (in contents.{given}, and again in contents.{field}); send it in one field"
            )
        if kind(dtype) is not dtype:
            raise InvalidTensor(
                f"unexpected explicit tensor data for input tensor {name!r} for model {model!r} of type "
                f"'{kind(dtype).value}', expected datatype '{dtype.value}'"
                + (
                    f"; send it in contents.{_CONTENTS_FIELD[dtype]}"
                    if dtype in _CONTENTS_FIELD
                    else "; send raw_input_contents"
                )
            )
        given = field


def encode_unary_response(resp: InferResponse) -> pb.ModelInferResponse | ViewedResponse:
    """A unary call's answer, which ``grpc_raw.serialize_infer_response`` writes: one whose outputs hold
    ``VIEW_FROM_BYTES`` or more keeps them as their own buffers, not copies in the message."""
    if sum(a.nbytes for a in resp.outputs.values()) < VIEW_FROM_BYTES:
        return encode_infer_response(resp)
    return ViewedResponse(*_encoded(resp, raw_view))


def encode_infer_response(resp: InferResponse) -> pb.ModelInferResponse:
    out, raw = _encoded(resp, to_raw)
    out.raw_output_contents.extend(raw)
    return out


def _encoded(
    resp: InferResponse, raw: Callable[[np.ndarray], bytes | memoryview]
) -> tuple[pb.ModelInferResponse, list[bytes | memoryview]]:
    """``resp`` as a message without its raw outputs, and those outputs as ``raw`` gives them, in its outputs' order."""
    out = pb.ModelInferResponse(model_name=resp.model_name, model_version=resp.model_version, id=resp.id or "")
    for key, value in resp.parameters:  # (an ensemble's sequence parameters, as Triton's typed)
        if isinstance(value, bool):
            out.parameters[key].bool_param = value
        elif isinstance(value, int):
            out.parameters[key].int64_param = value
        else:
            out.parameters[key].string_param = value
    data: list[bytes | memoryview] = []
    for name, arr in resp.outputs.items():
        t = out.outputs.add()
        t.name = name
        t.datatype = DType.from_numpy(arr.dtype).value
        t.shape.extend(arr.shape)
        # one in shared memory: an empty raw entry in its place, as tritonserver 2.51 answers (helper-116), since
        # tritonclient pairs raw_output_contents with outputs by position
        data.append(b"" if name in resp.in_shared_memory else raw(arr))
    return out, data
