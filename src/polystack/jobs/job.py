"""A batch job, engine-independent: what to read, which columns feed which input, what to write.

``prepare`` resolves the model, the LoadSpec (``spec.batch_spec``), the input source, the column
bindings and the output schema once, and fails early with one clear line when they do not fit.
``score_batch`` is the per-batch work both engines share: Arrow in, Arrow out plus bad rows.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pyarrow as pa

from polystack.engine import LoadedEntry, LoadSpec, infer_entry
from polystack.errors import InvalidRequest, quote
from polystack.jobs.io import Source, detect_format, fingerprint, open_source
from polystack.jobs.spec import batch_spec
from polystack.jobs.tensors import REASON_COLUMN, Binding, output_type, to_arrow, to_tensors
from polystack.store import ModelRecord, ModelRef, Store
from polystack.types import Signature, TensorSpec

ROW_COLUMN = "_row"  # the input row index, written when no --key names the rows
DEFAULT_BATCH_SIZE = 1024
RAY_FORMATS = ("parquet", "csv", "jsonl", "npy")  # what Ray Data reads (an NPZ's several arrays it does not)
# the most input a batch the job chooses holds: a few are in memory at once, each with its tensors and outputs
# (helper-270: 1 MiB rows in batches of 1,024 peaked at 5.9 GB); --batch-size, when given, is taken as it is
BATCH_BYTES = 64 << 20
DEFAULT_PART_ROWS = 100_000


@dataclass
class BatchOptions:
    """What the user asked for (the CLI's options, typed)."""

    model: str
    input: Path
    output: Path
    columns: Sequence[str] = ()
    keys: Sequence[str] = ()
    batch_size: int | None = None
    part_rows: int = DEFAULT_PART_ROWS
    engine: str = "local"
    ray_address: str | None = None
    ray_actors: int | None = None
    restart: bool = False
    max_errors: int | None = None
    backend: str | None = None
    device: str = "cpu"
    input_format: str | None = None


@dataclass
class PreparedJob:
    options: BatchOptions
    record: ModelRecord
    spec: LoadSpec
    spec_source: str  # "batch plan" or "default"
    source: Source
    bindings: list[Binding]
    keys: list[str]
    out_specs: list[TensorSpec]
    out_schema: pa.Schema
    batch_size: int
    identity: dict[str, Any] = field(default_factory=dict)
    bounded: bool = False  # batches made smaller than planned, to hold BATCH_BYTES of input at most

    @property
    def ran(self) -> str:
        """What the job runs, as its summary says it."""
        spec = self.spec
        size = f"batches of {self.batch_size}"
        if self.bounded:
            size += f" ({BATCH_BYTES >> 20} MiB of input at most; --batch-size sets it)"
        return f"{self.record.name}:{self.record.version} on {spec.backend}/{spec.device}, {size}; {self.spec_source}"

    @property
    def runtime(self) -> dict[str, Any]:
        """What scores the rows, as the output's manifest keeps it: a resume by another is refused."""
        return {"backend": self.spec.backend, "device": self.spec.device, "variant": self.spec.variant_id}

    @property
    def read_columns(self) -> list[str]:
        cols = list(self.keys)
        for b in self.bindings:
            cols += [c for c in b.columns if c not in cols]
        return cols

    @property
    def text_columns(self) -> list[str]:
        return [c for b in self.bindings for c in b.columns if c not in self.keys]


@dataclass
class Summary:
    output: Path
    errors_file: Path
    status: str  # done | stopped | already done
    rows_total: int  # input rows covered, all runs
    rows_out: int
    errors: int
    rows_this_run: int
    seconds: float  # this run
    resumed_from: int
    parts: int
    engine: str
    model: str = ""  # what ran: the version, its runtime and device, the plan or why the default, the batch size

    @property
    def rows_per_s(self) -> float:
        return self.rows_this_run / self.seconds if self.seconds > 0 else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "status": self.status,
            "output": str(self.output),
            "errors_file": str(self.errors_file),
            "rows_total": self.rows_total,
            "rows_out": self.rows_out,
            "errors": self.errors,
            "rows_this_run": self.rows_this_run,
            "seconds": round(self.seconds, 3),
            "rows_per_s": round(self.rows_per_s, 1),
            "resumed_from": self.resumed_from,
            "parts": self.parts,
            "engine": self.engine,
            "model": self.model,
        }


def _parse_columns(items: Sequence[str], signature: Signature) -> dict[str, list[str]]:
    """``--columns a,b`` (the one input) or ``--columns x=a,b --columns mask=m`` (per input)."""
    explicit: dict[str, list[str]] = {}
    plain: list[str] = []
    for item in items:
        name, eq, cols = item.partition("=")
        named = [c.strip() for c in (cols if eq else item).split(",") if c.strip()]
        if not named:  # "x=", "" or ",": an input bound to no column (which failed later with an IndexError)
            raise InvalidRequest(
                f"--columns {item!r} names no column; write --columns COL[,COL...] or INPUT=COL[,COL...]"
            )
        if eq:
            if name not in signature.input_names:
                raise InvalidRequest(
                    f"--columns {item!r} names input {name!r}; the model's inputs are {', '.join(signature.input_names)}"
                )
            explicit[name] = named
        else:
            plain += named
    if plain:
        if len(signature.inputs) != 1:
            raise InvalidRequest(
                f"the model takes {len(signature.inputs)} inputs; write --columns INPUT=COL[,COL...] for each "
                f"of {', '.join(signature.input_names)}"
            )
        explicit[signature.inputs[0].name] = plain
    return explicit


def bind_columns(signature: Signature, schema: pa.Schema, columns: Sequence[str], keys: Sequence[str]) -> list[Binding]:
    """Which input column(s) feed each model input; an error names what is missing and what exists."""
    explicit = _parse_columns(columns, signature)
    available = [n for n in schema.names if n != REASON_COLUMN]
    bindings = []
    for spec in signature.inputs:
        cols = explicit.get(spec.name)
        if cols is None:
            if spec.name in available:
                cols = [spec.name]
            else:
                rest = [n for n in available if n not in keys]
                scalar = all(not pa.types.is_nested(schema.field(n).type) for n in rest)
                dims = spec.shape[1:]
                if len(signature.inputs) == 1 and len(dims) == 1 and scalar and dims[0] in (-1, len(rest)) and rest:
                    cols = rest  # e.g. a CSV of feature columns: stack them in file order
                else:
                    has = f"columns {', '.join(available)}" if available else "no columns (is it empty?)"
                    raise InvalidRequest(
                        f"no column feeds input {spec.describe()}; the input has {has}; "
                        f"pass --columns {spec.name}=COL[,COL...]"
                    )
        missing = [c for c in cols if c not in available]
        if missing:
            raise InvalidRequest(
                f"column {', '.join(map(repr, missing))} is not in the input; it has {', '.join(available)}"
            )
        if len(cols) > 1 and len(spec.shape) != 2:
            raise InvalidRequest(
                f"{len(cols)} columns can only be stacked into a [batch, {len(cols)}] input; {spec.describe()} is not one"
            )
        _same_width(spec, cols, schema)
        bindings.append(Binding(spec, tuple(cols)))
    return bindings


def _same_width(spec: TensorSpec, cols: Sequence[str], schema: pa.Schema) -> None:
    """Refuse columns whose width the schema already shows is not the input's (helper-270: ``--columns f0,f1`` for
    16 features wrote an error line for every row): stacked scalar columns, or a list column of fixed size."""
    if len(spec.shape) < 2 or spec.shape[1] == -1:
        return
    width = spec.shape[1]
    if len(cols) > 1 and len(cols) != width:
        named = ", ".join(cols[:4]) + (", ..." if len(cols) > 4 else "")
        raise InvalidRequest(
            f"input {spec.describe()} takes {width} values a row, and {len(cols)} columns were given ({named}); "
            f"give {width} with --columns {spec.name}=COL,..."
        )
    t = schema.field(cols[0]).type if len(cols) == 1 else None
    if t is not None and pa.types.is_fixed_size_list(t) and t.list_size != width:
        raise InvalidRequest(
            f"input {spec.describe()} takes {width} values a row, and column {cols[0]!r} holds lists of {t.list_size}; "
            f"give a column of {width}-value lists"
        )


def output_schema(source_schema: pa.Schema, keys: Sequence[str], out_specs: Sequence[TensorSpec]) -> pa.Schema:
    fields = [source_schema.field(k) for k in keys] if keys else [pa.field(ROW_COLUMN, pa.int64())]
    taken = {f.name for f in fields}
    for spec in out_specs:
        if spec.name in taken:
            raise InvalidRequest(f"output {spec.name!r} has the same name as key column {spec.name!r}; rename the key")
        fields.append(pa.field(spec.name, output_type(spec)))
    return pa.schema(fields)


def prepare(store: Store, options: BatchOptions) -> PreparedJob:
    record = store.get(ModelRef.parse(options.model))
    spec, spec_source, plan_batch = batch_spec(store, record, options.backend, options.device)
    fmt = options.input_format or detect_format(options.input)
    if options.engine == "ray" and fmt not in RAY_FORMATS:  # before Ray starts, and before the output is made
        raise InvalidRequest(f"--engine ray reads Parquet, CSV, JSONL and NPY, not {fmt}; use --engine local")
    npy_column = (
        options.columns[0] if options.columns and "=" not in options.columns[0] else record.signature.inputs[0].name
    )
    if fmt == "npy" and len(record.signature.inputs) != 1:
        raise InvalidRequest(
            f"a .npy file holds one tensor but the model takes {len(record.signature.inputs)} inputs; use .npz or Parquet"
        )
    source = open_source(options.input, fmt, npy_column=npy_column)
    _apart(options.input, options.output)
    keys = list(options.keys)
    twice = sorted({k for k in keys if keys.count(k) > 1})
    if twice:  # (helper-270: a traceback, "Field "id" exists 2 times in schema")
        raise InvalidRequest(f"--key {twice[0]!r} is given twice; give each key column once")
    for k in keys:
        if k not in source.schema.names:
            raise InvalidRequest(f"--key {k!r} is not a column of the input; it has {', '.join(source.schema.names)}")
    columns = options.columns if fmt != "npy" else ()
    bindings = bind_columns(record.signature, source.schema, columns, keys)
    out_specs = list(record.signature.outputs)
    batch_size = options.batch_size or plan_batch or DEFAULT_BATCH_SIZE
    if spec.max_batch_size:
        batch_size = min(batch_size, spec.max_batch_size)
    bounded = False
    if not options.batch_size:  # memory is bounded by bytes, not rows: a batch of large rows is made smaller
        row = source.row_bytes([c for b in bindings for c in b.columns])
        if row and batch_size * row > BATCH_BYTES:
            batch_size, bounded = max(1, int(BATCH_BYTES // row)), True
    if batch_size < 1 or options.part_rows < 1:
        raise InvalidRequest("--batch-size and --part-rows must be at least 1")
    identity = {
        "model": record.name,
        "version": record.version,
        "digest": record.digest,
        "input": str(options.input.resolve()),
        "input_format": fmt,
        "input_files": fingerprint(options.input),
        "bindings": {b.spec.name: list(b.columns) for b in bindings},
        "keys": keys,
    }
    return PreparedJob(
        options=options,
        record=record,
        spec=spec,
        spec_source=spec_source,
        source=source,
        bindings=bindings,
        keys=keys,
        out_specs=out_specs,
        out_schema=output_schema(source.schema, keys, out_specs),
        batch_size=batch_size,
        identity=identity,
        bounded=bounded,
    )


def _apart(source: Path, output: Path) -> None:
    """Refuse an output folder whose parts a folder input would read back: one inside it that its reading skips
    not (helper-270: the second run read the first's parts as input rows)."""
    if not source.is_dir():
        return
    inside = output.resolve()
    try:
        parts = inside.relative_to(source.resolve()).parts
    except ValueError:
        return
    if not parts or not any(part.startswith(("_", ".")) for part in parts):
        raise InvalidRequest(
            f"--output {output} is inside the input folder {source}, whose .parquet files are all read as input "
            "(the job's own parts among them at its next run); choose a folder outside it, or one whose name starts "
            "with '_', which the input's reading skips"
        )


@dataclass
class Scored:
    table: pa.Table  # the rows that scored, in input order, in the output schema
    rows_in: int
    bad: list[tuple[int, str]]  # (row in batch, reason)


def _run_group(
    entry: LoadedEntry, rows: np.ndarray, tensors: dict[str, np.ndarray], bad: list[tuple[int, str]]
) -> tuple[np.ndarray, dict[str, np.ndarray]] | None:
    """Infer one group; when the engine refuses it, retry row by row to find the rows at fault."""
    try:
        return rows, infer_entry(entry, tensors)
    except InvalidRequest:
        if len(rows) == 1:
            raise
    kept, outs = [], []
    for i, row in enumerate(rows):
        try:
            outs.append(infer_entry(entry, {k: v[i : i + 1] for k, v in tensors.items()}))
            kept.append(row)
        except InvalidRequest as e:
            bad.append((int(row), e.message))
    if not kept:
        return None
    return np.asarray(kept), {k: np.concatenate([o[k] for o in outs]) for k in outs[0]}


def score_batch(
    entry: LoadedEntry,
    batch: pa.RecordBatch | pa.Table,
    bindings: Sequence[Binding],
    keys: Sequence[str],
    out_specs: Sequence[TensorSpec],
    schema: pa.Schema,
    first_row: int | None,
) -> Scored:
    """Score one batch through the engine; ``first_row`` numbers the rows when there is no key."""
    conv = to_tensors(batch, bindings)
    unfit = unfit_keys(batch, keys, schema)
    for row, why in unfit.items():
        conv.bad.setdefault(row, why)
    bad = sorted(conv.bad.items())
    done: list[tuple[np.ndarray, dict[str, np.ndarray]]] = []
    for rows, tensors in _without(conv.groups, unfit):
        try:
            got = _run_group(entry, rows, tensors, bad)
        except InvalidRequest as e:
            bad.append((int(rows[0]), e.message))
            continue
        if got is not None:
            done.append(got)
    if not done:
        return Scored(schema.empty_table(), batch.num_rows, sorted(bad))
    rows = np.concatenate([r for r, _ in done])
    out_arrays = [to_arrow(o, out_specs) for _, o in done]
    columns = [pa.concat_arrays([a[i] for a in out_arrays]) for i in range(len(out_specs))]
    if len(done) > 1 or (len(rows) > 1 and bool((np.diff(rows) < 0).any())):
        order = np.argsort(rows, kind="stable")
        rows = rows[order]
        columns = [c.take(pa.array(order)) for c in columns]
    if keys:
        key_arrays = [_take(batch.column(k), rows, batch.num_rows) for k in keys]
    else:
        key_arrays = [pa.array(rows + (first_row or 0), pa.int64())]
    arrays = [a.cast(f.type) if a.type != f.type else a for a, f in zip([*key_arrays, *columns], schema, strict=True)]
    return Scored(pa.Table.from_arrays(arrays, schema=schema), batch.num_rows, sorted(bad))


def unfit_keys(batch: pa.RecordBatch | pa.Table, keys: Sequence[str], schema: pa.Schema) -> dict[int, str]:
    """The rows whose key does not fit its output column's type (the type the input's first rows gave it), each with
    why: a bad row each, where one such key stopped the job (helper-270: an id of 1.5 among whole numbers)."""
    out: dict[int, str] = {}
    for k in keys:
        col = batch.column(k)
        col = col.combine_chunks() if isinstance(col, pa.ChunkedArray) else col
        want = schema.field(k).type
        if col.type == want:
            continue
        values = col.to_pylist()
        for i in misfits(col, want):
            out.setdefault(i, f"key {k!r}: {quote(values[i])} is not {want}, the type of the column's first rows")
    return out


def misfits(col: pa.Array, want: pa.DataType) -> list[int]:
    """The positions of ``col``'s values that do not cast to ``want`` (none where the column casts whole)."""
    try:
        col.cast(want)
        return []
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        pass
    out = []
    for i, v in enumerate(col.to_pylist()):  # which, one by one (rare: the column's cast failed)
        try:
            pa.array([v], col.type).cast(want)
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
            out.append(i)
    return out


def _without(
    groups: Sequence[tuple[np.ndarray, dict[str, np.ndarray]]], rows_out: Mapping[int, str]
) -> list[tuple[np.ndarray, dict[str, np.ndarray]]]:
    """``groups`` (rows, and their tensors a row an item) less the rows ``rows_out`` names."""
    if not rows_out:
        return list(groups)
    out = []
    for rows, tensors in groups:
        keep = ~np.isin(rows, np.fromiter(rows_out, dtype=np.int64))
        if keep.any():
            out.append((rows[keep], {name: t[keep] for name, t in tensors.items()}))
    return out


def _take(col: Any, rows: np.ndarray, n: int) -> pa.Array:
    col = col.combine_chunks() if isinstance(col, pa.ChunkedArray) else col
    return col if len(rows) == n else col.take(pa.array(rows))


def error_lines(
    batch: pa.RecordBatch | pa.Table, bad: Sequence[tuple[int, str]], keys: Sequence[str], first_row: int | None
) -> list[bytes]:
    """One JSON line per bad row: its key (or input row number) and the reason."""
    lines = []
    key_cols = [batch.column(k) for k in keys]
    for row, reason in bad:
        rec: dict[str, Any] = {}
        if first_row is not None:
            rec["row"] = first_row + row
        if keys:
            rec["key"] = {k: c[row].as_py() for k, c in zip(keys, key_cols, strict=True)}
        rec["reason"] = reason
        lines.append(orjson.dumps(rec, default=str) + b"\n")
    return lines


def now() -> float:
    return time.perf_counter()
