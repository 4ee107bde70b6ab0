"""SequenceBatcher: Triton's sequence batcher, around a loaded model, for stateful models.

A sequence is the requests a client sends under one correlation ID (``sequence_id``), the first flagged
``sequence_start`` and the last ``sequence_end``. Its requests run one at a time and in the order they
came, on the state the sequence has kept so far: the model's *implicit state* (Triton's
``sequence_batching.state``: an output of each request fed back as an input of the next, kept here, never
seen by the client) and the *control inputs* the server sets on each request (START, END, READY,
CORRID). Requests of different sequences run together, one row each, in a batch of up to
``max_batch_size`` (with 0, one request per call and no batch dimension).

Which rows a batch holds follows Triton's two strategies, for runtimes that keep no state of their own
(polystack's: each call's state comes in through its inputs): ``direct`` lets at most ``slots``
sequences (``max_batch_size`` x instances) hold a place at once, and ``oldest`` at most
``max_candidate_sequences``; the others wait, with their requests, until a sequence ends or goes idle
(no request for ``idle_s``: Triton's ``max_sequence_idle_microseconds``). A batch runs the ready
sequences' oldest requests (those of one layout: rows must stack), at once, or after ``max_queue_delay_ms``
when fewer than a full (or preferred) batch are ready (direct waits only with a ``minimum_slot_utilization``,
as Triton's). Rows are never padded: a direct batch holds the sequences that have a request ready, each with
READY true. A START for a sequence that has not ended runs after what it queued, on the initial state (as
Triton's, which warns of the conflict); after its END is queued, a START begins a sequence of its own. As in
Triton's sequence batcher, a request's timeout bounds its sequence's wait for a slot (past it, every request
the sequence queued fails, UNAVAILABLE, and the sequence ends), and no longer applies once the sequence holds
one; a request cancelled before it ran ends its sequence (its other queued requests fail, CANCELLED). A draining
batcher (the server's SIGTERM) refuses new sequences (a START: UNAVAILABLE, in Triton's words) and runs on the
requests of those it holds, which end as ever (their END, or idle), as Triton's do during its exit timeout; a
closing one ends the sequences with nothing queued at once (no request will come to them), so that those waiting
for a slot run before it stops.

As in ``DynamicBatcher``, requests are validated alone before they queue, the model runs on worker
threads, a failing merged batch runs again one request at a time so that only the culprit fails (its
sequence keeps the state it had), and each loop is woken once per batch.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import itertools
import logging
import math
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from polystack.backends.base import Rescheduled
from polystack.backends.hosting import NO_FACTS, RequestFacts, answered, parameters_of, selected
from polystack.batching.batcher import BatchObserver, QueueObserver, _concat_rows, _deliver, _Outcome, _Pending
from polystack.batching.rate_limiter import ModelInstances
from polystack.errors import (
    BackendError,
    Cancelled,
    DeadlineExceeded,
    InvalidRequest,
    InvalidTensor,
    ModelClosed,
    PolystackError,
    ShuttingDown,
    Unavailable,
    Unsupported,
)
from polystack.protocol import wire
from polystack.stats import Outcome, ran_and_failed
from polystack.types import DType, Signature

log = logging.getLogger("polystack.batching")

KINDS = ("start", "end", "ready", "corrid")  # Triton's CONTROL_SEQUENCE_START, _END, _READY, _CORRID
STRATEGIES = ("direct", "oldest")
SequenceId = int | str


@dataclass(frozen=True)
class Control:
    """A control input: the server sets model input ``input`` on every request to ``true`` or ``false``
    (``kind`` start, end, ready: whether the request starts or ends its sequence, and that its row holds a
    request) or to the sequence's correlation ID (corrid)."""

    kind: str
    input: str
    dtype: DType
    false: Any = 0
    true: Any = 1


@dataclass(frozen=True)
class State:
    """Implicit state: model output ``output`` of each request of a sequence is its input ``input`` on the
    next; the first takes ``initial`` (one sequence's state, raw row-major bytes, a TYPE_STRING state's in the BYTES
    wire form; None: zeros, or empty strings)."""

    input: str
    output: str
    dtype: DType
    dims: tuple[int, ...]
    initial: bytes | None = None
    initial_name: str = ""  # Triton's initial_state name, shown again by GET config
    initial_file: str = ""  # the data_file it came from ("": zero_data)
    shown: bool = False  # the config lists ``output`` among its outputs: clients may ask for it
    initial_dims: tuple[int, ...] = ()  # the initial state's (its size where ``dims`` has -1; (): ``dims``)

    @property
    def variable(self) -> bool:
        """Its dims hold a -1: its size is what the model's state output last had (Triton's variable state)."""
        return -1 in self.dims

    def first(self, batched: bool) -> np.ndarray:
        """A sequence's first state: the initial one, or zeros (empty strings), a dimension of -1 being 1, as
        Triton starts a variable state."""
        dims = self.initial_dims or tuple(1 if d == -1 else d for d in self.dims)
        shape = ((1,) if batched else ()) + dims
        if self.dtype is DType.BYTES:
            if self.initial is None:
                return np.full(shape, b"", dtype=object)
            return wire.decode_bytes(self.input, shape, self.initial)
        if self.initial is None:
            return np.zeros(shape, self.dtype.numpy)
        return np.frombuffer(self.initial, self.dtype.numpy).reshape(shape).copy()


@dataclass(frozen=True)
class SequencePolicy:
    strategy: str = "direct"
    max_batch_size: int = 0  # rows per call, one per sequence (0: one request per call, no batch dimension)
    max_queue_delay_ms: float = 0.0
    idle_s: float = 1.0  # a sequence without a request for this long is ended (Triton's default: 1 s)
    controls: tuple[Control, ...] = ()
    states: tuple[State, ...] = ()
    instances: int = 1  # worker threads sharing the one loaded model
    preferred_batch_sizes: tuple[int, ...] = ()  # oldest: a batch leaves at once at these sizes
    max_candidate_sequences: int = 0  # oldest: sequences holding a place at once per instance (0: its rows)
    minimum_slot_utilization: float = 0.0  # direct: the share of slots ready before a batch leaves early
    preserve_ordering: bool = False  # oldest: shown again by GET config (answers go out as they finish)
    strategy_given: bool = True  # False: a config that named no strategy (direct then), whose GET config shows none
    # Triton's iterative sequences: a request without a correlation ID is a sequence of its own, and its model (a
    # Python model's ``set_release_flags``) may have a request run again, in a later batch, until it is done
    iterative: bool = False

    def __post_init__(self) -> None:
        if self.strategy not in STRATEGIES:
            raise InvalidRequest(f"sequence batching strategy {self.strategy!r} is not one of {', '.join(STRATEGIES)}")
        if self.max_batch_size < 0 or self.max_queue_delay_ms < 0 or self.idle_s <= 0:
            raise InvalidRequest("sequence batching needs max_batch_size >= 0, a queue delay >= 0 and an idle time > 0")
        if any(not 1 <= p <= max(self.max_batch_size, 1) for p in self.preferred_batch_sizes):
            raise InvalidRequest(f"preferred_batch_size must lie in 1..max_batch_size ({self.max_batch_size})")

    @property
    def rows(self) -> int:
        """Requests per call."""
        return max(self.max_batch_size, 1)

    @property
    def slots(self) -> int:
        """Sequences that may hold a place at once: per instance, a batch's rows, or for oldest the
        candidate sequences when given (as Triton counts its sequence slots)."""
        per = self.max_candidate_sequences if self.strategy == "oldest" and self.max_candidate_sequences else self.rows
        return per * self.instances

    def control(self, kind: str) -> Control | None:
        return next((c for c in self.controls if c.kind == kind), None)

    def hidden(self) -> tuple[set[str], set[str]]:
        """The model inputs and outputs the server sets and keeps, which clients neither send nor see."""
        return (
            {c.input for c in self.controls} | {s.input for s in self.states},
            {s.output for s in self.states if not s.shown},
        )

    def shown(self, signature: Signature) -> Signature:
        """``signature`` as clients see it: without the control and state tensors."""
        inputs, outputs = self.hidden()
        return Signature(
            tuple(t for t in signature.inputs if t.name not in inputs),
            tuple(t for t in signature.outputs if t.name not in outputs),
            tuple(t for t in signature.optional if t.name not in inputs),
        )


SEQUENCE_KEYS = ("sequence_id", "sequence_start", "sequence_end")  # Triton's sequence extension's parameters


@dataclass(frozen=True)
class Flags:
    """A request's place in its sequence: its correlation ID, and whether it starts or ends the sequence."""

    id: SequenceId
    start: bool = False
    end: bool = False


def flags_of(parameters: Mapping[str, Any]) -> Flags | None:
    """The sequence parameters of a request (Triton's ``sequence_id``, ``sequence_start``, ``sequence_end``);
    None when it has no correlation ID (0 and "" are none, as tritonclient sends them)."""
    wire.check_sequence_parameters(parameters)
    sid = parameters.get("sequence_id")
    if isinstance(sid, str) and len(sid) > 128:  # Triton's limit and words (helper-113)
        raise Unsupported(
            f"string correlation ID cannot be longer than 128 characters: the request's 'sequence_id' has {len(sid):,}"
        )
    if sid is None or sid == 0 or sid == "":
        return None
    return Flags(sid, bool(parameters.get("sequence_start")), bool(parameters.get("sequence_end")))


@dataclass(eq=False)
class _Request(_Pending):
    flags: Flags = field(default_factory=lambda: Flags(0))
    sequence: _Sequence | None = None  # the one it queued in (its ID may start another meanwhile)


@dataclass(eq=False)
class _Sequence:
    id: SequenceId
    requests: collections.deque[_Request] = field(default_factory=collections.deque)
    state: dict[str, np.ndarray] = field(default_factory=dict)
    placed: bool = False  # holds a slot (its requests may run); else waits in the backlog
    instance: int = 0  # the instance its slot is on, where a model keeps its sequences' state (``pinned``)
    busy: bool = False  # one of its requests is running
    ended: bool = False  # its END request came: a later request without START is refused
    last: float = field(default_factory=time.monotonic)  # when its last request came or finished


_SWEEP_EVERY_S = 0.05  # how often the workers look for idle sequences while others wait for a slot


class SequenceBatcher:
    def __init__(
        self,
        entry: Any,  # polystack.engine.LoadedEntry, whose signature is the one clients see (``policy.shown``)
        policy: SequencePolicy,
        *,
        on_batch: BatchObserver | None = None,
        on_queue: QueueObserver | None = None,
        limits: ModelInstances | None = None,
    ) -> None:
        self.entry = entry
        self._limits = limits  # its instances under the server's rate limiter (None: none)
        self._held_back = 0  # requests of batches waiting for the rate limiter's resources
        if limits is not None:  # work no instance asked to run yet: an instance that just ran may keep its turn
            limits.pending = lambda: bool(self._ready)
        self.model = entry.model  # validates the whole inputs, control and state tensors included
        # a model that takes a batch's requests apart, each with its facts (a Python model): one infer_apart call
        self._apart = bool(getattr(self.model, "runs_apart", False))
        self.signature = entry.signature
        self.policy = policy
        # such a model keeps its sequences' state in its instances (a Python model's own objects): as in Triton's
        # sequence batcher, a sequence's slot is on one instance, which runs all its requests, each worker running
        # one instance's sequences; a runtime whose state comes in through its inputs runs any sequence anywhere
        self.pinned = self._apart and policy.instances > 1
        self._placed_on = [0] * policy.instances  # sequences holding a slot on each instance (pinned)
        self.batched = policy.max_batch_size > 0
        self._initial = {s.input: s.first(self.batched) for s in policy.states}  # what a START request runs on
        self._variable = any(s.variable for s in policy.states)  # a state's size changes: batches stack by it too
        # direct waits for more only with a minimum_slot_utilization, as Triton's: its delay is ignored otherwise
        waits = policy.strategy == "oldest" or policy.minimum_slot_utilization > 0
        self.delay_s = policy.max_queue_delay_ms / 1000.0 if waits else 0.0
        self._hidden_outputs = policy.hidden()[1]
        corrid = policy.control("corrid")
        self._corrid_string = corrid is not None and corrid.dtype is DType.BYTES
        self._corrid_numeric = corrid is not None and not self._corrid_string
        self._sequences: dict[SequenceId, _Sequence] = {}  # by ID: the one its next request joins
        self._own_ids = itertools.count(-1, -1)  # an iterative sequence's own, for a request that has none (< 0)
        self._ready: dict[_Sequence, None] = {}  # placed, not busy, a request queued (insertion-ordered)
        self._backlog: collections.deque[_Sequence] = collections.deque()
        # sequences a cancellation ended (``_end``) that still queue the requests ahead of it: forgotten by ID,
        # they run those (and release their slot) unless a close without drain fails them first
        self._ending: set[_Sequence] = set()
        self._placed = 0
        self._queued = 0
        self._running = 0  # requests taken by the workers and not finished
        self._draining = False  # the server drains: no sequence starts, those held run on
        self._cut = False  # the drain's timeout passed: the sequences held ended (``cut``)
        self._swept = time.monotonic()
        self._layouts: dict[tuple[Any, ...], tuple[Any, ...]] = {}  # (name, dtype, shape) of each input -> key
        self._cond = threading.Condition()
        self._closed = False
        self._on_batch = on_batch
        self._on_queue = on_queue
        self._threads = [
            threading.Thread(target=self._run, args=(i,), name=f"sequences-{entry.name}-{i}", daemon=True)
            for i in range(policy.instances)
        ]
        for t in self._threads:
            t.start()

    # -- submitting ----------------------------------------------------------------------------
    async def infer_async(
        self,
        inputs: Mapping[str, np.ndarray],
        outputs: Sequence[str] | None,
        flags: Flags | None,
        timeout_s: float | None = None,
        loop: asyncio.AbstractEventLoop | None = None,
        timings: list[int] | None = None,
        outcome: Outcome | None = None,
        facts: RequestFacts = NO_FACTS,
    ) -> dict[str, np.ndarray]:
        """Queue one request of sequence ``flags`` and wait for its answer (see ``DynamicBatcher.infer_async``;
        ``facts``: what a model that runs requests apart sees of it).
        ``timeout_s`` bounds its sequence's wait for a slot, as Triton's: past it, every request the sequence
        queued fails and the sequence ends; once the sequence holds a slot, its requests run whatever their
        timeouts. A request cancelled before it ran ends its sequence too (its other queued requests fail)."""
        loop = loop or asyncio.get_running_loop()
        waiter: asyncio.Future[dict[str, np.ndarray]] = loop.create_future()
        outcome = outcome or Outcome(self.entry.stats)
        try:
            request = self._enqueue(inputs, outputs, flags, timeout_s, waiter, timings, outcome, facts)
        except ModelClosed:
            if not outcome.rerouted:
                outcome.settle("fail", 0)
            raise
        except InvalidRequest:
            outcome.settle("fail", 0)
            raise
        try:
            if request.deadline is None:
                return await waiter
            return await asyncio.wait_for(asyncio.shield(waiter), max(0.0, request.deadline - time.monotonic()))
        except asyncio.CancelledError:  # the caller went away: a request not taken yet ends its sequence
            self._end(request, None)
            request.outcome.abandon(int((time.monotonic() - request.enqueued) * 1e9))
            raise
        except TimeoutError:
            expired = DeadlineExceeded(  # Triton's words, then what happened and what to do
                f"timeout of the corresponding sequence has been expired: sequence {request.flags.id} waited "
                f"for a slot of model {self.entry.name!r} past the request's timeout; none of its requests ran, and "
                "it ended: start it again, with a longer timeout or under a lighter load"
            )
            if not self._end(request, expired):
                try:
                    return await waiter  # its sequence holds a slot: its requests run whatever their timeouts
                except asyncio.CancelledError:  # and a cancellation then ends the sequence, as before the timeout
                    self._end(request, None)
                    request.outcome.abandon(int((time.monotonic() - request.enqueued) * 1e9))
                    raise
            request.outcome.settle("fail", int((time.monotonic() - request.enqueued) * 1e9))
            raise expired from None
        finally:  # its error's traceback holds this frame: naming the future that holds the error made a cycle
            del waiter  # (as in DynamicBatcher.infer_async)

    def _end(self, request: _Request, expired: DeadlineExceeded | None) -> bool:
        """End the sequence of ``request``, which no worker took, as Triton's sequence batcher ends it: past the
        request's timeout while the sequence waits for a slot (``expired``), or with the request cancelled
        (``expired`` None). The requests that fail with it: all it queued, for a sequence waiting for a slot;
        the cancelled request and those queued after it, for one holding a slot (those before it run, as
        Triton's run the requests ahead of a cancelled one). Its ID is forgotten (a request without START is
        refused) and its slot goes on to the next sequence once nothing of it is left. False: nothing to end
        (the request was taken, or timed out in a sequence that holds a slot, where timeouts do not apply)."""
        with self._cond:
            sequence = request.sequence
            assert sequence is not None
            if request.taken or (expired is not None and sequence.placed):
                return False
            error: PolystackError = expired or Cancelled(
                f"request of sequence {request.flags.id} of model {self.entry.name!r} was cancelled before it "
                "ran, which ends its sequence, as Triton's sequence batcher ends it: start the sequence again"
            )
            queued = list(sequence.requests)
            kept = queued[: queued.index(request)] if sequence.placed and expired is None else []
            failed: list[_Outcome] = []
            for other in queued[len(kept) :]:
                other.taken = True
                if other is not request:
                    other.outcome.settle("fail", int((time.monotonic() - other.enqueued) * 1e9))
                    failed.append((other, None, error))
            self._queued -= len(queued) - len(kept)
            sequence.requests = collections.deque(kept)
            if kept:
                self._ending.add(sequence)
            if not kept:
                self._ready.pop(sequence, None)
            if self._sequences.get(sequence.id) is sequence:
                del self._sequences[sequence.id]
            if not sequence.busy and not kept:  # else what it runs still releases it (``_finish``)
                self._release(sequence)
        _deliver(failed)
        return True

    def _enqueue(
        self,
        inputs: Mapping[str, np.ndarray],
        outputs: Sequence[str] | None,
        flags: Flags | None,
        timeout_s: float | None,
        waiter: asyncio.Future[dict[str, np.ndarray]],
        timings: list[int] | None,
        outcome: Outcome,
        facts: RequestFacts = NO_FACTS,
    ) -> _Request:
        name = self.entry.name
        if flags is None and self.policy.iterative:  # a sequence of its own, its one request ending it
            flags = Flags(next(self._own_ids), start=True, end=True)
            # its model reads the sequence's own ID as the request's (``correlation_id()``), as Triton's scheduler
            # gives each its own (1, 2, ...: tritonserver 2.51), so that state kept by ID stays the sequence's
            facts = replace(facts, parameters={**facts.parameters, "sequence_id": -int(flags.id)})
        if flags is None:  # Triton's words, then what to do
            raise InvalidRequest(
                f"inference request to model {name!r} must specify a non-zero or non-empty correlation ID; "
                "send the sequence's ID as the 'sequence_id' parameter (tritonclient: sequence_id=)"
            )
        if self._corrid_numeric and isinstance(flags.id, str):  # Triton's words (newer releases check it), then
            # what to do
            control = self.policy.control("corrid")
            assert control is not None
            raise InvalidRequest(
                f"sequence batching control 'CORRID' data-type is 'BYTES', but model {name!r} expects "
                f"'{control.dtype.value}': it takes whole-number correlation IDs, not the string {flags.id[:64]!r}; "
                "send a whole number as 'sequence_id'"
            )
        if self._corrid_string and isinstance(flags.id, int):
            raise InvalidRequest(
                f"sequence batching control 'CORRID' data-type is 'UINT64', but model {name!r} expects 'BYTES': it "
                f"takes string correlation IDs, not {flags.id}; send a string as 'sequence_id'"
            )
        if self._corrid_numeric and isinstance(flags.id, int) and flags.id > 0:
            corrid = self.policy.control("corrid")
            assert corrid is not None
            limits = np.iinfo(corrid.dtype.numpy)
            if not limits.min <= flags.id <= limits.max:
                raise InvalidRequest(
                    f"sequence ID {flags.id} does not fit model {name!r}'s CORRID control ({corrid.dtype.value}); "
                    f"send one from 1 to {limits.max}"
                )
        if outputs:  # first, as Triton checks them before the inputs
            self.signature.check_outputs(outputs, self.entry.name)
        layout = tuple([(n, a.dtype, a.shape) for n, a in inputs.items()])
        key = self._layouts.get(layout)
        if key is None:  # validated once per layout, as DynamicBatcher does
            key = self._check_layout(inputs)
            if len(self._layouts) >= 256:  # shapes a client varies without end: stay bounded
                self._layouts.clear()
            self._layouts[layout] = key
        now = time.monotonic()
        deadline = None if timeout_s is None else now + timeout_s
        request = _Request(
            inputs, outputs, 1, key, deadline, outcome, now, None, waiter, timings=timings, facts=facts, flags=flags
        )
        with self._cond:
            if self._closed:
                raise ModelClosed(f"model {name!r} is shutting down; retry on another replica")
            if self._cut and not flags.start:
                raise ShuttingDown(
                    f"the server's drain ended before sequence {flags.id} of model {name!r} did (its timeout passed, or "
                    "a second signal came); it ended unfinished: start it again on another replica"
                )
            if self._draining and flags.start:  # Triton's words (its scheduler's, once its server stops)
                raise ShuttingDown(
                    f"Server is stopping, scheduler for model {name!r} has stopped accepting new inference "
                    "requests: it runs only the sequences it holds until they end; start this one on another replica"
                )
            sequence = self._sequences.get(flags.id)
            if sequence is not None and self._idle(sequence, now):
                self._release(sequence)
                sequence = None
            if flags.start and (sequence is None or sequence.ended):
                if sequence is not None and not sequence.busy and not sequence.requests:
                    self._release(sequence)  # nothing of it is left to run
                sequence = _Sequence(flags.id)  # an ID whose END is queued: a sequence of its own, after it
                self._sequences[flags.id] = sequence
                self._place(sequence)
            elif flags.start:  # Triton's words: its queued requests run first, in its slot, then this one anew
                log.warning(
                    f"sequence {flags.id} for model {name!r} has a conflict. The previous sequence did not end "
                    "before this sequence start. Previous sequence will be terminated early.",
                    extra={"model": name},
                )
            elif sequence is None or sequence.ended:
                raise InvalidRequest(
                    f"inference request for sequence {flags.id} to model {name!r} must specify the START flag on "
                    "the first request of the sequence; a sequence ends with its END request, or after "
                    f"{self.policy.idle_s * 1000:g} ms without one (max_sequence_idle_microseconds): start it again"
                )
            assert sequence is not None
            sequence.ended = flags.end
            sequence.last = now
            request.sequence = sequence
            sequence.requests.append(request)
            self._queued += 1
            if sequence.placed and not sequence.busy and len(sequence.requests) == 1:
                self._ready[sequence] = None
                self._wake()
        return request

    def _check_layout(self, inputs: Mapping[str, np.ndarray]) -> tuple[Any, ...]:
        """Raise unless ``inputs`` fit the model as one row; else the key of the requests they may run with (the
        same trailing shapes and datatypes: rows of one batch must stack)."""
        # its rows next (Triton says why only one); its max_batch_size for Triton's note on a shape refused
        self.signature.validate_inputs(inputs, self.policy.max_batch_size, self.entry.name)  # 0: no batch dimension
        if self.batched:
            rows = next((int(a.shape[0]) for a in inputs.values()), 1)
            if rows != 1:
                raise InvalidTensor(
                    f"inference request to model {self.entry.name!r} must specify batch-size 1 due to requirements "
                    f"of sequence batcher, not {rows}; send each row of a sequence as a request of its own"
                )
        return tuple((n, a.dtype.str, a.shape[1:]) for n, a in sorted(inputs.items()))

    # -- sequences (under the condition's lock) ---------------------------------------------------
    def _idle(self, sequence: _Sequence, now: float) -> bool:
        """Nothing of it runs or waits, and for ``idle_s`` nothing came (closed: no request will come)."""
        if sequence.busy or sequence.requests:
            return False
        return self._closed or now - sequence.last >= self.policy.idle_s

    def _place(self, sequence: _Sequence) -> None:
        """Give ``sequence`` a slot when one is free (with its first state), else a place in the backlog."""
        if self._placed >= self.policy.slots:
            self._backlog.append(sequence)
            return
        self._placed += 1
        sequence.placed = True
        if self.pinned:  # on the instance holding fewest (one has room: fewer than all its slots are held)
            sequence.instance = min(range(len(self._placed_on)), key=self._placed_on.__getitem__)
            self._placed_on[sequence.instance] += 1
        sequence.state = dict(self._initial)  # its START request runs on these; its state is its own after
        if sequence.requests and not sequence.busy:
            self._ready[sequence] = None

    def _release(self, sequence: _Sequence) -> None:
        """End ``sequence``: its slot goes to the oldest sequence waiting for one."""
        self._ending.discard(sequence)
        if self._sequences.get(sequence.id) is sequence:
            del self._sequences[sequence.id]
        self._ready.pop(sequence, None)
        if not sequence.placed:
            with contextlib.suppress(ValueError):
                self._backlog.remove(sequence)
            return
        sequence.placed = False
        sequence.state = {}
        self._placed -= 1
        if self.pinned:
            self._placed_on[sequence.instance] -= 1
        while self._backlog and self._placed < self.policy.slots:
            waiting = self._backlog.popleft()
            if waiting.requests or self._sequences.get(waiting.id) is waiting:  # else: nothing left of it
                self._place(waiting)
        self._cond.notify_all()

    def _sweep(self, now: float) -> None:
        """End the sequences idle for ``idle_s``: their slots go to those waiting, their state is dropped."""
        self._swept = now
        for sequence in [s for s in self._sequences.values() if self._idle(s, now)]:
            log.debug(
                "sequence ended: no request for max_sequence_idle_microseconds",
                extra={"model": self.entry.name, "sequence_id": sequence.id},
            )
            self._release(sequence)

    @property
    def depth(self) -> int:
        """Requests waiting to run, or in a batch waiting for the rate limiter (read when asked, as /metrics does)."""
        return self._queued + self._held_back

    @property
    def active(self) -> int:
        """Sequences started and not ended (those waiting for a slot included)."""
        return len(self._sequences)

    # -- the worker ----------------------------------------------------------------------------
    def _wake(self) -> None:
        """A sequence is ready: a worker takes it (pinned: each looks, as only its instance's worker may)."""
        if self.pinned:
            self._cond.notify_all()
        else:
            self._cond.notify()

    def _run(self, index: int) -> None:
        """Worker ``index``: batches of any sequence, or (pinned) of those whose slot is on instance ``index``."""
        instance = index if self.pinned else None
        while True:
            batch = self._next_batch(instance)
            if batch is None:
                return
            if not batch:
                continue
            try:
                if self._limits is None:
                    self._execute(batch, instance=instance)
                else:
                    self._execute_limited(batch, self._limits, instance)
            except BaseException as e:  # never let the worker die: the sequences would wait forever
                log.exception("sequence batch worker error", extra={"model": self.entry.name})
                error = BackendError(
                    f"model {self.entry.name!r} failed in its sequence batch worker ({type(e).__name__}: {e}); "
                    "the server log has the traceback"
                )
                for r, _ in batch:
                    r.outcome.settle("fail", int((time.monotonic() - r.enqueued) * 1e9))
                _deliver([(r, None, error) for r, _ in batch])
                self._finish([(r, s, None) for r, s in batch])

    def _execute_limited(
        self, batch: list[tuple[_Request, _Sequence]], limits: ModelInstances, instance: int | None
    ) -> None:
        """Triton's rate limiter: the instance waits for its resources (its requests counted in ``depth``
        meanwhile: in a slot, they run whatever their timeout, as in Triton), then runs ``batch``."""
        with self._cond:
            self._held_back += len(batch)
        waiting = True
        try:
            with limits.held(index=instance):  # the instance that runs it has its resources, as in Triton
                with self._cond:
                    self._held_back -= len(batch)
                waiting = False
                self._execute(batch, instance=instance)
        finally:
            if waiting:
                with self._cond:
                    self._held_back -= len(batch)

    def _stacks(self, sequence: _Sequence) -> tuple[Any, ...]:
        """What the rows a sequence's next request runs on must share with a batch's others to stack: its request's
        layout, and the shapes of its variable states (each sequence's own, as its model's outputs grew them)."""
        request = sequence.requests[0]
        if not self._variable:
            return request.key
        states = self._initial if request.flags.start else sequence.state
        return (request.key, *(states[s.input].shape if s.input in states else () for s in self.policy.states if s.variable))

    def _next_batch(self, instance: int | None) -> list[tuple[_Request, _Sequence]] | None:
        """The next batch to run: of any sequence ready, or of those whose slot is on ``instance``."""
        with self._cond:
            while True:
                now = time.monotonic()
                if self._sequences and (self._closed or now - self._swept >= self._sweep_every()):
                    self._sweep(now)
                wait: float | None = None
                mine = self._ready if instance is None else [s for s in self._ready if s.instance == instance]
                if mine:
                    heads = sorted(mine, key=lambda s: s.requests[0].enqueued)
                    first = self._stacks(heads[0])
                    ready = sum(1 for s in heads if self._stacks(s) == first)
                    wait = self._wait_for_more(ready, heads[0].requests[0].enqueued, now)
                    if wait <= 0 or self._closed:
                        break
                elif self._closed and self._backlog and not self._running:  # no slot will free: they fail
                    self._drop_backlog()
                    continue
                elif self._closed and not self._queued:
                    return None
                if self._sequences:  # idle ones end on time even when no request comes
                    wait = min(wait if wait is not None else math.inf, self._sweep_every())
                self._cond.wait(wait)
            key = self._stacks(heads[0])  # rows of one batch must stack: the oldest request's layout
            chosen = [s for s in heads if self._stacks(s) == key][: self.policy.rows]
            batch: list[tuple[_Request, _Sequence]] = []
            for sequence in chosen:
                request = sequence.requests.popleft()
                request.taken = True
                self._queued -= 1
                sequence.busy = True
                self._running += 1
                del self._ready[sequence]
                batch.append((request, sequence))
        return batch  # in a slot, a request runs whatever its timeout, as in Triton's sequence batcher

    def _wait_for_more(self, ready: int, oldest: float, now: float) -> float:
        """How long to wait for more sequences to have a request ready (<= 0: run now)."""
        p = self.policy
        if ready >= p.rows or ready in p.preferred_batch_sizes or not self.delay_s:
            return 0.0
        if p.minimum_slot_utilization and ready >= math.ceil(p.minimum_slot_utilization * p.rows):
            return 0.0
        return oldest + self.delay_s - now

    def _sweep_every(self) -> float:
        """Seconds between looks for idle sequences: often while others wait for a slot."""
        return _SWEEP_EVERY_S if self._backlog else min(max(self.policy.idle_s / 2, _SWEEP_EVERY_S), 5.0)

    def _drop_backlog(self) -> None:
        dropped: list[_Outcome] = []
        for sequence in list(self._backlog):
            dropped += self._fail_queued(sequence)
            self._release(sequence)
        _deliver(dropped)

    def _fail_queued(self, sequence: _Sequence, error: PolystackError | None = None) -> list[_Outcome]:
        """Take the queued requests of ``sequence`` out, failed with ``error`` (default: the model is unloaded
        before they run)."""
        failed: list[_Outcome] = []
        for request in sequence.requests:
            request.taken = True
            request.outcome.settle("fail", int((time.monotonic() - request.enqueued) * 1e9))
            why = error or Unavailable(f"model {self.entry.name!r} was unloaded before the request ran")
            failed.append((request, None, why))
        self._queued -= len(sequence.requests)
        sequence.requests.clear()
        self._ready.pop(sequence, None)
        return failed

    def _inputs(self, request: _Request, sequence: _Sequence) -> dict[str, np.ndarray]:
        """One request's whole inputs: its own, the control inputs and its sequence's state."""
        shape = (1, 1) if self.batched else (1,)
        full = dict(request.inputs)
        for c in self.policy.controls:
            if c.kind == "corrid":  # a request without a correlation ID (an iterative sequence's own): 0
                given = sequence.id if not isinstance(sequence.id, int) or sequence.id > 0 else 0
                value: Any = given if c.dtype is not DType.BYTES else str(given).encode()
                full[c.input] = np.full(shape, value, dtype=c.dtype.numpy)
            else:
                on = {"start": request.flags.start, "end": request.flags.end, "ready": True}[c.kind]
                full[c.input] = np.full(shape, c.true if on else c.false, dtype=c.dtype.numpy)
        full.update(self._initial if request.flags.start else sequence.state)
        return full

    def _execute(
        self, batch: list[tuple[_Request, _Sequence]], counted: bool = False, instance: int | None = None
    ) -> None:
        """Run ``batch`` (on ``instance``, pinned); ``counted``: its queue times are taken already (a merged batch
        run again one by one)."""
        started = time.monotonic()
        stats = self.entry.stats
        for request, _ in batch if not counted else ():
            request.waited = started - request.enqueued  # counted once it succeeds, as Triton's statistics count it
        t_input = time.perf_counter_ns()
        parts = [self._inputs(r, s) for r, s in batch]
        if self._apart:
            self._execute_apart(batch, parts, instance)
            return
        merged = parts[0] if len(batch) == 1 else {n: _concat_rows([p[n] for p in parts]) for n in parts[0]}
        wanted = self._wanted([r for r, _ in batch])
        t0 = time.perf_counter_ns()
        try:
            result = self.model.infer(merged, wanted)
            t1 = time.perf_counter_ns()
            split = self._split(result, len(batch))
        except Exception as e:
            if len(batch) == 1:
                request, sequence = batch[0]
                stats.failed(e, 1, time.perf_counter_ns() - t0)  # an execution, where Triton counts one
                if not (isinstance(e, ModelClosed) and request.outcome.rerouted):  # else counted where it goes next
                    request.outcome.settle("fail", int((time.monotonic() - request.enqueued) * 1e9))
                _deliver([(request, None, e)])
                self._finish([(request, sequence, None)])
                return
            for one in batch:  # find the culprit: only it fails, and its sequence keeps the state it had
                self._execute([one], counted=True)
            return
        took = t1 - t0
        stats.executed(len(batch), took, len(batch), t0 - t_input, time.perf_counter_ns() - t1)
        if self._on_batch:
            self._on_batch(len(batch), len(batch), took / 1e9)
        outcomes: list[_Outcome] = []
        for (request, _), row in zip(batch, split, strict=True):
            answer = {k: v for k, v in row.items() if k not in self._hidden_outputs}
            if request.outputs:
                answer = {k: answer[k] for k in request.outputs}
            stats.add("queue", int(request.waited * 1e9))
            if self._on_queue:
                self._on_queue(request.waited)
            request.outcome.settle("success", int((time.monotonic() - request.enqueued) * 1e9))
            if request.timings is not None:
                request.timings += (t0, t1)
            outcomes.append((request, answer, None))
        self._finish([(r, s, row) for (r, s), row in zip(batch, split, strict=True)])
        _deliver(outcomes)

    def _execute_apart(
        self, batch: list[tuple[_Request, _Sequence]], parts: list[dict[str, np.ndarray]], instance: int | None
    ) -> None:
        """``batch`` as one call of a model that takes its requests apart (a Python model), each with its facts
        and whole inputs, on ``instance`` (pinned; else any): each answered alone, its sequence taking its new state
        or keeping the one it had."""
        t0 = time.perf_counter_ns()
        try:
            results = self.model.infer_apart(
                [(p, self._wanted([r]), r.facts) for (r, _), p in zip(batch, parts, strict=True)], instance
            )
        except Exception as e:  # the call failed: each of its requests, never run again
            if ran_and_failed(e):  # a model taking its requests apart is a Python model: an execution, as in Triton
                self.entry.stats.failed_execution(len(batch), time.perf_counter_ns() - t0)
            for request, _ in batch:
                if not (isinstance(e, ModelClosed) and request.outcome.rerouted):
                    request.outcome.settle("fail", int((time.monotonic() - request.enqueued) * 1e9))
            _deliver([(r, None, e) for r, _ in batch])
            self._finish([(r, s, None) for r, s in batch])
            return
        t1 = time.perf_counter_ns()
        self.entry.stats.executed(len(batch), t1 - t0, len(batch))
        if self._on_batch:
            self._on_batch(len(batch), len(batch), (t1 - t0) / 1e9)
        outcomes: list[_Outcome] = []
        done: list[tuple[_Request, _Sequence, dict[str, np.ndarray] | None]] = []
        again: list[tuple[_Request, _Sequence]] = []
        for (request, sequence), result in zip(batch, results, strict=True):
            if request.timings is not None:
                request.timings += (t0, t1)
            if isinstance(result, Rescheduled):
                again.append((request, sequence))
                continue
            # a request's error is taken as it is, never raised here: its traceback would hold this frame, which
            # names it (outcomes, result), a reference cycle that kept the model until Python's cycle collector ran
            error = result if isinstance(result, PolystackError) else None
            if error is None:
                if isinstance(result, BaseException):
                    raise result
                try:
                    [row] = self._split(result, 1)
                except PolystackError as e:
                    error = e.with_traceback(None)  # (the same: raised in this frame, its traceback holds it)
            if error is not None:
                request.outcome.settle("fail", int((time.monotonic() - request.enqueued) * 1e9))
                outcomes.append((request, None, error))
                done.append((request, sequence, None))
                continue
            answer = {k: v for k, v in row.items() if k not in self._hidden_outputs}
            answer = selected(answered(answer, parameters_of(result)), request.outputs)  # its response's parameters
            self.entry.stats.add("queue", int(request.waited * 1e9))
            if self._on_queue:
                self._on_queue(request.waited)
            request.outcome.settle("success", int((time.monotonic() - request.enqueued) * 1e9))
            outcomes.append((request, answer, None))
            done.append((request, sequence, row))
        self._queue_again(again)
        self._finish(done)
        _deliver(outcomes)

    def _queue_again(self, again: list[tuple[_Request, _Sequence]]) -> None:
        """Requests their model asked to run again (Triton's request rescheduling): each first in its sequence's
        queue, for a later batch, as a request that no longer starts it (it runs on the state its sequence has)."""
        if not again:
            return
        with self._cond:
            now = time.monotonic()
            for request, sequence in again:
                self._running -= 1
                sequence.busy = False
                sequence.last = now
                request.taken = False
                request.flags = Flags(request.flags.id, start=False, end=request.flags.end)
                sequence.requests.appendleft(request)
                self._queued += 1
                if sequence.placed:
                    self._ready[sequence] = None
            self._wake()

    def _wanted(self, requests: list[_Request]) -> list[str] | None:
        """The outputs to compute: those asked for and the states (None: every output)."""
        if any(not r.outputs for r in requests):
            return None
        seen = dict.fromkeys(o for r in requests for o in r.outputs or ())
        seen.update(dict.fromkeys(s.output for s in self.policy.states))
        return list(seen)

    def _split(self, result: dict[str, np.ndarray], rows: int) -> list[dict[str, np.ndarray]]:
        """Each row's outputs; the state outputs must have the state's shape, or the call failed."""
        for s in self.policy.states:
            state = result.get(s.output)
            got = np.shape(state) if state is not None else ()
            want = ((rows,) if self.batched else ()) + s.dims
            fits = len(got) == len(want) and all(w in (-1, g) for g, w in zip(got, want, strict=True))
            if state is None or not fits or state.dtype != s.dtype.numpy:
                raise BackendError(
                    f"model {self.entry.name!r} returned state output {s.output!r} with shape {list(got)}, but its "
                    f"state {s.input!r} is {s.dtype.value} {list(want)}; fix the model or its sequence_batching.state"
                )
        if not self.batched:
            return [result]
        odd = next((k for k, v in result.items() if np.ndim(v) == 0 or len(v) != rows), None)
        if odd is not None:
            raise BackendError(
                f"model {self.entry.name!r} returned output {odd!r} with shape {list(np.shape(result[odd]))} for a "
                f"batch of {rows} sequences; export it with the batch on the first dimension of every output"
            )
        return [{k: v[i : i + 1] for k, v in result.items()} for i in range(rows)]

    def _finish(self, done: list[tuple[_Request, _Sequence, dict[str, np.ndarray] | None]]) -> None:
        """After its requests ran: each sequence takes its new state (None: it failed, and the state stays, or is
        the initial one after a START), ends with its END request (or once ended by a cancellation, ``_end``), or
        is ready again with its next request."""
        with self._cond:
            now = time.monotonic()
            for request, sequence, row in done:
                self._running -= 1
                sequence.busy = False
                sequence.last = now
                if row is not None:
                    for s in self.policy.states:
                        sequence.state[s.input] = np.array(row[s.output], copy=True)  # not a view of the batch
                elif request.flags.start:
                    sequence.state = dict(self._initial)  # it started anew, whatever it failed on
                if request.flags.end:
                    self._release(sequence)
                elif sequence.requests and sequence.placed:
                    self._ready[sequence] = None
                    self._wake()
                elif not sequence.requests and self._sequences.get(sequence.id) is not sequence:
                    self._release(sequence)  # started again under its ID meanwhile: this one is over
            if self._closed:
                self._cond.notify_all()  # a worker waiting for the last requests to finish stops

    # -- lifecycle -----------------------------------------------------------------------------
    def drain(self) -> None:
        """The server drains: no new sequence starts; those held (placed or waiting for a slot) take their
        requests until they end (their END, or ``idle_s`` without a request), as Triton's sequence batcher does
        once its server stops."""
        with self._cond:
            self._draining = True
            self._cond.notify_all()

    def cut(self) -> int:
        """The server's drain stops waiting for the sequences held (its timeout passed, or a second signal came): they
        end now, the requests they queued failing (503), those running finishing; no request of theirs is taken any
        more. How many sequences were live."""
        with self._cond:
            now = time.monotonic()
            live = sum(1 for s in self._sequences.values() if not s.ended and not self._idle(s, now))
            self._cut = True
            error = Unavailable(
                f"the server's drain ended before this request's sequence of model {self.entry.name!r} did (its timeout "
                "passed, or a second signal came); it was not run: start the sequence again on another replica"
            )
            dropped: list[_Outcome] = []
            for sequence in {*self._sequences.values(), *self._backlog, *self._ready, *self._ending}:
                dropped += self._fail_queued(sequence, error)
            self._cond.notify_all()
        _deliver(dropped)
        return live

    def live(self) -> bool:
        """Whether a sequence is held here that has not ended: one whose requests run or wait, or that may
        still get some (it has not been idle for ``idle_s``)."""
        with self._cond:
            now = time.monotonic()
            if self._queued or self._running or (self._ending and not self._cut):
                return True
            return not self._cut and any(not s.ended and not self._idle(s, now) for s in self._sequences.values())

    def close(self, drain: bool = True, timeout_s: float = 30.0) -> None:
        """Stop taking requests; run the queued ones (drain) or fail them, then stop the workers. The
        sequences end: a model loaded again starts them anew."""
        with self._cond:
            self._closed = True
            dropped: list[_Outcome] = []
            if not drain:  # a sequence a cancellation ended may still queue the requests ahead of it (``_end``)
                for sequence in {*self._sequences.values(), *self._backlog, *self._ready, *self._ending}:
                    dropped += self._fail_queued(sequence)
            self._cond.notify_all()
        _deliver(dropped)
        deadline = time.monotonic() + timeout_s
        for t in self._threads:
            t.join(max(0.0, deadline - time.monotonic()))
