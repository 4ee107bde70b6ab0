"""The server's loader (``server.loader``): tasks hold one turn, but for the builds they mark, during which other
tasks run; a task that would change a model being built waits for its build."""

from __future__ import annotations

import threading
from collections.abc import Callable

import pytest

from polystack.errors import InvalidRequest
from polystack.server.loader import Loader, asking


def _build(loader: Loader, order: list[str]) -> tuple[Callable[[], None], threading.Event, threading.Event]:
    """A task building model x (claimed, the turn let go) until ``finish`` is set; ``building`` once it builds."""
    building, finish = threading.Event(), threading.Event()

    def build_x() -> None:
        with loader.claim("x"), loader.let_go():
            building.set()
            assert finish.wait(10)
        order.append("x built")

    return build_x, building, finish


def test_a_build_lets_other_tasks_run_but_holds_back_those_of_its_model() -> None:
    loader = Loader(threads=3)
    order: list[str] = []
    build_x, building, finish = _build(loader, order)

    def unload_x() -> None:
        loader.wait_for("x")
        order.append("x unloaded")

    try:
        first = loader.submit(build_x)
        assert building.wait(10)
        second = loader.submit(unload_x)
        loader.submit(lambda: order.append("y loaded")).result(10)  # runs while x builds
        assert not second.done() and order == ["y loaded"]
        finish.set()
        first.result(10), second.result(10)
        assert order == ["y loaded", "x built", "x unloaded"]
        assert loader.wait_idle(10)
    finally:
        finish.set()
        loader.shutdown()


def test_one_thread_runs_its_tasks_one_after_another() -> None:
    loader = Loader(threads=1)
    order: list[str] = []
    build_x, building, finish = _build(loader, order)
    try:
        first = loader.submit(build_x)
        assert building.wait(10)
        other = loader.submit(lambda: order.append("y loaded"))
        assert not other.done() and not loader.wait_idle(0.2)  # queued behind the build
        finish.set()
        first.result(10), other.result(10)
        assert order == ["x built", "y loaded"]
    finally:
        finish.set()
        loader.shutdown()


def test_a_task_claims_its_model_once_and_outside_the_loader_nothing_is_held() -> None:
    loader = Loader(threads=2)

    def nested() -> bool:
        with loader.claim("x"), loader.claim("x"), loader.let_go():  # a load inside a load of the same model
            pass
        loader.wait_for("x")  # the claim ended with the outer block
        return loader.holds_turn() and loader.on_loader()

    try:
        assert loader.submit(nested).result(10)
        with loader.claim("x"), loader.let_go():  # a load called directly (a test's, a replica's): just runs
            loader.wait_for("x")
        assert not loader.on_loader() and not loader.holds_turn()
    finally:
        loader.shutdown()


def test_a_load_asked_by_a_building_model_runs_beside_it_and_refuses_to_wait_for_its_asker() -> None:
    """A Python model's initialize (in its build, the turn let go) asking for another model's load and waiting for it
    (``asking``): the asked task runs on a thread of its own, one loader thread enough; waiting for the asker's claim
    (a load of the asker itself) raises where it would wait for good."""
    loader = Loader(threads=1)

    def asker() -> list[str]:
        said: list[str] = []
        with loader.claim("a"), loader.let_go(), asking(threading.get_ident()):
            said.append(loader.submit(lambda: "b loaded" if loader.on_loader() else "off the loader").result(10))
            with pytest.raises(InvalidRequest, match="model 'a' is loading, and its load waits for this one"):
                loader.submit(loader.wait_for, "a").result(10)
        loader.wait_for("a")  # its own claim, ended: nothing to refuse
        return said

    try:
        assert loader.submit(asker).result(20) == ["b loaded"]
        assert loader.submit(lambda: "later").result(10) == "later"  # the pool's thread is free again
        assert loader.wait_idle(10)
    finally:
        loader.shutdown()


def test_two_builds_asking_for_each_others_model_end_one_refused_where_both_waited_for_good() -> None:
    """helper-223: ping's initialize asks for pong's load while pong's asks for ping's, the two loaded at once: each
    asked task waited for the other's claim, for good. The loader keeps who waits for whom: the wait that closes the
    circle is refused, and the other goes on once that build ends."""
    loader = Loader(threads=2)
    both = threading.Barrier(2, timeout=10)

    def build(mine: str, other: str) -> str:
        with loader.claim(mine), loader.let_go(), asking(threading.get_ident()):
            both.wait()  # both claimed before either asks
            try:
                loader.submit(lambda: loader.wait_for(other)).result(20)
                return f"{mine} loaded {other}"
            except InvalidRequest as e:
                return f"{mine} refused: {e.message[:40]}"

    try:
        ping, pong = loader.submit(build, "ping", "pong"), loader.submit(build, "pong", "ping")
        said = sorted([ping.result(30), pong.result(30)])
        assert len([s for s in said if "refused: model '" in s]) == 1 and any(" loaded " in s for s in said), said
        assert loader.wait_idle(10)
    finally:
        loader.shutdown()
