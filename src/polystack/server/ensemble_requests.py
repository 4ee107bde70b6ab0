"""An ensemble's requests on the data plane: its steps run as requests of the models served, which it holds.

``EnsembleRequests.infer`` runs one request of an ensemble (``ensemble.run`` schedules its steps, or
``ensemble.stream`` where a step is decoupled), each step a request of the model (or nested ensemble) it runs,
through the plane as a client's would be (``DataPlane.infer_model``): its statistics, tracing, the response cache
and shared memory are the ensemble's own. The models its steps run are those served when it starts, held until it
ends (``pin``), as Triton's ensembles hold their models' handles. ``stateful``, ``decoupled_steps`` and the output
labels look through what a request holds, else what is served now; an ensemble's load asks them too
(``ensemble_loads.EnsembleLoads.check``).

The plane holds one (``DataPlane.ensemble_requests``) and offers it what a request of a model uses: ``served_model``,
``served_ensemble``, ``infer_model``, ``stream_model``, ``streamed``, the shared memory regions, the cache key.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncGenerator, Coroutine, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from polystack.batching.sequence import SEQUENCE_KEYS
from polystack.errors import InvalidTensor, ModelNotFound, ModelNotReady, NotFound, PolystackError, Unavailable
from polystack.labels import labels_of
from polystack.protocol import classification
from polystack.protocol.wire import InferRequest, InferResponse, RequestedOutput
from polystack.server import ensemble, status
from polystack.server.decoupled import ResponseStream, Streamed
from polystack.server.served import Pins, ServedEnsemble, ServedModel, unpin
from polystack.server.shared_memory import Region
from polystack.server.tracing import Carrier, Front
from polystack.stats import Outcome
from polystack.types import TensorSpec

if TYPE_CHECKING:
    from polystack.server.dataplane import DataPlane


def _sequence_parameters(request: InferRequest) -> tuple[tuple[str, bool | int | str], ...]:
    """An ensemble's answer's parameters, as Triton's ensembles answer: the request's sequence ID and flags, 0 and
    false where it sent none (an ID past int64 as gRPC's int64_param carries it, wrapped)."""
    given = request.parameters or {}
    sequence_id = given.get("sequence_id", 0)
    if isinstance(sequence_id, bool) or not isinstance(sequence_id, int | str):
        sequence_id = 0
    if isinstance(sequence_id, int) and sequence_id >= 1 << 63:
        sequence_id -= 1 << 64
    flags = [(k, given.get(k) is True) for k in ("sequence_start", "sequence_end")]
    return (("sequence_id", sequence_id), *flags)


class EnsembleRequests:
    """The requests of the ensembles ``plane`` serves (``plane.ensembles``), run through its models' requests."""

    def __init__(self, plane: DataPlane) -> None:
        self.plane = plane

    def stream(
        self,
        name: str,
        version: str | None,
        request: InferRequest,
        loop: asyncio.AbstractEventLoop,
        carrier: Carrier | None,
        compute: list[int] | None,
        pinned: tuple[ServedEnsemble, Pins] | None,
        front: Front | None = None,
    ) -> AsyncGenerator[Streamed, None]:
        """A request of an ensemble with decoupled steps (``infer`` sending to a ``ResponseStream``); one
        whose client went away is cancelled, its steps' requests with it."""
        served = pinned[0] if pinned is not None else self.plane.served_ensemble(name, version)
        if served is None:
            raise ModelNotFound(f"Request for unknown model: {name!r} is not found")

        def run(stream: ResponseStream) -> Coroutine[Any, Any, InferResponse]:
            return self.infer(name, version, request, loop, carrier, compute, pinned, front, responses=stream)

        shown, parameters = str(served.ensemble.version), _sequence_parameters(request)
        return self.plane.streamed(run, name, shown, request.id, loop, cancel=True, parameters=parameters)

    async def infer(
        self,
        name: str,
        version: str | None,
        request: InferRequest,
        loop: asyncio.AbstractEventLoop | None,
        carrier: Carrier | None,
        compute: list[int] | None,
        pinned: tuple[ServedEnsemble, Pins] | None = None,
        front: Front | None = None,
        responses: ResponseStream | None = None,
    ) -> InferResponse:
        """Run one request of an ensemble: its steps, each a request of the model it runs (``ensemble.run``)
        carrying this one's id and parameters (its timeout and priority), counted in the ensemble's statistics
        with the steps' compute times summed, as Triton counts an ensemble's. The models its steps run (nested
        ensembles' too) are those served when it starts, held until it ends (``pin``), as Triton's ensembles
        hold them: an unload or a reload of one meanwhile lets it finish on them. ``pinned``: a nested
        ensemble's, and what the outermost one holds. An ensemble with decoupled steps sends its responses to
        ``responses`` (``ensemble.stream``), and the response returned has no outputs."""
        started = time.perf_counter()
        self.plane.in_flight.enter_pipeline()
        label = (name, "")
        outcome: Outcome | None = None
        held: dict[str, Region] = {}
        pins: Pins | None = None  # what this request holds (the outermost ensemble's), released at its end
        try:
            if pinned is not None:
                served, holding = pinned
            else:
                resolved = self.plane.served_ensemble(name, version)
                if resolved is None:  # unloaded since DataPlane.infer looked
                    raise ModelNotFound(f"Request for unknown model: {name!r} is not found")
                served, holding = resolved, self.pin(resolved.ensemble)
                pins = holding
            pipeline = served.ensemble
            label = (name, str(pipeline.version))
            outcome = Outcome(served.stats, held=True)  # its success counts once its answer is ready
            # its steps running sequence models take the sequence's parameters (looked up only for a request with some)
            stateful = self.stateful(pipeline, pins=holding) if request.parameters else set()
            if request.parameters and not stateful:
                self.plane.ignore_sequences(name, request.parameters)
            plain = {k: v for k, v in request.parameters.items() if k not in SEQUENCE_KEYS} if stateful else None
            pipeline.signature.validate_inputs(request.inputs, pipeline.max_batch_size, name)  # 0: no batch dimension
            asked = request.output_names or pipeline.signature.output_names
            unknown = [o for o in asked if o not in pipeline.signature.output_names]
            if unknown:
                raise InvalidTensor(  # Triton's words, then what it gives
                    f"unexpected inference output {unknown[0]!r} for model {name!r}; the ensemble gives "
                    f"{', '.join(pipeline.signature.output_names)}"
                )
            classes = request.classifications if request.outputs is not None else None
            if classes:
                classification.check_outputs(pipeline.signature, classes)
            if request.outputs and self.plane.shared_memory is not None:
                held = self.plane.hold_regions(request)  # a region that is gone is refused before the steps run for it
            steps: list[int] = []  # the compute time of every model run for it, nested ensembles' included

            def step_request(
                step: ensemble.Step, given: dict[str, np.ndarray], givers: dict[str, bool]
            ) -> tuple[ServedModel | ServedEnsemble, InferRequest, bool]:
                """What a step runs on, its request, and whether its model batches."""
                parameters = request.parameters
                if plain is not None and step.model not in stateful:  # a sequence's parameters reach its models only
                    parameters = plain
                target = holding[(step.model, step.asked)]
                takes, batches = self._takes(target)
                given = {
                    n: ensemble.fit(a, takes[n], givers[n], batches) if n in takes else a for n, a in given.items()
                }
                sub = InferRequest(
                    given, request.id, [RequestedOutput(m) for m, _ in step.outputs], parameters, partial=True,
                    model_parameters=request.model_parameters,
                )
                return target, sub, batches

            async def step_run(
                index: int, step: ensemble.Step, given: dict[str, np.ndarray], givers: dict[str, bool]
            ) -> tuple[dict[str, np.ndarray], bool]:
                target, sub, batches = step_request(step, given, givers)
                if isinstance(target, ServedEnsemble):
                    answer = await self.infer(step.model, step.asked, sub, loop, None, steps, (target, holding))
                else:
                    answer = await self.plane.infer_model(target, step.model, step.asked, sub, loop, None, steps)
                return answer.outputs, batches

            async def step_stream(
                index: int, step: ensemble.Step, given: dict[str, np.ndarray], givers: dict[str, bool]
            ) -> AsyncGenerator[tuple[dict[str, np.ndarray], bool, bool], None]:
                """A decoupled step: its responses' outputs as they come, each with whether it was sent final (an
                error response fails the request)."""
                target, sub, batches = step_request(step, given, givers)
                here = loop or asyncio.get_running_loop()
                if isinstance(target, ServedEnsemble):
                    answers = self.stream(step.model, step.asked, sub, here, None, steps, (target, holding))
                else:
                    answers = self.plane.stream_model(target, step.model, step.asked, sub, here, None, steps)
                try:
                    async for streamed in answers:
                        if streamed.error is not None:
                            try:
                                raise streamed.error
                            finally:  # its traceback holds this frame: naming it made a cycle, which kept the
                                del streamed  # step's model (target) until Python's cycle collector ran
                        if streamed.response is not None:
                            yield streamed.response.outputs, batches, streamed.final
                finally:
                    await answers.aclose()

            items = 1
            if pipeline.max_batch_size:
                items = next((int(a.shape[0]) for a in request.inputs.values() if a.ndim), 1)
            m = self.plane.metrics.model(*label)
            cache = self.plane.response_cache if pipeline.response_cache else None
            t0 = time.perf_counter_ns()
            owner = served.load  # a reload of a model it runs changes it meanwhile: what runs now is kept under this
            # whether a step reads the request's parameters (a hosted model does)
            reads = any(isinstance(t, ServedModel) and t.hosted for t in holding.values())
            key = await self.plane.cache_key(cache, owner, request, reads, loop) if cache is not None else None
            found = cache.get(key) if cache is not None and key is not None else None
            looked = time.perf_counter_ns() - t0
            if found is not None:  # as Triton counts a hit: no inference or execution
                served.stats.cache_hit(looked)
                m.cache_hits.inc()
                m.cache_hit_seconds.inc(looked / 1e9)
                result = {output: found[output] for output in asked}
            else:
                trace = self.plane.tracing.span(
                    name, pipeline.version, request.id or "", carrier, front, pinned is not None, ensemble=True,
                    called=bool(request.callers), parent=request.trace,
                )  # fmt: skip
                with trace as span:
                    if span is not None:
                        span.inputs(request.inputs)
                    if responses is None:
                        result = await ensemble.run(pipeline, request.inputs, asked, step_run)
                        if span is not None:
                            span.outputs(result)
                    else:
                        decoupled = self.decoupled_steps(pipeline, pins=holding)
                        ended = False  # a last answer goes with the final flag, as Triton's ensemble sends it
                        async for result, final in ensemble.stream(
                            pipeline, request.inputs, asked, step_run, step_stream, decoupled
                        ):
                            if span is not None:
                                span.outputs(result)
                            responses.send(result, final)
                            ended = final
                        if not ended:
                            responses.send(None, True)
                        result = {}
                if cache is not None and key is not None:
                    t1 = time.perf_counter_ns()
                    if self.plane.ensembles.get(name) is served:  # kept for what serves the name still
                        cache.put(key, owner, result)
                    missed = looked + time.perf_counter_ns() - t1
                    served.stats.add("cache_miss", missed)
                    m.cache_misses.inc()
                    m.cache_miss_seconds.inc(missed / 1e9)
                served.stats.executed(items, sum(steps))
                m.compute.observe(sum(steps) / 1e9)
            if classes:
                labels = self._labels(pipeline, holding)
                result = classification.classify(result, classes, pipeline.max_batch_size > 0, labels)
            outcome.settle("success", int((time.perf_counter() - started) * 1e9))
            if compute is not None:
                compute.extend(steps)
        except BaseException as e:
            self.plane.release_regions(held)
            if outcome is not None:
                outcome.abandon(int((time.perf_counter() - started) * 1e9))
            self.plane.metrics.failed(*label, status.reason(e))
            raise
        finally:
            if pins is not None:
                unpin(pins)
            self.plane.in_flight.leave_pipeline()
        in_shared_memory = self.plane.write_shared(result, request, label, outcome, started, held)
        outcome.confirm()
        m.success.inc()
        m.request.observe(time.perf_counter() - started)
        return InferResponse(
            name, str(pipeline.version), result, request.id, in_shared_memory, parameters=_sequence_parameters(request)
        )

    def pin(self, pipeline: ensemble.Ensemble) -> Pins:
        """What each step of ``pipeline`` (and of the ensembles it runs) runs, as served now, by (model, version),
        each model held (``ServedModel.pins``) until the request ends: Triton's ensembles take their models'
        handles when a request starts. A model not served (or a version not ready) is Unavailable: the ensemble
        cannot run without it (it is unloaded with its model, soon), and nothing stays held."""
        pins: Pins = {}
        try:
            self._pin_into(pipeline, pins)
        except BaseException as e:
            unpin(pins)
            if isinstance(e, (NotFound, ModelNotReady)):
                raise Unavailable(f"{e.message}; the ensemble cannot run without it") from None
            raise
        return pins

    def _pin_into(self, pipeline: ensemble.Ensemble, pins: Pins) -> None:
        """``pin``'s walk: each (model, version) is looked at once, however often it runs."""
        for step in pipeline.steps:
            key = (step.model, step.asked)
            if key in pins:
                continue
            # as DataPlane.infer resolves the name: an ensemble's first
            nested = self.plane.served_ensemble(*key, step=True)
            target: ServedModel | ServedEnsemble = (
                nested if nested is not None else self.plane.served_model(*key, step=True)
            )
            if isinstance(target, ServedModel) and all(target is not m for m in pins.values()):
                target.pins += 1
            pins[key] = target
            if isinstance(target, ServedEnsemble):
                self._pin_into(target.ensemble, pins)

    def _step_target(self, step: ensemble.Step, pins: Pins | None) -> ServedModel | ServedEnsemble | None:
        """What ``step`` runs: what a request holds for it, else what serves it now (None: nothing)."""
        held = pins.get((step.model, step.asked)) if pins is not None else None
        if held is not None:
            return held
        nested = self.plane.ensembles.get(step.model)
        if nested is not None:
            return nested
        try:
            return self.plane.served_model(step.model, step.asked, step=True)
        except PolystackError:
            return None

    def _takes(self, target: ServedModel | ServedEnsemble) -> tuple[dict[str, TensorSpec], bool]:
        """The inputs of the model (or ensemble) an ensemble's step runs, by name, in the shapes it takes them, and
        whether it batches (its GET config's max_batch_size is above 0)."""
        if isinstance(target, ServedEnsemble):
            sig, batches = target.ensemble.signature, target.ensemble.max_batch_size > 0
        else:
            sig, batches = target.entry.signature, self.plane.max_batch(target) > 0
        return {t.name: t for t in (*sig.inputs, *sig.optional)}, batches

    def stateful(self, pipeline: ensemble.Ensemble, depth: int = 0, pins: Pins | None = None) -> set[str]:
        """The steps' models (and nested ensembles) that run sequence models, which take a request's sequence
        parameters, as Triton's ensembles pass a correlation ID and its flags to their steps; what a request
        holds (``pins``), else what is served now."""
        found: set[str] = set()
        for step in pipeline.steps:
            target = self._step_target(step, pins)
            if isinstance(target, ServedEnsemble):
                if depth < ensemble.MAX_DEPTH and self.stateful(target.ensemble, depth + 1, pins):
                    found.add(step.model)
            elif target is not None and target.sequencer is not None:  # None: the step fails saying so when it runs
                found.add(step.model)
        return found

    def decoupled_steps(self, pipeline: ensemble.Ensemble, depth: int = 0, pins: Pins | None = None) -> set[int]:
        """The steps that answer any number of times: those running a decoupled model, or an ensemble that has
        such a step; what a request holds (``pins``), else what is served now."""
        found: set[int] = set()
        for i, step in enumerate(pipeline.steps):
            target = self._step_target(step, pins)
            if isinstance(target, ServedEnsemble):
                if depth < ensemble.MAX_DEPTH and self.decoupled_steps(target.ensemble, depth + 1, pins):
                    found.add(i)
            elif target is not None and target.decoupled:
                found.add(i)
        return found

    def _labels(self, pipeline: ensemble.Ensemble, pins: Pins | None = None) -> dict[str, Sequence[str]]:
        """The labels of the ensemble's outputs: those of the step model's output that gives each (what a request
        holds, ``pins``, else what is served now)."""
        found: dict[str, Sequence[str]] = {}
        for step in pipeline.steps:
            for model_tensor, tensor in step.outputs:
                if tensor not in pipeline.signature.output_names:
                    continue
                target, labels = self._step_target(step, pins), None
                if isinstance(target, ServedEnsemble):  # an ensemble's step: the labels of what gives that output
                    labels = self._labels(target.ensemble, pins).get(model_tensor)
                elif target is not None:  # a model gone: none
                    labels = labels_of(target.entry.record.settings).get(model_tensor)
                if labels:
                    found[tensor] = labels
        found.update(pipeline.labels)  # its own label files first, as Triton's classification reads them
        return found
