"""Progress for a batch job: a Rich bar (rows, rows/s, ETA) and the final summary table."""

from __future__ import annotations

import threading
import time
from typing import Any

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    Task,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table
from rich.text import Text

from polystack.jobs.job import Summary


class _RateColumn(ProgressColumn):
    def render(self, task: Task) -> Text:
        speed = task.finished_speed or task.speed
        return Text(f"{speed:,.0f} rows/s" if speed else "- rows/s", style="progress.data.speed")


class _ErrorsColumn(ProgressColumn):
    def render(self, task: Task) -> Text:
        n = int(task.fields.get("errors", 0))
        return Text(f"{n:,} bad", style="red" if n else "dim")


class RowProgress:
    """A thread-safe row counter drawn as a Rich progress bar (silent when ``console`` is None); on a console that is
    no terminal (a log file, a scheduler's log, a pipe), where a bar draws nothing until the end, a line every
    ``every_s`` seconds and one at the end (helper-270: such runs showed nothing until they ended)."""

    def __init__(
        self, console: Console | None, total: int | None, done: int, errors: int, label: str, every_s: float = 10.0
    ) -> None:
        self._lock = threading.Lock()
        self.errors = errors
        self._progress: Progress | None = None
        self._lines: _Lines | None = None
        if console is not None and not console.is_terminal:
            self._lines = _Lines(console, label, total, done, every_s)
        elif console is not None:
            self._progress = Progress(
                TextColumn("[bold]{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                _RateColumn(),
                _ErrorsColumn(),
                TimeElapsedColumn(),
                TextColumn("eta"),
                TimeRemainingColumn(),
                console=console,
                transient=False,
            )
            self._task = self._progress.add_task(label, total=total, completed=done, errors=errors)

    def __enter__(self) -> RowProgress:
        if self._progress is not None:
            self._progress.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._progress is not None:
            self._progress.stop()

    def advance(self, rows: int, errors: int) -> None:
        with self._lock:
            self.errors += errors
            if self._lines is not None:
                self._lines.advance(rows, self.errors)
            if self._progress is not None:
                task = self._progress.tasks[0]
                if task.total is not None and task.completed + rows > task.total:  # totals of CSV/JSONL are estimates
                    self._progress.update(self._task, total=task.completed + rows)
                self._progress.update(self._task, advance=rows, errors=self.errors)

    def finish(self, total: int) -> None:
        if self._lines is not None:
            self._lines.finish(total, self.errors)
        if self._progress is not None:
            self._progress.update(self._task, total=total, completed=total)


class _Lines:
    """Progress as plain lines, for a console that is no terminal: ``mlp: 120,000 of 1,000,000 rows (12%), 45,210
    rows/s, 3 bad, about 19 s left``."""

    def __init__(self, console: Console, label: str, total: int | None, done: int, every_s: float) -> None:
        self.console, self.label, self.total, self.done, self.every_s = console, label, total, done, every_s
        self.started = self.last = time.monotonic()
        self.first = done

    def advance(self, rows: int, errors: int) -> None:
        self.done += rows
        now = time.monotonic()
        if now - self.last >= self.every_s:
            self.last = now
            self._say(errors, now, "")

    def finish(self, total: int, errors: int) -> None:
        self.done, self.total = total, total
        self._say(errors, time.monotonic(), "; done")

    def _say(self, errors: int, now: float, end: str) -> None:
        rate = (self.done - self.first) / max(now - self.started, 1e-9)
        total = max(self.total, self.done) if self.total is not None else None  # CSV and JSONL totals are estimates
        of = f" of {total:,}" if total else ""
        share = f" ({100 * self.done / total:.0f}%)" if total else ""
        left = f", about {(total - self.done) / rate:,.0f} s left" if total and rate > 0 and not end else ""
        self.console.print(
            f"{self.label}: {self.done:,}{of} rows{share}, {rate:,.0f} rows/s, {errors:,} bad{left}{end}",
            highlight=False, soft_wrap=True,
        )  # fmt: skip


def summary_table(s: Summary) -> Table:
    t = Table(title=f"batch job {s.status}", show_header=False, title_justify="left")
    t.add_column(style="bold")
    t.add_column()
    if s.model:
        t.add_row("model", s.model)
    t.add_row("rows", f"{s.rows_total:,} read, {s.rows_out:,} written, {s.errors:,} bad")
    if s.resumed_from:
        t.add_row("resumed", f"at row {s.resumed_from:,}; this run covered {s.rows_this_run:,} rows")
    t.add_row("time", f"{s.seconds:.2f} s ({s.engine} engine)")
    t.add_row("throughput", f"{s.rows_per_s:,.0f} rows/s")
    t.add_row("output", f"{s.output} ({s.parts} part{'s' if s.parts != 1 else ''})")
    if s.errors:
        t.add_row("errors", str(s.errors_file))
    return t
