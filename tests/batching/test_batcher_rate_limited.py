"""A DynamicBatcher whose instances wait for Triton's rate limiter (``RateLimiter``): what happens to its batch
meanwhile. The batch grows as Triton's does (by preferred sizes), its requests are answered at their deadline
or dropped when their caller goes, and a worker's failure answers every request the batch came to hold. Real
threads, a real RateLimiter; the resource is held by another model's instance in a thread of its own."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Mapping, Sequence
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest

from polystack.batching import BatchPolicy, DynamicBatcher
from polystack.batching.rate_limiter import ModelInstances, RateLimiter, Resource, Rule
from polystack.errors import BackendError, DeadlineExceeded
from polystack.stats import ModelStats
from polystack.types import DType, Signature, TensorSpec

SIG = Signature(inputs=(TensorSpec("x", DType.FP32, (-1, 4)),), outputs=(TensorSpec("y", DType.FP32, (-1, 4)),))
R1 = Rule((Resource("R", 1),))
X = np.ones((1, 4), np.float32)


class Echo:
    """y = x, recording each call's rows; ``broken``: a merged call (rows > 1) answers without y."""

    def __init__(self, broken: bool = False) -> None:
        self.signature = SIG
        self.calls: list[int] = []
        self.broken = broken

    def infer(self, inputs: Mapping[str, np.ndarray], outputs: Sequence[str] | None = None) -> dict[str, np.ndarray]:
        x = inputs["x"]
        self.calls.append(len(x))
        return {"z": x} if self.broken and len(x) > 1 else {"y": x}

    def close(self) -> None:
        pass


def batcher(limits: ModelInstances, model: Echo, **policy: Any) -> DynamicBatcher:
    entry = SimpleNamespace(model=model, signature=SIG, name="m", version=1, stats=ModelStats(), spec=None)
    return DynamicBatcher(entry, BatchPolicy(**{"max_batch_size": 8, "max_queue_delay_ms": 0, **policy}), limits=limits)


class Held:
    """R held by another model's instance until ``free()``."""

    def __init__(self, limiter: RateLimiter) -> None:
        holder = limiter.register("holder:1", [(R1, 1)], device=0)
        self._started, self._free = threading.Event(), threading.Event()

        def run() -> None:
            with holder.held():
                self._started.set()
                self._free.wait(10)

        self._thread = threading.Thread(target=run, daemon=True)
        self._thread.start()
        assert self._started.wait(5)

    def free(self) -> None:
        self._free.set()
        self._thread.join(5)  # R given back


def waiting(limiter: RateLimiter, n: int = 1) -> None:
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        with limiter._lock:
            if len(limiter._waiting) >= n:
                return
        time.sleep(0.005)
    raise AssertionError("nothing waits for the rate limiter")


def test_requests_that_came_while_the_batch_waited_run_with_it() -> None:
    limiter = RateLimiter()
    model = Echo()
    b = batcher(limiter.register("m:1", [(R1, 1)], device=0), model)
    held = Held(limiter)
    first = b.submit({"x": X})
    waiting(limiter)
    more = [b.submit({"x": X}) for _ in range(4)]
    assert b.depth == 5  # the waiting batch counts, as Triton's pending request count does
    held.free()
    for f in [first, *more]:
        f.result(5)
    b.close()
    assert model.calls == [5]


def test_the_batch_grows_to_a_preferred_size_only() -> None:
    """helper-130: preferred sizes 2 and 4 and a 1 s delay: a batch of 2 waiting for R, one request more came:
    the model ran 3 rows, a size neither preferred nor due (Triton grows a waiting batch as GetDynamicBatch
    sends one)."""
    limiter = RateLimiter()
    model = Echo()
    b = batcher(limiter.register("m:1", [(R1, 1)], device=0), model, max_queue_delay_ms=1000,
                preferred_batch_sizes=(2, 4))  # fmt: skip
    held = Held(limiter)
    sent = [b.submit({"x": X}) for _ in range(2)]  # a preferred size: sent at once, to wait for R
    waiting(limiter)
    sent.append(b.submit({"x": X}))
    held.free()
    for f in sent:
        f.result(5)
    b.close()
    assert model.calls == [2, 1], model.calls


def test_a_worker_failure_answers_the_requests_that_joined_the_waiting_batch() -> None:
    """helper-130: the error handler failed the batch as taken, and those that joined it waited forever."""
    limiter = RateLimiter()
    b = batcher(limiter.register("m:1", [(R1, 1)], device=0), Echo(broken=True))
    held = Held(limiter)
    first = b.submit({"x": X}, ["y"])
    waiting(limiter)
    joined = [b.submit({"x": X}, ["y"]) for _ in range(2)]
    held.free()
    for f in [first, *joined]:
        with pytest.raises(BackendError, match="failed in its batch worker"):
            f.result(5)
    b.close()


def test_a_request_past_its_deadline_is_answered_then_and_never_run() -> None:
    """helper-130: a 50 ms timeout was answered once the batch got its resources, a second later."""
    limiter = RateLimiter()
    model = Echo()
    b = batcher(limiter.register("m:1", [(R1, 1)], device=0), model)
    held = Held(limiter)

    async def late() -> float:
        t0 = time.monotonic()
        with pytest.raises(DeadlineExceeded):
            await b.infer_async({"x": X}, timeout_s=0.05)
        return time.monotonic() - t0

    took = asyncio.run(late())
    assert took < 0.9, took  # R is held for good: only the deadline answers it
    assert b.depth == 0
    held.free()
    b.close()
    assert model.calls == []


def test_a_request_whose_caller_went_away_while_its_batch_waited_is_not_run() -> None:
    limiter = RateLimiter()
    model = Echo()
    b = batcher(limiter.register("m:1", [(R1, 1)], device=0), model)
    held = Held(limiter)

    async def gone() -> None:
        task = asyncio.ensure_future(b.infer_async({"x": X}))
        await asyncio.sleep(0)
        await asyncio.get_running_loop().run_in_executor(None, waiting, limiter)
        task.cancel()
        await asyncio.sleep(0.05)

    asyncio.run(gone())
    held.free()
    b.close()
    assert model.calls == []
    with limiter._lock:  # the wait was given up, and nothing is held
        assert not limiter._waiting and not any(limiter._taken.values())


def test_no_second_batch_forms_while_one_waits_for_the_rate_limiter() -> None:
    """helper-173 (Triton's L0_rate_limiter): two instances, every size preferred: each instance's worker formed a
    batch at once and waited for R, splitting the queue into small batches (15 calls for 40 requests where Triton
    ran 10-11). As Triton's batcher grows its one payload waiting in the rate limiter, the waiting batch takes what
    came, and the next forms from the rest."""
    limiter = RateLimiter()
    model = Echo()
    b = batcher(limiter.register("m:1", [(R1, 2)], device=0), model, max_queue_delay_ms=1000, max_batch_size=4, instances=2,
                preferred_batch_sizes=(1, 2, 3, 4))  # fmt: skip
    held = Held(limiter)
    sent = [b.submit({"x": X})]  # a preferred size: sent at once, to wait for R
    waiting(limiter)
    sent += [b.submit({"x": X}) for _ in range(4)]
    time.sleep(0.1)  # the other instance's worker would have formed its batch by now
    held.free()
    for f in sent:
        f.result(5)
    b.close()
    assert model.calls == [4, 1], model.calls


def test_a_full_waiting_batch_lets_the_next_one_form_and_wait_on_another_instance() -> None:
    """As Triton forms a new payload once its waiting one is saturated: a batch that cannot grow holds back none."""
    limiter = RateLimiter()
    model = Echo()
    b = batcher(limiter.register("m:1", [(R1, 2)], device=0), model, max_queue_delay_ms=1000, max_batch_size=4,
                instances=2, preferred_batch_sizes=(4,))  # fmt: skip
    held = Held(limiter)
    sent = [b.submit({"x": X}) for _ in range(4)]  # full: it waits for R
    waiting(limiter)
    sent += [b.submit({"x": X}) for _ in range(4)]
    waiting(limiter, 2)  # the next, full too, waits on the other instance
    held.free()
    for f in sent:
        f.result(5)
    b.close()
    assert model.calls == [4, 4], model.calls


def test_requests_join_a_waiting_batch_as_they_come_and_the_rest_form_the_next() -> None:
    """As Triton's payload takes requests while its instance waits: a batch staged with 3 of its 4 takes the 4th as
    it comes, and the 4 after it form the next batch, which waits on the other instance. They joined only at the
    grant, so every queued request waited for the first batch's instance, the second one idle (the test above
    failed so once on Python 3.13, its worker having taken the first requests before the fourth came)."""
    limiter = RateLimiter()
    model = Echo()
    b = batcher(limiter.register("m:1", [(R1, 2)], device=0), model, max_queue_delay_ms=1000, max_batch_size=4,
                instances=2, preferred_batch_sizes=(4,))  # fmt: skip
    held = Held(limiter)
    sent = [b.submit({"x": X}) for _ in range(3)]
    waiting(limiter)  # staged with what it had
    sent += [b.submit({"x": X}) for _ in range(5)]
    waiting(limiter, 2)
    assert b.depth == 8
    held.free()
    for f in sent:
        f.result(5)
    b.close()
    assert model.calls == [4, 4], model.calls
