"""What the data plane serves: a model loaded with what runs its requests, an ensemble, and what a load would serve.

``ServedModel`` is one loaded version of a model with its batcher or threads, its rate limiter instances, its
decoupled requests' streams and the ensemble requests that hold it; ``ServedEnsemble`` an ensemble's version with
its statistics; ``LoadPlan`` what a load would serve before it is built; ``Pins`` what an ensemble request holds
for its steps (``ensemble_requests.py``). The plane (``dataplane.py``) keeps them by name and version.
"""

from __future__ import annotations

import itertools
import threading
import weakref
from dataclasses import dataclass, field

from polystack.batching import BatchPolicy, DynamicBatcher
from polystack.batching.rate_limiter import ModelInstances
from polystack.batching.sequence import SequenceBatcher, SequencePolicy
from polystack.engine import LoadedEntry, LoadSpec
from polystack.server import ensemble, model_config
from polystack.server.decoupled import ResponseStream
from polystack.server.inference_threads import InferenceThreads
from polystack.stats import ModelStats
from polystack.store import ModelRecord

_loads = itertools.count(1)  # numbers each model load, whose answers the response cache keeps apart


def load_number() -> int:
    """A new load's number: the response cache keeps the answers of each load apart."""
    return next(_loads)


@dataclass(frozen=True)
class LoadPlan:
    """What a load would serve (``ModelLoads.plan_load``)."""

    record: ModelRecord
    spec: LoadSpec
    policy: BatchPolicy | None
    instances: int | None  # an unbatched model's own threads (None: the shared pool)
    additions: model_config.Additions = field(default_factory=model_config.Additions)  # what its config adds
    config: str | None = None  # the Triton config it follows: the load's, else the one given at start
    sequence: SequencePolicy | None = None  # its config's sequence_batching (a stateful model)


@dataclass
class ServedModel:
    entry: LoadedEntry
    batcher: DynamicBatcher | None
    # unbatched with an instance count of its own: that many threads, one request each (None: the shared pool)
    instances: int | None = None
    executor: InferenceThreads | None = None
    additions: model_config.Additions = field(default_factory=model_config.Additions)
    pending: int = 0  # unbatched requests handed to a thread and not back yet (changed on the event loop only)
    # of those, the ids of the outcomes of the calls no thread started yet (added on the loop; dropped by the thread
    # that starts one, or on the loop when it is back or cancelled): the queue depth its metric shows
    waiting: set[int] = field(default_factory=set)
    load: int = field(default_factory=lambda: load_number())  # this load's number: its answers in the response cache
    sequencer: SequenceBatcher | None = None  # a sequence model's (its config's sequence_batching)
    # ensemble requests running that hold it for a step not run yet (on the event loop): an unload or a reload
    # closes it only once they are done, as Triton's ensembles hold their models' handles for a request's life
    pins: int = 0
    limits: ModelInstances | None = None  # its instances under the server's rate limiter (None: it has none)
    # its model reads its request's facts and may call other models back (a Python model, ``hosting``): it runs
    # as its request, and never on the event loop, which its calls need
    hosted: bool = False
    # its model sends any number of responses to a request, apart from its run (``decoupled.py``): read as a stream
    decoupled: bool = False
    # its decoupled requests' streams, kept while anything holds them (the model's sender, the client's reader): an
    # unload closes the model once each has had its final response, as Triton's (its response factories hold it)
    streams: weakref.WeakSet[ResponseStream] = field(default_factory=weakref.WeakSet)
    streams_lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def depth(self) -> int:
        """Its unbatched requests waiting for a thread (a batched model's wait in its batcher's queue)."""
        return len(self.waiting)

    def open_streams(self) -> list[ResponseStream]:
        """Its decoupled requests whose final response is still to come."""
        with self.streams_lock:
            return [s for s in self.streams if not s.closed]

    def close(self, wait: bool) -> None:
        """Stop taking work; what was handed over still runs, on this instance. Requests whose ``execute`` returned
        without the answer its code may never send (a Python model's sender) fail first, so that no thread stays
        held; those whose ``execute`` runs get their answer (``model_loads.finish_streams`` ends those left)."""
        closing = getattr(self.entry.model.inner, "closing", None)
        if closing is not None:
            closing()
        if self.batcher is not None:
            self.batcher.close(drain=True)
        if self.sequencer is not None:
            self.sequencer.close(drain=True)
        if self.executor is not None:
            self.executor.shutdown(wait=wait)
        if self.limits is not None:  # its needs stop counting once its instances still running are done
            self.limits.limiter.unregister(self.limits)
            # what serves it told the limiter how to see its queue (a closure over it): let go of it, or the two
            # hold each other and the model with them until Python's cycle collector runs (helper-236: +76 MB a
            # load of a model holding 80 MB)
            self.limits.pending = _nothing_pending


def _nothing_pending() -> bool:
    """A closed model's queue, as the rate limiter asks after it: nothing waits."""
    return False


@dataclass
class ServedEnsemble:
    """An ensemble served (``ensemble.py``): its steps run on the models served, each a request of their own;
    its statistics count its own requests, with its steps' compute times summed, as Triton's do."""

    ensemble: ensemble.Ensemble
    stats: ModelStats = field(default_factory=ModelStats)
    # its answers in the response cache: a new number when a model it runs is loaded again (they may change)
    load: int = field(default_factory=lambda: load_number())
    # its other versions, where its version_policy picks several (this one is the latest), each counted apart
    others: dict[int, ServedEnsemble] = field(default_factory=dict)

    def at(self, version: int) -> ServedEnsemble | None:
        """Its ``version`` (None: not served)."""
        return self if version == self.ensemble.version else self.others.get(version)

    @property
    def every(self) -> list[ServedEnsemble]:
        """Each version served, the oldest first."""
        return sorted([self, *self.others.values()], key=lambda s: s.ensemble.version)


# what an ensemble request holds (``EnsembleRequests.pin``): the model or ensemble each (step model, version) runs
Pins = dict[tuple[str, str | None], "ServedModel | ServedEnsemble"]


def unpin(pins: Pins) -> None:
    """Let go of the models an ensemble request holds (``EnsembleRequests.pin``): once each."""
    for model in {id(m): m for m in pins.values() if isinstance(m, ServedModel)}.values():
        model.pins -= 1
