"""RateLimiter: Triton's rate limiter (``--rate-limit execution_count``), across every model a server runs.

Each instance of a model (a batcher's worker, a thread of the model's own) must be given its instance group's
resources (``rate_limiter { resources [...] }`` in its config) before it runs a request or a batch, and gives
them back after. Instances wait in one queue across all models, ordered as Triton's (``RateLimiter`` in
triton-inference-server/core, ``rate_limiter.cc``): by how many times the instance ran, times its group's
``priority`` (0 counts as 1), fewest first; only the first waiting instance is given its resources, so one that
cannot be given them yet holds the others back (strict order, as in Triton).

How much of a resource there is: the most any one instance asks for, unless ``--rate-limit-resource`` gives it
(then an instance asking for more stops its model's load, in Triton's words). A resource is counted per device
(``--rate-limit-resource NAME:COUNT:DEVICE`` for one device, ``NAME:COUNT`` for each) unless its group marks it
``global``. Registering and unregistering models changes the amounts as they load and unload.

Written by hand: no library schedules by these rules, which are Triton's."""

from __future__ import annotations

import contextlib
import heapq
import itertools
import logging
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass

from polystack.backends import hosting
from polystack.errors import InvalidRequest

GLOBAL = -2  # Triton's keys: a resource shared by all devices, and one given for each device
EACH_DEVICE = -1
# how long an instance that just ran keeps its resources' next turn for itself, when its model has more work
# and it weighs least: as Triton stages such an instance again before it gives resources out (OnRelease), so
# that priority decides between models of one instance each; it is taken as soon as the instance asks again
_TURN_KEPT_S = 0.02
_POLL_S = 0.02  # how often a waiting instance looks whether its turn can go on (a kept turn ran out, a give-up)

log = logging.getLogger("polystack.batching")


@dataclass(frozen=True)
class Resource:
    name: str
    count: int
    shared: bool = False  # Triton's ``global``: one pool for every device


@dataclass(frozen=True)
class Rule:
    """An instance group's ``rate_limiter``: what each of its instances needs to run, and its priority (a
    weight: priority 2 runs half as often as 1 when both wait)."""

    resources: tuple[Resource, ...] = ()
    priority: int = 0


def parse_resources(values: Sequence[str]) -> dict[tuple[int, str], int]:
    """``--rate-limit-resource`` values (``NAME:COUNT`` or ``NAME:COUNT:DEVICE``, checked by the flag's own
    check) as (device or EACH_DEVICE, name) -> count; a later value for the same pair replaces an earlier one."""
    given: dict[tuple[int, str], int] = {}
    for value in values:
        parts = value.split(":")
        device = int(parts[2]) if len(parts) == 3 else EACH_DEVICE
        given[(device, parts[0])] = int(parts[1])
    return given


class _Instance:
    __slots__ = ("device", "granted", "model", "rule", "runs", "staged", "wake")

    def __init__(self, model: ModelInstances, rule: Rule, device: int) -> None:
        self.model = model
        self.rule = rule
        self.device = device
        # Triton's exec_count, which an instance's initialization and warm-up each add one to (they pass
        # through its rate limiter): so a newly loaded instance weighs its priority from the first request on
        self.runs = 2
        self.granted = False
        self.staged = False
        self.wake = threading.Event()

    def weight(self, runs: int | None = None) -> int:
        """Triton's ScaledPriority: runs so far x priority (0 counts as 1); the lowest is given resources first."""
        return (self.runs if runs is None else runs) * max(self.rule.priority, 1)

    def needs(self) -> dict[tuple[int, str], int]:
        need: dict[tuple[int, str], int] = {}
        for r in self.rule.resources:  # a name given twice: the later count, as Triton's map keeps it
            need[(GLOBAL if r.shared else self.device, r.name)] = r.count
        return need


class ModelInstances:
    """One served model version's instances under a ``RateLimiter``. ``held()`` takes a free one (the one that
    ran least, weighted by priority, as Triton picks among a model's free instances), waits until the limiter
    gives it its resources, and gives them back when the block ends. At most as many blocks run at once as
    there are instances: callers bound that (one per worker thread). ``pending``, set by what serves the
    model, says whether it has work no instance has asked to run yet (its queue)."""

    def __init__(self, limiter: RateLimiter, name: str, groups: Sequence[tuple[Rule, int]], device: int) -> None:
        self.limiter = limiter
        self.name = name
        self._free = [_Instance(self, rule, device) for rule, count in groups for _ in range(count)]
        self.instances = tuple(self._free)
        self._lock = threading.Lock()
        self.pending: Callable[[], bool] = lambda: False
        self.busy = 0  # instances waiting for resources or holding them (the limiter's lock guards it)
        self.leaving = False  # unregistered: its needs count only while an instance is busy

    @property
    def staged(self) -> int:
        """Its instances waiting for resources now."""
        return sum(1 for i in self.instances if i.staged)

    @contextlib.contextmanager
    def held(self, give_up: Callable[[], bool] | None = None, index: int | None = None) -> Iterator[bool]:
        """Run the block on one of the instances (``index``: that one, where the caller runs the model on it, as a
        sequence batcher keeps a sequence on one), once it has its resources: True. False (at once, no resources
        held) when ``give_up`` says so while it waits (its requests are gone)."""
        with self._lock:
            if not self._free:
                raise RuntimeError(f"model {self.name!r} ran more calls at once than it has instances")
            chosen = self.instances[index % len(self.instances)] if index is not None else None
            instance = chosen if chosen in self._free else min(self._free, key=_Instance.weight)
            self._free.remove(instance)
        granted = False
        charged = hosting.CHARGED.set(self.instances.index(instance))  # where the call runs (a Python model's)
        try:
            self.limiter._stage(instance)
            while not instance.wake.wait(_POLL_S):
                if give_up is not None and give_up():
                    break
                self.limiter._poke()
            granted = instance.wake.is_set()
            yield granted
        finally:
            hosting.CHARGED.reset(charged)
            self.limiter._release(instance, ran=granted)
            with self._lock:
                self._free.append(instance)


class RateLimiter:
    """The server's one rate limiter. ``explicit``: ``--rate-limit-resource`` as ``parse_resources`` reads it."""

    def __init__(self, explicit: Mapping[tuple[int, str], int] | None = None) -> None:
        self.explicit = dict(explicit or {})
        self._models: list[ModelInstances] = []
        self._most: dict[tuple[int, str], int] = {}  # how much of each resource there is
        self._taken: dict[tuple[int, str], int] = {}
        self._waiting: list[tuple[int, int, _Instance]] = []  # (weight, arrival, instance): a heap
        self._arrivals = itertools.count()
        self._lock = threading.Lock()
        # an instance's model keeping the next turn (until then, monotonic), as Triton stages it again first
        self._kept: tuple[ModelInstances, float] | None = None

    def register(self, name: str, groups: Sequence[tuple[Rule, int]], device: int) -> ModelInstances:
        """The instances of a model version about to serve (each group's rule and count); ``InvalidRequest`` in
        Triton's words when ``--rate-limit-resource`` gives less of a resource than an instance needs, or a
        resource is both global and per device."""
        model = ModelInstances(self, name, groups, device)
        with self._lock:
            self._most = self._limits([*self._models, model])
            self._models.append(model)
            self._allocate()  # there may be more of a resource now
        self._said()
        return model

    def unregister(self, model: ModelInstances) -> None:
        """A model version that has stopped serving: what it needed no longer counts, once none of its
        instances waits for or holds resources. A call it still runs afterwards (one queued before) counts its
        needs again while it runs: it must be able to get them."""
        with self._lock:
            model.leaving = True
            if model.busy == 0:
                self._forget(model)
        self._said()

    def amounts(self) -> dict[tuple[int, str], int]:
        """How much of each resource there is now ((device or GLOBAL, name) -> count)."""
        with self._lock:
            return dict(self._most)

    def described(self, amounts: Mapping[tuple[int, str], int] | None = None) -> list[dict[str, object]]:
        """``amounts`` (the given ones by default) as a log line lists them: name, count and device ("global",
        "each" or the device's number)."""
        named = {GLOBAL: "global", EACH_DEVICE: "each"}
        return [
            {"name": name, "count": count, "device": named.get(device, device)}
            for (device, name), count in sorted((amounts if amounts is not None else self.explicit).items())
        ]

    def _said(self) -> None:
        """The amounts in the log, as Triton's verbose log shows its resource map on each load and unload."""
        if log.isEnabledFor(logging.DEBUG):
            log.debug("rate limiter resources", extra={"resources": self.described(self.amounts())})

    def _forget(self, model: ModelInstances) -> None:
        if model in self._models:
            self._models.remove(model)
            self._most = self._limits(self._models)  # a subset of models that fit: fits
            self._allocate()

    def _limits(self, models: Sequence[ModelInstances]) -> dict[tuple[int, str], int]:
        most: dict[tuple[int, str], int] = {}
        for model in models:
            for instance in model.instances:
                for key, count in instance.needs().items():
                    most[key] = max(most.get(key, 0), count)
        if self.explicit:  # in Triton's order: global resources first, then each device's, names sorted
            for (device, name), need in sorted(most.items()):
                if device == GLOBAL:  # any explicit count of that name, whatever its device
                    given = max((c for (_, n), c in self.explicit.items() if n == name), default=0)
                else:
                    given = max(self.explicit.get((device, name), 0), self.explicit.get((EACH_DEVICE, name), 0))
                if given < need:  # Triton's words
                    raise InvalidRequest(
                        f'Resource count for "{name}" is limited to {given} which will prevent scheduling of one '
                        f"or more model instances, the minimum required count is {need}"
                    )
                most[(device, name)] = given
        shared = {n for d, n in most if d == GLOBAL}
        clash = next((n for d, n in sorted(most) if d != GLOBAL and n in shared), None)
        if clash is not None:  # Triton's words
            raise InvalidRequest(
                f'Resource "{clash}" is present as both global and device-specific resource in the model '
                "configuration."
            )
        return most

    def _stage(self, instance: _Instance) -> None:
        with self._lock:
            model = instance.model
            if model.leaving and model not in self._models:  # a call queued before its unload: it counts again
                try:
                    self._most = self._limits([*self._models, model])
                    self._models.append(model)
                except InvalidRequest:  # a model loaded since clashes with it: it runs without waiting
                    instance.granted = instance.staged = False
                    model.busy += 1
                    instance.wake.set()
                    return
            if self._kept is not None and self._kept[0] is model:
                self._kept = None  # the turn it kept: its instance asks now, in the order all others wait in
            instance.granted = False
            instance.staged = True
            instance.wake.clear()
            model.busy += 1
            heapq.heappush(self._waiting, (instance.weight(), next(self._arrivals), instance))
            self._allocate()

    def _release(self, instance: _Instance, ran: bool = True) -> None:
        with self._lock:
            model = instance.model
            model.busy -= 1
            if instance.granted:
                for key, count in instance.needs().items():
                    self._taken[key] -= count
                instance.granted = False
                if ran:
                    instance.runs += 1
                # Triton stages an instance with more work again before it gives the resources out: when it
                # weighs less than every instance waiting, its model keeps the turn (until it asks, or briefly)
                if self._waiting and instance.weight() < self._waiting[0][0] and model.pending():
                    self._kept = (model, time.monotonic() + _TURN_KEPT_S)
            elif instance.staged:  # it gave up waiting: no longer waits
                instance.staged = False
                self._waiting = [w for w in self._waiting if w[2] is not instance]
                heapq.heapify(self._waiting)
            if model.leaving and model.busy == 0:
                self._forget(model)
            self._allocate()

    def _poke(self) -> None:
        """A waiting instance's look: a turn kept too long goes on to the others."""
        with self._lock:
            if self._kept is not None and time.monotonic() >= self._kept[1]:
                self._kept = None
                self._allocate()

    def _allocate(self) -> None:
        """Give resources to the waiting instances in order, while the first fits (the lock held)."""
        while self._waiting and self._kept is None:
            instance = self._waiting[0][2]
            need = instance.needs()
            if any(self._taken.get(key, 0) + count > self._most.get(key, 0) for key, count in need.items()):
                return
            heapq.heappop(self._waiting)
            for key, count in need.items():
                self._taken[key] = self._taken.get(key, 0) + count
            instance.granted = True
            instance.staged = False
            instance.wake.set()
