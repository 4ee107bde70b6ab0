"""Loads and unloads of the models' versions the data plane serves.

A load is planned (``plan_load``: the record, the runtime and variant its profile's plan or config picks, its batch
policy, sequence batching and instances, the config checked whole before anything changes), built on the loader's
threads (``_build``: the engine loads and warms it up, tried again ``--model-load-retry-count`` times), started
(``_serving``: its batcher, sequence batcher or instances' threads, registered with the rate limiter) and only then
routed to (``_route``, under the plane's routing lock). What it replaces drains and closes on a thread of its own
(``_retire``): a load or unload answers once routing has changed, as Triton's do. A repository model's load reads its
folder again (``load_from_repository``) and serves the versions its version policy picks, all or none
(``_serve_versions``); a load that changes nothing leaves the version serving as it was (``_served_as``).

The plane holds one (``DataPlane.model_loads``); what is served (``plane.served_versions``, ``plane.ensembles``),
its routing lock, its history and its series are the plane's. Ensembles load in ``ensemble_loads``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import threading
import time
import weakref
from collections.abc import Callable, Collection, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from polystack.backends import hosting
from polystack.batching import DynamicBatcher
from polystack.batching.rate_limiter import ModelInstances
from polystack.batching.sequence import SequenceBatcher, SequencePolicy
from polystack.engine import LoadedEntry
from polystack.errors import (
    InvalidRequest,
    PolystackError,
    ShuttingDown,
    Unavailable,
)
from polystack.formats import python_model
from polystack.metrics import ModelMetrics
from polystack.server import (
    ensemble,
    loader,
    model_config,
    model_repository,
    repository_agents,
    warmup,
)
from polystack.server.inference_threads import InferenceThreads
from polystack.server.load_history import Configured
from polystack.server.repository_extension import UPLOADED
from polystack.server.served import LoadPlan, ServedModel
from polystack.store import ModelRecord, ModelRef

if TYPE_CHECKING:
    from polystack.server.dataplane import DataPlane

log = logging.getLogger("polystack.server")
_UNLOAD_DRAIN_S = 30.0  # how long what a load or unload replaced may run what it holds (as a batcher's close)


def _device_id(device: str) -> int:
    """The device a model's instances count their rate limiter resources on, as Triton numbers them: a GPU's
    index, and 0 for the CPU."""
    kind, _, index = device.partition(":")
    return int(index) if kind != "cpu" and index.isdigit() else 0


def _files_print(taken: model_repository.Fingerprint) -> model_repository.Fingerprint:
    """A model folder's fingerprint but its config's and the folder's own times: what Triton compares to reload a
    model whose files changed, where a config that changes only the instance groups updates them in place (and an
    editor that saves by renaming touches the folder)."""
    if taken is None:
        return None
    skipped = (".", model_repository.CONFIG, "configs")
    return tuple(e for e in taken if e[0] not in skipped and not e[0].startswith("configs/"))


def _touched_versions(
    then: model_repository.Fingerprint, now: model_repository.Fingerprint, versions: Collection[int]
) -> frozenset[int]:
    """Which of ``versions`` load afresh, a model folder's files (``_files_print``) having been ``then`` at its last
    load and ``now``: a version whose folder holds a file changed; every one where a file beside the version folders
    changed (a module they import), as current Triton reloads only the versions whose files changed."""
    if then is None or then == now:
        return frozenset()
    if now is None:
        return frozenset(versions)
    touched = set()
    for path, *_ in set(then) ^ set(now):
        top = path.split(os.sep, 1)[0]
        if not (top.isdigit() and str(int(top)) == top):  # outside the version folders: every version
            return frozenset(versions)
        touched.add(int(top))
    return frozenset(touched & set(versions))


def finish_streams(served: ServedModel, deadline: float, stopping: threading.Event) -> None:
    """Once the executes ``served`` was handed ran: its requests answered once whose answer has not come fail (their
    execute returned without it, and nothing may ever send it); wait until each decoupled request had its final
    response (its model's threads may send them after its ``execute`` returned), up to ``deadline`` or the server's
    close (``stopping``: its drain is over), before its model closes (``finalize`` may stop what sends them); those
    still open then end with an error, where Triton's unload would wait for them for good."""
    if not served.decoupled:
        for stream in served.open_streams():
            stream.fail(Unavailable(f"model {served.entry.name!r} was unloaded before it answered this request"))
        return
    waiting = served.open_streams()
    while any(not s.closed for s in waiting) and time.monotonic() < deadline and not stopping.is_set():
        time.sleep(0.005)
    name = served.entry.name
    for stream in waiting:
        if stream.fail(Unavailable(f"model {name!r} was unloaded before it sent this request's final response")):
            log.warning("a decoupled request had no final response when its model was unloaded", extra={"model": name})


@contextlib.contextmanager
def _logged(entry: LoadedEntry) -> Iterator[None]:
    """Closing what stopped being served: a failure is logged, and the server goes on serving what replaced it."""
    try:
        yield
    except Exception:
        log.exception(
            "closing a model that stopped being served failed", extra={"model": entry.name, "version": entry.version}
        )


class ModelLoads:
    """Loads and unloads of the versions of the models ``plane`` serves (``plane.served_versions``)."""

    def __init__(self, plane: DataPlane) -> None:
        self.plane = plane
        self._retiring: set[threading.Thread] = set()  # closing what loads and unloads replaced (``_retire``)
        self._retiring_lock = threading.Lock()
        # a repository model's folder as its last load read it: a load that finds it modified since (a file touched,
        # its content the same) loads it afresh, as Triton's compares modification times
        repository = plane.repository
        self._loaded_prints = {n: _files_print(p) for n, p in (repository.seen if repository else {}).items()}

    def load(self, ref: ModelRef | str, config: str | None = None) -> LoadedEntry:
        """Load one model (latest version unless given) with the spec and batch policy for the profile,
        or with the scheduling a Triton model ``config`` (JSON text) gives for this load."""
        name = ref.name if isinstance(ref, ModelRef) else ModelRef.parse(ref).name
        with self.plane.loader.claim(name):
            plan = self.plan_load(ref, config)
            try:
                return self._apply(plan, same_files=False if config is not None else None)
            except PolystackError as e:  # the index lists the version that failed (a start's failed load)
                raise e.at_version(plan.record.version) from None

    def load_many(self, refs: Sequence[str]) -> list[PolystackError | None]:
        """``load`` each of ``refs`` on the loader, as many at once as it has threads, as Triton loads the models
        it starts with; what each load raised (None: loaded), in their order. Those not started once the server
        drains raise ``ShuttingDown``."""
        plane = self.plane

        def one(ref: str) -> None:
            if plane.draining:  # stopped while starting: load no more
                raise ShuttingDown("the server is shutting down")
            self.load(ref)

        failures: list[PolystackError | None] = []
        for future in [plane.loader.submit(one, ref) for ref in refs]:
            try:
                future.result()
                failures.append(None)
            except PolystackError as e:
                failures.append(e)
        return failures

    def _local_folder(self, model_dir: Path | None) -> Path | None:
        """The model's folder in a local model repository (``model_dir``, its start config's), which a Python model's
        ``args["model_repository"]`` names, as Triton's does; None where the version is a load's uploaded files or a
        cloud repository's copy (Triton names a copy of its own there), or no repository holds it."""
        plane = self.plane
        if model_dir is None or plane.repository is None or UPLOADED.get():
            return None
        return model_dir if plane.repository.is_local(model_dir) else None

    def check_load(self, ref: ModelRef | str) -> SequencePolicy | None:
        """Refuse what a load of ``ref`` without a config of its own would refuse (its start config),
        loading nothing; its sequence batching, if its config sets it."""
        return self.plan_load(ref, None).sequence

    def plan_load(self, ref: ModelRef | str, config: str | None, agents: repository_agents.Agents = ()) -> LoadPlan:
        """What a load of ``ref`` would serve: its record, spec, batch policy and own instances; ``agents``
        are the repository agents ``config`` named, which ran on the model's files (a start config's own)."""
        ref = ModelRef.parse(ref) if isinstance(ref, str) else ref
        record = self.plane.store.get(ref)
        try:
            return self._plan(record, config, agents)
        except PolystackError as e:  # the index lists the version that failed (its config refused, say)
            e.at_version(record.version)
            raise

    def _plan(self, record: ModelRecord, config: str | None, agents: repository_agents.Agents) -> LoadPlan:
        plane = self.plane
        if record.format == "python" and not plane.folder_rules.python_models:  # however it came (a load's files)
            raise model_repository.python_refused(record.name)
        if record.format == "torchscript" and not plane.folder_rules.torchscript_models:  # however it came
            raise InvalidRequest(f"model {record.name!r}: {model_repository.TORCHSCRIPT_REFUSED}")
        if record.format == "torch_aoti" and not plane.folder_rules.aoti_models:
            raise InvalidRequest(f"model {record.name!r}: {model_repository.AOTI_REFUSED}")
        policy = plane.policy_for(plane.store, record, plane.profile)
        if policy is not None and not record.signature.batched:
            policy = None  # no batch dimension: served unbatched whatever batches, so --instances applies to it
        start = plane.model_configs.get(record.name)
        # unbatched: how many of its requests run at once (None: the shared pool decides); --instances is
        # polystack's choice for models without a start config, whose file decides
        default_instances = plane.unbatched_instances if start is None else None
        if default_instances is None and start is None and policy is None:  # an unbatched plan's count, measured so
            # (the shared threads served it two at a time, each with the plan's threads: helper-261)
            default_instances = plane.planned_instances(plane.store, record, plane.profile)
        instances = default_instances if policy is None else None
        spec = plane.spec_for(plane.store, record, plane.profile, policy.instances if policy else instances or 1)
        additions = model_config.Additions()
        sequence: SequencePolicy | None = None
        given = config
        # where the files a config names lie (warm-up, initial state): the model's folder, as Triton reads a load's
        # config against the model's repository folder too; a model without a start config has none
        model_dir = start.directory if start is not None else None
        if config is None and start is not None:
            config, agents = start.text, start.agents
        runtime = model_config.runtime_of(config)  # a config's backend names the runtime, as in Triton
        based = python_model.backend_of(spec.artifact) if record.format == python_model.NAME else ""
        if runtime and runtime == based:  # a Python-based backend's model: its config names that backend, which
            runtime = ""  # the Python backend runs
        if runtime and runtime != spec.backend:
            calls = policy.instances if policy else instances or 1
            spec = plane.spec_for(plane.store, record, plane.profile, calls, runtime)
        if spec.backend in model_config.ONE_INSTANCE and policy is None and instances is None:
            instances = 1  # one instance, on a thread of its own, as Triton's backend runs one: its code may keep state
        # a Triton repository's model without a config (nor a plan or flags that batch it, nor --no-batching): served
        # as Triton's auto-complete completes an empty one (its batch size and batching); one Triton cannot batch (a
        # scalar output's, say) so whatever batches
        triton_io = bool(record.settings.get(model_config.TRITON_IO))
        auto = config is None and triton_io and not plane.no_batching
        auto = auto and (policy is None or not model_config.triton_batchable(record.signature))
        # checked whole before anything changes: a refused config leaves the model as it was
        if config is not None or auto:
            try:
                chosen = model_config.read(
                    config or "{}", record, spec, policy, model_dir,
                    default_max_batch_size=plane.default_max_batch_size, auto_complete=plane.auto_complete,
                    python_based=based,
                    python_folder=self._local_folder(model_dir),
                )  # fmt: skip
            except InvalidRequest as e:
                if given is None:  # the client sent none: say which one it was
                    source = (start.source if start else "") or f"serve --model-config {record.name}"
                    raise e.prefixed(f"the config from {source}") from None
                raise
            if auto and chosen.batching is not None and plane.batch_overrides is not None:  # the flags' settings, as
                # for a policy they batch
                chosen = dataclasses.replace(chosen, batching=plane.batch_overrides.apply(chosen.batching))
            sequence = chosen.sequence
            if chosen.batching != policy or chosen.instances is not None or sequence is not None:
                policy, instances = chosen.batching, chosen.instances
                if policy is None and instances is None and sequence is None:
                    instances = default_instances  # a count left out keeps polystack's choice
                calls = policy.instances if policy else sequence.instances if sequence else instances or 1
                spec = plane.spec_for(plane.store, record, plane.profile, calls, runtime)
            if chosen.max_batch_size is not None:
                spec = dataclasses.replace(spec, max_batch_size=chosen.max_batch_size)
            if chosen.additions.options:  # the runtime's own parameters, over the plan's (Triton's backend's)
                spec = dataclasses.replace(spec, options={**spec.options, **chosen.additions.options})
            if chosen.additions.reshape:  # the runtime's model is wrapped to take and give its own shapes
                spec = dataclasses.replace(spec, reshape=chosen.additions.reshape)
            if chosen.additions.optional:  # inputs with a default that requests may feed: the runtime takes them too
                spec = dataclasses.replace(spec, optional=chosen.additions.optional)
            if chosen.additions.ragged is not None:  # requests of any shapes batched as one call of the model
                spec = dataclasses.replace(spec, ragged=chosen.additions.ragged)
            additions = chosen.additions
        if config is None and not auto and triton_io:  # batched as polystack's plan or flags say: its tensors as
            # Triton shows them (a config's reading adds the same)
            batched = policy is not None or bool(record.signature.batched and spec.max_batch_size)
            reshape = model_config.autocomplete(record.signature, {}, batched)
            additions = dataclasses.replace(additions, reshape=reshape)
            spec = dataclasses.replace(spec, reshape=reshape)
        if agents:
            additions = dataclasses.replace(additions, agents=agents)
        return LoadPlan(record, spec, policy, instances, additions, config, sequence)

    def _apply(self, plan: LoadPlan, same_files: bool | None = None) -> LoadedEntry:
        """Load what ``plan`` says and route to it; what it replaces drains and closes (``_retire``);
        ``same_files``: ``_route``'s."""
        with self._loading_versions([plan]):
            entry = self._build(plan)
            try:
                served = self._serving(plan, entry)
            except BaseException:
                entry.model.close()
                raise
            return self._route(plan, served, same_files)

    def _in_place(self, old: ServedModel, new: ServedModel) -> bool:
        """Whether ``new`` serves ``old``'s version as ``old`` did but its instance groups: its config (as GET config
        shows it) the same but those, its files unchanged (the caller knows). tritonserver 2.51 updates such a model
        in place, as it leaves alone a version whose config changed in its version policy, comments or layout: its
        statistics count on (helper-283: polystack's started again at 0 each time, where only the Python backend's
        instances were kept)."""

        def shown(s: ServedModel) -> dict[str, Any]:
            sequence = s.sequencer.policy if s.sequencer is not None else None
            config = model_config.render(s.entry, s.batcher, self.plane.instances_of(s), s.additions, sequence)
            config.pop("instance_group", None)
            return config

        # (the record's digest is the folder's, its config's text in it: the files beside it are the caller's)
        return old.entry.record.format == new.entry.record.format and shown(old) == shown(new)

    def _build(self, plan: LoadPlan) -> LoadedEntry:
        """Load (and warm up) what ``plan`` says, routing nothing to it yet; a failure is tried again
        ``load_retries`` times (unless the server drains meanwhile)."""
        plane = self.plane
        record = plan.record

        def warm_up(entry: LoadedEntry) -> None:
            warmup.run(entry.model, plan.additions.warmup, f"{record.name}:{record.version}", lambda: plane.draining)

        for attempt in range(plane.load_retries + 1):  # as Triton tries CreateModel again, from scratch
            try:
                # the slow part: other loads run meanwhile; what the model's code asks for here, this build waits for
                with hosting.hosted_by(plane), plane.loader.let_go(), loader.building(record.name):
                    return plane.engine.build(record.ref, plan.spec, warm_up if plan.additions.warmup else None)
            except PolystackError as e:
                if attempt == plane.load_retries or plane.draining:
                    raise
                log.warning(
                    "load failed; trying again (--model-load-retry-count)",
                    extra={"model": record.name, "version": record.version, "retry": attempt + 1,
                           "of": plane.load_retries, "error": e.message},
                )  # fmt: skip
        raise AssertionError("unreachable")

    @contextlib.contextmanager
    def _loading_versions(self, plans: Sequence[LoadPlan]) -> Iterator[None]:
        """While a load builds these versions and until it routes to them (or fails), the index lists them
        ``LOADING`` (unless another instance of one serves), as Triton marks every version of a load."""
        plane = self.plane
        keys = {(p.record.name, p.record.version) for p in plans}
        plane.loading |= keys
        try:
            yield
        finally:
            plane.loading -= keys

    def _serving(self, plan: LoadPlan, entry: LoadedEntry) -> ServedModel:
        """What will serve ``entry``, built for ``plan``: its batcher or threads, started (which can fail)
        before anything routes to it, its instances registered with the rate limiter (which refuses those
        that need more than it has). The caller closes it if it does not route to it."""
        plane = self.plane
        registered: list[ModelInstances] = []

        def limits_for(count: int) -> ModelInstances | None:
            """Its ``count`` instances registered with the rate limiter (None: the server has none)."""
            if plane.rate_limiter is None:
                return None
            try:
                limits = plane.rate_limiter.register(
                    f"{entry.name}:{entry.version}", plan.additions.rules(count), _device_id(plan.spec.device)
                )
            except InvalidRequest as e:  # tritonserver 2.51's words, then what to do
                fix = (
                    "give the server more of it (--rate-limit-resource) or the model's instance_group less (its "
                    "rate_limiter)" if "is limited to" in e.message
                    else "mark the resource global in every model's config, or in none"
                )  # fmt: skip
                raise InvalidRequest(
                    f"version {entry.version} is at UNAVAILABLE state: Invalid argument: {e.message}; {fix}"
                ) from None
            registered.append(limits)
            return limits

        try:
            served = self._start(plan, entry, limits_for)
        except BaseException:
            for limits in registered:
                limits.limiter.unregister(limits)
            raise
        served.limits = registered[0] if registered else None
        served.hosted = plan.record.format == "python"
        # its config's transaction policy, or the one its Python model's own config gives where none was read
        served.decoupled = plan.additions.decoupled or bool(getattr(entry.model.inner, "decoupled", False))
        plane.any_decoupled = plane.any_decoupled or served.decoupled  # the hot path checks one flag until then
        return served

    def _start(
        self, plan: LoadPlan, entry: LoadedEntry, limits_for: Callable[[int], ModelInstances | None]
    ) -> ServedModel:
        plane = self.plane
        policy, instances = plan.policy, plan.instances
        # what clients see: a sequence model without its control and state tensors, and the dims its config
        # fixed, which requests are then checked against
        shown = plan.sequence.shown(entry.model.signature) if plan.sequence is not None else None
        if plan.additions.shapes or plan.additions.outputs:
            shown = plan.additions.seen(shown or entry.signature)
        if shown is not None:
            entry = dataclasses.replace(entry, shown=shown)
        if plan.sequence is not None:
            m = plane.metrics.model(entry.name, str(entry.version))

            def on_rows(items: int, requests: int, seconds: float, m: ModelMetrics = m) -> None:
                m.batch.observe(items)
                m.compute.observe(seconds)

            sequencer = SequenceBatcher(
                entry, plan.sequence, on_batch=on_rows, on_queue=m.queue.observe,
                limits=limits_for(plan.sequence.instances),
            )  # fmt: skip
            return ServedModel(entry, None, None, None, plan.additions, sequencer=sequencer)
        if policy is not None and (entry.signature.may_batch or not policy.merge):
            m = plane.metrics.model(entry.name, str(entry.version))

            def on_batch(items: int, requests: int, seconds: float, m: ModelMetrics = m) -> None:
                m.batch.observe(items)
                m.compute.observe(seconds)

            limits = limits_for(policy.instances)
            batcher = DynamicBatcher(
                entry, policy, on_batch=on_batch, on_queue=m.queue.observe, limits=limits,
                ragged_apart=plan.additions.ragged_apart,
            )  # fmt: skip
            return ServedModel(entry, batcher, None, None, plan.additions)
        if instances is not None or plane.rate_limiter is not None:  # under the rate limiter: threads of its own
            limits = limits_for(instances or plane.workers)
            executor = InferenceThreads(instances or plane.workers, f"infer-{entry.name}", plane.thread_initializer)
            served = ServedModel(entry, None, instances, executor, plan.additions)
            if limits is not None:  # calls handed to its threads that none started: work no instance asked to run

                def pending(served: ServedModel = served, limits: ModelInstances = limits) -> bool:
                    return len(served.waiting) > limits.staged

                limits.pending = pending
            return served
        return ServedModel(entry, None, None, None, plan.additions)

    def _route(self, plan: LoadPlan, served: ServedModel, same_files: bool | None = None) -> LoadedEntry:
        """Route to ``served`` (nothing here fails halfway); what it replaces drains and closes. ``same_files``:
        whether the version's files are those the served one was loaded from (a repository load compares the
        folder's; None: the records' digests, a store model's file; False for a load with a config of its own, which
        replaces the instance whatever the config, as Triton's does), so that a config changed in its instance groups
        alone updates the version in place (``_in_place``)."""
        plane = self.plane
        entry, spec, policy, batcher = served.entry, plan.spec, plan.policy, served.batcher
        key = (entry.name, entry.version)
        before = plane.served_versions.get(key)  # (this model's loads are one at a time: loader.claim)
        if same_files is None:
            same_files = before is not None and before.entry.record.digest == entry.record.digest
        if same_files and before is not None and self._in_place(before, served):
            entry.stats = before.entry.stats  # counting on, as Triton's model updated in place (it counts nothing yet)
        # before it is routed: every request it answers is in the version's figures and summaries
        plane.tally((entry.name, str(entry.version))).add(entry.stats)
        with plane.routing:  # a request resolved meanwhile sees the old entry with its batcher, or the new with its
            replaced = plane.engine.install(entry)
            old = plane.served_versions.get(key)
            plane.served_versions[key] = served
            plane.names_ever_served.add(entry.name)
            plane.served_changed()
        plane.metrics.serving(entry.name, str(entry.version))
        # read at scrape time, nothing per request: a batcher's queue, else the requests handed to the threads that
        # none has started, summed over this instance and those it replaced while requests still wait on them (which
        # the gauge does not keep alive)
        label = (entry.name, str(entry.version))
        queues = [q for q in plane.queues.get(label, []) if q() is not None]
        queues.append(weakref.ref(batcher or served.sequencer or served))
        plane.queues[label] = queues

        def queued(queues: list[weakref.ref[DynamicBatcher | SequenceBatcher | ServedModel]] = queues) -> int:
            return sum(held.depth for held in (q() for q in queues) if held is not None)

        plane.metrics.model(*label).depth.set_function(queued)
        # what the old instance holds runs on it, then it closes; a request that reaches it closed runs here. A Python
        # model that kept some of the old one's instances and removed others (an instance update in place) answers
        # its load once those it removed are finalized, as Triton's update does
        removes = bool(getattr(entry.model.inner, "removes_instances", False))
        self._retire([old] if old is not None else [], [replaced] if replaced is not None else [], wait=removes)
        plane.count_loaded()
        extra: dict[str, Any] = {
            "model": entry.name,
            "version": entry.version,
            "backend": spec.backend,
            "device": spec.device,
            "variant": spec.variant_id,  # None: the registered artifact itself
            "options": dict(spec.options),
            "batching": policy.to_dict() if batcher is not None and policy is not None else None,
            "sequence_batching": plan.sequence.strategy if plan.sequence is not None else None,
            "instances": plane.instances_of(served),
        }
        if plan.config is not None:
            # what the config made of it
            extra["config"] = model_config.render(
                entry, batcher, plane.instances_of(served), plan.additions, plan.sequence
            )
        log.info("model loaded", extra=extra)
        if plan.additions.response_cache and plane.response_cache is None:
            log.warning(
                "the model's config enables response_cache, but this server has no response cache, so every "
                "request runs the model; start the server with --cache-config local,size=BYTES",
                extra={"model": entry.name, "version": entry.version},
            )
        return entry

    def unload(self, name: str, dependents: bool = False) -> None:
        """Stop serving every version of ``name``; a model that is not loaded, or a name nothing knows, is left
        as it is, as Triton does (its clients unload to clean up, whatever is loaded). The ensembles whose steps run
        it stop too, as Triton unloads an ensemble whose model is gone. ``dependents`` (Triton's
        ``unload_dependents``): an ensemble's unload unloads the models it runs too, those no other
        ensemble runs."""
        plane = self.plane
        plane.loader.wait_for(name)  # a load of it building now finishes first
        plane.history.configured.pop(name, None)  # its next load reads the folder
        if name in plane.ensembles:
            models = plane.ensembles[name].ensemble.models
            plane.ensemble_loads.unload(name, "unloaded")
            for model in sorted(models) if dependents else ():
                used = any(model in p.ensemble.models for p in plane.ensembles.values())
                if not used and plane.serves(model):
                    self.unload(model, dependents)
            return
        if not plane.serves_model(name):
            log.info("unload of a model that is not loaded: nothing to do", extra={"model": name})
            return
        self.unload_versions(name)
        log.info("model unloaded", extra={"model": name})
        plane.ensemble_loads.check_users_of(name)

    def load_only(
        self, ref: ModelRef | str, config: str | None = None, agents: repository_agents.Agents = ()
    ) -> LoadedEntry | ensemble.Ensemble:
        """A repository load: the version it loads is the only one of its name served afterwards, as
        under Triton's default version policy (the latest version), so loads never pile up old ones. A
        model of a ``--model-repository`` loaded by name reads its folder again and loads the versions its
        version policy picks now (``load_from_repository``). A load without a config of a version already
        served as it would serve it changes nothing."""
        plane = self.plane
        ref = ModelRef.parse(ref) if isinstance(ref, str) else ref
        plane.in_turn(ref.name)
        if plane.repository is not None and ref.version is None:  # its folder in cloud storage as it is now
            plane.repository.refresh(ref.name)
        # a config's version_policy picks the versions the load serves, as Triton's does
        policy, config = model_config.split_field(config, "version_policy") if config is not None else (None, None)
        if policy is not None and ref.version is not None:
            raise InvalidRequest(
                f"the config sets version_policy, but the load names version {ref.version} of {ref.name!r}; load "
                "the model by name, or leave version_policy out"
            )
        if config is not None and policy is None and ref.version is None:
            # the config replaces the folder's (or start config's) whole, its policy too: Triton's default then
            policy = model_repository.DEFAULT_POLICY
        if plane.repository is not None and ref.version is None and plane.repository.owns(ref.name):
            kept = self._kept_config(ref.name) if config is None else None
            if kept is not None:
                return kept
            loaded = self.load_from_repository(ref.name, config, policy=policy)
            self._note_policy(ref.name, policy if config is not None else None)
            folder = plane.repository.folder(ref.name)
            if config is not None and folder is not None:  # what a load without one compares with
                plane.history.configured[ref.name] = Configured(model_repository.fingerprint(folder), config, policy)
            else:
                plane.history.configured.pop(ref.name, None)
            return loaded
        if ref.name in plane.ensembles:
            raise InvalidRequest(
                f"{ref.name!r} is an ensemble; load it by name from the model repository that holds its folder"
            )
        start = plane.model_configs.get(ref.name)
        versions = start.versions if start is not None and ref.version is None else ()
        known = sorted(r.version for r in plane.store.models.list(ref.name)) if policy is not None else []
        if known:  # a policy picks among the versions the store holds (none: the load says the model is unknown)
            versions = model_repository.pick_versions(policy, known, ref.name)
        entry = self._serve_only([ModelRef(ref.name, v) for v in versions] or [ref], config, agents)
        if ref.version is None:
            self._note_policy(ref.name, policy if config is not None else None)
        return entry

    def _kept_config(self, name: str) -> LoadedEntry | ensemble.Ensemble | None:
        """What a load without a config of repository model ``name`` serves when its last load had one and the
        folder is as it was then: the same, that config in force, as Triton's load finds the folder unmodified
        since and does nothing (tritonserver 2.51 kept serving the config's versions where polystack read the
        folder's config again: helper-108). None: the load reads the folder."""
        plane = self.plane
        assert plane.repository is not None
        then, folder = plane.history.configured.get(name), plane.repository.folder(name)
        if then is None or folder is None or model_repository.fingerprint(folder) != then.folder:
            return None
        served = plane.ensembles.get(name)
        if served is not None:
            return served.ensemble
        entries = [e for e in plane.engine.loaded() if e.name == name]
        if not entries:
            return None
        log.info(
            "load without a config: the folder is as it was at the load with one, which stays in force, as in Triton",
            extra={"model": name},
        )
        return max(entries, key=lambda e: e.version)

    def _note_policy(self, name: str, policy: Any) -> None:
        """The version_policy a load's config gave ``name`` (None: the load had no config, the folder's or start
        config's holds again), which GET config shows as written while it picks what is served."""
        plane = self.plane
        if policy is None:
            plane.history.policies.pop(name, None)
        else:
            plane.history.policies[name] = policy

    def load_from_repository(
        self,
        name: str,
        config: str | None,
        loading: frozenset[str] = frozenset(),
        failed: set[str] | None = None,
        policy: Any = None,
    ) -> LoadedEntry | ensemble.Ensemble:
        """Read the model's repository folder again and serve what it holds now (Triton's explicit load
        reads the repository): its versions and its config, which later loads without one use too. A load
        that fails leaves the start config as it was and takes back what reading the folder registered.
        An ensemble's folder loads the ensemble (with ``config`` in place of its own, when given), once the
        models it runs that are not served yet are loaded from their folders, as Triton loads them; those in
        ``failed`` (a poll's failures so far, which this adds to) are not tried again."""
        plane = self.plane
        assert plane.repository is not None
        plane.in_turn(name)
        agents = model_repository.FOLDER_AGENTS  # a load's config names its own, run on the folder in its place
        if config is not None:
            agents, config = model_config.split_field(config, "model_repository_agents")
        folder = plane.repository.folder(name)
        print_now = _files_print(model_repository.fingerprint(folder)) if folder is not None else None  # before read
        try:
            model, registered = plane.repository.read(plane.store, name, policy, agents, config)
        except PolystackError:
            if failed is not None:
                failed.add(name)
            raise
        if model.ensemble is not None:
            pipeline = model.ensemble
            if config is not None:  # the load's own agents ran on the folder in place of its config's
                pipeline = dataclasses.replace(
                    ensemble.read(config, name, pipeline.version), agents=model.ran, versions=pipeline.versions,
                    written_policy=pipeline.written_policy,
                )
                pipeline = ensemble.with_labels(pipeline, model.config.directory if model.config is not None else None)
                if folder is not None:  # (--model-namespacing) its steps run its repository's copies
                    pipeline = plane.repository.in_namespace(pipeline, folder)
            try:
                for other in sorted(pipeline.models - loading - {name}):
                    if failed is not None and other in failed:  # tried in this poll: the check says it is missing
                        continue
                    try:  # a model served already, but two repositories hold one of that name: which one is unknown
                        plane.repository.unique_folder(other)
                    except PolystackError as e:
                        raise e.prefixed(f"ensemble {name!r} runs {other!r}, whose load failed") from None
                    if not plane.model_ready(other, None) and plane.repository.owns(other):
                        try:
                            self.load_from_repository(other, None, loading | {name}, failed)
                        except PolystackError as e:
                            raise e.prefixed(f"ensemble {name!r} runs {other!r}, whose load failed") from None
                plane.ensemble_loads.load(pipeline, replace_model=True)
            except PolystackError:
                plane.history.unmet.add(name)  # a poll that changes models tries it again
                plane.history.unmet_runs[name] = frozenset(pipeline.models)
                if failed is not None:
                    failed.add(name)
                raise
            plane.history.unmet.discard(name)
            return pipeline
        plane.history.unmet.discard(name)  # its folder holds a model now: not an ensemble waiting for its models
        before = plane.model_configs.get(name)
        if model.config is not None:
            plane.model_configs[name] = model.config
        else:
            plane.model_configs.pop(name, None)
        try:
            # the load's own agents with its config; without one, the folder's config carries its own
            ran = model.ran if config is not None else ()
            then = self._loaded_prints.get(name)
            touched = _touched_versions(then, print_now, model.versions)  # modified since its last load: afresh
            entry = self._serve_only([ModelRef(name, v) for v in model.versions], config, ran, afresh=touched)
            self._loaded_prints[name] = print_now
            model_repository.settle(plane.store, registered)
            plane.repository.models.add(name)
            plane.history.unmet.discard(name)
            if name in plane.ensembles:  # the folder was an ensemble's: the model serves in its place
                plane.ensemble_loads.unload(name, "its folder holds a model now")
            return entry
        except BaseException:
            if failed is not None:
                failed.add(name)
            if before is not None:
                plane.model_configs[name] = before
            else:
                plane.model_configs.pop(name, None)
            served = [e.record for e in plane.engine.loaded() if e.name == name]  # as they were: all or none loaded
            model_repository.undo(plane.store, [r for r in registered if r.record not in served])
            raise

    def _serve_only(
        self,
        refs: list[ModelRef],
        config: str | None,
        agents: repository_agents.Agents = (),
        afresh: Collection[int] | None = None,
    ) -> LoadedEntry:
        """Serve these versions of one model, and no other version of it: all or none, as Triton loads a
        model's versions. Every version is planned (its config checked) and loaded before any is routed to;
        if one fails, those loaded close and what was served serves on. A version served as a plan would serve
        it again stays as it is, unless it is ``afresh`` (its files were modified since its last load; None: a
        load that did not compare them, a store model's)."""
        with self.plane.loader.claim(refs[0].name):  # its builds let other loads run: this model's wait for it
            return self._serve_versions(refs, config, agents, afresh)

    def _serve_versions(
        self,
        refs: list[ModelRef],
        config: str | None,
        agents: repository_agents.Agents,
        compared: Collection[int] | None,
    ) -> LoadedEntry:
        afresh = compared or ()
        plans = []
        for r in refs:
            try:
                plans.append(self.plan_load(r, config, agents))
            except PolystackError as e:
                e.at_version(r.version)  # the index lists the version that failed
                raise
        kept = [self._served_as(p) if config is None and p.record.version not in afresh else None for p in plans]
        changed = [plan for plan, same in zip(plans, kept, strict=True) if same is None]
        built: list[LoadedEntry] = []
        ready: list[ServedModel] = []
        with self._loading_versions(changed):
            try:
                for plan in changed:
                    with hosting.afresh(plan.record.version in afresh):
                        built.append(self._build(plan))
                for plan, loaded in zip(changed, built, strict=True):
                    ready.append(self._serving(plan, loaded))
            except BaseException as e:
                for served in ready:
                    served.close(wait=False)
                for loaded in built:
                    loaded.model.close()
                if isinstance(e, PolystackError):
                    e.at_version(changed[len(built) if len(built) < len(changed) else len(ready)].record.version)
                raise
            fresh = iter(zip(changed, ready, strict=True))
            # the files of a version not afresh are those it was served from (None: not compared, a store model's);
            # a load with a config of its own replaces the instance whatever the config, as Triton's does
            same_files = [
                False if config is not None else None if compared is None else p.record.version not in afresh
                for p in plans
            ]
            entries = [
                same or self._route(*next(fresh), same_files=files)
                for same, files in zip(kept, same_files, strict=True)
            ]
        for same in kept:
            if same is not None:  # Triton does nothing for a load of a model without changes
                log.info("model served as asked", extra={"model": same.name, "version": same.version})
        entry = entries[-1]
        serving = {e.version for e in entries}
        retired = self.unload_versions(entry.name, keep=serving)
        if retired:
            log.info("model unloaded", extra={"model": entry.name, "versions": retired, "serving": sorted(serving)})
        if changed or retired:
            self.plane.ensemble_loads.check_users_of(entry.name)
        return entry

    def _served_as(self, plan: LoadPlan) -> LoadedEntry | None:
        """The entry a plain load with ``plan`` would replace with one just like it (the same record, spec,
        batching and instances), or None. Triton does nothing for a load of a model without changes:
        its instance keeps serving and its statistics keep counting."""
        plane = self.plane
        record = plan.record
        served = plane.served_versions.get((record.name, record.version))
        if served is None or served.instances != plan.instances or served.entry.record != record:
            return None
        if served.additions != plan.additions:  # GET config would show the old ones
            return None
        if (served.sequencer.policy if served.sequencer else None) != plan.sequence:
            return None
        try:  # the engine routes to it still (not reloaded behind the server, nor by a load that failed late)
            if plane.engine.get(record.name, record.version) is not served.entry:
                return None
        except PolystackError:
            return None
        batching = plan.policy if plan.policy is not None and served.entry.signature.may_batch else None
        if served.entry.spec != plan.spec or (served.batcher.policy if served.batcher else None) != batching:
            return None
        return served.entry

    def unload_versions(self, name: str, keep: Collection[int] = ()) -> list[int]:
        """Stop serving every loaded version of ``name`` but those in ``keep``; what they queued runs on
        (``_retire``)."""
        plane = self.plane
        versions = sorted({e.version for e in plane.engine.loaded() if e.name == name and e.version not in keep})
        # routing stops first: a request arriving now is 404/503, never run unbatched on a closing entry
        entries = [e for v in versions for e in plane.engine.detach(ModelRef(name, v))]
        served = plane.served_versions
        retired = [served.pop(k) for k in list(served) if k[0] == name and k[1] not in keep]
        plane.history.stopped.update((name, v) for v in versions)
        plane.served_changed()
        plane.count_loaded()
        self._retire(retired, entries)
        return versions

    def _retire(self, served: list[ServedModel], entries: list[LoadedEntry], wait: bool = False) -> None:
        """Close what stopped being served once what it holds has run (its batcher's queue, its own
        instances' and the shared threads' requests; up to 30 s), on a thread of its own: a load or unload
        answers once routing has changed, as Triton's do, and one model's drain never holds up another's.
        ``wait``: here, before the load answers (an instance update in place)."""
        plane = self.plane
        if not served and not entries:
            return

        def run() -> None:
            deadline = time.monotonic() + _UNLOAD_DRAIN_S
            try:
                for s in served:
                    while s.pins and time.monotonic() < deadline:  # ensemble requests that will run a step on it
                        time.sleep(0.005)
                    with _logged(s.entry):
                        s.close(wait=False)  # a batcher runs its queue here (within its own 30 s)
                    while s.pending and time.monotonic() < deadline and not plane.stopping.is_set():
                        time.sleep(0.005)  # the executes running on its threads
                    finish_streams(s, deadline, plane.stopping)
                    tally = plane.tallies.get((s.entry.name, str(s.entry.version)))
                    # its figures are final: what Triton's names count on from; unless what replaced it in place
                    # counts on in them (``_in_place``)
                    counting = any(o.entry.stats is s.entry.stats for o in list(plane.served_versions.values()))
                    if tally is not None and not counting:
                        tally.fold(s.entry.stats)
                    if plane.response_cache is not None:  # nothing routes to it: its answers only take room now
                        plane.response_cache.forget(s.load)
                for entry in entries:
                    with _logged(entry):
                        entry.model.close()  # once the calls running on it return; later ones are refused
                self._forget_metrics(entries)
            finally:
                with self._retiring_lock:
                    self._retiring.discard(threading.current_thread())

        if wait:
            run()
            return
        thread = threading.Thread(target=run, name="retire", daemon=True)
        with self._retiring_lock:
            self._retiring.add(thread)
        thread.start()

    def _forget_metrics(self, entries: list[LoadedEntry]) -> None:
        """Take versions no longer served off /metrics (and forget their typical compute time); on the
        loader, after the loads of its model building now, so that a version loaded again keeps its series."""
        plane = self.plane

        def forget() -> None:
            for e in entries:
                plane.loader.wait_for(e.name)  # a load of it building now may serve it again
                if (e.name, e.version) not in plane.served_versions:
                    plane.typical_s.pop((e.name, e.version), None)
                    plane.queues.pop((e.name, str(e.version)), None)
                    if not plane.serves_version(e.name, e.version):  # an ensemble under the name keeps its series
                        plane.metrics.retire(e.name, str(e.version))
                        plane.tallies.pop((e.name, str(e.version)), None)
                if not any(k[0] == e.name for k in plane.served_versions) and e.name not in plane.ensembles:
                    plane.metrics.forget_name(e.name)

        with contextlib.suppress(RuntimeError):  # the server is stopping: /metrics goes with it
            plane.loader.submit(forget)

    def wait_retired(self, timeout_s: float = _UNLOAD_DRAIN_S) -> bool:
        """Wait until what loads and unloads replaced has closed (and left /metrics); whether it has."""
        deadline = time.monotonic() + timeout_s
        with self._retiring_lock:
            retiring = list(self._retiring)
        for thread in retiring:
            thread.join(max(0.0, deadline - time.monotonic()))
        with contextlib.suppress(RuntimeError, TimeoutError):  # stopping, or a load still runs there
            self.plane.loader.wait_idle(max(0.0, deadline - time.monotonic()))
        return not any(t.is_alive() for t in retiring)
