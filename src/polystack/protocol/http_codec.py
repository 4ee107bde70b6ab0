"""The HTTP/REST body codec: JSON tensors and the binary tensor data extension, both directions.

A request body is a JSON header, optionally followed by raw tensors; ``Inference-Header-Content-Length``
says where the JSON ends. An input whose ``parameters.binary_data_size`` is set takes that many bytes
from the binary section, in input order; the sizes must add up to the section exactly. Outputs go
back binary when the output's ``parameters.binary_data`` asks for it, or, for the outputs of a request
that lists none, the request's ``binary_data_output`` (as in Triton: a listed output without
``binary_data`` is JSON).

simdjson parses inference requests: a tensor's numbers go from the JSON text into a numpy buffer in
C (``as_buffer``), without a Python float per element. Decoding a 3x32x32 FP32 image's request
takes 61 us that way against 181 us with orjson plus ``np.asarray``; a 64-float one is 3 us slower.
A header without a ``"data"`` key (binary tensors only, as tritonclient sends) has nothing for
simdjson to speed up: orjson reads it, 1 us against 9 us for a 32-row request's header.
Data that is not homogeneous numbers of the tensor's kind falls back to a Python list and the
general checks below, which say what is wrong. Both parsers refuse nesting deeper than 1,024
levels, so a hostile 10,000-deep document is a clean 400; a body simdjson refuses goes to orjson,
which reads it (integers over 64 bits) or names the error. orjson parses the other JSON bodies and
writes every response (it serialises numpy arrays without a Python list).
"""

from __future__ import annotations

import json
import math
import threading
from typing import Any, Literal

import numpy as np
import orjson
import simdjson

from polystack.errors import InvalidRequest, InvalidTensor, PolystackError, quote
from polystack.protocol import classification, loop_casts
from polystack.protocol.wire import (
    TRITON_PARAMETERS,
    InferRequest,
    InferResponse,
    RegionReader,
    RequestedOutput,
    cast_numbers,
    check_name,
    check_sequence_parameters,
    from_raw,
    from_shared_memory,
    input_twice,
    json_kind,
    no_shared_memory,
    parse_dtype,
    parse_shape,
    raw_view,
    requested_once,
    shared_memory_ref,
    string_count_words,
)
from polystack.types import DType

HEADER_LENGTH = "inference-header-content-length"

# simdjson's as_buffer kinds: "d" reads any JSON number as float64, "i"/"u" only integers that fit
# int64/uint64. Narrower integer tensors are range-checked after the buffer is read.
_BUFFER_KIND: dict[str, tuple[Literal["d", "i", "u"], type[np.generic]]] = {
    **{t: ("d", np.float64) for t in ("FP16", "FP32", "FP64")},
    **{t: ("i", np.int64) for t in ("INT8", "INT16", "INT32", "INT64")},
    **{t: ("u", np.uint64) for t in ("UINT8", "UINT16", "UINT32", "UINT64")},
}
# A parser keeps buffers sized to the largest document it has read: bodies above this get a parser
# of their own, so one huge request does not pin its size in memory for the life of the thread.
_KEEP_PARSER_BELOW = 1 << 20
_parsers = threading.local()
# Headers shorter than this are checked for a "data" key before choosing the parser (a copy and a
# scan that cost well under a microsecond at this size).
_SNIFF_BELOW = 4096
# pysimdjson counts an array's (or object's) items in 24 bits: len() stops here, and as_list / as_dict, which make a
# list of len() items and fill it with all of them, write past it (20 million values crashed the server). A body
# shorter than two bytes an item cannot hold so many: a longer one is turned into Python through orjson
# (``_python``), and its flat numbers are not checked against the stopped count.
_SIMDJSON_COUNT = (1 << 24) - 1
_HUGE = 2 * _SIMDJSON_COUNT


_NOT_JSON, _SEND_OBJECT = "the request body is not valid JSON", "; send a JSON object"


def loads(body: bytes | memoryview) -> Any:
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError as e:
        error = e
    # NaN, Infinity and -Infinity are not JSON, but Python's json (and so tritonclient) writes them for
    # non-finite floats: the standard library reads them, on this rare path only
    text = body if isinstance(body, bytes) else body.tobytes()
    if b"NaN" in text or b"Infinity" in text:
        try:
            doc = json.loads(text)
            orjson.dumps(doc)  # what orjson refuses besides the literals (a lone surrogate escape) stays refused
            return doc
        except (ValueError, RecursionError, orjson.JSONEncodeError):
            pass
    raise InvalidRequest(f"{_NOT_JSON} ({error}){_SEND_OBJECT}") from None


def decode_raw_request(body: bytes, model: str, config: dict[str, Any]) -> InferRequest:
    """A raw binary request (``Inference-Header-Content-Length: 0``): the whole body is the data of the model's
    one input, whose shape is deduced from ``config`` (the model's, as GET config shows it), and every output
    goes back binary, as Triton's ``EVBufferToRawInput`` and its core's ``Normalize`` read one: a batch of 1
    where the model batches, the config's dims, and at most one variable-sized dim, sized to fit the body;
    a BYTES input must take one element (``dims: [1]``), the whole body."""
    inputs = config.get("input") or []
    if len(inputs) != 1:
        raise InvalidRequest(
            f"Raw request must only have 1 input (found 1) to be deduced but got {len(inputs)} inputs in "
            f"'{model}' model configuration; send a JSON request (Inference-Header-Content-Length: the length "
            "of its JSON part) to name each input"
        )
    spec = inputs[0]
    name = str(spec["name"])
    kind = str(spec["data_type"])
    dtype = DType.BYTES if kind == "TYPE_STRING" else DType(kind.removeprefix("TYPE_"))
    shape = [1] if config.get("max_batch_size") else []
    dynamic = -1
    elements = 1
    for d in spec.get("dims") or []:
        if d == -1:
            if dynamic != -1:
                raise InvalidRequest(
                    f"The shape of the raw input '{name}' can not be deduced because there are more than one "
                    "variable-sized dimension; send a JSON request that gives its shape"
                )
            dynamic = len(shape)
        else:
            elements *= int(d)
        shape.append(int(d))
    if dtype is DType.BYTES:
        if dynamic != -1 or elements != 1:
            raise InvalidRequest(
                f"For BYTE datatype raw input '{name}', the model must have input shape [1]; '{model}' gives it dims "
                f"{spec.get('dims') or []}: send a JSON request"
            )
        data = np.empty(1, dtype=object)
        data[0] = bytes(body)
        return InferRequest({name: data.reshape(shape)}, parameters={"binary_data_output": True})
    if dynamic != -1:
        per = elements * dtype.itemsize
        if per and len(body) % per:
            shape[dynamic] = -1
            raise InvalidTensor(
                f"raw input '{name}' of '{model}': the body's {len(body):,} bytes are not a whole number of "
                f"{dtype.value} tensors of shape {shape} ({per:,} bytes for each step of its variable-sized dim)"
            )
        shape[dynamic] = len(body) // per if per else 0
    tensor = from_raw(name, dtype, tuple(shape), body, model)
    return InferRequest({name: tensor}, parameters={"binary_data_output": True})


def decode_infer_request(
    body: bytes,
    header_length: int | None = None,
    regions: RegionReader | None = None,
    length_by: str = "the Inference-Header-Content-Length header",
    model: str = "",
) -> InferRequest:
    """Parse an inference request body; raise InvalidRequest/InvalidTensor saying what is wrong.

    ``regions``: the registered shared memory regions inputs may be read from (None: refused); ``length_by``: how
    the client gives the JSON part's length, for the error that asks for it; ``model``: the model it is for (its
    name, which Triton's words carry)."""
    binary: memoryview | None = None
    if header_length is not None:
        if header_length < 0 or header_length > len(body):
            raise InvalidRequest(  # Triton's words, then what the header gives
                f"inference header size should be in range (0, {len(body)}), got: {header_length}; "
                "Inference-Header-Content-Length is the length in bytes of the body's JSON part"
            )
        view = memoryview(body)
        head: bytes | memoryview = view[:header_length]
        binary = view[header_length:]
    else:
        head = body
    try:
        doc = _request_doc(head)
    except InvalidRequest as e:
        if header_length is None and b'"binary_data_size"' in body[:65536]:
            raise InvalidRequest(
                "the body is not JSON alone: its inputs give binary_data_size, so binary tensor data follows the "
                f"JSON; send {length_by} with the JSON part's length in bytes"
            ) from None
        if header_length is not None and e.message.startswith(_NOT_JSON):  # the length may be what is wrong
            raise InvalidRequest(
                f"{e.message.removesuffix(_SEND_OBJECT)} in the body's first {header_length:,} bytes, its JSON part "
                f"as {length_by} gives it; that length must count the bytes of the JSON part as sent (UTF-8, not "
                "characters) and no more"
            ) from None
        raise
    if not isinstance(doc, dict):
        raise InvalidRequest("an inference request must be a JSON object with an 'inputs' list")
    try:
        return _request_of(doc, binary, regions, model)
    except PolystackError as e:  # the request's lines in the log carry the id it gave
        e.of_request(doc.get("id"))
        raise


def _request_of(
    doc: dict[str, Any], binary: memoryview | None, regions: RegionReader | None, model: str
) -> InferRequest:
    """The inference request ``doc`` gives (the JSON part, read), its binary tensors from ``binary``."""
    raw_inputs = doc.get("inputs")
    if not isinstance(raw_inputs, list):  # an empty one is the model's to refuse (one whose inputs are all optional
        # takes it, as Triton's)
        raise InvalidRequest("an inference request needs an 'inputs' list")
    inputs: dict[str, np.ndarray] = {}
    offset = 0
    for item in raw_inputs:
        if not isinstance(item, dict) or not isinstance(item.get("name"), str):
            raise InvalidRequest("each entry of 'inputs' must be an object with a string 'name'")
        name: str = check_name(item["name"], "input")
        if name in inputs:
            raise input_twice(name)
        dtype = parse_dtype(item.get("datatype"), name)
        shape = parse_shape(item.get("shape"), name)
        params = item.get("parameters") or {}
        if not isinstance(params, dict):
            raise InvalidTensor(f"input {name!r}: 'parameters' must be an object")
        size = params.get("binary_data_size")
        # shared memory parameters count where a region is named: Triton's HTTP front end reads them so (helper-116)
        shm = shared_memory_ref(params, f"input {name!r}") if params and "shared_memory_region" in params else None
        given = [k for k, v in (("data", item.get("data")), ("binary_data_size", size), ("shared_memory_region", shm))
                 if v is not None]  # fmt: skip
        if len(given) != 1:
            raise InvalidTensor(_one_way(name, given))
        if shm is not None:
            if regions is None:
                raise no_shared_memory(f"input {name!r}")
            inputs[name] = from_shared_memory(name, dtype, shape, regions, shm, model)
        elif size is not None:
            if isinstance(size, bool) or not isinstance(size, int) or size < 0:
                raise InvalidTensor(f"input {name!r}: binary_data_size must be a non-negative integer")
            if binary is None:
                raise InvalidRequest(
                    f"input {name!r} has binary_data_size but the request has no Inference-Header-Content-Length "
                    "header, so there is no binary section"
                )
            if offset + size > len(binary):
                raise InvalidTensor(
                    f"input {name!r}: binary_data_size {size:,} runs past the end of the binary section "
                    f"({len(binary) - offset:,} bytes left)"
                )
            inputs[name] = from_raw(name, dtype, shape, binary[offset : offset + size], model)
            offset += size
        else:
            inputs[name] = from_json(name, dtype, shape, item["data"], model)
    if binary is not None and offset != len(binary):
        raise InvalidRequest(
            f"the binary section has {len(binary):,} bytes but the inputs' binary_data_size add up to {offset:,}"
        )
    request_params = doc.get("parameters") or {}
    if not isinstance(request_params, dict):
        raise InvalidRequest("'parameters' must be an object")
    if request_params:
        check_params(request_params)
    _flag(request_params, "binary_data_output", "the request")  # checked here; the front end reads it for the answer
    outputs: list[RequestedOutput] | None = None
    raw_outputs = doc.get("outputs")
    if raw_outputs is not None:
        if not isinstance(raw_outputs, list):
            raise InvalidRequest("'outputs' must be a list of objects with a 'name'")
        outputs = []
        for o in raw_outputs:
            if not isinstance(o, dict) or not isinstance(o.get("name"), str):
                raise InvalidRequest("each entry of 'outputs' must be an object with a string 'name'")
            check_name(o["name"], "output")
            oparams = o.get("parameters") or {}
            if not isinstance(oparams, dict):
                raise InvalidRequest(f"output {o['name']!r}: 'parameters' must be an object")
            # without a region, shared memory parameters are left unread, as Triton's HTTP front end leaves them
            shm = shared_memory_ref(oparams, f"output {o['name']!r}") if "shared_memory_region" in oparams else None
            if shm is not None and regions is None:
                raise no_shared_memory(f"output {o['name']!r}")
            flag = (
                _flag(oparams, "binary_data", f"output {o['name']!r}")
                if oparams.get("binary_data") is not None
                else None
            )
            if flag and shm is not None:
                raise InvalidRequest(  # Triton's words, then why
                    f"Output can't set both 'shared_memory_region' and 'binary_data': output {o['name']!r} is "
                    "written into shared memory, not into the response"
                )
            k = oparams.get("classification")
            outputs.append(
                RequestedOutput(
                    o["name"],
                    # an output the request lists is binary only when it says so, whatever binary_data_output
                    # says (that is for the outputs it does not list): Triton's CheckBinaryOutputData
                    bool(flag),
                    0 if k is None else classification.parse_count(k, o["name"]),
                    shm,
                )
            )
        outputs = requested_once(outputs) or None
    rid = doc.get("id")
    if rid is not None and not isinstance(rid, str):
        raise InvalidRequest("'id' must be a string")
    # an empty id is no id: Triton's answer then carries none
    return InferRequest(inputs=inputs, id=rid or None, outputs=outputs, parameters=request_params)


# the request parameters Triton's HTTP front end reads itself (ParseJsonTritonParams); the others are the model's
_TRITON_PARAMETERS = TRITON_PARAMETERS | {"binary_data_output"}


def _one_way(name: str, given: list[str]) -> str:
    """Triton's words for an input given its data in none or several of the three ways, then what to send."""
    said = f"But set {' '.join(repr(g) for g in given)}" if given else "But no field is set"
    hint = "gives its data twice; send it one way" if given else (
        "has no data: send 'data', binary data (binary_data_size) or a shared memory region"
    )  # fmt: skip
    return (
        "Input must set only one of the following fields: 'data', 'binary_data_size' in 'parameters', "
        f"'shared_memory_region' in 'parameters'. {said}: input {name!r} {hint}"
    )


def check_params(params: dict[str, Any], reserved: bool = True) -> None:
    """Refused in Triton's words: a sequence parameter of the wrong type (``wire.check_sequence_parameters``), a
    ``triton_`` key (Triton's own, none of which a request may set over HTTP; ``reserved`` False: neither is
    checked, as Triton's generate endpoint reads its parameters as the model's inputs), and a parameter of the
    model's own (custom) that is not a string, a number or a bool, which Triton cannot hand to its backends."""
    if reserved:
        check_sequence_parameters(params)
    for key, value in params.items():
        if key in _TRITON_PARAMETERS:
            continue
        if reserved and key.startswith("triton_"):
            raise InvalidRequest(
                "parameter keys starting with 'triton_' are reserved for Triton usage and should not be "
                f"specified; rename {key!r}"
            )
        if not isinstance(value, str | int | float):  # bool is an int
            raise InvalidRequest(f"parameter '{key}' has invalid type. It should be either 'int', 'bool', or 'string'.")


def _flag(params: dict[str, Any], key: str, where: str) -> bool:
    """A boolean parameter (absent or null: false); a string such as "false" is refused, not read as true."""
    value = params.get(key)
    if value is None:
        return False
    if not isinstance(value, bool):
        raise InvalidRequest(f"{where}: parameter {key!r} must be true or false, not {quote(value)}")
    return value


def _request_doc(head: bytes | memoryview) -> Any:
    """The request as Python values; each input's numeric ``data`` already a flat numpy array.

    simdjson's documents are views into their parser: everything is copied out here, so no view
    outlives the call and the thread's parser can take the next request.
    """
    if len(head) < _SNIFF_BELOW:
        text = head if isinstance(head, bytes) else head.tobytes()
        if b'"data"' not in text:
            # no JSON tensor data: orjson is the faster parser (see the module docstring)
            return loads(text)
    big = len(head) >= _KEEP_PARSER_BELOW
    parser: simdjson.Parser | None = None if big else getattr(_parsers, "parser", None)
    if parser is None:
        parser = simdjson.Parser()
        if not big:
            _parsers.parser = parser
    try:
        doc = parser.parse(head)
    except (ValueError, RuntimeError):
        # Not valid JSON, too deep, or valid JSON simdjson does not take (integers over 64 bits),
        # or this thread's parser still held by a document an exception kept alive: orjson either
        # reads the body or says what is wrong, as for every other body.
        return loads(head)
    huge = len(head) >= _HUGE
    if not isinstance(doc, simdjson.Object):
        return _python(doc, huge)
    out: dict[str, Any] = {}
    try:
        for key in doc:
            value = doc[key]
            if key == "inputs" and isinstance(value, simdjson.Array):
                out[key] = [_input_item(item, huge) for item in value]
            else:
                out[key] = _python(value, huge)
        if len(out) != len(doc):
            raise _KeyTwice
    except _KeyTwice:
        return loads(head)
    return out


class _KeyTwice(Exception):
    """An object of the request gives a key twice. simdjson's lookup reads the first value, orjson (as
    Python's json) the last: such a body goes to orjson, so that it means one request whichever parser
    would have read it."""


def _input_item(item: Any, huge: bool) -> Any:
    if not isinstance(item, simdjson.Object):
        return _python(item, huge)
    out = {key: _python(item[key], huge) for key in item if key != "data"}
    if "data" in item:
        data = item["data"]
        out["data"] = _numbers(data, out.get("datatype"), huge) if isinstance(data, simdjson.Array) else _python(data, huge)
    if len(out) != len(item):
        raise _KeyTwice
    return out


def _numbers(data: simdjson.Array, datatype: Any, huge: bool) -> Any:
    """Numeric data as a flat array read in C, or a list when it is not numbers of that kind."""
    kind = _BUFFER_KIND.get(datatype) if isinstance(datatype, str) else None
    if kind is not None and len(data) and isinstance(data[0], simdjson.Array):
        rows = None if huge else _rows(data, kind)
        if rows is not None:
            return rows
        kind = None  # not rows of one length, or not all numbers of the kind: from_json says which
    if kind is not None:
        try:
            flat = np.frombuffer(data.as_buffer(of_type=kind[0]), dtype=kind[1])
        except (TypeError, ValueError):
            pass  # mixed, non-numeric or out of range: the list path below reports it
        else:
            count = len(data)
            # more values than items: lists among the numbers, which as_buffer flattened (a count that stopped
            # at pysimdjson's limit says nothing)
            if len(flat) == count or count == _SIMDJSON_COUNT:
                return flat
    return _python(data, huge)


def _rows(data: simdjson.Array, kind: tuple[Literal["d", "i", "u"], type[np.generic]]) -> np.ndarray | None:
    """Nested rows of numbers (``[[1, 2], [3, 4]]``) as a flat array read in C, where the lists of each level are of
    one length and every leaf is a number of ``kind``; None where not (``from_json`` then reads them one by one and
    says what is wrong). as_buffer checks the leaves' kind (numpy would take true, null or "2" for numbers), and
    numpy the rows' lengths (it refuses lists of uneven lengths, or a list among the numbers of a row)."""
    try:
        data.as_buffer(of_type=kind[0])
        return np.array(data.as_list(), dtype=kind[1]).reshape(-1)
    except (TypeError, ValueError):
        return None


def _python(value: Any, huge: bool) -> Any:
    """A simdjson value as Python's: through orjson where the body may hold more items than pysimdjson counts."""
    if isinstance(value, simdjson.Object | simdjson.Array):
        if huge:
            return orjson.loads(value.mini)
        return value.as_dict() if isinstance(value, simdjson.Object) else value.as_list()
    return value


def from_json(name: str, dtype: DType, shape: tuple[int, ...], data: Any, model: str = "") -> np.ndarray:
    """A tensor from JSON data (flat or nested lists), checked against its shape: its leaves in order, however
    deep they nest, as tritonserver reads them (numpy stops at 64 levels), where the lists of each level are of one
    length (rows of 15 and 17 values are no [2, 16] tensor, though the count matches).

    ``data`` may also be the flat float64/int64/uint64 array `_numbers` read from the request.
    """
    count = math.prod(shape)
    try:
        if isinstance(data, np.ndarray):
            arr = cast_numbers(name, dtype, data)
        elif (flat := _leaves(data)) is None:
            raise InvalidTensor(
                f"input {name!r}: data does not fit datatype {dtype.value} and shape {list(shape)}: its nested lists "
                "are of uneven lengths; send rows of one length (or the values flat)"
            )
        elif dtype is DType.BYTES:
            arr = np.empty(len(flat), dtype=object)
            arr[:] = [v.encode("utf-8") if isinstance(v, str) else _bytes_item(name, v) for v in flat]
        elif dtype is DType.BOOL:
            if not all(isinstance(v, bool) for v in flat):
                raise InvalidTensor(f"input {name!r}: BOOL data must hold true/false values only")
            arr = np.asarray(flat, dtype=dtype.numpy)
        else:
            _check_numbers(name, dtype, flat)
            if dtype in _FLOATING:  # read wide, so that a value out of FP32's range is refused
                arr = cast_numbers(name, dtype, np.asarray(flat, dtype=np.float64))
            else:
                arr = np.asarray(flat, dtype=dtype.numpy)  # integers out of range raise OverflowError
    except (ValueError, TypeError, OverflowError) as e:
        raise InvalidTensor(
            f"input {name!r}: data does not fit datatype {dtype.value} and shape {list(shape)}: {e}"
        ) from None
    if arr.size != count:
        raise InvalidTensor(  # Triton's words first (for BYTES its core's: its front end passes them on), then ours
            (
                string_count_words(name, model, count, arr.size)
                if dtype is DType.BYTES
                else "Unable to parse 'data': Shape does not match true shape of 'data' field"
            )
            + "; input "
            f"{name!r}: shape {list(shape)} needs {count:,} elements but 'data' holds {arr.size:,}"
        )
    return arr.reshape(shape)


def _check_numbers(name: str, dtype: DType, flat: list[Any]) -> None:
    """Refuse what numpy would quietly convert (strings, true/false, fractions for integers, null for integers),
    and integers outside the datatype's range, in the words ``wire.cast_numbers`` uses for them. A null among
    floating-point values is NaN, as KServe's server reads it: JSON spells no NaN, and KServe's clients (orjson)
    write NaN and the infinities as null."""
    integers = dtype not in _FLOATING
    for v in flat:
        if type(v) is int or (not integers and (type(v) is float or v is None)):
            continue
        if integers and type(v) is float and math.isfinite(v) and (v >= 2**64 or v <= -(2**63)):  # past 64 bits: a
            info = np.iinfo(dtype.numpy)  # float (one in range is read as an integer), its last digits rounded
            raise InvalidTensor(
                f"input {name!r}: data does not fit datatype {dtype.value}: a value of about {v:.4g} is past the "
                f"64-bit integers JSON numbers are read as; {dtype.value} holds {info.min}..{info.max}"
            )
        what = "integers" if integers else "numbers"
        raise InvalidTensor(f"input {name!r}: {dtype.value} data must hold {what} only, not {quote(v)}")
    if integers and flat:
        info = np.iinfo(dtype.numpy)
        low, high = min(flat), max(flat)
        if low < info.min or high > info.max:
            raise InvalidTensor(
                f"input {name!r}: data does not fit datatype {dtype.value}: values run from {low} to {high}, "
                f"outside {info.min}..{info.max}"
            )


def _bytes_item(name: str, v: Any) -> bytes:
    raise InvalidTensor(f"input {name!r}: BYTES data must be strings, not {json_kind(v)}")


def _leaves(data: Any) -> list[Any] | None:
    """The leaves of nested lists in order, where every list of a level holds as many items and the leaves all lie
    at one depth (None where not); level by level, not recursion: the JSON parser takes nesting deeper than
    Python's recursion goes."""
    level = data if isinstance(data, list) else [data]
    while any(isinstance(v, list) for v in level):
        if not all(isinstance(v, list) for v in level) or len({len(v) for v in level}) > 1:
            return None
        level = [leaf for v in level for leaf in v]
    return level


def encode_infer_response(
    resp: InferResponse, binary: dict[str, bool], default_binary: bool
) -> tuple[bytes, list[bytes | memoryview]]:
    """The response's JSON header and its binary outputs' data, in order, uncopied where the arrays
    already are their wire form: a transport can write them out as they are. A 1 MiB output used to be
    copied three times on the event loop on its way out (py-spy: ``tobytes`` 14% and the body join 18%
    of the loop's samples, and a third join inside the 31% of sending)."""
    outs: list[dict[str, Any]] = []
    blobs: list[bytes | memoryview] = []
    for name, arr in resp.outputs.items():
        dtype = DType.from_numpy(arr.dtype)
        entry: dict[str, Any] = {"name": name, "datatype": dtype.value, "shape": list(arr.shape)}
        outs.append(entry)
        if name in resp.in_shared_memory:  # its data is in the client's region already: listed alone, as Triton does
            continue
        if binary.get(name, default_binary):
            raw = raw_view(arr)
            entry["parameters"] = {"binary_data_size": len(raw)}
            blobs.append(raw)
        else:
            entry["data"] = json_data(arr, dtype, name)
    doc: dict[str, Any] = {"model_name": resp.model_name, "model_version": resp.model_version}
    if resp.parameters:
        doc["parameters"] = dict(resp.parameters)
    doc["outputs"] = outs
    if resp.id is not None:
        doc["id"] = resp.id
    head = orjson.dumps(doc, option=orjson.OPT_SERIALIZE_NUMPY)
    if b"null" in head and _nonfinite(outs):
        # orjson wrote NaN or an infinity as null, which a client reads back as NaN (+inf lost); Python's
        # json writes NaN / Infinity / -Infinity, which tritonclient (json.loads) reads back exactly. The
        # byte search first: a per-output np.isfinite cost ~15 us a request in the server (measured).
        for entry in outs:
            if isinstance(entry.get("data"), np.ndarray):
                entry["data"] = entry["data"].tolist()
        head = json.dumps(doc, separators=(",", ":")).encode()
    return head, blobs


def _nonfinite(outs: list[dict[str, Any]]) -> bool:
    return any(
        isinstance(data := e.get("data"), np.ndarray) and data.dtype.kind == "f" and not np.isfinite(data).all()
        for e in outs
    )


_BINARY_HOW = "ask for it as binary data (binary_data: true; tritonclient: InferRequestedOutput({name!r}, binary_data=True))"


def _is_utf8(value: bytes) -> bool:
    try:
        value.decode()
    except UnicodeDecodeError:
        return False
    return True


def json_data(arr: np.ndarray, dtype: DType, name: str = "", how: str = _BINARY_HOW) -> Any:
    """An output's values as JSON writes them. BYTES elements must be UTF-8 text: others are refused (``how``
    says what to ask for instead), where Triton writes the raw bytes into its JSON, which tritonclient then
    refuses to read ("Failed to encode using UTF-8. Please use binary_data=True")."""
    if dtype is DType.BYTES:
        values = arr.reshape(-1)
        try:
            return [v.decode() if isinstance(v, bytes) else str(v) for v in values]
        except UnicodeDecodeError:
            at = next(i for i, v in enumerate(values) if isinstance(v, bytes) and not _is_utf8(v))
            raise InvalidTensor(
                f"output {name!r} holds bytes that are not UTF-8 text (element {at}), which JSON cannot carry; "
                + how.format(name=name)
            ) from None
    if dtype in _WIDENED:
        # each value written as the float64 it is exactly (1.100000023841858), as Triton writes them, not as the
        # shortest text that reads back as the same float32 (1.1), which a float64 reader takes for another number
        return loop_casts.cast(np.ascontiguousarray(arr), np.dtype(np.float64)).reshape(-1)
    return np.ascontiguousarray(arr).reshape(-1)


_WIDENED = frozenset({DType.FP32, DType.FP16, DType.BF16})
_FLOATING = frozenset({*_WIDENED, DType.FP64})  # bfloat16's numpy kind is no "f" (ml_dtypes)
