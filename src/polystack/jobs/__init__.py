"""Batch inference over files: one machine (threads) or Ray Data, into resumable Parquet parts.

    run_batch(store, BatchOptions(model="mlp", input=Path("in.parquet"), output=Path("out/")))

The engines share everything but the loop: ``job.prepare`` (bindings, schema, LoadSpec),
``job.score_batch`` (Arrow -> tensors -> engine -> Arrow, bad rows apart) and ``manifest.JobOutput``
(numbered parts, errors file, atomic manifest). Ray is imported only by ``--engine ray``.
"""

from __future__ import annotations

import dataclasses

import pyarrow as pa
from rich.console import Console

from polystack.engine import Engine
from polystack.errors import InvalidRequest
from polystack.jobs.job import BatchOptions, PreparedJob, Summary, now, prepare
from polystack.jobs.manifest import JobOutput
from polystack.jobs.progress import RowProgress
from polystack.store import Store

__all__ = ["BatchOptions", "PreparedJob", "Summary", "prepare", "run_batch"]

ENGINES = ("local", "ray")


def _summary(
    out: JobOutput, status: str, job: PreparedJob, rows_this_run: int, seconds: float, resumed_from: int
) -> Summary:
    m = out.manifest
    return Summary(
        output=out.folder,
        errors_file=out.errors_path,
        status=status,
        rows_total=m.next_row,
        rows_out=m.rows_out,
        errors=m.errors,
        rows_this_run=rows_this_run,
        seconds=seconds,
        resumed_from=resumed_from,
        parts=len(m.parts),
        engine=job.options.engine,
        model=job.ran,
    )


def run_batch(store: Store, options: BatchOptions, console: Console | None = None) -> Summary:
    """Run (or resume, or report as finished) one batch job; progress drawn on ``console``."""
    if options.engine not in ENGINES:
        raise InvalidRequest(f"unknown --engine {options.engine!r}; use one of {', '.join(ENGINES)}")
    try:
        return _run(store, options, console)
    except pa.ArrowException as e:  # a file Arrow cannot read or write: one line, not a traceback
        raise InvalidRequest(f"batch job failed reading or writing data: {e}") from e


def _run(store: Store, options: BatchOptions, console: Console | None) -> Summary:
    job = prepare(store, options)
    out = JobOutput(options.output, job.identity, restart=options.restart, runtime=job.runtime)
    try:
        if out.done:
            # what ran is what the finished run said (the store may plan otherwise now)
            done = _summary(out, "already done", job, 0, 0.0, out.manifest.next_row)
            return dataclasses.replace(done, model=out.summary().get("model", ""))
        resumed_from = out.manifest.next_row
        if console is not None and resumed_from:
            console.print(f"resuming {options.output} at row {resumed_from:,} ({len(out.manifest.parts)} parts kept)")
        started = now()
        progress = RowProgress(console, job.source.total_rows, resumed_from, out.manifest.errors, job.record.name)
        with progress:
            if options.engine == "ray":
                from polystack.jobs.ray import run_ray

                rows = run_ray(job, out, progress.advance)
            else:
                from polystack.jobs.local import run_local

                engine = Engine(store)
                try:
                    rows = run_local(job, out, engine, progress.advance)
                finally:
                    engine.close()
            if not out.manifest.parts:  # no rows: a part of none, so the output reads as a table of its schema
                out.new_part(job.out_schema).commit(0.0)  # (helper-270: readers found no file to read)
            progress.finish(out.manifest.next_row)
        seconds = now() - started
        summary = _summary(out, "done", job, rows, seconds, resumed_from)
        out.finish(summary.to_dict())
        return summary
    finally:
        out.close()
