"""Input sources: Parquet (a file or a dataset folder), CSV, JSONL, NPY and NPZ as streams of Arrow batches.

Every source reads in a fixed order, so "skip the first N rows" names the same rows on every run
(that is what makes a job resumable), and it streams: memory holds a few batches whatever the file
size. Parquet skips whole row groups from the footer; NPY/NPZ seek; CSV and JSONL read and drop.
"""

from __future__ import annotations

import io
import itertools
import zipfile
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import numpy as np
import orjson
import pyarrow as pa

from polystack.errors import InvalidRequest
from polystack.jobs.tensors import REASON_COLUMN

FORMATS = ("parquet", "csv", "jsonl", "npy", "npz")
_SUFFIX = {".parquet": "parquet", ".pq": "parquet", ".csv": "csv", ".jsonl": "jsonl", ".ndjson": "jsonl",
           ".json": "jsonl", ".npy": "npy", ".npz": "npz"}  # fmt: skip


def detect_format(path: Path) -> str:
    if path.is_dir():
        return "parquet"
    fmt = _SUFFIX.get(path.suffix.lower())
    if fmt is None:
        raise InvalidRequest(
            f"cannot tell the format of {path.name}; name it .parquet, .csv, .jsonl, .npy or .npz, "
            "or give a folder of .parquet files"
        )
    return fmt


def input_files(path: Path) -> list[Path]:
    """The files a source reads, in reading order (a folder: its .parquet files, sorted)."""
    if not path.exists():
        raise InvalidRequest(f"input {path} does not exist")
    if path.is_dir():
        files = sorted(
            p
            for p in path.rglob("*.parquet")
            if not any(part.startswith(("_", ".")) for part in p.relative_to(path).parts)
        )
        if not files:
            raise InvalidRequest(f"folder {path} holds no .parquet files")
        return files
    return [path]


def fingerprint(path: Path) -> list[list[Any]]:
    """(name, size, mtime_ns) of each input file: a resumed job refuses an input that changed."""
    out = []
    for f in input_files(path):
        st = f.stat()
        out.append([str(f.relative_to(path)) if path.is_dir() else f.name, st.st_size, st.st_mtime_ns])
    return out


@dataclass
class Source:
    """A readable input: its column schema, a row count (exact or estimated), and its batches."""

    path: Path
    format: str
    schema: pa.Schema
    total_rows: int | None
    exact_total: bool
    # Parquet: each top-level column's uncompressed bytes, from the footers open_source reads for the row count
    column_bytes: Mapping[str, int] = field(default_factory=dict)

    def row_bytes(self, columns: Sequence[str]) -> float:
        """About how many bytes a row of ``columns`` takes read (0: unknown): Parquet's uncompressed sizes, an
        array's item size, a text file's size over its rows."""
        if self.format == "parquet":
            total = sum(self.column_bytes.get(c, 0) for c in columns)
            return total / self.total_rows if self.total_rows else 0.0
        if self.format in ("npy", "npz"):
            return sum(_fixed_bytes(self.schema.field(c).type) for c in columns if c in self.schema.names)
        return self.path.stat().st_size / self.total_rows if self.total_rows else 0.0

    def batches(
        self, batch_size: int, skip_rows: int = 0, columns: Sequence[str] | None = None, text: Sequence[str] = ()
    ) -> Iterator[pa.RecordBatch]:
        """Batches of ``batch_size`` rows after the first ``skip_rows``; CSV reads ``text`` columns as text."""
        cols = list(columns) if columns is not None else None
        it = _READERS[self.format](self, batch_size, skip_rows, cols, tuple(text))
        return _rechunk(it, batch_size)


def open_source(path: Path, fmt: str | None = None, npy_column: str = "x") -> Source:
    """Open ``path`` (format from its suffix unless ``fmt``); NPY data lands in column ``npy_column``."""
    fmt = fmt or detect_format(path)
    if fmt not in FORMATS:
        raise InvalidRequest(f"unknown input format {fmt!r}; use one of {', '.join(FORMATS)}")
    files = input_files(path)
    try:
        if fmt == "parquet":
            import pyarrow.parquet as pq

            schema = pq.read_schema(files[0])
            total = 0
            sizes: dict[str, int] = {}
            for file in files:  # a folder's files are one table: their columns must agree (footers only)
                pf = pq.ParquetFile(file)
                total += pf.metadata.num_rows
                if file is not files[0]:
                    _same_columns(pf.schema_arrow, schema, path, file, files[0])
                for g in range(pf.metadata.num_row_groups):
                    group = pf.metadata.row_group(g)
                    for c in range(group.num_columns):
                        column = group.column(c)
                        top = column.path_in_schema.split(".")[0]
                        sizes[top] = sizes.get(top, 0) + column.total_uncompressed_size
            return Source(path, fmt, schema, total, True, sizes)
        if fmt == "csv":
            schema = _csv_schema(path)
            return Source(path, fmt, schema, max(0, _count_lines(path) - 1), False)
        if fmt == "jsonl":
            first = next(_jsonl_batches(Source(path, fmt, pa.schema([]), None, False), 256, 0, None), None)
            schema = first.schema if first is not None else pa.schema([])
            return Source(path, fmt, schema, _count_lines(path), False)
        if fmt == "npy":
            with open(path, "rb") as f:
                shape, dtype = _npy_header(f, path.name)
            return Source(path, fmt, pa.schema([(npy_column, _npy_type(shape, dtype))]), shape[0], True)
        with zipfile.ZipFile(path) as z:
            fields, rows = [], None
            for member in _npz_members(z):
                with z.open(member) as zf:
                    shape, dtype = _npy_header(zf, f"{path.name}:{member}")
                if rows is not None and shape[0] != rows:
                    raise InvalidRequest(f"arrays in {path.name} have different lengths ({rows} and {shape[0]} rows)")
                rows = shape[0]
                fields.append((member[: -len(".npy")], _npy_type(shape, dtype)))
            return Source(path, fmt, pa.schema(fields), rows or 0, True)
    except (pa.ArrowInvalid, OSError, ValueError, zipfile.BadZipFile) as e:
        said = "".join(c if c.isprintable() else repr(c)[1:-1] for c in str(e))  # the file's bytes, as text
        raise InvalidRequest(f"cannot read {path.name} as {fmt}: {said}") from e


def _same_columns(schema: pa.Schema, first: pa.Schema, folder: Path, file: Path, first_file: Path) -> None:
    """Refuse ``file`` of a Parquet folder whose columns (names and types) are not ``first_file``'s, naming the
    columns that differ: Arrow's own error named neither file nor column, and rows of one type in one file and of
    another in the next would give output parts of different schemas."""
    if [(f.name, f.type) for f in schema] == [(f.name, f.type) for f in first]:
        return
    a, b = first_file.relative_to(folder), file.relative_to(folder)
    was, now = {f.name: f.type for f in first}, {f.name: f.type for f in schema}
    diffs = [f"{n!r} is {was[n]} in {a} and {now[n]} in {b}" for n in was if n in now and now[n] != was[n]]
    diffs += [f"{n!r} is in {a}, not in {b}" for n in was if n not in now]
    diffs += [f"{n!r} is in {b}, not in {a}" for n in now if n not in was]
    said = "; ".join(diffs[:3]) or "its columns are in another order"
    raise InvalidRequest(
        f"the Parquet files of {folder} differ in their columns: {said}; a folder's files must share one schema "
        f"(rewrite {b} or move it out)"
    )


def _rechunk(batches: Iterator[pa.RecordBatch], size: int) -> Iterator[pa.RecordBatch]:
    """Batches of exactly ``size`` rows (the last may be shorter), copying only across seams."""
    pending: list[pa.RecordBatch] = []
    have = 0
    for b in batches:
        if pending and b.schema != pending[0].schema:  # a CSV's misshapen rows, which come last: a batch of their own
            yield pa.Table.from_batches(pending).combine_chunks().to_batches()[0]
            pending, have = [], 0
        while b.num_rows:
            take = min(size - have, b.num_rows)
            pending.append(b.slice(0, take))
            have += take
            b = b.slice(take)
            if have == size:
                yield (
                    pending[0] if len(pending) == 1 else pa.Table.from_batches(pending).combine_chunks().to_batches()[0]
                )
                pending, have = [], 0
    if have:
        yield pending[0] if len(pending) == 1 else pa.Table.from_batches(pending).combine_chunks().to_batches()[0]


def _skip(batches: Iterator[pa.RecordBatch], rows: int) -> Iterator[pa.RecordBatch]:
    for b in batches:
        if rows >= b.num_rows:
            rows -= b.num_rows
            continue
        yield b.slice(rows) if rows else b
        rows = 0


def _count_lines(path: Path) -> int:
    count, last = 0, b"\n"
    with open(path, "rb") as f:
        while chunk := f.read(1 << 22):
            count += chunk.count(b"\n")
            last = chunk[-1:]
    return count + (last != b"\n")


# -- Parquet -----------------------------------------------------------------------------------
def _parquet_batches(
    src: Source, size: int, skip: int, columns: list[str] | None, text: tuple[str, ...] = ()
) -> Iterator[pa.RecordBatch]:
    import pyarrow.parquet as pq

    for f in input_files(src.path):
        # a buffered stream reads pages as needed, not whole column chunks: memory stays bounded
        # even for files written as one huge row group
        pf = pq.ParquetFile(f, buffer_size=8 << 20, pre_buffer=False)
        groups = []
        for g in range(pf.num_row_groups):
            n = pf.metadata.row_group(g).num_rows
            if skip >= n:
                skip -= n
            else:
                groups.append(g)
        if not groups:
            continue
        it = pf.iter_batches(batch_size=size, row_groups=groups, columns=columns)
        yield from _skip(it, skip)
        skip = 0


# -- CSV ---------------------------------------------------------------------------------------
def _csv_schema(path: Path) -> pa.Schema:
    import pyarrow.csv as pcsv

    # the types the streaming reader guesses from its first block, read from that block on this thread alone: a reader
    # on Arrow's threads (a streaming one, or a threaded read) can drop its last reference there after it returned,
    # and where that came as the process ended (a job refused at once, exit 2), releasing the Python objects it held
    # (its row handler, its buffer) aborted the process: "terminate called without an active exception", in 1-4% of
    # such runs on busy cores
    with open(path, "rb") as f:
        head = f.read(_CSV_BLOCK)
        if len(head) == _CSV_BLOCK and b"\n" in head:
            head = head[: head.rindex(b"\n") + 1]  # whole rows
    return pcsv.read_csv(
        pa.BufferReader(head),
        read_options=pcsv.ReadOptions(block_size=_CSV_BLOCK, use_threads=False),
        parse_options=pcsv.ParseOptions(invalid_row_handler=lambda row: "skip"),  # bad rows, later (_csv_batches)
    ).schema


def _csv_batches(
    src: Source, size: int, skip: int, columns: list[str] | None, text: tuple[str, ...] = ()
) -> Iterator[pa.RecordBatch]:
    import pyarrow.csv as pcsv

    # Model-input columns are read as text and converted per column later: a bad cell deep in the
    # file then costs one row, not the job (Arrow's type guess from the first block would abort).
    names = columns if columns is not None else src.schema.names
    convert = pcsv.ConvertOptions(
        include_columns=names, column_types={n: pa.string() for n in text}, strings_can_be_null=True
    )
    # a row of more or fewer fields than the header is a bad row, not the job's end (helper-270): Arrow's reader
    # skips it, and it comes after the file's other rows, sorted (its threads meet them in no fixed order; sorted,
    # they are the same rows in the same order at every run, so a resume skips what the run before wrote), its key
    # null and its text in the reason
    misshapen: list[str] = []

    def misshapen_row(row: Any) -> str:
        text = row.text if len(row.text) <= 200 else f"{row.text[:200]}... ({len(row.text):,} characters)"
        misshapen.append(
            f"a CSV row of {row.actual_columns} fields where the header has {row.expected_columns}: {text!r}"
        )
        return "skip"

    reader = pcsv.open_csv(
        src.path,
        read_options=pcsv.ReadOptions(block_size=_CSV_BLOCK),
        parse_options=pcsv.ParseOptions(invalid_row_handler=misshapen_row),
        convert_options=convert,
    )

    def misshapen_rows() -> Iterator[pa.RecordBatch]:
        if misshapen:
            nulls = [pa.nulls(len(misshapen), f.type) for f in reader.schema]
            yield pa.RecordBatch.from_arrays(
                [*nulls, pa.array(sorted(misshapen), pa.string())], names=[*reader.schema.names, REASON_COLUMN]
            )

    try:
        yield from _skip(itertools.chain(reader, misshapen_rows()), skip)
    except pa.ArrowInvalid as e:  # a key column's cell past the first block, of another type than Arrow read there
        if "conversion error" not in str(e) and "converting" not in str(e):
            raise
        raise InvalidRequest(
            f"a CSV cell does not fit the type its column was read as from the file's first {_CSV_BLOCK >> 20} MiB "
            f"({e}); key columns (--key) keep that type, so give them values of one type throughout (model inputs "
            "are read cell by cell, a bad one costing its row alone)"
        ) from None
    finally:
        reader.close()  # its read-ahead ends with it, whatever ended the job


# the block a CSV's column types are guessed from and read in (one size: helper-270 found keys of another type
# between the 1 MiB guessed from and the 4 MiB read first)
_CSV_BLOCK = 1 << 22


# -- JSONL -------------------------------------------------------------------------------------
def parse_jsonl(lines: Sequence[bytes | str], columns: Sequence[str] | None = None) -> pa.RecordBatch:
    """JSON objects, one a line, as a record batch; a line that is not an object gets a reason.

    A column whose values have mixed kinds (numbers and text, lists and scalars) keeps the
    majority kind; the other rows become nulls with a reason, so one odd line costs one row.
    """
    rows: list[dict[str, Any]] = []
    reasons: list[str | None] = []
    for line in lines:
        why: str | None
        try:
            obj = orjson.loads(line)
        except orjson.JSONDecodeError as e:
            obj, why = {}, f"not valid JSON: {e}"
        else:
            why = None if isinstance(obj, dict) else "not a JSON object"
            obj = obj if isinstance(obj, dict) else {}
        rows.append(obj)
        reasons.append(why)
    names = list(columns) if columns is not None else list(dict.fromkeys(k for r in rows for k in r))
    arrays, fields = [], []
    for name in names:
        values = [r.get(name) for r in rows]
        try:
            arr = pa.array(values)
        except (pa.ArrowInvalid, pa.ArrowTypeError, TypeError, ValueError, OverflowError):
            kinds = [_kind(v) for v in values]
            counts: dict[str, int] = {}
            for k in kinds:
                if k != "null":
                    counts[k] = counts.get(k, 0) + 1
            keep = max(counts, key=lambda k: counts[k]) if counts else "null"
            for i, k in enumerate(kinds):
                if k not in ("null", keep):
                    values[i] = None
                    if reasons[i] is None:
                        reasons[i] = f"column {name!r}: a {k} where the other rows hold a {keep}"
            try:
                arr = pa.array(values)
            except (pa.ArrowInvalid, pa.ArrowTypeError, TypeError, ValueError, OverflowError):
                arr = _per_value(name, values, reasons)
        arrays.append(arr)
        fields.append(name)
    if any(r is not None for r in reasons):
        arrays.append(pa.array(reasons, pa.string()))
        fields.append(REASON_COLUMN)
    if not fields:
        return pa.RecordBatch.from_pydict({REASON_COLUMN: pa.array(reasons, pa.string())})
    return pa.RecordBatch.from_arrays(arrays, names=fields)


def _per_value(name: str, values: list[Any], reasons: list[str | None]) -> pa.Array:
    """Slow path for a column that still will not convert: the type of the first value that
    converts alone wins; values that do not fit it become nulls with a reason."""
    target: pa.DataType | None = None
    for v in values:
        if v is None:
            continue
        try:
            target = pa.array([v]).type
            break
        except (pa.ArrowInvalid, pa.ArrowTypeError, TypeError, ValueError, OverflowError):
            continue
    if target is None or pa.types.is_null(target):
        return pa.nulls(len(values))
    for i, v in enumerate(values):
        if v is None:
            continue
        try:
            pa.array([v], type=target)
        except (pa.ArrowInvalid, pa.ArrowTypeError, TypeError, ValueError, OverflowError):
            values[i] = None
            if reasons[i] is None:
                odd = _odd_element(v)
                shown = f"list element {odd!r}" if odd is not None else f"value {str(v)[:40]}"
                reasons[i] = f"column {name!r}: {shown} does not fit {target}"
    return pa.array(values, type=target)


def _odd_element(v: Any) -> Any:
    """The first element of a (nested) list that is not a number, or None."""
    if not isinstance(v, list):
        return None
    for e in v:
        if isinstance(e, list):
            odd = _odd_element(e)
            if odd is not None:
                return odd
        elif e is not None and (isinstance(e, bool) or not isinstance(e, (int, float))):
            return e
    return None


def _kind(v: Any) -> str:
    if v is None:
        return "null"
    if isinstance(v, bool):
        return "boolean"
    if isinstance(v, (int, float)):
        return "number"
    if isinstance(v, list):
        return "list"
    return type(v).__name__.replace("str", "text").replace("dict", "object")


def _jsonl_batches(
    src: Source, size: int, skip: int, columns: list[str] | None, text: tuple[str, ...] = ()
) -> Iterator[pa.RecordBatch]:
    with open(src.path, "rb") as f:
        chunk: list[bytes] = []
        for line in f:
            if not line.strip():
                continue  # blank lines are not rows (Ray Data's read_text drops them too)
            if skip:
                skip -= 1
                continue
            chunk.append(line)
            if len(chunk) == size:
                yield _conform(parse_jsonl(chunk, columns), src.schema, columns)
                chunk = []
        if chunk:
            yield _conform(parse_jsonl(chunk, columns), src.schema, columns)


def _conform(batch: pa.RecordBatch, schema: pa.Schema, columns: list[str] | None) -> pa.RecordBatch:
    """Give later JSONL batches the first batch's key types, so every part has one schema."""
    if columns is None:
        return batch
    arrays, names = [], []
    for name in columns:
        col = batch.column(name) if name in batch.schema.names else pa.nulls(batch.num_rows)
        if name in schema.names and pa.types.is_null(col.type):
            col = pa.nulls(batch.num_rows, schema.field(name).type)
        arrays.append(col)
        names.append(name)
    if REASON_COLUMN in batch.schema.names:
        arrays.append(batch.column(REASON_COLUMN))
        names.append(REASON_COLUMN)
    return pa.RecordBatch.from_arrays(arrays, names=names)


# -- NPY / NPZ ---------------------------------------------------------------------------------
def _npy_header(f: IO[bytes], name: str) -> tuple[tuple[int, ...], np.dtype[Any]]:
    version = np.lib.format.read_magic(f)
    if version == (1, 0):
        shape, fortran, dtype = np.lib.format.read_array_header_1_0(f)
    elif version == (2, 0):
        shape, fortran, dtype = np.lib.format.read_array_header_2_0(f)
    else:
        raise InvalidRequest(f"{name} uses .npy format version {version}; save it with numpy's default np.save")
    if fortran and len(shape) > 1:
        raise InvalidRequest(f"{name} is stored in Fortran order; save it with np.save(np.ascontiguousarray(a))")
    if dtype.hasobject:
        raise InvalidRequest(f"{name} holds Python objects, which polystack never unpickles")
    if not shape:
        raise InvalidRequest(f"{name} holds a scalar; a batch input needs one row per element of dimension 0")
    return tuple(shape), dtype


def _fixed_bytes(t: pa.DataType) -> float:
    """The bytes a value of an array's type takes (nested fixed-size lists of a fixed-width type; 0 otherwise)."""
    if pa.types.is_fixed_size_list(t):
        return t.list_size * _fixed_bytes(t.value_type)
    try:
        return t.bit_width / 8
    except ValueError:  # no fixed width (text)
        return 0.0


def _npy_type(shape: tuple[int, ...], dtype: np.dtype[Any]) -> pa.DataType:
    t = pa.from_numpy_dtype(dtype.newbyteorder("=")) if dtype.kind != "U" else pa.string()
    for d in reversed(shape[1:]):
        t = pa.list_(t, d)
    return t


def _npy_array(chunk: np.ndarray) -> pa.Array:
    flat = pa.array(chunk.reshape(-1))
    out: pa.Array = flat
    for d in reversed(chunk.shape[1:]):
        out = pa.FixedSizeListArray.from_arrays(out, d)
    return out


def _npy_stream(f: IO[bytes], name: str, size: int, skip: int) -> Iterator[np.ndarray]:
    shape, dtype = _npy_header(f, name)
    row_bytes = dtype.itemsize * int(np.prod(shape[1:], dtype=np.int64))
    if skip:
        f.seek(skip * row_bytes, io.SEEK_CUR)
    left = shape[0] - skip
    while left > 0:
        n = min(size, left)
        buf = f.read(n * row_bytes)
        if len(buf) != n * row_bytes:
            raise InvalidRequest(f"{name} is truncated: expected {shape[0]} rows")
        yield np.frombuffer(buf, dtype=dtype).reshape((n, *shape[1:])).astype(dtype.newbyteorder("="), copy=False)
        left -= n


def _npz_members(z: zipfile.ZipFile) -> list[str]:
    return [m for m in z.namelist() if m.endswith(".npy")]


def _npy_batches(
    src: Source, size: int, skip: int, columns: list[str] | None, text: tuple[str, ...] = ()
) -> Iterator[pa.RecordBatch]:
    name = src.schema.names[0]
    with open(src.path, "rb") as f:
        for chunk in _npy_stream(f, src.path.name, size, skip):
            yield pa.RecordBatch.from_arrays([_npy_array(chunk)], names=[name])


def _npz_batches(
    src: Source, size: int, skip: int, columns: list[str] | None, text: tuple[str, ...] = ()
) -> Iterator[pa.RecordBatch]:
    wanted = columns if columns is not None else src.schema.names
    with zipfile.ZipFile(src.path) as z:
        members = [m for m in _npz_members(z) if m[: -len(".npy")] in wanted]
        files = [z.open(m) for m in members]
        try:
            streams = [_npy_stream(f, f"{src.path.name}:{m}", size, skip) for f, m in zip(files, members, strict=True)]
            names = [m[: -len(".npy")] for m in members]
            for chunks in zip(*streams, strict=True):
                yield pa.RecordBatch.from_arrays([_npy_array(c) for c in chunks], names=names)
        finally:
            for f in files:
                f.close()


_READERS = {
    "parquet": _parquet_batches,
    "csv": _csv_batches,
    "jsonl": _jsonl_batches,
    "npy": _npy_batches,
    "npz": _npz_batches,
}
