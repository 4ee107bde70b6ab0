"""polystack batch as a user runs it: progress and summary, one-line errors with exit code 2."""

from __future__ import annotations

import io
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from rich.console import Console

from polystack.jobs.progress import RowProgress
from polystack.store import ModelRecord


def _run(home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "POLYSTACK_HOME": str(home), "COLUMNS": "200"}
    return subprocess.run(
        [sys.executable, "-m", "polystack", "batch", *args], capture_output=True, text=True, env=env, timeout=120
    )


def test_batch_prints_progress_and_a_summary(
    home: Path, mlp: ModelRecord, features: np.ndarray, tmp_path: Path
) -> None:
    np.save(tmp_path / "in.npy", features)
    out = _run(home, "mlp:1", "-i", str(tmp_path / "in.npy"), "-o", str(tmp_path / "out"))
    assert out.returncode == 0, out.stderr
    # on stderr; a pipe is no terminal: a line at the end (and every 10 s), where a bar would draw nothing until then
    assert re.fullmatch(r"mlp: 300 of 300 rows \(100%\), [\d,]+ rows/s, 0 bad; done\n", out.stderr), out.stderr
    assert "300 read, 300 written, 0 bad" in out.stdout and "throughput" in out.stdout
    again = _run(home, "mlp:1", "-i", str(tmp_path / "in.npy"), "-o", str(tmp_path / "out"))
    assert again.returncode == 0 and "already done" in again.stdout


def test_mistakes_exit_2_with_one_line(home: Path, mlp: ModelRecord, features: np.ndarray, tmp_path: Path) -> None:
    x = features.tolist()
    x[5] = None
    x[9] = None
    w = pa.FixedSizeListArray.from_arrays(pa.array(np.zeros(300 * 8, np.float32)), 8)
    pq.write_table(pa.table({"id": np.arange(300), "x": x, "z": np.zeros(300), "w": w}), tmp_path / "in.parquet")
    cases = [
        (["--columns", "z"], "column 'z' holds scalars"),
        (["--columns", "nope"], "'nope' is not in the input"),
        (["--key", "nope"], "--key 'nope' is not a column"),
        (["--key", "id", "--key", "id"], "--key 'id' is given twice"),  # a traceback (helper-270)
        (["--max-errors", "1", "--key", "id"], "2 bad rows exceed --max-errors 1"),
        (["--engine", "spark"], "unknown --engine 'spark'"),
        # widths the schema shows wrong, before a row is read (helper-270: an error line for every row)
        (["--columns", "id,z"], "takes 16 values a row, and 2 columns were given (id, z); give 16 with --columns"),
        (["--columns", "w"], "takes 16 values a row, and column 'w' holds lists of 8; give a column of 16-value"),
    ]
    for i, (extra, fragment) in enumerate(cases):
        out = _run(home, "mlp", "-i", str(tmp_path / "in.parquet"), "-o", str(tmp_path / f"out{i}"), *extra)
        assert out.returncode == 2, (extra, out.stdout, out.stderr)
        last = out.stderr.strip().splitlines()[-1]
        assert last.startswith("error: ") and fragment in last, (extra, out.stderr)
        assert "Traceback" not in out.stderr


def test_progress_on_a_console_that_is_no_terminal_is_a_line_every_so_often() -> None:
    """helper-270: a run under a scheduler (its stderr a file) showed nothing until it ended."""
    log = io.StringIO()
    progress = RowProgress(Console(file=log, width=80), 1000, 200, 3, "mlp", every_s=0)  # resumed at row 200
    with progress:
        progress.advance(300, 2)
        progress.advance(100, 0)
        progress.finish(1000)
    lines = log.getvalue().splitlines()
    assert len(lines) == 3, lines
    assert re.fullmatch(r"mlp: 500 of 1,000 rows \(50%\), [\d,]+ rows/s, 5 bad, about [\d,]+ s left", lines[0])
    assert re.fullmatch(r"mlp: 600 of 1,000 rows \(60%\), [\d,]+ rows/s, 5 bad, about [\d,]+ s left", lines[1])
    assert re.fullmatch(r"mlp: 1,000 of 1,000 rows \(100%\), [\d,]+ rows/s, 5 bad; done", lines[2])
    quiet = io.StringIO()
    with RowProgress(Console(file=quiet), None, 0, 0, "mlp") as progress:  # every 10 s: none in this time
        progress.advance(10, 0)
    assert quiet.getvalue() == ""


def test_an_npz_for_the_ray_engine_is_refused_before_ray_starts_or_the_output_is_made(
    home: Path, mlp: ModelRecord, features: np.ndarray, tmp_path: Path
) -> None:
    """helper-270: it was refused after Ray had started (seconds), leaving an output folder of an empty job."""
    np.savez(tmp_path / "in.npz", x=features)
    out = _run(home, "mlp", "-i", str(tmp_path / "in.npz"), "-o", str(tmp_path / "out"), "--engine", "ray")
    assert out.returncode == 2, out.stderr
    assert out.stderr.strip() == "error: --engine ray reads Parquet, CSV, JSONL and NPY, not npz; use --engine local"
    assert not (tmp_path / "out").exists()
