"""Transport-neutral wire types of an Open Inference Protocol v2 inference request and response.

Plain dataclasses rather than pydantic models: they are built once per request on the hot path,
from JSON or protobuf already validated by the codecs, and pydantic's per-object cost (tens of
microseconds for a request with tensors) is a visible part of a 0.3 ms request.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from polystack.errors import InvalidRequest, InvalidTensor, quote
from polystack.protocol import loop_casts
from polystack.types import DType

# The largest tensor polystack accepts in one request, in elements; a shape whose product exceeds
# it is refused before any allocation (an "astronomically large" shape is a 400, never a MemoryError).
MAX_ELEMENTS = 1 << 31
# dimensions a tensor may have: numpy makes arrays of at most 64, and no model takes more than a handful
MAX_DIMS = 32
# characters a tensor's name may have: errors quote names back, and no model's run this long
MAX_NAME = 1024


def check_name(name: str, kind: str) -> str:
    """A request's tensor name (``kind``: input or output), refused when longer than any model's."""
    if len(name) > MAX_NAME:
        raise InvalidTensor(
            f"an {kind} is named with {len(name):,} characters ({quote(name)}); tensor names have at most "
            f"{MAX_NAME:,}: name one of the model's {kind}s (GET /v2/models/<model> lists them)"
        )
    return name


@dataclass(frozen=True)
class ShmRef:
    """Where a tensor lies in a registered shared memory region (Triton's shared memory extension)."""

    region: str
    byte_size: int
    offset: int = 0


class RegionReader(Protocol):
    """What decoding needs of the registered shared memory regions."""

    def read(self, ref: ShmRef, what: str) -> bytes: ...


@dataclass
class RequestedOutput:
    name: str
    binary: bool | None = None  # None: the request-level default
    classification: int = 0  # k > 0: return the top-k classes (Triton's classification extension)
    shm: ShmRef | None = None  # write it into this shared memory region instead of the response


# the request parameters Triton reads itself, whatever the transport (its front ends' parsers); the others are
# the model's own (custom), and each codec checks them as that transport's front end does
TRITON_PARAMETERS = frozenset({"sequence_id", "sequence_start", "sequence_end", "priority", "timeout"})

# request parameters Triton reads as unsigned integers -> what to give instead
_UNSIGNED_PARAMETERS = {
    "timeout": "the request's deadline in whole microseconds (0: none)",
    "priority": "the priority level as a whole number (1 is the highest; 0: the model's default level)",
}


def check_sequence_parameters(parameters: Mapping[str, Any]) -> None:
    """Refused in Triton's words (its HTTP front end's, which reads them for every request; gRPC's are grpc_codec's):
    a ``sequence_id`` that is neither a whole number nor a string (null too) or a number outside uint64, a
    ``sequence_start`` or ``sequence_end`` that is not a bool."""
    for key in ("sequence_start", "sequence_end"):
        value = parameters.get(key, False)
        if not isinstance(value, bool):
            raise InvalidRequest(
                f"Unable to parse '{key}': attempt to access JSON non-boolean as boolean: the request's {key!r} "
                f"parameter is {quote(value)}; give true or false"
            )
    sid = parameters.get("sequence_id")
    if isinstance(sid, float) and sid.is_integer() and abs(sid) >= 1 << 63:  # JSON's reader: too large for 64 bits
        raise InvalidRequest(
            f"the request's 'sequence_id' {sid:.0f} is not an unsigned 64-bit integer; give one that is, or a string"
        )
    if "sequence_id" in parameters and (isinstance(sid, bool) or not isinstance(sid, int | str)):
        shown = "null" if sid is None else quote(sid)
        raise InvalidRequest(
            "Unable to parse 'sequence_id': attempt to access JSON non-string as string: the request's "
            f"'sequence_id' parameter is {shown}; give a whole number or a string"
        )
    if isinstance(sid, int) and not 0 <= sid < 1 << 64:
        raise InvalidRequest(f"the request's 'sequence_id' {sid} is not an unsigned 64-bit integer; give one that is")


@dataclass
class InferRequest:
    inputs: dict[str, np.ndarray]
    id: str | None = None
    outputs: list[RequestedOutput] | None = None  # None: every output
    parameters: dict[str, Any] = field(default_factory=dict)
    # a request a model sent (``server/model_calls.py``), never a client's: the model instances waiting for its
    # answer (``hosting.RequestFacts.callers``)
    callers: tuple[str, ...] = ()
    # such a request sent as a stream: set when its caller cancels it (``ResponseIterator.cancel``, Triton's
    # ``TRITONSERVER_InferenceRequestCancel``): its model sees it cancelled, and what it sends still comes
    cancel: threading.Event | None = None
    # such a request's place in its caller's trace (a ``RequestTrace``, which it is traced in as a child); a request a
    # model sent without one is not traced, as Triton traces a BLS request only with its caller's trace
    trace: Any = None
    # an ensemble's step's: the outputs it asks for may be left out (the next step's input is then absent, as in
    # Triton's ensembles); a client's request fails where its model leaves out an output it asks for
    partial: bool = False
    # a request a model sent: the parameters its model sees, as given whatever their names (Triton hands a BLS
    # request's parameters over untouched, a "sequence_id" or a "timeout" among them), ``parameters`` then holding
    # only what schedules it (its correlation ID, flags and timeout); None: its model sees ``parameters`` less those
    model_parameters: dict[str, Any] | None = None

    @property
    def output_names(self) -> list[str] | None:
        return [o.name for o in self.outputs] if self.outputs else None

    @property
    def classifications(self) -> dict[str, int]:
        """Outputs asked for as top-k classes: name -> k."""
        return {o.name: o.classification for o in self.outputs or () if o.classification}

    def __post_init__(self) -> None:
        if self.parameters:
            for key, what in _UNSIGNED_PARAMETERS.items():
                if key not in self.parameters:
                    continue
                raw = self.parameters[key]
                # Triton reads both as unsigned integers (HTTP) or int64_param (gRPC): 1500.0, "5" or null is refused
                # (null was taken as absent: helper-114)
                if type(raw) is not int or not 0 <= raw < 1 << 64:
                    shown = "null" if raw is None else quote(raw)
                    raise InvalidRequest(f"Unable to parse {key!r}: {shown} is not an integer >= 0; give {what}")

    @property
    def priority(self) -> int:
        """Triton's ``priority`` parameter: the request's priority level (0: the model's default)."""
        return int(self.parameters.get("priority") or 0) if self.parameters else 0

    @property
    def timeout_s(self) -> float | None:
        """The client's own deadline: Triton's ``timeout`` parameter, in microseconds (0: none)."""
        raw = self.parameters.get("timeout") if self.parameters else None
        if not raw:
            return None
        return float(raw) / 1e6


@dataclass
class InferResponse:
    model_name: str
    model_version: str
    outputs: dict[str, np.ndarray]
    id: str | None = None
    # the outputs already written into the client's shared memory: listed in their places, without their data
    in_shared_memory: frozenset[str] = frozenset()
    # the answer's own parameters (an ensemble's: the request's sequence parameters, as Triton's carry them)
    parameters: tuple[tuple[str, bool | int | str], ...] = ()


def json_kind(value: Any) -> str:
    """What ``value``, read from JSON, is in JSON's words (``null``, not Python's ``NoneType``), for errors."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    return "an array" if isinstance(value, list | tuple) else "an object" if isinstance(value, dict) else "a value"


def parse_shape(raw: Any, name: str) -> tuple[int, ...]:
    """A list of non-negative ints whose product is within MAX_ELEMENTS, or InvalidTensor."""
    if raw is None:
        raise InvalidTensor(f"input {name!r} has no 'shape': give its dimensions as a list of integers ([1, 16])")
    if not isinstance(raw, list | tuple):
        raise InvalidTensor(f"input {name!r}: 'shape' must be a list of integers, not {json_kind(raw)}")
    if len(raw) > MAX_DIMS:
        raise InvalidTensor(f"input {name!r}: shape has {len(raw):,} dimensions; a tensor has at most {MAX_DIMS}")
    shape: list[int] = []
    for d in raw:
        if isinstance(d, bool) or not isinstance(d, int):
            raise InvalidTensor(f"input {name!r}: shape {quote(list(raw))} must hold integers only")
        if d < 0:
            raise InvalidTensor(f"input {name!r}: shape {quote(list(raw))} has a negative dimension; sizes are >= 0")
        if d > MAX_ELEMENTS:  # with a 0 elsewhere the product is 0, but numpy still cannot make the array
            raise InvalidTensor(
                f"input {name!r}: shape {quote(list(raw))} has a dimension over the limit of {MAX_ELEMENTS:,}; split "
                "the request"
            )
        shape.append(d)
    if math.prod(shape) > MAX_ELEMENTS:
        raise InvalidTensor(
            f"input {name!r}: shape {shape} holds {math.prod(shape):,} elements, over the limit of "
            f"{MAX_ELEMENTS:,}; split the request"
        )
    return tuple(shape)


_SHM_KEYS = ("shared_memory_region", "shared_memory_byte_size", "shared_memory_offset")


def shared_memory_ref(params: Mapping[str, Any] | None, what: str) -> ShmRef | None:
    """A tensor's ``shared_memory_region`` / ``_byte_size`` / ``_offset`` parameters; None without them.

    Region and byte size go together (Triton refuses one without the other); the offset defaults to 0.
    """
    if not params or not any(k in params for k in _SHM_KEYS):
        return None
    tensor = what.split(" ", 1)[-1]  # "input 'x'": the tensor's name as Triton's words quote it
    region = params.get("shared_memory_region")
    size = params.get("shared_memory_byte_size")
    offset = params.get("shared_memory_offset", 0)
    if region is None:  # Triton's words, then what to send
        given = "shared_memory_byte_size" if size is not None else "shared_memory_offset"
        raise InvalidRequest(
            f"'{given}' can not be specified without 'shared_memory_region' parameter for tensor {tensor}; "
            f"{what} needs both shared_memory_region and shared_memory_byte_size (shared_memory_offset is optional)"
        )
    if size is None:
        raise InvalidRequest(
            f"'shared_memory_byte_size' must be specified along with 'shared_memory_region' parameter for tensor "
            f"{tensor}"
        )
    if not isinstance(region, str):
        raise InvalidRequest(
            f"invalid value type for 'shared_memory_region' parameter for tensor {tensor}, expected string_param."
        )
    for key, value in (("shared_memory_byte_size", size), ("shared_memory_offset", offset)):
        if isinstance(value, bool) or not isinstance(value, int):
            raise InvalidRequest(f"invalid value type for '{key}' parameter for tensor {tensor}, expected int64_param.")
    if offset < 0:
        raise InvalidRequest(f"Invalid offset for shared memory region: '{region}': {what} gives offset {offset}")
    if size < 0:
        raise InvalidRequest(
            f"Invalid offset + byte size for shared memory region: '{region}': {what} gives byte size {size}"
        )
    return ShmRef(region, size, offset)


def requested_once(outputs: list[RequestedOutput]) -> list[RequestedOutput]:
    """The outputs asked for, each once: an output asked for again is answered once, as it was asked first
    (Triton keeps one request per output name). Top-k classes in shared memory are refused (tritonclient
    refuses that too)."""
    seen: dict[str, RequestedOutput] = {}
    for o in outputs:
        if o.shm is not None and o.classification:
            raise InvalidRequest(  # Triton's words (its HTTP front end's), then why
                f"Output can't set both 'shared_memory_region' and 'classification': output {o.name!r} asks for "
                "classes into shared memory; classes come back in the response"
            )
        seen.setdefault(o.name, o)
    return list(seen.values())


def input_twice(name: str) -> InvalidTensor:
    """An input a request names twice, refused in Triton's words, then what to do."""
    return InvalidTensor(f"input {name!r} already exists in request; send each input once")


def no_shared_memory(what: str) -> InvalidRequest:
    """The error for a shared memory tensor sent to a server that does not take them."""
    return InvalidRequest(
        f"{what} refers to a shared memory region, but this server does not take shared memory tensors; "
        "start it with --allow-shared-memory, or send the tensor's data in the request"
    )


def parse_dtype(raw: Any, name: str) -> DType:
    """A tensor's datatype as the protocol spells it: upper case, exactly (Triton refuses "fp32" too, in the words
    these refusals start with: "invalid datatype for input x")."""
    if not isinstance(raw, str):
        raise InvalidTensor(f"input {name!r}: 'datatype' must be a string such as \"FP32\"")
    try:
        dtype = DType.parse(raw)
    except InvalidTensor as e:
        raise InvalidTensor(f"invalid datatype for input {name}: {e}") from None
    if dtype.value != raw:
        raise InvalidTensor(
            f"invalid datatype for input {name}: {quote(raw)} is spelled {dtype.value!r} in the protocol; send that"
        )
    return dtype


def check_length(name: str, dtype: DType, shape: tuple[int, ...], nbytes: int, model: str = "") -> None:
    """Raise unless ``nbytes`` hold ``shape`` of ``dtype``: Triton's words (with ``model``, the model's name), then
    polystack's."""
    want = math.prod(shape) * dtype.itemsize
    if want != nbytes:
        of = f" for model {model!r}" if model else ""
        raise InvalidTensor(
            f"input byte size mismatch for input {name!r}{of}. Expected {want}, got {nbytes}: shape {list(shape)} "
            f"of {dtype.value} needs {want:,} bytes but {nbytes:,} were sent"
        )


def from_shared_memory(
    name: str, dtype: DType, shape: tuple[int, ...], regions: RegionReader, ref: ShmRef, model: str = ""
) -> np.ndarray:
    """A tensor from the shared memory ``ref`` names; its byte size is checked against its shape before a byte
    is read (a sparse object of gigabytes, named for a 16-byte tensor, was read whole first)."""
    if dtype is not DType.BYTES:
        check_length(name, dtype, shape, ref.byte_size, model)
    return from_raw(name, dtype, shape, regions.read(ref, f"input {name!r}"), model)


def from_raw(name: str, dtype: DType, shape: tuple[int, ...], raw: bytes | memoryview, model: str = "") -> np.ndarray:
    """A tensor from its raw little-endian wire bytes (BYTES: 4-byte length-prefixed elements) of an input of
    ``model`` (its name, for Triton's words)."""
    if dtype is DType.BYTES:
        return decode_bytes(name, shape, raw, model)
    check_length(name, dtype, shape, len(raw), model)
    if dtype is DType.BOOL:  # one byte each, and any non-zero byte is true (numpy would keep 2 as a "true" 2)
        return loop_casts.cast(np.frombuffer(raw, dtype=np.uint8), np.dtype(np.bool_)).reshape(shape)
    np_dtype = dtype.numpy.newbyteorder("<") if dtype.itemsize > 1 else dtype.numpy
    return np.frombuffer(raw, dtype=np_dtype).reshape(shape)


def cast_numbers(name: str, dtype: DType, data: np.ndarray) -> np.ndarray:
    """Numbers read wide (int64, uint64, float64) in the tensor's datatype, refusing values that do not fit."""
    target = dtype.numpy
    if target.kind in "iu" and data.size and (target.itemsize < data.dtype.itemsize or target.kind != data.dtype.kind):
        info = np.iinfo(target)
        low, high = loop_casts.bounds(data)
        if low < info.min or high > info.max:
            raise InvalidTensor(
                f"input {name!r}: data does not fit datatype {dtype.value}: values run from {low} to {high}, "
                f"outside {info.min}..{info.max}"
            )
    if target.kind == "f" and target.itemsize < data.dtype.itemsize:
        try:
            with np.errstate(over="raise"):  # NaN and infinities sent as such pass; only finite overflow raises
                return loop_casts.cast(data, target)
        except FloatingPointError:
            big = data[np.isfinite(data)]
            worst = big[np.argmax(np.abs(big))]
            raise InvalidTensor(
                f"input {name!r}: value {worst:g} does not fit datatype {dtype.value} (largest magnitude "
                f"{float(np.finfo(target).max):g}); send it as FP64, or scale it"
            ) from None
    return loop_casts.cast(data, target)


def string_count_words(name: str, model: str, count: int, got: int) -> str:
    """Triton's words (its core's check of a BYTES input) for ``got`` elements where the shape needs ``count``: too
    many are counted up to the first too many (``count + 1``), as its core stops there (helper-212,
    L0_input_validation)."""
    of = f" for model {model!r}" if model else ""
    if got < count:
        return f"expected {count} string elements for inference input {name!r}{of}, got {got}"
    return f"unexpected number of string elements {count + 1} for inference input {name!r}{of}, expecting {count}"


def decode_bytes(name: str, shape: tuple[int, ...], raw: bytes | memoryview, model: str = "") -> np.ndarray:
    count = math.prod(shape)
    mv = memoryview(raw)
    # the elements go straight into the array (a list of them beside it held 8 more bytes an element, and its
    # growth more: a BYTES tensor of millions of short strings takes tens of times its size as Python objects)
    pos, end = 0, len(mv)
    room = min(count, end // 4)  # no more than the data can hold (a shape of billions is refused below, not allocated)
    arr = np.empty(room, dtype=object)
    got = 0
    while pos < end:
        if pos + 4 > end:
            raise InvalidTensor(f"input {name!r}: BYTES data ends inside a 4-byte length prefix")
        n = int.from_bytes(mv[pos : pos + 4], "little")
        pos += 4
        if pos + n > end:
            raise InvalidTensor(f"input {name!r}: a BYTES element claims {n:,} bytes but only {end - pos:,} remain")
        if got < room:
            arr[got] = bytes(mv[pos : pos + n])
        got += 1
        pos += n
        if got > count:
            break
    # the rest only counted, as polystack's words say how many came (up to 65,536 more: a body of millions of empty
    # elements is not walked on for the words alone)
    while count < got <= count + (1 << 16) and pos + 4 <= end:
        pos += 4 + int.from_bytes(mv[pos : pos + 4], "little")
        got += pos <= end
    if got != count:
        raise InvalidTensor(  # Triton's words first, then polystack's
            f"{string_count_words(name, model, count, got)}: input {name!r}: shape {list(shape)} needs {count:,} "
            f"BYTES elements but the data holds {got:,}"
        )
    return arr.reshape(shape)


def encode_bytes(arr: np.ndarray) -> bytes:
    """BYTES elements, each after its 4-byte little-endian length, written into one buffer as they come (a list of
    the elements and their prefixes, joined, held 420 MB for 2 million 2-byte strings: 24 MB so, and faster)."""
    out = bytearray()
    for v in arr.reshape(-1):
        b = v if isinstance(v, bytes) else str(v).encode("utf-8")
        out += len(b).to_bytes(4, "little")
        out += b
    return bytes(out)


def raw_view(arr: np.ndarray) -> bytes | memoryview:
    """``to_raw(arr)``, without copying an array that already is its wire form (C-ordered, little-endian
    numbers) and is most of the memory it lives in: a view of its own bytes, to hand to a socket or a
    shared memory region as they are.

    A small slice of a larger array is copied instead: one request's rows of a merged batch's output
    would otherwise keep the whole batch alive for as long as its client takes to read them (a 1 MiB
    answer cut from a 32-item batch held 32 MiB)."""
    if (
        arr.size
        and arr.dtype.kind in "biuf"
        and _little_endian(arr.dtype)
        and arr.flags.c_contiguous
        and _backing_bytes(arr) <= 2 * arr.nbytes
    ):
        return arr.data.cast("B")
    return to_raw(arr)


def _little_endian(dtype: np.dtype[Any]) -> bool:
    return dtype == dtype.newbyteorder("<")


def _backing_bytes(arr: np.ndarray) -> int:
    """The size of the memory ``arr`` keeps alive: its own, or that of the object it is a view of."""
    owner: Any = arr
    while isinstance(owner, np.ndarray) and owner.base is not None:
        owner = owner.base
    if isinstance(owner, np.ndarray):
        return int(owner.nbytes)
    try:
        return memoryview(owner).nbytes
    except TypeError:
        return 1 << 62  # an owner that is not a buffer: assume the worst, and copy


def to_raw(arr: np.ndarray) -> bytes:
    """The raw little-endian wire form of a tensor."""
    if arr.dtype == object or arr.dtype.kind in ("S", "U"):
        return encode_bytes(arr)
    if not _little_endian(arr.dtype):
        arr = arr.astype(arr.dtype.newbyteorder("<"))
    return np.ascontiguousarray(arr).tobytes()
