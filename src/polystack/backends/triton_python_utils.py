"""``triton_python_backend_utils``, the module a Triton Python-backend model imports (``import
triton_python_backend_utils as pb_utils``), for the models polystack's ``python`` backend runs in its own process.

What it has is Triton's API for models that answer each request once: ``Tensor`` (``as_numpy``, ``name``,
``from_dlpack``, ``to_dlpack``, ``is_cpu``, ``shape``), ``InferenceResponse``, ``TritonError`` with Triton's codes,
``TritonModelException``, the request's accessors (``get_input_tensor_by_name``, ``inputs``,
``requested_output_names``, ``request_id``, ``correlation_id``, ``parameters``, ``flags``, ``is_cancelled``),
``get_input_config_by_name`` / ``get_output_config_by_name``, ``triton_string_to_numpy`` /
``numpy_to_triton_string``, ``Logger`` and the ``TRITONSERVER_REQUEST_FLAG_*`` constants. What it lacks says so
when called: calling other models from a model (``InferenceRequest.exec``, Triton's business logic scripting),
responses sent apart from ``execute`` (``get_response_sender``: decoupled models) and custom metrics
(``MetricFamily``).

Written by hand: Triton's is C++ bound to its stub process; this one is plain Python over numpy.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np

from polystack.types import DType

log = logging.getLogger("polystack.backends.python")

TRITONSERVER_REQUEST_FLAG_SEQUENCE_START = 1
TRITONSERVER_REQUEST_FLAG_SEQUENCE_END = 2
TRITONSERVER_RESPONSE_COMPLETE_FINAL = 1

_KNOWN = [d for d in DType if d is not DType.BF16]  # numpy has no bfloat16 of its own
# by Triton's names in a config (TYPE_FP32, TYPE_STRING) and on the wire (FP32, BYTES)
_NUMPY = {name: d.numpy.type for d in _KNOWN for name in (d.value, "TYPE_STRING" if d is DType.BYTES else f"TYPE_{d.value}")}
_TRITON = {d.numpy: d.value for d in _KNOWN}


def triton_string_to_numpy(triton_type_string: str) -> Any:
    """The numpy type of a Triton data type (``TYPE_FP32`` or ``FP32``)."""
    return _NUMPY[triton_type_string]


def numpy_to_triton_string(dtype: Any) -> str | None:
    """The Triton data type of a numpy type (None: none)."""
    return _TRITON.get(np.dtype(dtype)) if not (isinstance(dtype, type) and issubclass(dtype, bytes)) else "BYTES"


class TritonError(Exception):
    """An error a model returns in a response (``InferenceResponse(error=...)``) or raises; its code picks the
    answer's status as Triton's does."""

    UNKNOWN = 0
    INTERNAL = 1
    NOT_FOUND = 2
    INVALID_ARG = 3
    UNAVAILABLE = 4
    UNSUPPORTED = 5
    ALREADY_EXISTS = 6
    CANCELLED = 7

    def __init__(self, message: str, code: int = INTERNAL) -> None:
        super().__init__(message)
        self._message = message
        self._code = code

    def message(self) -> str:
        return self._message

    def code(self) -> int:
        return self._code


class TritonModelException(Exception):
    """What Triton's utilities raise; ``message()`` says why."""

    def message(self) -> str:
        return str(self)


class Tensor:
    """A named tensor on the CPU, over a numpy array."""

    def __init__(self, name: str, data: Any, dtype: Any = None) -> None:
        array = np.asarray(data) if dtype is None else np.asarray(data, dtype=dtype)
        if array.dtype.kind in ("U", "S"):  # strings: Triton's BYTES, as object arrays of bytes
            array = np.array([s.encode() if isinstance(s, str) else bytes(s) for s in array.ravel()], dtype=np.object_)
            array = array.reshape(np.shape(data))
        if array.dtype not in _TRITON:
            raise TritonModelException(f"tensor {name!r}: numpy type {array.dtype} is not a Triton data type")
        self._name = name
        self._array = array

    def name(self) -> str:
        return self._name

    def as_numpy(self) -> np.ndarray:
        return self._array

    def shape(self) -> list[int]:
        return list(self._array.shape)

    def triton_dtype(self) -> str:
        return _TRITON[self._array.dtype]

    def is_cpu(self) -> bool:
        return True

    def to_dlpack(self) -> Any:
        if self._array.dtype == np.object_:
            raise TritonModelException(f"tensor {self._name!r}: a BYTES tensor has no DLPack form")
        return self._array.__dlpack__()

    @classmethod
    def from_dlpack(cls, name: str, capsule: Any) -> Tensor:
        """A tensor from anything with ``__dlpack__`` (torch, numpy, jax arrays on the CPU)."""
        try:
            return cls(name, np.from_dlpack(capsule))
        except (TypeError, RuntimeError, BufferError) as e:
            raise TritonModelException(f"tensor {name!r}: {e} (polystack's Python models take tensors on the CPU)") from e


class InferenceRequest:
    """A request as ``execute`` receives it. Building one to call another model (Triton's business logic
    scripting) is not in polystack: ``exec`` says so."""

    def __init__(
        self,
        model_name: str = "",
        inputs: Sequence[Tensor] = (),
        requested_output_names: Sequence[str] = (),
        request_id: str = "",
        correlation_id: int | str = 0,
        flags: int = 0,
        parameters: Mapping[str, Any] | str | None = None,
        **_: Any,
    ) -> None:
        self._model = model_name
        self._inputs = list(inputs)
        self._outputs = list(requested_output_names)
        self._id = request_id
        self._correlation = correlation_id
        self._flags = flags
        self._parameters = parameters if isinstance(parameters, str) else json.dumps(dict(parameters or {}))

    def inputs(self) -> list[Tensor]:
        return list(self._inputs)

    def requested_output_names(self) -> list[str]:
        return list(self._outputs)

    def request_id(self) -> str:
        return self._id

    def correlation_id(self) -> int | str:
        return self._correlation

    def flags(self) -> int:
        return self._flags

    def parameters(self) -> str:
        return self._parameters

    def model_name(self) -> str:
        return self._model

    def is_cancelled(self) -> bool:
        return False

    def exec(self, *_: Any, **__: Any) -> InferenceResponse:
        raise TritonModelException(
            "calling another model from a Python model (Triton's business logic scripting) is not in polystack: "
            "put the models in an ensemble, whose steps polystack runs"
        )

    async def async_exec(self, *_: Any, **__: Any) -> InferenceResponse:
        return self.exec()

    def get_response_sender(self) -> Any:
        raise TritonModelException(
            "polystack's Python models answer each request once, from execute (decoupled models are not in "
            "polystack): return the responses from execute"
        )


class InferenceResponse:
    """The answer to one request: its output tensors, or an error."""

    def __init__(self, output_tensors: Iterable[Tensor] = (), error: TritonError | None = None, **_: Any) -> None:
        self._outputs = list(output_tensors)
        self._error = error

    def output_tensors(self) -> list[Tensor]:
        return list(self._outputs)

    def has_error(self) -> bool:
        return self._error is not None

    def error(self) -> TritonError | None:
        return self._error


def get_input_tensor_by_name(request: InferenceRequest, name: str) -> Tensor | None:
    return next((t for t in request.inputs() if t.name() == name), None)


def get_output_tensor_by_name(response: InferenceResponse, name: str) -> Tensor | None:
    return next((t for t in response.output_tensors() if t.name() == name), None)


def get_input_config_by_name(model_config: Mapping[str, Any], name: str) -> dict[str, Any] | None:
    return next((dict(t) for t in model_config.get("input", []) if t.get("name") == name), None)


def get_output_config_by_name(model_config: Mapping[str, Any], name: str) -> dict[str, Any] | None:
    return next((dict(t) for t in model_config.get("output", []) if t.get("name") == name), None)


class Logger:
    """Triton's model logger, into polystack's log."""

    @staticmethod
    def log(message: str, level: int = 0) -> None:
        log.info(message)

    @staticmethod
    def log_info(message: str) -> None:
        log.info(message)

    @staticmethod
    def log_warn(message: str) -> None:
        log.warning(message)

    @staticmethod
    def log_error(message: str) -> None:
        log.error(message)

    @staticmethod
    def log_verbose(message: str) -> None:
        log.debug(message)


class MetricFamily:
    """Custom metrics from a Python model are not in polystack."""

    COUNTER = 0
    GAUGE = 1
    HISTOGRAM = 2

    def __init__(self, *_: Any, **__: Any) -> None:
        raise TritonModelException(
            "custom metrics from a Python model (pb_utils.MetricFamily) are not in polystack: its /metrics "
            "counts each model's requests, batches and durations"
        )
