"""The ensembles the data plane serves: loaded, checked against the models their steps run, unloaded.

``EnsembleLoads.load`` serves an ensemble (``ensemble.Ensemble``, read from its config) once ``check`` finds that it
fits the models served now: each step's tensors and batch sizes (``ensemble.check``), no ensemble reached again
through its steps (``refuse_cycle``), no sequence model in two steps, no response cache over decoupled or stateful
steps. A load or unload (a model's or an ensemble's) asks ``check_users_of`` to check the ensembles that run it
again, and those it no longer fits are unloaded, as Triton unloads them. ``check_planned`` checks ensembles
against the models a server plans to load elsewhere (Ray Serve's replicas), before they start.

The plane holds one (``DataPlane.ensemble_loads``); what it serves (``plane.ensembles``), its routing lock and the
series it keeps are the plane's, and a model's versions are loaded and unloaded there.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

from polystack import errors
from polystack.errors import InvalidRequest, NotFound, PolystackError, StepNotServed
from polystack.formats import fil
from polystack.server import ensemble
from polystack.server.served import ServedEnsemble, load_number
from polystack.store import ModelRef

if TYPE_CHECKING:
    from polystack.server.dataplane import DataPlane

log = logging.getLogger("polystack.server")


class EnsembleLoads:
    """Loads, checks and unloads of the ensembles ``plane`` serves (``plane.ensembles``)."""

    def __init__(self, plane: DataPlane) -> None:
        self.plane = plane

    def load(self, pipeline: ensemble.Ensemble, replace_model: bool = False) -> None:
        """Serve ``pipeline`` in place of what served its name, once it checks against the models it runs as
        they are served now (which must all be loaded); an ensemble loaded again as it was changes nothing.
        A model served under its name is refused, or unloaded once the ensemble checks (``replace_model``: its
        repository folder holds the ensemble now)."""
        name = pipeline.name
        self.plane.in_turn(name)
        model = self.plane.serves_model(name)
        if model and not replace_model:
            raise InvalidRequest(
                f"model {name!r} is served already, and is not an ensemble; give the ensemble a name of its own"
            )
        self.check(pipeline)
        if model:  # its folder holds an ensemble now: the model's versions stop, the ensemble serves
            self.plane.model_loads.unload_versions(name)
            log.info("model unloaded", extra={"model": name, "reason": "its folder holds an ensemble now"})
        with self.plane.routing:
            old = self.plane.ensembles.get(name)
            if old is not None and old.ensemble == pipeline:
                old.ensemble = dataclasses.replace(old.ensemble, written_policy=pipeline.written_policy)
                log.info("model served as asked", extra={"model": name, "version": pipeline.version})
                return
            others = {v: ServedEnsemble(dataclasses.replace(pipeline, version=v)) for v in pipeline.served_versions}
            others.pop(pipeline.version, None)
            self.plane.ensembles[name] = served = ServedEnsemble(pipeline, others=others)
            self.plane.served_changed()
        for each in served.every:
            label = (name, str(each.ensemble.version))
            self.plane.tally(label).add(each.stats)
            self.plane.metrics.serving(*label)
        for gone in old.every if old is not None else []:
            if self.plane.response_cache is not None:
                self.plane.response_cache.forget(gone.load)
            if gone.ensemble.version not in pipeline.served_versions:  # the old version's series go with it
                self.plane.metrics.retire(name, str(gone.ensemble.version))
                self.plane.tallies.pop((name, str(gone.ensemble.version)), None)
                # the index lists it unloaded, as a model's
                self.plane.history.stopped.add((name, gone.ensemble.version))
        self.plane.count_loaded()
        log.info(
            "model loaded",
            extra={"model": name, "version": pipeline.version, "versions": list(pipeline.served_versions),
                   "ensemble": [f"{s.model}" for s in pipeline.steps]},
        )  # fmt: skip
        if pipeline.response_cache and self.plane.response_cache is None:
            log.warning(
                "the ensemble's config enables response_cache, but this server has no response cache, so every "
                "request runs its steps; start the server with --cache-config local,size=BYTES",
                extra={"model": name, "version": pipeline.version},
            )
        self.check_users_of(name)  # the ensembles that run it: checked against what it is now

    def check(self, pipeline: ensemble.Ensemble) -> None:
        """``ensemble.check`` against the models served now, and no ensemble reached again through its steps."""
        self.refuse_cycle(pipeline.name, pipeline, [pipeline.name])

        def served(step: ensemble.Step) -> ensemble.Served:
            nested = self.plane.ensembles.get(step.model)
            # a model served under the name first: the ensemble it replaces (its folder's) goes right after
            model = self.plane.serves_model(step.model)
            if nested is not None and step.model != pipeline.name and not model:
                return ensemble.as_step(nested.ensemble, step)
            try:
                entry = self.plane.served_model(step.model, step.asked, step=True)
            except NotFound as e:
                words = e.message.removesuffix("; load it first")  # the engine's, said once
                text = (
                    f"the ensemble runs a model that is not served: {words}; load it first (or, at start, name it on "
                    "the command line or give it a folder in the repository)"
                )
                copies = self.plane.copies(step.model)
                if copies:  # (--model-namespacing) not in the ensemble's repository, and in two others
                    text = (
                        f"{len(copies)} repositories hold {step.model!r} ({', '.join(copies)}), and the ensemble's "
                        "holds none: name one of them in the ensemble's config, or give its repository a copy"
                    )
                if self.plane.repository is not None and self.plane.repository.folder(step.model) is None:
                    # a model no folder has: Triton's words first (tritonserver 2.51's); its readiness does not count it
                    triton = f"ensemble {pipeline.name} contains models that are not available or ambiguous"
                    raise StepNotServed(f"{triton}: {step.model}: {text}") from None
                raise InvalidRequest(text) from None
            configured = fil.as_configured(entry.entry.signature, entry.entry.record.settings.get("fil"))
            return ensemble.Served(configured, self.plane.max_batch(entry))

        ensemble.check(pipeline, served)
        stateful = self.plane.ensemble_requests.stateful(pipeline)
        twice = sorted(m for m in stateful if sum(step.model == m for step in pipeline.steps) > 1)
        if twice:
            raise InvalidRequest(
                f"ensemble {pipeline.name!r} runs sequence model {twice[0]!r} in two steps, which would share one "
                "sequence (the second step's START resets the first's state); run it in one step"
            )
        if pipeline.response_cache and self.plane.ensemble_requests.decoupled_steps(pipeline):  # Triton's words
            raise InvalidRequest(
                f"Response Cache does not currently support model {pipeline.name} with 'decoupled' transaction "
                "policy. Please disable the response cache."
            )
        if pipeline.response_cache and stateful:  # its answers depend on the sequences' state (Triton's rule)
            raise InvalidRequest(
                f"Response Cache does not currently support model {pipeline.name!r} with sequence batching "
                f"scheduler: its steps run {', '.join(map(repr, sorted(stateful)))}, whose answers depend on "
                "their sequences' state. Please disable the response cache"
            )

    def check_planned(self, pipelines: Mapping[str, ensemble.Ensemble], refs: Sequence[str]) -> None:
        """Refuse what loading ``pipelines`` would refuse once ``refs`` are loaded as planned, loading nothing:
        for servers whose models load elsewhere (Ray Serve replicas), so that the mistake is told before they
        start. The batch size a model takes is the one its plan gives it."""
        versions: dict[str, list[int]] = {}
        for ref in map(ModelRef.parse, refs):
            versions.setdefault(ref.name, []).append(ref.version or self.plane.store.get(ref).version)
        for name in ensemble.load_order(pipelines):
            pipeline = pipelines[name]

            def served(step: ensemble.Step, pipeline: ensemble.Ensemble = pipeline) -> ensemble.Served:
                nested = pipelines.get(step.model)
                if nested is not None and step.model != pipeline.name:
                    return ensemble.as_step(nested, step)
                served_versions = versions.get(step.model, [])
                version = step.version if step.version is not None else max(served_versions, default=None)
                if version is None or version not in served_versions:
                    raise InvalidRequest(
                        f"the ensemble runs {step.model}{'' if step.version is None else f':{step.version}'}, which "
                        "this server does not serve; serve it too"
                    )
                plan = self.plane.model_loads.plan_load(ModelRef(step.model, version), None)
                sig, spec = plan.additions.seen(plan.record.signature), plan.spec  # as its clients see it
                sig = fil.as_configured(sig, plan.record.settings.get("fil"))  # as its config gives it
                limit = spec.max_batch_size or 0
                if plan.policy is not None and not plan.policy.merge:  # max_batch_size 0: no row limit, as served
                    return ensemble.Served(sig, 0)
                if plan.policy is not None and sig.batched:
                    limit = min(plan.policy.max_batch_size, limit) if limit else plan.policy.max_batch_size
                return ensemble.Served(sig, limit if sig.batched else 0)

            try:
                self.refuse_cycle(name, pipeline, [name], pipelines)
                ensemble.check(pipeline, served)
            except PolystackError as e:
                raise errors.load_failed(name, e) from None

    def refuse_cycle(
        self,
        name: str,
        pipeline: ensemble.Ensemble,
        path: list[str],
        pipelines: Mapping[str, ensemble.Ensemble] | None = None,
    ) -> None:
        """No ensemble reached again through the steps of ``pipeline`` (those served, or ``pipelines``)."""
        for model in sorted(pipeline.models):
            if model == name:  # Triton's words (its CircularcyCheck: the first, "...", the last), then the whole way
                raise InvalidRequest(
                    f"circular dependency between ensembles: {path[0]} -> ... -> {path[-1]} -> {model}: "
                    f"{' -> '.join([*path, model])}"
                )
            nested = pipelines.get(model) if pipelines is not None else None
            if nested is None and model in self.plane.ensembles:
                nested = self.plane.ensembles[model].ensemble
            if nested is not None and len(path) <= ensemble.MAX_DEPTH:
                self.refuse_cycle(name, nested, [*path, model], pipelines)
            elif nested is not None:
                raise InvalidRequest(f"ensembles nest deeper than {ensemble.MAX_DEPTH}: {' -> '.join(path)}")

    def unload(self, name: str, why: str) -> None:
        """Stop serving ensemble ``name`` (every version), saying ``why`` in the log; its series leave /metrics
        unless it is loaded again meanwhile, and the ensembles that run it are checked again."""
        with self.plane.routing:
            served = self.plane.ensembles.pop(name, None)
            self.plane.served_changed()
        if served is None:
            return
        versions = [each.ensemble.version for each in served.every]
        for each in served.every:
            if self.plane.response_cache is not None:
                self.plane.response_cache.forget(each.load)
            self.plane.history.stopped.add((name, each.ensemble.version))
        self.plane.count_loaded()

        def forget() -> None:  # as a model's versions leave /metrics: on the loader, unless loaded again
            self.plane.loader.wait_for(name)  # (a load of it building now)
            for version in versions:
                if not self.plane.serves_version(name, version):  # as an ensemble, or a model now
                    self.plane.metrics.retire(name, str(version))
                    self.plane.tallies.pop((name, str(version)), None)
            if not self.plane.serves(name):
                self.plane.metrics.forget_name(name)

        with contextlib.suppress(RuntimeError):
            self.plane.loader.submit(forget)
        log.info(
            "model unloaded",
            extra={"model": name, "version": served.ensemble.version, "versions": versions, "reason": why},
        )
        self.check_users_of(name)

    def check_users_of(self, name: str) -> None:
        """After ``name`` was loaded again or unloaded: the ensembles whose steps run it are checked against it
        again, and those it no longer fits are unloaded (Triton unloads them too), saying why. The answers those
        it still fits keep in the response cache are dropped: the model may answer otherwise now."""
        for other, served in list(self.plane.ensembles.items()):
            if name not in served.ensemble.models or self.plane.ensembles.get(other) is not served:  # gone meanwhile
                continue
            try:
                self.check(served.ensemble)
                if self.plane.response_cache is not None:
                    for each in served.every if served.ensemble.response_cache else []:
                        old, each.load = each.load, load_number()
                        self.plane.response_cache.forget(old)
                    self.check_users_of(other)  # those that run this one: their answers too, cached or not
            except PolystackError as e:
                log.warning(
                    "an ensemble's model changed or is gone, and it no longer fits: the ensemble is unloaded; load "
                    "it again once its models fit",
                    extra={"model": other, "changed": name, "error": e.message},
                )
                self.unload(other, f"{name!r} changed")
                if self.plane.repository is not None and self.plane.repository.owns(other):
                    self.plane.history.unmet.add(other)
                    self.plane.history.unmet_runs[other] = frozenset(served.ensemble.models)
