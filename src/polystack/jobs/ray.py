"""The Ray engine: Ray Data reads the input, ``map_batches`` scores it on actors that each load the
model once, and the driver streams the results into the same resumable parts as the local engine.

    read_parquet / read_csv / read_text+parse / read_numpy
      -> map_batches(_Scorer, concurrency=N actors, batch_format="pyarrow")   (order preserved)
      -> iter_batches on the driver -> JobOutput parts + errors.jsonl + manifest

Each actor receives the artifact bytes through the object store (a cluster's workers need not see
this machine's model store), registers them in a private temporary store, and loads them through
``Engine.load`` with the job's LoadSpec, so validation and stats are the engine's. Every input row
comes back exactly once, scored or with its reason, which keeps the output identical to the local
engine's and lets the driver number rows when no key names them.

Without ``--ray-address`` a local Ray is started for the job and stopped after it. (On machines
whose traffic must stay on loopback, run the command in a loopback-only network namespace.)
"""

from __future__ import annotations

import dataclasses
import logging
import tempfile
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from polystack.engine import Engine, LoadSpec
from polystack.errors import BackendError, BackendUnavailable, InvalidRequest, PolystackError
from polystack.jobs.io import input_files, parse_jsonl
from polystack.jobs.job import ROW_COLUMN, PreparedJob, Scored, misfits, score_batch
from polystack.jobs.local import drive
from polystack.jobs.manifest import JobOutput
from polystack.jobs.tensors import REASON_COLUMN, Binding
from polystack.store import Store
from polystack.types import Signature, TensorSpec


def _ray() -> Any:
    try:
        import ray
        import ray.data
    except ImportError as e:
        raise BackendUnavailable("--engine ray needs Ray: pip install 'polystack[ray]'") from e
    return ray


@dataclasses.dataclass(frozen=True)
class _ModelPayload:
    """What an actor needs to load the model without this machine's store."""

    artifact: Any  # ObjectRef of the artifact bytes
    name: str
    format: str
    signature: Signature
    spec: LoadSpec


class _Scorer:
    """A Ray Data callable class: loads the model once per actor, scores pyarrow batches."""

    def __init__(
        self,
        payload: _ModelPayload,
        bindings: list[Binding],
        keys: list[str],
        out_specs: list[TensorSpec],
        schema: pa.Schema,
    ) -> None:
        import ray

        self._tmp = tempfile.TemporaryDirectory(prefix="polystack-actor-")
        home = Path(self._tmp.name)
        artifact = home / "artifact"
        artifact.write_bytes(ray.get(payload.artifact))
        store = Store.at(home / "store")
        record, _ = store.register(artifact, name=payload.name, format=payload.format, signature=payload.signature)
        spec = dataclasses.replace(payload.spec, artifact=store.artifact_path(record))
        self.engine = Engine(store)
        self.entry = self.engine.load(record.ref, spec)
        self.bindings, self.keys, self.out_specs, self.schema = bindings, keys, out_specs, schema
        self.full_schema = schema.append(pa.field(REASON_COLUMN, pa.string()))

    def __call__(self, batch: pa.Table) -> pa.Table:
        scored = score_batch(self.entry, batch, self.bindings, self.keys, self.out_specs, self.schema, 0)
        return _every_row(batch, scored, self.keys, self.full_schema)


def _fitted(col: pa.Array | pa.ChunkedArray, want: pa.DataType) -> pa.Array:
    """``col`` as ``want``, a value that does not fit it null (a bad row's key of another type than the column's
    first rows, which is why its row is bad: ``job.unfit_keys``; the local engine's error line shows it as given)."""
    col = col.combine_chunks() if isinstance(col, pa.ChunkedArray) else col
    bad = set(misfits(col, want))
    if bad:
        col = pc.if_else(pa.array([i in bad for i in range(len(col))]), pa.scalar(None, col.type), col)
    return col.cast(want)


def _every_row(batch: pa.Table, scored: Scored, keys: list[str], schema: pa.Schema) -> pa.Table:
    """Scored rows and bad rows back together, one per input row, in input order."""
    n = batch.num_rows
    if not scored.bad:
        return scored.table.append_column(REASON_COLUMN, pa.nulls(n, pa.string()))
    bad_rows = np.asarray([r for r, _ in scored.bad], dtype=np.int64)
    reasons = pa.array([w for _, w in scored.bad], pa.string())
    take = pa.array(bad_rows)
    bad_keys = [batch.column(k).take(take) for k in keys] if keys else [pa.array(bad_rows, pa.int64())]
    n_keys = len(bad_keys)
    bad_cols = bad_keys + [pa.nulls(len(bad_rows), f.type) for f in list(schema)[n_keys:-1]] + [reasons]
    bad = pa.Table.from_arrays(
        [_fitted(c, f.type) if c.type != f.type else c for c, f in zip(bad_cols, schema, strict=True)], schema=schema
    )
    good = scored.table.append_column(REASON_COLUMN, pa.nulls(scored.table.num_rows, pa.string()))
    both = pa.concat_tables([good, bad])
    good_rows = np.setdiff1d(np.arange(n), bad_rows)
    order = np.argsort(np.concatenate([good_rows, bad_rows]), kind="stable")
    return both.take(pa.array(order))


def _parse_lines(batch: pa.Table, columns: list[str], schema: pa.Schema) -> pa.Table:
    from polystack.jobs.io import _conform

    parsed = parse_jsonl(batch.column("text").to_pylist(), columns=columns)
    return pa.Table.from_batches([_conform(parsed, schema, columns)])


def _dataset(ray: Any, job: PreparedJob, skip: int) -> tuple[Any, int]:
    """The input as a Ray dataset, and the rows before it: a resume skips a Parquet folder's files before its
    first row unread (helper-270: they were read and scored again, 13 s to resume at 90% where the local engine
    took 0.6); the rest it scores and the driver drops."""
    src = job.source
    cols = job.read_columns
    if src.format == "parquet":
        import pyarrow.parquet as pq

        files, before = input_files(src.path), 0
        while len(files) > 1 and before + (rows := pq.ParquetFile(files[0]).metadata.num_rows) <= skip:
            files, before = files[1:], before + rows
        return ray.data.read_parquet([str(f) for f in files], columns=cols), before
    return _whole(ray, job), 0


def _whole(ray: Any, job: PreparedJob) -> Any:
    src = job.source
    cols = job.read_columns
    if src.format == "csv":
        import pyarrow.csv as pcsv

        convert = pcsv.ConvertOptions(
            include_columns=cols, column_types={n: pa.string() for n in job.text_columns}, strings_can_be_null=True
        )
        return ray.data.read_csv(str(src.path), convert_options=convert)
    if src.format == "jsonl":
        ds = ray.data.read_text(str(src.path), drop_empty_lines=True)
        return ds.map_batches(
            _parse_lines, batch_format="pyarrow", fn_kwargs={"columns": cols, "schema": src.schema}, batch_size=4096
        )
    if src.format == "npy":
        name = src.schema.names[0]
        return ray.data.read_numpy(str(src.path)).rename_columns({"data": name})
    raise AssertionError(f"prepare refuses {src.format} for --engine ray")  # (RAY_FORMATS)


def _connect(ray: Any, address: str | None) -> bool:
    """Join ``address`` or start a local Ray; True when this call started (and must stop) it. Ray's Python lines
    below ERROR (Ray Data's plan, say) stay out of the job's stderr (its C++ core still writes its own)."""
    if ray.is_initialized():
        return False
    kwargs: dict[str, Any] = {"logging_level": "ERROR", "log_to_driver": False}
    if address:
        ray.init(address=address, **kwargs)
    else:
        ray.init(include_dashboard=False, **kwargs)
    return True


def run_ray(job: PreparedJob, out: JobOutput, on_rows: Callable[[int, int], None]) -> int:
    """Run the rest of ``job`` on Ray Data into ``out``; return the input rows this run covered."""
    ray = _ray()
    started_here = _connect(ray, job.options.ray_address)
    try:
        ctx = ray.data.DataContext.get_current()
        ctx.execution_options.preserve_order = True  # row numbers and resumption rely on input order
        ctx.enable_progress_bars = False  # polystack draws its own
        payload = _ModelPayload(
            artifact=ray.put(job.spec.artifact.read_bytes()),
            name=job.record.name,
            format=job.spec.format,
            signature=job.record.signature,
            spec=job.spec,
        )
        actors = job.options.ray_actors or max(1, int(ray.cluster_resources().get("CPU", 2)) // 2)
        skip = out.manifest.next_row
        ds, before = _dataset(ray, job, skip)
        scored_ds = ds.map_batches(
            _Scorer,
            fn_constructor_kwargs={
                "payload": payload,
                "bindings": job.bindings,
                "keys": job.keys,
                "out_specs": job.out_specs,
                "schema": job.out_schema,
            },
            batch_size=job.batch_size,
            batch_format="pyarrow",
            compute=ray.data.ActorPoolStrategy(size=actors),
            num_cpus=1,
            zero_copy_batch=True,
        )
        stop = threading.Event()
        data_log = logging.getLogger("ray.data")
        level = data_log.level
        data_log.setLevel(logging.CRITICAL)  # its failure dumps: the job's own line says what failed
        try:
            writer = drive(job, out, _results(scored_ds, job, skip, before), on_rows, stop)
        except (PolystackError, KeyboardInterrupt):
            raise
        except Exception as e:
            raise _failure(e) from e
        finally:
            data_log.setLevel(level)
        return writer.rows_in
    finally:
        if started_here:
            ray.shutdown()


def _failure(e: BaseException) -> PolystackError:
    """A Ray job's failure as one line (helper-270: tracebacks and exit 1): a polystack error its actors raised, as
    it is; else what failed, in the words of the error Ray wrapped (the first line of each)."""
    seen: set[int] = set()
    wrapped: BaseException | None = None  # what the first RayTaskError met wraps: the error in Ray's task
    todo: list[BaseException | None] = [e]
    while todo:
        x = todo.pop(0)
        if x is None or id(x) in seen:
            continue
        seen.add(id(x))
        if isinstance(x, PolystackError) and not type(x).__module__.startswith("ray"):  # (not Ray's wrapper of one)
            return x
        inner = getattr(x, "cause", None)
        if wrapped is None and isinstance(inner, BaseException):
            wrapped = inner
        todo += [inner, x.__cause__, x.__context__]
    cause = wrapped or e
    said = next((line.strip() for line in str(cause).splitlines() if line.strip()), type(cause).__name__)
    if "Failed to read" in said:
        return InvalidRequest(
            f"the Ray job could not read its input: {said} (--engine local reads it row by row, a malformed row "
            "costing its row alone)"
        )
    return BackendError(f"the Ray job failed: {type(cause).__name__}: {said}")


def _results(ds: Any, job: PreparedJob, skip: int, before: int = 0) -> Iterator[tuple[pa.Table, Scored, int]]:
    """The scored stream, whose first row is input row ``before``, as (batch with keys, Scored, first row): rows
    before ``skip`` are dropped."""
    row = before
    for table in ds.iter_batches(batch_size=job.batch_size, batch_format="pyarrow", prefetch_batches=2):
        n = table.num_rows
        if row + n <= skip:
            row += n
            continue
        if row < skip:
            table = table.slice(skip - row)
            n = table.num_rows
            row = skip
        if not job.keys:
            table = table.set_column(0, ROW_COLUMN, pa.array(np.arange(row, row + n, dtype=np.int64)))
        reasons = table.column(REASON_COLUMN)
        bad_mask = pc.is_valid(reasons)
        bad_rows = np.flatnonzero(np.asarray(bad_mask.to_numpy(zero_copy_only=False)))
        bad = [(int(i), str(reasons[int(i)].as_py())) for i in bad_rows]
        good = (
            table.filter(pc.invert(bad_mask)).drop_columns([REASON_COLUMN])
            if len(bad)
            else table.drop_columns([REASON_COLUMN])
        )
        yield table, Scored(good.cast(job.out_schema), n, bad), row
        row += n
