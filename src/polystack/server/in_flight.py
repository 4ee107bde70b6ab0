"""InFlight: what the data plane is running now, counted on its event loop.

Requests to models and ensembles, and loads or unloads by name (the model repository extension's, which a drain
waits for as it waits for requests). A drain waits until none is left (``wait_idle``); the inline fast path asks
whether a request is ``alone``; ``/metrics`` reads the count at scrape time. Every change is on the event loop: a
plain counter, no lock.
"""

from __future__ import annotations

import asyncio


class InFlight:
    def __init__(self) -> None:
        self.count = 0  # requests, loads and unloads
        self.pipelines = 0  # ensemble requests among them (their steps are requests too)
        self._idle = asyncio.Event()
        self._idle.set()

    def enter(self) -> None:
        self.count += 1
        self._idle.clear()

    def leave(self) -> None:
        self.count -= 1
        if self.count == 0:
            self._idle.set()

    def enter_pipeline(self) -> None:
        self.pipelines += 1
        self.enter()

    def leave_pipeline(self) -> None:
        self.pipelines -= 1
        self.leave()

    @property
    def alone(self) -> bool:
        """The request asking is the only one in flight, or the one step running of the one ensemble request."""
        return self.count == 1 or (self.pipelines == 1 and self.count == 2)

    async def wait_idle(self, timeout_s: float) -> bool:
        """Wait (up to ``timeout_s``) until nothing is in flight; whether that came."""
        if self._idle.is_set():  # (asyncio.wait_for with no time left says no even to an event already set)
            return True
        try:
            await asyncio.wait_for(self._idle.wait(), timeout_s)
        except TimeoutError:
            return False
        return True
