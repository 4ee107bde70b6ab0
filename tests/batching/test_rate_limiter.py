"""RateLimiter: Triton's rate limiter's rules, on real threads: what each instance needs, how much there is
(the most any one needs, or what --rate-limit-resource gives), the order waiting instances are given their
resources in, and models that come and go."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

import pytest

from polystack.batching.rate_limiter import (
    EACH_DEVICE,
    GLOBAL,
    ModelInstances,
    RateLimiter,
    Resource,
    Rule,
    parse_resources,
)
from polystack.errors import InvalidRequest


def rule(*needs: tuple[str, int] | tuple[str, int, bool], priority: int = 0) -> Rule:
    return Rule(tuple(Resource(*n) for n in needs), priority)


class Run:
    """A call on ``model``'s instances in a thread of its own: ``started`` once it holds its resources, and it
    holds them until ``finish()``."""

    def __init__(self, model: ModelInstances, order: list[str] | None = None, label: str = "") -> None:
        self.started = threading.Event()
        self.done = threading.Event()
        self._finish = threading.Event()

        def run() -> None:
            with model.held():
                if order is not None:
                    order.append(label)
                self.started.set()
                assert self._finish.wait(10)
            self.done.set()

        self.thread = threading.Thread(target=run, daemon=True)
        self.thread.start()

    def finish(self) -> None:
        self._finish.set()
        assert self.done.wait(10)


@contextmanager
def running(model: ModelInstances) -> Iterator[Run]:
    run = Run(model)
    assert run.started.wait(10)
    try:
        yield run
    finally:
        run.finish()


def waiting(limiter: RateLimiter, n: int) -> bool:
    """Whether ``n`` instances wait for resources (within 10 s)."""
    for _ in range(1000):
        with limiter._lock:
            if len(limiter._waiting) == n:
                return True
        threading.Event().wait(0.01)
    return False


def test_instances_that_need_the_same_resource_run_one_at_a_time() -> None:
    limiter = RateLimiter()
    a = limiter.register("a:1", [(rule(("R", 1)), 1)], device=0)
    b = limiter.register("b:1", [(rule(("R", 1)), 1)], device=0)
    with running(a):
        second = Run(b)
        assert waiting(limiter, 1)
        assert not second.started.is_set()
    assert second.started.wait(10)  # once a gave R back
    second.finish()


def test_there_is_as_much_of_a_resource_as_the_one_instance_that_needs_most() -> None:
    limiter = RateLimiter()
    big = limiter.register("big:1", [(rule(("R", 2)), 1)], device=0)
    small = limiter.register("small:1", [(rule(("R", 1)), 2)], device=0)
    assert limiter.amounts() == {(0, "R"): 2}
    with running(small), running(small):  # both instances of small fit in 2
        late = Run(big)
        assert waiting(limiter, 1)
        assert not late.started.is_set()
    assert late.started.wait(10)
    late.finish()
    limiter.unregister(big)
    assert limiter.amounts() == {(0, "R"): 1}  # what a model needed stops counting once it is unloaded


def test_instances_without_resources_run_at_once() -> None:
    limiter = RateLimiter()
    free = limiter.register("free:1", [(Rule(), 2)], device=0)
    with running(free), running(free):
        pass


def test_given_resources_bound_the_instances_and_refuse_a_model_that_needs_more() -> None:
    limiter = RateLimiter(parse_resources(["R:3"]))
    model = limiter.register("m:1", [(rule(("R", 1)), 4)], device=0)
    assert limiter.amounts() == {(0, "R"): 3}  # the given count, not the most one instance needs
    with running(model), running(model), running(model):
        fourth = Run(model)
        assert waiting(limiter, 1)
        assert not fourth.started.is_set()
    assert fourth.started.wait(10)
    fourth.finish()
    with pytest.raises(InvalidRequest) as refused:
        limiter.register("big:1", [(rule(("R", 4)), 1)], device=0)
    assert refused.value.message == (  # Triton's words
        'Resource count for "R" is limited to 3 which will prevent scheduling of one or more model instances, '
        "the minimum required count is 4"
    )
    assert limiter.amounts() == {(0, "R"): 3}  # the refused model changed nothing
    with pytest.raises(InvalidRequest, match='"S" is limited to 0'):  # a resource not given is not there
        limiter.register("s:1", [(rule(("S", 1)), 1)], device=0)


def test_given_resources_per_device_and_global() -> None:
    given = parse_resources(["R:2", "R:5:1", "G:1:0", "G:4:1"])
    assert given == {(EACH_DEVICE, "R"): 2, (1, "R"): 5, (0, "G"): 1, (1, "G"): 4}
    limiter = RateLimiter(given)
    limiter.register("on0:1", [(rule(("R", 1)), 1)], device=0)
    limiter.register("on1:1", [(rule(("R", 1)), 1)], device=1)
    limiter.register("shared:1", [(rule(("G", 1, True)), 1)], device=0)
    # each device's own count, else the one for every device; a global one the largest of any device's
    assert limiter.amounts() == {(0, "R"): 2, (1, "R"): 5, (GLOBAL, "G"): 4}


def test_a_resource_both_global_and_per_device_is_refused() -> None:
    limiter = RateLimiter()
    limiter.register("a:1", [(rule(("R", 1, True)), 1)], device=0)
    with pytest.raises(InvalidRequest) as refused:
        limiter.register("b:1", [(rule(("R", 1)), 1)], device=0)
    assert refused.value.message == (
        'Resource "R" is present as both global and device-specific resource in the model configuration.'
    )


def test_a_global_resource_is_shared_across_devices() -> None:
    limiter = RateLimiter()
    on0 = limiter.register("a:1", [(rule(("G", 1, True)), 1)], device=0)
    on1 = limiter.register("b:1", [(rule(("G", 1, True)), 1)], device=1)
    with running(on0):
        other = Run(on1)
        assert waiting(limiter, 1)
    assert other.started.wait(10)
    other.finish()
    local = RateLimiter()
    on0 = local.register("a:1", [(rule(("R", 1)), 1)], device=0)
    on1 = local.register("b:1", [(rule(("R", 1)), 1)], device=1)
    with running(on0), running(on1):  # a per-device resource: one R on each device
        pass


def test_waiting_instances_go_by_runs_times_priority() -> None:
    """Triton's ScaledPriority: the instance that ran least, weighted by its priority (0 counts as 1), first;
    the same, in the order they came."""
    limiter = RateLimiter()
    holder = limiter.register("holder:1", [(rule(("R", 1)), 1)], device=0)
    low = limiter.register("low:1", [(rule(("R", 1), priority=2), 1)], device=0)
    high = limiter.register("high:1", [(rule(("R", 1), priority=1), 1)], device=0)
    for model in (low, high):  # each has run once: weights 2 (low) and 1 (high)
        with running(model):
            pass
    order: list[str] = []
    with running(holder):
        first = Run(low, order, "low")
        assert waiting(limiter, 1)
        second = Run(high, order, "high")
        assert waiting(limiter, 2)
    assert second.started.wait(10)
    assert not first.started.is_set()  # high came later, but weighs less
    second.finish()
    assert first.started.wait(10)
    first.finish()
    assert order == ["high", "low"]


def test_the_first_waiting_instance_holds_back_those_behind_it() -> None:
    """Strict order, as Triton's: one that needs more than is free waits, and so do the others after it."""
    limiter = RateLimiter()
    small = limiter.register("small:1", [(rule(("R", 1)), 2)], device=0)
    big = limiter.register("big:1", [(rule(("R", 2)), 1)], device=0)
    free = limiter.register("free:1", [(Rule(), 1)], device=0)
    with running(small):
        blocked = Run(big)
        assert waiting(limiter, 1)
        behind = Run(free)
        assert waiting(limiter, 2)
        assert not behind.started.is_set()
    assert blocked.started.wait(10)
    assert behind.started.wait(10)
    for run in (blocked, behind):
        run.finish()


def test_a_model_unloaded_while_its_instance_waits_still_runs_it() -> None:
    """Its needs count until its last instance is done: a wait would otherwise never end (and hold back every
    instance behind it)."""
    limiter = RateLimiter()
    holder = limiter.register("holder:1", [(rule(("R", 1)), 1)], device=0)
    leaving = limiter.register("leaving:1", [(rule(("S", 1), ("R", 1)), 1)], device=0)
    with running(holder):
        late = Run(leaving)
        assert waiting(limiter, 1)
        limiter.unregister(leaving)
        assert limiter.amounts() == {(0, "R"): 1, (0, "S"): 1}
    assert late.started.wait(10)
    late.finish()
    assert limiter.amounts() == {(0, "R"): 1}


def test_a_call_of_a_model_already_unregistered_still_runs_and_holds_back_nothing() -> None:
    """helper-130: an unloaded model's call queued before its unload staged once its needs were forgotten, never
    fit, and, first in line, held back every other model for good (and the server's stop)."""
    limiter = RateLimiter()
    other = limiter.register("other:1", [(rule(("R", 1)), 1)], device=0)
    leaving = limiter.register("leaving:1", [(rule(("R", 2)), 1)], device=0)
    with leaving.held():
        limiter.unregister(leaving)
    assert limiter.amounts() == {(0, "R"): 1}  # forgotten once its running call ended
    late = Run(leaving)  # a call queued on its threads before the unload
    assert late.started.wait(10)
    assert limiter.amounts() == {(0, "R"): 2}  # it counts again while it runs
    after = Run(other)
    assert waiting(limiter, 1)
    late.finish()
    assert after.started.wait(10)
    after.finish()
    assert limiter.amounts() == {(0, "R"): 1}
    with limiter._lock:
        assert not any(limiter._taken.values())


def test_priority_decides_between_models_of_one_instance_each() -> None:
    """helper-129: with one instance each, the models took turns whatever their priorities (1 vs 3 ran 62:61,
    Triton 81:31): the instance that just ran went back in line after the other was given R. As Triton stages it
    again first when its model has more work, it keeps its turn while it weighs least."""
    limiter = RateLimiter()
    runs: list[str] = []
    lock = threading.Lock()
    stop = threading.Event()
    models = {
        name: limiter.register(f"{name}:1", [(rule(("R", 1), priority=p), 1)], device=0) for name, p in (("a", 1), ("b", 3))
    }
    for model in models.values():
        model.pending = lambda: not stop.is_set()  # always more work

    def work(name: str) -> None:
        while not stop.is_set():
            with models[name].held():
                with lock:
                    runs.append(name)
                    if len(runs) >= 80:
                        stop.set()
                time.sleep(0.001)

    threads = [threading.Thread(target=work, args=(n,), daemon=True) for n in models]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    a, b = runs.count("a"), runs.count("b")
    assert 2.4 <= a / b <= 3.6, (a, b)  # Triton's 3:1 (runs x priority)


def test_a_model_registered_with_more_of_a_resource_lets_waiting_instances_run() -> None:
    limiter = RateLimiter()
    small = limiter.register("small:1", [(rule(("R", 1)), 2)], device=0)
    with running(small):
        second = Run(small)
        assert waiting(limiter, 1)
        limiter.register("big:1", [(rule(("R", 2)), 1)], device=0)  # there are 2 of R now
        assert second.started.wait(10)
        second.finish()


def test_given_counts_are_checked_before_a_global_and_per_device_clash_in_tritons_order() -> None:
    """helper-129: Triton names a count too small first, global resources first, then names in order."""
    limiter = RateLimiter(parse_resources(["R:1", "A:1", "B:1"]))
    limiter.register("g:1", [(rule(("R", 1, True)), 1)], device=0)
    with pytest.raises(InvalidRequest, match=r'"R" is limited to 1 .* count is 2'):
        limiter.register("d:1", [(rule(("R", 2)), 1)], device=0)
    with pytest.raises(InvalidRequest, match='"A" is limited to 1'):
        limiter.register("ab:1", [(rule(("B", 2), ("A", 2)), 1)], device=0)
