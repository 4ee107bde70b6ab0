"""The backend contract: a runtime adapter loads an artifact and runs it, numpy in, numpy out.

Backends are synchronous and know nothing of threads, batching, transports or the store.
``CheckedModel`` is the public wrapper: it validates inputs against the Signature before the
runtime sees them and returns only the outputs asked for.
"""

from __future__ import annotations

import abc
import functools
import importlib.metadata
import importlib.util
import logging
import threading
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar, Protocol, runtime_checkable

import numpy as np
from pydantic import BaseModel, ConfigDict, ValidationError

from polystack.backends.hosting import RequestFacts, selected
from polystack.errors import BackendError, InvalidRequest, ModelClosed, PolystackError
from polystack.types import Signature

# a request run apart from its batch's others: its inputs, the outputs it asks for (None: all), its facts
Apart = tuple[Mapping[str, np.ndarray], Sequence[str] | None, RequestFacts]


class Rescheduled:
    """``infer_apart``'s answer for a request its model asked to run again in a later batch (a Python model of an
    iterative sequence: Triton's ``TRITONSERVER_REQUEST_RELEASE_RESCHEDULE``): its sequence batcher queues it again."""

    def __repr__(self) -> str:
        return "RESCHEDULED"


RESCHEDULED = Rescheduled()

log = logging.getLogger("polystack.backends")


_NVIDIA_GPUS = Path("/proc/driver/nvidia/gpus")  # a folder for each GPU the NVIDIA driver lists


def nvidia_gpus() -> int:
    """How many GPUs the NVIDIA driver lists on this host: for what has no device enumeration of its own (XGBoost;
    Triton's words for a KIND_GPU group on a host without GPUs)."""
    return len(list(_NVIDIA_GPUS.iterdir())) if _NVIDIA_GPUS.is_dir() else 0


def writable(array: np.ndarray) -> np.ndarray:
    """``array`` as a runtime that may write into its inputs takes it: itself where it is writable, else a copy.
    A request's binary data (a Python ``bytes``) and a client's shared memory reach the runtimes read-only; a
    model that changes its input in place (``x.add_(1)``, a Python model's numpy code) would otherwise change
    them under their owners."""
    return array if array.flags.writeable else array.copy()


class NoOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")


@runtime_checkable
class LoadedModel(Protocol):
    signature: Signature

    def infer(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run once; inputs carry the batch on dim 0 where the signature says so.

        The returned arrays are the caller's from then on: the backend never writes into them again
        (servers hand them to the socket as they are, and a slow client reads them later). A runtime
        that reuses its output buffers (OpenVINO's infer requests do when asked to share their
        outputs) copies them out first."""
        ...

    def close(self) -> None: ...


@runtime_checkable
class SelectsOutputs(Protocol):
    """A LoadedModel that computes only the outputs a call asks for, where some cost more than others (FIL's SHAP
    values); ``CheckedModel`` calls it with them."""

    def infer_outputs(self, inputs: Mapping[str, np.ndarray], outputs: Sequence[str] | None) -> dict[str, np.ndarray]:
        """Run once, for ``outputs`` (None: every one); it may give more than those."""
        ...


class Backend(abc.ABC):
    name: ClassVar[str]  # == module name == entry-point key
    Options: ClassVar[type[BaseModel]] = NoOptions
    formats: ClassVar[frozenset[str]]  # source/artifact formats it loads; "*" loads any
    requires: ClassVar[tuple[str, ...]] = ()  # importable modules the runtime needs
    distribution: ClassVar[str | None] = None  # pip distribution whose version is reported
    # The option that lets N calls run at once on one loaded model, for runtimes that otherwise run
    # them one after another (OpenVINO's NUM_STREAMS); its thread option then counts all streams' threads.
    streams_option: ClassVar[str | None] = None
    # The option that loads a copy of the model per concurrent caller, for runtimes whose models may keep state
    # between calls (TorchScript: Triton's PyTorch backend loads a module per instance); its thread option stays
    # each call's.
    copies_option: ClassVar[str | None] = None
    # The option that stops the runtime from setting thread affinity itself (OpenVINO's
    # ENABLE_CPU_PINNING resets the calling thread's affinity on its first call), set to False when a
    # server pins the runtime to its cores (``polystack serve --runtime-cpus``)
    pinning_option: ClassVar[str | None] = None

    def available(self) -> bool:
        """True when the runtime is importable here (checked without importing it)."""
        return all(importlib.util.find_spec(m) is not None for m in self.requires)

    def version(self) -> str | None:
        if self.distribution is None:
            return None
        try:
            return importlib.metadata.version(self.distribution)
        except importlib.metadata.PackageNotFoundError:
            return None

    def devices(self) -> list[str]:
        """Devices this backend can use on this machine ("cpu", "cuda:0", ...)."""
        return ["cpu"]

    def accepts(self, format: str) -> bool:
        return "*" in self.formats or format in self.formats

    def parse_options(self, raw: Mapping[str, Any] | BaseModel | None) -> BaseModel:
        if isinstance(raw, self.Options):
            return raw
        try:
            return self.Options.model_validate(dict(raw or {}) if not isinstance(raw, BaseModel) else raw.model_dump())
        except ValidationError as e:
            fields = ", ".join(self.Options.model_fields) or "none"
            raise InvalidRequest(
                f"invalid options for backend {self.name!r}: {e.errors()[0]['msg']} at "
                f"{'.'.join(map(str, e.errors()[0]['loc']))}; it takes: {fields}"
            ) from e

    @abc.abstractmethod
    def load(self, artifact: Path, signature: Signature, options: BaseModel, device: str) -> LoadedModel:
        """Load ``artifact`` for ``device``; raise polystack errors, never the runtime's own."""


class CheckedModel:
    """A LoadedModel behind input validation and output selection (composition, not patching).

    ``close`` waits for no one and never cuts a call short: a model unloaded or replaced while calls
    run closes when the last of them returns, and a call that starts after ``close`` is refused with
    ``Unavailable`` (a request that was routed to it just before the unload), never run on a closed
    runtime.
    """

    def __init__(self, inner: LoadedModel, max_batch_size: int | None = None, name: str = "") -> None:
        self.inner = inner
        self.signature = inner.signature
        self.max_batch_size = max_batch_size
        self.name = name  # the model's, which Triton's words for a request that does not fit carry
        # once: a Protocol's check is not free
        self._selects = inner.infer_outputs if isinstance(inner, SelectsOutputs) else None
        self._lock = threading.Lock()
        self._running = 0
        self._closing = False
        self._closed = False

    def infer(self, inputs: Mapping[str, np.ndarray], outputs: Sequence[str] | None = None) -> dict[str, np.ndarray]:
        if outputs:  # first, as Triton checks them before the inputs
            self.signature.check_outputs(outputs, self.name)
        self.signature.validate_inputs(inputs, self.max_batch_size, self.name)
        if outputs and self._selects is not None:
            result = self._call(functools.partial(self._selects, outputs=outputs), inputs)
        else:
            result = self._call(self.inner.infer, inputs)
        return selected(result, outputs)

    def infer_many(
        self, requests: Sequence[Mapping[str, np.ndarray]], outputs: Sequence[str] | None = None
    ) -> list[dict[str, np.ndarray]]:
        """Requests of different shapes run as one call, by a model that takes them so (``Ragged``), each
        checked by its batcher; each one's outputs (``outputs``: those, else all)."""
        many = getattr(self.inner, "infer_many", None)
        if many is None:
            raise BackendError("this model runs requests of different shapes one at a time")
        results: list[dict[str, np.ndarray]] = self._call(many, requests)
        if outputs:
            return [{name: r[name] for name in outputs} for r in results]
        return results

    @property
    def instance_count(self) -> int:
        """The instances the model holds of its own, each running its calls apart (a Python model's, TorchScript's
        copies: Triton's instances), which a warm-up warms each; 1 where calls share one runtime session."""
        return int(getattr(self.inner, "instance_count", 1))

    @property
    def runs_apart(self) -> bool:
        """Whether the model takes a batch's requests apart, each with its facts (``infer_apart``)."""
        return hasattr(self.inner, "infer_apart")

    def infer_apart(
        self, requests: Sequence[Apart], instance: int | None = None
    ) -> list[dict[str, np.ndarray] | PolystackError | Rescheduled]:
        """Requests (each checked by its batcher) run as one call of a model that takes them apart
        (``runs_apart``), on its instance ``instance`` (a sequence batcher keeps each sequence on one; None: any):
        each one's outputs (those it asks for, else all), the error that failed it alone, or RESCHEDULED (an
        iterative sequence model's request to run again)."""
        apart = getattr(self.inner, "infer_apart", None)
        if apart is None:
            raise BackendError("this model runs a batch as one request")
        if instance is not None:
            apart = functools.partial(apart, instance=instance)
        results: list[dict[str, np.ndarray] | PolystackError | Rescheduled] = self._call(apart, requests)
        return results

    def _call(self, fn: Any, arg: Any) -> Any:
        """``fn(arg)`` on the runtime, counted as a call running (``close`` waits for none to return)."""
        with self._lock:
            if self._closing:
                raise ModelClosed("the model was unloaded or replaced as this request reached it; send it again")
            self._running += 1
        try:
            result = fn(arg)
        finally:
            with self._lock:
                self._running -= 1
                last = self._closing and not self._running and not self._closed
                self._closed = self._closed or last
            if last:  # closed while this call ran: it closes here, and its failure is not this call's
                try:
                    self.inner.close()
                except Exception:
                    log.exception("closing a runtime failed (it closed once the last call on it returned)")
        return result

    def close(self) -> None:
        with self._lock:
            self._closing = True
            now = not self._running and not self._closed
            self._closed = self._closed or now
        if now:
            self.inner.close()
