"""The transport-free core: load, unload, infer, ready and metadata for registered models.

Servers (HTTP, gRPC, Ray Serve), batch jobs and the CLI all call this module; it imports no
transport. What to load for a model is a ``LoadSpec`` (artifact, backend, device, options):
``default_spec`` picks the preferred installed backend for the model's format; variants and plans
supply their own specs.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import BaseModel

from polystack.backends import registry
from polystack.backends.base import CheckedModel
from polystack.backends.ragged import Ragged, RaggedSpec
from polystack.backends.reshaped import Reshape, Reshaped
from polystack.errors import BackendUnavailable, Conflict, ModelClosed, ModelNotFound, ModelNotReady, PolystackError
from polystack.stats import FAILURES_EXECUTE, ModelStats, Outcome, ran_and_failed
from polystack.store import ModelRecord, ModelRef, Store, VariantRecord
from polystack.types import Signature, TensorSpec

log = logging.getLogger("polystack.engine")

# runtimes that are Triton backends without a platform of their own: its configs of their models have an empty
# platform, and its metadata gives the backend's name
BACKEND_ONLY = frozenset({"python", "openvino", "fil"})
# runtimes Triton knows by other names: (its backend, its platform)
TRITON_NAMES = {"torchscript": ("pytorch", "pytorch_libtorch"), "torch_aoti": ("pytorch", "torch_aoti")}


@dataclass(frozen=True)
class LoadSpec:
    """Exactly what to load: an artifact, the backend that runs it, where, and how."""

    artifact: Path
    format: str
    backend: str
    device: str = "cpu"
    options: Mapping[str, Any] = field(default_factory=dict)
    variant_id: str | None = None
    max_batch_size: int | None = None
    # tensors clients send or get in other shapes than the model's (a Triton config's reshape)
    reshape: tuple[Reshape, ...] = ()
    # graph inputs with a default that requests may also feed (a Triton config's optional inputs)
    optional: tuple[TensorSpec, ...] = ()
    # requests of different shapes batched as one call (a Triton config's ragged batching)
    ragged: RaggedSpec | None = None

    @property
    def platform(self) -> str:
        """The name Triton's metadata and config give it: runtime and format, as in ``onnxruntime_onnx``; a Python
        model's is ``python``, as Triton's metadata says (its config's platform is empty), and so for the other
        runtimes Triton has as backends alone (``BACKEND_ONLY``); Triton's own for those it names otherwise
        (``TRITON_NAMES``: ``pytorch_libtorch``)."""
        if self.backend in BACKEND_ONLY:
            return self.backend
        if self.backend in TRITON_NAMES:
            return TRITON_NAMES[self.backend][1]
        return f"{self.backend}_{self.format}".replace(".", "_")

    @property
    def triton_backend(self) -> str:
        """The backend's name in Triton's config (``pytorch`` for torchscript's), else polystack's."""
        return TRITON_NAMES[self.backend][0] if self.backend in TRITON_NAMES else self.backend


# Option names backends use for "threads inside one operator", most specific first.
THREAD_OPTIONS = ("intra_op_threads", "num_threads", "inference_num_threads", "threads", "nthread", "n_jobs")


def thread_option(backend: str) -> str | None:
    """The option through which ``backend`` takes a thread count, or None if it has none."""
    try:
        fields = registry.get(backend).Options.model_fields
    except PolystackError:
        return None
    return next((k for k in THREAD_OPTIONS if k in fields), None)


def with_concurrency(spec: LoadSpec, threads: int | None, instances: int = 1) -> LoadSpec:
    """``spec`` set up for ``instances`` concurrent callers of ``threads`` threads each.

    Most runtimes run concurrent calls on one loaded model side by side and only need the thread
    count. A runtime that would queue them (OpenVINO: one stream) gets a stream per instance and
    the threads of all streams, so "1 thread x 2 instances" really runs two calls at once. A runtime
    whose models may keep state between calls (TorchScript) loads a copy per instance.
    """
    try:
        backend = registry.get(spec.backend)
    except PolystackError:
        return spec  # an unknown backend: Engine.load says so when it is loaded
    streams = backend.streams_option
    key = thread_option(spec.backend)
    options = dict(spec.options)
    if instances > 1 and backend.copies_option is not None:
        options[backend.copies_option] = instances
    if instances > 1 and streams is not None:
        options[streams] = instances
        if threads is not None and key is not None:
            options[key] = threads * instances
    elif threads is not None and key is not None:
        options[key] = threads
    if options == dict(spec.options):
        return spec
    return replace(spec, options=options)


def without_runtime_pinning(spec: LoadSpec) -> LoadSpec:
    """``spec`` with the runtime's own CPU pinning off, for a caller that pins the runtime's threads itself."""
    try:
        key = registry.get(spec.backend).pinning_option
    except PolystackError:
        return spec  # an unknown backend: Engine.load says so when it is loaded
    if key is None or spec.options.get(key) is False:
        return spec
    return replace(spec, options={**spec.options, key: False})


@dataclass
class LoadedEntry:
    record: ModelRecord
    spec: LoadSpec
    model: CheckedModel
    options: BaseModel
    stats: ModelStats = field(default_factory=ModelStats)
    loaded_at: float = field(default_factory=time.time)
    load_time_s: float = 0.0
    # what clients send and get, where the server sets some of the model's inputs and keeps some of its
    # outputs (a sequence model's control and state tensors); None: the model's own
    shown: Signature | None = None

    def __post_init__(self) -> None:
        self.stats.failures_execute = self.spec.backend in FAILURES_EXECUTE  # as its backend's Triton counts them

    @property
    def name(self) -> str:
        return self.record.name

    @property
    def version(self) -> int:
        return self.record.version

    @property
    def signature(self) -> Signature:
        return self.shown or self.model.signature


@dataclass(frozen=True)
class ModelMetadata:
    name: str
    versions: list[str]
    platform: str  # "<backend>_<format>", e.g. "onnxruntime_onnx", as Triton names platforms
    signature: Signature

    def to_dict(self) -> dict[str, Any]:
        sig = self.signature.to_dict()
        sig["inputs"] += sig.pop("optional", [])  # Triton lists a config's optional inputs among the others
        return {"name": self.name, "versions": self.versions, "platform": self.platform, **sig}


def default_spec(store: Store, record: ModelRecord, backend: str | None = None, device: str = "cpu") -> LoadSpec:
    """The source artifact on the preferred installed backend for its format (or ``backend``)."""
    if backend is None:
        candidates = registry.for_format(record.format)
        if not candidates:
            raise BackendUnavailable(
                f"no installed backend loads format {record.format!r} (model {record.name!r}); "
                "install one, e.g. pip install 'polystack[all]', and check `polystack doctor`"
            )
        backend = candidates[0].name
    return LoadSpec(
        artifact=store.artifact_path(record),
        format=record.format,
        backend=backend,
        device=device,
        options=source_options(record, backend),
        max_batch_size=record.settings.get("max_batch_size"),  # the most rows the source takes, where it says
    )


def runtime_loads(name: str, format: str) -> bool:
    """Whether polystack has a runtime named ``name`` that loads models of ``format`` (installed or not), one a
    config's backend may choose."""
    try:
        return registry.get(name).accepts(format) and name not in ("null", "python")
    except PolystackError:
        return False


def source_options(record: ModelRecord, backend: str) -> dict[str, Any]:
    """Options a backend needs to load the source artifact as registered (skops: the trusted types; OpenVINO:
    full precision, which OpenVINO would otherwise lower to bf16 on CPUs with AVX512_BF16 or AMX, unverified)."""
    if backend == "sklearn" and record.settings.get("trusted_types"):
        return {"trusted": list(record.settings["trusted_types"])}
    if backend == "openvino":
        return {"inference_precision": "f32"}
    return {}


def spec_for_variant(store: Store, variant: VariantRecord | str) -> LoadSpec:
    """What to load for a variant; only a variant the gate verified is ever served."""
    if isinstance(variant, str):
        variant = store.variants.get(variant)
    if variant.status != "verified" or variant.digest is None:
        why = f": {variant.error}" if variant.error else ""
        raise Conflict(
            f"variant {variant.id} ({variant.backend}/{variant.device}/{variant.precision}) is {variant.status}{why}; "
            "only verified variants are served: `polystack variants NAME` lists them"
        )
    return LoadSpec(
        artifact=store.blobs.path(variant.digest),
        format=variant.format,
        backend=variant.backend,
        device=variant.device,
        options=dict(variant.options),
        variant_id=variant.id,
    )


class Engine:
    def __init__(self, store: Store) -> None:
        self.store = store
        self._models: dict[tuple[str, int], LoadedEntry] = {}
        self._lock = threading.RLock()
        # bumped on every load and unload: a caller may cache what ``get`` answered until it changes
        self.generation = 0

    # -- lifecycle -----------------------------------------------------------------------------
    def load(self, ref: ModelRef | str, spec: LoadSpec | None = None) -> LoadedEntry:
        """Load (or reload) one model version; the old instance, if any, is closed after the swap (once
        the calls running on it return)."""
        entry, old = self.swap(ref, spec)
        if old is not None:
            old.model.close()
        return entry

    def swap(
        self,
        ref: ModelRef | str,
        spec: LoadSpec | None = None,
        prepare: Callable[[LoadedEntry], None] | None = None,
    ) -> tuple[LoadedEntry, LoadedEntry | None]:
        """Load one model version and route to it; (the new entry, the one it replaced, left open for
        the caller to close when what it queued for it has run). ``prepare`` runs on the new entry before
        anything is routed to it (a warm-up); if it raises, the entry closes and routing stays as it was."""
        entry = self.build(ref, spec, prepare)
        return entry, self.install(entry)

    def build(
        self,
        ref: ModelRef | str,
        spec: LoadSpec | None = None,
        prepare: Callable[[LoadedEntry], None] | None = None,
    ) -> LoadedEntry:
        """Load one model version without routing to it (``install`` does), so that several versions can load
        before any is served; ``prepare`` as for ``swap``. The caller closes an entry it does not install."""
        ref = ModelRef.parse(ref) if isinstance(ref, str) else ref
        record = self.store.get(ref)
        spec = spec or default_spec(self.store, record)
        if spec.variant_id is not None:  # the gate's verdict is re-read: a variant rejected since is refused
            variant = self.store.variants.get(spec.variant_id)
            if variant.model_id != record.id:
                raise Conflict(f"variant {variant.id} belongs to another model than {record.name}:{record.version}")
            spec_for_variant(self.store, variant)
        backend = registry.require(spec.backend)
        if not backend.accepts(spec.format):
            raise BackendUnavailable(
                f"backend {backend.name!r} does not load format {spec.format!r}; it loads {sorted(backend.formats)}"
            )
        options = backend.parse_options(spec.options)
        started = time.perf_counter()
        signature = record.signature
        if spec.optional:
            signature = Signature(signature.inputs, signature.outputs, spec.optional)
        loaded = backend.load(spec.artifact, signature, options, spec.device)
        if spec.reshape:
            loaded = Reshaped(loaded, spec.reshape)
        if spec.ragged is not None:
            loaded = Ragged(loaded, spec.ragged)
        entry = LoadedEntry(
            record=record,
            spec=spec,
            model=CheckedModel(loaded, spec.max_batch_size, record.name),
            options=options,
            load_time_s=time.perf_counter() - started,
        )
        if prepare is not None:
            try:
                prepare(entry)
            except BaseException:
                entry.model.close()
                raise
        return entry

    def install(self, entry: LoadedEntry) -> LoadedEntry | None:
        """Route to an entry ``build`` made; the one it replaced, left open (as ``swap`` leaves it)."""
        key = (entry.record.name, entry.record.version)
        with self._lock:
            old = self._models.get(key)
            self._models[key] = entry
            self.generation += 1
        return old

    def unload(self, ref: ModelRef | str) -> list[LoadedEntry]:
        """Unload one version, or every loaded version of a name; return what was unloaded (each closed
        once the calls running on it return)."""
        gone = self.detach(ref)
        for entry in gone:
            entry.model.close()
        return gone

    def detach(self, ref: ModelRef | str) -> list[LoadedEntry]:
        """Stop routing to one version, or every loaded version of a name, without closing them; return them."""
        ref = ModelRef.parse(ref) if isinstance(ref, str) else ref
        with self._lock:
            keys = [k for k in self._models if k[0] == ref.name and (ref.version is None or k[1] == ref.version)]
            if not keys:
                raise ModelNotFound(f"model {ref} is not loaded")
            gone = [self._models.pop(k) for k in keys]
            self.generation += 1
        return gone

    def close(self) -> None:
        with self._lock:
            entries = list(self._models.values())
            self._models.clear()
            self.generation += 1
        for e in entries:  # one that fails to close (a Python model's finalize raising) is logged, and the rest close,
            try:  # as Triton logs it and exits 0
                e.model.close()
            except Exception as exc:
                message = exc.message if isinstance(exc, PolystackError) else f"{type(exc).__name__}: {exc}"
                log.error("model failed to close", extra={"model": e.name, "version": e.version, "error": message})

    # -- lookup --------------------------------------------------------------------------------
    def loaded(self) -> list[LoadedEntry]:
        with self._lock:
            return sorted(self._models.values(), key=lambda e: (e.name, e.version))

    def get(self, name: str, version: int | None = None) -> LoadedEntry:
        """The loaded entry for name (latest loaded version when none is given)."""
        with self._lock:
            if version is not None:
                entry = self._models.get((name, version))
                if entry is not None:
                    return entry
            else:
                versions = sorted(v for (n, v) in self._models if n == name)
                if versions:
                    return self._models[(name, versions[-1])]
        # Not loaded: in Triton's words and codes (a name with no version loaded is unknown, NOT_FOUND, as a client
        # that loads a model on NOT_FOUND expects; a version that is not loaded is not ready, UNAVAILABLE), with
        # whether it exists at all
        record = self.store.get(ModelRef(name, version))
        if version is None:
            raise ModelNotFound(
                f"Request for unknown model: {name!r} has no available versions (it is registered, version "
                f"{record.version} the latest, but not loaded); load it first"
            )
        raise ModelNotReady(
            f"Request for unknown model: {name!r} version {version} is not at ready state (it is registered but not "
            "loaded); load it first"
        )

    def ready(self, name: str, version: int | None = None) -> bool:
        try:
            self.get(name, version)
        except PolystackError:
            return False
        return True

    def metadata(self, name: str, version: int | None = None) -> ModelMetadata:
        entry = self.get(name, version)
        with self._lock:
            versions = sorted(str(v) for (n, v) in self._models if n == name)
        return ModelMetadata(
            name=entry.name,
            versions=versions if version is None else [str(entry.version)],
            platform=entry.spec.platform,
            signature=entry.signature,
        )

    # -- inference -----------------------------------------------------------------------------
    def infer(
        self,
        name: str,
        inputs: Mapping[str, np.ndarray],
        *,
        version: int | None = None,
        outputs: Sequence[str] | None = None,
    ) -> dict[str, np.ndarray]:
        """Validate and run one request (synchronously, in the caller's thread)."""
        entry = self.get(name, version)
        return infer_entry(entry, inputs, outputs)


def rows(entry: LoadedEntry, inputs: Mapping[str, np.ndarray]) -> int:
    """The rows of a request: its first batched input's first dimension (1 when none is batched); an optional
    input's where the model's inputs are all optional."""
    signature = entry.signature
    given = signature.inputs or tuple(t for t in signature.optional if t.name in inputs)
    return next((int(inputs[t.name].shape[0]) for t in given if t.batched), 1)


def inferences(entry: LoadedEntry, inputs: Mapping[str, np.ndarray]) -> int:
    """What one unbatched request counts in the statistics: its rows when the model has a row limit,
    which the model configuration shows as max_batch_size; without one (max_batch_size 0) Triton counts
    the request once."""
    return rows(entry, inputs) if entry.spec.max_batch_size and entry.signature.batched else 1


def infer_entry(
    entry: LoadedEntry,
    inputs: Mapping[str, np.ndarray],
    outputs: Sequence[str] | None = None,
    *,
    queued_ns: int | None = None,
    outcome: Outcome | None = None,
) -> dict[str, np.ndarray]:
    """Run one request on a loaded entry, recording success/failure and compute time; ``queued_ns``
    (``time.perf_counter_ns()``) is when a server handed it over to run: the wait since is its queue
    time, and its success or failure duration counts from then. ``outcome`` is the request's place in
    the statistics when its caller keeps it (a server, whose client may go away meanwhile)."""
    started = time.perf_counter_ns()
    since = started if queued_ns is None else queued_ns
    outcome = outcome or Outcome(entry.stats)
    try:
        if entry.shown is not None:  # the dims a config fixed: the model itself would take more
            entry.shown.validate_inputs(inputs, entry.spec.max_batch_size, entry.name)  # (Triton's note if it batches)
    except PolystackError:
        outcome.settle("fail", time.perf_counter_ns() - since)
        raise
    try:
        result = entry.model.infer(inputs, outputs)
    except ModelClosed:
        if not outcome.rerouted:  # else counted where its caller sends it next
            outcome.settle("fail", time.perf_counter_ns() - since)
        raise
    except PolystackError as e:
        ended = time.perf_counter_ns()
        if entry.stats.failures_execute and ran_and_failed(e):  # (the inputs counted only then: a refusal's may not be)
            entry.stats.failed_execution(inferences(entry, inputs), ended - started)
        outcome.settle("fail", ended - since)
        raise
    ended = time.perf_counter_ns()
    if queued_ns is not None:
        entry.stats.add("queue", started - queued_ns)
    entry.stats.executed(inferences(entry, inputs), ended - started)
    outcome.settle("success", ended - since)
    return result
