"""polystack batch: score a file (or a folder of Parquet) with a registered model, resumably."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from polystack.cli.app import app, console, err_console, open_store, print_json
from polystack.errors import InvalidRequest

DEFAULT_PART_ROWS = 100_000  # == polystack.jobs.job.DEFAULT_PART_ROWS (jobs imports pyarrow: loaded on use)


@app.command()
def batch(
    ref: str = typer.Argument(..., metavar="NAME[:VERSION]"),
    input: Path = typer.Option(..., "--input", "-i", help="Parquet file or folder, .csv, .jsonl, .npy or .npz."),
    output: Path = typer.Option(
        ..., "--output", "-o", help="Folder for the Parquet parts, _errors.jsonl and the manifest."
    ),
    columns: list[str] = typer.Option(
        [], "--columns", "-c", help="Columns for the one input (a,b,c are stacked), or INPUT=COL[,COL] per input."
    ),
    key: list[str] = typer.Option([], "--key", "-k", help="Column(s) copied to the output to identify rows."),
    batch_size: int | None = typer.Option(
        None, "--batch-size", "-b", min=1, help="Rows per inference call (default: the batch plan's, else 1024)."
    ),
    part_rows: int = typer.Option(
        DEFAULT_PART_ROWS, "--part-rows", min=1, help="Input rows per output part (the unit of resumption)."
    ),
    engine: str = typer.Option("local", "--engine", help="local (threads on this machine) or ray (Ray Data)."),
    ray_address: str | None = typer.Option(
        None, "--ray-address", help="Join this Ray cluster (default: start a local Ray for the job)."
    ),
    ray_actors: int | None = typer.Option(
        None, "--ray-actors", min=1, help="Model replicas (Ray actors), each loads the model once."
    ),
    restart: bool = typer.Option(
        False, "--restart", help="Discard what an earlier run of this output wrote and start over."
    ),
    max_errors: int | None = typer.Option(None, "--max-errors", min=0, help="Stop once more than N rows were bad."),
    backend: str | None = typer.Option(
        None, "--backend", help="Run on this backend instead of the plan's or the default."
    ),
    device: str = typer.Option("cpu", "--device", help="cpu, cuda:0, ... as the backend offers."),
    input_format: str | None = typer.Option(
        None, "--format", help="parquet, csv, jsonl, npy or npz (default: from the suffix)."
    ),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Draw a progress bar on stderr."),
    json_out: bool = typer.Option(False, "--json", help="Print the summary as JSON."),
) -> None:
    """Run a model over every row of a file; resume where a killed run stopped."""
    from polystack.jobs import BatchOptions, run_batch
    from polystack.jobs.progress import summary_table

    store = open_store()
    options = BatchOptions(
        model=ref,
        input=input,
        output=output,
        columns=columns,
        keys=key,
        batch_size=batch_size,
        part_rows=part_rows,
        engine=engine,
        ray_address=ray_address,
        ray_actors=ray_actors,
        restart=restart,
        max_errors=max_errors,
        backend=backend,
        device=device,
        input_format=input_format,
    )
    try:
        summary = run_batch(store, options, err_console if progress else None)
    except KeyboardInterrupt:  # (then "stopped (Ctrl-C)", exit 130)
        again = "the same command without --restart" if restart else "the same command again"
        err_console.print(f"note: the parts written are kept; {again} goes on where this one stopped", soft_wrap=True)
        raise
    finally:
        store.close()
    if json_out:
        print_json(summary.to_dict())
    else:
        console.print(summary_table(summary))
    if summary.rows_total and not summary.rows_out and summary.errors >= summary.rows_total:
        # every row refused: the file does not fit the model (a script reading the exit code took it for done)
        raise InvalidRequest(
            f"every row was refused ({summary.errors:,} of {summary.rows_total:,}), the first because "
            f"{_first_reason(summary.errors_file)}; see {summary.errors_file}"
        )


def _first_reason(errors_file: Path) -> str:
    """The reason the first bad row of a job's ``_errors.jsonl`` gives."""
    try:
        with errors_file.open(encoding="utf-8") as f:
            return str(json.loads(f.readline()).get("reason", "?"))
    except (OSError, ValueError, AttributeError):
        return "? (the errors file could not be read)"
