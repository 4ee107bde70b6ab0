"""Eager starts: a coroutine's first step run at once, the rest by a task, as if a task had run it all."""

from __future__ import annotations

import asyncio
import contextvars

import pytest
import uvloop

from polystack.server import eager

_SEEN: contextvars.ContextVar[str] = contextvars.ContextVar("seen", default="unset")


def test_a_coroutine_that_does_not_wait_finishes_in_the_call_in_the_context_given() -> None:
    ran: list[str] = []

    async def answer() -> None:
        _SEEN.set("request")
        ran.append(_SEEN.get())

    context = contextvars.copy_context()
    assert eager.start(answer(), context) is None
    assert ran == ["request"]
    assert context[_SEEN] == "request"
    assert _SEEN.get() == "unset"  # the caller's context is not the request's


def test_what_the_first_step_raises_is_raised_to_the_caller() -> None:
    async def refuse() -> None:
        raise ValueError("no")

    with pytest.raises(ValueError, match="no"):
        eager.start(refuse(), contextvars.copy_context())


def test_a_task_goes_on_from_where_the_first_step_waited_in_its_context() -> None:
    steps: list[str] = []

    async def main() -> None:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[int] = loop.create_future()

        async def answer() -> int:
            _SEEN.set("request")
            steps.append("first")
            got = await future
            steps.append(f"then {_SEEN.get()}")
            await asyncio.sleep(0)  # a bare yield of the loop, as a task takes it
            return got + 1

        context = contextvars.copy_context()
        continued = eager.start(answer(), context)
        assert continued is not None and steps == ["first"]
        task = loop.create_task(continued, context=context)
        await asyncio.sleep(0)
        assert not task.done()
        future.set_result(41)
        assert await task == 42

    uvloop.run(main())
    assert steps == ["first", "then request"]


def test_an_exception_after_the_wait_is_the_tasks() -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[None] = loop.create_future()

        async def answer() -> None:
            await future
            raise KeyError("late")

        continued = eager.start(answer(), contextvars.copy_context())
        assert continued is not None
        task = loop.create_task(continued)
        future.set_result(None)
        with pytest.raises(KeyError, match="late"):
            await task

    uvloop.run(main())


@pytest.mark.parametrize("before_its_first_step", [True, False])
def test_a_cancelled_task_cancels_what_the_coroutine_waits_on_and_runs_its_handlers(
    before_its_first_step: bool,
) -> None:
    """As a task that had run the coroutine from its start: the future it waits on is cancelled (a thread that has
    not taken the call yet skips it), and the coroutine sees the cancellation where it waits."""
    handled: list[str] = []

    async def main() -> asyncio.Future[None]:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[None] = loop.create_future()

        async def answer() -> None:
            try:
                await future
            except asyncio.CancelledError:
                handled.append("cancelled")
                raise
            finally:
                handled.append("finally")

        continued = eager.start(answer(), contextvars.copy_context())
        assert continued is not None
        task = loop.create_task(continued)
        if not before_its_first_step:
            await asyncio.sleep(0)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        return future

    future = uvloop.run(main())
    assert future.cancelled()
    assert handled == ["cancelled", "finally"]


def test_a_continued_coroutine_closed_unrun_closes_the_coroutine() -> None:
    closed: list[bool] = []

    async def main() -> None:
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()

        async def answer() -> None:
            try:
                await future
            finally:
                closed.append(True)

        continued = eager.start(answer(), contextvars.copy_context())
        assert continued is not None
        continued.close()

    uvloop.run(main())
    assert closed == [True]
