"""InFlight: what a drain waits for, when a request is alone, and when its client is serial (the inline fast path's
questions)."""

from __future__ import annotations

import asyncio

from polystack.server.in_flight import SERIAL_AFTER, InFlight


def test_a_request_is_alone_by_itself_or_as_the_one_step_of_the_one_ensemble_request() -> None:
    flight = InFlight()
    flight.enter()
    assert flight.alone and flight.count == 1
    flight.enter()
    assert not flight.alone  # two requests: neither runs on the loop
    flight.leave()
    flight.leave()
    flight.enter_pipeline()
    flight.enter()  # its step
    assert flight.alone
    flight.enter()  # a second request beside them
    assert not flight.alone
    flight.leave()
    flight.leave()
    flight.leave_pipeline()
    assert (flight.count, flight.pipelines) == (0, 0)
    flight.enter_pipeline()  # an ensemble whose step is an ensemble: the inner one's step is not alone
    flight.enter_pipeline()
    flight.enter()
    assert not flight.alone and (flight.count, flight.pipelines) == (3, 2)


def test_a_drain_waits_until_the_last_one_leaves() -> None:
    async def drain() -> tuple[bool, bool, bool, bool, int]:
        flight = InFlight()
        idle_at_once = await flight.wait_idle(0)
        flight.enter()
        flight.enter_pipeline()
        busy = await flight.wait_idle(0.01)
        flight.leave()
        one_left = await flight.wait_idle(0)
        asyncio.get_running_loop().call_later(0.02, flight.leave_pipeline)
        return idle_at_once, busy, one_left, await flight.wait_idle(5), flight.count

    assert asyncio.run(drain()) == (True, False, False, True, 0)


def test_a_client_is_serial_after_its_requests_came_in_a_row_from_one_connection() -> None:
    flight = InFlight()
    one, other = object(), object()
    for _ in range(SERIAL_AFTER):
        flight.arrived(one)
    assert not flight.serial  # its first and 7 more: one short
    flight.arrived(one)
    assert flight.serial
    flight.arrived(other)  # another connection's: two clients, or one sending several at once
    assert not flight.serial
    for _ in range(SERIAL_AFTER):
        flight.arrived(other)
    assert flight.serial
    flight.arrived(None)  # from where requests may come at once (gRPC): never serial
    flight.arrived(None)
    assert not flight.serial
    for _ in range(SERIAL_AFTER * 2):
        flight.arrived(None)
    assert not flight.serial


def test_clients_are_interleaved_when_a_request_comes_from_another_connection_than_the_one_before() -> None:
    flight = InFlight()
    one, other = object(), object()
    assert not flight.interleaved  # nothing came yet
    flight.arrived(one)
    assert flight.interleaved  # a new connection: others may be waiting unread behind a call on the loop
    flight.arrived(one)
    assert not flight.interleaved  # the same one again: it waited for its answer
    flight.arrived(other)
    assert flight.interleaved
    flight.arrived(None)  # gRPC: says nothing either way
    assert not flight.interleaved


def test_a_connection_came_last_when_it_sent_the_last_client_request() -> None:
    flight = InFlight()
    one, other = object(), object()
    assert not flight.came_last(one)  # nothing came yet
    flight.arrived(one)
    assert flight.came_last(one) and not flight.came_last(other)
    flight.arrived(other)
    assert flight.came_last(other) and not flight.came_last(one)
    flight.arrived(None)  # gRPC, or a model's own request
    assert not flight.came_last(one) and not flight.came_last(other)
