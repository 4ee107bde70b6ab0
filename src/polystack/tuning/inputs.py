"""Inputs to measure with: the model's own samples where it carries them, else synthetic ones.

A pool holds ``n`` batch-1 samples stacked on dim 0 for every input, so a batch of any LoadGen
sample indices is one fancy-index per input. Synthetic inputs follow the Signature: floats are
standard normal, ``*mask*`` integer inputs are ones, ``*type*`` ones zeros, other integers small
token-like ids; a dynamic non-batch dimension takes ``seq_len`` when it is named like a sequence,
else 1.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from polystack.store import ModelRecord, Store
from polystack.types import DType, Signature, TensorSpec

SEQ_WORDS = ("seq", "len", "token", "time", "step", "sentence")


@dataclass(frozen=True)
class InputPool:
    """``n`` samples per input, stacked on dim 0."""

    arrays: dict[str, np.ndarray]
    batched: bool  # False: the model takes no batch dim, so only batch 1 makes sense

    @property
    def size(self) -> int:
        return next(iter(self.arrays.values())).shape[0] if self.arrays else 0

    def batch(self, indices: Sequence[int]) -> dict[str, np.ndarray]:
        if not self.batched:
            return {k: v[indices[0]] for k, v in self.arrays.items()}
        idx = np.asarray(indices, dtype=np.intp)
        return {k: v[idx] for k, v in self.arrays.items()}

    def first(self, batch_size: int) -> dict[str, np.ndarray]:
        return self.batch([i % self.size for i in range(batch_size)])


def _dim(spec: TensorSpec, i: int, seq_len: int) -> int:
    d = spec.shape[i]
    if d != -1:
        return d
    name = (spec.dim_names[i] if spec.dim_names else None) or ""
    return seq_len if any(w in name.lower() for w in SEQ_WORDS) else 1


def synthetic(signature: Signature, n: int = 64, seq_len: int = 128, seed: int = 0) -> InputPool:
    rng = np.random.default_rng(seed)
    batched = signature.batched
    arrays: dict[str, np.ndarray] = {}
    for spec in signature.inputs:
        start = 1 if batched else 0
        shape = [n] + [_dim(spec, i, seq_len) for i in range(start, len(spec.shape))]
        lname = spec.name.lower()
        if spec.dtype in (DType.FP32, DType.FP64, DType.FP16, DType.BF16):
            arr = rng.standard_normal(shape).astype(spec.dtype.numpy)
        elif spec.dtype is DType.BOOL:
            arr = np.ones(shape, dtype=bool)
        elif spec.dtype is DType.BYTES:
            arr = np.full(shape, b"polystack", dtype=object)
        elif "mask" in lname:
            arr = np.ones(shape, dtype=spec.dtype.numpy)
        elif "type" in lname or "position" in lname:
            arr = np.zeros(shape, dtype=spec.dtype.numpy)
        else:
            hi = 100 if spec.dtype in (DType.INT8, DType.UINT8) else 1000
            arr = rng.integers(0, hi, size=shape).astype(spec.dtype.numpy)
        arrays[spec.name] = arr
    return InputPool(arrays, batched)


def from_arrays(signature: Signature, arrays: Mapping[str, np.ndarray], n: int = 64) -> InputPool:
    """A pool cycled out of given sample arrays (batch on dim 0 when the model is batched)."""
    batched = signature.batched
    if not batched:
        return InputPool({k: np.asarray(v)[None] for k, v in arrays.items()}, False)
    have = next(iter(arrays.values())).shape[0]
    idx = np.arange(n) % max(have, 1)
    return InputPool({t.name: np.asarray(arrays[t.name])[idx] for t in signature.inputs}, True)


def pool_for(store: Store, record: ModelRecord, n: int = 64, seq_len: int = 128) -> InputPool:
    """The model's registered samples when it has them, else synthetic inputs from its Signature."""
    if record.samples_digest:
        try:
            with np.load(store.blobs.path(record.samples_digest), allow_pickle=False) as z:
                arrays = {k: z[k] for k in z.files}
            if all(t.name in arrays for t in record.signature.inputs):
                return from_arrays(record.signature, arrays, n)
        except (OSError, ValueError):
            pass
    return synthetic(record.signature, n, seq_len)
