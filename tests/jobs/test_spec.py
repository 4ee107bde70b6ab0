"""A batch job runs the model's `batch` plan for this machine when one exists, else the default spec, in batches
the plan, the default or --batch-size sizes (made smaller where rows are large)."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from jobdata import list_column

from polystack.examples import mlp_onnx
from polystack.formats import import_model
from polystack.jobs import BatchOptions, run_batch
from polystack.jobs.spec import batch_spec
from polystack.store import ModelRecord, Store
from polystack.tuning.plan import fingerprint


def test_batch_plan_for_this_machine_picks_variant_threads_and_batch(store: Store, mlp: ModelRecord) -> None:
    spec, source, batch = batch_spec(store, mlp)
    assert (batch, spec.backend, spec.variant_id) == (None, "onnxruntime", None)
    assert source == "default: no batch plan (polystack tune mlp:1 --profile batch)"

    here = fingerprint()
    variant = store.variants.upsert(
        mlp, backend="onnxruntime", device="cpu", precision="fp32", options={}, format="onnx",
        digest=mlp.digest, size_bytes=mlp.size_bytes, status="verified",
    )  # fmt: skip
    common = {"variant_id": variant.id, "measurements": [], "explanation": "", "machine": {}}
    settings = {"profile": "batch", "threads": 1, "thread_option": "intra_op_threads", "max_batch_size": 256}
    store.plans.put(mlp, profile="batch", fingerprint="elsewhere", settings={**settings, "threads": 7}, **common)
    # a plan from another machine does not apply here, and the job says so
    assert batch_spec(store, mlp)[1].startswith("default: the batch plan was measured on another machine")
    store.plans.put(mlp, profile="batch", fingerprint=here, settings=settings, **common)
    spec, source, batch = batch_spec(store, mlp)
    assert source.startswith("batch plan") and batch == 256
    assert spec.variant_id == variant.id and spec.options["intra_op_threads"] == 1
    assert batch_spec(store, mlp, backend="onnxruntime")[1] == "--backend onnxruntime"  # an explicit one wins
    store.variants.upsert(
        mlp, backend="onnxruntime", device="cpu", precision="fp32", options={}, format="onnx",
        digest=mlp.digest, size_bytes=mlp.size_bytes, status="rejected",
    )  # fmt: skip
    assert batch_spec(store, mlp)[1].startswith("default: the batch plan's variant is no longer verified")


def test_a_finished_job_run_again_says_what_ran_then_not_what_would_run_now(
    store: Store, mlp: ModelRecord, tmp_path: Path
) -> None:
    """The summary of an 'already done' job was worked out from the store as it is now: after a tune, it named the
    plan, though the default had scored every row (helper-263)."""
    import numpy as np
    from jobdata import FEATURES, write_input

    from polystack.jobs import BatchOptions, run_batch

    path = write_input("parquet", tmp_path, np.ones((10, FEATURES), np.float32))
    options = BatchOptions(model="mlp", input=path, output=tmp_path / "out", keys=["id"])
    first = run_batch(store, options)
    assert first.status == "done" and "default: no batch plan" in first.model
    variant = store.variants.upsert(
        mlp, backend="onnxruntime", device="cpu", precision="fp32", options={}, format="onnx",
        digest=mlp.digest, size_bytes=mlp.size_bytes, status="verified",
    )  # fmt: skip
    settings = {"profile": "batch", "threads": 1, "thread_option": "intra_op_threads", "max_batch_size": 8,
                "instances": 2}  # fmt: skip
    store.plans.put(
        mlp, profile="batch", fingerprint=fingerprint(), settings=settings, variant_id=variant.id,
        measurements=[], explanation="", machine={},
    )  # fmt: skip
    again = run_batch(store, options)
    assert again.status == "already done" and again.model == first.model
    planned = batch_spec(store, mlp)[1]  # the local engine scores one batch at a time: no instances claimed
    described, _, note = planned.partition("; ")
    assert described.startswith("batch plan (") and "instances" not in described
    assert note == "its 2 instances run as one"


@pytest.mark.parametrize("fmt", ["parquet", "npy"])
def test_batches_of_large_rows_are_made_smaller_to_hold_a_bounded_amount_of_input(
    store: Store, tmp_path: Path, fmt: str
) -> None:
    """helper-270: memory was bounded by rows, not bytes (1 MiB rows in the default batches of 1,024 peaked at 5.9
    GB); a batch the job chooses now holds 64 MiB of input at most, and --batch-size, when given, is taken."""
    width = 32768  # 128 KiB a row: 512 of them make 64 MiB
    path = mlp_onnx(tmp_path / "wide.onnx", sizes=(width, 4))
    imported = import_model(path, tmp_path)
    store.register(imported.artifact, name="wide", format=imported.format, signature=imported.signature)
    x = np.random.default_rng(0).standard_normal((10, width)).astype(np.float32)
    if fmt == "npy":
        np.save(tmp_path / "in.npy", x)
        src = tmp_path / "in.npy"
    else:
        src = tmp_path / "in.parquet"
        pq.write_table(pa.table({"x": list_column(x)}), src, compression="none", use_dictionary=False)
    s = run_batch(store, BatchOptions(model="wide", input=src, output=tmp_path / "out"))
    # (Parquet's sizes count its levels and page headers too: 511 there)
    assert re.match(r"wide:1 on onnxruntime/cpu, batches of 51[12] \(64 MiB of input at most; --batch-size", s.model)
    assert s.rows_out == 10
    given = run_batch(store, BatchOptions(model="wide", input=src, output=tmp_path / "out2", batch_size=1024))
    assert "batches of 1024; " in given.model
