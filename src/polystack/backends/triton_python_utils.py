"""``triton_python_backend_utils``, the module a Triton Python-backend model imports (``import
triton_python_backend_utils as pb_utils``), for the models polystack's ``python`` backend runs in its own process.

What it has is Triton's API: ``Tensor`` (``as_numpy``, ``name``,
``from_dlpack``, ``to_dlpack``, ``is_cpu``, ``shape``), ``InferenceResponse``, ``TritonError`` with Triton's codes,
``TritonModelException``, the request's accessors (``get_input_tensor_by_name``, ``inputs``,
``requested_output_names``, ``request_id``, ``correlation_id``, ``parameters``, ``flags``, ``is_cancelled``),
calls to the other models the server serves (``InferenceRequest(...).exec()`` and ``async_exec()``: Triton's
business logic scripting), ``get_input_config_by_name`` / ``get_output_config_by_name``,
``triton_string_to_numpy`` / ``numpy_to_triton_string``, ``Logger`` and the ``TRITONSERVER_REQUEST_FLAG_*``
constants, ``serialize_byte_tensor`` / ``deserialize_bytes_tensor``, the model loading API (``load_model``,
``unload_model``, ``is_model_ready``), custom metrics (``MetricFamily``, on the server's ``/metrics``), and responses
sent apart from ``execute``'s return (``get_response_sender``: a decoupled model's any number, another's one;
``exec(decoupled=True)``, a ``ResponseIterator`` of a called model's). What it lacks says so when called.

Written by hand: Triton's is C++ bound to its stub process; this one is plain Python over numpy.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import enum
import json
import logging
import queue
import sys
import threading
import weakref
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextvars import ContextVar
from dataclasses import dataclass
from types import FrameType
from typing import TYPE_CHECKING, Any

import numpy as np

from polystack import custom_metrics
from polystack.backends.hosting import NOT_FOR_MODELS, Host, ModelCall, RequestFacts, Responses, parameters_of
from polystack.errors import Cancelled, InvalidRequest, NotFound, PolystackError, VersionNotFound
from polystack.protocol import wire
from polystack.types import DType

log = logging.getLogger("polystack.backends.python")

TRITONSERVER_REQUEST_FLAG_SEQUENCE_START = 1
TRITONSERVER_REQUEST_FLAG_SEQUENCE_END = 2
TRITONSERVER_RESPONSE_COMPLETE_FINAL = 1
TRITONSERVER_REQUEST_RELEASE_ALL = 1  # a request's release flags (``set_release_flags``): done with it
TRITONSERVER_REQUEST_RELEASE_RESCHEDULE = 2  # run it again in a later batch (an iterative sequence's model)
TRITONSERVER_MEMORY_CPU = 0
TRITONSERVER_MEMORY_CPU_PINNED = 1
TRITONSERVER_MEMORY_GPU = 2

_KNOWN = [d for d in DType if d is not DType.BF16]  # numpy has no bfloat16 of its own
# by Triton's names in a config (TYPE_FP32, TYPE_STRING) and on the wire (FP32, BYTES)
_NUMPY = {name: d.numpy.type for d in _KNOWN for name in (d.value, "TYPE_STRING" if d is DType.BYTES else f"TYPE_{d.value}")}
_TRITON = {d.numpy: d.value for d in _KNOWN}
# BF16 tensors (ml_dtypes' bfloat16 arrays within polystack) reach and leave a model through DLPack alone, as in
# Triton, whose as_numpy refuses them: numpy cannot hold them
_BF16 = DType.BF16.numpy


TRITON_STRING_TO_NUMPY = {name: _NUMPY[name] for name in _NUMPY if name.startswith("TYPE_")}


class InferenceTrace:
    """A request's trace (``request.trace()``), as Triton's: handed to ``InferenceRequest(..., trace=...)``, the
    request it sends is traced as a child of the request the model runs (none is traced without it, as in Triton).
    ``get_context()`` gives the OpenTelemetry context of the request's run span as Triton does, the JSON of its
    propagation headers (``{"traceparent":"00-..."}``), or None (the request is not traced, or traced to files)."""

    def __init__(self, trace: Any = None) -> None:
        self._trace = trace  # the request's ``RequestTrace`` (None: not traced)

    def get_context(self) -> str | None:
        return getattr(self._trace, "handed", None)


class PreferredMemory:
    """Where a call's outputs should land (``InferenceRequest(preferred_memory=...)``): polystack's land on the CPU."""

    def __init__(self, preferred_memory_type: int = TRITONSERVER_MEMORY_CPU, preferred_device_id: int = 0) -> None:
        self.preferred_memory_type = preferred_memory_type
        self.preferred_device_id = preferred_device_id


def serialize_byte_tensor(input_tensor: np.ndarray) -> np.ndarray | None:
    """A BYTES tensor as Triton's wire form: each element's length (4 bytes, little-endian), then its bytes, in C
    order, as one uint8 array (None: an empty tensor)."""
    if input_tensor.size == 0:
        return None
    return np.frombuffer(wire.encode_bytes(np.ascontiguousarray(input_tensor)), dtype=np.uint8)


def deserialize_bytes_tensor(encoded_tensor: bytes | np.ndarray) -> np.ndarray:
    """Triton's wire form of a BYTES tensor as a 1-D object array of its elements."""
    buffer = encoded_tensor.tobytes() if isinstance(encoded_tensor, np.ndarray) else bytes(encoded_tensor)
    count, offset = 0, 0
    while offset + 4 <= len(buffer):  # the elements it holds: each a length, then that many bytes
        offset += 4 + int.from_bytes(buffer[offset : offset + 4], "little")
        count += 1
    try:
        return wire.decode_bytes("tensor", (count,), buffer)
    except PolystackError as e:
        raise TritonModelException(e.message) from None


# Triton's DataType numbers (model_config.proto), for the functions that speak them
_CODES = ["BOOL", "UINT8", "UINT16", "UINT32", "UINT64", "INT8", "INT16", "INT32", "INT64", "FP16", "FP32", "FP64",
          "BYTES"]  # fmt: skip


def triton_to_numpy_type(data_type: int) -> Any:
    """The numpy type of Triton's DataType number (1: BOOL ... 13: STRING); None: none."""
    return _NUMPY[_CODES[data_type - 1]] if 1 <= data_type <= len(_CODES) else None


def numpy_to_triton_type(data_type: Any) -> int | None:
    """Triton's DataType number of a numpy type; None: none."""
    name = numpy_to_triton_string(data_type)
    return _CODES.index(name) + 1 if name in _CODES else None


def using_decoupled_model_transaction_policy(model_config: Mapping[str, Any]) -> bool:
    return bool((model_config.get("model_transaction_policy") or {}).get("decoupled", False))


class ModelConfig:
    """The config ``auto_complete_config`` completes: ``as_dict()`` reads it; ``add_input``, ``add_output``,
    ``set_max_batch_size``, ``set_dynamic_batching`` and ``set_model_transaction_policy`` change it, refusing
    (``ValueError``, as Triton's) what contradicts what the config file says."""

    def __init__(self, model_config: str) -> None:
        self._config: dict[str, Any] = json.loads(model_config)

    def as_dict(self) -> dict[str, Any]:
        return self._config

    def _name(self) -> str:
        return str(self._config.get("name", ""))

    def set_max_batch_size(self, max_batch_size: int) -> None:
        if self._config.get("max_batch_size", 0) > max_batch_size:
            raise ValueError(
                f"configuration specified max_batch_size {self._config['max_batch_size']}, but in "
                f"auto-complete-config function for model '{self._name()}' specified max_batch_size {max_batch_size}"
            )
        self._config["max_batch_size"] = max_batch_size

    def set_dynamic_batching(self) -> None:
        for other in ("sequence_batching", "ensemble_scheduling"):
            if other in self._config:
                raise ValueError(
                    f"Configuration specified scheduling_choice as '{other}', but auto-complete-config function for "
                    f"model '{self._name()}' tries to set scheduling_choice as 'dynamic_batching'"
                )
        self._config.setdefault("dynamic_batching", {})

    def add_input(self, input: Mapping[str, Any]) -> None:
        self._add("input", input, ("name", "data_type", "dims", "optional"))

    def add_output(self, output: Mapping[str, Any]) -> None:
        self._add("output", output, ("name", "data_type", "dims"))

    def _add(self, kind: str, tensor: Mapping[str, Any], fields: tuple[str, ...]) -> None:
        """Add ``tensor`` to the config's ``kind`` list, or complete the one of its name there (which must agree)."""
        name = tensor.get("name")
        extra = [k for k in tensor if k not in fields]
        if extra:
            raise ValueError(
                f"{kind} '{name}' in auto-complete-config function for model '{self._name()}' contains property other "
                f"than {', '.join(repr(f) for f in fields[:-1])} and {fields[-1]!r}."  # Triton's words
            )
        for field in ("name", "data_type", "dims"):
            if field not in tensor:
                which = f"{kind} '{name}'" if field != "name" else kind
                raise ValueError(
                    f"{which} in auto-complete-config function for model '{self._name()}' is missing '{field}' property."
                )
        listed = self._config.setdefault(kind, [])
        given = next((t for t in listed if t.get("name") == name), None)
        if given is None:
            listed.append(dict(tensor))
            return
        if given.get("data_type", "TYPE_INVALID") not in ("TYPE_INVALID", tensor["data_type"]):
            raise ValueError(
                f"unable to load model '{self._name()}', configuration expects datatype {given['data_type']} for "
                f"{kind} '{name}', model provides {tensor['data_type']}"
            )
        if given.get("dims") and [int(d) for d in given["dims"]] != [int(d) for d in tensor["dims"]]:
            raise ValueError(
                f"model '{self._name()}', tensor '{name}': the model expects dims {list(tensor['dims'])} but the model "
                f"configuration specifies dims {list(given['dims'])}"
            )
        if "optional" in given and "optional" in tensor and given["optional"] != tensor["optional"]:
            raise ValueError(
                f"model '{self._name()}', tensor '{name}': the model expects optional {tensor['optional']} but the "
                f"model configuration specifies optional {given['optional']}"
            )
        given.update({k: tensor[k] for k in fields if k in tensor and k != "name"})

    def set_model_transaction_policy(self, transaction_policy_dict: Mapping[str, Any]) -> None:
        if any(k != "decoupled" for k in transaction_policy_dict):
            raise ValueError(
                f"model transaction property in auto-complete-config function for model '{self._name()}' contains "
                "property other than 'decoupled'."
            )
        policy = self._config.setdefault("model_transaction_policy", {})
        if "decoupled" in transaction_policy_dict:
            if "decoupled" in policy and policy["decoupled"] != transaction_policy_dict["decoupled"]:
                raise ValueError(
                    f"trying to change decoupled property in auto-complete-config for model '{self._name()}', which "
                    f"is already set to '{policy['decoupled']}'."
                )
            policy["decoupled"] = transaction_policy_dict["decoupled"]


def triton_string_to_numpy(triton_type_string: str) -> Any:
    """The numpy type of a Triton data type (``TYPE_FP32`` or ``FP32``)."""
    return _NUMPY[triton_type_string]


def numpy_to_triton_string(dtype: Any) -> str | None:
    """The Triton data type of a numpy type (None: none)."""
    return _TRITON.get(np.dtype(dtype)) if not (isinstance(dtype, type) and issubclass(dtype, bytes)) else "BYTES"


class ErrorCode(enum.IntEnum):
    """``TritonError``'s codes: named, as Triton's enum is (``code().name``), and whole numbers, as polystack's
    models compare them."""

    UNKNOWN = 0
    INTERNAL = 1
    NOT_FOUND = 2
    INVALID_ARG = 3
    UNAVAILABLE = 4
    UNSUPPORTED = 5
    ALREADY_EXISTS = 6
    CANCELLED = 7


class TritonError(Exception):
    """An error a model returns in a response (``InferenceResponse(error=...)``) or raises; its code picks the
    answer's status as Triton's does."""

    UNKNOWN = ErrorCode.UNKNOWN
    INTERNAL = ErrorCode.INTERNAL
    NOT_FOUND = ErrorCode.NOT_FOUND
    INVALID_ARG = ErrorCode.INVALID_ARG
    UNAVAILABLE = ErrorCode.UNAVAILABLE
    UNSUPPORTED = ErrorCode.UNSUPPORTED
    ALREADY_EXISTS = ErrorCode.ALREADY_EXISTS
    CANCELLED = ErrorCode.CANCELLED

    def __init__(self, message: str, code: int = ErrorCode.INTERNAL) -> None:
        super().__init__(message)
        self._message = message
        # helper-276: a plain int had no name (Triton's code().name, as a model logs it)
        self._code: int = ErrorCode(code) if code in ErrorCode._value2member_map_ else code

    def message(self) -> str:
        return self._message

    def code(self) -> int:
        return self._code


# what the model running on this thread (or its event loop) runs as: the server that hosts it (None: none), its
# name, and whether it runs ``execute``, where its calls to other models may go (``PythonModel`` sets it)
@dataclass(frozen=True)
class _Running:
    """What the model code running on this thread (or its event loop) runs as: the server that hosts it (None:
    none), the model's name, the instance's, whether it runs ``execute`` (where its calls to other models may go),
    and the model instances waiting for this execute's answer, this one among them (``RequestFacts.callers``)."""

    host: Host | None = None
    model: str = ""
    instance: str = ""
    executing: bool = False
    callers: tuple[str, ...] = ()  # the model instances waiting for its answer, this one's last
    gone: threading.Event | None = None  # set once the instance is finalized and let go (None: no instance)
    initializing: bool = False  # it runs ``initialize`` (where loads and unloads of other models may be asked)


_NOWHERE = _Running()
_RUNNING: ContextVar[_Running] = ContextVar("polystack_python_model", default=_NOWHERE)
# the server that hosts this process's Python models: a call from a thread a model started itself, which has none
# of its context, goes there (``PythonModel`` sets it as it loads, hosted)
_SERVER: list[weakref.ref[Host]] = []


# where a model finds no server: it runs outside one, or in a process it started anew (python_packages.py)
_OUTSIDE = (
    "this model runs outside a server (polystack predict, a batch job) or in a process it started anew (a spawn or "
    "forkserver pool's)"
)
_FROM_EXECUTE = "; in a server, ask from execute's process"


def _server() -> Host | None:
    return _SERVER[-1]() if _SERVER else None


class TritonModelException(Exception):
    """What Triton's utilities raise; ``message()`` says why."""

    def message(self) -> str:
        return str(self)


def _text(value: str | bytes, what: str = "a name") -> str:
    """A name as Triton's utilities take it: a str, or bytes (a BYTES tensor's element: Triton's own BLS example
    reads the model it calls from one), which its binding takes as the same text; anything else (None) is a
    TypeError, as its binding's."""
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    if not isinstance(value, str):
        raise TypeError(f"{what} must be a str (or bytes), not {type(value).__name__}")
    return value


def _whole(value: Any, what: str) -> int:
    """A whole-number argument, as Triton's binding takes it (None, a float: a TypeError)."""
    if isinstance(value, bool) or not isinstance(value, int | np.integer):
        raise TypeError(f"{what} must be a whole number, not {type(value).__name__}")
    return int(value)


def _listed(values: Any, what: str) -> list[Any]:
    """A list argument, as Triton's binding takes it (None, a str: a TypeError)."""
    if values is None or isinstance(values, str | bytes) or not isinstance(values, Iterable):
        raise TypeError(f"{what} must be a list, not {type(values).__name__}")
    return list(values)


def as_sent(array: np.ndarray) -> np.ndarray:
    """``array`` as a model receives it from another, its BYTES elements ``bytes`` as Triton's stub sends them
    (``serialize_byte_tensor``: bytes as they are, a ``str`` in UTF-8, anything else as its ``str``) and the
    receiving stub reads them back: a model's own text built from ``str`` or numbers, a runtime's ``str`` (ONNX
    Runtime's string outputs); other arrays, and those already all bytes, as they are. An ``np.bytes_`` element
    is its bytes, where Triton's (which asks for exactly ``bytes``) sends its ``str``, ``b"b'x'"``. Each element is
    looked at: a client's text, all bytes already, costs about 30 ns an element."""
    if array.dtype != np.object_ or all(type(x) is bytes for x in array.flat):
        return array
    elements = [bytes(x) if isinstance(x, bytes) else str(x).encode() for x in array.flat]
    sent = np.empty(len(elements), dtype=np.object_)
    sent[:] = elements
    return sent.reshape(array.shape)


class Tensor:
    """A named tensor on the CPU, over a numpy array."""

    def __init__(self, name: str | bytes, data: Any, dtype: Any = None) -> None:
        name = _text(name, "a tensor's name")
        if data is None:  # as Triton's binding refuses it
            raise TypeError(f"tensor {name!r}: its data must be an array, not None")
        if not name:  # Triton's words
            raise TritonModelException("Tensor name cannot be an empty string.")
        array = np.asarray(data) if dtype is None else np.asarray(data, dtype=dtype)
        if array.dtype.kind in ("U", "S"):  # strings: Triton's BYTES, as object arrays of bytes
            array = np.array([s.encode() if isinstance(s, str) else bytes(s) for s in array.ravel()], dtype=np.object_)
            array = array.reshape(np.shape(data))
        if array.dtype not in _TRITON and array.dtype != _BF16:
            raise TritonModelException(f"tensor {name!r}: numpy type {array.dtype} is not a Triton data type")
        self._name = name
        self._array = array

    def name(self) -> str:
        return self._name

    def as_numpy(self) -> np.ndarray:
        if self._array.dtype == _BF16:  # Triton's words
            raise TritonModelException(
                "tensor dtype is bf16 and cannot be converted to numpy; use to_dlpack(), e.g. torch.from_dlpack"
            )
        return self._array

    def _data(self) -> np.ndarray:
        """Its array as it leaves the model (the server's side), whatever its data type (a BF16 tensor's too); a
        BYTES one's elements as ``bytes`` (``as_sent``)."""
        return as_sent(self._array)

    def shape(self) -> list[int]:
        return list(self._array.shape)

    def triton_dtype(self) -> str:
        return "BF16" if self._array.dtype == _BF16 else _TRITON[self._array.dtype]

    def is_cpu(self) -> bool:
        return True

    def to_dlpack(self) -> Any:
        return self.__dlpack__()

    def __dlpack__(self, *args: Any, **kwargs: Any) -> Any:
        """Its data for ``np.from_dlpack`` or ``torch.from_dlpack``, as Triton's tensors give it."""
        if self._array.dtype == np.object_:
            raise TritonModelException("DLPack does not have support for string tensors.")  # Triton's words
        if self._array.dtype == _BF16:  # numpy has no DLPack bfloat16: torch's tensor over the same memory gives it
            torch = _torch(self._name)
            return torch.from_numpy(self._array.view(np.int16)).view(torch.bfloat16).__dlpack__(*args, **kwargs)
        array = self._array
        if not array.flags.writeable and not kwargs.get("max_version"):  # a legacy capsule holds no read-only flag
            array = array.copy()  # (numpy refuses to export one): a copy, as Triton's tensors export any
        held = array.view(_Held)  # the capsule, and what is made of it, hold this tensor, as Triton's hold theirs
        held.tensor = self
        return held.__dlpack__(*args, **kwargs)

    def __dlpack_device__(self) -> tuple[int, int]:
        return (1, 0)  # DLPack's CPU device

    @classmethod
    def from_dlpack(cls, name: str, capsule: Any) -> Tensor:
        """A tensor from anything with ``__dlpack__`` (torch, numpy, jax arrays on the CPU), or a DLPack capsule
        (``torch.utils.dlpack.to_dlpack(t)``, as Triton's examples pass one); a bfloat16 one through torch."""
        if not isinstance(name, str):  # the binding's refusal
            raise TypeError(f"from_dlpack(): a tensor's name must be a str, not {type(name).__name__}")
        if not name:  # Triton's words (its stub's, argument_validation)
            raise TritonModelException("Tensor name cannot be an empty string.")
        is_capsule = type(capsule).__name__ == "PyCapsule"
        if not is_capsule and not (hasattr(capsule, "__dlpack__") and hasattr(capsule, "__dlpack_device__")):
            raise TritonModelException(  # Triton's words (None among them), then what it was
                "Provided tensor is not supported. Tensor must be a DLPack capsule or have `__dlpack__` and "
                f"`__dlpack_device__` attributes (tensor {name!r} got {type(capsule).__name__})"
            )
        source = _Capsule(capsule) if is_capsule else capsule
        try:
            array = np.from_dlpack(source)
            if not array.flags.c_contiguous:  # Triton's words
                raise TritonModelException(
                    "DLPack tensor is not contiguous. Only contiguous DLPack tensors that are stored in C-Order are "
                    "supported."
                )
            return cls(name, array)
        except (TypeError, RuntimeError, BufferError) as e:
            if "dtype" in str(e).lower():  # numpy's refusal leaves the capsule unused: torch may read it (bfloat16)
                with contextlib.suppress(TritonModelException, TypeError, RuntimeError, BufferError):
                    torch = _torch(name)
                    t = torch.from_dlpack(capsule)
                    if t.dtype == torch.bfloat16 and t.device.type == "cpu":
                        return cls(name, t.contiguous().view(torch.int16).numpy().view(_BF16))
            raise TritonModelException(f"tensor {name!r}: {e} (polystack's Python models take tensors on the CPU)") from e


class _Held(np.ndarray):
    """A tensor's array as its DLPack capsule exports it: a view holding the tensor (``tensor``), so that the tensor
    lives while the capsule, or an array made of it, does (Triton's ``to_dlpack`` takes a reference on the tensor;
    its decoupled_bls model counts it: helper-216)."""

    tensor: Tensor


class _Capsule:
    """A DLPack capsule as numpy's ``from_dlpack`` takes one: an object giving it (a CPU tensor's, else numpy
    refuses it naming the device)."""

    def __init__(self, capsule: Any) -> None:
        self._capsule = capsule

    def __dlpack__(self, *args: Any, **kwargs: Any) -> Any:
        return self._capsule

    def __dlpack_device__(self) -> tuple[int, int]:
        return (1, 0)


def _torch(name: str) -> Any:
    """torch, which a BF16 tensor's DLPack form needs (numpy has no bfloat16)."""
    try:
        import torch
    except ImportError:
        raise TritonModelException(
            f"tensor {name!r} is BF16, which reaches a model through torch's DLPack; install torch"
        ) from None
    return torch


def _parameters(given: Any) -> dict[str, bool | int | str]:
    """A request's or a response's parameters as Triton's stub takes them (PyParametersToJSON): None (none), or a
    dict of str keys to bool, int or str values, never its JSON; else its words."""
    if given is None:
        return {}
    if not isinstance(given, Mapping):
        raise TritonModelException(f"Expect parameters to be a dict, got {type(given)}")
    for key, value in given.items():
        if not isinstance(key, str):
            raise TritonModelException(f"Expect parameters keys to have type str, found type {type(key)}")
        if not isinstance(value, bool | int | str):
            raise TritonModelException(f"Expect parameters values to have type bool/int/str, found type {type(value)}")
        if isinstance(value, int) and not -(1 << 63) <= value < 1 << 63:  # (bool's are 0 and 1)
            raise TritonModelException(
                f"parameter {key!r}: {value} is out of the range of a parameter's integer, int64; send it as a str"
            )
        if isinstance(value, str) and not _utf8(value):
            raise TritonModelException(f"parameter {key!r}: its value is not text UTF-8 can hold (a lone surrogate)")
    return dict(given)


def _utf8(text: str) -> bool:
    try:
        text.encode()
    except UnicodeEncodeError:
        return False
    return True


class InferenceRequest:
    """A request: as ``execute`` receives it, or built by a model to call another model the server serves
    (Triton's business logic scripting): ``exec()`` sends it and waits for the answer, ``await async_exec()``
    lets the model's own event loop run others meanwhile (``async def execute``). The answer is an
    ``InferenceResponse``: the called model's outputs (those asked for, else all), or its error (``has_error()``),
    which a call never raises, as in Triton."""

    def __init__(
        self,
        *,
        model_name: str | bytes,  # these three required, as Triton's binding has them (a TypeError without one)
        inputs: Sequence[Tensor],
        requested_output_names: Iterable[str | bytes],
        request_id: str | bytes = "",
        correlation_id: int | str = 0,
        flags: int = 0,
        timeout: int = 0,
        parameters: Mapping[str, Any] | None = None,
        model_version: int = -1,
        preferred_memory: Any = None,  # where the outputs land: the CPU in polystack, whatever is asked
        trace: Any = None,
    ) -> None:
        given = _parameters(parameters)
        # each checked as Triton's binding checks it: None, or a value of another type, is a TypeError
        self._model = _text(model_name, "model_name")
        self._inputs = _listed(inputs, "inputs")
        if not all(isinstance(t, Tensor | None) for t in self._inputs):
            raise TypeError("inputs must be a list of pb_utils.Tensor")
        asked = _listed(requested_output_names, "requested_output_names")
        self._outputs = [_text(name, "requested_output_names") for name in asked]
        self._id = _text(request_id, "request_id")
        if any(t is None for t in self._inputs):  # the binding takes it, then its request refuses it so
            raise TritonModelException(
                f"Input tensor for request with id '{self._id}' and model name '{self._model}' should not be empty."
            )
        if isinstance(correlation_id, bool) or not isinstance(correlation_id, int | np.integer | str):
            raise TypeError(f"correlation_id must be a whole number or a str, not {type(correlation_id).__name__}")
        if not isinstance(correlation_id, str) and not 0 <= correlation_id < 1 << 64:  # Triton's binding: uint64
            raise RuntimeError(  # its words, then what to do (helper-276: -5 reached the called model)
                f"Unable to cast Python instance to C++ type: correlation_id {correlation_id} is out of range; give a "
                "whole number from 0 to 2**64 - 1, or a str"
            )
        self._correlation = correlation_id
        self._flags = _whole(flags, "flags")
        self._timeout = _whole(timeout, "timeout")
        if self._timeout < 0:  # Triton's binding takes microseconds as uint64: a TypeError (helper-276)
            raise TypeError(f"timeout must be microseconds, 0 or more (0: none), not {self._timeout}")
        self._parameters = dict(given)
        self._version = _whole(model_version, "model_version")
        if not isinstance(trace, InferenceTrace | None):
            raise TypeError(f"trace must be the pb_utils.InferenceTrace of a request, not {type(trace).__name__}")
        self._trace = trace if trace is not None else InferenceTrace()
        self._sender: InferenceResponseSender | None = None  # a received request's
        self._release = TRITONSERVER_REQUEST_RELEASE_ALL  # what its model set (``set_release_flags``)

    @classmethod
    def received(
        cls,
        model: str,
        inputs: Sequence[Tensor],
        facts: RequestFacts,
        outputs: Iterable[str],
        sender: InferenceResponseSender | None = None,
    ) -> InferenceRequest:
        """The request ``execute`` receives: its facts as Triton hands them to a model (the parameters Triton reads
        itself apart: ``timeout`` as ``timeout()``, ``sequence_id`` as ``correlation_id()``, ``sequence_start`` and
        ``sequence_end`` as ``flags()``; the transport's own, ``binary_data_output``, not at all)."""
        request = cls(
            model_name=model, inputs=inputs, requested_output_names=facts.outputs or outputs, request_id=facts.id
        )
        given = dict(facts.parameters)
        request._timeout = int(given.pop("timeout", 0) or 0)
        request._correlation = given.pop("sequence_id", 0) or 0
        start, end = given.pop("sequence_start", False), given.pop("sequence_end", False)
        request._flags = (TRITONSERVER_REQUEST_FLAG_SEQUENCE_START if start is True else 0) | (
            TRITONSERVER_REQUEST_FLAG_SEQUENCE_END if end is True else 0
        )
        request._parameters = (
            dict(facts.model_parameters)  # a request another model sent: its parameters as that model gave them
            if facts.model_parameters is not None
            else {k: v for k, v in given.items() if k not in NOT_FOR_MODELS}
        )
        request._sender = sender
        request._trace = InferenceTrace(facts.trace)
        return request

    def inputs(self) -> list[Tensor]:
        return list(self._inputs)

    def requested_output_names(self) -> set[str]:
        return set(self._outputs)

    def request_id(self) -> str:
        return self._id

    def correlation_id(self) -> int | str:
        return self._correlation

    def flags(self) -> int:
        return self._flags

    def set_flags(self, flags: int) -> None:
        """The sequence flags the request is sent with (``TRITONSERVER_REQUEST_FLAG_SEQUENCE_START`` / ``_END``)."""
        self._flags = _whole(flags, "flags")

    def trace(self) -> InferenceTrace:
        """The request's trace: hand it to the requests the model sends for them to be traced in it."""
        return self._trace

    def timeout(self) -> int:
        return self._timeout

    def parameters(self) -> str:
        return json.dumps(self._parameters, separators=(",", ":"))  # Triton's compact JSON

    def model_version(self) -> int:
        return self._version

    def set_release_flags(self, flags: int) -> None:
        """How the model releases a request it received: ``TRITONSERVER_REQUEST_RELEASE_RESCHEDULE`` runs it again
        in a later batch (a model with ``sequence_batching { iterative_sequence: true }``; a model that is not
        decoupled returns None for it), ``TRITONSERVER_REQUEST_RELEASE_ALL`` (the default) is done with it."""
        if flags not in (TRITONSERVER_REQUEST_RELEASE_ALL, TRITONSERVER_REQUEST_RELEASE_RESCHEDULE):
            raise TritonModelException(
                f"release flags {flags!r} are neither TRITONSERVER_REQUEST_RELEASE_ALL nor "
                "TRITONSERVER_REQUEST_RELEASE_RESCHEDULE"
            )
        self._release = flags

    def rescheduled(self) -> bool:
        """Whether its model asked to run it again (polystack's; Triton's stub reads the flags itself)."""
        return self._release == TRITONSERVER_REQUEST_RELEASE_RESCHEDULE

    def is_cancelled(self) -> bool:
        """Whether the client cancelled the request or went away (a decoupled model's stream: its responses are
        dropped from then on, so it may stop)."""
        return self._sender is not None and self._sender.is_cancelled()

    def exec(self, decoupled: bool = False) -> Any:
        """Send this request to its model and wait for the answer; ``decoupled``: an iterator of its responses as
        they come (a decoupled model's any number, the last one empty where it sent the final flag alone)."""
        if decoupled:
            responses = ResponseIterator(self)
            try:
                host, call = self._call(responses.cancelling)
                sent = host.stream(call, responses)
            except PolystackError as refused:  # it could not be sent: its one response says why
                responses.send(refused, True)
                return responses
            sent.add_done_callback(responses.ended)
            return responses
        future = self._send()
        e = future.exception()
        return self._answer(future.result()) if e is None else self._failed(e)

    def async_exec(self, decoupled: bool = False) -> asyncio.Future[Any]:
        """Send this request now; its answer on a future of the running event loop (an ``async def execute``'s),
        as Triton's is: calls sent one after another run together, awaited in any order."""
        loop = asyncio.get_running_loop()
        if decoupled:  # as Triton's: the iterator once the first response came (the loop runs others meanwhile)
            first: asyncio.Future[Any] = loop.create_future()
            iterator = self.exec(decoupled=True)

            def ready() -> None:
                if not first.done():
                    first.set_result(iterator)

            def came() -> None:  # on the thread that sent it
                with contextlib.suppress(RuntimeError):  # the model's loop is closed: nobody waits for it
                    loop.call_soon_threadsafe(ready)

            iterator._when_first(came)
            return first
        answer: asyncio.Future[InferenceResponse] = loop.create_future()
        future = self._send()

        def settle(sent: concurrent.futures.Future[dict[str, np.ndarray]]) -> None:
            e = sent.exception()
            response = self._answer(sent.result()) if e is None else self._failed(e)
            if not answer.done():
                answer.set_result(response)

        def arrived(sent: concurrent.futures.Future[dict[str, np.ndarray]]) -> None:  # on the thread that settled it
            with contextlib.suppress(RuntimeError):  # the model's loop is closed: nobody waits for it
                loop.call_soon_threadsafe(settle, sent)

        future.add_done_callback(arrived)
        return answer

    def _send(self) -> concurrent.futures.Future[dict[str, np.ndarray]]:
        try:
            host, call = self._call()
            return host.call(call)
        except PolystackError as e:  # it could not be sent: its answer says why, as any failure's
            failed: concurrent.futures.Future[dict[str, np.ndarray]] = concurrent.futures.Future()
            failed.set_exception(e)
            return failed

    def _call(self, cancel: threading.Event | None = None) -> tuple[Host, ModelCall]:
        """The server this request goes to, and the request as it sends it (``cancel``: set when its caller cancels
        it)."""
        running = _RUNNING.get()
        if running.model and not running.executing:  # Triton's words
            raise TritonModelException("BLS is only supported during the 'execute' function.")
        # a thread the model started itself has none of its context: the server that hosts the process's models
        host = running.host if running.model else _server()
        if host is None:
            raise TritonModelException(f"{_OUTSIDE}: it cannot call other models{_FROM_EXECUTE}")
        # what schedules it, apart from its parameters, which reach the called model as given whatever their names (a
        # "sequence_id" or a "timeout" of the model's own is no correlation ID or deadline; helper-276), as in Triton
        parameters: dict[str, Any] = {}
        if self._timeout:
            parameters["timeout"] = int(self._timeout)
        if self._correlation:
            parameters["sequence_id"] = self._correlation
        if self._flags & TRITONSERVER_REQUEST_FLAG_SEQUENCE_START:
            parameters["sequence_start"] = True
        if self._flags & TRITONSERVER_REQUEST_FLAG_SEQUENCE_END:
            parameters["sequence_end"] = True
        inputs: dict[str, np.ndarray] = {}
        for tensor in self._inputs:  # (each a Tensor: checked as the request was made)
            if tensor.name() in inputs:  # Triton's words, as a client's request is refused (helper-276: the last won)
                raise InvalidRequest(f"input '{tensor.name()}' already exists in request; send each input once")
            inputs[tensor.name()] = tensor._data()
        if self._version == 0 or self._version < -1:  # -1: the latest (helper-276: 0 and -2 ran the latest)
            raise VersionNotFound(
                f"model {self._model!r} has no version {self._version}: versions are 1 and up; give -1 for the latest"
            )
        call = ModelCall(
            model=self._model,
            inputs=inputs,
            outputs=tuple(self._outputs),
            version=self._version if self._version > 0 else None,
            request_id=self._id,
            parameters=parameters,
            model_parameters=dict(self._parameters),
            caller=running.model,
            callers=running.callers,
            cancel=cancel,
            trace=self._trace._trace,
        )
        return host, call

    @staticmethod
    def _answer(outputs: dict[str, np.ndarray]) -> InferenceResponse:
        return InferenceResponse._of(outputs)

    def _failed(self, e: BaseException) -> InferenceResponse:
        """A call that failed: the called model's own error response as it sent it, its words and code (newer
        Tritons keep the code, python_backend's bls_error_code example; 2.51 made each INTERNAL); a failure in the
        called model's run (its execute raised, its queue timed out) in its words, as 2.51 hands them on
        (helper-230); else in Triton's words for a call refused, with the code INTERNAL (but CANCELLED for a call
        cancelled)."""
        code = TritonError.CANCELLED if isinstance(e, Cancelled) else TritonError.INTERNAL
        if isinstance(e, PolystackError) and e.model_code is not None:
            return InferenceResponse(error=TritonError(e.message, e.model_code))
        if isinstance(e, PolystackError) and e.in_run:
            return InferenceResponse(error=TritonError(e.message, code))
        why = e.message if isinstance(e, PolystackError) else f"{type(e).__name__}: {e}"
        if isinstance(e, NotFound):  # Triton's words for a model or version it does not serve, then polystack's
            why = f"Failed for execute the inference request. Model '{self._model}' is not ready. ({why})"
        return InferenceResponse(error=TritonError(f"Model {self._model} - Error when running inference: {why}", code))

    def get_response_sender(self) -> InferenceResponseSender:
        """What sends this request's responses apart from ``execute``'s return (from any thread, during it or
        after): a decoupled model's any number, then the final flag; another model's one response."""
        if self._sender is None:
            raise TritonModelException(
                "only a request a model receives in execute has a response sender: this one is a call to another "
                "model, whose answer exec() returns"
            )
        return self._sender


class ResponseIterator:
    """The responses of a call sent with ``exec(decoupled=True)``, as they come (``hosting.Responses``, filled on
    the server's loop): each an ``InferenceResponse``, its error as a failed call's; the final flag sent alone is an
    empty response, the last."""

    def __init__(self, request: InferenceRequest) -> None:
        self._request = request
        self.cancelling = threading.Event()  # the call's request's, set by ``cancel``
        self._queue: queue.SimpleQueue[tuple[dict[str, np.ndarray] | BaseException | None, bool]] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._final_sent = False  # the last was put in the queue
        self._done = False  # the last was read
        self._sent = False  # a response (or the end) was put in the queue
        self._first: Callable[[], None] | None = None  # told when the first comes (``async_exec``)
        self._read: list[InferenceResponse] = []  # those read so far: iterated again once all came, as Triton's
        self._at = 0  # the next of them an iteration gives

    def send(self, outputs: dict[str, np.ndarray] | BaseException | None, final: bool) -> None:
        with self._lock:
            if self._final_sent:
                return
            self._final_sent = final
            self._queue.put((outputs, final))
            self._sent, first, self._first = True, self._first, None
        if first is not None:
            first()

    def _when_first(self, told: Callable[[], None]) -> None:
        """Call ``told`` once the first response (or the end) is here: at once if it is."""
        with self._lock:
            if not self._sent:
                self._first = told
                return
        told()

    def ended(self, sent: concurrent.futures.Future[None]) -> None:
        """The call's run ended: where it failed before the final response, that failure is it."""
        e = sent.exception()
        self.send(e if e is not None else None, True)  # (nothing, where the final one came)

    def cancel(self) -> None:
        """Cancel the call (Triton's BLS cancel): the called model's request is cancelled from now on
        (``is_cancelled()``), and what it sends still comes: its CANCELLED error where it honours it, its responses
        up to its final one where it does not. Once the final response came, nothing."""
        self.cancelling.set()

    @property
    def cancelled(self) -> bool:
        """Whether its caller cancelled the call (``hosting.Responses``'s; what the called model sends still comes)."""
        return self.cancelling.is_set()

    def __iter__(self) -> ResponseIterator:
        """Itself; once every response came and was read, an iteration from the first again (Triton's)."""
        if self._done and self._at >= len(self._read):
            self._at = 0
        return self

    def __next__(self) -> InferenceResponse:
        if self._at < len(self._read):
            self._at += 1
            return self._read[self._at - 1]
        if self._done:
            raise StopIteration
        got, final = self._queue.get()
        self._done = final
        if isinstance(got, BaseException):
            response = self._request._failed(got)
        else:  # (an answer of no outputs may still carry parameters)
            response = InferenceResponse._of(got if got is not None else {})
        self._read.append(response)
        self._at += 1
        return response


class InferenceResponseSender:
    """Sends one request's responses apart from ``execute``'s return (Triton's ``request.get_response_sender()``):
    a decoupled model's any number, each with flags 0, then ``TRITONSERVER_RESPONSE_COMPLETE_FINAL`` (on the last,
    or alone with no response); another model's exactly one, then the final flag. Each response is checked as a
    returned one is (``check``) and sent to where the server reads it (``hosting.Responses``)."""

    def __init__(
        self,
        responses: Responses,
        check: Callable[[InferenceResponse], dict[str, np.ndarray] | PolystackError],
        decoupled: bool,
    ) -> None:
        self._responses = responses
        self._check = check
        self._decoupled = decoupled
        self._lock = threading.Lock()
        self._sent = 0
        self._closed = False

    def send(self, response: InferenceResponse | None = None, flags: int = 0) -> None:
        if flags not in (0, TRITONSERVER_RESPONSE_COMPLETE_FINAL):  # Triton's words, each below
            raise TritonModelException("Unable to send response. Unsupported flag provided.")
        if flags == 0 and response is None:
            raise TritonModelException(
                "Inference Response object must be provided when the response flags is set to zero."
            )
        if response is not None and not isinstance(response, InferenceResponse):
            raise TritonModelException(
                f"Expected an 'InferenceResponse' object to send, found type '{type(response)}'."
            )
        outputs = None if response is None else self._check(response)
        final = flags == TRITONSERVER_RESPONSE_COMPLETE_FINAL
        with self._lock:  # the checks, and the sending in their order, one thread at a time
            if not self._decoupled:
                if response is not None and self._sent > 0:
                    raise TritonModelException(
                        "Unable to send response. Non-decoupled model cannot send more than one response."
                    )
                if response is None and final and self._sent == 0:
                    raise TritonModelException(
                        "Unable to send response. Non-decoupled model cannot send complete final before sending a "
                        "response."
                    )
            if self._closed:
                raise TritonModelException("Unable to send response. Response sender has been closed.")
            self._closed = final
            self._sent += 1
            self._responses.send(outputs, final)

    def is_cancelled(self) -> bool:
        return self._responses.cancelled

    def _fail(self, error: PolystackError) -> None:
        """The request's final response is ``error``, unless its final one was sent (the server's side: an async
        execute that failed after it returned)."""
        with self._lock:
            if not self._closed:
                self._closed = True
                self._responses.send(error, True)

    @property
    def sent(self) -> int:
        return self._sent


class InferenceResponse:
    """The answer to one request: its output tensors, or an error; and its parameters (a dict of str to bool, int
    or str), which the client gets with it, as newer Tritons' Python backend sends them (tritonserver 2.51's
    refuses them)."""

    def __init__(
        self, output_tensors: Iterable[Tensor] = (), error: TritonError | None = None, parameters: Any = None
    ) -> None:
        self._outputs = _listed(output_tensors, "output_tensors")
        if not all(isinstance(t, Tensor) for t in self._outputs):  # Triton's words
            raise TritonModelException("Output tensor for inference response should not be empty.")
        # as Triton's binding refuses it, when the response is made (helper-216: a str was taken, and failed the
        # response as it was sent, its client waiting for good)
        if error is not None and not isinstance(error, TritonError):
            raise TypeError(
                f"InferenceResponse(): error must be a pb_utils.TritonError, not {type(error).__name__}: "
                'pb_utils.TritonError("what went wrong")'
            )
        self._error = error
        self._parameters = _parameters(parameters)

    def parameters(self) -> str:
        """Its parameters as JSON (``{}``: none), as Triton's stub writes them."""
        return json.dumps(self._parameters)

    def _wire_parameters(self) -> tuple[tuple[str, bool | int | str], ...]:
        """Its parameters as the server sends them (the server's side)."""
        return tuple(self._parameters.items())

    @classmethod
    def _of(cls, outputs: Mapping[str, np.ndarray]) -> InferenceResponse:
        """The response of a call's answer (the outputs another model answered, with their response's parameters)."""
        response = cls([Tensor(name, as_sent(array)) for name, array in outputs.items()])
        response._parameters = dict(parameters_of(outputs))
        return response

    def output_tensors(self) -> list[Tensor]:
        return list(self._outputs)

    def has_error(self) -> bool:
        return self._error is not None

    def error(self) -> TritonError | None:
        return self._error


MODEL_PACKAGE = "polystack_python_model_"  # each instance's import of model.py is a module of a package so named
MODEL_DIR = "__triton_model_dir__"  # that package's attribute: the model's version folder (``get_model_dir``)


def calling_package(depth: int = 2) -> str | None:
    """The package of the Python model instance whose code called (the nearest frame of a module of such a package
    on the calling thread's stack, ``depth`` frames up: its execute, or a thread or task it started); None: none."""
    frame: FrameType | None = sys._getframe(depth)
    while frame is not None:
        name = frame.f_globals.get("__name__")
        if isinstance(name, str) and name.startswith(MODEL_PACKAGE):
            return name.partition(".")[0]
        frame = frame.f_back
    return None


def get_model_dir() -> str:
    """The model's version folder, as Triton's stub gives it (in the folder ``args["model_repository"]`` names: the
    repository's, else polystack's copy): a model reads its files there."""
    folder = getattr(sys.modules.get(calling_package() or ""), MODEL_DIR, None)
    if not isinstance(folder, str):
        raise TritonModelException("get_model_dir() is the folder of the Python model whose code calls it; none does")
    return folder


def get_input_tensor_by_name(request: InferenceRequest, name: str) -> Tensor | None:
    return next((t for t in request.inputs() if t.name() == name), None)


def get_output_tensor_by_name(response: InferenceResponse, name: str) -> Tensor | None:
    return next((t for t in response.output_tensors() if t.name() == name), None)


def get_input_config_by_name(model_config: Mapping[str, Any], name: str) -> dict[str, Any] | None:
    return next((dict(t) for t in model_config.get("input", []) if t.get("name") == name), None)


def get_output_config_by_name(model_config: Mapping[str, Any], name: str) -> dict[str, Any] | None:
    return next((dict(t) for t in model_config.get("output", []) if t.get("name") == name), None)


class LogLevel(enum.IntEnum):
    """Triton's log levels for ``Logger.log`` (also ``Logger.INFO``, ...)."""

    INFO = 0
    WARNING = 1
    ERROR = 2
    VERBOSE = 3


class Logger:
    """Triton's model logger, into polystack's log (VERBOSE at debug level)."""

    INFO = LogLevel.INFO
    WARNING = LogLevel.WARNING
    ERROR = LogLevel.ERROR
    VERBOSE = LogLevel.VERBOSE

    @staticmethod
    def log(message: str, level: LogLevel = LogLevel.INFO) -> None:
        if not isinstance(message, str) or not isinstance(level, LogLevel):  # as Triton's binding refuses them
            raise TypeError(
                "log(): incompatible function arguments: it takes (message: str, level: Logger.LogLevel = "
                f"Logger.INFO), not ({type(message).__name__}, {type(level).__name__})"
            )
        by_level: dict[int, Callable[[str], None]] = {
            LogLevel.WARNING: log.warning, LogLevel.ERROR: log.error, LogLevel.VERBOSE: log.debug
        }
        by_level.get(level, log.info)(message)

    @staticmethod
    def log_info(message: str) -> None:
        log.info(_message("log_info", message))

    @staticmethod
    def log_warn(message: str) -> None:
        log.warning(_message("log_warn", message))

    @staticmethod
    def log_error(message: str) -> None:
        log.error(_message("log_error", message))

    @staticmethod
    def log_verbose(message: str) -> None:
        log.debug(_message("log_verbose", message))


def _message(call: str, message: Any) -> str:
    """A log call's message: a str, else a TypeError, as Triton's binding refuses it (argument_validation)."""
    if not isinstance(message, str):
        raise TypeError(
            f"{call}(): incompatible function arguments: it takes (message: str), not {type(message).__name__}"
        )
    return message


def load_model(model_name: str, config: str = "", files: Mapping[str, bytes] | None = None) -> None:
    """Load (or load again) ``model_name`` as the repository extension's load does: with ``config`` (JSON) and
    ``files`` (``{"file:1/model.onnx": bytes}``), else from the repository (``--model-control-mode explicit``)."""
    parameters: dict[str, Any] = dict(files or {})
    if config:
        parameters["config"] = config
    _control("load_model", lambda host, caller: host.load_model(model_name, parameters, caller))


def unload_model(model_name: str, unload_dependents: bool = False) -> None:
    """Unload ``model_name`` (and, with ``unload_dependents``, the models its ensemble runs that no other does)."""
    parameters = {"unload_dependents": unload_dependents}
    _control("unload_model", lambda host, caller: host.unload_model(model_name, parameters, caller))


def is_model_ready(model_name: str, model_version: str = "") -> bool:
    """Whether the server serves ``model_name`` (its ``model_version``, else its latest) and it is ready."""
    running = _RUNNING.get()
    host = running.host if running.model else _server()
    if host is None:
        raise TritonModelException(f"{_OUTSIDE}: there are no other models to ask about{_FROM_EXECUTE}")
    try:
        return host.model_ready(model_name, str(model_version) or None)
    except PolystackError as e:
        raise TritonModelException(e.message) from None


def _control(what: str, ask: Any) -> None:
    """A load or unload asked from ``execute`` or ``initialize`` (as Triton's Python backend takes them), waited for;
    a failure raises in its words."""
    running = _RUNNING.get()
    if running.model and not (running.executing or running.initializing):
        raise TritonModelException(
            f"{what} is only supported during the 'initialize' and 'execute' functions in polystack"
        )
    host = running.host if running.model else _server()
    if host is None:
        raise TritonModelException(f"{_OUTSIDE}: {what} has no server to ask{_FROM_EXECUTE}")
    try:
        ask(host, running.model).result()
    except PolystackError as e:
        raise TritonModelException(e.message) from None


class MetricFamily:
    """A family of custom metrics, on the server's ``/metrics`` (Triton's; made in ``initialize`` or
    ``execute``). ``Metric(labels=...)`` is one of its series (a histogram's with ``buckets=[...]``)."""

    COUNTER = 0
    GAUGE = 1
    HISTOGRAM = 2
    _KINDS = {COUNTER: custom_metrics.COUNTER, GAUGE: custom_metrics.GAUGE, HISTOGRAM: custom_metrics.HISTOGRAM}

    def __init__(self, name: str, description: str, kind: int) -> None:
        running = _RUNNING.get()
        host = running.host if running.model else _server()
        self._model = running.instance
        # outside a server (polystack predict, a batch job) they count where nobody reads them
        metrics = host.custom_metrics if host is not None else _UNREAD
        with _in_words("Error when creating MetricFamily", self._model):
            self._family = metrics.family(name, description, self._KINDS.get(kind, str(kind)))
        self._made: list[custom_metrics.Series] = []  # a hold on each series made through it
        # deleted, it takes them off /metrics, as Triton's stub clears its Metrics; once its instance is finalized
        # and let go (an unload) they stay, as tritonserver 2.51 keeps them for the model's next load
        let_go = weakref.finalize(self, _let_go, self._family, self._made, running.gone)
        let_go.atexit = False

    def Metric(self, labels: Mapping[str, str] | None = None, buckets: Sequence[float] | None = None) -> Metric:
        with _in_words("Error when creating Metric", self._model):
            series = self._family.series(labels, buckets)
        self._made.append(series)
        return Metric(series, self._model, self)


def _let_go(family: custom_metrics.Family, made: list[custom_metrics.Series], gone: threading.Event | None) -> None:
    """A ``MetricFamily`` object's series let go as it is deleted, unless its model instance went first."""
    if gone is not None and gone.is_set():
        return
    for series in made:
        family.release(series)


# Triton's words for a Metric used once the MetricFamily object it came from was deleted
_ORPHANED = (
    "Invalid metric operation as the corresponding 'MetricFamily' has been deleted. The 'MetricFamily' object should "
    "be deleted AFTER its corresponding 'Metric' objects have been deleted."
)


class Metric:
    """One series of a ``MetricFamily``: ``increment`` (a counter or gauge), ``set`` (a gauge), ``observe`` (a
    histogram), ``value`` (a counter or gauge). As in Triton, it works while the ``MetricFamily`` object it came
    from lives (a model keeps both): once that is deleted, each of them raises."""

    def __init__(self, series: custom_metrics.Series, model: str, family: MetricFamily) -> None:
        self._series = series
        self._model = model
        self._family = weakref.ref(family)

    def _live(self, what: str) -> custom_metrics.Series:
        if self._family() is None:  # its series left with the family (Triton's words, its operation's first)
            raise TritonModelException(f"{what}: {_ORPHANED}")
        return self._series

    def increment(self, value: float) -> None:
        what = "Failed to increment metric value"
        series = self._live(what)
        with _in_words(what, self._model):
            series.increment(float(value))

    def set(self, value: float) -> None:
        what = "Failed to set metric value"
        series = self._live(what)
        with _in_words(what, self._model):
            series.set(float(value))

    def observe(self, value: float) -> None:
        what = "Failed to observe metric value"
        series = self._live(what)
        with _in_words(what, self._model):
            series.observe(float(value))

    def value(self) -> float:
        what = "Failed to get metric value"
        series = self._live(what)
        with _in_words(what, self._model):
            return series.value()


_UNREAD = custom_metrics.CustomMetrics()


@contextlib.contextmanager
def _in_words(what: str, model: str) -> Iterator[None]:
    """A refusal of the metrics as Triton's utilities raise it."""
    try:
        yield
    except PolystackError as e:
        if e.message.startswith("Failed to create metric."):  # Triton says these as they are
            raise TritonModelException(e.message) from None
        raise TritonModelException(f"{what}: Failed to process the request for model '{model}', message: {e.message}") from None
    except (TypeError, ValueError) as e:  # a value that is no number
        raise TritonModelException(f"{what}: {e}") from None


if not TYPE_CHECKING:  # (mypy would take any name of this module for one it has)

    def __getattr__(name: str) -> Any:
        """A name these utilities lack, refused in the words of Triton's module, by the name models import it by
        (a model naming one of an older or newer python_backend reads Triton's name, not polystack's module)."""
        raise AttributeError(f"module 'triton_python_backend_utils' has no attribute {name!r}")
