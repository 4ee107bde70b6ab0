"""ModelCalls: what the models a server hosts ask of it from their own threads (Triton's business logic
scripting: a Python model's ``InferenceRequest(...).exec()``, and its model loading API: ``pb_utils.load_model``
and ``unload_model``).

A request comes from a model's thread (its instance runs off the event loop) and runs on the event loop as any
request does (``DataPlane.infer``: its batcher, statistics, metrics and errors), a load or unload as the
repository extension's do; the answer comes back on a ``concurrent.futures.Future``. What is asked before the
server serves (a model's ``initialize`` at start) or after it stopped fails at once, never waits for a loop that
does not run; what is left waiting when it closes fails too. A call that would wait for its own answer (a model
calling itself, or a model up its chain of calls) is refused, where Triton's instances wait for good.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import os
import threading
from collections.abc import AsyncGenerator, Awaitable, Callable
from typing import Any, TypeVar

import numpy as np

from polystack.backends.hosting import ModelCall, Responses, answered
from polystack.errors import BackendError, InvalidRequest, PolystackError, Unavailable
from polystack.protocol.wire import InferRequest, InferResponse, RequestedOutput
from polystack.server.decoupled import Streamed

T = TypeVar("T")
Infer = Callable[[str, str | None, InferRequest], Awaitable[InferResponse]]
InferStream = Callable[[str, str | None, InferRequest], AsyncGenerator[Streamed, None]]
Control = Callable[[str, dict[str, Any]], Awaitable[None]]  # a repository load or unload: name, parameters
# the model ``name`` (at ``version``) serves now, as ``name:version``, and how many of its requests run at once (None:
# no model serves so; the call fails in the server's words)
Capacity = Callable[[str, str | None], tuple[str, int] | None]


class ModelCalls:
    """``infer``, ``load``, ``unload`` and ``infer_stream`` are the server's (``DataPlane.infer``, the repository
    extension's ``load`` and ``unload``, ``DataPlane.infer_stream``); ``serve_on`` gives the loop they run on."""

    def __init__(
        self, infer: Infer, load: Control, unload: Control, capacity: Capacity, infer_stream: InferStream
    ) -> None:
        self._infer, self._load, self._unload, self._capacity = infer, load, unload, capacity
        self._infer_stream = infer_stream
        self._loop: asyncio.AbstractEventLoop | None = None
        self._loop_thread: int | None = None
        self._lock = threading.Lock()
        self._waiting: set[concurrent.futures.Future[Any]] = set()
        self._running: set[asyncio.Future[Any]] = set()  # on the loop
        self._closed = False
        self._pid = os.getpid()  # the server's process: a fork of it (a model's multiprocessing) has no loop running

    def serve_on(self, loop: asyncio.AbstractEventLoop) -> None:
        """Calls run on ``loop`` from now on (called on it)."""
        self._loop, self._loop_thread = loop, threading.get_ident()

    def call(self, call: ModelCall) -> concurrent.futures.Future[dict[str, np.ndarray]]:
        """``call``'s request run as a client's; the called model's outputs. Refused where every instance of the
        called model waits for this call's answer already (a model with one instance calling itself; A calling B,
        which calls A), where the call would wait for good."""
        version, request = self._request(call)

        async def outputs() -> dict[str, np.ndarray]:
            answer = await self._infer(call.model, version, request)
            return answered(answer.outputs, answer.parameters)  # with its response's parameters

        return self._submit(outputs, f"model {call.caller!r} called model {call.model!r}")

    def stream(self, call: ModelCall, responses: Responses) -> concurrent.futures.Future[None]:
        """``call``'s request run as a client's stream (``DataPlane.infer_stream``): each response the called model
        sends goes to ``responses`` as it comes, the last final (a model that is not decoupled: its one answer). The
        future says when the last was sent, or why the call could not run."""
        version, request = self._request(call)

        async def run() -> None:
            answers = self._infer_stream(call.model, version, request)
            try:
                # read to its end, cancelled or not: a model that honours its caller's cancel ends with its CANCELLED
                # error, one that does not sends on, as Triton's BLS cancel hands the caller what the model sends
                async for streamed in answers:
                    if streamed.response is not None:
                        answer = streamed.response
                        responses.send(answered(answer.outputs, answer.parameters), streamed.final)
                    else:
                        responses.send(streamed.error, streamed.final)
            finally:
                await answers.aclose()

        return self._submit(run, f"model {call.caller!r} called model {call.model!r}")

    def _request(self, call: ModelCall) -> tuple[str | None, InferRequest]:
        """The version ``call`` asks for, and its request; refused where it would wait for good (``call``)."""
        version = str(call.version) if call.version is not None else None
        target = self._capacity(call.model, version)
        if target is not None and call.callers.count(target[0]) >= target[1]:
            key, instances = target
            if call.callers[-1:] == (key,):
                why = f"model {call.caller!r} called itself, and its {instances} instance(s) all wait for answers"
            else:  # A -> B -> A
                why = f"model {call.caller!r} called model {call.model!r}, whose {instances} instance(s) all wait for its answer"
            raise InvalidRequest(
                f"{why} already: the call would wait for good; give {call.model!r} more instances, or call another model"
            )
        request = InferRequest(
            inputs=dict(call.inputs),
            id=call.request_id or None,
            outputs=[RequestedOutput(name) for name in call.outputs] or None,
            parameters=dict(call.parameters),  # checked as a client's are (timeout, sequence)
            model_parameters=dict(call.model_parameters),
            callers=call.callers,
            cancel=call.cancel,
            trace=call.trace,
        )
        return version, request

    def load(self, name: str, parameters: dict[str, Any], caller: str) -> concurrent.futures.Future[None]:
        """A repository load of ``name`` (with its ``config`` and ``file:`` parameters), asked by model ``caller``
        ("": from a thread a model started)."""
        return self._submit(lambda: self._load(name, parameters), f"{_asker(caller)} loaded model {name!r}")

    def unload(self, name: str, parameters: dict[str, Any], caller: str) -> concurrent.futures.Future[None]:
        return self._submit(lambda: self._unload(name, parameters), f"{_asker(caller)} unloaded model {name!r}")

    def _submit(self, run: Callable[[], Awaitable[T]], what: str) -> concurrent.futures.Future[T]:
        """``run()`` on the loop, from another thread; its answer (or the polystack error that failed it)."""
        if threading.get_ident() == self._loop_thread:  # its answer would need the loop this call holds
            raise BackendError(f"{what} from the event loop's thread")
        if os.getpid() != self._pid:  # a copy of the server's loop that no thread runs: it would wait for good
            raise Unavailable(
                f"{what} from a process the model forked (multiprocessing): polystack runs Python models in the "
                "server's own process, which its forks cannot reach; make the call from execute's process, or use "
                "threads"
            )
        loop = self._loop
        future: concurrent.futures.Future[T] = concurrent.futures.Future()
        with self._lock:
            if self._closed or loop is None or loop.is_closed():
                raise Unavailable(
                    f"{what} while the server was not serving (what a model asks in its initialize or warm-up at "
                    "start, or after the server stopped, cannot run); ask it from execute, or load the model with "
                    "the repository extension once the server serves"
                )
            self._waiting.add(future)
        try:
            loop.call_soon_threadsafe(self._start, run, future, what)
        except RuntimeError:  # the loop closed meanwhile
            self._fail(future, Unavailable(f"the server stopped before it ran what {what} asked"))
        return future

    def _start(self, run: Callable[[], Awaitable[T]], future: concurrent.futures.Future[T], what: str) -> None:
        """On the loop: run it; its answer to ``future``."""
        if future.done():  # failed by ``close`` meanwhile
            return
        task = asyncio.ensure_future(run())
        self._running.add(task)  # held until done (the loop keeps weak references to its tasks)

        def done(task: asyncio.Future[T]) -> None:
            self._running.discard(task)
            if task.cancelled():
                self._fail(future, Unavailable(f"the server stopped while it ran what {what} asked"))
            elif (e := task.exception()) is not None:
                self._fail(future, e if isinstance(e, PolystackError) else BackendError(f"{what}, which failed: {e}"))
            else:
                self._settle(future, lambda: future.set_result(task.result()))

        task.add_done_callback(done)

    def _fail(self, future: concurrent.futures.Future[Any], e: BaseException) -> None:
        self._settle(future, lambda: future.set_exception(e))

    def _settle(self, future: concurrent.futures.Future[Any], settle: Callable[[], None]) -> None:
        with self._lock:
            self._waiting.discard(future)
            if not future.done():
                settle()

    def close(self) -> None:
        """Fail the calls still waiting (the loop that would answer them no longer runs) and take no more."""
        with self._lock:
            self._closed = True
            waiting, self._waiting = self._waiting, set()
        for future in waiting:
            self._fail(future, Unavailable("the server stopped before the called model answered"))


def _asker(caller: str) -> str:
    """Who asked, in words: the model, or a thread a model started (whose model a call cannot tell)."""
    return f"model {caller!r}" if caller else "a thread a model started"
