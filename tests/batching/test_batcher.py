"""DynamicBatcher around a model: merging, preferred sizes, a full queue, deadlines, failure isolation."""

from __future__ import annotations

import asyncio
import gc
import threading
import time
from collections.abc import Iterator, Mapping
from concurrent.futures import Future
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest

from polystack.backends.base import CheckedModel
from polystack.backends.null import NullModel
from polystack.batching import BatchPolicy, DynamicBatcher, QueuePolicy
from polystack.errors import BackendError, DeadlineExceeded, InvalidRequest, InvalidTensor, ModelClosed, QueueFull
from polystack.stats import ModelStats
from polystack.types import DType, Signature, TensorSpec

SIG = Signature(
    inputs=(TensorSpec("x", DType.FP32, (-1, 4)),),
    outputs=(TensorSpec("y", DType.FP32, (-1, 4)), TensorSpec("z", DType.FP32, (-1, 4))),
)


class Recording:
    """Doubles its input into y, negates into z, after a delay; fails on any NaN; records batch sizes."""

    def __init__(self, delay_s: float = 0.0) -> None:
        self.signature = SIG
        self.delay_s = delay_s
        self.batches: list[int] = []
        self.seen: list[list[float]] = []  # each call's rows, by the first value of each
        self.lock = threading.Lock()

    def infer(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        x = inputs["x"]
        with self.lock:
            self.batches.append(x.shape[0])
            self.seen.append([float(v) for v in x[:, 0]])
        if self.delay_s:
            time.sleep(self.delay_s)
        if np.isnan(x).any():
            raise BackendError("the runtime choked on a NaN")
        return {"y": x * 2, "z": -x}

    def close(self) -> None:
        pass


class Gated(Recording):
    """A Recording whose first call waits until ``release``: requests submitted meanwhile queue behind it, however
    slowly a loaded machine runs the test (a sleep of 20 ms was too short there to know the worker was busy)."""

    def __init__(self) -> None:
        super().__init__()
        self.started, self.released = threading.Event(), threading.Event()

    def infer(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        if not self.started.is_set():
            self.started.set()
            self.released.wait(5)
        return super().infer(inputs)

    def busy(self, submitted: Any) -> Any:
        """Wait until the worker runs ``submitted`` (the blocker), then hand it back."""
        assert self.started.wait(5), "the worker never ran the first request"
        return submitted

    def release(self) -> None:
        self.released.set()


def entry_for(model: Any) -> SimpleNamespace:
    return SimpleNamespace(name="m", model=CheckedModel(model), signature=model.signature, stats=ModelStats())


@pytest.fixture
def make() -> Iterator[Any]:
    made: list[DynamicBatcher] = []

    def factory(model: Any, **policy: Any) -> DynamicBatcher:
        policy.setdefault("idle_gap_ms", 0)  # Triton's rule unless a test asks for the gap
        b = DynamicBatcher(entry_for(model), BatchPolicy(**policy))
        made.append(b)
        return b

    yield factory
    for b in made:
        b.close(drain=False, timeout_s=5)


def rows(n: int, value: float = 1.0) -> dict[str, np.ndarray]:
    return {"x": np.full((n, 4), value, np.float32)}


def test_concurrent_requests_share_one_call_and_get_their_own_rows(make: Any) -> None:
    model = Recording(delay_s=0.02)
    b = make(model, max_batch_size=16, max_queue_delay_ms=50)
    futures = [b.submit(rows(2, float(i))) for i in range(6)]
    results = [f.result(timeout=5) for f in futures]
    for i, r in enumerate(results):
        np.testing.assert_array_equal(r["y"], np.full((2, 4), 2.0 * i, np.float32))
    assert sum(model.batches) == 12 and len(model.batches) < 6
    stats = b.entry.stats.to_dict()
    phases = stats["inference_stats"]
    assert phases["success"]["count"] == 6
    # each phase counts every request once; merging and splitting take time, unlike the lone-request path
    assert all(phases[k]["count"] == 6 for k in ("compute_input", "compute_infer", "compute_output"))
    assert phases["compute_input"]["ns"] > 0 and phases["compute_output"]["ns"] > 0
    assert phases["compute_infer"]["ns"] >= 6 * 20_000_000  # the model's delay, charged to each request
    assert phases["cache_hit"] == phases["cache_miss"] == {"count": 0, "ns": 0}  # no response cache
    assert sum(row["batch_size"] * row["compute_infer"]["count"] for row in stats["batch_stats"]) == 12
    for row in stats["batch_stats"]:
        assert set(row) == {"batch_size", "compute_input", "compute_infer", "compute_output"}
        assert row["compute_input"]["count"] == row["compute_infer"]["count"] == row["compute_output"]["count"]


def test_batch_never_exceeds_max_batch_size(make: Any) -> None:
    model = Recording(delay_s=0.01)
    b = make(model, max_batch_size=5, max_queue_delay_ms=30)
    futures = [b.submit(rows(2)) for _ in range(10)]
    for f in futures:
        f.result(timeout=5)
    assert max(model.batches) <= 5 and sum(model.batches) == 20


@pytest.mark.parametrize("instances", [1, 2])
def test_a_full_batch_of_several_rows_a_request_dispatches_without_waiting_out_the_delay(
    make: Any, instances: int
) -> None:
    """A batch is full by its rows, not its requests: two of 4 rows fill 8 and leave at once."""
    model = Recording()
    b = make(model, max_batch_size=8, max_queue_delay_ms=5_000, instances=instances)
    started = time.monotonic()
    futures = [b.submit(rows(4)) for _ in range(2)]
    for f in futures:
        f.result(timeout=5)
    assert time.monotonic() - started < 2.0
    assert model.batches == [8]


def test_the_rows_left_after_a_full_batch_wait_for_their_own_batch(make: Any) -> None:
    model = Recording(delay_s=0.05)
    b = make(model, max_batch_size=4, max_queue_delay_ms=5_000)
    first = [b.submit(rows(1)) for _ in range(4)]  # a full batch: runs at once (50 ms)
    time.sleep(0.01)
    rest = [b.submit(rows(1)) for _ in range(6)]  # one more full batch, then 2 rows that wait for the delay
    started = time.monotonic()
    for f in first + rest[:4]:
        f.result(timeout=5)
    assert time.monotonic() - started < 2.0
    assert model.batches[:2] == [4, 4]
    assert all(not f.done() for f in rest[4:])  # half a batch: waits out the 5 s delay for others to join
    b.close(drain=False, timeout_s=5)


def test_preferred_size_dispatches_without_waiting_out_the_delay(make: Any) -> None:
    model = Recording()
    b = make(model, max_batch_size=32, max_queue_delay_ms=5_000, preferred_batch_sizes=(4,))
    started = time.monotonic()
    futures = [b.submit(rows(1)) for _ in range(4)]
    for f in futures:
        f.result(timeout=5)
    assert time.monotonic() - started < 2.0
    assert model.batches == [4]


def test_batches_leave_as_tritons_dynamic_batcher_sends_them(make: Any) -> None:
    """Triton's GetDynamicBatch: requests that make a preferred size leave at once, without those after them;
    a batch the next request cannot join leaves at once; one at the largest preferred size leaves at once. All
    three waited out the whole delay (polystack counted every request that fit, and sent only full or
    preferred totals)."""
    model = Recording()
    b = make(model, max_batch_size=8, max_queue_delay_ms=5_000, preferred_batch_sizes=(4,))
    started = time.monotonic()
    two = [b.submit(rows(2)) for _ in range(3)]  # 2 + 2 make 4: they leave; the third waits for company
    for f in two[:2]:
        f.result(timeout=5)
    assert time.monotonic() - started < 2.0 and model.batches == [4] and not two[2].done()
    b.close(drain=False, timeout_s=5)
    model = Recording()
    b = make(model, max_batch_size=8, max_queue_delay_ms=5_000, preferred_batch_sizes=(4,))
    started = time.monotonic()
    b.submit(rows(6)).result(timeout=5)  # past the largest preferred size: it cannot do better
    assert time.monotonic() - started < 2.0 and model.batches == [6]
    b.close(drain=False, timeout_s=5)
    model = Recording()
    b = make(model, max_batch_size=8, max_queue_delay_ms=5_000)
    started = time.monotonic()
    five, four = b.submit(rows(5)), b.submit(rows(4))  # 5 + 4 pass 8: the 5 leaves, the 4 waits for company
    five.result(timeout=5)
    assert time.monotonic() - started < 2.0 and model.batches == [5] and not four.done()
    b.close(drain=False, timeout_s=5)
    model = Recording()
    b = make(model, max_batch_size=16, max_queue_delay_ms=5_000, preferred_batch_sizes=(4,))
    started = time.monotonic()
    three, more = b.submit(rows(3)), b.submit(rows(3))  # 3 + 3 pass the largest preferred size: the first 3 leave
    three.result(timeout=5)
    assert time.monotonic() - started < 2.0 and model.batches == [3] and not more.done()
    b.close(drain=False, timeout_s=5)


def test_a_batch_full_at_the_models_own_limit_leaves_though_a_preferred_size_is_larger() -> None:
    """The largest preferred size (8) over the model's own row limit (4): four rows waited out the delay."""
    model = Recording()
    entry = SimpleNamespace(name="m", model=CheckedModel(model, 4), signature=model.signature, stats=ModelStats())
    policy = BatchPolicy(max_batch_size=16, preferred_batch_sizes=(8,), max_queue_delay_ms=5_000, idle_gap_ms=0)
    b = DynamicBatcher(entry, policy)
    try:
        started = time.monotonic()
        for f in [b.submit(rows(1)) for _ in range(4)]:
            f.result(timeout=5)
        assert time.monotonic() - started < 2.0 and model.batches == [4]
    finally:
        b.close(drain=False, timeout_s=5)


def test_each_answer_holds_its_outputs_in_the_order_its_request_asked_whatever_its_batch_mates_asked(
    make: Any,
) -> None:
    """Outputs came in the first request's order for the whole batch: a client reading them by position got
    another tensor when batched than alone."""
    model = Recording()
    b = make(model, max_batch_size=8, max_queue_delay_ms=5_000, preferred_batch_sizes=(2,))
    zy, yz = b.submit(rows(1), ["z", "y"]), b.submit(rows(1), ["y", "z"])
    assert list(zy.result(timeout=5)) == ["z", "y"] and list(yz.result(timeout=5)) == ["y", "z"]
    assert model.batches == [2]


def test_a_lone_request_leaves_after_the_idle_gap_not_the_delay(make: Any) -> None:
    model = Recording()
    b = make(model, max_batch_size=32, max_queue_delay_ms=5_000, idle_gap_ms=1)
    started = time.monotonic()
    b.submit(rows(1)).result(timeout=5)
    assert time.monotonic() - started < 1.0
    burst = [b.submit(rows(1)) for _ in range(8)]  # back to back: still one batch (or few)
    for f in burst:
        f.result(timeout=5)
    assert len(model.batches) <= 4


def test_full_queue_refuses_at_once(make: Any) -> None:
    model = Recording(delay_s=0.2)
    b = make(model, max_batch_size=1, max_queue_delay_ms=0, max_queue_size=2)
    first = b.submit(rows(1))
    time.sleep(0.05)  # the worker is busy with the first one
    queued = [b.submit(rows(1)), b.submit(rows(1))]
    started = time.monotonic()
    with pytest.raises(QueueFull):
        b.submit(rows(1))
    assert time.monotonic() - started < 0.05
    for f in [first, *queued]:
        f.result(timeout=5)
    stats = b.entry.stats.to_dict()["inference_stats"]
    assert stats["fail"]["count"] == 1 and stats["success"]["count"] == 3


def test_queue_of_size_zero_has_no_limit(make: Any) -> None:
    """Triton's max_queue_size 0: no limit (a config loaded through the repository extension says so)."""
    model = Recording(delay_s=0.1)
    b = make(model, max_batch_size=1, max_queue_delay_ms=0, max_queue_size=0)
    futures = [b.submit(rows(1)) for _ in range(20)]
    for f in futures:
        f.result(timeout=10)
    assert len(model.batches) == 20


@pytest.mark.parametrize(
    "rule",
    [
        {"client_timeouts": False},  # Triton's allow_timeout_override false
        {"client_timeout_needs_default": True},  # Triton's override with no default timeout to shorten
    ],
    ids=["no override", "no default"],
)
def test_client_deadline_is_ignored_when_the_policy_says_so(make: Any, rule: dict[str, bool]) -> None:
    """The client's own deadline does not apply, the policy's (none) does: under Triton's allow_timeout_override
    false, and where the override has no default timeout to shorten (``client_timeout_needs_default``)."""
    model = Recording(delay_s=0.2)
    b = make(model, max_batch_size=1, max_queue_delay_ms=0, **rule)
    first = b.submit(rows(1))
    time.sleep(0.05)
    patient = b.submit(rows(1, 7.0), timeout_s=0.05)
    assert patient.result(timeout=5)["y"][0, 0] == 14.0  # ran, after waiting longer than its own deadline
    first.result(timeout=5)


def test_client_deadline_shortens_a_default_under_tritons_rule(make: Any) -> None:
    """A Triton config's queue (``client_timeout_needs_default``) with a default timeout: a client's shorter
    deadline applies (without one it is ignored: ``test_client_deadline_is_ignored_when_the_policy_says_so``;
    polystack's own batching takes it alone: ``test_expired_request_is_rejected_and_never_run``)."""
    model = Recording(delay_s=0.2)
    b = make(model, max_batch_size=1, max_queue_delay_ms=0, timeout_s=5.0, client_timeout_needs_default=True)
    first = b.submit(rows(1))
    time.sleep(0.05)
    with pytest.raises(DeadlineExceeded):
        b.submit(rows(1, 7.0), timeout_s=0.05).result(timeout=5)
    first.result(timeout=5)


def test_expired_request_is_rejected_and_never_run(make: Any) -> None:
    model = Recording(delay_s=0.2)
    b = make(model, max_batch_size=1, max_queue_delay_ms=0)
    first = b.submit(rows(1))
    time.sleep(0.05)
    late = b.submit(rows(1, 7.0), timeout_s=0.05)
    with pytest.raises(DeadlineExceeded):
        late.result(timeout=5)
    first.result(timeout=5)
    assert model.batches == [1]  # the expired one never reached the model
    assert b.entry.stats.to_dict()["inference_stats"]["fail"]["count"] == 1


def test_async_deadline_answers_on_time(make: Any) -> None:
    model = Recording(delay_s=0.3)
    b = make(model, max_batch_size=1, max_queue_delay_ms=0, timeout_s=0.05)

    async def main() -> float:
        blocker = asyncio.ensure_future(b.infer_async(rows(1)))
        await asyncio.sleep(0.02)
        started = time.monotonic()
        with pytest.raises(DeadlineExceeded):
            await b.infer_async(rows(1))
        took = time.monotonic() - started
        await blocker
        return took

    assert asyncio.run(main()) < 0.2


def test_a_failing_request_fails_alone(make: Any) -> None:
    model = Recording(delay_s=0.01)
    b = make(model, max_batch_size=16, max_queue_delay_ms=50)
    good1, bad, good2 = b.submit(rows(1, 1.0)), b.submit(rows(1, float("nan"))), b.submit(rows(2, 3.0))
    with pytest.raises(BackendError):
        bad.result(timeout=5)
    np.testing.assert_array_equal(good1.result(timeout=5)["y"], np.full((1, 4), 2.0, np.float32))
    np.testing.assert_array_equal(good2.result(timeout=5)["y"], np.full((2, 4), 6.0, np.float32))
    stats = b.entry.stats.to_dict()["inference_stats"]
    assert stats["fail"]["count"] == 1 and stats["success"]["count"] == 2
    assert stats["queue"]["count"] == 2  # as Triton's: queue (and compute) counts are the successes' (it was 3)


def test_a_failed_batch_runs_again_only_the_requests_still_within_their_deadline(make: Any) -> None:
    """Each request of a failed batch runs alone, to fail only the culprit, but for one past its deadline by
    then, or whose caller left: that one is not run late (helper-89: it ran 690 ms past its deadline)."""
    model = Recording(delay_s=0.6)
    b = make(model, max_batch_size=16, max_queue_delay_ms=20)
    good = b.submit(rows(1, 1.0))
    bad = b.submit(rows(1, float("nan")))
    late = b.submit(rows(1, 7.0), timeout_s=0.4)  # in the batch in time; past its deadline once it failed
    gone = b.submit(rows(1, 9.0))
    deadline = time.monotonic() + 5
    while not model.seen and time.monotonic() < deadline:  # the batch runs (not a sleep: no race under load)
        time.sleep(0.005)
    gone.cancel()  # its caller leaves while its batch runs
    with pytest.raises(DeadlineExceeded, match="not run again"):
        late.result(timeout=5)
    assert not good.done()  # told as the batch failed, not once the others ran again (helper-90)
    with pytest.raises(BackendError):
        bad.result(timeout=5)
    np.testing.assert_array_equal(good.result(timeout=5)["y"], np.full((1, 4), 2.0, np.float32))
    assert model.seen[0] == [1.0, pytest.approx(float("nan"), nan_ok=True), 7.0, 9.0]
    assert model.seen[1:] == [[1.0], [pytest.approx(float("nan"), nan_ok=True)]]  # the late and the gone ones not
    stats = b.entry.stats.to_dict()["inference_stats"]
    assert stats["success"]["count"] == 1 and stats["fail"]["count"] == 3


def test_invalid_request_is_refused_before_queueing(make: Any) -> None:
    b = make(Recording(), max_batch_size=4)
    with pytest.raises(InvalidTensor, match="batch-size must be <= 4"):
        b.submit(rows(5))
    with pytest.raises(InvalidTensor, match="FP32"):
        b.submit({"x": np.zeros((1, 4), np.int64)})
    with pytest.raises(InvalidTensor, match="unexpected inference output"):
        b.submit(rows(1), ["nope"])
    assert b.depth == 0
    # counted as failures, as in /metrics: polystack's choice (tritonserver 2.51 counts none of these, checked)
    assert b.entry.stats.to_dict()["inference_stats"]["fail"]["count"] == 3


def test_a_layout_once_accepted_does_not_let_other_layouts_through(make: Any) -> None:
    """Validation is remembered per input layout (names, datatypes, shapes): a good request's layout is
    checked once, and every other layout still is, however often it comes."""
    b = make(Recording(), max_batch_size=4)
    for _ in range(2):
        assert b.submit(rows(2)).result(timeout=5)["y"].shape == (2, 4)
        with pytest.raises(InvalidTensor, match="FP32"):
            b.submit({"x": np.zeros((2, 4), np.float64)})
        with pytest.raises(InvalidTensor, match="batch-size must be <= 4"):
            b.submit(rows(5))
        with pytest.raises(InvalidTensor, match="unexpected shape"):
            b.submit({"x": np.zeros((2, 5), np.float32)})
        with pytest.raises(InvalidTensor, match="unexpected inference input"):
            b.submit({**rows(2), "extra": np.zeros((2, 4), np.float32)})
    assert b.entry.stats.to_dict()["inference_stats"]["fail"]["count"] == 8


def test_many_layouts_keep_being_checked_and_merged_by_their_trailing_shape() -> None:
    model = Recording()
    sig = Signature(inputs=(TensorSpec("x", DType.FP32, (-1, -1)),), outputs=(TensorSpec("y", DType.FP32, (-1, -1)),))
    model.signature = sig
    b = DynamicBatcher(entry_for(model), BatchPolicy(max_batch_size=4, max_queue_delay_ms=0))
    try:
        for width in range(1, 600):  # more layouts than the batcher remembers
            x = np.full((1, width), width, np.float32)
            assert np.array_equal(b.submit({"x": x}).result(timeout=5)["y"], x * 2)
        with pytest.raises(InvalidTensor, match="batch-size must be <= 4"):
            b.submit({"x": np.zeros((5, 3), np.float32)})
    finally:
        b.close(drain=False, timeout_s=5)


def test_a_request_to_a_closed_batcher_is_a_failure_unless_its_caller_sends_it_on(make: Any) -> None:
    """A server reroutes a request that reaches a model as it closes, and counts it where it runs then;
    any other caller gets ModelClosed, counted here as the failure it is."""
    from polystack.stats import Outcome

    b = make(Recording(), max_batch_size=4)
    b.close()
    with pytest.raises(ModelClosed):
        b.submit(rows(1))
    with pytest.raises(ModelClosed):
        asyncio.run(b.infer_async(rows(1), outcome=Outcome(b.entry.stats, rerouted=True)))
    assert b.entry.stats.to_dict()["inference_stats"]["fail"]["count"] == 1


def test_requested_outputs_are_split_per_request(make: Any) -> None:
    model = Recording(delay_s=0.01)
    b = make(model, max_batch_size=8, max_queue_delay_ms=50)
    only_z, both = b.submit(rows(1, 2.0), ["z"]), b.submit(rows(1, 3.0))
    assert set(only_z.result(timeout=5)) == {"z"}
    assert set(both.result(timeout=5)) == {"y", "z"}


def test_different_trailing_shapes_are_not_merged(make: Any) -> None:
    sig = Signature(inputs=(TensorSpec("x", DType.FP32, (-1, -1)),), outputs=(TensorSpec("y", DType.FP32, (-1, 4)),))
    model = NullModel(sig, delay_ms=10)
    b = make(model, max_batch_size=8, max_queue_delay_ms=30)
    a = b.submit({"x": np.zeros((1, 3), np.float32)})
    c = b.submit({"x": np.zeros((1, 5), np.float32)})
    assert a.result(timeout=5)["y"].shape == (1, 4) and c.result(timeout=5)["y"].shape == (1, 4)


def test_a_request_of_another_shape_sends_the_batch_before_it_as_triton_does(make: Any) -> None:
    """Triton's GetDynamicBatch sends the pending batch at once when the next request's shapes differ (its
    inputs of variable dimensions must be equal within a batch), and never lets a later request of the
    batch's shape pass the one that differs. polystack held the 3-wide request for the whole delay, merged
    it with the last one, and answered the 5-wide one first."""
    sig = Signature(inputs=(TensorSpec("x", DType.FP32, (-1, -1)),), outputs=(TensorSpec("y", DType.FP32, (-1, 4)),))
    model = NullModel(sig, delay_ms=0)
    b = make(model, max_batch_size=8, max_queue_delay_ms=5_000)
    started = time.monotonic()
    three = b.submit({"x": np.zeros((1, 3), np.float32)})
    five = b.submit({"x": np.zeros((2, 5), np.float32)})
    last = b.submit({"x": np.zeros((1, 3), np.float32)})
    assert three.result(timeout=5)["y"].shape == (1, 4) and five.result(timeout=5)["y"].shape == (2, 4)
    assert time.monotonic() - started < 2.0 and not last.done()
    assert b.depth == 1


def test_policy_is_validated() -> None:
    with pytest.raises(InvalidRequest):
        BatchPolicy(max_batch_size=0)
    with pytest.raises(InvalidRequest):
        BatchPolicy(max_batch_size=4, preferred_batch_sizes=(8,))
    p = BatchPolicy(max_batch_size=8, preferred_batch_sizes=(2, 4), timeout_s=1.5)
    assert BatchPolicy.from_dict(p.to_dict()) == p


def test_async_requests_of_one_batch_wake_their_loop_once(make: Any) -> None:
    model = Recording(delay_s=0.05)
    b = make(model, max_batch_size=8, max_queue_delay_ms=20)
    wakeups: list[int] = []

    async def main() -> list[dict[str, np.ndarray]]:
        loop = asyncio.get_running_loop()
        real = loop.call_soon_threadsafe

        def counting(callback: Any, *args: Any, **kwargs: Any) -> Any:
            if threading.current_thread() is not threading.main_thread():
                wakeups.append(1)
            return real(callback, *args, **kwargs)

        loop.call_soon_threadsafe = counting  # type: ignore[method-assign]
        return await asyncio.gather(*(b.infer_async(rows(1, float(i))) for i in range(8)))

    results = asyncio.run(main())
    assert model.batches == [8]
    assert [float(r["y"][0, 0]) for r in results] == [2.0 * i for i in range(8)]
    assert len(wakeups) == 1


def test_an_async_caller_leaving_mid_batch_does_not_hurt_the_others(make: Any) -> None:
    model = Recording(delay_s=0.1)
    b = make(model, max_batch_size=4, max_queue_delay_ms=20)

    async def main() -> list[Any]:
        tasks = [asyncio.ensure_future(b.infer_async(rows(1, float(i)))) for i in range(4)]
        await asyncio.sleep(0.05)  # the batch of 4 is running now
        tasks[1].cancel()
        return await asyncio.gather(*tasks, return_exceptions=True)

    results = asyncio.run(main())
    assert isinstance(results[1], asyncio.CancelledError)
    assert [float(results[i]["y"][0, 0]) for i in (0, 2, 3)] == [0.0, 4.0, 6.0]
    assert model.batches == [4]
    assert b.infer(rows(1, 5.0))["y"][0, 0] == 10.0  # the worker is still serving


def test_a_future_its_caller_cancelled_is_skipped_and_the_worker_goes_on(make: Any) -> None:
    model = Recording(delay_s=0.1)
    b = make(model, max_batch_size=1, max_queue_delay_ms=0)
    running = b.submit(rows(1, 1.0))
    time.sleep(0.03)  # the first request is in the model; the next two wait in the queue
    cancelled, kept = b.submit(rows(1, 2.0)), b.submit(rows(1, 3.0))
    assert cancelled.cancel()
    assert running.result(timeout=5)["y"][0, 0] == 2.0
    assert kept.result(timeout=5)["y"][0, 0] == 6.0


class Echo:
    """Returns its input as it got it, after a delay: what the batcher merged, row for row."""

    def __init__(self, dtype: DType, delay_s: float = 0.02) -> None:
        self.signature = Signature(
            inputs=(TensorSpec("x", dtype, (-1, 3)),), outputs=(TensorSpec("y", dtype, (-1, 3)),)
        )
        self.delay_s = delay_s
        self.batches: list[np.ndarray] = []

    def infer(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        time.sleep(self.delay_s)
        self.batches.append(inputs["x"])
        return {"y": inputs["x"]}

    def close(self) -> None:
        pass


@pytest.mark.parametrize(
    ("dtype", "make_rows"),
    [
        (DType.FP32, lambda n, i: np.full((n, 3), i, np.float32)),
        (DType.FP16, lambda n, i: np.full((n, 3), i / 3, np.float16)),
        (DType.INT64, lambda n, i: np.full((n, 3), 2**40 + i, np.int64)),
        (DType.BOOL, lambda n, i: np.full((n, 3), i % 2 == 1)),
        (DType.BYTES, lambda n, i: np.full((n, 3), f"r{i}".encode(), object)),
        (DType.FP32, lambda n, i: np.full((n, 6), i, np.float32)[:, ::2]),  # strided views
    ],
)
def test_merged_requests_reach_the_model_as_one_batch_in_order(make: Any, dtype: DType, make_rows: Any) -> None:
    model = Echo(dtype)
    b = make(model, max_batch_size=16, max_queue_delay_ms=200, preferred_batch_sizes=[10])
    sizes = (1, 4, 2, 3)
    parts = [make_rows(n, i) for i, n in enumerate(sizes)]
    futures = [b.submit({"x": p}) for p in parts]
    results = [f.result(timeout=5)["y"] for f in futures]
    assert len(model.batches) == 1
    merged = model.batches[0]
    assert merged.dtype == parts[0].dtype and merged.shape == (10, 3) and merged.flags.c_contiguous
    np.testing.assert_array_equal(merged, np.concatenate(parts))
    for got, sent in zip(results, parts, strict=True):
        np.testing.assert_array_equal(got, sent)


def test_merging_a_batch_keeps_the_gil() -> None:
    """A worker that lets go of the GIL while it merges waits for a busy event loop to give it back;
    merging must copy with the GIL held (numpy's concatenate drops it for each large part)."""
    import sys

    from polystack.batching.batcher import _concat_rows

    parts = [np.ones((8, 3, 32, 32), np.float32) for _ in range(4)]  # four 8-item CNN requests, 384 KiB
    ticks = [0]
    stop = threading.Event()

    def busy() -> None:  # a thread that runs Python whenever it holds the GIL, like a loaded event loop
        while not stop.is_set():
            ticks[0] += 1

    old = sys.getswitchinterval()
    sys.setswitchinterval(0.5)  # no forced switch while merging: only a voluntary release lets `busy` run
    spinner = threading.Thread(target=busy, daemon=True)
    try:
        spinner.start()
        time.sleep(0.01)  # `busy` holds the GIL now; taking it back costs this thread one switch interval
        ran_during = []
        for _ in range(3):
            before = ticks[0]
            merged = _concat_rows(parts)
            ran_during.append(ticks[0] - before)
        assert ran_during == [0, 0, 0]
        np.testing.assert_array_equal(merged, np.concatenate(parts))
    finally:
        stop.set()
        sys.setswitchinterval(old)
        spinner.join(5)


class Reducing:
    """Sums over the batch (a statistic, not one row per row) after a delay, with an output of no declared rank,
    as ONNX leaves an output whose shape it could not infer."""

    def __init__(self, keepdims: bool) -> None:
        self.signature = Signature(
            inputs=(TensorSpec("x", DType.FP32, (-1, 3)),), outputs=(TensorSpec("s", DType.FP32, ()),)
        )
        self.keepdims = keepdims
        self.batches: list[int] = []

    def infer(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        self.batches.append(len(inputs["x"]))
        time.sleep(0.01)
        x = inputs["x"]
        return {"s": x.sum(axis=0, keepdims=True) if self.keepdims else np.asarray(x.sum())}

    def close(self) -> None:
        pass


@pytest.mark.parametrize("keepdims", [False, True], ids=["scalar", "one-row"])
def test_a_model_whose_outputs_do_not_follow_the_batch_answers_each_request_alone(
    make: Any, keepdims: bool, caplog: pytest.LogCaptureFixture
) -> None:
    model = Reducing(keepdims)
    b = make(model, max_batch_size=8, max_queue_delay_ms=100)
    xs = [np.full((1, 3), i + 1, np.float32) for i in range(3)]
    with caplog.at_level("WARNING", logger="polystack.batching"):
        results = [f.result(timeout=5) for f in [b.submit({"x": x}) for x in xs]]
    for x, r in zip(xs, results, strict=True):  # each its own sum, as the model gives it alone
        np.testing.assert_array_equal(r["s"], Reducing(keepdims).infer({"x": x})["s"])
    assert 3 in model.batches and not b.batchable
    assert "do not follow the batch" in caplog.text and "--no-batching" in caplog.text
    model.batches.clear()
    before = b.entry.stats.inference_count
    [f.result(timeout=5) for f in [b.submit({"x": np.repeat(x, 2, axis=0)}) for x in xs]]
    assert model.batches == [2, 2, 2]  # not merged again
    assert b.entry.stats.inference_count - before == 6  # rows, as before the switch and without batching


def test_the_worker_survives_an_error_it_did_not_expect() -> None:
    calls: list[int] = []

    def on_batch(items: int, requests: int, seconds: float) -> None:
        calls.append(items)
        if len(calls) == 1:
            raise RuntimeError("an observer that broke")

    b = DynamicBatcher(entry_for(Recording()), BatchPolicy(max_batch_size=4, max_queue_delay_ms=1), on_batch=on_batch)
    try:
        with pytest.raises(BackendError, match="batch worker"):
            b.submit(rows(1)).result(timeout=5)
        np.testing.assert_array_equal(b.submit(rows(2, 3.0)).result(timeout=5)["y"], np.full((2, 4), 6.0, np.float32))
    finally:
        b.close(drain=False, timeout_s=5)


def test_higher_priority_requests_run_first_and_in_order_within_a_level(make: Any) -> None:
    """Triton's priority levels: 1 is the highest; 0, or a level past priority_levels, is the default level."""
    model = Gated()
    b = make(model, max_batch_size=1, max_queue_delay_ms=0, priority_levels=3, default_priority_level=2)
    blocker = model.busy(b.submit(rows(1, 0.0)))  # the worker is busy with it: the others queue
    levels = {1.0: 3, 2.0: 0, 3.0: 1, 4.0: 2, 5.0: 99, 6.0: 1}
    futures = [b.submit(rows(1, value), priority=level) for value, level in levels.items()]
    model.release()
    for f in [blocker, *futures]:
        f.result(timeout=5)
    assert model.seen == [[0.0], [3.0], [6.0], [2.0], [4.0], [5.0], [1.0]]


def test_a_batch_takes_the_highest_priority_requests_first(make: Any) -> None:
    model = Gated()
    b = make(model, max_batch_size=4, max_queue_delay_ms=0, priority_levels=2, default_priority_level=2)
    blocker = model.busy(b.submit(rows(1, 0.0)))
    futures = [b.submit(rows(1, float(v)), priority=p) for v, p in [(1, 2), (2, 2), (3, 1), (4, 2), (5, 1), (6, 2)]]
    model.release()
    for f in [blocker, *futures]:
        f.result(timeout=5)
    assert model.seen == [[0.0], [3.0, 5.0, 1.0, 2.0], [4.0, 6.0]]


def test_without_priority_levels_a_requests_priority_changes_nothing(make: Any) -> None:
    model = Gated()
    b = make(model, max_batch_size=1, max_queue_delay_ms=0)
    blocker = model.busy(b.submit(rows(1, 0.0)))
    futures = [b.submit(rows(1, float(v)), priority=p) for v, p in [(1, 5), (2, 1), (3, 0)]]
    model.release()
    for f in [blocker, *futures]:
        f.result(timeout=5)
    assert model.seen == [[0.0], [1.0], [2.0], [3.0]]


def test_each_priority_level_has_its_own_queue_limit_and_timeout(make: Any) -> None:
    """A level's priority_queue_policy over the default_queue_policy, as Triton's: the limit counts that
    level's queue only, and its timeout applies to its requests."""
    model = Recording(delay_s=0.2)
    low = QueuePolicy(max_queue_size=1, timeout_s=0.05, client_timeouts=False)
    b = make(
        model,
        max_batch_size=1,
        max_queue_delay_ms=0,
        max_queue_size=0,
        priority_levels=2,
        default_priority_level=1,
        priority_queues=((2, low),),
    )
    blocker = b.submit(rows(1, 0.0))
    time.sleep(0.05)
    late = b.submit(rows(1, 1.0), priority=2, timeout_s=10)  # the level allows no override: 50 ms it is
    with pytest.raises(QueueFull, match="priority level 2"):
        b.submit(rows(1, 2.0), priority=2)
    urgent = [b.submit(rows(1, 3.0 + i)) for i in range(3)]  # level 1 (the default): no limit
    with pytest.raises(DeadlineExceeded):
        late.result(timeout=5)
    for f in [blocker, *urgent]:
        f.result(timeout=5)
    assert model.seen == [[0.0], [3.0], [4.0], [5.0]]
    assert b.depth == 0


def test_priority_levels_are_validated_as_triton_validates_them() -> None:
    with pytest.raises(InvalidRequest, match=r"default priority level must be in range \[1, 2\]"):
        BatchPolicy(priority_levels=2)
    with pytest.raises(InvalidRequest, match=r"default priority level must be in range \[1, 2\]"):
        BatchPolicy(priority_levels=2, default_priority_level=3)
    with pytest.raises(InvalidRequest, match=r"priority queue policy must have priority level in range \[1, 2\]"):
        BatchPolicy(priority_levels=2, default_priority_level=1, priority_queues=((3, QueuePolicy()),))
    with pytest.raises(InvalidRequest, match="max_queue_size"):
        BatchPolicy(priority_levels=2, default_priority_level=1, priority_queues=((2, QueuePolicy(max_queue_size=-1)),))
    p = BatchPolicy(priority_levels=2, default_priority_level=1, priority_queues=((2, QueuePolicy(5, 0.5, False)),))
    assert BatchPolicy.from_dict(p.to_dict()) == p
    assert p.queue_policy(2) == QueuePolicy(5, 0.5, False)
    assert p.queue_policy(1) == QueuePolicy(p.max_queue_size, p.timeout_s, p.client_timeouts)


class SlowOnes(Recording):
    """A request whose first value is 1.0 takes 0.3 s, the others 0.02 s."""

    def infer(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        self.delay_s = 0.3 if float(inputs["x"][0, 0]) == 1.0 else 0.02
        return super().infer(inputs)


@pytest.mark.parametrize("preserve", [False, True])
def test_preserve_ordering_answers_in_the_order_requests_came(make: Any, preserve: bool) -> None:
    """Triton's preserve_ordering: with two instances a fast request sent after a slow one finishes first, and
    its answer waits for the slow one's; without it, answers go out as they finish."""
    b = make(SlowOnes(), max_batch_size=1, max_queue_delay_ms=0, instances=2, preserve_ordering=preserve)
    answered: list[float] = []
    slow = b.submit(rows(1, 1.0))
    time.sleep(0.02)
    fast = b.submit(rows(1, 2.0))
    for f, value in ((slow, 1.0), (fast, 2.0)):
        f.add_done_callback(lambda _, v=value: answered.append(v))
    fast.result(timeout=5)
    slow.result(timeout=5)
    assert answered == ([1.0, 2.0] if preserve else [2.0, 1.0])


def test_preserve_ordering_does_not_wait_for_a_request_that_left_the_queue(make: Any) -> None:
    """A request whose deadline passed in the queue (its caller answered at once) holds no later answer back."""
    b = make(Recording(delay_s=0.2), max_batch_size=1, max_queue_delay_ms=0, preserve_ordering=True)

    async def main() -> list[float]:
        blocker = asyncio.ensure_future(b.infer_async(rows(1, 0.0)))
        await asyncio.sleep(0.02)
        late = asyncio.ensure_future(b.infer_async(rows(1, 1.0), None, 0.05))
        await asyncio.sleep(0.01)
        after = asyncio.ensure_future(b.infer_async(rows(1, 2.0)))
        with pytest.raises(DeadlineExceeded):
            await late
        done = await asyncio.wait_for(asyncio.gather(blocker, after), 5)
        return [float(r["y"][0, 0]) for r in done]

    assert asyncio.run(main()) == [0.0, 4.0]


def test_preserve_ordering_allows_one_priority_level_as_in_triton() -> None:
    with pytest.raises(InvalidRequest, match="Only one priority level is allowed when 'preserve_ordering' is true"):
        BatchPolicy(preserve_ordering=True, priority_levels=2, default_priority_level=1)
    assert BatchPolicy(preserve_ordering=True, priority_levels=1, default_priority_level=1).preserve_ordering


def test_a_delayed_request_runs_after_those_not_past_their_timeout(make: Any) -> None:
    """Triton's timeout_action DELAY: a request past its queue timeout is not refused; it waits until the
    requests of its level not past theirs have run (and its caller gets its answer, however late)."""
    model = Recording(delay_s=0.5)
    b = make(model, max_batch_size=1, max_queue_delay_ms=0, timeout_s=0.35, client_timeouts=False, delay=True)

    async def main() -> list[float]:
        blocker = asyncio.ensure_future(b.infer_async(rows(1, 0.0)))
        await asyncio.sleep(0.02)
        delayed = asyncio.ensure_future(b.infer_async(rows(1, 1.0)))  # past its 350 ms when the worker is free
        await asyncio.sleep(0.38)
        fresh = asyncio.ensure_future(b.infer_async(rows(1, 2.0)))  # within its 350 ms then
        done = await asyncio.wait_for(asyncio.gather(blocker, delayed, fresh), 10)
        return [float(r["y"][0, 0]) for r in done]

    assert asyncio.run(main()) == [0.0, 2.0, 4.0]
    assert model.seen == [[0.0], [2.0], [1.0]]
    assert b.entry.stats.to_dict()["inference_stats"]["fail"]["count"] == 0


def test_delayed_requests_of_a_level_still_go_before_lower_levels(make: Any) -> None:
    model = Recording(delay_s=0.5)
    urgent = QueuePolicy(max_queue_size=0, timeout_s=0.2, client_timeouts=False, delay=True)
    b = make(
        model,
        max_batch_size=1,
        max_queue_delay_ms=0,
        priority_levels=2,
        default_priority_level=2,
        priority_queues=((1, urgent),),
    )
    blocker = b.submit(rows(1, 0.0))
    time.sleep(0.02)
    late_urgent = b.submit(rows(1, 1.0), priority=1)  # past its 200 ms when the worker is free: delayed
    low = b.submit(rows(1, 2.0), priority=2)
    for f in (blocker, late_urgent, low):
        f.result(timeout=10)
    assert model.seen == [[0.0], [1.0], [2.0]]


def test_delay_is_refused_with_preserve_ordering_as_in_triton() -> None:
    with pytest.raises(InvalidRequest, match="can not have DELAY as timeout action when 'preserve_ordering' is true"):
        BatchPolicy(preserve_ordering=True, timeout_s=1.0, delay=True)
    with pytest.raises(InvalidRequest, match="can not have DELAY"):
        BatchPolicy(preserve_ordering=True, priority_levels=1, default_priority_level=1,
                    priority_queues=((1, QueuePolicy(timeout_s=1.0, delay=True)),))  # fmt: skip
    assert BatchPolicy(preserve_ordering=True, delay=True).delay  # no timeout: nothing is ever delayed


def test_a_future_cancelled_as_its_answer_is_set_does_not_cost_the_others_theirs() -> None:
    """A caller may cancel its future between the batcher's check and its set_result (helper-51's review: the
    InvalidStateError lost the answers after it in the batch, and with preserve_ordering every later one)."""
    from polystack.batching.batcher import _deliver

    class CancelledUnseen(Future[dict[str, np.ndarray]]):
        def done(self) -> bool:
            return False  # as it was at the check, just before its caller cancelled it

    racing: Future[dict[str, np.ndarray]] = CancelledUnseen()
    racing.cancel()
    other: Future[dict[str, np.ndarray]] = Future()
    answer = {"y": np.zeros((1, 4), np.float32)}
    _deliver([(SimpleNamespace(waiter=None, future=f), answer, None) for f in (racing, other)])  # type: ignore[misc]
    assert other.result(timeout=0) is answer


def test_the_delay_counts_from_the_oldest_request_even_among_delayed_ones(make: Any) -> None:
    """Delayed requests queue in the order their timeouts passed, not the order they came: the oldest of them
    may not be the first (helper-52's review: A waited 0.5 s for a 0.3 s delay)."""
    b = make(Recording(), max_batch_size=8, max_queue_delay_ms=600, delay=True)
    # a collection of the full suite's heap (torch, ONNX, JAX imported) stalls every thread for ~0.3 s: it
    # made this test's 0.3 s wait 0.6 s twice in a clean clone's run; the batcher's timing is what is checked
    gc.collect()
    gc.disable()
    try:
        started = time.monotonic()
        a = b.submit(rows(1, 1.0), timeout_s=0.5)  # the oldest; delayed at 0.5 s
        time.sleep(0.4)
        b.submit(rows(1, 2.0), timeout_s=0.001)  # delayed before it
        time.sleep(0.02)
        b.submit(rows(1, 3.0))
        time.sleep(0.1)
        b.submit(rows(1, 4.0))
        a.result(timeout=5)
        took = time.monotonic() - started
    finally:
        gc.enable()
    # 0.6 s from A; counted from the first delayed request (B, at 0.4 s), 1.0 s: the bound lies between
    assert took < 0.8, took


class Apart(Recording):
    """Takes a batch's requests apart (as a Python model does): each request's own answer, an error for one whose
    x holds 7, and the whole call fails on a NaN."""

    def __init__(self) -> None:
        super().__init__(delay_s=0.0)
        self.calls: list[list[str]] = []  # each call's requests, by their ids

    def infer_apart(self, requests: Any) -> list[Any]:
        self.calls.append([facts.id for _, _, facts in requests])
        if any(np.isnan(inputs["x"]).any() for inputs, _, _ in requests):
            raise BackendError("execute failed")
        return [InvalidRequest("seven") if (inputs["x"] == 7).any() else {"y": inputs["x"] * 2, "z": -inputs["x"]}
                for inputs, _, _ in requests]  # fmt: skip


def test_a_model_that_runs_requests_apart_gets_the_batch_apart_each_answered_alone(make) -> None:  # type: ignore[no-untyped-def]
    from polystack.backends.hosting import RequestFacts

    model = Apart()
    b = make(model, max_batch_size=8, max_queue_delay_ms=200)

    async def send() -> list[Any]:
        sent = [b.infer_async(rows(1 + i % 2, v), ["y"], facts=RequestFacts(f"r{i}"))
                for i, v in enumerate((1.0, 7.0, 3.0))]  # fmt: skip
        return await asyncio.gather(*sent, return_exceptions=True)

    first, seven, third = asyncio.run(send())
    assert model.calls == [["r0", "r1", "r2"]]  # one call, its requests apart, never merged
    np.testing.assert_array_equal(first["y"], np.full((1, 4), 2, np.float32))
    assert set(first) == {"y"} and set(third) == {"y"}  # each its own outputs
    assert isinstance(seven, InvalidRequest)  # its error alone
    stats = b.entry.stats.to_dict()
    assert (stats["inference_stats"]["success"]["count"], stats["inference_stats"]["fail"]["count"]) == (2, 1)

    async def failing() -> list[Any]:
        return await asyncio.gather(b.infer_async(rows(1, np.nan), ["y"]), b.infer_async(rows(1), ["y"]),
                                    return_exceptions=True)  # fmt: skip

    assert all(isinstance(e, BackendError) for e in asyncio.run(failing()))  # the whole call: each of its requests
    assert len(model.calls) == 2  # never run again
    assert b.entry.stats.to_dict()["execution_count"] == 2  # a call that failed counts, as Triton counts it


def test_the_requests_left_when_one_times_out_in_the_queue_leave_at_once_where_they_make_a_preferred_size(
    make: Any,
) -> None:
    """helper-167 (Triton's L0_model_queue test_timeout_override): a 1-row request past its deadline leaves two
    2-row ones that make the preferred size 4; Triton sends them then, polystack's worker slept through to the
    10 s queue delay (the expiry did not wake it), and their own deadlines failed them."""
    model = Recording()
    b = make(model, max_batch_size=8, max_queue_delay_ms=10_000, preferred_batch_sizes=(4, 8))

    async def main() -> float:
        head = asyncio.ensure_future(b.infer_async(rows(1, 0.0), None, 0.3))
        await asyncio.sleep(0.05)
        started = time.monotonic()
        pair = [asyncio.ensure_future(b.infer_async(rows(2, float(v)), None, 5.0)) for v in (1, 2)]
        with pytest.raises(DeadlineExceeded):
            await head
        await asyncio.wait_for(asyncio.gather(*pair), 10)
        return time.monotonic() - started

    assert asyncio.run(main()) < 2.0
    assert model.batches == [4]


def test_a_request_delayed_at_its_timeout_lets_the_others_make_a_preferred_size_at_once(make: Any) -> None:
    """helper-167 (Triton's L0_model_queue test_priority_with_policy): 2 rows, 1 row (DELAY at 0.3 s), 2 rows, with
    a preferred size of 4: once the 1-row request goes behind, 2 + 2 leave at once, as in Triton; polystack's
    worker slept through the delay's deadline to the 10 s queue delay."""
    model = Recording()
    b = make(model, max_batch_size=8, max_queue_delay_ms=3_000, preferred_batch_sizes=(4, 8), delay=True)
    started = time.monotonic()
    first = b.submit(rows(2, 1.0))
    delayed = b.submit(rows(1, 2.0), None, 0.3)  # the client's timeout, past which it goes behind the others
    last = b.submit(rows(2, 3.0))
    for f in (first, last):
        f.result(timeout=10)
    assert time.monotonic() - started < 2.0
    assert model.seen[0] == [1.0, 1.0, 3.0, 3.0]
    delayed.result(timeout=10)  # then alone, once the queue delay passed
    assert model.seen[1] == [2.0]
