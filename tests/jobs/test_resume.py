"""Resumable jobs: SIGKILL at any moment, run again, every input row exactly once; finished jobs stay put."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from jobdata import FEATURES

from polystack.errors import Conflict, InvalidRequest
from polystack.jobs import BatchOptions, run_batch
from polystack.jobs.local import TooManyErrors
from polystack.jobs.manifest import MANIFEST, JobOutput, read_manifest
from polystack.store import ModelRecord, Store

ROWS = 60_000
BAD_EVERY = 997  # rows with a null x: they must land in the errors file exactly once too


def _input(path: Path) -> Path:
    x = np.random.default_rng(1).standard_normal((ROWS, FEATURES)).astype(np.float32)
    col = pa.FixedSizeListArray.from_arrays(pa.array(x.reshape(-1)), FEATURES)
    mask = np.zeros(ROWS, dtype=bool)
    mask[::BAD_EVERY] = True
    col = pa.FixedSizeListArray.from_arrays(col.values, FEATURES, mask=pa.array(mask))
    pq.write_table(pa.table({"id": np.arange(ROWS), "x": col}), path, row_group_size=5000)
    return path


def _cli(home: Path, *args: str) -> subprocess.Popen[bytes]:
    env = {**os.environ, "POLYSTACK_HOME": str(home)}
    return subprocess.Popen(
        [sys.executable, "-m", "polystack", "batch", *args], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )


def _parts(out: Path) -> int:
    try:
        m = read_manifest(out)
    except Exception:  # read mid-replace: try again
        return 0
    return len(m.parts) if m else 0


def test_sigkill_mid_run_then_rerun_gives_every_row_exactly_once(home: Path, mlp: ModelRecord, tmp_path: Path) -> None:
    src = _input(tmp_path / "in.parquet")
    out = tmp_path / "out"
    args = [
        "mlp",
        "--input",
        str(src),
        "--output",
        str(out),
        "--key",
        "id",
        "--batch-size",
        "100",
        "--part-rows",
        "700",
    ]
    args += ["--no-progress"]
    killed_mid_run = 0
    # kill once soon after the first part, once later and a little after a commit, once at a fixed delay
    for after_parts, extra_s in ((1, 0.0), (12, 0.003), (30, 0.011)):
        proc = _cli(home, *args)
        deadline = time.monotonic() + 60
        while _parts(out) < after_parts and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.002)
        time.sleep(extra_s)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
        m = read_manifest(out)
        assert m is not None
        killed_mid_run += m.status == "running"
    assert killed_mid_run >= 2, "the job finished before it could be killed: make it longer"

    done = _cli(home, *args, "--json")
    stdout, stderr = done.communicate(timeout=120)
    assert done.returncode == 0, stderr.decode()
    summary = json.loads(stdout)
    assert summary["resumed_from"] > 0 and summary["status"] == "done"

    written = pq.read_table(out).column("id").to_numpy()
    errors = [json.loads(line)["key"]["id"] for line in (out / "_errors.jsonl").read_text().splitlines()]
    bad = list(range(0, ROWS, BAD_EVERY))
    assert sorted(errors) == bad  # every bad row reported once
    assert len(written) == len(set(written.tolist())) == ROWS - len(bad)  # no good row twice...
    assert set(written.tolist()) | set(errors) == set(range(ROWS))  # ...and none missing
    m = read_manifest(out)
    assert m is not None and m.status == "done"
    assert sorted(p.name for p in out.glob("part-*")) == [p.file for p in m.parts]  # no stray parts
    assert not list(out.glob("*.tmp"))
    starts = [p.first_row for p in m.parts]
    assert starts == sorted(starts) and all(
        a.first_row + a.rows_in == b.first_row for a, b in zip(m.parts, m.parts[1:], strict=False)
    )


def test_uncommitted_leftovers_are_removed_before_resuming(tmp_path: Path) -> None:
    out = tmp_path / "out"
    schema = pa.schema([("k", pa.int64())])
    job = JobOutput(out, {"job": 1})
    part = job.new_part(schema)
    part.write(pa.table({"k": [1, 2]}), 3, [b'{"row": 2}\n'])
    part.commit(0.1)
    job.close()
    # what a kill between the steps of the next commit can leave behind
    (out / "part-00001.parquet").write_bytes(b"half")
    (out / "part-00002.parquet.tmp").write_bytes(b"half")
    with open(out / "_errors.jsonl", "ab") as f:
        f.write(b'{"row": 5}\n')
    again = JobOutput(out, {"job": 1})
    assert again.resumed and again.manifest.next_row == 3
    assert sorted(p.name for p in out.iterdir() if not p.name.startswith(".")) == [
        "_errors.jsonl",
        MANIFEST,
        "part-00000.parquet",
    ]
    assert (out / "_errors.jsonl").read_bytes() == b'{"row": 2}\n'
    again.close()


def test_finished_job_is_left_alone_unless_restarted(
    store: Store, mlp: ModelRecord, features: np.ndarray, tmp_path: Path
) -> None:
    pq.write_table(pa.table({"id": np.arange(300), "x": features.tolist()}), tmp_path / "in.parquet")
    opts = BatchOptions(model="mlp", input=tmp_path / "in.parquet", output=tmp_path / "out", keys=["id"], part_rows=100)
    assert run_batch(store, opts).status == "done"
    before = {p.name: p.stat().st_mtime_ns for p in (tmp_path / "out").iterdir()}
    again = run_batch(store, opts)
    assert again.status == "already done" and again.rows_total == 300 and again.rows_this_run == 0
    assert {p.name: p.stat().st_mtime_ns for p in (tmp_path / "out").iterdir()} == before

    other = BatchOptions(model="mlp", input=tmp_path / "in.parquet", output=tmp_path / "out", keys=[], part_rows=1000)
    with pytest.raises(Conflict, match=r"different job.*keys.*--restart"):
        run_batch(store, other)
    assert {p.name: p.stat().st_mtime_ns for p in (tmp_path / "out").iterdir()} == before

    other.restart = True
    s = run_batch(store, other)
    assert (s.status, s.parts) == ("done", 1)
    assert sorted(p.name for p in (tmp_path / "out").glob("part-*")) == ["part-00000.parquet"]
    assert pq.read_table(tmp_path / "out").schema.names == ["_row", "y"]


def test_output_folder_with_foreign_files_is_refused(
    store: Store, mlp: ModelRecord, features: np.ndarray, tmp_path: Path
) -> None:
    np.save(tmp_path / "in.npy", features)
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "precious.txt").write_text("keep me")
    with pytest.raises(Conflict, match="not a polystack batch job"):
        run_batch(store, BatchOptions(model="mlp", input=tmp_path / "in.npy", output=tmp_path / "out"))
    assert (tmp_path / "out" / "precious.txt").read_text() == "keep me"
    # and nothing added to it (helper-270: it kept the lock file the refused job had made there)
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["precious.txt"]


def test_an_output_inside_a_parquet_input_folder_is_refused_before_a_row_is_read(
    store: Store, mlp: ModelRecord, features: np.ndarray, tmp_path: Path
) -> None:
    # helper-270: the first run wrote its parts there, the next read them back as input rows
    src = tmp_path / "in"
    src.mkdir()
    pq.write_table(pa.table({"id": np.arange(300), "x": features.tolist()}), src / "a.parquet")
    for inside in (src / "scored", src, src / "day=1" / "scored"):
        with pytest.raises(InvalidRequest, match=r"inside the input folder .*choose a folder outside it"):
            run_batch(store, BatchOptions(model="mlp", input=src, output=inside, keys=["id"]))
        assert not (src / "scored").exists() and not (src / "day=1").exists()
    # a folder the input's reading skips ("_" or "." first) is no input: it runs, and again
    opts = BatchOptions(model="mlp", input=src, output=src / "_scored", keys=["id"])
    assert run_batch(store, opts).rows_out == 300
    assert run_batch(store, opts).status == "already done"


def test_a_resume_by_another_runtime_is_refused_as_its_output_would_mix_two(
    store: Store, mlp: ModelRecord, features: np.ndarray, tmp_path: Path
) -> None:
    # helper-270: the job's identity left the runtime out, so a resume with --backend openvino finished a job begun
    # on ONNX Runtime, its parts mixing both runtimes' answers
    x: list[list[float] | None] = [*features[:200].tolist(), *([None] * 100)]
    pq.write_table(pa.table({"id": np.arange(300), "x": x}), tmp_path / "in.parquet")
    out = tmp_path / "out"
    opts = BatchOptions(
        model="mlp", input=tmp_path / "in.parquet", output=out, keys=["id"], batch_size=100, part_rows=100,
        max_errors=5,
    )  # fmt: skip
    with pytest.raises(TooManyErrors):  # stops at the bad rows, two parts kept
        run_batch(store, opts)
    before = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    opts.max_errors, opts.backend = None, "openvino"
    with pytest.raises(Conflict, match=r"holds 200 rows scored by onnxruntime/cpu \(the model\); this run would "
                       r"score the rest by openvino/cpu .*--restart"):  # fmt: skip
        run_batch(store, opts)
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir()} == before
    opts.backend = "onnxruntime"  # as it began: it goes on
    s = run_batch(store, opts)
    assert (s.status, s.resumed_from, s.rows_out) == ("done", 200, 200)


def test_a_job_output_keeps_its_runtime_from_its_first_part(tmp_path: Path) -> None:
    ort = {"backend": "onnxruntime", "device": "cpu", "variant": None}
    ov = {"backend": "openvino", "device": "cpu", "variant": "v-1"}
    job = JobOutput(tmp_path / "out", {"job": 1}, runtime=ort)
    job.close()
    job = JobOutput(tmp_path / "out", {"job": 1}, runtime=ov)  # no row scored yet: this one scores them all
    job.new_part(pa.schema([("k", pa.int64())])).commit(0.1)
    job.close()
    assert read_manifest(tmp_path / "out").runtime == ov  # type: ignore[union-attr]
    with pytest.raises(Conflict, match=r"scored by openvino/cpu \(variant v-1\); .*by onnxruntime/cpu \(the model\)"):
        JobOutput(tmp_path / "out", {"job": 1}, runtime=ort)
    JobOutput(tmp_path / "out", {"job": 1}, runtime=ort, restart=True).close()
    assert read_manifest(tmp_path / "out").runtime == ort  # type: ignore[union-attr]


def test_ctrl_c_mid_run_stops_saying_the_next_run_goes_on(home: Path, mlp: ModelRecord, tmp_path: Path) -> None:
    # it exited 130 saying nothing (helper-256); it says so now, and the next run resumes
    src = _input(tmp_path / "in.parquet")
    out = tmp_path / "out"
    args = ["mlp", "--input", str(src), "--output", str(out), "--key", "id", "--batch-size", "100"]
    args += ["--part-rows", "700", "--no-progress"]
    as_from_a_shell = (  # Ctrl-C raises KeyboardInterrupt in it, as in a process a shell starts
        "import runpy, signal, sys; signal.signal(signal.SIGINT, signal.default_int_handler); "
        "sys.argv[0] = 'polystack'; runpy.run_module('polystack', run_name='__main__')"
    )
    env = {**os.environ, "POLYSTACK_HOME": str(home)}
    proc = subprocess.Popen(
        [sys.executable, "-c", as_from_a_shell, "batch", *args], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    deadline = time.monotonic() + 60
    while _parts(out) < 2 and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.005)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    lines = err.decode().strip().splitlines()
    assert proc.returncode == 130, err.decode()
    assert lines[-2:] == [
        "note: the parts written are kept; the same command again goes on where this one stopped",
        "stopped (Ctrl-C)",
    ], lines
    done = _cli(home, *args, "--json")
    stdout, stderr = done.communicate(timeout=120)
    assert done.returncode == 0, stderr.decode()
    summary = json.loads(stdout)
    assert summary["resumed_from"] > 0
    # what ran, and why the default (helper-261: the job never said)
    assert summary["model"] == "mlp:1 on onnxruntime/cpu, batches of 100; default: no batch plan (polystack tune mlp:1 --profile batch)"
    assert len(pq.read_table(out).column("id")) == ROWS - len(range(0, ROWS, BAD_EVERY))


def test_a_job_of_no_rows_writes_a_part_of_none_so_its_output_reads_as_an_empty_table(
    store: Store, mlp: ModelRecord, features: np.ndarray, tmp_path: Path
) -> None:
    # helper-270: it wrote no part, and reading the output found no file (no schema to read)
    pq.write_table(pa.table({"id": np.arange(0), "x": pa.array([], pa.list_(pa.float32()))}), tmp_path / "in.parquet")
    s = run_batch(store, BatchOptions(model="mlp", input=tmp_path / "in.parquet", output=tmp_path / "out", keys=["id"]))
    assert (s.status, s.rows_total, s.rows_out, s.parts) == ("done", 0, 0, 1)
    table = pq.read_table(tmp_path / "out")
    assert table.num_rows == 0 and table.schema.names == ["id", "y"]
