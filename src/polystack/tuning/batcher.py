"""A minimal thread-based batcher for the Offline scenario.

The Server scenario runs through ``polystack.batching.DynamicBatcher``, exactly as serving does.
Offline hands LoadGen's one big query to workers that take batches of sample *indices* straight
from the input pool (one fancy-index per input, no per-request validation or concatenation), as a
batch job reads rows. A worker takes the oldest item, then up to ``max_batch_size`` (waiting up to
``max_delay_ms``; with delay 0 it takes whatever is already queued).
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

Item = tuple[Any, int]  # (caller's tag, sample index)
RunBatch = Callable[[Any, Sequence[int]], None]  # (instance, indices) -> None; raises on failure
Done = Callable[[list[Item], BaseException | None], None]


class MeasureBatcher:
    def __init__(
        self,
        instances: Sequence[Any],
        run_batch: RunBatch,
        done: Done,
        max_batch_size: int = 1,
        max_delay_ms: float = 0.0,
    ) -> None:
        self._q: queue.SimpleQueue[Item | None] = queue.SimpleQueue()
        self._run = run_batch
        self._done = done
        self.max_batch_size = max(1, max_batch_size)
        self.max_delay_s = max(0.0, max_delay_ms) / 1000.0
        self.batch_ns: list[int] = []  # compute time of every batch (all workers)
        self.batch_sizes: list[int] = []
        self._lock = threading.Lock()
        self._threads = [
            threading.Thread(target=self._worker, args=(inst,), daemon=True, name=f"tune-batcher-{i}")
            for i, inst in enumerate(instances)
        ]
        for t in self._threads:
            t.start()

    def submit(self, tag: Any, index: int) -> None:
        self._q.put((tag, index))

    def submit_many(self, items: Sequence[Item]) -> None:
        for it in items:
            self._q.put(it)

    def _collect(self, first: Item) -> list[Item] | None:
        items = [first]
        deadline = time.perf_counter() + self.max_delay_s
        while len(items) < self.max_batch_size:
            remaining = deadline - time.perf_counter()
            try:
                nxt = self._q.get_nowait() if remaining <= 0 else self._q.get(timeout=remaining)
            except queue.Empty:
                break
            if nxt is None:  # stop signal: put it back for the other workers, finish this batch
                self._q.put(None)
                break
            items.append(nxt)
        return items

    def _worker(self, instance: Any) -> None:
        while True:
            first = self._q.get()
            if first is None:
                self._q.put(None)
                return
            items = self._collect(first)
            assert items is not None
            started = time.perf_counter_ns()
            error: BaseException | None = None
            try:
                self._run(instance, [i for _, i in items])
            except BaseException as e:  # reported to the caller, which completes the samples anyway
                error = e
            took = time.perf_counter_ns() - started
            with self._lock:
                self.batch_ns.append(took)
                self.batch_sizes.append(len(items))
            self._done(items, error)

    def close(self) -> None:
        self._q.put(None)
        for t in self._threads:
            t.join(timeout=30)
