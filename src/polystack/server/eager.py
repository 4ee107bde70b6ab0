"""Eager starts: a coroutine's first step run at once, in the callback that has it, as Python 3.12's eager tasks do.

A task runs its coroutine's first step on a later turn of the event loop: ``create_task`` only schedules it. For an
HTTP request that is one more turn between reading the request and answering it, and for a request whose model runs
on the loop (``serve --inline-max-ms``), the only wait in it. ``start`` runs the step now, in a copy of the
context as a task would (so what the request sets in context variables stays its own). A coroutine that finishes
there needs no task; one that waits is handed to a task as ``Continued``, which that task's steps drive from where
the first stopped. Python 3.12's ``asyncio.eager_task_factory`` does the same inside the task; polystack runs on
3.11, where it does not exist.

Which requests start so (``HttpApp.starts_now``): a ``serial`` client's (``in_flight.py``: 8 in a row from one
connection after its first) that finds nothing in flight. Measured side by side (the serving benchmark's client and
models, one tree with eager starts on and off, 8 alternating pairs of 3 s runs in each start order, 2026-12-08): p50
at concurrency 1 0.483 against 0.514 ms and 0.493 against 0.506 ms (MLP, 16 of 16 pairs faster), 0.399 against 0.430
and 0.418 against 0.428 ms (CNN, 14 of 16); the CNN's requests a second at concurrency 8 and 32 the same. Started so
whenever nothing was in flight, the CNN at concurrency 8 answered 3-4% fewer a second (in both orders; 5% of its
requests found the server idle), and started so always, a fifth fewer at concurrency 32: neither is explained, so
the start is kept to the one client it was measured to help.
"""

from __future__ import annotations

import asyncio
import contextvars
from collections.abc import Coroutine, Generator
from typing import Any, TypeVar

T = TypeVar("T")


class Continued(Coroutine[Any, Any, T]):
    """A coroutine that ``start`` stepped once, to be run by a task from where that step stopped: the task's first
    step gets what the coroutine waits on (``signal``, the future it awaits or None), its later steps go on to it.
    A task cancelled before its first step cancels that future, as a task waiting on it would, and throws the
    cancellation into the coroutine, whose own handlers run."""

    __slots__ = ("_coro", "_first", "_signal")

    def __init__(self, coro: Coroutine[Any, Any, T], signal: Any) -> None:
        self._coro = coro
        self._signal = signal
        self._first = True

    def send(self, value: Any) -> Any:
        if self._first:
            self._first = False
            signal, self._signal = self._signal, None
            return signal
        return self._coro.send(value)

    def throw(self, typ: Any, val: Any = None, tb: Any = None) -> Any:
        if self._first:
            self._first = False
            signal, self._signal = self._signal, None
            exc = typ if val is None else val
            if isinstance(exc, asyncio.CancelledError) and isinstance(signal, asyncio.Future):
                signal.cancel()  # what a task waiting on it would have done
        if val is None and tb is None:
            return self._coro.throw(typ)
        return self._coro.throw(typ, val, tb)

    def close(self) -> None:
        self._signal = None
        self._coro.close()

    def __await__(self) -> Generator[Any, None, T]:
        return self  # an iterator of the coroutine's steps, as a coroutine's own

    def __iter__(self) -> Continued[T]:
        return self

    def __next__(self) -> Any:
        return self.send(None)


def start(coro: Coroutine[Any, Any, T], context: contextvars.Context) -> Continued[T] | None:
    """Run ``coro``'s first step in ``context``: None when it finished there (its result is its own business, as a
    task's is), else what a task made with ``context`` runs to go on with it. What the step raises is raised."""
    try:
        signal = context.run(coro.send, None)
    except StopIteration:
        return None
    return Continued(coro, signal)
