"""Arrow columns <-> model tensors, one record batch at a time, with the bad rows picked out.

``to_tensors`` turns the columns bound to each model input into numpy arrays for the rows that fit
the input's spec, and says, per row, why the others do not (a null, a ragged or wrong-sized list, a
value that is not a number). Fixed-size lists (what polystack and numpy write), variable lists
(JSONL, pandas) and scalar columns are read without a Python loop per row; Python only runs for
the rows of a column that fail to convert.

``to_arrow`` turns model outputs into Arrow arrays: a scalar per row for ``[batch]`` outputs,
(nested) fixed-size lists for fixed dimensions, lists where the signature has a dynamic one.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from polystack.errors import InvalidRequest
from polystack.types import DType, TensorSpec

# A reader may add this column (string, null for good rows) to say a row is bad before any
# conversion, e.g. a JSONL line that is not JSON. It never reaches the output.
REASON_COLUMN = "__polystack_reason"


@dataclass(frozen=True)
class Binding:
    """One model input and the input column(s) that feed it (several scalar columns are stacked)."""

    spec: TensorSpec
    columns: tuple[str, ...]


@dataclass
class Converted:
    """One record batch as tensors: ``groups`` of rows sharing a shape, and the bad rows."""

    groups: list[tuple[np.ndarray, dict[str, np.ndarray]]] = field(default_factory=list)  # (row indices, tensors)
    bad: dict[int, str] = field(default_factory=dict)  # row in batch -> reason


def _is_list(t: pa.DataType) -> bool:
    return pa.types.is_list(t) or pa.types.is_large_list(t) or pa.types.is_fixed_size_list(t)


def _is_tensor_ext(t: pa.DataType) -> bool:
    # Ray Data's fixed-shape tensor columns (read_numpy) are extension types with a .shape
    return isinstance(t, pa.ExtensionType) and isinstance(getattr(t, "shape", None), tuple)


def _arrow_type(dtype: DType) -> pa.DataType:
    if dtype is DType.BYTES:
        return pa.binary()
    if dtype is DType.BF16:
        return pa.float32()  # Arrow has no bfloat16; values are widened exactly
    return pa.from_numpy_dtype(dtype.numpy)


def output_type(spec: TensorSpec) -> pa.DataType:
    """The Arrow type of an output column: nested (fixed-size) lists around the element type."""
    t = _arrow_type(spec.dtype)
    for dim in reversed(spec.shape[1:] if spec.batched else spec.shape):
        t = pa.list_(t) if dim == -1 else pa.list_(t, dim)
    return t


def _leaf_to_numpy(leaf: pa.Array, spec: TensorSpec, owner: np.ndarray, bad: dict[int, str]) -> np.ndarray:
    """Leaf values as spec.dtype; elements that cannot be converted mark their row bad (value 0)."""
    want = spec.dtype
    if isinstance(leaf, pa.ChunkedArray):
        leaf = leaf.combine_chunks()
    if pa.types.is_dictionary(leaf.type):  # pandas' category, Spark's: read as the values they encode (helper-270: a
        leaf = leaf.dictionary_decode()  # null among them stopped the job, its filler of the wrong type)
    if leaf.null_count:
        for row in np.unique(owner[np.asarray(leaf.is_null().to_numpy(zero_copy_only=False))]):
            bad.setdefault(int(row), f"input {spec.name!r}: null value")
        leaf = leaf.fill_null(_zero(leaf.type))
    t = leaf.type
    if want is DType.BYTES:
        if pa.types.is_string(t) or pa.types.is_large_string(t):
            leaf = leaf.cast(pa.binary())
            t = leaf.type
        if pa.types.is_binary(t) or pa.types.is_large_binary(t):
            return np.asarray(leaf.to_numpy(zero_copy_only=False), dtype=object)
        return _slow_convert(leaf, spec, owner, bad)
    numeric = pa.types.is_integer(t) or pa.types.is_floating(t) or pa.types.is_boolean(t)
    if numeric:
        return _narrowed(leaf.to_numpy(zero_copy_only=False), spec, owner, bad)
    if pa.types.is_string(t) or pa.types.is_large_string(t):
        # vectorised parse, to a wide type whose values are then checked as numbers' are; only a column holding bad
        # text falls back to Python
        wide = _arrow_type(want)
        if want.numpy.kind in "iuf":
            wide = pa.float64() if want.numpy.kind == "f" else pa.uint64() if want.numpy.kind == "u" else pa.int64()
        try:
            parsed = np.asarray(pc.cast(leaf, wide).to_numpy(zero_copy_only=False))
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
            return _slow_convert(leaf, spec, owner, bad)
        return _narrowed(parsed, spec, owner, bad)
    return _slow_convert(leaf, spec, owner, bad)


def _narrowed(arr: np.ndarray, spec: TensorSpec, owner: np.ndarray, bad: dict[int, str]) -> np.ndarray:
    """Numbers as ``spec``'s datatype; one that does not fit it (not whole, past an integer's range, past a float's
    largest finite value) marks its row bad (value 0), where a cast would have wrapped it or made it infinite
    (helper-270: 1e300 for FP32 was scored as inf)."""
    target = spec.dtype.numpy
    if arr.dtype == target:
        return arr
    if target.kind in "iu" and arr.dtype.kind in "iuf":
        unfit = np.zeros(len(arr), dtype=bool)
        if arr.dtype.kind == "f":
            unfit = ~np.isfinite(arr) | (arr != np.round(arr))
            for i in np.flatnonzero(unfit):
                bad.setdefault(int(owner[i]), f"input {spec.name!r}: value {arr[i].item()!r} is not a whole number")
        info = np.iinfo(target)
        with np.errstate(invalid="ignore"):
            wide = ~unfit & ((arr < info.min) | (arr > info.max))
        for i in np.flatnonzero(wide):
            bad.setdefault(
                int(owner[i]),
                f"input {spec.name!r}: value {arr[i].item()!r} does not fit {spec.dtype.value} "
                f"({info.min}..{info.max})",
            )
        unfit |= wide
        return np.where(unfit, 0, arr).astype(target) if unfit.any() else arr.astype(target)
    if target.kind == "f" and arr.dtype.kind == "f" and arr.dtype.itemsize > target.itemsize:
        with np.errstate(over="ignore"):
            out = arr.astype(target)
        over = np.isfinite(arr) & ~np.isfinite(out)
        for i in np.flatnonzero(over):
            bad.setdefault(
                int(owner[i]),
                f"input {spec.name!r}: value {arr[i].item()!r} does not fit {spec.dtype.value} (largest magnitude "
                f"{float(np.finfo(target).max):g})",
            )
        out[over] = 0
        return out
    return arr.astype(target)


def _zero(t: pa.DataType) -> Any:
    if pa.types.is_string(t) or pa.types.is_large_string(t):
        return "0"
    if pa.types.is_binary(t) or pa.types.is_large_binary(t):
        return b""
    if pa.types.is_boolean(t):
        return False
    return 0


def _slow_convert(leaf: pa.Array, spec: TensorSpec, owner: np.ndarray, bad: dict[int, str]) -> np.ndarray:
    out = np.zeros(len(leaf), dtype=spec.dtype.numpy)
    for i, v in enumerate(leaf.to_pylist()):
        try:
            if spec.dtype is DType.BYTES:
                out[i] = v.encode() if isinstance(v, str) else bytes(v)
            else:
                with np.errstate(over="raise"):  # a finite value past the type's largest is refused, not infinity
                    out[i] = np.asarray(_parsed(v, spec.dtype) if isinstance(v, (str, bytes)) else v, spec.dtype.numpy)
        except (TypeError, ValueError, OverflowError, KeyError, FloatingPointError):
            shown = repr(v)[:40]
            bad.setdefault(int(owner[i]), f"input {spec.name!r}: value {shown} is not {spec.dtype.value}")
    return out


_BOOLS = {"true": True, "false": False, "1": True, "0": False}  # as Arrow's cast of text to bool reads them


def _parsed(text: str | bytes, dtype: DType) -> float | int | bool:
    """A number or truth value a cell's text spells, as the column's fast cast reads them when every cell does
    (helper-270: one bad cell sent a column here, where 'true' and '5.0' were refused for BOOL and INT64)."""
    word = text.decode() if isinstance(text, bytes) else text
    if dtype is DType.BOOL:
        return _BOOLS[word.strip().lower()]
    if dtype.numpy.kind == "f":
        return float(word)
    try:
        return int(word)
    except ValueError:
        whole = float(word)  # "5.0": a whole number, as a JSON number 5.0 is read; "5.5" is refused
        if not whole.is_integer():
            raise
        return int(whole)


def _column(batch: pa.RecordBatch | pa.Table, name: str) -> pa.Array:
    col = batch.column(name)
    return col.combine_chunks() if isinstance(col, pa.ChunkedArray) else col


def _bind_one(
    batch: pa.RecordBatch | pa.Table, b: Binding, bad: dict[int, str]
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(flat leaf values, the row of each value, per-row shapes [n, depth]) for one binding; marks bad rows."""
    spec = b.spec
    dims = spec.shape[1:]
    n = batch.num_rows
    rows = np.arange(n)
    if len(b.columns) > 1:  # scalar columns stacked into [n, k]
        parts = [_leaf_to_numpy(_column(batch, c), spec, rows, bad) for c in b.columns]
        k = len(b.columns)
        return np.stack(parts, axis=1).reshape(-1), np.repeat(rows, k), np.full((n, 1), k, dtype=np.int64)
    arr = _column(batch, b.columns[0])
    if pa.types.is_null(arr.type):  # every value null (e.g. a JSONL batch without the field)
        for row in rows:
            bad.setdefault(int(row), f"input {spec.name!r}: null value")
        return (
            np.zeros(0, dtype=spec.dtype.numpy),
            np.zeros(0, dtype=np.int64),
            np.zeros((n, len(dims)), dtype=np.int64),
        )
    if _is_tensor_ext(arr.type):
        nd = np.asarray(arr.to_numpy())
        owner = np.repeat(rows, int(np.prod(nd.shape[1:], dtype=np.int64)))
        shapes = np.tile(np.asarray(nd.shape[1:], dtype=np.int64), (n, 1))
        return _leaf_to_numpy(pa.array(nd.reshape(-1)), spec, owner, bad), owner, shapes
    depth = 0
    t = arr.type
    while _is_list(t):
        depth += 1
        t = t.value_type
    if depth == 0 and len(dims) == 1 and dims[0] in (1, -1):  # a scalar column for an [batch, 1] input
        return _leaf_to_numpy(arr, spec, rows, bad), rows, np.ones((n, 1), dtype=np.int64)
    if depth != len(dims):
        raise InvalidRequest(
            f"column {b.columns[0]!r} holds {'scalars' if depth == 0 else f'lists nested {depth} deep'} but input "
            f"{spec.describe()} needs {len(dims)} dimension(s) per row; pick matching columns with --columns"
        )
    shapes = np.zeros((n, depth), dtype=np.int64)
    owner = rows
    cur: pa.Array = arr
    for level in range(depth):
        if cur.null_count:
            nulls = np.asarray(cur.is_null().to_numpy(zero_copy_only=False))
            for row in np.unique(owner[nulls]):
                bad.setdefault(int(row), f"input {spec.name!r}: null value")
        lengths = np.asarray(pc.list_value_length(cur).fill_null(0).to_numpy(zero_copy_only=False), dtype=np.int64)
        if len(lengths):
            # every element of a row must have the same length at this level (no ragged rows)
            lo = np.full(n, np.iinfo(np.int64).max)
            hi = np.full(n, -1)
            np.minimum.at(lo, owner, lengths)
            np.maximum.at(hi, owner, lengths)
            seen = hi >= 0
            for row in np.flatnonzero(seen & (lo != hi)):
                bad.setdefault(int(row), f"input {spec.name!r}: ragged nested lists")
            shapes[seen, level] = hi[seen]
        owner = np.repeat(owner, lengths)
        cur = pc.list_flatten(cur)
    return _leaf_to_numpy(cur, spec, owner, bad), owner, shapes


def to_tensors(batch: pa.RecordBatch | pa.Table, bindings: Sequence[Binding]) -> Converted:
    """Convert one batch; rows that cannot form the model's tensors go to ``bad`` with a reason."""
    n = batch.num_rows
    bad: dict[int, str] = {}
    if REASON_COLUMN in batch.schema.names:
        for i, reason in enumerate(_column(batch, REASON_COLUMN).to_pylist()):
            if reason is not None:
                bad[i] = reason
    flat: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]] = {}
    for b in bindings:
        flat[b.spec.name] = _bind_one(batch, b, bad)
        dims = b.spec.shape[1:]
        shapes = flat[b.spec.name][2]
        fixed = np.asarray([d if d != -1 else 0 for d in dims], dtype=np.int64)
        dynamic = np.asarray([d == -1 for d in dims], dtype=bool)
        if len(dims):
            for row in np.flatnonzero(((shapes != fixed) & ~dynamic).any(axis=1)):
                bad.setdefault(
                    int(row),
                    f"input {b.spec.name!r} has shape {[int(s) for s in shapes[row]]} but the model expects "
                    f"{list(dims)} per row (-1 = any size)",
                )
    out = Converted(bad=bad)
    good = np.setdiff1d(np.arange(n), np.fromiter(bad, dtype=np.int64, count=len(bad))) if bad else np.arange(n)
    if not len(good) or not bindings:
        return out
    # rows group by their full shape (only dynamic inner dims can make more than one group)
    keys = np.concatenate([flat[b.spec.name][2][good] for b in bindings], axis=1)
    if keys.shape[1] == 0 or (keys == keys[0]).all():
        groups = [good]
    else:
        _, inverse = np.unique(keys, axis=0, return_inverse=True)
        inverse = inverse.reshape(-1)
        groups = [good[inverse == g] for g in range(int(inverse.max()) + 1)]
    for rows in groups:
        tensors: dict[str, np.ndarray] = {}
        for b in bindings:
            values, owner, shapes = flat[b.spec.name]
            row_shape = tuple(int(s) for s in shapes[rows[0]])
            chosen = values if len(rows) == n else values[np.isin(owner, rows)]
            tensors[b.spec.name] = np.ascontiguousarray(chosen).reshape((len(rows), *row_shape))
        out.groups.append((rows, tensors))
    return out


def to_arrow(outputs: Mapping[str, np.ndarray], specs: Sequence[TensorSpec]) -> list[pa.Array]:
    """One Arrow array per output spec, in spec order, typed by ``output_type``."""
    arrays = []
    for spec in specs:
        arr = np.asarray(outputs[spec.name])
        if spec.dtype is DType.BF16:
            arr = arr.astype(np.float32)
        n = arr.shape[0]
        if spec.dtype is DType.BYTES:
            flat_arr = pa.array(arr.reshape(-1).tolist(), pa.binary())
        else:
            flat_arr = pa.array(np.ascontiguousarray(arr).reshape(-1))
        out: pa.Array = flat_arr
        dims = spec.shape[1:] if spec.batched else spec.shape
        count = n
        sizes = [int(s) for s in arr.shape[1:]]
        for level in range(len(dims) - 1, -1, -1):
            size = sizes[level]
            parents = count * int(np.prod(sizes[:level], dtype=np.int64))
            if dims[level] == -1:
                offsets = pa.array(np.arange(parents + 1, dtype=np.int32) * size)
                out = pa.ListArray.from_arrays(offsets, out)
            else:
                out = pa.FixedSizeListArray.from_arrays(out, size)
        arrays.append(out.cast(output_type(spec)) if out.type != output_type(spec) else out)
    return arrays
