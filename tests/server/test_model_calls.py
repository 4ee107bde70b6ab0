"""ModelCalls: a model's calls to the other models run on the server's event loop and answer on a future; calls
that cannot run (no loop yet, the loop's own thread, a model calling itself, a server that stopped) fail at once,
and those left waiting when it closes fail rather than wait forever."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncGenerator, Iterator
from typing import Any

import numpy as np
import pytest

from polystack.backends.hosting import ModelCall
from polystack.errors import BackendError, InvalidRequest, ModelNotFound, Unavailable
from polystack.protocol.wire import InferRequest, InferResponse
from polystack.server.decoupled import Streamed
from polystack.server.model_calls import ModelCalls


class Served:
    """A server's infer: doubles x for "double", waits for ``release`` for "slow", knows no other model; its loads
    and unloads are noted (a load of "broken" fails)."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, str | None, InferRequest]] = []
        self.release = asyncio.Event()
        self.controls: list[tuple[str, str, dict]] = []

    def capacity(self, name: str, version: str | None) -> tuple[str, int] | None:
        """"double" version 1 or 2 (its latest) with 1 instance, "slow" with 2."""
        if name == "double":
            return f"double:{version or 2}", 1
        return ("slow:1", 2) if name == "slow" else None

    async def load(self, name: str, parameters: dict) -> None:
        if name == "broken":
            raise InvalidRequest("failed to load 'broken'")
        self.controls.append(("load", name, parameters))

    async def unload(self, name: str, parameters: dict) -> None:
        self.controls.append(("unload", name, parameters))

    async def infer(self, name: str, version: str | None, request: InferRequest) -> InferResponse:
        self.seen.append((name, version, request))
        if name == "slow":
            await self.release.wait()
        if name not in ("double", "slow"):
            raise ModelNotFound(f"Request for unknown model: {name!r} is not found")
        return InferResponse(name, version or "1", {"y": request.inputs["x"] * 2})

    async def infer_stream(self, name: str, version: str | None, request: InferRequest) -> AsyncGenerator[Streamed, None]:
        """"double" as a decoupled model: a response for each row of x, doubled, then the final flag alone."""
        if name != "double":
            raise ModelNotFound(f"Request for unknown model: {name!r} is not found")
        for row in request.inputs["x"]:
            yield Streamed(InferResponse(name, "1", {"y": row * 2}))
        yield Streamed(None, final=True)


@pytest.fixture
def loop() -> Iterator[asyncio.AbstractEventLoop]:
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    yield loop
    loop.call_soon_threadsafe(loop.stop)
    thread.join(5)
    loop.close()


def _serving(loop: asyncio.AbstractEventLoop, served: Served) -> ModelCalls:
    calls = ModelCalls(served.infer, served.load, served.unload, served.capacity, served.infer_stream)
    asyncio.run_coroutine_threadsafe(_serve_on(calls), loop).result(5)
    return calls


async def _serve_on(calls: ModelCalls) -> None:
    calls.serve_on(asyncio.get_running_loop())


X = np.arange(4, dtype=np.float32)


def test_a_call_runs_on_the_servers_loop_with_its_request_and_answers_its_outputs(loop) -> None:  # type: ignore[no-untyped-def]
    served = Served()
    calls = _serving(loop, served)
    call = ModelCall("double", {"x": X}, ("y",), 3, "id-1", {"timeout": 5, "a": "b"}, caller="bls")
    np.testing.assert_array_equal(calls.call(call).result(5)["y"], X * 2)
    name, version, request = served.seen[0]
    assert (name, version, request.id, request.output_names, request.parameters) == (
        "double", "3", "id-1", ["y"], {"timeout": 5, "a": "b"}
    )
    assert request.timeout_s == 5e-6  # Triton's timeout, in microseconds, is the called request's deadline
    calls.call(ModelCall("double", {"x": X}, caller="bls")).result(5)
    assert (served.seen[1][1], served.seen[1][2].id, served.seen[1][2].outputs) == (None, None, None)


def test_a_failed_call_answers_the_servers_error(loop) -> None:  # type: ignore[no-untyped-def]
    calls = _serving(loop, Served())
    with pytest.raises(ModelNotFound, match="'nope' is not found"):
        calls.call(ModelCall("nope", {"x": X}, caller="bls")).result(5)


def test_calls_that_cannot_run_fail_at_once(loop) -> None:  # type: ignore[no-untyped-def]
    served = Served()
    with pytest.raises(Unavailable, match="while the server was not serving"):  # no loop yet: a model's initialize
        ModelCalls(served.infer, served.load, served.unload, served.capacity, served.infer_stream).call(ModelCall("double", {"x": X}, caller="bls"))
    # helper-224: a load asked from a thread a model started was worded "model '' loaded model ..."
    starting = ModelCalls(served.infer, served.load, served.unload, served.capacity, served.infer_stream)
    with pytest.raises(Unavailable, match=r"^a thread a model started loaded model 'm' while the server was not"):
        starting.load("m", {}, "")
    with pytest.raises(Unavailable, match=r"^model 'bls' unloaded model 'm' while the server was not serving"):
        starting.unload("m", {}, "bls")
    calls = _serving(loop, served)
    # a call that every instance of the called model waits for already would wait for good
    with pytest.raises(InvalidRequest, match="model 'double' called itself, and its 1 instance"):
        calls.call(ModelCall("double", {"x": X}, caller="double", callers=("double:2",)))
    with pytest.raises(InvalidRequest, match="model 'b' called model 'double', whose 1 instance"):  # double -> b -> double
        calls.call(ModelCall("double", {"x": X}, caller="b", callers=("double:2", "b:1")))

    async def from_the_loop() -> None:
        calls.call(ModelCall("double", {"x": X}, caller="bls"))

    with pytest.raises(BackendError, match="from the event loop's thread"):
        asyncio.run_coroutine_threadsafe(from_the_loop(), loop).result(5)
    with pytest.raises(InvalidRequest, match="Unable to parse 'timeout'"):  # checked as a client's parameters are
        calls.call(ModelCall("double", {"x": X}, parameters={"timeout": -1}, caller="bls"))
    assert served.seen == []


def test_a_call_that_an_instance_is_free_for_is_sent(loop) -> None:  # type: ignore[no-untyped-def]
    served = Served()
    calls = _serving(loop, served)
    calls.call(ModelCall("double", {"x": X}, version=2, caller="double", callers=("double:1",))).result(5)  # another
    calls.call(ModelCall("slow", {"x": X}, caller="slow", callers=("slow:1",))).cancel()  # 2 instances: one is free
    calls.call(ModelCall("double", {"x": X}, caller="b", callers=("a:1", "b:1"))).result(5)
    assert served.seen[-1][2].callers == ("a:1", "b:1")  # the called model's calls see its chain
    loop.call_soon_threadsafe(served.release.set)


def test_loads_and_unloads_run_as_the_repository_extensions_and_say_why_they_failed(loop) -> None:  # type: ignore[no-untyped-def]
    served = Served()
    calls = _serving(loop, served)
    calls.load("m", {"config": "{}"}, "bls").result(5)
    calls.unload("m", {"unload_dependents": True}, "bls").result(5)
    assert served.controls == [("load", "m", {"config": "{}"}), ("unload", "m", {"unload_dependents": True})]
    with pytest.raises(InvalidRequest, match="failed to load 'broken'"):
        calls.load("broken", {}, "bls").result(5)


def test_a_call_left_waiting_when_the_server_closes_fails_and_no_more_are_taken(loop) -> None:  # type: ignore[no-untyped-def]
    served = Served()
    calls = _serving(loop, served)
    waiting = calls.call(ModelCall("slow", {"x": X}, caller="bls"))
    calls.close()
    with pytest.raises(Unavailable, match="the server stopped before the called model answered"):
        waiting.result(5)
    with pytest.raises(Unavailable, match="while the server was not serving"):
        calls.call(ModelCall("double", {"x": X}, caller="bls"))
    loop.call_soon_threadsafe(served.release.set)  # the call that ran on answers no one


class _Gathered:
    """A caller's side of a streamed call (``hosting.Responses``): what was sent, in order."""

    cancelled = False

    def __init__(self) -> None:
        self.sent: list[tuple[Any, bool]] = []

    def send(self, outputs: Any, final: bool) -> None:
        self.sent.append((outputs, final))


def test_a_streamed_call_sends_each_response_on_as_it_comes(loop: asyncio.AbstractEventLoop) -> None:
    served = Served()
    calls = _serving(loop, served)
    responses = _Gathered()
    calls.stream(ModelCall("double", {"x": X}, caller="bls", callers=()), responses).result(5)
    assert [(o["y"].tolist() if o is not None else None, final) for o, final in responses.sent] == [
        (0.0, False), (2.0, False), (4.0, False), (6.0, False), (None, True)
    ]
    failed = calls.stream(ModelCall("nothing", {"x": X}, caller="bls"), _Gathered())
    with pytest.raises(ModelNotFound):
        failed.result(5)
    with pytest.raises(InvalidRequest, match="model 'double' called itself"):  # it would wait for good, as a call
        calls.stream(ModelCall("double", {"x": X}, caller="double", callers=("double:2",)), _Gathered())
