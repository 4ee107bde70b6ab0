"""The local engine: read, infer and write overlapped on three threads joined by bounded queues.

    reader thread --(queue of 4 batches)--> inference (this thread) --(queue of 4)--> writer thread

At most ~10 batches are in memory, whatever the input size. Arrow's readers and writers and the
runtimes release the GIL, so the three stages run at once. The writer closes a part every
``part_rows`` input rows; a stopped job (too many errors, Ctrl-C, a crash) never commits the
part it was writing, so the next run redoes exactly those rows.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Iterator
from typing import Any

import pyarrow as pa

from polystack.engine import Engine
from polystack.errors import PolystackError
from polystack.jobs.job import PreparedJob, Scored, error_lines, now, score_batch
from polystack.jobs.manifest import JobOutput, PartWriter

_END = object()
_ABORT = object()
QUEUE_BATCHES = 4


class TooManyErrors(PolystackError):
    pass


def _put(q: queue.Queue[Any], item: Any, stop: threading.Event) -> bool:
    while not stop.is_set():
        try:
            q.put(item, timeout=0.1)
            return True
        except queue.Full:
            continue
    return False


class Writer(threading.Thread):
    """Takes scored batches in order, writes parts, commits one every ``part_rows`` input rows."""

    def __init__(self, job: PreparedJob, out: JobOutput, on_rows: Callable[[int, int], None]) -> None:
        super().__init__(name="polystack-batch-writer", daemon=True)
        self.job, self.out, self.on_rows = job, out, on_rows
        self.q: queue.Queue[Any] = queue.Queue(QUEUE_BATCHES)
        self.error: BaseException | None = None
        self.rows_in = 0
        self.errors = 0

    def run(self) -> None:
        part: PartWriter | None = None
        started = now()
        try:
            while True:
                item = self.q.get()
                if item is _END or item is _ABORT:
                    if part is not None:
                        if item is _END:
                            part.commit(now() - started)
                        else:
                            part.abandon()
                    return
                table, rows_in, lines = item
                if part is None:
                    part = self.out.new_part(self.job.out_schema)
                part.write(table, rows_in, lines)
                self.rows_in += rows_in
                self.errors += len(lines)
                self.on_rows(rows_in, len(lines))
                if part.rows_in >= self.job.options.part_rows:
                    part.commit(now() - started)
                    started = now()
                    part = None
        except BaseException as e:
            self.error = e
            if part is not None:
                part.abandon()
            while True:  # keep draining so the producer never blocks on a dead writer
                if self.q.get() in (_END, _ABORT):
                    return


def drive(
    job: PreparedJob,
    out: JobOutput,
    scored: Iterator[tuple[pa.RecordBatch | pa.Table, Scored, int]],
    on_rows: Callable[[int, int], None],
    stop: threading.Event,
) -> Writer:
    """Feed ``scored`` (batch, result, first input row) to a writer; stop at --max-errors."""
    writer = Writer(job, out, on_rows)
    writer.start()
    committed_errors = out.manifest.errors
    seen_errors = 0
    ok = False
    try:
        for batch, result, first_row in scored:
            lines = error_lines(batch, result.bad, job.keys, first_row)
            seen_errors += len(lines)
            if job.options.max_errors is not None and committed_errors + seen_errors > job.options.max_errors:
                raise TooManyErrors(
                    f"stopped: {committed_errors + seen_errors} bad rows exceed --max-errors {job.options.max_errors}; "
                    f"see {out.errors_path} (the rows of the unfinished part run again on the next run)"
                )
            if writer.error is not None or not _put(writer.q, (result.table, result.rows_in, lines), stop):
                break
        ok = writer.error is None and not stop.is_set()
    finally:
        if not ok:
            stop.set()
        writer.q.put(_END if ok else _ABORT)
        writer.join()
    if writer.error is not None:
        raise writer.error
    return writer


def run_local(job: PreparedJob, out: JobOutput, engine: Engine, on_rows: Callable[[int, int], None]) -> int:
    """Run the rest of ``job`` into ``out``; return the input rows this run covered."""
    entry = engine.load(job.record.ref, job.spec)
    skip = out.manifest.next_row
    stop = threading.Event()
    inbox: queue.Queue[Any] = queue.Queue(QUEUE_BATCHES)
    read_error: list[BaseException] = []

    def read() -> None:
        try:
            for b in job.source.batches(job.batch_size, skip, job.read_columns, job.text_columns):
                if not _put(inbox, b, stop):
                    return
        except BaseException as e:
            read_error.append(e)
        _put(inbox, _END, stop)

    reader = threading.Thread(target=read, name="polystack-batch-reader", daemon=True)
    reader.start()

    def scored() -> Iterator[tuple[pa.RecordBatch | pa.Table, Scored, int]]:
        first = skip
        while True:
            try:
                b = inbox.get(timeout=0.1)
            except queue.Empty:
                if stop.is_set():
                    return
                continue
            if b is _END:
                if read_error:
                    raise read_error[0]
                return
            result = score_batch(entry, b, job.bindings, job.keys, job.out_specs, job.out_schema, first)
            yield b, result, first
            first += b.num_rows

    try:
        writer = drive(job, out, scored(), on_rows, stop)
    finally:
        stop.set()
        reader.join(timeout=5)
    return writer.rows_in
