"""Helpers for the batch-job tests (imported by name: pytest puts this folder on sys.path)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from polystack.examples import mlp_onnx
from polystack.formats import import_model
from polystack.store import ModelRecord, Store

FEATURES = 16


def register_mlp(store: Store, work: Path, name: str = "mlp") -> ModelRecord:
    path = mlp_onnx(work / f"{name}.onnx", sizes=(FEATURES, 32, 4))
    imported = import_model(path, work)
    record, _ = store.register(imported.artifact, name=name, format=imported.format, signature=imported.signature)
    return record


def reference(model_path: Path, x: np.ndarray) -> np.ndarray:
    """The model's outputs computed straight with ONNX Runtime, for comparison."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(model_path), providers=["CPUExecutionProvider"])
    return np.asarray(session.run(None, {"x": x.astype(np.float32)})[0])


def list_column(x: np.ndarray) -> pa.Array:
    return pa.FixedSizeListArray.from_arrays(pa.array(x.reshape(-1)), x.shape[1])


def write_input(fmt: str, folder: Path, x: np.ndarray) -> Path:
    """``x`` as ``fmt`` with an ``id`` column (10 x the row number) where the format has columns."""
    n = len(x)
    ids = np.arange(n) * 10
    if fmt == "parquet":
        path = folder / "in.parquet"
        pq.write_table(pa.table({"id": ids, "x": list_column(x)}), path, row_group_size=70)
    elif fmt == "dataset":  # a folder of Parquet files, read in name order
        path = folder / "ds"
        path.mkdir()
        for i, (lo, hi) in enumerate([(0, 120), (120, n)]):
            pq.write_table(pa.table({"id": ids[lo:hi], "x": pa.array(x[lo:hi].tolist())}), path / f"f{i}.parquet")
    elif fmt == "csv":  # one column per feature: stacked into x in file order
        path = folder / "in.csv"
        cols = ["id"] + [f"f{j}" for j in range(FEATURES)]
        lines = [",".join(cols)] + [",".join([str(ids[i]), *(repr(float(v)) for v in x[i])]) for i in range(n)]
        path.write_text("\n".join(lines) + "\n")
    elif fmt == "jsonl":
        path = folder / "in.jsonl"
        path.write_text("".join(json.dumps({"id": int(ids[i]), "x": x[i].tolist()}) + "\n" for i in range(n)))
    elif fmt == "npy":
        path = folder / "in.npy"
        np.save(path, x)
    else:
        path = folder / "in.npz"
        np.savez(path, x=x)
    return path
