"""``triton_python_backend_utils``, the module a Triton Python-backend model imports (``import
triton_python_backend_utils as pb_utils``), for the models polystack's ``python`` backend runs in its own process.

What it has is Triton's API for models that answer each request once: ``Tensor`` (``as_numpy``, ``name``,
``from_dlpack``, ``to_dlpack``, ``is_cpu``, ``shape``), ``InferenceResponse``, ``TritonError`` with Triton's codes,
``TritonModelException``, the request's accessors (``get_input_tensor_by_name``, ``inputs``,
``requested_output_names``, ``request_id``, ``correlation_id``, ``parameters``, ``flags``, ``is_cancelled``),
calls to the other models the server serves (``InferenceRequest(...).exec()`` and ``async_exec()``: Triton's
business logic scripting), ``get_input_config_by_name`` / ``get_output_config_by_name``,
``triton_string_to_numpy`` / ``numpy_to_triton_string``, ``Logger`` and the ``TRITONSERVER_REQUEST_FLAG_*``
constants, and custom metrics (``MetricFamily``, on the server's ``/metrics``). What it lacks says so when
called: responses sent apart from ``execute`` (``get_response_sender``: decoupled models).

Written by hand: Triton's is C++ bound to its stub process; this one is plain Python over numpy.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import json
import logging
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextvars import ContextVar
from typing import Any

import numpy as np

from polystack import custom_metrics
from polystack.backends.hosting import Host, ModelCall, RequestFacts
from polystack.errors import PolystackError
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


# what the model running on this thread (or its event loop) runs as: the server that hosts it (None: none), its
# name, and whether it runs ``execute``, where its calls to other models may go (``PythonModel`` sets it)
_RUNNING: ContextVar[tuple[Host | None, str, bool]] = ContextVar("polystack_python_model", default=(None, "", False))


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
    """A request: as ``execute`` receives it, or built by a model to call another model the server serves
    (Triton's business logic scripting): ``exec()`` sends it and waits for the answer, ``await async_exec()``
    lets the model's own event loop run others meanwhile (``async def execute``). The answer is an
    ``InferenceResponse``: the called model's outputs (those asked for, else all), or its error (``has_error()``),
    which a call never raises, as in Triton."""

    def __init__(
        self,
        model_name: str = "",
        inputs: Sequence[Tensor] = (),
        requested_output_names: Iterable[str] = (),
        request_id: str = "",
        correlation_id: int | str = 0,
        flags: int = 0,
        timeout: int = 0,
        parameters: Mapping[str, Any] | None = None,
        model_version: int = -1,
        **_: Any,
    ) -> None:
        given = {} if parameters is None else parameters
        if not isinstance(given, Mapping):  # as Triton's: a dict, never its JSON
            raise TritonModelException(f"Expect parameters to be a dict, got {type(given)}")
        for value in given.values():
            if not isinstance(value, bool | int | str):
                raise TritonModelException(
                    f"Expect parameters values to have type bool/int/str, found type {type(value)}"
                )
        self._model = model_name
        self._inputs = list(inputs)
        self._outputs = list(requested_output_names)
        self._id = request_id
        self._correlation = correlation_id
        self._flags = flags
        self._timeout = timeout
        self._parameters = dict(given)
        self._version = model_version

    @classmethod
    def received(cls, model: str, inputs: Sequence[Tensor], facts: RequestFacts, outputs: Iterable[str]) -> InferenceRequest:
        """The request ``execute`` receives: its facts as Triton hands them to a model (the parameters Triton reads
        itself apart: ``timeout`` as ``timeout()``, ``sequence_id`` as ``correlation_id()``, ``sequence_start`` and
        ``sequence_end`` as ``flags()``; the transport's own, ``binary_data_output``, not at all)."""
        request = cls(model, inputs, facts.outputs or outputs, facts.id)
        given = dict(facts.parameters)
        request._timeout = int(given.pop("timeout", 0) or 0)
        request._correlation = given.pop("sequence_id", 0) or 0
        start, end = given.pop("sequence_start", False), given.pop("sequence_end", False)
        request._flags = (TRITONSERVER_REQUEST_FLAG_SEQUENCE_START if start is True else 0) | (
            TRITONSERVER_REQUEST_FLAG_SEQUENCE_END if end is True else 0
        )
        given.pop("priority", None)
        given.pop("binary_data_output", None)
        request._parameters = given
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

    def timeout(self) -> int:
        return self._timeout

    def parameters(self) -> str:
        return json.dumps(self._parameters)

    def model_version(self) -> int:
        return self._version

    def is_cancelled(self) -> bool:
        return False

    def exec(self, decoupled: bool = False) -> InferenceResponse:
        """Send this request to its model and wait for the answer."""
        future = self._send(decoupled)
        try:
            return self._answer(future.result())
        except PolystackError as e:
            return self._failed(e)

    async def async_exec(self, decoupled: bool = False) -> InferenceResponse:
        """``exec``, awaited in the model's own event loop (``async def execute``)."""
        future = self._send(decoupled)
        try:
            outputs: dict[str, np.ndarray] = await asyncio.wrap_future(future)
            return self._answer(outputs)
        except PolystackError as e:
            return self._failed(e)

    def _send(self, decoupled: bool) -> concurrent.futures.Future[dict[str, np.ndarray]]:
        if decoupled:
            raise TritonModelException(
                "polystack's models answer each request once (decoupled models are not in polystack): call exec() "
                "without decoupled=True"
            )
        host, caller, executing = _RUNNING.get()
        if not executing:  # Triton's words
            raise TritonModelException(
                "BLS is only supported during the 'execute' function. (A thread the model starts runs its calls "
                "within contextvars.copy_context() taken in execute.)"
            )
        if host is None:
            raise TritonModelException(
                f"model {caller!r} runs outside a server (polystack predict, a batch job): it cannot call other models"
            )
        parameters: dict[str, Any] = dict(self._parameters)
        if self._timeout:
            parameters["timeout"] = int(self._timeout)
        if self._correlation:
            parameters["sequence_id"] = self._correlation
        if self._flags & TRITONSERVER_REQUEST_FLAG_SEQUENCE_START:
            parameters["sequence_start"] = True
        if self._flags & TRITONSERVER_REQUEST_FLAG_SEQUENCE_END:
            parameters["sequence_end"] = True
        inputs: dict[str, np.ndarray] = {}
        for tensor in self._inputs:
            if not isinstance(tensor, Tensor):
                raise TritonModelException(f"a request's inputs are pb_utils.Tensor, got {type(tensor).__name__}")
            inputs[tensor.name()] = tensor.as_numpy()
        call = ModelCall(
            model=self._model,
            inputs=inputs,
            outputs=tuple(self._outputs),
            version=self._version if self._version > 0 else None,
            request_id=self._id,
            parameters=parameters,
            caller=caller,
        )
        try:
            return host.call(call)
        except PolystackError as e:  # it could not be sent: its answer says why, as any failure's
            failed: concurrent.futures.Future[dict[str, np.ndarray]] = concurrent.futures.Future()
            failed.set_exception(e)
            return failed

    @staticmethod
    def _answer(outputs: dict[str, np.ndarray]) -> InferenceResponse:
        return InferenceResponse([Tensor(name, array) for name, array in outputs.items()])

    def _failed(self, e: PolystackError) -> InferenceResponse:
        """A call that failed, in Triton's words (which give every such error the code INTERNAL)."""
        return InferenceResponse(
            error=TritonError(f"Model {self._model} - Error when running inference: {e.message}", TritonError.INTERNAL)
        )

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
    """A family of custom metrics, on the server's ``/metrics`` (Triton's; made in ``initialize`` or
    ``execute``). ``Metric(labels=...)`` is one of its series (a histogram's with ``buckets=[...]``)."""

    COUNTER = 0
    GAUGE = 1
    HISTOGRAM = 2
    _KINDS = {COUNTER: custom_metrics.COUNTER, GAUGE: custom_metrics.GAUGE, HISTOGRAM: custom_metrics.HISTOGRAM}

    def __init__(self, name: str, description: str, kind: int) -> None:
        host, self._model, _ = _RUNNING.get()
        # outside a server (polystack predict, a batch job) they count where nobody reads them
        metrics = host.custom_metrics if host is not None else _UNREAD
        with _in_words("Error when creating MetricFamily", self._model):
            self._family = metrics.family(name, description, self._KINDS.get(kind, str(kind)))

    def Metric(self, labels: Mapping[str, str] | None = None, buckets: Sequence[float] | None = None) -> Metric:
        with _in_words("Failed to create metric", self._model):
            return Metric(self._family.series(labels, buckets), self._model)


class Metric:
    """One series of a ``MetricFamily``: ``increment`` (a counter or gauge), ``set`` (a gauge), ``observe`` (a
    histogram), ``value`` (a counter or gauge)."""

    def __init__(self, series: custom_metrics.Series, model: str) -> None:
        self._series = series
        self._model = model

    def increment(self, value: float) -> None:
        with _in_words("Failed to increment metric value", self._model):
            self._series.increment(float(value))

    def set(self, value: float) -> None:
        with _in_words("Failed to set metric value", self._model):
            self._series.set(float(value))

    def observe(self, value: float) -> None:
        with _in_words("Failed to observe metric value", self._model):
            self._series.observe(float(value))

    def value(self) -> float:
        with _in_words("Failed to get metric value", self._model):
            return self._series.value()


_UNREAD = custom_metrics.CustomMetrics()


@contextlib.contextmanager
def _in_words(what: str, model: str) -> Iterator[None]:
    """A refusal of the metrics as Triton's utilities raise it."""
    try:
        yield
    except PolystackError as e:
        raise TritonModelException(
            f"{what}: Failed to process the request for model '{model}_0', message: {e.message}"
        ) from None
    except (TypeError, ValueError) as e:  # a value that is no number
        raise TritonModelException(f"{what}: {e}") from None
