"""InferenceThreads: the threads an event loop hands unbatched model calls to, at little cost to the loop.

``loop.run_in_executor`` with a ``ThreadPoolExecutor`` costs the loop a ``concurrent.futures.Future``
(with a ``threading.Condition`` of its own), a work item, a semaphore and the chaining of that future to
an asyncio one, per call: 24% of the event loop's time on unbatched requests at concurrency 32 (py-spy,
in-process, 2026-12-01). Here a call is one tuple on a ``queue.SimpleQueue`` (C) and its answer one
``call_soon_threadsafe``; the loop's own future is all there is to wait on.

Same contract as the executor where the data plane relies on it: calls run in the order given, at most
``workers`` at once; a call whose future was cancelled before a thread took it is not run; ``shutdown``
refuses new calls and lets those given before it run.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import queue
import threading
from collections.abc import Callable
from typing import Any, TypeVar

T = TypeVar("T")
log = logging.getLogger("polystack.server")

_Call = tuple[asyncio.AbstractEventLoop, "asyncio.Future[Any]", Callable[..., Any], tuple[Any, ...]]


def _set_result(future: asyncio.Future[Any], result: Any) -> None:
    if not future.done():  # cancelled while it ran: its caller has gone
        future.set_result(result)


def _set_exception(future: asyncio.Future[Any], exc: BaseException) -> None:
    if not future.done():
        if isinstance(exc, StopIteration):  # an asyncio future refuses it: its waiter would wait forever
            exc = RuntimeError(f"the call raised StopIteration({exc})")
        future.set_exception(exc)


def _answer(
    loop: asyncio.AbstractEventLoop, future: asyncio.Future[Any], fn: Callable[..., Any], args: tuple[Any, ...]
) -> None:
    if future.cancelled():  # its caller went away while it waited: not run, as with an executor
        return
    try:
        result = fn(*args)
    except BaseException as e:  # as an executor hands back any exception the call raised
        with contextlib.suppress(RuntimeError):  # the loop closed meanwhile: nobody waits for the answer
            loop.call_soon_threadsafe(_set_exception, future, e)
        # the exception's traceback holds this frame, which must then hold neither the future (a cycle
        # through the exception, freed only by the GC) nor the call's inputs
        del future, fn, args
        return
    with contextlib.suppress(RuntimeError):
        loop.call_soon_threadsafe(_set_result, future, result)


class ThreadsClosed(RuntimeError):
    """A call given to threads already shut down (``InferenceThreads.shutdown``)."""


class InferenceThreads:
    """``workers`` threads, started at the first call, each running ``initializer`` first (placement pins them)."""

    def __init__(self, workers: int, name: str, initializer: Callable[[], None] | None = None) -> None:
        if workers < 1:
            raise ValueError("workers must be >= 1")
        self.workers = workers
        self._name = name
        self._initializer = initializer
        self._calls: queue.SimpleQueue[_Call | None] = queue.SimpleQueue()
        self._threads: list[threading.Thread] = []
        self._lock = threading.Lock()
        self._closed = False

    def run(self, loop: asyncio.AbstractEventLoop, fn: Callable[..., T], *args: Any) -> asyncio.Future[T]:
        """``fn(*args)`` on one of the threads; its result (or exception) on ``loop``, the running loop."""
        future: asyncio.Future[T] = loop.create_future()
        with self._lock:  # never behind shutdown's end markers, where no thread would take it
            if self._closed:
                raise ThreadsClosed(f"the {self._name} threads are shut down; they take no new calls")
            if not self._threads:
                self._threads = [
                    threading.Thread(target=self._work, name=f"{self._name}_{i}", daemon=True)
                    for i in range(self.workers)
                ]
                for t in self._threads:
                    t.start()
            self._calls.put((loop, future, fn, args))
        return future

    def _work(self) -> None:
        if self._initializer is not None:
            try:
                self._initializer()
            except BaseException:  # a thread that cannot be placed still serves: calls must not wait forever
                log.exception("an inference thread's initializer failed; the thread runs where it is")
        while True:
            call = self._calls.get()
            if call is None:
                return
            _answer(*call)
            del call  # its inputs and answer are not kept while this thread waits for the next

    def shutdown(self, wait: bool = True) -> None:
        """Take no more calls; those already given run. With ``wait``, return once they have."""
        with self._lock:
            if not self._closed:
                self._closed = True
                for _ in self._threads:
                    self._calls.put(None)  # after every call given before: each thread takes one and ends
            threads = list(self._threads)
        if wait:
            for t in threads:
                if t is not threading.current_thread():
                    t.join()
