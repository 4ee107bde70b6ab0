"""The Offline scenario's batch runner: one worker thread per instance, whole batches only.

The Server scenario runs through ``polystack.batching.DynamicBatcher``, exactly as serving does.
Offline cuts LoadGen's one big query into batches of sample *indices* as it arrives, as a batch job
reads rows, and each worker takes the next whole batch and runs it (one fancy-index per input, no
per-request validation or concatenation). The batches are cut before any worker sees them: workers
that collected samples while LoadGen was still queueing them started on part-filled batches, and
every batch after those was shifted, so the last round ran part-filled too.
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
    def __init__(self, instances: Sequence[Any], run_batch: RunBatch, done: Done, batch_size: int = 1) -> None:
        self._q: queue.SimpleQueue[list[Item] | None] = queue.SimpleQueue()
        self._run = run_batch
        self._done = done
        self.batch_size = max(1, batch_size)
        self.batch_ns: list[int] = []  # compute time of every batch (all workers)
        self.batch_sizes: list[int] = []
        self._lock = threading.Lock()
        self._threads = [
            threading.Thread(target=self._worker, args=(inst,), daemon=True, name=f"tune-batcher-{i}")
            for i, inst in enumerate(instances)
        ]
        for t in self._threads:
            t.start()

    def submit_many(self, items: Sequence[Item]) -> None:
        """Queue ``items`` as whole batches (the last one holds what is left)."""
        for i in range(0, len(items), self.batch_size):
            self._q.put(list(items[i : i + self.batch_size]))

    def _worker(self, instance: Any) -> None:
        while True:
            items = self._q.get()
            if items is None:  # stop signal: put it back for the other workers
                self._q.put(None)
                return
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
