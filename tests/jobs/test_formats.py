"""Every input format scores to the same outputs as ONNX Runtime called directly."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from jobdata import FEATURES, reference, write_input

from polystack.jobs import BatchOptions, run_batch
from polystack.store import ModelRecord, Store


@pytest.mark.parametrize("fmt", ["parquet", "dataset", "csv", "jsonl", "npy", "npz"])
def test_every_format_matches_the_runtime_called_directly(
    fmt: str, store: Store, mlp: ModelRecord, features: np.ndarray, tmp_path: Path
) -> None:
    path = write_input(fmt, tmp_path, features)
    keyed = fmt not in ("npy", "npz")
    out = tmp_path / "out"
    summary = run_batch(
        store,
        BatchOptions(model="mlp", input=path, output=out, keys=["id"] if keyed else [], batch_size=64, part_rows=100),
    )
    assert (summary.status, summary.rows_total, summary.rows_out, summary.errors) == ("done", 300, 300, 0)
    assert summary.parts == 3  # 100-row parts at 64-row batches: 128 + 128 + 44
    table = pq.read_table(out)
    assert table.schema.names == (["id", "y"] if keyed else ["_row", "y"])
    assert pa.types.is_fixed_size_list(table.schema.field("y").type)
    rows = table.column("id").to_numpy() // 10 if keyed else table.column("_row").to_numpy()
    assert sorted(rows.tolist()) == list(range(300))
    y = np.stack(table.column("y").to_numpy(zero_copy_only=False))
    np.testing.assert_allclose(y, reference(tmp_path / "mlp.onnx", features[rows]), rtol=1e-5, atol=1e-6)


def test_columns_option_stacks_named_columns_and_maps_inputs(
    store: Store, mlp: ModelRecord, features: np.ndarray, tmp_path: Path
) -> None:
    cols = {f"c{j}": features[:, j] for j in range(FEATURES)}
    pq.write_table(pa.table({"k": np.arange(300), "extra": np.zeros(300), **cols}), tmp_path / "wide.parquet")
    names = ",".join(f"c{j}" for j in range(FEATURES))
    for i, columns in enumerate([[names], [f"x={names}"]]):
        out = tmp_path / f"out{i}"
        run_batch(
            store, BatchOptions(model="mlp", input=tmp_path / "wide.parquet", output=out, keys=["k"], columns=columns)
        )
        y = np.stack(pq.read_table(out).sort_by("k").column("y").to_numpy(zero_copy_only=False))
        np.testing.assert_allclose(y, reference(tmp_path / "mlp.onnx", features), rtol=1e-5, atol=1e-6)


def test_a_parquet_folder_whose_files_differ_in_columns_is_refused_naming_the_files_and_the_column(
    store: Store, mlp: ModelRecord, features: np.ndarray, tmp_path: Path
) -> None:
    """Arrow's own error named neither file nor column ("Schema at index 2 was different: x: ..."), cut at its first
    line; and keys of one type in one file and another in the next went through."""
    from polystack.errors import InvalidRequest

    folder = tmp_path / "rows"
    folder.mkdir()
    rows = list(features[:10])
    pq.write_table(pa.table({"id": np.arange(10), "x": rows}), folder / "a.parquet")
    pq.write_table(pa.table({"id": np.arange(10).astype(str), "x": rows}), folder / "b.parquet")
    options = BatchOptions(model="mlp", input=folder, output=tmp_path / "out", keys=["id"])
    with pytest.raises(InvalidRequest, match=r"'id' is int64 in a\.parquet and string in b\.parquet.*rewrite b\.par"):
        run_batch(store, options)
    (folder / "b.parquet").unlink()
    pq.write_table(pa.table({"id": np.arange(10), "z": rows}), folder / "c.parquet")
    with pytest.raises(InvalidRequest, match=r"'x' is in a\.parquet, not in c\.parquet; 'z' is in c\.parquet, not in"):
        run_batch(store, options)
    (folder / "c.parquet").unlink()
    assert run_batch(store, options).rows_out == 10  # the folder's one file left runs
