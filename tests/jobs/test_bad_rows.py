"""Bad rows (nulls, wrong sizes, text where numbers belong, broken lines) go to _errors.jsonl; the job goes on."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from jobdata import FEATURES, reference

from polystack.jobs import BatchOptions, run_batch
from polystack.jobs.local import TooManyErrors
from polystack.store import ModelRecord, Store


def _errors(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "_errors.jsonl").read_text().splitlines()]


def test_jsonl_bad_rows_are_reported_with_key_and_reason(
    store: Store, mlp: ModelRecord, features: np.ndarray, tmp_path: Path
) -> None:
    rows = [{"id": f"r{i}", "x": features[i].tolist()} for i in range(40)]
    rows[3]["x"] = None
    rows[7]["x"] = features[7].tolist()[:15]
    rows[11]["x"] = [*features[11].tolist()[:15], "abc"]
    rows[13]["x"] = "not a list"
    lines = [json.dumps(r) for r in rows]
    lines[20] = '{"id": "r20", "x": [1, 2'  # a torn line
    path = tmp_path / "in.jsonl"
    path.write_text("\n".join(lines) + "\n")
    out = tmp_path / "out"
    s = run_batch(store, BatchOptions(model="mlp", input=path, output=out, keys=["id"], batch_size=8))
    assert (s.rows_total, s.rows_out, s.errors) == (40, 35, 5)
    errors = {e["row"]: e for e in _errors(out)}
    assert sorted(errors) == [3, 7, 11, 13, 20]
    assert errors[3]["key"] == {"id": "r3"} and "null" in errors[3]["reason"]
    assert "[15]" in errors[7]["reason"] and "[16]" in errors[7]["reason"]
    assert "'abc'" in errors[11]["reason"] or "abc" in errors[11]["reason"]
    assert "text" in errors[13]["reason"]
    assert "not valid JSON" in errors[20]["reason"] and errors[20]["key"] == {"id": None}
    table = pq.read_table(out)
    good = [i for i in range(40) if i not in errors]
    assert table.column("id").to_pylist() == [f"r{i}" for i in good]
    y = np.stack(table.column("y").to_numpy(zero_copy_only=False))
    np.testing.assert_allclose(y, reference(tmp_path / "mlp.onnx", features[good]), rtol=1e-5, atol=1e-6)


def test_csv_text_and_empty_cells_cost_one_row_each(
    store: Store, mlp: ModelRecord, features: np.ndarray, tmp_path: Path
) -> None:
    header = ",".join(["id"] + [f"f{j}" for j in range(FEATURES)])
    body = [[str(i), *(repr(float(v)) for v in features[i % 300])] for i in range(2000)]
    body[1500][3] = "abc"  # deep in the file: Arrow's type guess from the first block would abort here
    body[5][1] = ""
    path = tmp_path / "in.csv"
    path.write_text("\n".join([header, *(",".join(r) for r in body)]) + "\n")
    out = tmp_path / "out"
    s = run_batch(store, BatchOptions(model="mlp", input=path, output=out, keys=["id"], batch_size=256))
    assert (s.rows_out, s.errors) == (1998, 2)
    errors = sorted(_errors(out), key=lambda e: e["row"])
    assert [e["key"]["id"] for e in errors] == [5, 1500]
    assert "null" in errors[0]["reason"] and "'abc'" in errors[1]["reason"]


def test_a_csv_row_of_too_few_or_too_many_fields_costs_its_row_and_a_resume_keeps_it_once(
    store: Store, mlp: ModelRecord, features: np.ndarray, tmp_path: Path
) -> None:
    """One such row stopped the job at every run ("CSV parse error: Expected 17 columns, got 16"; helper-270)."""
    header = ",".join(["id"] + [f"f{j}" for j in range(FEATURES)])
    body = [",".join([str(i), *(repr(float(v)) for v in features[i % 300])]) for i in range(2000)]
    body[10] = "10,0.5,0.25"  # a field or more too few...
    body[1700] = body[1700] + ",9.0"  # ...and one too many, deep in the file
    path = tmp_path / "in.csv"
    path.write_text("\n".join([header, *body]) + "\n")
    out = tmp_path / "out"
    opts = BatchOptions(model="mlp", input=path, output=out, keys=["id"], batch_size=256, part_rows=512, max_errors=1)
    with pytest.raises(TooManyErrors):  # they come after the other rows: every good row is written first
        run_batch(store, opts)
    opts.max_errors = None
    s = run_batch(store, opts)  # and a resume reads them again in the same order, each written once
    assert (s.status, s.resumed_from, s.rows_total, s.rows_out, s.errors) == ("done", 1536, 2000, 1998, 2)
    errors = _errors(out)
    assert [e["key"] for e in errors] == [{"id": None}] * 2
    long, short = sorted(e["reason"] for e in errors)
    assert short == "a CSV row of 3 fields where the header has 17: '10,0.5,0.25'"
    cut = f"{body[1700][:200]}... ({len(body[1700]):,} characters)"  # a long line is cut short
    assert long == f"a CSV row of 18 fields where the header has 17: {cut!r}"
    table = pq.read_table(out)
    assert table.column("id").to_pylist() == [i for i in range(2000) if i not in (10, 1700)]


def test_parquet_nulls_and_ragged_lists(store: Store, mlp: ModelRecord, features: np.ndarray, tmp_path: Path) -> None:
    x = [features[i].tolist() for i in range(10)]
    x[2] = None
    x[4] = [*x[4][:8], None, *x[4][9:]]  # a null element
    x[6] = x[6] + [0.0]  # 17 values
    pq.write_table(pa.table({"id": np.arange(10), "x": pa.array(x, pa.list_(pa.float64()))}), tmp_path / "in.parquet")
    out = tmp_path / "out"
    s = run_batch(store, BatchOptions(model="mlp", input=tmp_path / "in.parquet", output=out, keys=["id"]))
    assert (s.rows_out, s.errors) == (7, 3)
    assert [e["key"]["id"] for e in _errors(out)] == [2, 4, 6]
    assert pq.read_table(out).column("id").to_pylist() == [0, 1, 3, 5, 7, 8, 9]


def test_a_null_in_dictionary_encoded_columns_costs_its_row(
    store: Store, mlp: ModelRecord, features: np.ndarray, tmp_path: Path
) -> None:
    """Pandas' category columns and Spark's dictionaries: one null stopped the whole job ("Expected bytes, got a
    'int' object": its filler was of the wrong type; helper-270)."""
    cols = {f"c{j}": pa.array([str(v) for v in features[:10, j]]).dictionary_encode() for j in range(FEATURES)}
    cols["c3"] = pa.array([None if i == 4 else str(v) for i, v in enumerate(features[:10, 3])]).dictionary_encode()
    pq.write_table(pa.table({"id": np.arange(10), **cols}), tmp_path / "in.parquet")
    out = tmp_path / "out"
    names = ",".join(f"c{j}" for j in range(FEATURES))
    s = run_batch(store, BatchOptions(model="mlp", input=tmp_path / "in.parquet", output=out, keys=["id"],
                                      columns=[names]))  # fmt: skip
    assert (s.rows_out, s.errors) == (9, 1)
    assert [(e["key"]["id"], e["reason"]) for e in _errors(out)] == [(4, "input 'x': null value")]
    y = np.stack(pq.read_table(out).sort_by("id").column("y").to_numpy(zero_copy_only=False))
    kept = [i for i in range(10) if i != 4]
    want = reference(tmp_path / "mlp.onnx", features[kept].astype(np.float32))
    np.testing.assert_allclose(y, want, rtol=1e-5, atol=1e-5)


def test_a_key_of_another_type_than_its_first_rows_costs_its_row(
    store: Store, mlp: ModelRecord, features: np.ndarray, tmp_path: Path
) -> None:
    """An id of 1.5 among whole numbers, past the first batch, stopped the job at every run ("Float value 1.500000
    was truncated converting to int64"; helper-270)."""
    lines = [json.dumps({"id": 1.5 if i == 290 else i, "x": features[i].tolist()}) for i in range(300)]
    (tmp_path / "in.jsonl").write_text("\n".join(lines) + "\n")
    out = tmp_path / "out"
    s = run_batch(store, BatchOptions(model="mlp", input=tmp_path / "in.jsonl", output=out, keys=["id"], batch_size=64))
    assert (s.rows_out, s.errors) == (299, 1)
    [error] = _errors(out)
    assert error["key"] == {"id": 1.5} and error["reason"].startswith("key 'id': 1.5 is not int64"), error
    assert pq.read_table(out).column("id").type == pa.int64()


def test_max_errors_stops_the_job_and_a_rerun_with_more_room_finishes_it(
    store: Store, mlp: ModelRecord, features: np.ndarray, tmp_path: Path
) -> None:
    x = [features[i % 300].tolist() for i in range(1000)]
    for i in range(0, 1000, 50):
        x[i] = None  # 20 bad rows, spread out
    pq.write_table(pa.table({"id": np.arange(1000), "x": x}), tmp_path / "in.parquet")
    out = tmp_path / "out"
    opts = BatchOptions(
        model="mlp", input=tmp_path / "in.parquet", output=out, keys=["id"], batch_size=100, part_rows=200, max_errors=5
    )
    with pytest.raises(TooManyErrors, match="exceed --max-errors 5"):
        run_batch(store, opts)
    opts.max_errors = 100  # not part of the job's identity: the rerun resumes
    s = run_batch(store, opts)
    assert s.resumed_from > 0 and (s.rows_total, s.rows_out, s.errors) == (1000, 980, 20)
    assert sorted(e["key"]["id"] for e in _errors(out)) == list(range(0, 1000, 50))
    assert sorted(pq.read_table(out).column("id").to_pylist()) == [i for i in range(1000) if i % 50]
