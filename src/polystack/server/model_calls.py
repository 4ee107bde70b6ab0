"""ModelCalls: the requests the models a server hosts send to the models it serves (Triton's business logic
scripting: a Python model's ``InferenceRequest(...).exec()``), as ``hosting.Host``.

A call comes from a model's thread (its instance runs it off the event loop) and runs on the event loop as any
request does (``DataPlane.infer``: its batcher, statistics, metrics and errors), its answer handed back on a
``concurrent.futures.Future``. Calls made before the server serves (a model's ``initialize`` at start) or after
it stopped fail at once, never wait for a loop that does not run; those left waiting when it closes fail too.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
from collections.abc import Awaitable, Callable
from typing import Any

import numpy as np

from polystack.backends.hosting import ModelCall
from polystack.errors import BackendError, InvalidRequest, PolystackError, Unavailable
from polystack.protocol.wire import InferRequest, InferResponse, RequestedOutput

Infer = Callable[[str, str | None, InferRequest], Awaitable[InferResponse]]


class ModelCalls:
    """``infer`` is the server's (``DataPlane.infer``); ``serve_on`` gives the loop it runs on."""

    def __init__(self, infer: Infer) -> None:
        self._infer = infer
        self._loop: asyncio.AbstractEventLoop | None = None
        self._loop_thread: int | None = None
        self._lock = threading.Lock()
        self._waiting: set[concurrent.futures.Future[dict[str, np.ndarray]]] = set()
        self._closed = False

    def serve_on(self, loop: asyncio.AbstractEventLoop) -> None:
        """Calls run on ``loop`` from now on (called on it)."""
        self._loop, self._loop_thread = loop, threading.get_ident()

    def call(self, call: ModelCall) -> concurrent.futures.Future[dict[str, np.ndarray]]:
        loop = self._loop
        if call.model == call.caller:
            raise InvalidRequest(
                f"model {call.caller!r} called itself: its one instance would wait for itself; call another model"
            )
        if threading.get_ident() == self._loop_thread:  # its answer would need the loop this call holds
            raise BackendError(f"model {call.caller!r} called model {call.model!r} from the event loop's thread")
        request = InferRequest(
            inputs=dict(call.inputs),
            id=call.request_id or None,
            outputs=[RequestedOutput(name) for name in call.outputs] or None,
            parameters=dict(call.parameters),  # checked as a client's are (timeout, priority)
        )
        version = str(call.version) if call.version is not None else None
        future: concurrent.futures.Future[dict[str, np.ndarray]] = concurrent.futures.Future()
        with self._lock:
            if self._closed or loop is None or loop.is_closed():
                raise Unavailable(
                    f"model {call.caller!r} called model {call.model!r} while the server was not serving (calls "
                    "from a model's initialize or warm-up at start, or after it stopped, cannot run); call it from "
                    "execute"
                )
            self._waiting.add(future)
        try:
            loop.call_soon_threadsafe(self._start, call.model, version, request, future)
        except RuntimeError:  # the loop closed meanwhile
            self._fail(future, Unavailable(f"the server stopped before model {call.model!r} could run the call"))
        return future

    def _start(
        self, model: str, version: str | None, request: InferRequest, future: concurrent.futures.Future[Any]
    ) -> None:
        """On the loop: run the call; its answer to ``future``."""
        if future.done():  # failed by ``close`` meanwhile
            return
        task = asyncio.ensure_future(self._infer(model, version, request))

        def done(task: asyncio.Future[InferResponse]) -> None:
            if task.cancelled():
                self._fail(future, Unavailable(f"the server stopped while model {model!r} ran the call"))
            elif (e := task.exception()) is not None:
                error = e if isinstance(e, PolystackError) else BackendError(f"model {model!r} failed: {e}")
                self._fail(future, error)
            else:
                self._settle(future, lambda: future.set_result(task.result().outputs))

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
