"""BatchPolicy: how a DynamicBatcher groups requests, bounds its queue and times requests out, and in what
order of priority it takes them (Triton's priority levels, each with its own queue policy)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, fields, replace
from typing import Any

from polystack.errors import InvalidRequest

MAX_INSTANCES = 256  # worker threads sharing one model: each holds a thread and its runtime's buffers


@dataclass(frozen=True)
class QueuePolicy:
    """How one priority level's queue is bounded and timed out (Triton's ``ModelQueuePolicy``)."""

    max_queue_size: int = 1024  # waiting requests of the level (0: no limit)
    timeout_s: float | None = None  # default per-request deadline
    client_timeouts: bool = True  # a client's own deadline applies when shorter
    # Triton's timeout_action DELAY: a request past its deadline is not refused, it waits behind its level's others
    delay: bool = False

    def __post_init__(self) -> None:
        if self.max_queue_size < 0:
            raise InvalidRequest("max_queue_size must be >= 0 (0: no limit)")
        if self.timeout_s is not None and self.timeout_s <= 0:
            raise InvalidRequest("timeout_s must be > 0")


def priority_refusal(
    levels: int, default_level: int, queue_levels: Sequence[int], preserve_ordering: bool, delays: bool
) -> tuple[str, str] | None:
    """Triton's checks of a dynamic batcher's priority levels and ordering (its ValidateModelConfig): the first
    broken one as (Triton's sentence, what to change), None where none is. ``delays``: a queue policy of the
    batcher's has timeout_action DELAY and a timeout. A model config's refusal puts `` for <model>`` after the
    sentence, as Triton does."""
    if levels:  # without levels Triton ignores the other two fields
        if not 1 <= default_level <= levels:
            return (
                f"default priority level must be in range [1, {levels}]",
                f"set dynamic_batching.default_priority_level to a level from 1 (the highest) to {levels}",
            )
        if any(not 1 <= level <= levels for level in queue_levels):
            return (
                f"priority queue policy must have priority level in range [1, {levels}]",
                f"key dynamic_batching.priority_queue_policy by levels from 1 to {levels}",
            )
    if preserve_ordering and levels > 1:
        return (
            "Only one priority level is allowed when 'preserve_ordering' is true",
            "set dynamic_batching.priority_levels to 0 or 1, or preserve_ordering to false",
        )
    if preserve_ordering and delays:
        return (
            "Queue policy can not have DELAY as timeout action when 'preserve_ordering' is true",
            "use REJECT, leave out default_timeout_microseconds, or set preserve_ordering to false",
        )
    return None


@dataclass(frozen=True)
class BatchPolicy:
    max_batch_size: int = 32  # items (dim 0) per runtime call
    max_queue_delay_ms: float = 2.0  # how long the oldest request may wait for others
    preferred_batch_sizes: tuple[int, ...] = ()  # dispatch at once when the queue holds one of these
    max_queue_size: int = 1024  # waiting requests; one more is refused with QueueFull (0: no limit, as in Triton)
    timeout_s: float | None = None  # default per-request deadline
    client_timeouts: bool = True  # a client's own deadline applies when shorter (False: Triton's "no override")
    # Triton's config: a client's deadline only shortens a queue's default timeout, and is ignored where the queue has
    # none (its PolicyQueue::Enqueue); polystack's own batching (False) takes a client's deadline there too
    client_timeout_needs_default: bool = False
    instances: int = 1  # worker threads sharing the one loaded model (runtimes that allow it)
    idle_gap_ms: float = 0.2  # leave early when no request arrived for this long (0: wait out the delay)
    # Triton's priority levels: 1 is the highest; 0 levels: a request's priority changes nothing
    priority_levels: int = 0
    default_priority_level: int = 0  # a request's level when it gives none (0) or one past the levels
    # (level, its queue policy) for levels whose queue is not the default's (the three fields above)
    priority_queues: tuple[tuple[int, QueuePolicy], ...] = ()
    preserve_ordering: bool = False  # answers go out in the order the requests came (Triton's)
    delay: bool = False  # the default queue's timeout_action DELAY (``QueuePolicy.delay``)
    # False: Triton's dynamic batcher over a model without batching (max_batch_size 0): each request runs alone,
    # through the queues (their limits, timeouts and priority levels), max_batch_size 1
    merge: bool = True

    def __post_init__(self) -> None:
        if self.max_batch_size < 1:
            raise InvalidRequest("max_batch_size must be >= 1")
        if self.max_queue_delay_ms < 0:
            raise InvalidRequest("max_queue_delay_ms must be >= 0")
        if any(p < 1 or p > self.max_batch_size for p in self.preferred_batch_sizes):
            raise InvalidRequest(f"preferred_batch_sizes must lie in 1..max_batch_size ({self.max_batch_size})")
        if not self.merge and (self.max_batch_size != 1 or self.preferred_batch_sizes):
            raise InvalidRequest("a policy that does not merge requests runs one a call: max_batch_size 1, no preferred sizes")
        if self.idle_gap_ms < 0:
            raise InvalidRequest("idle_gap_ms must be >= 0")
        if not 1 <= self.instances <= MAX_INSTANCES:
            raise InvalidRequest(f"instances must be from 1 to {MAX_INSTANCES}")
        QueuePolicy(self.max_queue_size, self.timeout_s, self.client_timeouts, self.delay)  # the default's, checked
        if self.priority_levels < 0:
            raise InvalidRequest("priority_levels must be >= 0 (0: no priority levels)")
        queues = [self.queue_policy(0), *(q for _, q in self.priority_queues)]
        refusal = priority_refusal(
            self.priority_levels, self.default_priority_level, [level for level, _ in self.priority_queues],
            self.preserve_ordering, any(q.delay and q.timeout_s for q in queues),
        )
        if refusal:
            raise InvalidRequest("; ".join(refusal))
        if len({level for level, _ in self.priority_queues}) != len(self.priority_queues):
            raise InvalidRequest("priority_queues gives a level's queue policy twice")

    def queue_policy(self, level: int) -> QueuePolicy:
        """The queue policy of priority ``level``: its own, or the default queue's."""
        for given, policy in self.priority_queues if self.priority_levels else ():
            if given == level:
                return policy
        return QueuePolicy(self.max_queue_size, self.timeout_s, self.client_timeouts, self.delay)

    def level_of(self, priority: int) -> int:
        """The level a request of ``priority`` queues at (0 without priority levels), as Triton's
        ``SetPriority``: 0, or a priority past the levels, is the default level."""
        if not self.priority_levels:
            return 0
        return priority if 0 < priority <= self.priority_levels else self.default_priority_level

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["preferred_batch_sizes"] = list(self.preferred_batch_sizes)
        d["priority_queues"] = [[level, asdict(q)] for level, q in self.priority_queues]
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> BatchPolicy:
        known = {k: v for k, v in d.items() if k in cls.__dataclass_fields__}
        if "preferred_batch_sizes" in known:
            known["preferred_batch_sizes"] = tuple(known["preferred_batch_sizes"])
        if "priority_queues" in known:
            known["priority_queues"] = tuple((int(lv), QueuePolicy(**q)) for lv, q in known["priority_queues"])
        return cls(**known)


@dataclass(frozen=True)
class BatchOverrides:
    """Batch settings given on their own (``serve --max-batch-size 8``): each set one replaces that setting
    in whatever policy a model is batched under (its plan's, or the default), the others stay."""

    max_batch_size: int | None = None
    max_queue_delay_ms: float | None = None
    max_queue_size: int | None = None
    timeout_s: float | None = None
    instances: int | None = None

    def given(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self) if getattr(self, f.name) is not None}

    def apply(self, policy: BatchPolicy) -> BatchPolicy:
        given = self.given()
        if "max_batch_size" in given and "preferred_batch_sizes" not in given:
            # the policy's preferred sizes beyond a smaller maximum could never be reached
            given["preferred_batch_sizes"] = tuple(
                p for p in policy.preferred_batch_sizes if p <= given["max_batch_size"]
            )
        return replace(policy, **given)
