"""The data plane both transports share: every OIP v2 operation as a plain (async) method.

HTTP and gRPC handlers decode, call one method here (or of the model repository extension, which the plane holds:
``repository_extension.RepositoryExtension``), and encode; they hold no logic of their own. An ensemble's request runs
in ``ensemble_requests.EnsembleRequests`` (the plane holds one), its steps as requests of the models served here;
its loads and checks against those models in ``ensemble_loads.EnsembleLoads``; a model's versions are loaded, routed
to and retired in ``model_loads.ModelLoads``; what is served is ``served.py``'s, what is running ``in_flight.InFlight``.
This module calls the engine (``Engine.get``, ``infer_entry``, ``metadata``) and, per loaded
model, a ``DynamicBatcher`` when batching is on. Inference runs off the event loop: with batching in
the batcher's worker threads (its instances); without, in inference threads all such models share
(``InferenceThreads``, lighter on the loop than an executor), or in threads of the model's own when a
load's config gives it an instance count (Triton's default scheduler: each instance runs one request at
a time, the others wait their turn).

One measured exception, the inline fast path: handing a call to a thread and back costs 40-50 us
here (two context switches and a loop wake-up), and through tritonclient it added ~0.17 ms to a
0.4 ms request. So when a model's typical compute time is at most ``inline_max_ms`` (0.2 ms by
default, 0 turns it off) *and* it is the only request in flight (or the one step running of the one
ensemble request in flight), it runs on the loop: the loop has nothing else to do, and the call is
shorter than the handoff it saves. Any concurrency, or a slower model, goes to the threads as before,
and so does a request whose connection did not send the request before it (``InFlight.interleaved``): clients
taking turns look alone while the others' requests wait unread behind the call.
While one client sends its requests one at a time on one HTTP/1.1 connection and nothing else comes
(``InFlight.serial``), models up to ``inline_serial_max_ms`` (1 ms) run there too: the handoff lengthens each answer
by as much, and no other request waits behind the call. Concurrency cannot show while a call holds the loop (a
request running there enters and leaves before the next is read), so a lone request alone would not do: at
concurrency 8, 0.5 ms models run on the loop cut the requests answered by a quarter.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import dataclasses
import json
import logging
import os
import threading
import time
import weakref
from collections.abc import AsyncGenerator, Awaitable, Callable, Coroutine, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Protocol, TypeVar

import numpy as np

from polystack import __version__
from polystack.backends import hosting
from polystack.backends.reshaped import ReshapedResponses
from polystack.batching import BatchOverrides, BatchPolicy, DynamicBatcher
from polystack.batching.rate_limiter import ModelInstances, RateLimiter
from polystack.batching.sequence import SEQUENCE_KEYS, SequenceBatcher, flags_of
from polystack.custom_metrics import CustomMetrics
from polystack.engine import Engine, LoadedEntry, LoadSpec, ModelMetadata, infer_entry, rows
from polystack.errors import (
    BackendError,
    DeadlineExceeded,
    InvalidRequest,
    ModelClosed,
    ModelNotFound,
    ModelNotReady,
    NotFound,
    PermissionDenied,
    PolystackError,
    ShuttingDown,
    Unavailable,
    Unsupported,
    VersionNotFound,
    quote,
)
from polystack.formats import fil
from polystack.labels import labels_of
from polystack.metrics import ModelMetrics, ServerMetrics
from polystack.protocol import classification
from polystack.protocol.wire import InferRequest, InferResponse, ShmRef, raw_view
from polystack.server import (
    ensemble,
    latency_summaries,
    loader,
    model_config,
    model_repository,
    status,
    triton_metrics,
)
from polystack.server.decoupled import ResponseStream, Streamed
from polystack.server.ensemble_loads import EnsembleLoads
from polystack.server.ensemble_requests import EnsembleRequests
from polystack.server.in_flight import InFlight
from polystack.server.inference_threads import InferenceThreads, ThreadsClosed
from polystack.server.load_history import LoadHistory
from polystack.server.logs import LogSettings
from polystack.server.model_calls import ModelCalls
from polystack.server.model_loads import ModelLoads, finish_streams
from polystack.server.repository_extension import RepositoryExtension
from polystack.server.request_trace import RequestTrace
from polystack.server.response_cache import ResponseCache, nbytes
from polystack.server.served import ServedEnsemble, ServedModel
from polystack.server.shared_memory import CudaRegions, Region, SharedMemoryRegions
from polystack.server.tracing import Carrier, Front, Tracing
from polystack.stats import ModelStats, Outcome, ran_and_failed
from polystack.store import ModelRecord, Store
from polystack.store.refs import MAX_VERSION

log = logging.getLogger("polystack.server")
_Decoded = TypeVar("_Decoded")  # what a transport decodes a request into (an InferRequest, a V1 request)

_MAX_ROUTES = 1024
_MAX_REROUTES = 16  # reloads one request may follow, each to a newer instance, before it fails
_HASH_INLINE_BELOW = 256 << 10  # input bytes a response cache key is hashed from on the loop; more: on a thread


class SpecFor(Protocol):
    """What to load for a model under a profile, given how many of its calls run at once (they share the
    runtime), on ``runtime`` where a config's backend names one (empty: the plan's or the default's)."""

    def __call__(self, store: Store, record: ModelRecord, profile: str, instances: int, runtime: str = "") -> LoadSpec: ...


PolicyFor = Callable[[Store, ModelRecord, str], BatchPolicy | None]


def parse_version(name: str, version: str | None) -> int | None:
    """A request's version string as a number (None: the latest). Not a number is the request's fault, in
    Triton's words (its client examples look for them); a number no version has is not found."""
    if not version:
        return None
    shown = version if len(version) <= 40 else version[:40] + "..."  # a URL may be 64 KiB: not all echoed back
    if not (version.isascii() and version.isdigit()):
        raise InvalidRequest(
            f"failed to get model version from specified version string {shown!r}: a version is an "
            f"integer > 0; model {name!r}'s versions are listed by GET /v2/models/{name}"
        )
    digits = version.lstrip("0")
    # the length first: int() refuses strings of over 4,300 digits with a ValueError (a 500)
    if not digits or len(digits) > len(str(MAX_VERSION)) or int(digits) > MAX_VERSION:
        raise VersionNotFound(f"Request for unknown model: {name!r} version {shown} is not found; versions are 1 and up")
    return int(digits)


def _unknown(name: str, version: int | None, e: ModelNotFound | VersionNotFound, repository: bool) -> NotFound:
    """A request's model or version the server does not serve, in Triton's words, then what to do (the
    engine's words already, for a model none of whose versions is loaded): where to find the names served,
    by a server of a model ``repository`` or of the store alone."""
    if e.message.startswith("Request for unknown model"):
        return e
    if isinstance(e, ModelNotFound):
        where = (
            "the statistics (GET /v2/models/stats; gRPC ModelStatistics) list the models served from the model "
            "repository"
            if repository
            else "`polystack models` lists the registered ones"
        )
        return ModelNotFound(f"Request for unknown model: {name!r} is not found; {where}")
    return VersionNotFound(f"Request for unknown model: {name!r} version {version} is not found; {e.message}")


# what a decoupled model's refusal names when another model calls it with exec() (which answers once)
_ONCE_BY_A_MODEL = "a call without decoupled=True"


def _facts(
    request: InferRequest,
    outputs: Sequence[str] | None,
    responses: hosting.Responses | None = None,
    gone: threading.Event | None = None,
    trace: RequestTrace | None = None,
) -> hosting.RequestFacts:
    """What a hosted model sees of ``request`` past its inputs (``responses``: where a decoupled model sends its
    responses; ``gone``: set when the client of a request answered once goes away; ``trace``: its trace, if it is
    traced)."""
    return hosting.RequestFacts(
        request.id or "", request.parameters, tuple(outputs or ()), request.callers, responses, gone, request.partial,
        trace, request.model_parameters,
    )  # fmt: skip


async def _answered(stream: ResponseStream, name: str) -> dict[str, np.ndarray]:
    """The one answer of a request that is not decoupled, read from its stream: its model's first response (what it
    sends after, the final flag, is left), or the error it carries."""
    async for sent, _ in stream:
        if isinstance(sent, PolystackError):
            try:
                raise sent
            finally:  # its traceback holds this frame: naming it here made a cycle, which kept the model's entry
                del sent  # (the frame below's) until Python's cycle collector ran (helper-238)
        if sent is not None:
            return sent
    raise BackendError(f"model {name!r} sent the final flag without a response")  # its sender refuses that


def _ran(run: asyncio.Task[InferResponse], stream: ResponseStream, name: str) -> None:
    """A decoupled model's request ran (its execute returned, or it failed): a failure before the model's final
    response is that response; one after it, or a run that ended with responses still to come, is left (the model
    may send them from its threads)."""
    if run.cancelled():
        return
    e = run.exception()
    if e is None:
        return
    error = e if isinstance(e, PolystackError) else BackendError(f"model {name!r} failed: {type(e).__name__}: {e}")
    if not stream.fail(error):
        log.warning("a decoupled model's request failed after its final response", extra={"model": name, "error": str(e)})


def _size(array: np.ndarray) -> int:
    """The bytes ``array`` holds: an array of strings' (BYTES) its strings' lengths, not 8 bytes each."""
    return sum(map(len, array.flat)) if array.dtype == object else array.nbytes


def _timed_infer(
    entry: LoadedEntry,
    inputs: dict[str, np.ndarray],
    outputs: Sequence[str] | None,
    queued_ns: int,
    outcome: Outcome,
    waiting: set[int] | None = None,
    failed: list[int] | None = None,
    limits: ModelInstances | None = None,
) -> Any:
    """The result, and the call's start and end (``time.perf_counter_ns()``); ``queued_ns`` is when it
    was handed over, so that the wait for a thread (and for the rate limiter's resources, with ``limits``)
    counts as the request's queue time. ``waiting`` (its model's calls handed over and not started, by their
    outcome's id) loses this call as it starts; ``failed`` receives the start and end of a call that raised."""
    if limits is None:
        return _infer_now(entry, inputs, outputs, queued_ns, outcome, waiting, failed)

    def gone() -> bool:  # its caller went away (the loop dropped it from ``waiting``): it is not run
        return waiting is not None and id(outcome) not in waiting

    with limits.held(give_up=gone) as granted:
        if not granted or gone():
            raise DeadlineExceeded("the request's caller went away while it waited for the rate limiter")
        return _infer_now(entry, inputs, outputs, queued_ns, outcome, waiting, failed)


def _infer_now(
    entry: LoadedEntry,
    inputs: dict[str, np.ndarray],
    outputs: Sequence[str] | None,
    queued_ns: int,
    outcome: Outcome,
    waiting: set[int] | None,
    failed: list[int] | None,
) -> Any:
    if waiting is not None:
        waiting.discard(id(outcome))  # one C call: safe beside the loop's add and discard without a lock
    t0 = time.perf_counter_ns()
    try:
        result = infer_entry(entry, inputs, outputs, queued_ns=queued_ns, outcome=outcome)
    except BaseException:
        if failed is not None:
            failed += (t0, time.perf_counter_ns())
        raise
    return result, t0, time.perf_counter_ns()


class DataPlane:
    def __init__(
        self,
        engine: Engine,
        *,
        profile: str,
        spec_for: SpecFor,
        policy_for: PolicyFor,
        allow_model_control: bool = False,
        allow_shared_memory: bool = False,
        workers: int | None = None,
        thread_initializer: Callable[[], None] | None = None,
        metrics: ServerMetrics | None = None,
        tracing: Tracing | None = None,
        log_settings: LogSettings | None = None,
        inline_max_ms: float = 0.2,
        inline_serial_max_ms: float = 1.0,
        server_name: str = "polystack",
        model_configs: Mapping[str, model_config.ConfigFile] | None = None,
        response_cache: ResponseCache | None = None,
        frontend_initializer: Callable[[], None] | None = None,
        repository: model_repository.ModelRepository | None = None,
        unbatched_instances: int | None = None,
        planned_instances: Callable[[Store, ModelRecord, str], int | None] | None = None,
        default_max_batch_size: int = model_config.DEFAULT_MAX_BATCH_SIZE,
        batch_overrides: BatchOverrides | None = None,
        no_batching: bool = False,
        triton_names: bool = False,
        cpu_metrics: bool = True,
        metrics_interval_ms: int = triton_metrics.DEFAULT_INTERVAL_MS,
        counter_latencies: bool = True,
        summary_quantiles: tuple[float, ...] = (),
        strict_readiness: bool = False,
        repository_only: bool = False,
        folder_rules: model_repository.FolderRules = model_repository.FolderRules(),
        rate_limiter: RateLimiter | None = None,
        load_retries: int = 0,
        load_threads: int = loader.DEFAULT_THREADS,
    ) -> None:
        self.engine = engine
        # Triton's rate limiter (serve --rate-limit execution_count): each instance of every model waits for its
        # resources before it runs (None: off)
        self.rate_limiter = rate_limiter
        self.load_retries = load_retries  # a failed build tried again this many times (Triton's load retry count)
        if rate_limiter is not None:
            log.info(
                "rate limiter on (execution_count)",
                extra={"given": rate_limiter.described() or "as much as the instance that needs most"},
            )
        # Triton's auto-complete of a repository model's config (off: serve --disable-auto-complete-config)
        self.folder_rules = folder_rules  # how repository folders are read, repositories registered later's too
        self.auto_complete = folder_rules.auto_complete
        # Triton's explicit model control over a repository: loads by name and the index know its folders (and
        # the models served another way) alone, not the store's other models (--allow-model-control's do)
        self.repository_only = repository_only and repository is not None
        # Triton's --strict-readiness: the server is not ready while a model a load left is not (not_ready_models)
        self.strict_readiness = strict_readiness
        self.triton_names = triton_names  # serve --triton-metrics: /metrics shows Triton's names too
        # and among them nv_cpu_* (off: --allow-cpu-metrics false), the utilization sampled as Triton's poll thread
        # does, every half --metrics-interval-ms
        self.cpu_sampler = triton_metrics.CpuSampler(metrics_interval_ms) if triton_names and cpu_metrics else None
        if self.cpu_sampler is not None:
            self.cpu_sampler.start()
        self.counter_latencies = counter_latencies  # and the duration counters (--metrics-config counter_latencies)
        # and Triton's latency summaries with these quantiles (--metrics-config summary_latencies=true; none: off)
        self.summary_quantiles = summary_quantiles
        # the max_batch_size Triton's auto-complete gives a repository's model that can batch where its config
        # leaves it out (serve --backend-config default-max-batch-size), and the batch settings given on their
        # own (serve --max-batch-size, ...) that replace those of what it batches for a model without a config
        self.default_max_batch_size = default_max_batch_size
        self.batch_overrides = batch_overrides
        self.no_batching = no_batching  # serve --no-batching: such a model without a config is not batched either
        # the Triton model repositories served (serve --model-repository), read again by a load by name and a poll
        self.repository = repository
        # serve --instances for a model served without batching and without a config: how many of its requests
        # run at once, on threads of its own (Triton's instance count without dynamic batching); None: the
        # shared inference threads
        self.unbatched_instances = unbatched_instances
        # the instance count of a model's plan for the profile (None: no plan): an unbatched plan's too
        self.planned_instances = planned_instances or (lambda store, record, profile: None)
        # the server's response cache (serve --cache-config): models whose config enables it answer from it
        self.response_cache = response_cache
        # Triton model configs by model name, given at start: what a load without a config of its own
        # uses, as Triton's reads the repository's config.pbtxt (serve --model-config)
        self.model_configs = dict(model_configs or {})
        self.store = engine.store
        self.profile = profile
        self.spec_for = spec_for
        self.policy_for = policy_for
        self.allow_model_control = allow_model_control
        # the system shared memory extension's regions; None: off (tensors there are refused)
        self.shared_memory = SharedMemoryRegions() if allow_shared_memory else None
        self.cuda_shared_memory = CudaRegions(allow_shared_memory)  # always answered: none is ever registered
        self.metrics = metrics or ServerMetrics()
        self.tracing = tracing or Tracing(enabled=False)
        # the trace and logging extensions' settings can be changed (None: a Ray Serve replica, one of
        # several with settings of their own, where a change would reach whichever replica got it)
        self.log_settings = log_settings
        self.server_name = server_name
        # inference threads, and the loader's for loads and unloads (several models' builds at once: serve
        # --model-load-thread-count), so that a load never holds an inference thread; ``thread_initializer`` pins
        # both (server.placement)
        self.workers = workers or os.cpu_count() or 2
        self.thread_initializer = thread_initializer
        self.executor = InferenceThreads(self.workers, "infer", thread_initializer)
        self.loader = loader.Loader(load_threads, thread_initializer)
        # response cache keys of large inputs are hashed here, never behind model runs in the inference threads:
        # front-end work, on the front end's cores when the server is pinned (``frontend_initializer``)
        self._hasher = (
            ThreadPoolExecutor(max_workers=2, thread_name_prefix="cache-key", initializer=frontend_initializer)
            if response_cache is not None
            else None
        )
        self.served_versions: dict[tuple[str, int], ServedModel] = {}
        self.ensembles: dict[str, ServedEnsemble] = {}  # by name (one version each); changed under routing
        # what the server keeps of each name's loads beyond what it serves (failures, versions stopped, ensembles
        # waiting for their models, the last config given): the repository extension's index and loads read it too
        self.history = LoadHistory()
        self._sequences_ignored: set[str] = set()  # the models whose ignored sequence parameters the log named
        self.names_ever_served: set[str] = set()  # every model name this server has served (``_resolve``)
        self.loading: set[tuple[str, int]] = set()  # versions a load builds now (on the loader)
        # each served version's statistics across its instances, for Triton's metric names (--triton-metrics)
        self.tallies: dict[tuple[str, str], triton_metrics.Tally] = {}
        # by model and version: the queues (batchers, sequence batchers, unbatched instances) its depth gauge sums
        self.queues: dict[tuple[str, str], list[weakref.ref[DynamicBatcher | SequenceBatcher | ServedModel]]] = {}
        # (name, version as asked) -> (engine generation, served): each request resolved its model
        # under the engine's lock (the latest version by sorting every loaded key), ~2.5% of the
        # event loop's time under load (py-spy)
        self._routes: dict[tuple[tuple[int, int], str, str | None], ServedModel] = {}
        self._routes_generation = (-1, -1)  # the generation the routes are of
        self._generation = 0  # bumped after ``served_versions`` changes (the engine's is bumped before)
        # (--model-namespacing) by model folder name, the names of its copies known now (``_identities``), as of the
        # load or unload that ``_generation`` counts (-1: none read)
        self._spread: tuple[int, dict[str, list[str]]] = (-1, {})
        self.routing = threading.Lock()  # a load's routing change (engine entry and its batcher) as one step
        self.inline_max_s = inline_max_ms / 1000.0
        # for a serial client's requests (``InFlight.serial``); never below the other, and off with it
        self.inline_serial_max_s = max(inline_max_ms, inline_serial_max_ms) / 1000.0 if inline_max_ms > 0 else 0.0
        # by model: a slow-moving average of an unbatched request's compute time, and of its input bytes
        self.typical_s: dict[tuple[str, int], tuple[float, float]] = {}
        self.draining = False
        self.drain_began_ns = 0  # perf_counter_ns when the drain began: a request begun since is refused, not run
        # loads and unloads of the models' versions: planned, built, routed to, and what they replace retired
        self.model_loads = ModelLoads(self)
        # Triton's model repository extension: the index, loads and unloads by name, polls (its transports call it)
        self.repository_extension = RepositoryExtension(self)
        # an ensemble's requests: its steps as requests of the models served, held for the request's life
        self.ensemble_requests = EnsembleRequests(self)
        # the ensembles' loads and checks against the models their steps run
        self.ensemble_loads = EnsembleLoads(self)
        # what hosted models ask of the server from their threads (``serve_on`` at start)
        self.calls = ModelCalls(
            self._called, self.repository_extension.load, self.repository_extension.unload, self._capacity,
            self.infer_stream,
        )  # fmt: skip
        self.custom_metrics = CustomMetrics()  # the families hosted models define (outliving them, as in Triton)
        self._drain_started = asyncio.Event()
        # set once the drain's sequences ended (or its timeout passed): until then their requests are taken
        self._sequences_over = asyncio.Event()
        self._hurried = False  # a second signal: the drain waits no longer for the sequences held
        self.in_flight = InFlight()  # requests, loads and unloads running: a drain waits for them
        self.any_decoupled = False  # a decoupled model was served: infer checks the model it runs
        self._streaming: set[asyncio.Task[InferResponse]] = set()  # decoupled models' requests running
        # set by ``close`` (the drain is over): an unload waits no longer for its model's open streams
        self.stopping = threading.Event()
        self.metrics.in_flight.set_function(lambda: self.in_flight.count)  # read at scrape time: nothing per request

    # -- model lifecycle -------------------------------------------------------------------------
    def serves_version(self, name: str, version: int) -> bool:
        """Whether a model or an ensemble serves ``version`` of ``name`` (their series on /metrics are one)."""
        ensemble_now = self.ensembles.get(name)
        if (name, version) in self.served_versions:
            return True
        return ensemble_now is not None and ensemble_now.at(version) is not None

    def copies(self, name: str) -> list[str]:
        """With --model-namespacing, the names of the copies of ``name`` that two or more repositories hold (none:
        it names one model)."""
        return self.repository.copies(name) if self.repository is not None else []

    def names_served(self) -> set[str]:
        """The names of the models and ensembles served."""
        return {e.name for e in self.engine.loaded()} | set(self.ensembles)

    def serves(self, name: str) -> bool:
        """Whether a model or an ensemble of name ``name`` is served."""
        return name in self.ensembles or self.serves_model(name)

    def serves_model(self, name: str) -> bool:
        """Whether a version of model ``name`` (not an ensemble) is loaded."""
        return any(e.name == name for e in self.engine.loaded())

    def count_loaded(self) -> None:
        """The loaded-models gauge, after a load or an unload of a model's version or an ensemble."""
        self.metrics.models_loaded.set(len(self.served_versions) + len(self.ensembles))  # each version, each ensemble

    def max_batch(self, served: ServedModel) -> int:
        """The most rows a request of ``served`` may carry (0: no limit, or no batch), as its config shows."""
        batcher, entry = served.batcher, served.entry
        if served.sequencer is not None:
            return served.sequencer.policy.max_batch_size
        if batcher is not None and batcher.batchable:
            return batcher.max_batch_size
        if batcher is None and entry.signature.may_batch and entry.spec.max_batch_size:
            return entry.spec.max_batch_size
        return 0

    def ignore_sequences(self, name: str, parameters: dict[str, Any]) -> None:
        """Sequence parameters sent to a model without sequence batching: ignored, as Triton ignores them (the
        model keeps no state, so its answer is the same with them or without); said once per model in the log."""
        if name not in self._sequences_ignored and any(parameters.get(key) for key in SEQUENCE_KEYS):
            self._sequences_ignored.add(name)
            log.warning(
                "sequence parameters sent to a model without sequence_batching are ignored, as Triton ignores them: "
                "it keeps no state between requests",
                extra={"model": name},
            )

    def close(self) -> None:
        self.stopping.set()  # an unload's wait for its decoupled model's final responses ends: they fail now
        self.calls.close()  # a model waiting for another's answer, which the stopped loop would give, waits no more
        self.loader.shutdown()  # a load in progress finishes before its batcher would be missed
        self.model_loads.wait_retired()  # what unloads and reloads left running finishes first
        for served in self.served_versions.values():
            served.close(wait=True)
            finish_streams(served, 0.0, self.stopping)  # the drain is over: what is still unanswered fails
        self.served_versions.clear()
        self.served_changed()
        self.executor.shutdown(wait=True)
        if self._hasher is not None:
            self._hasher.shutdown(wait=True)
        if self.shared_memory is not None:
            self.shared_memory.close()
        if self.cpu_sampler is not None:
            self.cpu_sampler.stop()

    def served_changed(self) -> None:
        """What is served changed (a load, an unload): the routes resolved before go, as they hold the models
        replaced (their instances and weights: an unload frees them now, not at the next request)."""
        self._generation += 1
        self._routes.clear()

    def _refuse_ambiguous(self, name: str) -> None:
        """(--model-namespacing) A request naming a model of which two or more copies are known is refused, in
        Triton's words, though one of them serves under that name from before the other came (an ensemble's step
        keeps running it)."""
        generation, known = self._spread
        if generation != self._generation:
            generation = self._generation  # (read first: a load meanwhile leaves this stale, read again next time)
            known = self._identities()
            self._spread = (generation, known)
        copies = known.get(name, ())
        if len(copies) > 1:
            raise model_repository.ambiguous(name, copies)

    def _identities(self) -> dict[str, list[str]]:
        """(--model-namespacing) By model folder name, the names its copies serve under now, and those whose last
        load failed, as Triton's model map knows the models it loaded or tried to: with the folder's own name where
        a copy serves under it from before another came. Model folders of which no copy is known are left out."""
        if self.repository is None:
            return {}
        served = self.names_served()
        known: dict[str, set[str]] = {}
        for name in served | set(self.history.failures):
            copy = self.repository.copy_of(name)
            if copy is not None:
                known.setdefault(copy[0], set()).add(name)
        return {model: sorted(names | ({model} & served)) for model, names in known.items()}

    def served_copies(self, name: str) -> list[str]:
        """(--model-namespacing) The names serving copies of model folder ``name`` now."""
        repository = self.repository
        if repository is None or not self.folder_rules.namespacing:
            return []
        return sorted(n for n in self.names_served() if (repository.copy_of(n) or ("",))[0] == name)

    def served_model(self, name: str, version: str | None, step: bool = False) -> ServedModel:
        """What serves ``name`` (at ``version``) now; ``step``: for an ensemble's step, which a name two
        repositories hold does not refuse (it runs what it was loaded with)."""
        if self.folder_rules.namespacing and not step:
            self._refuse_ambiguous(name)
        # both generations are read before resolving: a load or unload in between (another thread)
        # leaves this answer under a generation that is already stale, never a fresh one
        generation = (self.engine.generation, self._generation)
        key = (generation, name, version)
        served = self._routes.get(key)
        if served is not None:
            return served
        served = self._resolve(name, version)
        # routes of an earlier generation are never asked again, and hold the models a load or unload replaced
        # (their instances and weights: helper-231), so they go; "1", "01", "001", ... all name version 1: bounded
        if generation != self._routes_generation or len(self._routes) >= _MAX_ROUTES:
            self._routes.clear()
            self._routes_generation = generation
        self._routes[key] = served
        if (self.engine.generation, self._generation) != generation:
            # a load or unload came meanwhile (another thread: the loader, a model's call): the route may hold what
            # it replaced. served_changed counts, then clears: either it cleared after the store, or this sees the
            # count
            self._routes.pop(key, None)
        return served

    def ensembles_served(self) -> list[str]:
        """The ensembles served now, as ``name:version``."""
        ensembles = dict(self.ensembles)
        return [f"{name}:{each.ensemble.version}" for name in sorted(ensembles) for each in ensembles[name].every]

    def served_ensemble(self, name: str, version: str | None, step: bool = False) -> ServedEnsemble | None:
        """The ensemble served as ``name`` (None: none is), if it has ``version`` (else VersionNotFound); ``step``:
        for an ensemble's step (``served_model``)."""
        served = self.ensembles.get(name)
        if served is not None and self.folder_rules.namespacing and not step:
            self._refuse_ambiguous(name)
        if served is not None and version:
            v = parse_version(name, version)
            at = served.at(v) if v is not None else served
            if at is None:
                versions = [each.ensemble.version for each in served.every]
                raise VersionNotFound(
                    f"Request for unknown model: {name!r} version {v} is not found; the ensemble serves version"
                    f"{'s' if len(versions) > 1 else ''} {', '.join(map(str, versions))}"
                )
            return at
        return served

    def _resolve(self, name: str, version: str | None) -> ServedModel:
        v = parse_version(name, version)
        with self.routing:
            try:
                entry = self.engine.get(name, v)
            except (ModelNotFound, VersionNotFound, ModelNotReady) as e:
                stopped = {n for n, _ in frozenset(self.history.stopped)}
                failed = self.history.failures.get(name)
                if isinstance(e, ModelNotFound) and failed is not None:  # Triton's words, then why
                    # a model Triton tracks (its load failed) has no available versions, and the version that failed
                    # is not at ready state (UNAVAILABLE, which a client may retry: helper-283); one whose load failed
                    # before it was read (Triton's poll failed) is not found
                    unread = name in self.history.unread
                    if v is not None and v == failed[0] and not unread:
                        raise ModelNotReady(
                            f"Request for unknown model: {name!r} version {v} is not at ready state; its last load "
                            f"failed: {failed[1]}"
                        ) from None
                    known = "is not found" if unread else "has no available versions"
                    raise ModelNotFound(
                        f"Request for unknown model: {name!r} {known}; its last load failed: {failed[1]}"
                    ) from None
                loading = any(n == name for n, _ in frozenset(self.loading))  # (a request while it loads)
                if isinstance(e, ModelNotFound) and name in stopped:  # an ensemble (never in the store) unloaded
                    then = "(it was unloaded; its load is under way)" if loading else "(it was unloaded); load it first"
                    said = f"Request for unknown model: {name!r} has no available versions {then}"
                    raise ModelNotFound(said) from None
                registered = isinstance(e, ModelNotReady) or e.message.startswith("Request for unknown model")
                if registered and self.repository is not None and name not in self.names_ever_served | stopped:
                    # a model the store holds (an earlier run's, say) that this server never served: unknown to a
                    # server of a repository, as Triton knows its repositories' models alone (it answered 503 for a
                    # version, which a client may retry for good)
                    where = (
                        "its first load is under way"
                        if loading
                        else "the statistics (GET /v2/models/stats; gRPC ModelStatistics) list the models served "
                        "from the model repository (polystack's store holds a model of that name, which this server "
                        "has not loaded)"
                    )
                    raise ModelNotFound(f"Request for unknown model: {name!r} is not found; {where}") from None
                if self.repository is not None:  # the store's words (registered, its versions) mean nothing here
                    serving = sorted(k[1] for k in self.served_versions if k[0] == name)
                    if isinstance(e, ModelNotReady | VersionNotFound) and serving:
                        known = "is not at ready state" if isinstance(e, ModelNotReady) else "is not found"
                        raise type(e)(  # Triton's words, then which versions the folder's policy serves
                            f"Request for unknown model: {name!r} version {v} {known}; the versions served are "
                            f"{', '.join(map(str, serving))}"
                        ) from None
                    gone = "its load is under way" if loading else (
                        "none is loaded now: unloaded, or its folder left the repository"
                    )  # fmt: skip
                    if isinstance(e, ModelNotFound) and not serving and e.message.startswith("Request for unknown"):
                        raise ModelNotFound(
                            f"Request for unknown model: {name!r} has no available versions ({gone}); the repository "
                            "index (POST /v2/repository/index) lists the models the repository holds"
                        ) from None
                    if isinstance(e, ModelNotReady) and not serving:
                        raise ModelNotReady(
                            f"Request for unknown model: {name!r} version {v} is not at ready state ({gone})"
                        ) from None
                if isinstance(e, ModelNotReady):
                    raise
                raise _unknown(name, v, e, self.repository is not None) from None
            served = self.served_versions.get((entry.name, entry.version))
        if served is None or served.entry is not entry:
            # Loaded through the engine directly (not through this plane): serve it unbatched.
            served = ServedModel(entry, None)
        return served

    # -- health and metadata ---------------------------------------------------------------------
    def live(self) -> bool:
        return True

    def ready(self) -> bool:
        return not self.draining and not (self.strict_readiness and self.not_ready_models())

    def why_not_ready(self) -> str:
        """Why the server is not ready, in words for a client that shows the answer's ``error`` (KServe's)."""
        if self.draining:
            return "the server is shutting down; send requests to another replica"
        models = self.not_ready_models()
        return (
            f"model(s) {', '.join(map(repr, models))} are not ready (--strict-readiness counts them): each is loading, "
            "or failed to load (GET /v2/models/NAME/ready, and the server's log, say which)"
        )

    def not_ready_models(self) -> list[str]:
        """The models Triton's strict readiness counts against the server's: one loading for the first time (none
        of its versions served yet), one whose last load failed at a version not served (a reload's new version),
        or with none of its versions served. A reload (its versions serve on meanwhile, as Triton's do), a load
        that failed before its model was read (its config unreadable: Triton's poll of it fails), a name no
        repository or store has, and a model unloaded since its load failed (Triton keeps that failure until a
        load succeeds) do not count."""
        served = {(e.name, e.version) for e in self.engine.loaded()}
        served |= {(n, each.ensemble.version) for n, p in list(self.ensembles.items()) for each in p.every}
        names = {n for n, _ in served}
        out = {n for n, _ in frozenset(self.loading) if n not in names}
        for name, (version, _) in list(self.history.failures.items()):
            serves_on = (name, version) in served if version is not None else name in names
            if not serves_on and name not in self.history.unread:
                out.add(name)
        return sorted(out)

    def start_draining(self) -> None:
        """Readiness false from now on (SIGTERM): requests in flight finish, load balancers move on. A batch
        waiting out its queue delay leaves now; sequence models start no new sequence, and take the requests of
        those they hold until they end (``wait_sequences``)."""
        if not self.draining:
            self.drain_began_ns = time.perf_counter_ns()
        self.draining = True
        self._drain_started.set()
        for served in list(self.served_versions.values()):
            if served.sequencer is not None:
                served.sequencer.drain()
            if served.batcher is not None:  # what waits for the queue delay leaves now: no company can come
                served.batcher.flush()

    async def wait_draining(self) -> None:
        await self._drain_started.wait()

    def serves_sequences(self, name: str, version: str | None) -> bool:
        """Whether ``name`` (at ``version``; an ensemble: one of its steps) is a sequence model, whose sequences'
        requests a drain still takes (its sequence batcher refuses a START then, and a sequence it does not hold)."""
        try:
            pipeline = self.served_ensemble(name, version)
            if pipeline is not None:
                return any(self.serves_sequences(step.model, step.asked) for step in pipeline.ensemble.steps)
            served = self.served_model(name, version)
        except PolystackError:
            return False
        return served.sequencer is not None

    def cut_sequences(self) -> int:
        """The drain waits no longer (its timeout passed, or a second signal came): every sequence held ends now
        (``SequenceBatcher.cut``); how many were live."""
        return sum(s.sequencer.cut() for s in list(self.served_versions.values()) if s.sequencer is not None)

    @property
    def taking_sequences(self) -> bool:
        """The drain's first part: the sequences held take their requests (``wait_sequences``)."""
        return self.draining and not self._sequences_over.is_set()

    def sequences_live(self) -> bool:
        return any(s.sequencer is not None and s.sequencer.live() for s in list(self.served_versions.values()))

    async def wait_sequences(self, timeout_s: float) -> bool:
        """The drain's first part, as Triton's exit: until the sequences held end (their END request, or idle for
        their ``max_sequence_idle_microseconds``), their requests are taken, by HTTP, gRPC calls and streams;
        whether they all ended within ``timeout_s`` (false too at a second signal); those left the caller ends
        (``cut_sequences``)."""
        deadline = time.monotonic() + timeout_s
        try:
            while self.sequences_live():
                if time.monotonic() >= deadline or self._hurried:
                    return False
                await asyncio.sleep(0.05)
            return True
        finally:
            self._sequences_over.set()

    def stop_waiting_for_sequences(self) -> None:
        """A second SIGTERM or Ctrl-C: the drain ends the sequences held now, as at its timeout."""
        self._hurried = True

    async def wait_sequences_over(self) -> None:
        await self._sequences_over.wait()

    def extensions(self) -> list[str]:
        # "sequence": Triton's sequence extension (sequence_id, sequence_start, sequence_end; sequence.py);
        # "schedule_policy": its priority and timeout request parameters; "parameters": a request's, its
        # inputs' and outputs' parameters objects are read (Triton lists it: tritonserver 2.51, helper-106)
        ext = ["binary_tensor_data", "classification", "model_configuration", "parameters", "schedule_policy",
               "sequence", "statistics"]  # fmt: skip
        if self.log_settings is not None:
            ext += ["logging", "trace"]
        # both, as Triton lists them whatever its model control: the index answers, loads may be refused
        ext += ["model_repository", "model_repository(unload_dependents)"]
        if self.shared_memory is not None:
            ext.append("system_shared_memory")
        return ext

    # -- the trace and logging extensions ----------------------------------------------------------
    def trace_settings(self, model: str, changes: dict[str, Any] | None) -> dict[str, Any]:
        """The trace settings of ``model`` ("": the global ones), after applying ``changes`` if given."""
        self._settings_here("trace")
        if model and self.served_ensemble(model, None) is None:
            try:
                self.served_model(model, None)
            except (NotFound, Unavailable):  # Triton's INVALID_ARG for a model not ready, in its words (the name
                # bare, as Triton's test looks for it), then what to do
                shown = model if len(model) <= 140 and model.isprintable() else quote(model, 140)
                raise InvalidRequest(
                    f"Request for unknown model : {shown}; it is not loaded: load it, or ask for the global trace "
                    "settings (no model)"
                ) from None
        before = self.tracing.settings(model or None)
        if changes is None:
            return before
        result = self.tracing.update(model or None, changes)
        if result != before:
            log.info("trace settings changed", extra={"model": model or None, "before": before, "settings": result})
        return result

    def log_settings_of(self, changes: dict[str, Any] | None) -> dict[str, Any]:
        """The log settings, after applying ``changes`` if given."""
        settings = self._settings_here("logging")
        if changes is None:
            return settings.settings()
        before = settings.settings()
        result = settings.update(changes)
        if result != before:  # said at warning, which the change cannot have switched off unless it asked to
            log.warning("log settings changed", extra={"before": before, "settings": result})
        return result

    def _settings_here(self, extension: str) -> LogSettings:
        if self.log_settings is None:
            raise NotFound(
                f"the {extension} extension is off on Ray Serve: each replica has settings of its own, and a "
                "change would reach only the replica that got it; set them when starting (--trace, --log-level)"
            )
        return self.log_settings

    def server_metadata(self) -> dict[str, Any]:
        return {"name": self.server_name, "version": __version__, "extensions": self.extensions()}

    def model_ready(self, name: str, version: str | None) -> bool:
        """Whether ``name`` (at ``version``) is served and ready; a version that is not a number is refused, in
        Triton's words (its gRPC ModelReady answers INVALID_ARGUMENT), where anything else not ready is False."""
        if self.draining:
            return False
        with contextlib.suppress(VersionNotFound):  # a number past every version's: not ready
            parse_version(name, version)
        try:
            pipeline = self.served_ensemble(name, version)
            if pipeline is not None:  # every model it runs is served (each step's version, or one of them)
                return all(self.model_ready(step.model, step.asked) for step in pipeline.ensemble.steps)
            self.served_model(name, version)
        except PolystackError:
            return False
        return True

    async def model_ready_now(self, name: str, version: str | None) -> bool:
        """``model_ready``, and then its model's own answer where it has one (a Python model's ``is_ready()``: Triton's
        user-defined readiness, asked at each readiness query; an ensemble's, each step's), asked off the loop."""
        if not self.model_ready(name, version):
            return False
        with contextlib.suppress(PolystackError):  # (ready a moment ago: what changed since is asked again)
            pipeline = self.served_ensemble(name, version)
            if pipeline is not None:
                return all([await self.model_ready_now(step.model, step.asked) for step in pipeline.ensemble.steps])
            ready = getattr(self.served_model(name, version).entry.model.inner, "ready", None)
            if ready is not None:
                return bool(await asyncio.to_thread(ready))
        return self.model_ready(name, version)

    # -- what hosted models ask (``hosting.Host``) --------------------------------------------------
    def call(self, call: hosting.ModelCall) -> concurrent.futures.Future[dict[str, np.ndarray]]:
        return self.calls.call(call)

    def stream(self, call: hosting.ModelCall, responses: hosting.Responses) -> concurrent.futures.Future[None]:
        return self.calls.stream(call, responses)

    async def _called(self, name: str, version: str | None, request: InferRequest) -> InferResponse:
        """A model's call to another, answered once (``exec()``): a decoupled model's refused in Triton's words."""
        if self.any_decoupled and self.decoupled(name, version):
            raise Unsupported(
                f"Model {name} is using the decoupled. The current BLS request call doesn't support models using the "
                "decoupled transaction policy. Please use 'decoupled=True' argument to the 'exec' or 'async_exec' "
                "calls for decoupled models.'"
            )
        return await self.infer(name, version, request)

    def load_model(self, name: str, parameters: dict[str, Any], caller: str) -> concurrent.futures.Future[None]:
        with self._asked_by(caller, "load_model"):
            return self.calls.load(name, parameters, caller)

    def unload_model(self, name: str, parameters: dict[str, Any], caller: str) -> concurrent.futures.Future[None]:
        with self._asked_by(caller, "unload_model"):
            return self.calls.unload(name, parameters, caller)

    def _capacity(self, name: str, version: str | None) -> tuple[str, int] | None:
        """The model ``name`` serves now (``name:version``) and how many of its requests run at once (None: no
        model serves so, an ensemble among them)."""
        try:
            served = self.served_model(name, version)
        except PolystackError:
            return None
        return f"{served.entry.name}:{served.entry.version}", self.instances_of(served)

    def _asked_by(self, caller: str, what: str) -> contextlib.AbstractContextManager[None]:
        """What a load or unload asked by model ``caller``'s code is asked in: from its build (its initialize or
        warm-up), the loader runs it on a thread of its own, beside that build, which waits for it
        (``loader.asking``); from a thread the model started (``caller`` ""), which its build may wait for, on a
        thread of its own too; from a served model's execute, as any load. One asked while a task holds the
        loader's turn would queue behind it: refused."""
        if self.loader.holds_turn():
            raise Unavailable(
                f"model {caller!r} asked for {what} while the loader works for it: the load would wait for itself; "
                "ask it from initialize or execute"
            )
        built = loader.building_here()
        if built is not None and built[0] == caller:
            return loader.asking(built[1])
        return loader.asking(0) if not caller else contextlib.nullcontext()

    def render_metrics(self) -> bytes:
        """``/metrics``: polystack's families, and Triton's names of the same figures when asked for (the families
        the models define follow, ``custom_metrics``)."""
        text = self.metrics.render()
        if not self.triton_names:
            return text
        ensembles = dict(self.ensembles)  # first: a folder turning from an ensemble into a model routes the model
        # before it unloads the ensemble; one series a name meanwhile
        shown: list[tuple[str, int, ModelStats, int, bool]] = []  # name, version, statistics, pending, cached
        for served in list(self.served_versions.values()):
            e = served.entry
            if e.name not in ensembles:
                queues = [q() for q in self.queues.get((e.name, str(e.version)), [])]
                pending = sum(q.depth for q in queues if q is not None)
                shown.append((e.name, e.version, e.stats, pending, served.additions.response_cache))
        shown += [
            (n, each.ensemble.version, each.stats, 0, each.ensemble.response_cache)
            for n, p in ensembles.items()
            for each in p.every
        ]
        figures = []
        for name, version, stats, pending, cached in shown:
            label = (name, str(version))
            tally = self.tallies.get(label)
            figures.append(
                triton_metrics.VersionFigures(
                    name, label[1], tally.figures() if tally is not None else stats.to_dict(),
                    # cached: its config enables the cache, whether or not the server has one (Triton's series then
                    # show 0, and its request summary is left out as for any cached model: helper-280)
                    self.metrics.failures(*label), pending, cached,
                    tally.summaries if tally is not None else None,
                )
            )  # fmt: skip
        figures.sort(key=lambda f: (f.name, int(f.version)))
        return text + triton_metrics.render(
            figures, cpu=self.cpu_sampler, counter_latencies=self.counter_latencies, cache=self.response_cache,
            quantiles=self.summary_quantiles,
        )

    def tally(self, label: tuple[str, str]) -> triton_metrics.Tally:
        """The figures Triton's names show for a version (name, version), kept across its instances; with its latency
        summaries where the server keeps them."""
        tally = self.tallies.get(label)
        if tally is None:
            summaries = latency_summaries.VersionSummaries() if self.summary_quantiles else None
            tally = self.tallies[label] = triton_metrics.Tally(summaries)
        return tally

    def model_names(self) -> list[str]:
        """The names of the models and ensembles served, in order (KServe's V1 ``GET /v1/models``)."""
        served = list(self.served_versions)  # one step (the loader changes it): never iterated while it changes
        return sorted({name for name, _ in served} | set(self.ensembles))

    def model_metadata(self, name: str, version: str | None) -> dict[str, Any]:
        pipeline = self.served_ensemble(name, version)
        if pipeline is not None:  # every version of it, as a model's metadata lists its versions
            e, every = pipeline.ensemble, self.ensembles.get(name, pipeline).every
            versions = [str(p.ensemble.version) for p in every]
            return ModelMetadata(name, versions, ensemble.PLATFORM, e.signature).to_dict()
        served = self.served_model(name, version)
        shown = self.engine.metadata(name, parse_version(name, version))
        # a FIL model's outputs in its config's dims, as Triton's metadata shows them (answers leave out dims of 1)
        configured = fil.as_configured(shown.signature, served.entry.record.settings.get("fil"))
        return dataclasses.replace(shown, signature=configured).to_dict()

    def model_config(self, name: str, version: str | None) -> dict[str, Any]:
        config = self.served_config(name, version)
        return {**config, "version_policy": self._version_policy(name, self.served_ensemble(name, version))}

    def served_config(self, name: str, version: str | None) -> dict[str, Any]:
        """GET config's answer but its version policy (which reads the repository's folders): the served model's
        or ensemble's config, as a raw binary request's input is deduced from it on every request."""
        pipeline = self.served_ensemble(name, version)
        if pipeline is not None:
            rendered = ensemble.render(pipeline.ensemble)
            # as Triton shows one, unasked
            if self.any_decoupled and self.ensemble_requests.decoupled_steps(pipeline.ensemble):
                rendered["model_transaction_policy"] = {"decoupled": True}
            return rendered
        served = self.served_model(name, version)
        sequence = served.sequencer.policy if served.sequencer is not None else None
        return model_config.render(served.entry, served.batcher, self.instances_of(served), served.additions, sequence)

    def _version_policy(self, name: str, pipeline: ServedEnsemble | None = None) -> dict[str, Any]:
        """The version policy that picks the versions of ``name`` (or of the ensemble ``pipeline``) served now,
        among those a load of it by name picks from (its repository folder's, else the store's): Triton's
        default, the latest, where they are the latest ones, else those versions; a load of the config GET
        config shows serves them again."""
        # the versions served, and the policy that picked them as a config wrote it (a load's, else the start's)
        if pipeline is not None:  # each version of the ensemble of that name
            whole = self.ensembles.get(name, pipeline)
            served = [each.ensemble.version for each in whole.every]
            written = json.loads(whole.ensemble.written_policy) if whole.ensemble.written_policy else None
        else:
            served = sorted(v for n, v in list(self.served_versions) if n == name)  # one step: the loader changes it
            start = self.model_configs.get(name)
            started = (start.written_policy or start.policy) if start is not None else None
            written = self.history.policies.get(name, started)
        folder = self.repository.folder(name) if self.repository is not None and self.repository.owns(name) else None
        if folder is not None:
            known = model_repository.folder_versions(folder)
        else:  # an ensemble outside a repository has the versions it serves
            known = served if pipeline is not None else [r.version for r in self.store.models.list(name)]
        if written and served and known:  # as the config writes it, while it picks what is served (Triton's)
            with contextlib.suppress(InvalidRequest):
                if sorted(model_repository.pick_versions(written, sorted(known))) == served:
                    return model_repository.policy_json(written)
        if served and sorted(known)[-len(served) :] == served:
            return {"latest": {"num_versions": len(served)}}
        return {"specific": {"versions": served}}

    def instances_of(self, served: ServedModel) -> int:
        """How many of a model's requests (or batches) run at once."""
        if served.batcher is not None:
            return served.batcher.policy.instances
        if served.sequencer is not None:
            return served.sequencer.policy.instances
        return served.instances or self.workers

    def model_stats(self, name: str | None, version: str | None) -> dict[str, Any]:
        """Statistics of one version, of every loaded version of a model (no version given), or of every model."""
        pipelines = [each for p in list(self.ensembles.values()) for each in p.every]
        if version and not (name or (version.isascii() and version.isdigit())):  # checked, then every model's
            raise InvalidRequest(
                f"failed to get model version from specified version string {quote(version, 40)}: a version is an "
                "integer >= 0 (with no model named, every model's statistics, whatever the version)"
            )
        try:
            if name:
                pipeline = self.served_ensemble(name, version)
                every = self.ensembles.get(name, pipeline).every if pipeline is not None else []
                pipelines = [pipeline] if pipeline is not None and version else every
            if pipelines and name:
                entries = []
            elif name and version:
                entries = [self.served_model(name, version).entry]
            elif name:
                self.served_model(name, None)
                entries = sorted((e for e in self.engine.loaded() if e.name == name), key=lambda e: e.version)
            else:
                entries = self.engine.loaded()
        except (NotFound, Unavailable) as e:  # Triton's words and code (INVALID_ARG: only ready models have any)
            # the version's words where the model has a version ready, as Triton's (a version a poll unloaded)
            if isinstance(e, VersionNotFound) or (name and version and self.serves_model(name)):
                raise InvalidRequest(f"requested model version is not available for model {name!r}: {e.message}") from None
            raise InvalidRequest(f"requested model {name!r} is not available: {e.message}") from None
        ordered: list[tuple[str, int, ModelStats]] = [(e.name, e.version, e.stats) for e in entries]
        ordered += [(p.ensemble.name, p.ensemble.version, p.stats) for p in pipelines]
        ordered.sort(key=lambda o: (o[0], o[1]))  # by name, then version, as Triton lists them (ensembles among them)
        return {"model_stats": [{"name": n, "version": str(v), **st.to_dict()} for n, v, st in ordered]}

    # -- inference -------------------------------------------------------------------------------
    async def infer(
        self,
        name: str,
        version: str | None,
        request: InferRequest,
        loop: asyncio.AbstractEventLoop | None = None,
        carrier: Carrier | None = None,
        compute: list[int] | None = None,
        front: Front | None = None,
        endpoint: str = "HTTP end point",
        source: object | None = None,
    ) -> InferResponse:
        """Run one request; ``loop`` is the caller's running loop when it has it at hand (saves a lookup);
        ``carrier`` gives the request's headers or metadata, read for trace context when it is traced;
        ``compute``, when given, receives how long the model computed (ns; an ensemble's step sums them);
        ``front``, the front end's timestamps for a trace file (``Tracing.files``), which it ends once it answers;
        ``source``, the connection it came on where that sends one request at a time (``InFlight.arrived``).

        A request that reached a model instance just as a reload replaced it (it was waiting for an
        inference thread, or was handed to the closing batcher) runs on the instance that serves the
        model now, within the same span and timing. An unload runs what was queued before it closes the
        model; a request that reached the model as it closed (rare: between routing and queueing) fails.

        A decoupled model's requests are refused (``Unsupported``, in Triton's words naming ``endpoint``): its
        responses are read with ``infer_stream``."""
        self.in_flight.arrived(source)
        if self.any_decoupled and self.decoupled(name, version):
            raise Unsupported(
                f"{endpoint} doesn't support models with decoupled transaction policy; read the responses of model "
                f"{name!r} as a stream: gRPC's ModelStreamInfer (tritonclient's start_stream and async_stream_infer) "
                "or HTTP's generate_stream"
            )
        if self.ensembles and name in self.ensembles:
            return await self.ensemble_requests.infer(name, version, request, loop, carrier, compute, front=front)
        return await self.infer_model(None, name, version, request, loop, carrier, compute, front)

    def decoupled(self, name: str, version: str | None) -> bool:
        """Whether the model served as ``name`` sends any number of responses to a request (Triton's decoupled
        transaction policy), read with ``infer_stream``: an ensemble is, where a step runs one. False for a model not
        served."""
        if not self.any_decoupled:  # none ever served: every request's check, this one flag
            return False
        if self.ensembles and name in self.ensembles:
            pipeline = self.served_ensemble(name, version)
            return pipeline is not None and bool(self.ensemble_requests.decoupled_steps(pipeline.ensemble))
        try:
            return self.served_model(name, version).decoupled
        except PolystackError:
            return False

    async def infer_stream(
        self,
        name: str,
        version: str | None,
        request: InferRequest,
        loop: asyncio.AbstractEventLoop | None = None,
        carrier: Carrier | None = None,
        front: Front | None = None,
    ) -> AsyncGenerator[Streamed, None]:
        """Run one request; its responses as its model sends them, the last one final (``decoupled.py``). A model
        that is not decoupled answers once, final. A request refused before it runs, or whose run fails before the
        model's final response, ends with its error, final. Closing the iterator early (the client went away)
        cancels the request: the model's later responses are dropped."""
        if not self.decoupled(name, version):
            yield Streamed(await self.infer(name, version, request, loop, carrier, front=front), final=True)
            return
        self.in_flight.arrived(None)
        loop = loop or asyncio.get_running_loop()
        if request.classifications:
            raise InvalidRequest(
                f"model {name!r} is decoupled: its responses carry their tensors, not classes; ask for the outputs "
                "without classification"
            )
        if any(o.shm is not None for o in request.outputs or ()):
            raise InvalidRequest(
                f"model {name!r} is decoupled: each of its responses would overwrite the last in one shared memory "
                "region; ask for its outputs without shared memory"
            )
        if self.ensembles and name in self.ensembles:
            responses = self.ensemble_requests.stream(name, version, request, loop, carrier, None, None, front)
        else:
            responses = self.stream_model(None, name, version, request, loop, carrier, None, front)
        try:
            async for streamed in responses:
                yield streamed
        finally:
            await responses.aclose()

    def stream_model(
        self,
        pinned: ServedModel | None,
        name: str,
        version: str | None,
        request: InferRequest,
        loop: asyncio.AbstractEventLoop,
        carrier: Carrier | None,
        compute: list[int] | None,
        front: Front | None = None,
    ) -> AsyncGenerator[Streamed, None]:
        """A decoupled model's request (``infer_model`` sending to a ``ResponseStream``); as in Triton, a request
        whose client went away still runs, its model seeing it cancelled."""
        served = pinned or self.served_model(name, version)

        def run(stream: ResponseStream) -> Coroutine[Any, Any, InferResponse]:
            return self.infer_model(pinned, name, version, request, loop, carrier, compute, front, responses=stream)

        shown = str(served.entry.version)  # (not ``version``, which ``run`` reads)
        return self.streamed(run, name, shown, request.id, loop, cancel=False, asked=request.cancel)

    async def streamed(
        self,
        run: Callable[[ResponseStream], Coroutine[Any, Any, InferResponse]],
        name: str,
        model_version: str,
        request_id: str | None,
        loop: asyncio.AbstractEventLoop,
        cancel: bool,
        asked: threading.Event | None = None,
        parameters: tuple[tuple[str, bool | int | str], ...] = (),
    ) -> AsyncGenerator[Streamed, None]:
        """What ``run`` sends to its ``ResponseStream``, as ``Streamed`` responses of ``name`` at ``model_version``,
        up to the final one (its failure before that is the final one). Closed early (the client went away): the
        stream is cancelled, and the run too where ``cancel``; ``asked``: set where the request's caller cancels it
        (its model sees it, and its responses still come)."""
        started = time.perf_counter()
        stream = ResponseStream(loop, asked)
        task = loop.create_task(run(stream))
        task.add_done_callback(lambda task: _ran(task, stream, name))
        self._streaming.add(task)  # held until done
        task.add_done_callback(self._streaming.discard)
        first = True
        try:
            async for sent, final in stream:
                if first and sent is not None:  # the time to its first response (an LLM's first token, say)
                    first = False
                    self.metrics.model(name, model_version).first_response.observe(time.perf_counter() - started)
                if isinstance(sent, PolystackError):
                    yield Streamed(None, sent, final)
                elif sent is None:
                    yield Streamed(None, None, final)
                else:  # with its response's own parameters (a Python model's)
                    shown = parameters + hosting.parameters_of(sent)
                    answer = InferResponse(name, model_version, sent, request_id, parameters=shown)
                    yield Streamed(answer, None, final)
        finally:
            if not stream.closed:  # the client went away first: the request is cancelled
                stream.cancel()
                if cancel:
                    task.cancel()

    async def infer_model(
        self,
        pinned: ServedModel | None,
        name: str,
        version: str | None,
        request: InferRequest,
        loop: asyncio.AbstractEventLoop | None,
        carrier: Carrier | None,
        compute: list[int] | None,
        front: Front | None = None,
        responses: hosting.Responses | None = None,
    ) -> InferResponse:
        """``infer`` of a model (not an ensemble): the one served as ``name`` now, or ``pinned`` (an ensemble's
        step holds the model it had when its request started). A decoupled model sends its responses to
        ``responses`` (``infer_stream``), and the response returned has no outputs."""
        started = time.perf_counter()
        self.in_flight.enter()
        model_label: tuple[str, str] | None = None
        outcome: Outcome | None = None  # the request's success or failure in its model's statistics
        held: dict[str, Region] = {}  # its outputs' shared memory regions, held until they are written
        try:
            served = pinned or self.served_model(name, version)
            entry = served.entry
            if request.parameters and served.sequencer is None:
                self.ignore_sequences(name, request.parameters)
            model_label = (entry.name, str(entry.version))
            # _run sends it to what replaced a closing model; its success counts once its answer is ready
            outcome = Outcome(entry.stats, rerouted=True, held=True)
            classes = request.classifications if request.outputs is not None else None
            if classes:
                classification.check_outputs(entry.signature, classes)  # before the model runs, not after
            if request.outputs and self.shared_memory is not None:
                held = self.hold_regions(request)  # a region that is gone is refused before the model runs for it
            trace = self.tracing.span(
                entry.name, entry.version, request.id or "", carrier, front, pinned is not None,
                called=bool(request.callers), parent=request.trace,
            )  # fmt: skip
            with trace as span:
                if served.additions.response_cache and self.response_cache is not None:

                    def run() -> Awaitable[tuple[dict[str, np.ndarray], LoadedEntry]]:
                        return self._run(served, request, name, version, loop, span, outcome, compute)

                    result, entry = await self._cached(
                        self.response_cache, served, request, run, loop, started, outcome
                    )
                else:
                    result, entry = await self._run(
                        served, request, name, version, loop, span, outcome, compute, responses
                    )
            parameters = hosting.parameters_of(result)  # its response's own (a Python model's)
            if classes:
                # by items where its config shows a batch dimension (max_batch_size > 0), else over the whole output,
                # as Triton's: a Triton folder's model of max_batch_size 0 whose dims start with -1 has no batch
                # there; a model registered in the store keeps the batch its signature takes (its config shows no
                # max_batch_size where polystack sets no limit)
                from_triton = bool(entry.record.settings.get(model_config.TRITON_IO))
                batched = self.max_batch(served) > 0 or (entry.signature.batched and not from_triton)
                result = classification.classify(result, classes, batched, labels_of(entry.record.settings))
        except BaseException as e:
            self.release_regions(held)
            if outcome is not None:  # a failure to the caller, whatever the model's run counted (it may be running)
                outcome.abandon(int((time.perf_counter() - started) * 1e9))
            self.metrics.failed(*(model_label or self._failure_label(name)), status.reason(e))
            raise
        finally:
            self.in_flight.leave()
        assert model_label is not None and outcome is not None
        in_shared_memory = self.write_shared(result, request, model_label, outcome, started, held)
        outcome.confirm()
        m = self.metrics.model(*model_label)
        m.success.inc()
        m.request.observe(time.perf_counter() - started)
        return InferResponse(
            model_name=entry.name,
            model_version=str(entry.version),
            outputs=result,
            id=request.id,
            in_shared_memory=in_shared_memory,
            parameters=parameters,
        )

    async def _run(
        self,
        served: ServedModel,
        request: InferRequest,
        name: str,
        version: str | None,
        loop: asyncio.AbstractEventLoop | None,
        span: Any,
        outcome: Outcome,
        compute: list[int] | None = None,
        responses: hosting.Responses | None = None,
    ) -> tuple[dict[str, np.ndarray], LoadedEntry]:
        """Run ``request`` on ``served`` (its batcher, or a thread), following reloads that replace it as it
        reaches it (to what serves ``name`` and ``version`` as asked then); the result, and the entry that
        answered. The model's compute time is appended to ``compute`` when given. A decoupled model sends its
        responses to ``responses`` (its result has no outputs)."""
        entry, outputs = served.entry, request.output_names
        if served.additions.outputs:  # its config lists some of the model's outputs: those alone, as in Triton
            outputs = outputs or list(served.additions.outputs)
        if outputs:  # before the inputs and before the model runs, as Triton checks them (a hosted model's, a
            # decoupled one's too, whose responses are pruned to them: neither reaches a runtime's check)
            entry.signature.check_outputs(outputs, entry.name)  # the signature clients see holds those alone
        # A hosted model's request answered once is read from a stream, as a decoupled model's responses are, so that
        # the model may answer after its execute returned (from a thread, a task) while its instance takes the next
        # request, as in Triton; the stream is cancelled (the model sees it) when the client goes away. Not so a
        # sequence's, whose state waits for the answer, nor one whose requests the server gathers into one (ragged
        # batching), which the stream would bypass: their model's thread waits, told of a client gone by ``gone``.
        # Responses sent apart are reshaped on their way, as returned ones are.
        spec = served.entry.spec
        once = (
            responses is None and served.hosted and not served.decoupled and served.sequencer is None
            and spec.ragged is None
        )  # fmt: skip
        if once:
            responses = ResponseStream(loop or asyncio.get_running_loop())
        gone = threading.Event() if served.hosted and responses is None else None
        sent_to = ReshapedResponses(responses, spec.reshape) if responses is not None and spec.reshape else responses
        facts = _facts(request, outputs, sent_to, gone, span) if served.hosted else hosting.NO_FACTS
        if responses is not None:
            outputs = None
        try:
            try:
                result = await self._run_on(
                    served, request, name, version, loop, span, outcome, compute, responses, facts, outputs
                )
            except PolystackError as e:
                if not (once and isinstance(responses, ResponseStream) and responses.sent_any):
                    raise
                # its response was sent before execute failed (a second send, say): the client has it, as Triton's
                log.warning("execute failed after its response was sent", extra={"model": name, "error": e.message})
                result = ({}, served.entry)
            if once and isinstance(responses, ResponseStream):
                answer = await _answered(responses, name)
                if span is not None:  # its run traced no outputs: they come with its response
                    span.outputs(answer)
                return answer, result[1]
            return result
        except asyncio.CancelledError:
            if gone is not None:
                gone.set()
            if once and isinstance(responses, ResponseStream):
                responses.cancel()
            raise

    async def _run_on(
        self,
        served: ServedModel,
        request: InferRequest,
        name: str,
        version: str | None,
        loop: asyncio.AbstractEventLoop | None,
        span: Any,
        outcome: Outcome,
        compute: list[int] | None,
        responses: hosting.Responses | None,
        facts: hosting.RequestFacts,
        outputs: list[str] | None,
    ) -> tuple[dict[str, np.ndarray], LoadedEntry]:
        """``_run``'s work, with what the model is told of the request (``facts``) and the outputs it computes."""
        entry = served.entry
        model_label = (entry.name, str(entry.version))
        for reroutes in range(_MAX_REROUTES + 1):
            if isinstance(responses, ResponseStream):  # its model stays open until it sent the final response
                with served.streams_lock:
                    served.streams.add(responses)
            queued = 0  # the run's queue start and compute times: a traced run that fails is traced with them
            timings: list[int] | None = None
            try:
                if served.sequencer is not None:
                    queued = time.perf_counter_ns() if span is not None else 0
                    timings = [] if span is not None or compute is not None else None
                    flags = flags_of(request.parameters)
                    result = await served.sequencer.infer_async(
                        request.inputs, outputs, flags, request.timeout_s, loop, timings, outcome, facts
                    )
                    if timings:
                        if span is not None:
                            span.stages(queued, timings[-2], timings[-1], request.inputs, result)
                        if compute is not None:
                            compute.append(timings[-1] - timings[-2])
                elif served.batcher is not None:
                    queued = time.perf_counter_ns() if span is not None else 0
                    timings = [] if span is not None or compute is not None else None
                    result = await served.batcher.infer_async(
                        request.inputs, outputs, request.timeout_s, loop, timings, outcome, request.priority, facts
                    )
                    if timings:
                        if span is not None:
                            span.stages(queued, timings[-2], timings[-1], request.inputs, result)
                        if compute is not None:
                            compute.append(timings[-1] - timings[-2])
                else:
                    key = (entry.name, entry.version)
                    typical = self.typical_s.get(key)
                    queued = time.perf_counter_ns()
                    alone = self.in_flight.alone and not self.in_flight.interleaved
                    limit = self.inline_serial_max_s if self.in_flight.serial else self.inline_max_s
                    size = sum(_size(a) for a in request.inputs.values())
                    # inline: a request alone, to a model that answers such requests fast, no larger than they are
                    # (one of many rows to a fast model would hold the loop for all of them)
                    timings = [] if span is not None else None
                    if (
                        alone and typical is not None and typical[0] <= limit
                        and size <= 2 * typical[1] and served.limits is None  # never wait for resources on the loop
                        and not served.hosted
                    ):  # fmt: skip
                        result, t0, t1 = _timed_infer(entry, request.inputs, outputs, queued, outcome, None, timings)
                    else:
                        loop = loop or asyncio.get_running_loop()
                        served.pending += 1
                        served.waiting.add(id(outcome))
                        call: tuple[Any, ...] = (
                            _timed_infer, entry, request.inputs, outputs, queued, outcome, served.waiting, timings,
                            served.limits,
                        )  # fmt: skip
                        if served.hosted:
                            call = (hosting.run_as, facts, *call)
                        try:
                            result, t0, t1 = await (served.executor or self.executor).run(loop, *call)
                        except ThreadsClosed:
                            if served.executor is None:  # the server's own threads: it is closing
                                raise
                            # the model's own threads, closed by a reload or unload as the request reached them
                            raise ModelClosed(
                                f"model {entry.name}:{entry.version} was unloaded or replaced as this request reached "
                                "it; send it again"
                            ) from None
                        finally:
                            served.pending -= 1
                            served.waiting.discard(id(outcome))
                    if span is not None:
                        span.stages(queued, t0, t1, request.inputs, result)
                    if compute is not None:
                        compute.append(t1 - t0)
                    took = (t1 - t0) / 1e9
                    # slow-moving averages of the compute time and the request's size decide the inline fast path
                    self.typical_s[key] = (
                        (took, size) if typical is None
                        else (typical[0] + 0.05 * (took - typical[0]), typical[1] + 0.05 * (size - typical[1]))
                    )  # fmt: skip
                    m = self.metrics.model(*model_label)
                    m.queue.observe((t0 - queued) / 1e9)  # the wait for a thread, as the statistics count it
                    m.compute.observe(took)
                    m.batch.observe(rows(entry, request.inputs))
                break
            except ModelClosed:
                # replaced by a reload as it reached it: the instance serving the model now runs it
                fresh = self._replacement(name, version, entry)
                if fresh is None or reroutes == _MAX_REROUTES:
                    raise
                if isinstance(responses, ResponseStream):  # the model it leaves closes without waiting for it
                    with served.streams_lock:
                        served.streams.discard(responses)
                served, entry = fresh, fresh.entry
                outcome.stats = entry.stats  # counted where it runs now
            except BaseException:
                if span is not None and timings:  # the model failed: its call's times, no outputs
                    span.stages(queued, timings[-2], timings[-1], request.inputs, {})
                raise
        return result, entry

    async def _cached(
        self,
        cache: ResponseCache,
        served: ServedModel,
        request: InferRequest,
        run: Callable[[], Awaitable[tuple[dict[str, np.ndarray], LoadedEntry]]],
        loop: asyncio.AbstractEventLoop | None,
        started: float,
        outcome: Outcome,
    ) -> tuple[dict[str, np.ndarray], LoadedEntry]:
        """``run()`` (the request's ``_run``) for a model whose config enables ``response_cache``: the answer
        the cache keeps for the same inputs and requested outputs, else ``run()``'s, which the cache then
        keeps. Statistics count a hit (no queue or compute) or a miss, with their times, as Triton's do."""
        t0 = time.perf_counter_ns()
        asked = request.output_names
        key = await self.cache_key(cache, served.load, request, served.hosted, loop)
        if key is None:  # inputs the cache cannot tell apart by their bytes: not cached
            return await run()
        found = cache.get(key)
        looked = time.perf_counter_ns() - t0
        entry = served.entry
        m = self.metrics.model(entry.name, str(entry.version))
        if found is not None:
            entry.stats.cache_hit(looked)
            outcome.settle("success", int((time.perf_counter() - started) * 1e9))
            m.cache_hits.inc()
            m.cache_hit_seconds.inc(looked / 1e9)
            if asked:  # in the order this request asked for them, as the model would have answered it
                found = {output: found[output] for output in asked}
            return found, entry
        try:
            result, entry = await run()
        except BaseException as e:
            # a miss still where the model ran and failed, as Triton counts it; not a request its checks refused
            # (Triton's come before the lookup), nor one that timed out in its queue or whose client went away
            # before it ran (Triton counts its miss as a batch takes the request)
            if isinstance(e, Exception) and ran_and_failed(e):
                self._missed(entry, m, looked)
            raise
        t1 = time.perf_counter_ns()
        # kept only for the load that computed it and still serves (not one a reload or unload replaced)
        if entry is served.entry and self.served_versions.get((entry.name, entry.version)) is served:
            cache.put(key, served.load, result)
        self._missed(entry, m, looked + time.perf_counter_ns() - t1)
        return result, entry

    @staticmethod
    def _missed(entry: LoadedEntry, m: ModelMetrics, ns: int) -> None:
        """A response cache miss of ``entry``'s that took ``ns`` (its lookup, and its insertion if any)."""
        entry.stats.add("cache_miss", ns)
        m.cache_misses.inc()
        m.cache_miss_seconds.inc(ns / 1e9)

    async def cache_key(
        self,
        cache: ResponseCache,
        owner: int,
        request: InferRequest,
        reads_parameters: bool,
        loop: asyncio.AbstractEventLoop | None,
    ) -> bytes | None:
        """The response cache's key of ``request`` to the load ``owner`` (None: not cached), its parameters in it
        where its model reads them (``reads_parameters``: a Python model's, or an ensemble's with one among its
        steps; those it never sees, a deadline or a priority, left out), hashed on the loop when small, else on the
        hashing threads."""
        asked = request.output_names
        parameters = None
        if reads_parameters:
            parameters = {k: v for k, v in request.parameters.items() if k not in hosting.NOT_FOR_MODELS}
            if request.model_parameters is not None:  # a request a model sent: its own, apart (their names may clash)
                parameters = {"scheduling": parameters, "given": request.model_parameters}
        assert self._hasher is not None  # made with the cache
        if sum(nbytes(a) for a in request.inputs.values()) < _HASH_INLINE_BELOW:
            return cache.key(owner, request.inputs, asked, parameters)
        loop = loop or asyncio.get_running_loop()  # hashlib lets go of the GIL: the loop serves others meanwhile
        return await loop.run_in_executor(self._hasher, cache.key, owner, request.inputs, asked, parameters)

    def _replacement(self, name: str, version: str | None, entry: LoadedEntry) -> ServedModel | None:
        """What serves the model now, if a reload replaced ``entry`` (None after an unload)."""
        try:
            served = self.served_model(name, version)
        except PolystackError:
            return None
        return served if served.entry is not entry else None

    def write_shared(
        self,
        result: dict[str, np.ndarray],
        request: InferRequest,
        label: tuple[str, str],
        outcome: Outcome,
        started: float,
        held: dict[str, Region],
    ) -> frozenset[str]:
        """The outputs ``request`` asked for in shared memory, written into the regions ``held`` for them
        (``_to_shared_memory``), which are then let go; a failed write fails the request, and its statistics say so."""
        shared = {o.name: o.shm for o in request.outputs or () if o.shm is not None}
        if not shared:
            return frozenset()
        try:
            return self._to_shared_memory(result, shared, label, held)
        except PolystackError:  # the client gets a failure
            outcome.abandon(int((time.perf_counter() - started) * 1e9))
            raise
        finally:
            self.release_regions(held)

    def hold_regions(self, request: InferRequest) -> dict[str, Region]:
        """The shared memory regions of ``request``'s outputs, by output, held until ``release_regions``."""
        assert self.shared_memory is not None
        held: dict[str, Region] = {}
        try:
            for o in request.outputs or ():
                if o.shm is not None:
                    held[o.name] = self.shared_memory.hold(o.shm, f"output {o.name!r}")
        except BaseException:
            self.release_regions(held)
            raise
        return held

    def release_regions(self, held: dict[str, Region]) -> None:
        if held and self.shared_memory is not None:
            self.shared_memory.release(list(held.values()))
            held.clear()  # let go once, whichever path gets here first

    def _to_shared_memory(
        self,
        result: dict[str, np.ndarray],
        shared: dict[str, ShmRef],
        model_label: tuple[str, str],
        held: dict[str, Region],
    ) -> frozenset[str]:
        """Write the outputs the client asked for in shared memory there; their names (they stay in ``result``,
        which the answer lists them from, without their data)."""
        if self.shared_memory is None:  # the codecs refuse such requests first; a direct caller may not
            raise InvalidRequest("this server does not take shared memory tensors; start it with --allow-shared-memory")
        try:
            for name, ref in shared.items():
                raw = raw_view(result[name])  # no copy on the way: pwrite takes the array's own bytes
                self.shared_memory.write(ref, raw, f"output {name!r}", held.get(name))
        except BaseException as e:
            if isinstance(e, PolystackError):  # after the model ran: in Triton, the response's error
                e.failed_in_run()
            self.metrics.failed(*model_label, status.reason(e))
            raise
        return frozenset(shared)

    def decode(self, name: str, version: str | None, decode: Callable[[], _Decoded]) -> _Decoded:
        """A transport's decoding of a request for model ``name`` (``version``), once the model is found
        there: as in Triton, a request for a model the server does not serve is NOT_FOUND whatever its
        body holds. One that fails either way is counted as a failure here, since it never reaches ``infer``."""
        resolved: ServedModel | ServedEnsemble | None = None
        started = time.perf_counter()
        try:
            resolved = self.served_ensemble(name, version) or self.served_model(name, version)
            return decode()
        except PolystackError as e:  # labels and counts on the way to an error only: a valid request pays nothing
            if resolved is None:
                label = self._failure_label(name)
            else:  # the model's statistics count it, as /metrics does (the version's series)
                if isinstance(resolved, ServedEnsemble):
                    stats, label = resolved.stats, (name, str(resolved.ensemble.version))
                else:
                    stats, label = resolved.entry.stats, (resolved.entry.name, str(resolved.entry.version))
                stats.add("fail", int((time.perf_counter() - started) * 1e9))
            self.metrics.failed(*label, status.reason(e))
            raise

    def _failure_label(self, name: str) -> tuple[str, str]:
        """Labels for a request that failed before its model was resolved: never the client's raw strings,
        which would let any client grow /metrics without bound; a served model's name, or empty."""
        served = list(self.served_versions)  # one step (the loader changes it): never iterated while it changes
        return (name, "") if name in self.ensembles or any(k[0] == name for k in served) else ("", "")

    async def wait_final_responses(self, timeout_s: float) -> bool:
        """Wait (up to ``timeout_s``) until each decoupled model sent the final response of every request it was
        given, those whose client went away included (their model's threads may still send it), as Triton's exit
        waits for them; whether they all came (those that did not fail when the models close)."""
        deadline = time.monotonic() + timeout_s
        while any(s.decoupled and s.open_streams() for s in list(self.served_versions.values())):
            if time.monotonic() >= deadline:
                return False
            await asyncio.sleep(0.01)
        return True

    # -- system shared memory extension ---------------------------------------------------------
    def regions(self) -> SharedMemoryRegions:
        if self.shared_memory is None:
            raise PermissionDenied(
                "the system shared memory extension is off; start the server with --allow-shared-memory (Triton's "
                "--allow-client-shm=true) to use it"
            )
        return self.shared_memory

    # -- loads and unloads on the loader ----------------------------------------------------------------
    def in_turn(self, name: str) -> None:
        """Wait while another load of ``name`` builds it (``Loader.wait_for``), as a load or unload queued behind
        it; refused if the server began to drain meanwhile, as one queued behind it is."""
        if self.loader.wait_for(name):
            self.refuse_when_draining()

    def refuse_when_draining(self) -> None:
        if self.draining:
            raise ShuttingDown("the server is shutting down; send the load or unload to another replica")

    async def control(self, change: Callable[[str], Any], name: str) -> None:
        """A load or unload on the loader, in flight like a request: a drain waits for it (within
        its timeout) and its client gets the answer; none starts once the drain has begun, not even one
        queued on the loader before it began."""
        self.refuse_when_draining()
        self.in_flight.enter()

        def unless_draining(name: str) -> Any:  # queued behind another load when the drain began: not started
            self.refuse_when_draining()
            return change(name)

        try:
            await asyncio.wrap_future(self.loader.submit(unless_draining, name))
        finally:
            self.in_flight.leave()


