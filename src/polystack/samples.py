"""Sample inputs a model carries, for verification, calibration and measurement.

Given at registration (``--samples FILE``: ``.npz`` keyed by input name, ``.npy`` for a
single-input model, or ``.parquet`` with one column per input) or synthesized from the Signature.
Either way they are stored as one ``.npz`` blob (``models.samples_digest``). Synthesized samples
are random: real ones make verification and quantization trustworthy, and a warning says so.
"""

from __future__ import annotations

import io
import re
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from polystack.errors import Conflict, InvalidRequest
from polystack.store import ModelRecord, Store
from polystack.store.models import SYNTHESIZED, removed_meanwhile
from polystack.types import DType, Signature, TensorSpec

DEFAULT_COUNT = 128  # rows: a 99% top-1 gate needs 100+ rows to tolerate one near-tie flip
FEW_ROWS = 100  # fewer given: register warns that the gate's figures mean little
MIN_COUNT = 8
MAX_SYNTHETIC_BYTES = 16 << 20
DYNAMIC_DIM = 16  # size given to dynamic dimensions other than the batch
SYNTHETIC_WARNING = (
    "no samples given: polystack synthesized random inputs from the signature; pass real ones with "
    "--samples FILE (.npz/.npy/.parquet) to make verification and int8 calibration trustworthy"
)


def read(path: Path, signature: Signature) -> dict[str, np.ndarray]:
    """Read a samples file and check it against the signature (cast to the declared dtypes)."""
    suffix = path.suffix.lower()
    if path.is_dir():
        raise InvalidRequest(f"samples file {path} is a folder; name a file in it")
    if not path.is_file():
        raise InvalidRequest(f"samples file {path} does not exist")
    if path.stat().st_size == 0:  # numpy's EOFError, which the command line took for an abort
        raise InvalidRequest(f"samples file {path} is empty; write the samples into it")
    try:
        if suffix == ".npy":
            if len(signature.inputs) != 1:
                raise InvalidRequest(
                    f"a .npy file holds one tensor but the model takes {len(signature.inputs)} inputs; use .npz"
                )
            raw = {signature.inputs[0].name: np.load(path, allow_pickle=False)}
        elif suffix == ".npz":
            with np.load(path, allow_pickle=False) as z:
                raw = {k: z[k] for k in z.files}
        elif suffix == ".parquet":
            raw = _read_parquet(path, signature)
        else:
            raise InvalidRequest(f"samples file {path.name} must end in .npz, .npy or .parquet")
    except (ValueError, OSError, EOFError, zipfile.BadZipFile) as e:
        raise InvalidRequest(f"cannot read samples from {path.name}: {e}") from e
    return check(raw, signature, source=path.name)


def _read_parquet(path: Path, signature: Signature) -> dict[str, np.ndarray]:
    import pyarrow.parquet as pq

    table = pq.read_table(path)
    out: dict[str, np.ndarray] = {}
    for spec in signature.inputs:
        if spec.name not in table.column_names:
            continue
        column = table.column(spec.name).to_pylist()
        if spec.dtype is DType.BYTES:
            out[spec.name] = np.array([v if isinstance(v, bytes) else str(v).encode() for v in column], dtype=object)
        else:
            out[spec.name] = np.asarray(column)
    if len(signature.inputs) == 1 and not out and len(table.column_names) > 1:
        # one tabular input: every column is a feature
        out[signature.inputs[0].name] = np.column_stack([table.column(c).to_numpy() for c in table.column_names])
    return out


def check(raw: Mapping[str, np.ndarray], signature: Signature, source: str = "samples") -> dict[str, np.ndarray]:
    missing = [n for n in signature.input_names if n not in raw]
    if missing:
        raise InvalidRequest(
            f"{source} lacks input {', '.join(map(repr, missing))}; it must hold {', '.join(signature.input_names)}"
        )
    out: dict[str, np.ndarray] = {}
    for spec in signature.inputs:
        arr = np.asarray(raw[spec.name])
        if spec.dtype is not DType.BYTES and arr.dtype != spec.dtype.numpy:
            if arr.dtype.kind == "f" and spec.dtype.numpy.kind in "iub":
                raise InvalidRequest(
                    f"{source}: input {spec.name!r} holds floats but the model expects {spec.dtype.value}"
                )
            arr = arr.astype(spec.dtype.numpy)
        if not spec.accepts(arr.shape):
            raise InvalidRequest(
                f"{source}: input {spec.name!r} has shape {list(arr.shape)} but the model expects "
                f"{list(spec.shape)} (-1 = any size)"
            )
        out[spec.name] = arr
    if signature.batched and out and not rows(out, signature):  # the gate compared nothing and passed everything
        raise InvalidRequest(f"{source} holds no rows; give the model's real inputs, 100 rows or more")
    counts = {len(a) for spec, a in zip(signature.inputs, out.values(), strict=True) if spec.batched}
    if signature.batched and len(counts) > 1:
        raise InvalidRequest(f"{source}: its inputs hold different numbers of rows ({sorted(counts)}); give them one")
    return out


def _synth_one(spec: TensorSpec, count: int, rng: np.random.Generator) -> np.ndarray:
    shape = [count if (i == 0 and spec.batched) else (DYNAMIC_DIM if d == -1 else d) for i, d in enumerate(spec.shape)]
    name = spec.name.lower()
    if spec.dtype is DType.BYTES:
        return np.full(shape, b"sample", dtype=object)
    if spec.dtype is DType.BOOL:
        return rng.random(shape) < 0.5
    kind = spec.dtype.numpy.kind
    if kind in "iu":
        if re.search(r"mask", name):
            return np.ones(shape, dtype=spec.dtype.numpy)
        if re.search(r"token_type|segment|position", name):
            return np.zeros(shape, dtype=spec.dtype.numpy)
        return rng.integers(0, 100, size=shape).astype(spec.dtype.numpy)
    return rng.standard_normal(shape).astype(spec.dtype.numpy)


def _row_bytes(signature: Signature) -> int:
    total = 0
    for spec in signature.inputs:
        dims = [DYNAMIC_DIM if d == -1 else d for d in spec.shape[1 if spec.batched else 0 :]]
        total += int(np.prod(dims, dtype=np.int64)) * max(spec.dtype.itemsize, 1)
    return max(total, 1)


def synthesize(signature: Signature, count: int | None = None, seed: int = 0) -> dict[str, np.ndarray]:
    """Random inputs that fit the signature: normal floats, small integers, masks of ones.

    Without ``count``: DEFAULT_COUNT rows, fewer (at least MIN_COUNT) when rows are large, so the
    stored samples stay under MAX_SYNTHETIC_BYTES.
    """
    if count is None:
        count = int(min(DEFAULT_COUNT, max(MIN_COUNT, MAX_SYNTHETIC_BYTES // _row_bytes(signature))))
    rng = np.random.default_rng(seed)
    return {spec.name: _synth_one(spec, count, rng) for spec in signature.inputs}


def to_npz(samples: Mapping[str, np.ndarray], path: Path) -> Path:
    """Write samples as .npz without pickles (BYTES inputs as fixed-width byte strings)."""
    plain = {
        k: (np.asarray(v, dtype=np.bytes_) if np.asarray(v).dtype == object else np.asarray(v))
        for k, v in samples.items()
    }
    np.savez(path, **plain)  # type: ignore[arg-type]
    return path


def from_npz_bytes(data: bytes) -> dict[str, np.ndarray]:
    with np.load(io.BytesIO(data), allow_pickle=False) as z:
        return {k: (z[k].astype(object) if z[k].dtype.kind == "S" else z[k]) for k in z.files}


def load(store: Store, record: ModelRecord) -> dict[str, np.ndarray] | None:
    """The model's stored samples, or None when it has none."""
    if record.samples_digest is None:
        return None
    try:
        data = store.blobs.path(record.samples_digest).read_bytes()
    except FileNotFoundError:  # samples given again since the record was read: the old ones went (gc, an hour on)
        raise Conflict(
            f"model {record.name}:{record.version} had its samples replaced while this ran (register --samples); "
            "run the command again"
        ) from None
    return from_npz_bytes(data)


def ensure(store: Store, record: ModelRecord, workdir: Path) -> tuple[ModelRecord, dict[str, np.ndarray], bool]:
    """The model's samples, synthesizing and storing them first when it has none; (record, samples, synthesized)."""
    found = load(store, record)
    if found is not None:
        return record, found, bool(record.settings.get(SYNTHESIZED))
    synthetic = synthesize(record.signature)
    path = to_npz(synthetic, workdir / "samples.npz")
    try:  # to the row read, as long as it is there: a `remove` meanwhile must not see the model come back
        updated, _ = store.register(
            store.artifact_path(record),
            name=record.name,
            format=record.format,
            signature=record.signature,
            source_filename=record.source_filename,
            samples=path,
            settings={SYNTHESIZED: True},
            version=record.version,
            existing=True,
        )
    except FileNotFoundError:  # its bytes went with it
        raise Conflict(removed_meanwhile(record.name, record.version)) from None
    return updated, synthetic, True


def rows(samples: Mapping[str, np.ndarray], signature: Signature) -> int:
    """How many rows (batch entries) the samples hold; 1 when the model takes no batch."""
    if not signature.batched:
        return 1
    return int(next(iter(samples.values())).shape[0]) if samples else 0


def every_other_row(samples: Mapping[str, np.ndarray], signature: Signature) -> dict[str, np.ndarray]:
    """Rows 0, 2, 4, ... of the samples (all of them when the model takes no batch, or when there is one row)."""
    if not signature.batched or rows(samples, signature) < 2:
        return dict(samples)
    return {spec.name: samples[spec.name][::2] if spec.batched else samples[spec.name] for spec in signature.inputs}


def batches(samples: Mapping[str, np.ndarray], signature: Signature, size: int) -> list[dict[str, Any]]:
    """The samples cut into batches of at most ``size`` rows (one batch when the model takes none)."""
    n = rows(samples, signature)
    if not signature.batched:
        return [dict(samples)]
    return [{k: v[i : i + size] for k, v in samples.items()} for i in range(0, n, size)]
