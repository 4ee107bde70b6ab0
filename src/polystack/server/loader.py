"""The server's loader: the threads model loads and unloads run on, with the bookkeeping they change.

Triton loads several models at once (``--model-load-thread-count``, 4 threads by default), so that a repository of
slow models starts, and concurrent loads of different models answer, in the time of the slowest rather than of all.
Here a load's work is mostly the server's own bookkeeping (what is served, the store, the ensembles that run a model),
which a single thread kept consistent, and one slow part: the runtime's load of the model and its warm-up. So every
task runs holding the loader's **turn**, one task at a time, and lets go of it only around that slow part
(``let_go``): another task runs meanwhile, a load of another model builds beside it.

A task that changes a model across such a window **claims** its name (``claim``): another task that would change the
same model (a load, an unload, an ensemble's load of its steps) waits at its start until the claim ends
(``wait_for``), so that one model's loads and unloads happen one after another, as on one thread. A task holding a
claim never waits for another's, so that no two tasks wait for each other.

A model's code that runs in its build (``building``: a Python model's ``initialize``, its warm-up) may ask for a load
or unload of another model and wait for it (``asking``, naming the task that waits: the one building the model):
that task runs on a thread of its own, not waiting for a free loader thread (which the asking tasks could all hold).
So a task holding a claim may wait after all, and the loader keeps who waits for whom (a task for the claim it
waits for, an asking task for the task it asked): a wait that would close a circle (a model asking for its own load,
two models' loads asking for each other's) is refused, where it would wait for good.

Written by hand: the standard library's executors run tasks either all at once or one at a time; none runs them one
at a time but for the sections they mark.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextvars import ContextVar
from typing import Any, TypeVar

from polystack.errors import InvalidRequest

T = TypeVar("T")

DEFAULT_THREADS = 4  # tritonserver's --model-load-thread-count
# tasks submitted in this context run apart (not None), and which loader thread waits for them (0: none known): a
# model's code asked for them (``asking``: the task building that model waits, if one is), or a task run apart
# submits them itself
_WAITER: ContextVar[int | None] = ContextVar("polystack_load_waiter", default=None)


# the model whose build runs in this context (its initialize, its warm-up), and the loader thread building it
_BUILDING: ContextVar[tuple[str, int] | None] = ContextVar("polystack_building", default=None)


@contextlib.contextmanager
def building(model: str) -> Iterator[None]:
    """The body builds ``model`` on this loader thread: what its code asks for there, its build waits for."""
    token = _BUILDING.set((model, threading.get_ident()))
    try:
        yield
    finally:
        _BUILDING.reset(token)


def building_here() -> tuple[str, int] | None:
    """The model whose build runs in this context, and the loader thread building it (None: none)."""
    return _BUILDING.get()


@contextlib.contextmanager
def asking(waiter: int) -> Iterator[None]:
    """The body asks for tasks that a model's code waits for: they run on threads of their own (``Loader.submit``),
    not waiting for a loader thread (which the tasks waiting for them may hold); ``waiter``, the loader thread whose
    task builds that model (0: none), waits for them."""
    token = _WAITER.set(waiter)
    try:
        yield
    finally:
        _WAITER.reset(token)


class Loader:
    """``threads`` loader threads (at least one), each started with ``initializer`` (the server's placement)."""

    def __init__(self, threads: int = DEFAULT_THREADS, initializer: Callable[[], None] | None = None) -> None:
        self.threads = max(1, threads)  # Triton takes 0 as 1
        self._initializer = initializer
        self._pool = ThreadPoolExecutor(self.threads, thread_name_prefix="load", initializer=self._started)
        self._idents: set[int] = set()  # the loader's threads
        self._turn = threading.Condition(threading.Lock())
        self._holder: int | None = None  # the thread holding the turn, while it does
        self._claims: dict[str, int] = {}  # model names claimed, by the thread holding each
        self._tasks: set[Future[Any]] = set()  # submitted and not done
        self._shut = False
        # who waits for whom, by thread (changed holding the turn): a task for the holder of the claim it waits
        # for, an asking task for the task run apart for it
        self._waits: dict[int, set[int]] = {}

    def _started(self) -> None:
        self._idents.add(threading.get_ident())
        if self._initializer is not None:
            self._initializer()

    def submit(self, fn: Callable[..., T], *args: Any) -> Future[T]:
        """Run ``fn(*args)`` on a loader thread, holding the turn (asked by a load waiting for it, ``asking``: on a
        thread of its own); ``RuntimeError`` once the loader is shut down."""

        waiter = _WAITER.get()

        def run() -> T:
            with self._turn:
                me = self._holder = threading.get_ident()
                if waiter:
                    self._waits.setdefault(waiter, set()).add(me)
                try:
                    return fn(*args)
                finally:
                    self._holder = None
                    if waiter:
                        self._unwait(waiter, me)

        future = self._pool.submit(run) if waiter is None else self._apart(run)
        self._tasks.add(future)
        future.add_done_callback(self._tasks.discard)
        return future

    def _apart(self, run: Callable[[], T]) -> Future[T]:
        """``run()`` on a loader thread of its own (a task another task waits for, which may hold every thread)."""
        if self._shut:  # as the pool refuses a task then
            raise RuntimeError("cannot schedule new futures after shutdown")
        future: Future[T] = Future()

        def apart() -> None:
            _WAITER.set(threading.get_ident())  # what it submits itself, it waits for
            try:
                self._started()
                if future.set_running_or_notify_cancel():
                    future.set_result(run())
            except BaseException as e:  # given to the waiting task, as the pool's tasks give theirs
                if not future.done():
                    future.set_exception(e)
            finally:
                self._idents.discard(threading.get_ident())

        threading.Thread(target=apart, name="load-asked", daemon=True).start()
        return future

    def _unwait(self, waiter: int, waited: int) -> None:
        edges = self._waits.get(waiter)
        if edges is not None:
            edges.discard(waited)
            if not edges:
                del self._waits[waiter]

    def _reaches(self, start: int, target: int) -> bool:
        """Whether thread ``start`` waits, directly or through others, for ``target`` (``_waits``)."""
        seen: set[int] = set()
        stack = [start]
        while stack:
            at = stack.pop()
            if at == target:
                return True
            if at not in seen:
                seen.add(at)
                stack.extend(self._waits.get(at, ()))
        return False

    def on_loader(self) -> bool:
        """Whether the calling thread is one of the loader's (a model's code running in its load, say)."""
        return threading.get_ident() in self._idents

    def holds_turn(self) -> bool:
        return self._holder == threading.get_ident()

    @contextlib.contextmanager
    def let_go(self) -> Iterator[None]:
        """Run the body without the turn (a model's build), other tasks running meanwhile; the turn is held again
        after it. Outside the loader's tasks (a load called directly), the body just runs."""
        me = threading.get_ident()
        if self._holder != me:
            yield
            return
        self._holder = None
        self._turn.release()
        try:
            yield
        finally:
            self._turn.acquire()
            self._holder = me

    def wait_for(self, name: str) -> bool:
        """Wait, without the turn, while another task claims model ``name``; then go on holding it again. Whether
        it waited (what the task read before may have changed meanwhile)."""
        me = threading.get_ident()
        if self._holder != me:
            return False
        waited = False
        while (holder := self._claims.get(name, me)) != me:
            if self._reaches(holder, me):  # its holder waits for this task: the wait would never end
                raise InvalidRequest(
                    f"model {name!r} is loading, and its load waits for this one (a model's initialize asked for it, "
                    f"there or in a load it waits for): a load or unload of {name!r} from there would wait for "
                    "itself; ask it from execute once the models serve"
                )
            self._waits.setdefault(me, set()).add(holder)
            self._holder = None
            try:
                self._turn.wait()
            finally:
                self._holder = me
                self._unwait(me, holder)
            waited = True
        return waited

    @contextlib.contextmanager
    def claim(self, name: str) -> Iterator[None]:
        """Claim model ``name`` while the body changes it (letting go of the turn to build it): ``wait_for(name)``
        in other tasks waits until the body is done. A claim the thread holds already, or a thread outside the
        loader's tasks, claims nothing more."""
        me = threading.get_ident()
        if self._holder != me or self._claims.get(name) == me:
            yield
            return
        self.wait_for(name)
        self._claims[name] = me
        try:
            yield
        finally:
            del self._claims[name]
            self._turn.notify_all()

    def wait_idle(self, timeout_s: float) -> bool:
        """Wait for every task submitted so far (up to ``timeout_s``); whether they are done."""
        _, pending = concurrent.futures.wait(list(self._tasks), timeout_s)
        return not pending

    def shutdown(self) -> None:
        """Run what was submitted, then stop; later submits raise ``RuntimeError``."""
        self._shut = True
        self._pool.shutdown(wait=True)
