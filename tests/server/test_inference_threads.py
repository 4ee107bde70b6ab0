"""InferenceThreads: unbatched model calls handed from the event loop to threads and back."""

from __future__ import annotations

import asyncio
import gc
import threading
import time
import weakref

import pytest

from polystack.server.inference_threads import InferenceThreads


def test_calls_return_their_results_and_exceptions_on_the_loop() -> None:
    threads = InferenceThreads(2, "t")

    def fail() -> None:
        raise ValueError("bad input")

    async def main() -> None:
        loop = asyncio.get_running_loop()
        assert await threads.run(loop, lambda a, b: a + b, 2, 3) == 5
        assert await threads.run(loop, threading.current_thread) is not threading.current_thread()
        with pytest.raises(ValueError, match="bad input"):
            await threads.run(loop, fail)

    try:
        asyncio.run(main())
    finally:
        threads.shutdown()


def test_no_more_calls_run_at_once_than_there_are_workers() -> None:
    threads = InferenceThreads(2, "t")
    lock = threading.Lock()
    running = peak = 0

    def call() -> None:
        nonlocal running, peak
        with lock:
            running += 1
            peak = max(peak, running)
        time.sleep(0.02)
        with lock:
            running -= 1

    async def main() -> None:
        loop = asyncio.get_running_loop()
        await asyncio.gather(*(threads.run(loop, call) for _ in range(8)))

    try:
        asyncio.run(main())
    finally:
        threads.shutdown()
    assert peak == 2


def test_a_call_cancelled_before_a_thread_takes_it_does_not_run() -> None:
    threads = InferenceThreads(1, "t")
    release = threading.Event()
    ran: list[str] = []

    async def main() -> None:
        loop = asyncio.get_running_loop()
        first = threads.run(loop, release.wait, 10)
        second = threads.run(loop, ran.append, "second")
        second.cancel()
        release.set()
        assert await first is True
        assert await threads.run(loop, ran.append, "third") is None

    try:
        asyncio.run(main())
    finally:
        threads.shutdown()
    assert ran == ["third"]


def test_a_call_cancelled_while_it_runs_finishes_without_an_error_on_the_loop() -> None:
    threads = InferenceThreads(1, "t")
    started, release = threading.Event(), threading.Event()
    errors: list[dict[str, object]] = []

    def call() -> int:
        started.set()
        release.wait(10)
        return 1

    async def main() -> None:
        loop = asyncio.get_running_loop()
        loop.set_exception_handler(lambda _loop, context: errors.append(context))
        running = threads.run(loop, call)
        while not started.is_set():
            await asyncio.sleep(0.001)
        running.cancel()
        release.set()
        assert await threads.run(loop, lambda: 2) == 2  # after the cancelled call's answer came back

    try:
        asyncio.run(main())
    finally:
        threads.shutdown()
    assert errors == []


def test_shutdown_runs_the_calls_given_before_it_and_refuses_later_ones() -> None:
    threads = InferenceThreads(1, "t")
    release = threading.Event()
    done: list[int] = []

    async def main() -> None:
        loop = asyncio.get_running_loop()
        futures = [threads.run(loop, release.wait, 10), *(threads.run(loop, done.append, i) for i in range(3))]
        stopper = threading.Thread(target=threads.shutdown)  # waits for the calls, as the plane's close does
        stopper.start()
        with pytest.raises(RuntimeError, match="shut down"):
            for _ in range(5_000):  # until shutdown has marked the threads closed (a few ms; bounded)
                threads.run(loop, done.append, 99)
                await asyncio.sleep(0.001)
        release.set()
        await asyncio.gather(*futures)
        stopper.join(10)
        assert not stopper.is_alive()

    asyncio.run(main())
    assert done[:3] == [0, 1, 2]
    assert set(done[3:]) <= {99}  # calls given before shutdown marked it closed ran too


@pytest.mark.parametrize("error", [OSError("cannot pin"), SystemExit("cannot pin")])
def test_each_thread_runs_the_initializer_and_a_failing_one_leaves_the_thread_serving(error: BaseException) -> None:
    names: list[str] = []

    def initializer() -> None:
        names.append(threading.current_thread().name)
        raise error

    threads = InferenceThreads(2, "pinned", initializer)

    async def main() -> None:
        loop = asyncio.get_running_loop()
        assert await asyncio.wait_for(threads.run(loop, lambda: "ok"), 10) == "ok"

    try:
        asyncio.run(main())
    finally:
        threads.shutdown()
    assert sorted(names) == ["pinned_0", "pinned_1"]


class _Tensor:
    """Stands for a request's arrays: weakly referenceable, so that a test sees when it is freed."""


def _freed(ref: weakref.ref[_Tensor], timeout_s: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while ref() is not None and time.monotonic() < deadline:  # the thread lets go once it is back waiting
        time.sleep(0.001)
    return ref() is None


def test_an_idle_thread_keeps_nothing_of_the_calls_it_ran() -> None:
    threads = InferenceThreads(1, "t")
    refs: dict[str, weakref.ref[_Tensor]] = {}

    def model(x: _Tensor) -> _Tensor:
        out = _Tensor()
        refs["out"] = weakref.ref(out)
        return out

    async def main() -> None:
        x = _Tensor()
        refs["in"] = weakref.ref(x)
        await threads.run(asyncio.get_running_loop(), model, x)

    try:
        asyncio.run(main())
        assert _freed(refs["in"]) and _freed(refs["out"])
    finally:
        threads.shutdown()


def test_a_failed_calls_inputs_are_freed_without_waiting_for_the_garbage_collector() -> None:
    threads = InferenceThreads(1, "t")
    refs: dict[str, weakref.ref[_Tensor]] = {}

    def model(x: _Tensor) -> None:
        raise ValueError("the runtime refused it")

    async def main() -> None:
        x = _Tensor()
        refs["in"] = weakref.ref(x)
        with pytest.raises(ValueError):
            await threads.run(asyncio.get_running_loop(), model, x)

    gc.disable()
    try:
        asyncio.run(main())
        assert _freed(refs["in"])
    finally:
        gc.enable()
        threads.shutdown()


def test_a_call_raising_stop_iteration_fails_instead_of_hanging() -> None:
    threads = InferenceThreads(1, "t")

    def model() -> None:
        raise StopIteration("a generator ran dry inside the model")

    async def main() -> None:
        with pytest.raises(RuntimeError, match="StopIteration"):
            await asyncio.wait_for(threads.run(asyncio.get_running_loop(), model), 10)

    try:
        asyncio.run(main())
    finally:
        threads.shutdown()
