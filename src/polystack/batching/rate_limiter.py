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
import threading
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass

from polystack.errors import InvalidRequest

GLOBAL = -2  # Triton's keys: a resource shared by all devices, and one given for each device
EACH_DEVICE = -1


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
    __slots__ = ("device", "granted", "limiter", "model", "rule", "runs", "wake")

    def __init__(self, model: ModelInstances, rule: Rule, device: int) -> None:
        self.model = model
        self.rule = rule
        self.device = device
        self.runs = 0  # Triton's exec_count
        self.granted = False
        self.wake = threading.Event()

    def weight(self) -> int:
        """Triton's ScaledPriority: runs so far x priority (0 counts as 1); the lowest is given resources first."""
        return self.runs * max(self.rule.priority, 1)

    def needs(self) -> dict[tuple[int, str], int]:
        need: dict[tuple[int, str], int] = {}
        for r in self.rule.resources:
            need[(GLOBAL if r.shared else self.device, r.name)] = r.count
        return need


class ModelInstances:
    """One served model version's instances under a ``RateLimiter``. ``held()`` takes a free one (the one that
    ran least, weighted by priority, as Triton picks among a model's free instances), waits until the limiter
    gives it its resources, and gives them back when the block ends. At most as many blocks run at once as
    there are instances: callers bound that (one per worker thread)."""

    def __init__(self, limiter: RateLimiter, name: str, groups: Sequence[tuple[Rule, int]], device: int) -> None:
        self.limiter = limiter
        self.name = name
        self._free = [_Instance(self, rule, device) for rule, count in groups for _ in range(count)]
        self.instances = tuple(self._free)
        self._lock = threading.Lock()
        self.busy = 0  # instances waiting for resources or holding them (the limiter's lock guards it)
        self.leaving = False  # unregistered while busy: its needs count until its last instance is done

    @contextlib.contextmanager
    def held(self) -> Iterator[None]:
        with self._lock:
            if not self._free:
                raise RuntimeError(f"model {self.name!r} ran more calls at once than it has instances")
            instance = min(self._free, key=_Instance.weight)
            self._free.remove(instance)
        try:
            self.limiter._stage(instance)
            instance.wake.wait()
            yield
        finally:
            self.limiter._release(instance)
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

    def register(self, name: str, groups: Sequence[tuple[Rule, int]], device: int) -> ModelInstances:
        """The instances of a model version about to serve (each group's rule and count); ``InvalidRequest`` in
        Triton's words when a resource is both global and per device, or ``--rate-limit-resource`` gives less of
        one than an instance needs."""
        model = ModelInstances(self, name, groups, device)
        with self._lock:
            most = self._limits([*self._models, model])
            self._models.append(model)
            self._most = most
        return model

    def unregister(self, model: ModelInstances) -> None:
        """A model version that has stopped serving: what it needed no longer counts, once none of its
        instances waits for or holds resources (one still waiting must be able to get them)."""
        with self._lock:
            model.leaving = True
            if model.busy == 0:
                self._forget(model)

    def _forget(self, model: ModelInstances) -> None:
        if model in self._models:
            self._models.remove(model)
            self._most = self._limits(self._models)  # a subset of models that fit: fits

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

    def _limits(self, models: Sequence[ModelInstances]) -> dict[tuple[int, str], int]:
        most: dict[tuple[int, str], int] = {}
        for model in models:
            for instance in model.instances:
                for key, count in instance.needs().items():
                    most[key] = max(most.get(key, 0), count)
        shared = {n for d, n in most if d == GLOBAL}
        clash = next((n for d, n in most if d != GLOBAL and n in shared), None)
        if clash is not None:  # Triton's words
            raise InvalidRequest(
                f'Resource "{clash}" is present as both global and device-specific resource in the model '
                "configuration."
            )
        if self.explicit:
            for (device, name), need in most.items():
                if device == GLOBAL:  # any explicit count of that name, whatever its device
                    given = max((c for (_, n), c in self.explicit.items() if n == name), default=0)
                else:
                    given = max(self.explicit.get((device, name), 0), self.explicit.get((EACH_DEVICE, name), 0))
                if given < need:
                    raise InvalidRequest(
                        f'Resource count for "{name}" is limited to {given} which will prevent scheduling of one '
                        f"or more model instances, the minimum required count is {need}"
                    )
                most[(device, name)] = given
        return most

    def _stage(self, instance: _Instance) -> None:
        with self._lock:
            instance.granted = False
            instance.wake.clear()
            instance.model.busy += 1
            heapq.heappush(self._waiting, (instance.weight(), next(self._arrivals), instance))
            self._allocate()

    def _release(self, instance: _Instance) -> None:
        with self._lock:
            if instance.granted:
                for key, count in instance.needs().items():
                    self._taken[key] -= count
                instance.granted = False
                instance.runs += 1
            else:  # never given its resources (its wait was interrupted): no longer waiting
                self._waiting = [w for w in self._waiting if w[2] is not instance]
                heapq.heapify(self._waiting)
            model = instance.model
            model.busy -= 1
            if model.leaving and model.busy == 0:
                self._forget(model)
            self._allocate()

    def _allocate(self) -> None:
        """Give resources to the waiting instances in order, while the first fits (the lock held)."""
        while self._waiting:
            instance = self._waiting[0][2]
            need = instance.needs()
            if any(self._taken.get(key, 0) + count > self._most.get(key, 0) for key, count in need.items()):
                return
            heapq.heappop(self._waiting)
            for key, count in need.items():
                self._taken[key] = self._taken.get(key, 0) + count
            instance.granted = True
            instance.wake.set()
