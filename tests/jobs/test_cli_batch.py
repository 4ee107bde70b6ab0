"""polystack batch as a user runs it: progress and summary, one-line errors with exit code 2."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

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
    assert "300/300" in out.stderr and "rows/s" in out.stderr  # the bar, on stderr
    assert "300 read, 300 written, 0 bad" in out.stdout and "throughput" in out.stdout
    again = _run(home, "mlp:1", "-i", str(tmp_path / "in.npy"), "-o", str(tmp_path / "out"))
    assert again.returncode == 0 and "already done" in again.stdout


def test_mistakes_exit_2_with_one_line(home: Path, mlp: ModelRecord, features: np.ndarray, tmp_path: Path) -> None:
    x = features.tolist()
    x[5] = None
    x[9] = None
    pq.write_table(pa.table({"id": np.arange(300), "x": x, "z": np.zeros(300)}), tmp_path / "in.parquet")
    cases = [
        (["--columns", "z"], "column 'z' holds scalars"),
        (["--columns", "nope"], "'nope' is not in the input"),
        (["--key", "nope"], "--key 'nope' is not a column"),
        (["--key", "id", "--key", "id"], "--key 'id' is given twice"),  # a traceback (helper-270)
        (["--max-errors", "1", "--key", "id"], "2 bad rows exceed --max-errors 1"),
        (["--engine", "spark"], "unknown --engine 'spark'"),
    ]
    for i, (extra, fragment) in enumerate(cases):
        out = _run(home, "mlp", "-i", str(tmp_path / "in.parquet"), "-o", str(tmp_path / f"out{i}"), *extra)
        assert out.returncode == 2, (extra, out.stdout, out.stderr)
        last = out.stderr.strip().splitlines()[-1]
        assert last.startswith("error: ") and fragment in last, (extra, out.stderr)
        assert "Traceback" not in out.stderr
