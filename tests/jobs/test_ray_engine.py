"""--engine ray gives the same output as the local engine (one Ray session for the module).

Marked ``ray``: `make test` runs these inside a loopback-only network namespace
(``unshare -n``), since Ray's servers listen on every interface.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from polystack.errors import InvalidRequest
from polystack.jobs import BatchOptions, run_batch
from polystack.jobs.job import prepare
from polystack.jobs.ray import _dataset
from polystack.store import ModelRecord, Store

pytestmark = pytest.mark.ray


@pytest.fixture(scope="module")
def ray_session() -> Iterator[None]:
    ray = pytest.importorskip("ray")
    ray.init(num_cpus=2, include_dashboard=False, logging_level="WARNING", log_to_driver=False)
    yield
    ray.shutdown()


def _errors(out: Path) -> list[tuple[int, str]]:
    return [(e["row"], e["reason"]) for e in map(json.loads, (out / "_errors.jsonl").read_text().splitlines())]


@pytest.mark.parametrize("fmt", ["parquet", "jsonl"])
def test_ray_engine_output_equals_local_engine_output(
    fmt: str, ray_session: None, store: Store, mlp: ModelRecord, features: np.ndarray, tmp_path: Path
) -> None:
    x: list[list[float] | None] = [r.tolist() for r in features]
    x[17] = None
    x[200] = x[200][:3]  # wrong size
    if fmt == "parquet":
        path = tmp_path / "in.parquet"
        pq.write_table(pa.table({"id": np.arange(300) * 3, "x": x}), path, row_group_size=64)
    else:
        path = tmp_path / "in.jsonl"
        path.write_text("".join(json.dumps({"id": i * 3, "x": v}) + "\n" for i, v in enumerate(x)))
    keys = ["id"] if fmt == "parquet" else []  # also check the _row numbering on Ray
    runs = {}
    for engine in ("local", "ray"):
        out = tmp_path / engine
        s = run_batch(
            store,
            BatchOptions(model="mlp", input=path, output=out, keys=keys, batch_size=50, part_rows=120, engine=engine),
        )
        assert (s.rows_total, s.rows_out, s.errors) == (300, 298, 2)
        runs[engine] = (pq.read_table(out), _errors(out))
    local, ray_ = runs["local"], runs["ray"]
    assert ray_[0].schema == local[0].schema
    assert ray_[0].equals(local[0])  # same rows, same order, same values
    assert ray_[1] == local[1] and [r for r, _ in local[1]] == [17, 200]


def test_ray_engine_resumes_a_local_job(
    ray_session: None, store: Store, mlp: ModelRecord, features: np.ndarray, tmp_path: Path
) -> None:
    np.save(tmp_path / "in.npy", features)
    opts = BatchOptions(model="mlp", input=tmp_path / "in.npy", output=tmp_path / "out", batch_size=40, part_rows=100)
    run_batch(store, opts)
    manifest = tmp_path / "out" / "_manifest.json"
    m = json.loads(manifest.read_text())
    m["status"], m["parts"] = "running", m["parts"][:1]  # as if killed after the first part
    manifest.write_text(json.dumps(m))
    opts.engine = "ray"
    s = run_batch(store, opts)
    assert (s.resumed_from, s.rows_total, s.rows_out) == (120, 300, 300)
    rows = pq.read_table(tmp_path / "out").column("_row").to_pylist()
    assert sorted(rows) == list(range(300))


def test_a_ray_job_that_cannot_read_its_input_fails_in_one_line_saying_so(
    ray_session: None, store: Store, mlp: ModelRecord, features: np.ndarray, tmp_path: Path
) -> None:
    """helper-270: Ray's failures were tracebacks (exit 1); a CSV row of too few fields, which the local engine
    makes a bad row, stops Ray's reader (Ray keeps not the reason Arrow gave it)."""
    header = "id," + ",".join(f"f{j}" for j in range(16))
    lines = [header] + [f"{i}," + ",".join(map(str, r)) for i, r in enumerate(features)]
    lines[50] = "49,1,2"
    (tmp_path / "in.csv").write_text("\n".join(lines) + "\n")
    opts = BatchOptions(model="mlp", input=tmp_path / "in.csv", output=tmp_path / "out", keys=["id"], engine="ray")
    with pytest.raises(InvalidRequest) as caught:
        run_batch(store, opts)
    assert type(caught.value) is InvalidRequest  # polystack's own, not Ray's wrapper of an error
    assert caught.value.message == (
        f"the Ray job could not read its input: Failed to read CSV file: {tmp_path / 'in.csv'}. Please check the CSV "
        "file has correct format, or filter out non-CSV file with 'partition_filter' field. See read_csv() "
        "documentation for more details. (--engine local reads it row by row, a malformed row costing its row alone)"
    )


def test_a_ray_resume_skips_the_files_of_a_parquet_folder_before_its_first_row_unread(
    ray_session: None, store: Store, mlp: ModelRecord, features: np.ndarray, tmp_path: Path
) -> None:
    """helper-270: a resume read and scored every row before its resume point again (13 s to resume at 90%)."""
    folder = tmp_path / "in"
    folder.mkdir()
    for k in range(3):  # 3 files of 100 rows
        rows = np.arange(k * 100, (k + 1) * 100)
        pq.write_table(pa.table({"id": rows, "x": [r.tolist() for r in features[rows]]}), folder / f"p{k}.parquet")
    opts = BatchOptions(model="mlp", input=folder, output=tmp_path / "out", keys=["id"], batch_size=50, part_rows=100)
    run_batch(store, opts)
    whole = pq.read_table(tmp_path / "out")
    manifest = tmp_path / "out" / "_manifest.json"
    m = json.loads(manifest.read_text())
    m["status"], m["parts"] = "running", m["parts"][:2]  # killed after 200 rows: at the third file's first
    manifest.write_text(json.dumps(m))
    job = prepare(store, dataclasses.replace(opts, engine="ray"))
    import ray

    assert _dataset(ray, job, 200)[1] == 200 and _dataset(ray, job, 199)[1] == 100  # files skipped whole
    opts.engine = "ray"
    s = run_batch(store, opts)
    assert (s.resumed_from, s.rows_total, s.rows_out) == (200, 300, 300)
    assert pq.read_table(tmp_path / "out").equals(whole)
