"""Decoupled models' responses: a model whose config sets ``model_transaction_policy { decoupled: true }`` sends a
request any number of responses, from any of its threads, during its ``execute`` or after it returned, the last
marked final (Triton's ``TRITONSERVER_RESPONSE_COMPLETE_FINAL``), which may come alone, without outputs.

``ResponseStream`` is one request's: the model's side sends into it (``hosting.Responses``), thread-safe, and the
server's side reads it on the event loop, in the order sent, up to the final one (``DataPlane.infer_stream``,
which makes each a ``Streamed``). A client that goes away cancels it: what the model sends after is dropped, and
the model can see it (``is_cancelled()``). One that reads slowly slows the model: its sends wait while ``UNREAD``
of its responses are unread.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass

import numpy as np

from polystack.errors import PolystackError, Unavailable
from polystack.protocol.wire import InferResponse

Sent = tuple[dict[str, np.ndarray] | PolystackError | None, bool]  # a response as the model sent it, and final
# responses of one request sent and not yet read (by a client that reads slower than its model sends, or not at
# all): at this many, or this many bytes of outputs (one response at least), the model's next send waits for room,
# so that the server does not hold the whole stream (helper-273: 256 answers of 1 MB held 256 MB for a client that
# stopped reading)
UNREAD = 256
UNREAD_BYTES = 8 << 20
_Queued = tuple[dict[str, np.ndarray] | PolystackError | None, bool, int]  # Sent, and its outputs' bytes


@dataclass(frozen=True)
class Streamed:
    """One response to a request: its outputs (``response``), or the error it carries; neither: the final flag
    alone (Triton's empty final response, which a client sees only when it asks for it)."""

    response: InferResponse | None
    error: PolystackError | None = None
    final: bool = False

    @property
    def empty(self) -> bool:
        return self.response is None and self.error is None


class ResponseStream:
    """The responses a decoupled model sends for one request (``hosting.Responses``), read in the order sent."""

    def __init__(self, loop: asyncio.AbstractEventLoop, asked: threading.Event | None = None) -> None:
        self._loop = loop
        self._asked = asked  # set when the request's caller (a model's BLS stream) cancels it: what it sends still goes
        self._queue: asyncio.Queue[_Queued] = asyncio.Queue()
        self._lock = threading.Lock()
        self._closed = False  # the final response was sent
        self._cancelled = False
        self._first_out = False  # its first response was handed to the loop
        self._loop_thread = threading.get_ident()  # made on the loop's thread
        self._unread = 0  # responses sent and not yet read
        self._unread_bytes = 0  # their outputs' bytes
        self._room = threading.Condition(self._lock)  # (a model's thread waits there for room among them)

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def cancelled(self) -> bool:
        """Whether the request was cancelled: its client went away (what the model sends is dropped) or its caller
        cancelled it (``asked``: what the model sends still goes to the caller, which reads it)."""
        return self._cancelled or (self._asked is not None and self._asked.is_set())

    @property
    def sent_any(self) -> bool:
        """Its model sent something by its sender (a response, an error response or the final flag; not a failure
        ``fail`` gave it). A model that is not decoupled sends a response first: its sender refuses the flag alone."""
        return self._first_out

    def send(self, outputs: dict[str, np.ndarray] | PolystackError | None, final: bool) -> None:
        on_loop = threading.get_ident() == self._loop_thread
        with self._lock:
            while True:
                if self._closed:
                    raise Unavailable("Unable to send response. Response sender has been closed.")
                # a model's thread waits while UNREAD responses wait for a client that does not read them (the
                # loop never waits: it is what reads them)
                if on_loop or self._cancelled or not self._unread or (
                    self._unread < UNREAD and self._unread_bytes < UNREAD_BYTES
                ):
                    break
                self._room.wait()
            self._closed = final
            if self._cancelled:
                return
            size = _nbytes(outputs)
            self._unread += 1
            self._unread_bytes += size
            self._put((outputs, final, size))
            first, self._first_out = not self._first_out, True
        if first and not on_loop:
            # the request's first response (an LLM's first token): the model's thread lets the event loop have the
            # GIL now, so that the response goes out at once rather than when the thread gives the GIL up (up to
            # the 5 ms switch interval later, after many more sends; bench/streaming.py measures both)
            time.sleep(0)

    def fail(self, error: PolystackError) -> bool:
        """The request failed before its model sent its final response (its ``execute`` raised, say): the error is
        its final response, and what the model sends after is refused. False: it had ended already."""
        with self._lock:
            if self._closed:
                return False
            self._closed = True
            self._unread += 1
            self._put((error, True, 0))
        return True

    def cancel(self) -> None:
        """The client went away: what the model sends from now on is dropped (nobody reads it)."""
        with self._lock:
            self._cancelled = True
            self._room.notify_all()  # its senders waiting for room go on (and their responses are dropped)

    def _put(self, sent: _Queued) -> None:
        with contextlib.suppress(RuntimeError):  # the server's loop closed (it exited): nobody reads it
            self._loop.call_soon_threadsafe(self._queue.put_nowait, sent)

    async def __aiter__(self) -> AsyncIterator[Sent]:
        while True:
            outputs, final, size = await self._queue.get()
            with self._lock:
                self._unread -= 1
                self._unread_bytes -= size
                self._room.notify()
            yield outputs, final
            if final:
                return


def _nbytes(outputs: dict[str, np.ndarray] | PolystackError | None) -> int:
    """The bytes a response's outputs hold (BYTES: their pointers; what a client waits for is rarely those)."""
    return sum(a.nbytes for a in outputs.values()) if isinstance(outputs, dict) else 0
