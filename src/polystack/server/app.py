"""The one composition root of serving: engine + data plane + HTTP + gRPC + metrics, and their lifecycle.

``spec_for`` and ``policy_for`` decide what to load for a model under a profile and how to batch
it; they are the hooks tuning's plans plug into. ``Server`` binds both transports on one asyncio
loop; ``run`` adds signal handling (SIGTERM/SIGINT: readiness false, drain, exit 0);
``ServerThread`` runs a server in a background thread (tests, the demo, benchmarks).
"""

from __future__ import annotations

import asyncio
import concurrent.futures.thread
import contextlib
import dataclasses
import functools
import gc
import logging
import multiprocessing
import multiprocessing.process
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from polystack.batching import BatchOverrides, BatchPolicy
from polystack.batching.rate_limiter import RateLimiter
from polystack.engine import Engine, LoadSpec, default_spec, runtime_loads, with_concurrency, without_runtime_pinning
from polystack.errors import InvalidRequest, NotFound, PolystackError, ShuttingDown, load_failed
from polystack.metrics import ServerMetrics
from polystack.server import forks, host_policy, loader, logs, model_config, model_repository
from polystack.server import grpc as grpc_transport
from polystack.server.cloud_repository import CloudRepository
from polystack.server.dataplane import DataPlane, PolicyFor
from polystack.server.ensemble import Ensemble, load_order
from polystack.server.header_forward import HeaderForward
from polystack.server.http import HttpApp
from polystack.server.http_connection import HttpProtocol
from polystack.server.model_config import DEFAULT_MAX_BATCH_SIZE, ConfigFile
from polystack.server.model_repository import Fingerprint, FolderRules, ModelRepository
from polystack.server.placement import CpuPlacement
from polystack.server.response_cache import CacheConfig, ResponseCache
from polystack.server.restricted import Restrictions
from polystack.server.sagemaker import SageMakerApp, SageMakerSettings
from polystack.server.tls import HANDSHAKE_TIMEOUT_S, TlsConfig
from polystack.server.tracing import Tracing
from polystack.server.vertex_ai import VertexAiApp, VertexAiSettings
from polystack.store import ModelRecord, ModelRef, Store

log = logging.getLogger("polystack.server")

PROFILES = ("realtime", "server", "batch", "edge")


def spec_for(store: Store, record: ModelRecord, profile: str) -> LoadSpec:
    """What to load for ``record`` when serving ``profile``: the tuned plan's variant and threads
    when a fresh plan exists for this machine (``polystack tune``), else the source artifact on
    the preferred installed backend."""
    from polystack.tuning.plan import spec_for_profile, why_unplanned

    planned = spec_for_profile(store, record, profile)
    if planned is not None:
        return planned[0]
    reason, tuned = why_unplanned(store, record, profile)  # said, as it is where the plan exists (helper-261)
    why = {
        "unusable": "the plan for this model and profile cannot be used: its variant is gone or no longer verified; "
        "serving the default instead (rebuild variants and re-tune: polystack variants, polystack tune)",
        "stale": "the plan for this model and profile was measured on another machine: serving the default instead "
        f"(re-tune here: polystack tune {record.name}:{record.version} --profile {profile})",
        "older": f"this version has no plan for the profile, version {tuned} has one: serving the default "
        f"(serve {record.name}:{tuned} for the plan's, or tune this one: polystack tune "
        f"{record.name}:{record.version} --profile {profile})",
    }.get(reason, "")
    said = (str(store.settings.home), record.name, record.version, profile, why)
    if why and said not in _SAID:  # once: a load asks for its spec up to three times, and each explicit load again
        _SAID.add(said)
        log.warning(why, extra={"model": record.name, "version": record.version, "profile": profile})
    return default_spec(store, record)


_SAID: set[tuple[str, str, int, str, str]] = set()  # the plans spec_for said it cannot serve, and why


def planned_instances(store: Store, record: ModelRecord, profile: str) -> int | None:
    """How many of ``record``'s calls its plan for ``profile`` runs at once (batched or not), when one was tuned here
    and can be used; None otherwise."""
    from polystack.tuning.plan import spec_for_profile

    planned = spec_for_profile(store, record, profile)
    return planned[1].instances if planned is not None else None


def policy_for(store: Store, record: ModelRecord, profile: str) -> BatchPolicy | None:
    """How to batch ``record`` under ``profile``: the plan's batch policy when one was tuned here;
    otherwise the ``server`` profile batches with defaults and the others do not."""
    from polystack.tuning.plan import spec_for_profile

    planned = spec_for_profile(store, record, profile)
    if planned is not None:
        settings = planned[1]
        if not settings.dynamic_batching:
            return None
        return BatchPolicy(
            max_batch_size=settings.max_batch_size,
            max_queue_delay_ms=settings.max_delay_ms,
            instances=settings.instances,
        )
    return BatchPolicy() if profile == "server" else None


@dataclass
class ServeConfig:
    host: str = "127.0.0.1"
    http_port: int = 8000
    grpc_port: int | None = 8001  # None: no gRPC
    metrics_port: int | None = None  # a port of its own for GET /metrics, as Triton's 8002 (None: the HTTP port's only)
    sagemaker_port: int | None = None  # Triton's SageMaker front end (--allow-sagemaker true), on the HTTP address
    sagemaker: SageMakerSettings = field(default_factory=SageMakerSettings)
    vertex_ai_port: int | None = None  # Triton's Vertex AI front end (--allow-vertex-ai true), on the HTTP address
    vertex_ai: VertexAiSettings | None = None
    profile: str = "realtime"
    allow_model_control: bool = False
    allow_shared_memory: bool = False  # the system shared memory extension (clients on this host)
    drain_timeout_s: float = 30.0
    max_body_bytes: int = 64 * 1024 * 1024  # an HTTP body's limit, Triton's (413 past it)
    grpc_max_message_bytes: int = (1 << 31) - 1  # a gRPC message's, Triton's (INT32_MAX; RESOURCE_EXHAUSTED past it)
    grpc_keepalive: grpc_transport.Keepalive = field(default_factory=grpc_transport.Keepalive)  # Triton's defaults
    idle_timeout_s: float = 120.0  # close HTTP connections quiet this long with nothing in flight (0: never)
    workers: int | None = None  # inference threads without batching (default: CPU count)
    inline_max_ms: float = 0.2  # run a model this fast on the loop when it is the only request (0: never)
    inline_serial_max_ms: float = 1.0  # the same while one client sends one request at a time (``InFlight.serial``)
    batching: BatchPolicy | None = None  # replaces policy_for's for every model
    batch_overrides: BatchOverrides | None = None  # settings replaced in each batched model's policy
    force_batching: bool = False  # batch every model that can be, with the default policy where none is planned
    threads: int | None = None  # runtime threads per model instance; None: the plan's, else the runtime's
    no_batching: bool = False
    access_log: bool = False
    server_name: str = "polystack"  # what server metadata reports (GET /v2, ServerMetadata)
    # headers (gRPC: metadata) whose names these match become request parameters (Triton's header forwarding)
    http_header_forward: str | None = None
    grpc_header_forward: str | None = None
    triton_metrics: bool = False  # /metrics shows Triton's names (nv_inference_*) too (triton_metrics.py)
    log: logs.LogOptions = field(default_factory=logs.LogOptions)  # what `logs.configure` was given (Ray Serve
    # replicas configure their own with it)
    trace: bool | None = None  # None: on when OTEL_EXPORTER_OTLP_ENDPOINT is set
    trace_rate: int = 1  # trace one request in this many (the trace extension can change it)
    trace_count: int = -1  # traces to take, then stop (-1: no limit)
    trace_levels: int = 1  # what tracing takes when on: tracing.TIMESTAMPS, TENSORS (Triton's level bits)
    trace_mode: str = "opentelemetry"  # or "triton": Triton's trace files
    trace_file: str = ""  # the triton mode's file
    trace_log_frequency: int = 0  # the triton mode's traces a numbered file holds (0: all into the file)
    trace_shown: tuple[tuple[str, str], ...] = ()  # opentelemetry settings listed as given (url, resource)
    runtime_settings: bool = True  # the trace and logging extensions (off in Ray Serve replicas)
    models: Sequence[str] = field(default_factory=list)  # refs; empty: every registered model
    cpus: CpuPlacement | None = None  # pin the front end and the runtimes to separate cores (Linux)
    # the NUMA node the served process's memory is bound to (--host-policy cpu,numa-node=N; ``run`` binds it)
    memory_node: int | None = None
    tls: TlsConfig | None = None  # HTTPS and gRPC over TLS (mutual when it names a client CA)
    # Triton model configs by model name: how a model is served at start and by a load without a config
    # of its own (serve --model-config NAME=FILE, as Triton reads config.pbtxt)
    model_configs: Mapping[str, ConfigFile] = field(default_factory=dict)
    # the response cache models whose config enables response_cache answer from (--cache-config); None: none
    response_cache: CacheConfig | None = None
    # Triton model repositories served (--model-repository; their models are among ``models`` already), the
    # names of the models they hold at start, and how often to poll them for changes (0: never)
    model_repositories: Sequence[Path] = ()
    cloud_repositories: Sequence[CloudRepository] = ()  # those in cloud storage (their copies are among the above)
    repository_models: Sequence[str] = ()
    repository_poll_s: float = 0.0
    repository_seen: Mapping[str, Fingerprint] | None = None  # their folders as they were before the start read them
    # the max_batch_size Triton's auto-complete gives their models that can batch where a config leaves it out
    # (--backend-config default-max-batch-size; Triton's default, 4)
    default_max_batch_size: int = DEFAULT_MAX_BATCH_SIZE
    # the ensembles those repositories declare, by name: served after the models, once these are loaded
    ensembles: Mapping[str, Ensemble] = field(default_factory=dict)
    # Triton's restricted APIs (--http-restricted-api, --grpc-restricted-protocol): answered only with a header
    http_restricted: Restrictions = field(default_factory=Restrictions)
    grpc_restricted: Restrictions = field(default_factory=lambda: Restrictions(what="protocol"))
    # Triton's explicit model control (--load-model): ``models`` are all served at start, none when empty
    start_named_only: bool = False
    # each listener's address where it is not ``host`` (tritonserver's --grpc-address, --metrics-address)
    grpc_host: str | None = None
    metrics_host: str | None = None
    serve_http: bool = True  # False: no HTTP listener (tritonserver's --allow-http false), gRPC alone
    serve_metrics: bool = True  # False: no GET /metrics anywhere (--allow-metrics false)
    cpu_metrics: bool = True  # --triton-metrics' nv_cpu_* (--allow-cpu-metrics)
    metrics_interval_ms: int = 2000  # and how often their CPU utilization is sampled (twice in it, as Triton does)
    # Triton's --exit-on-error false: a model that fails to load at start is left out (the index says why), the
    # server serving the rest; and its --strict-readiness: not ready while a model a load left is not
    exit_on_error: bool = True
    strict_readiness: bool = True
    # the repository folders a start could not read, by name: why (--exit-on-error false: served without them; else
    # the start fails once the other models were tried, naming each)
    start_failures: Mapping[str, PolystackError] = field(default_factory=dict)
    # Triton's explicit model control: loads by name and the index know the repositories alone, not the store
    repository_only: bool = False
    # how repository folders are read (--model-config-name, --disable-auto-complete-config)
    folder_rules: FolderRules = field(default_factory=FolderRules)
    # gRPC inference responses gzip-compressed (tritonserver's --grpc-infer-response-compression-level)
    grpc_compress_infer: bool = False
    # gRPC over TLS with HTTP left plain (tritonserver's --grpc-use-ssl and its files), in place of ``tls``
    grpc_tls: TlsConfig | None = None
    # SO_REUSEPORT, so that several servers take one port (tritonserver's --reuse-http-port, --reuse-grpc-port)
    reuse_http_port: bool = False
    reuse_grpc_port: bool = False
    # --triton-metrics' duration counters (nv_inference_*_duration_us; tritonserver's --metrics-config)
    counter_latencies: bool = True
    # --triton-metrics' latency summaries (nv_inference_*_summary_us) with these quantiles; empty: none
    # (tritonserver's --metrics-config summary_latencies=true and summary_quantiles)
    summary_quantiles: tuple[float, ...] = ()
    # Triton's rate limiter (--rate-limit execution_count): None, off; else the resources --rate-limit-resource
    # gives ((device or rate_limiter.EACH_DEVICE, name) -> count)
    rate_limit: Mapping[tuple[int, str], int] | None = None
    load_retries: int = 0  # a failed load tried again this many times (tritonserver's --model-load-retry-count)
    load_threads: int = loader.DEFAULT_THREADS  # models built at once (tritonserver's --model-load-thread-count)


class Server:
    def __init__(
        self,
        engine: Engine,
        config: ServeConfig,
        *,
        spec_for: Callable[[Store, ModelRecord, str], LoadSpec] = spec_for,
        policy_for: PolicyFor = policy_for,
    ) -> None:
        self.engine = engine
        self.config = config
        self.metrics = ServerMetrics()

        def policy(store: Store, record: ModelRecord, profile: str) -> BatchPolicy | None:
            # its config decides (the one it has now: a repository folder's may come or go); the plan's fills
            # what it leaves out
            if record.name in self.plane.model_configs:
                return policy_for(store, record, profile)
            if config.no_batching:
                return None
            chosen = config.batching or policy_for(store, record, profile)
            if chosen is None and config.force_batching:
                chosen = BatchPolicy()
            overrides = config.batch_overrides
            if overrides is not None:
                if chosen is not None:
                    chosen = overrides.apply(chosen)
                elif not model_config.auto_batched(record, config.default_max_batch_size):  # (what Triton's
                    # auto-complete batches takes them in ModelLoads.plan_load)
                    settings = {k: v for k, v in overrides.given().items() if k != "instances"}  # unbatched: theirs
                    if settings:
                        why = (
                            "Triton's auto-complete gives this repository model max_batch_size "
                            f"{config.default_max_batch_size} (--backend-config default-max-batch-size)"
                            if record.settings.get(model_config.TRITON_IO) and model_config.triton_batchable(record.signature)
                            else "the profile does not batch this model"
                        )
                        log.warning(
                            f"batching settings do not apply: {why}; add --batching",
                            extra={"model": record.name, "profile": profile, "settings": settings},
                        )
            return chosen

        cpus = config.cpus

        def spec(store: Store, record: ModelRecord, profile: str, instances: int, runtime: str = "") -> LoadSpec:
            chosen = spec_for(store, record, profile)
            if runtime and runtime != chosen.backend and runtime_loads(runtime, record.format):
                # a config's backend names another runtime than the plan's: the source on it, as in Triton
                chosen = default_spec(store, record, backend=runtime)
            elif (
                config.threads is None
                and config.batching is None
                and cpus is None
                and instances == (planned_instances(store, record, profile) or 1)  # as the plan's spec was made
            ):
                return chosen  # the plan's concurrency (already in its spec), or the runtime's default
            threads = config.threads
            if threads is None and cpus is not None:
                # a plan's or runtime's default thread count was sized for the whole machine
                threads = cpus.threads_per_instance(instances)
            spec = with_concurrency(chosen, threads, instances)
            return spec if cpus is None else without_runtime_pinning(spec)

        cache = None
        if config.response_cache is not None:
            cache = ResponseCache(config.response_cache.size)
            cache.on_evict = self.metrics.watch_cache(cache)
        repository = None
        if config.model_repositories:
            served = {ModelRef.parse(m).name for m in config.models} | set(config.model_configs)
            repository = ModelRepository(
                config.model_repositories,
                config.repository_models,
                served - set(config.repository_models),
                config.repository_seen,
                polled=config.repository_poll_s > 0,
                rules=config.folder_rules,
                clouds=config.cloud_repositories,
            )
        self.plane = DataPlane(
            engine,
            profile=config.profile,
            spec_for=spec,
            policy_for=policy,
            allow_model_control=config.allow_model_control,
            allow_shared_memory=config.allow_shared_memory,
            workers=config.workers or (len(cpus.runtime) if cpus else None),
            thread_initializer=cpus.pin_runtime if cpus else None,
            frontend_initializer=cpus.pin_frontend if cpus else None,
            metrics=self.metrics,
            tracing=Tracing(
                config.trace,
                rate=config.trace_rate,
                count=config.trace_count,
                levels=config.trace_levels,
                mode=config.trace_mode,
                file=config.trace_file,
                log_frequency=config.trace_log_frequency,
                shown=dict(config.trace_shown),
            ),
            log_settings=logs.SETTINGS if config.runtime_settings else None,
            inline_max_ms=0.0 if cpus else config.inline_max_ms,  # pinned: models never run on the loop's cores
            inline_serial_max_ms=config.inline_serial_max_ms,
            server_name=config.server_name,
            model_configs=config.model_configs,
            response_cache=cache,
            repository=repository,
            unbatched_instances=config.batch_overrides.instances if config.batch_overrides else None,
            planned_instances=planned_instances,
            default_max_batch_size=config.default_max_batch_size,
            batch_overrides=config.batch_overrides,
            no_batching=config.no_batching,
            triton_names=config.triton_metrics,
            cpu_metrics=config.cpu_metrics,
            metrics_interval_ms=config.metrics_interval_ms,
            counter_latencies=config.counter_latencies,
            summary_quantiles=config.summary_quantiles,
            strict_readiness=config.strict_readiness,
            repository_only=config.repository_only,
            folder_rules=config.folder_rules,
            rate_limiter=RateLimiter(config.rate_limit) if config.rate_limit is not None else None,
            load_retries=config.load_retries,
            load_threads=config.load_threads,
        )
        self.http = HttpApp(
            self.plane,
            max_body_bytes=config.max_body_bytes,
            access_log=config.access_log,
            idle_timeout_s=config.idle_timeout_s,
            thread_initializer=cpus.pin_frontend if cpus else None,
            restricted=config.http_restricted,
            metrics=config.serve_metrics,
            header_forward=_forwarding(config.http_header_forward, "--http-header-forward-pattern"),
        )
        # Triton serves its metrics on a port of their own (--metrics-port, 8002), which scrape configs name
        self.metrics_http = (
            HttpApp(
                self.plane,
                max_body_bytes=config.max_body_bytes,
                idle_timeout_s=config.idle_timeout_s,
                only_metrics=True,
            )
            if config.metrics_port is not None
            else None
        )
        # other platforms' front ends, each on a port of its own, over the same data plane: (name, flag, app, port)
        pin = cpus.pin_frontend if cpus else None
        self.platforms: list[tuple[str, str, HttpApp, int]] = []
        if config.sagemaker_port is not None:
            sagemaker = SageMakerApp(
                self.plane, config.sagemaker, max_body_bytes=config.max_body_bytes, access_log=config.access_log,
                idle_timeout_s=config.idle_timeout_s, thread_initializer=pin, restricted=config.http_restricted,
            )  # fmt: skip
            self.platforms.append(("SageMaker", "--sagemaker-port", sagemaker, config.sagemaker_port))
        self.vertex_ai: VertexAiApp | None = None
        if config.vertex_ai_port is not None and config.vertex_ai is not None:
            self.vertex_ai = VertexAiApp(
                self.plane, config.vertex_ai, max_body_bytes=config.max_body_bytes, access_log=config.access_log,
                idle_timeout_s=config.idle_timeout_s, thread_initializer=pin, metrics=config.serve_metrics,
                restricted=config.http_restricted,
            )  # fmt: skip
            self.platforms.append(("Vertex AI", "--vertex-ai-port", self.vertex_ai, config.vertex_ai_port))
        self.http_port = 0
        self.grpc_port: int | None = None
        self.metrics_port: int | None = None
        self.platform_ports: dict[str, int] = {}  # by name, as bound
        self._platform_servers: list[tuple[HttpApp, asyncio.AbstractServer]] = []
        self._http_server: asyncio.AbstractServer | None = None
        self._metrics_server: asyncio.AbstractServer | None = None
        self._grpc_server: Any = None
        self._stop: asyncio.Event | None = None
        self._sweepers: list[asyncio.Task[None]] = []
        self.drained: bool | None = None  # whether the last shutdown finished every request in time
        self._poller: asyncio.Task[None] | None = None

    def _refs(self) -> list[str]:
        """The models to serve, as refs; every model a start config names among them."""
        refs = list(self.config.models)
        # a repository's server serves its models alone; explicit model control, those named alone
        if not refs and not self.config.model_repositories and not self.config.start_named_only:
            latest: dict[str, int] = {}
            for r in self.engine.store.models.list():
                latest[r.name] = max(latest.get(r.name, 0), r.version)
            refs = [f"{n}:{v}" for n, v in sorted(latest.items())]
        names = {ModelRef.parse(ref).name for ref in refs}
        for name in self.config.model_configs:
            if name not in names:
                raise InvalidRequest(
                    f"--model-config names model {name!r}, which this server does not serve; name a model it "
                    "serves (`polystack models` lists the registered ones), or serve that one too"
                )
        for name, start in self.config.model_configs.items():
            if start.policy is not None:
                refs = self._picked(name, start.policy, refs)
        return refs

    def _picked(self, name: str, policy: Any, refs: list[str]) -> list[str]:
        """``refs`` with the versions of ``name`` that its ``--model-config``'s version_policy picks among the
        store's, as a repository folder's config picks them: in place of the model named without a version (or
        of every model served, none named); versions named on the command line must be those it picks."""
        known = sorted(r.version for r in self.engine.store.models.list(name))
        if not known:
            return refs  # its load says the model is unknown
        try:
            picked = model_repository.pick_versions(policy, known, name)
        except InvalidRequest as e:
            raise e.prefixed(f"--model-config {name}") from None
        parsed = [ModelRef.parse(ref) for ref in refs]
        named = sorted({r.version for r in parsed if r.name == name and r.version is not None}) if self.config.models else []
        if named and named != sorted(picked):
            raise InvalidRequest(
                f"--model-config {name}: its version_policy picks versions {sorted(picked)}, but the command line "
                f"serves {named}; name the model without a version to serve what the policy picks, or name those"
            )
        others = [ref for ref, r in zip(refs, parsed, strict=True) if r.name != name]
        return others + [f"{name}:{v}" for v in sorted(picked)]

    def check_model_configs(self) -> list[str]:
        """Refuse what ``load_models`` would refuse in the start configs (``--model-config``), loading
        nothing: for servers whose models load elsewhere (Ray Serve replicas), so that the mistake is
        told before they start. The models whose configs set sequence batching (stateful)."""
        stateful = []
        for ref in self._refs():
            if ModelRef.parse(ref).name in self.config.model_configs:
                try:
                    if self.plane.model_loads.check_load(ref) is not None:
                        stateful.append(ref)
                except PolystackError as e:
                    raise load_failed(ref, e) from None
        return stateful

    def check_ensembles(self) -> None:
        """Refuse what ``load_models`` would refuse of the ensembles, loading nothing (Ray Serve replicas)."""
        if self.config.ensembles:
            self.plane.ensemble_loads.check_planned(self.config.ensembles, self._refs())

    def load_models(self) -> None:
        refs = self._refs()
        cfg = self.config
        flags = cfg.no_batching or cfg.force_batching or cfg.batching is not None or cfg.batch_overrides is not None
        for name, start in cfg.model_configs.items():
            picked = tuple(v for r in refs if (p := ModelRef.parse(r)).name == name and (v := p.version) is not None)
            if start.policy is not None and picked:  # a load by name serves them again, as a repository folder's do
                self.plane.model_configs[name] = dataclasses.replace(start, versions=picked)
            if flags:
                log.warning(
                    f"batching settings do not apply: {start.source or '--model-config'} decides this model's batching",
                    extra={"model": name},
                )
        failed = dict(self.config.start_failures) if self.config.exit_on_error else {}
        # runtimes and batch workers start their threads here: on the runtime cores they inherit them
        with self.config.cpus.runtime_side() if self.config.cpus else contextlib.nullcontext():
            loaded = self.plane.model_loads.load_many(refs)  # at once, as Triton's start
            for ref, failure in zip(refs, loaded, strict=True):
                if self.plane.draining:  # stopped while starting (run's signal handlers)
                    raise ShuttingDown("the server is shutting down")
                if failure is not None:
                    self._failed_at_start(ModelRef.parse(ref).name, load_failed(ref, failure), failed, ref)
            ensembles = self.plane.ensemble_loads
            for name in load_order(self.config.ensembles):  # an ensemble whose step runs another: after it
                try:
                    ensembles.refuse_cycle(name, self.config.ensembles[name], [name], self.config.ensembles)
                    ensembles.load(self.config.ensembles[name])
                except PolystackError as e:
                    self._failed_at_start(name, load_failed(name, e), failed)
                    self.plane.repository_extension.note_unmet(name)  # a poll that changes its models tries it again
        if failed:  # each model was tried, as Triton's start tries them all
            raise start_failed(failed)
        for name, failure in self.config.start_failures.items():
            self.plane.repository_extension.note_failed_load(name, failure)

    def _failed_at_start(
        self, name: str, e: PolystackError, failed: dict[str, PolystackError], ref: str | None = None
    ) -> None:
        """A model that failed to load at start (``ref``: the version of it asked for): the start fails once every
        model was tried (``failed`` gathers why, each version's), unless --exit-on-error false, which logs it and
        serves the rest, as Triton's does (the index lists it with why; a name nothing has, not at all)."""
        if self.config.exit_on_error:
            failed.setdefault(ref or name, e)
            return
        log.error(
            "failed to load a model at start; serving the others (--exit-on-error false)",
            extra={"model": name, "error": e.message},
        )
        if not isinstance(e, NotFound):
            self.plane.repository_extension.note_failed_load(name, e)

    async def start(self) -> None:
        """Bind HTTP (and gRPC) and start serving; models must already be loaded (``load_models``)."""
        loop = asyncio.get_running_loop()
        self.plane.calls.serve_on(loop)  # models' calls to other models run here from now on
        if self.config.cpus is not None:
            self.config.cpus.pin_frontend()  # this thread runs the event loop: the front end
        self._stop = asyncio.Event()
        tls = self.config.tls
        if self.vertex_ai is not None:  # its default model, now the models are loaded, before anything listens
            self.vertex_ai.model = self.vertex_ai.settings.default_model(self.plane.model_names())
        if self.config.serve_http:
            with _binding("HTTP", "--http-port", self.config.host, self.config.http_port):
                self._http_server = await loop.create_server(
                    lambda: HttpProtocol(self.http),
                    self.config.host,
                    self.config.http_port,
                    backlog=1024,
                    reuse_port=self.config.reuse_http_port or None,
                    ssl=tls.context if tls else None,
                    ssl_handshake_timeout=HANDSHAKE_TIMEOUT_S if tls else None,
                )
            self.http_port = self._http_server.sockets[0].getsockname()[1]
            self._sweepers.append(loop.create_task(self.http.close_idle_connections()))
        if self.metrics_http is not None:
            metrics_http = self.metrics_http
            metrics_host = self.config.metrics_host or self.config.host
            with _binding("metrics", "--metrics-port", metrics_host, self.config.metrics_port or 0, "; -1: none"):
                self._metrics_server = await loop.create_server(
                    lambda: HttpProtocol(metrics_http),
                    metrics_host,
                    self.config.metrics_port,
                    ssl=tls.context if tls else None,
                    ssl_handshake_timeout=HANDSHAKE_TIMEOUT_S if tls else None,
                )
            self.metrics_port = self._metrics_server.sockets[0].getsockname()[1]
            self._sweepers.append(loop.create_task(metrics_http.close_idle_connections()))
        for name, flag, app, port in self.platforms:
            with _binding(name, flag, self.config.host, port):
                server = await loop.create_server(
                    functools.partial(HttpProtocol, app),
                    self.config.host,
                    port,
                    backlog=1024,  # plain HTTP, as the platforms call containers (Triton's ports have no TLS)
                )
            self.platform_ports[name] = server.sockets[0].getsockname()[1]
            self._platform_servers.append((app, server))
            self._sweepers.append(loop.create_task(app.close_idle_connections()))
        if self.config.grpc_port is not None:
            self._grpc_server, self.grpc_port = grpc_transport.create_server(
                self.plane,
                self.config.grpc_host or self.config.host,
                self.config.grpc_port,
                self.config.grpc_max_message_bytes,
                self.config.grpc_tls or tls,
                self.config.access_log,
                self.http.codec_pool,
                self.config.grpc_keepalive,
                self.config.grpc_restricted,
                self.config.grpc_compress_infer,
                self.config.reuse_grpc_port,
                _forwarding(self.config.grpc_header_forward, "--grpc-header-forward-pattern"),
            )
            await self._grpc_server.start()
        if self.config.repository_poll_s > 0 and self.plane.repository is not None:
            self._poller = loop.create_task(self._poll_repository(self.config.repository_poll_s))
        forks.serving([self.http_port, self.grpc_port, self.metrics_port, *self.platform_ports.values()])
        log.info(
            "serving",
            extra={
                "host": self.config.host,
                "http_port": self.http_port if self.config.serve_http else None,
                **({"grpc_host": self.config.grpc_host} if self.config.grpc_host else {}),
                **({"metrics_host": self.config.metrics_host} if self.config.metrics_host else {}),
                "grpc_port": self.grpc_port,
                **({"metrics_port": self.metrics_port} if self.metrics_port is not None else {}),
                **{f"{name.lower().replace(' ', '_')}_port": port for name, port in self.platform_ports.items()},
                "models": [f"{e.name}:{e.version}" for e in self.engine.loaded()],
                **({"ensembles": ensembles} if (ensembles := self.plane.ensembles_served()) else {}),
                **(self.config.cpus.describe() if self.config.cpus else {}),
                **(tls.describe() if tls else {}),
                **({"grpc_tls": True, "grpc_tls_mutual": g.mutual} if (g := self.config.grpc_tls) else {}),
            },
        )
        if not self.engine.loaded() and not self.plane.ensembles_served():  # (Triton's starts so too, silently)
            log.warning(
                "serving no model: every inference request is a 404 until one is loaded; register one "
                "(polystack register FILE --name NAME) and serve it, give --model-repository DIR, or load one over "
                "the protocol (--allow-model-control)"
            )

    async def _poll_repository(self, every_s: float) -> None:
        """Triton's poll mode: read the model repositories for changes every ``every_s`` until the drain begins
        (a poll in progress then finishes within it, as a load does)."""
        while True:
            try:
                await asyncio.wait_for(self.plane.wait_draining(), every_s)
                return
            except TimeoutError:
                pass
            try:
                await self.plane.repository_extension.poll()
            except ShuttingDown:  # the drain began
                return
            except Exception:
                log.exception("polling the model repository failed; polling goes on")

    def request_stop(self) -> None:
        if self._stop is not None:
            if not self._stop.is_set():  # said at once: the drain's end says how it went (helper-265: nothing did)
                log.info(
                    "stopping: readiness is false, requests in flight finish, new ones are refused",
                    extra={"in_flight": self.plane.in_flight.count, "drain_timeout_s": self.config.drain_timeout_s},
                )
            elif self.plane.taking_sequences:  # a second signal: the sequences held end now
                log.info("a second signal: the drain waits no longer for the sequences held")
                self.plane.stop_waiting_for_sequences()
            else:
                log.info("a second signal: the drain goes on, within its timeout")
            self._stop.set()

    async def wait_stopped(self) -> None:
        assert self._stop is not None
        await self._stop.wait()

    async def shutdown(self) -> None:
        """Readiness false, stop accepting, let in-flight requests finish (drain timeout), close."""
        started = time.monotonic()
        self.plane.start_draining()
        for _, _, app, _ in self.platforms:  # their ports answer health (400: not ready) until the drain ends
            app.closing = True
        if self._http_server is not None:
            self._http_server.close()
        for sweeper in self._sweepers:
            sweeper.cancel()
        grace = self.config.drain_timeout_s
        deadline = started + grace

        def left() -> float:
            return max(0.0, deadline - time.monotonic())

        # first the sequences held run on, as in Triton's exit: their requests are taken (HTTP keeps its open
        # connections, gRPC takes their calls and streams read on) until they end or the grace is over
        if self.plane.sequences_live():
            log.info("draining: the sequences held take their requests until they end")
        drained = await self.plane.wait_sequences(grace)
        if not drained:  # they end now: what they queued is refused (503), with a second past the timeout to say so
            log.warning("the sequences held end unfinished: the drain timeout passed, or a second signal came",
                        extra={"sequences": self.plane.cut_sequences()})  # fmt: skip
            deadline = max(deadline, time.monotonic() + 1.0)
        self.http.closing = True
        # gRPC refuses new calls from now on (UNAVAILABLE, in its handlers), as HTTP does, and its calls in
        # flight share the one grace; its server stops after them
        drained = await self.plane.in_flight.wait_idle(left()) and drained
        # a decoupled model's final responses to requests whose clients went away (its threads may send them yet)
        drained = await self.plane.wait_final_responses(left()) and drained
        # answers still being encoded (a large one compresses off the loop) or sent are not cut off
        drained = await self.http.wait_answered(left()) and drained
        for _, _, app, _ in self.platforms:
            drained = await app.wait_answered(left()) and drained
        for conn in list(self.http.connections):
            conn.close_if_idle()
        if self._grpc_server is not None:
            await self._grpc_server.stop(left())
        for conn in list(self.http.connections):
            if conn.transport is not None:
                conn.transport.close()  # after what it still holds is written
        drained = await self.http.wait_closed(left()) and drained
        for app, server in self._platform_servers:
            server.close()  # then what it accepted meanwhile (refused: draining) is answered before its connections go
            drained = await app.wait_answered(left()) and drained
            for conn in list(app.connections):
                conn.close_if_idle()
            drained = await app.wait_closed(left()) and drained
        if self._poller is not None:
            self._poller.cancel()  # done at the drain's start, or past its timeout
        if self._metrics_server is not None and self.metrics_http is not None:
            # scraped until the drain ends, as the metrics show it; then closed with what it is answering sent
            self._metrics_server.close()
            self.metrics_http.closing = True
            for conn in list(self.metrics_http.connections):
                conn.close_if_idle()
            await self.metrics_http.wait_closed(min(left(), 1.0))
        self.drained = drained
        log.info(
            "stopped",
            extra={
                "drained": drained,
                "shutdown_s": round(time.monotonic() - started, 3),
                "in_flight": self.plane.in_flight.count,
            },
        )

    def close(self) -> None:
        self.http.close()
        for other in (self.metrics_http, *(app for _, _, app, _ in self.platforms)):
            if other is not None:
                other.close()
        self.plane.close()
        self.plane.tracing.shutdown()  # spans still queued go out (within a bound)


def _forwarding(pattern: str | None, flag: str) -> HeaderForward | None:
    return HeaderForward(pattern, flag) if pattern is not None else None


def start_failed(failed: Mapping[str, PolystackError]) -> PolystackError:
    """The error of a start whose models ``failed`` (by name, or name and version, in the order they came: a
    folder's before a load's, an ensemble's, which may follow from them, last): the first's, its one line naming
    every failure."""
    first, *others = failed.values()
    return first.framed("", "".join(f"; {e.message}" for e in others))


@contextlib.contextmanager
def _binding(what: str, flag: str, host: str, port: int, other: str = "") -> Iterator[None]:
    """A bind that fails says which flag to change (the socket library names no flag: "address already in
    use", "Name or service not known"); ``other``: what else the flag takes."""
    try:
        yield
    except OSError as e:
        shown = f"[{host}]" if ":" in host else host  # an IPv6 address, as in a URL
        raise OSError(
            f"cannot serve {what} on {shown}:{port} ({flag}, --host): {e.strerror or e}; give a free port (0: any"
            f"{other}), and an address of this machine"
        ) from None


def run(engine: Engine, config: ServeConfig, on_serving: Callable[[], None] | None = None) -> int:
    """Serve until SIGTERM/SIGINT, then drain and return 0 (the process exit code; a drain past its timeout
    exits 1 there and then, as tritonserver's does); ``on_serving`` is called once the models loaded and the ports
    listen. What the server's code writes to stdout and stderr meanwhile (a Python model's ``print``) is log
    lines."""
    with logs.output_as_log_lines():
        return _run(engine, config, on_serving)


def _run(engine: Engine, config: ServeConfig, on_serving: Callable[[], None] | None) -> int:
    if config.memory_node is not None:  # before any thread starts: every one the server starts inherits it
        host_policy.bind_memory(config.memory_node)
        log.info("memory bound to a NUMA node (--host-policy)", extra={"numa_node": config.memory_node})
    server = Server(engine, config)
    if config.cpus is not None:
        config.cpus.apply_to_process()  # this process only serves: pin what libraries started at import
    try:
        stopped_early, loading = _load_until_signalled(server)
    except BaseException:  # the start failed: what it loaded closes first, as Triton's failed start unloads them
        _close_started(server, engine)
        raise
    if stopped_early.is_set():
        log.info(
            "stopped", extra={"before_serving": True, "models": [f"{e.name}:{e.version}" for e in engine.loaded()]}
        )
        # a load that outlived the drain timeout: exit 1 without it
        _close(server, engine, bounded=loading, cut="a model's load was cut off")
        return 0
    # Start-up leaves a few hundred thousand long-lived objects (runtimes, the CLI); freezing them keeps
    # full collections, triggered by per-request garbage, from walking them all again (py-spy showed
    # gc at ~4% of the event loop's time under load).
    gc.collect()
    gc.freeze()

    async def main() -> None:
        await server.start()
        if on_serving is not None:
            on_serving()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            try:
                loop.add_signal_handler(sig, server.request_stop)
            except (NotImplementedError, RuntimeError):  # a loop without them (Windows): Python's own handler
                signal.signal(sig, lambda *_: loop.call_soon_threadsafe(server.request_stop))
        if stopped_early.is_set():  # a signal after the models loaded, before the loop took the signals
            server.request_stop()
        await server.wait_stopped()
        await server.shutdown()

    try:
        _run_loop(main())
    finally:
        _close(server, engine, bounded=server.drained is False)
    return 0


# seconds the close after a drain that timed out may take before the process exits without it
EXIT_GRACE_S = 2.0


def _close_started(server: Server, engine: Engine) -> None:
    """Close what a start that failed loaded (each Python model's ``finalize`` runs, its unpacked copy goes:
    helper-229), for ``EXIT_GRACE_S`` at most: a finalize that hangs leaves the failure to be said all the same."""

    def close() -> None:
        try:
            server.close()
            engine.close()
        except Exception as e:  # the start's failure is the one to say
            log.warning("closing the models a failed start loaded failed", extra={"error": str(e)})

    closing = threading.Thread(target=close, name="polystack-close", daemon=True)
    closing.start()
    closing.join(EXIT_GRACE_S)


def _close(server: Server, engine: Engine, bounded: bool, cut: str = "requests were cut off") -> None:
    """Close the server and its models. ``bounded`` (the drain timed out with requests still running, as a
    hung runtime call can be): the process exits once what closes has had ``EXIT_GRACE_S``, as Triton exits
    once its exit timeout passes; a runtime call cannot be stopped, and the interpreter would wait at exit for
    the thread that runs it (a 4.4 s call held a server drained with --drain-timeout-s 1 for 5.5 s). After a drain
    that ended, the close has the drain timeout (at least ``EXIT_GRACE_S``): a model's call whose client went away
    may still run, which no request counts (helper-182: a Python model's stuck execute held the process for good).
    ``cut``: what the timeout cut off, in the log's words."""
    # the spans of what the drain answered go out first, whatever the close then waits for, and bounded on their own
    # (helper-265: a collector that was down held the close, which then blamed a model's call)
    server.plane.tracing.shutdown(timeout_s=EXIT_GRACE_S if bounded else 5.0)
    done = threading.Event()
    failed: list[BaseException] = []

    def close() -> None:
        try:
            server.close()
            engine.close()
        except BaseException as e:  # said where the close was asked for
            failed.append(e)
        finally:
            done.set()

    threading.Thread(target=close, name="polystack-close", daemon=True).start()
    done.wait(EXIT_GRACE_S if bounded else max(EXIT_GRACE_S, server.config.drain_timeout_s))
    if not bounded and done.is_set():
        if failed:
            raise failed[0]
        _exit_past_what_models_left()
        return
    # exit 1, as tritonserver's main exits 1 when its stop's exit timeout expires ("failed to stop server: Exit
    # timeout expired. Exiting immediately."): a supervisor tells a drain that cut requests off from a clean one
    if done.is_set():
        log.error(f"exiting past the drain timeout (exit 1): {cut}", extra={"closed": True})
    elif bounded:
        log.error(
            f"exiting past the drain timeout (exit 1): {cut}, and runtime calls still running are not waited for",
            extra={"closed": False},
        )
    else:
        log.error(
            "exiting past the drain timeout (exit 1): closing the models took it, a model's call or a model's "
            "finalize still running; it is not waited for",
            extra={"closed": False},
        )
    logging.shutdown()  # what the log handlers hold goes out first
    os._exit(1)


def _exit_past_what_models_left() -> None:
    """Exit even where a model left threads or processes of its own running (a Python model's, neither daemon
    threads nor daemon ``multiprocessing`` processes), which the interpreter would wait for at exit for good; they
    have ``EXIT_GRACE_S`` to end, as Triton's exit timeout gives its instances. Processes are left running, as
    Triton's stub leaves the processes it started."""
    def left() -> list[threading.Thread]:
        main = threading.main_thread()
        return [t for t in threading.enumerate() if t is not main and not t.daemon and t.is_alive()]

    def processes() -> list[multiprocessing.process.BaseProcess]:
        return [p for p in multiprocessing.active_children() if not p.daemon]

    # idle workers of thread pools (a library's: OpenVINO's telemetry starts one at import) end now, as they would
    # at the interpreter's exit, whose hook this is (a private one: where it is gone, they get the grace too)
    stop_pools = getattr(concurrent.futures.thread, "_python_exit", None)
    if callable(stop_pools):
        stop_pools()
    deadline = time.monotonic() + EXIT_GRACE_S
    for thread in left():
        thread.join(max(0.0, deadline - time.monotonic()))
    for process in processes():
        process.join(max(0.0, deadline - time.monotonic()))
    running, forked = left(), processes()
    if running:
        log.warning(
            "exiting with threads still running that no model stopped (not daemon threads): not waited for",
            extra={"threads": [t.name for t in running]},
        )
    if forked:
        log.warning(
            "exiting with processes still running that a model started and did not stop (not daemon processes): "
            "not waited for, left running",
            extra={"pids": [p.pid for p in forked]},
        )
    if running or forked:
        for process in multiprocessing.active_children():
            if process.daemon:  # as the interpreter's exit, which this one skips, ends them (a model's pool)
                process.terminate()
        logging.shutdown()
        os._exit(0)


def _load_until_signalled(server: Server) -> tuple[threading.Event, bool]:
    """``server.load_models()``, stopped by a SIGTERM or Ctrl-C: a warm-up stops between two calls, no
    further model loads, and the event returned is set (``run`` then exits 0, as after a drain). The
    models load on a thread of their own, so that the main thread takes the signal at once, even in the
    middle of a runtime's call; a second signal ends the process there and then, and a load still running
    ``--drain-timeout-s`` after the first is left (the bool returned: True; ``run`` then exits 1, as past a drain's
    timeout). A failure to load is raised here, unless the signal caused it."""
    stopped_early = threading.Event()
    first_signal = [0.0]

    def stop_while_starting(signum: int, frame: object) -> None:
        if stopped_early.is_set():
            # a second signal: stop now, whatever runs (a hung runtime call); not one sent with the first
            # (a wrapper forwarding Ctrl-C to its process group, which has it already)
            if time.monotonic() - first_signal[0] > 1.0:
                signal.signal(signum, signal.SIG_DFL)
                os.kill(os.getpid(), signum)
            return
        first_signal[0] = time.monotonic()
        stopped_early.set()
        server.plane.start_draining()
        log.info("stopping: the models still loading stop at the next chance; a second signal stops at once")

    forks.prepare()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, stop_while_starting)
    failed: list[BaseException] = []

    def load() -> None:
        try:
            server.load_models()
        except BaseException as e:  # raised again below, on the main thread
            failed.append(e)

    # not a daemon: threads a model's initialize starts would be daemons too, which the exit does not report
    loader = threading.Thread(target=load, name="polystack-start")
    loader.start()
    while loader.is_alive():
        loader.join(0.5)  # returns for the signal handlers to run
        if stopped_early.is_set() and time.monotonic() - first_signal[0] > server.config.drain_timeout_s:
            log.error(  # a model's initialize that hangs, say: the drain timeout bounds a stop while starting too
                "a model's load did not stop within --drain-timeout-s of the signal; exiting without waiting for it",
                extra={"drain_timeout_s": server.config.drain_timeout_s},
            )
            return stopped_early, True
    if failed and not (stopped_early.is_set() and isinstance(failed[0], PolystackError)):
        raise failed[0]
    return stopped_early, False


def _run_loop(coro: Any) -> None:
    try:
        import uvloop  # optional: a faster event loop when installed
    except ImportError:
        asyncio.run(coro)
        return
    uvloop.run(coro)


class ServerThread:
    """A Server on its own event loop in a background thread: ``start()`` returns once bound."""

    def __init__(self, engine: Engine, config: ServeConfig, **hooks: Any) -> None:
        self.server = Server(engine, config, **hooks)
        self._thread = threading.Thread(target=self._main, name="polystack-server", daemon=True)
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    @property
    def http_port(self) -> int:
        return self.server.http_port

    @property
    def grpc_port(self) -> int | None:
        return self.server.grpc_port

    @property
    def metrics_port(self) -> int | None:
        return self.server.metrics_port

    @property
    def http_url(self) -> str:
        return f"{self.server.config.host}:{self.http_port}"

    @property
    def grpc_url(self) -> str:
        return f"{self.server.config.grpc_host or self.server.config.host}:{self.grpc_port}"

    def start(self, timeout_s: float = 30.0) -> ServerThread:
        self.server.load_models()
        self._thread.start()
        if not self._ready.wait(timeout_s):
            raise TimeoutError("the server did not start in time")
        if self._error is not None:
            raise self._error
        return self

    def _main(self) -> None:
        async def main() -> None:
            self._loop = asyncio.get_running_loop()
            try:
                await self.server.start()
            except BaseException as e:
                self._error = e
                self._ready.set()
                return
            self._ready.set()
            await self.server.wait_stopped()
            await self.server.shutdown()

        _run_loop(main())  # the loop `polystack serve` runs on (uvloop when installed), so tests see the same

    def stop(self, timeout_s: float = 60.0) -> None:
        if self._loop is not None and self._thread.is_alive():
            self._loop.call_soon_threadsafe(self.server.request_stop)
        self._thread.join(timeout_s)
        self.server.close()

    def __enter__(self) -> ServerThread:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
