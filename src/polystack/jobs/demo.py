"""The demo's batch step: score a small Parquet file with demo-mlp, a few bad rows included."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

import numpy as np

from polystack.jobs import BatchOptions, run_batch
from polystack.jobs.progress import summary_table

if TYPE_CHECKING:
    from polystack.cli.demo import DemoContext


def demo_step(ctx: DemoContext) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    ctx.step("batch job: score a Parquet file, resumably, bad rows set aside")
    record = ctx.models["demo-mlp"]
    width = record.signature.inputs[0].shape[1]
    n = 20_000
    x = np.random.default_rng(7).standard_normal((n, width)).astype(np.float32).tolist()
    x[123] = None  # a null
    x[4567] = x[4567][:-1]  # one value short
    src = ctx.workdir / "batch-in.parquet"
    pq.write_table(pa.table({"id": [f"u{i:05d}" for i in range(n)], "x": x}), src, row_group_size=4096)
    out = ctx.workdir / "batch-out"
    options = BatchOptions(model=f"{record.name}:{record.version}", input=src, output=out, keys=["id"], part_rows=5000)
    ctx.console.print(
        f"polystack batch {options.model} --input {src.name} --output {out.name} --key id --part-rows 5000",
        markup=False,
        style="dim",
    )
    summary = run_batch(ctx.store, options, ctx.console)
    ctx.console.print(summary_table(summary))
    table = pq.read_table(out)
    columns = ", ".join(f"{f.name} {f.type}" for f in table.schema)
    ctx.console.print(f"output: {table.num_rows:,} rows; columns {columns}", markup=False)
    for line in (out / "_errors.jsonl").read_text().splitlines():
        ctx.console.print(f"  bad row: {json.loads(line)}", markup=False)
    again = run_batch(ctx.store, options, None)
    ctx.console.print(f"run again with the same arguments: {again.status}, nothing rewritten (--restart starts over)")
