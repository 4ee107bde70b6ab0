"""Triton's classification extension: an output returned as its top-k classes instead of its values.

A requested output with the ``classification`` parameter set to k (tritonclient's ``class_count``)
comes back as a BYTES tensor of shape [batch, k] (or [k] for a model without a batch dimension):
for each item, the k highest values of the output, highest first, each as ``"<value>:<index>"``,
the value formatted as Triton formats it (``std::to_string``: six decimals for floats), then
``:<label>`` when the model has labels for that output (``polystack register --labels``) and one for
that index. Equal values keep index order; NaN ranks below every number. k larger than the number of
classes returns them all.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np

from polystack.errors import InvalidRequest
from polystack.types import DType, Signature


def parse_count(raw: object, output: str) -> int:
    """The classification parameter's class count: a non-negative integer (0, as in Triton: no classification),
    or InvalidRequest."""
    if isinstance(raw, bool) or not isinstance(raw, int) or raw < 0:
        raise InvalidRequest(
            f"output {output!r}: 'classification' must be a non-negative integer (the class count; 0 asks for none)"
        )
    return raw


def check_outputs(signature: Signature, classes: dict[str, int]) -> None:
    """Refuse, before the model runs, classification of an output that is not numeric (BYTES, BOOL)."""
    for spec in signature.outputs:
        if spec.name in classes and spec.dtype in (DType.BYTES, DType.BOOL):
            raise InvalidRequest(  # Triton's core's words (helper-118), then why
                f"class result not available for output due to unsupported type '{spec.dtype.value}': output "
                f"{spec.name!r} is {spec.dtype.value}; classification needs a numeric output"
            )


def classify(
    result: dict[str, np.ndarray],
    classes: dict[str, int],
    batched: bool,
    labels: Mapping[str, Sequence[str]] | None = None,
) -> dict[str, np.ndarray]:
    """A request's outputs with those named in ``classes`` (name -> k) replaced by their top-k classes."""
    labels = labels or {}
    return {
        name: top_classes(name, arr, classes[name], batched, labels.get(name)) if name in classes else arr
        for name, arr in result.items()
    }


def top_classes(
    name: str, values: np.ndarray, count: int, batched: bool, labels: Sequence[str] | None = None
) -> np.ndarray:
    """``values`` (one output of a request) as its top ``count`` classes per item, as Triton returns them."""
    if values.dtype.kind not in "iuf":
        raise InvalidRequest(f"output {name!r} holds {values.dtype} values; classification needs a numeric output")
    # the per-item size spelled out: numpy cannot infer a -1 next to an empty batch
    rows = (
        values.reshape(values.shape[0], math.prod(values.shape[1:]))
        if batched and values.ndim > 0
        else values.reshape(1, -1)
    )
    n = rows.shape[1]
    k = min(count, n)
    floats = values.dtype.kind == "f"
    if floats:  # highest first, NaN (no score at all) last, equal values in index order (lexsort is stable)
        order = np.lexsort((-rows, np.isnan(rows)), axis=1)[:, :k]
    else:  # integers cannot be negated (unsigned, the minimum): a stable ascending sort of each row reversed, read backwards
        order = (n - 1 - np.argsort(rows[:, ::-1], axis=1, kind="stable"))[:, ::-1][:, :k]
    names = labels or ()
    out = np.empty((rows.shape[0], k), dtype=object)
    for i, (row, idx) in enumerate(zip(rows, order, strict=True)):
        texts = [f"{row[j]:f}:{j}" if floats else f"{int(row[j])}:{j}" for j in idx]
        # Triton leaves the label off for an index past the file or a blank line
        out[i] = [
            (f"{t}:{names[j]}" if j < len(names) and names[j] else t).encode() for t, j in zip(texts, idx, strict=True)
        ]
    return out if batched else out.reshape(k)
