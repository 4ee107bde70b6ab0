"""Ragged: a loaded model that takes the requests of a batch concatenated, however their shapes differ
(Triton's ragged batching: ``allow_ragged_batch``, ``batch_input``, ``batch_output``).

A model served so takes each ragged input as one dimension holding every request's elements one after
another (Triton's ONNX Runtime backend requires the model's input to be ``[-1]``), and learns where each
request's elements are from the batch inputs the server adds, which requests do not carry: each request's
element count, their running total (with or without a leading 0), the largest as a shape, or each batch
item's shape. Its other inputs take the batch on their first dimension, as always. Its outputs give one row
per batch item, or, for a ``batch_output`` (``BATCH_SCATTER_WITH_INPUT_SHAPE``), every request's elements one
after another, shaped for each request as its source input is. Clients see the config's shapes: a ragged
input with the batch dimension and its dims (``[-1, -1]`` for ``dims: [ -1 ]``), no batch inputs.

This wraps the runtime's model (composition, as ``Reshaped`` does): ``infer`` runs one request, and
``infer_many`` runs requests of different shapes as one call, which the dynamic batcher uses for them.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from polystack.backends.base import LoadedModel
from polystack.errors import BackendError
from polystack.types import DType, Signature, TensorSpec

# Triton's BatchInput kinds (model_config.proto)
ELEMENT_COUNT = "BATCH_ELEMENT_COUNT"
ACCUMULATED = "BATCH_ACCUMULATED_ELEMENT_COUNT"
ACCUMULATED_WITH_ZERO = "BATCH_ACCUMULATED_ELEMENT_COUNT_WITH_ZERO"
MAX_AS_SHAPE = "BATCH_MAX_ELEMENT_COUNT_AS_SHAPE"
ITEM_SHAPE = "BATCH_ITEM_SHAPE"
ITEM_SHAPE_FLATTEN = "BATCH_ITEM_SHAPE_FLATTEN"
KINDS = (ELEMENT_COUNT, ACCUMULATED, ACCUMULATED_WITH_ZERO, MAX_AS_SHAPE, ITEM_SHAPE, ITEM_SHAPE_FLATTEN)
SCATTER = "BATCH_SCATTER_WITH_INPUT_SHAPE"  # Triton's one BatchOutput kind
RANKS = {ITEM_SHAPE: 2}  # the rank of the model input each kind fills (the others: 1)


@dataclass(frozen=True)
class BatchInput:
    """A model input the server fills from the batch (Triton's ``batch_input``): ``kind`` of ``source``."""

    kind: str
    target: str
    dtype: DType
    source: str


@dataclass(frozen=True)
class RaggedSpec:
    """What a config's ragged batching asks: its ragged inputs with the dims clients send (past the batch
    dimension), the batch inputs to fill, and the outputs scattered by a source input's shape with their dims."""

    inputs: tuple[tuple[str, tuple[int, ...]], ...]
    batch_inputs: tuple[BatchInput, ...] = ()
    scattered: tuple[tuple[str, str, tuple[int, ...]], ...] = ()  # (output, its source input, its dims)

    @property
    def ragged(self) -> frozenset[str]:
        return frozenset(name for name, _ in self.inputs)

    def shown(self, signature: Signature) -> Signature:
        """``signature`` (the model's) as clients see it: ragged inputs and scattered outputs in their config's
        dims with the batch dimension, and no batch inputs."""
        dims = dict(self.inputs)
        out = {name: d for name, _, d in self.scattered}
        targets = {b.target for b in self.batch_inputs}
        inputs = tuple(
            TensorSpec(t.name, t.dtype, (-1, *dims[t.name])) if t.name in dims else t
            for t in signature.inputs
            if t.name not in targets
        )
        outputs = tuple(TensorSpec(t.name, t.dtype, (-1, *out[t.name])) if t.name in out else t for t in signature.outputs)
        return Signature(inputs, outputs, signature.optional)


class Ragged:
    def __init__(self, inner: LoadedModel, spec: RaggedSpec) -> None:
        self.inner = inner
        self.spec = spec
        self.signature = spec.shown(inner.signature)
        self._ragged = spec.ragged
        self._fills = {b.target: b for b in spec.batch_inputs}
        self._scattered = {name: (source, dims) for name, source, dims in spec.scattered}

    def infer(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        return self.infer_many([inputs])[0]

    def infer_many(self, requests: Sequence[Mapping[str, np.ndarray]]) -> list[dict[str, np.ndarray]]:
        """Run ``requests`` (each checked against ``signature``) as one call; each one's outputs."""
        feed: dict[str, np.ndarray] = {}
        for t in self.inner.signature.inputs:
            if t.name in self._ragged:
                feed[t.name] = np.concatenate([np.asarray(r[t.name]).reshape(-1) for r in requests])
            elif t.name in self._fills:
                feed[t.name] = _fill(self._fills[t.name], requests)
            elif all(t.name in r for r in requests):
                parts = [r[t.name] for r in requests]
                feed[t.name] = parts[0] if len(parts) == 1 else np.concatenate(parts)
        for t in self.inner.signature.optional:  # given alone only (optional inputs do not batch)
            if len(requests) == 1 and t.name in requests[0]:
                feed[t.name] = requests[0][t.name]
        result = self.inner.infer(feed)
        rows = [_rows(r) for r in requests]
        answers: list[dict[str, np.ndarray]] = [{} for _ in requests]
        for name, array in result.items():
            scattered = self._scattered.get(name)
            if scattered is not None:
                self._scatter(name, array, scattered, requests, answers)
                continue
            if np.ndim(array) == 0 or len(array) != sum(rows):
                raise BackendError(
                    f"output {name!r} has shape {list(np.shape(array))} for a batch of {sum(rows)} rows; a ragged "
                    "batch's outputs give one row per batch item (or scatter by an input's shape: batch_output)"
                )
            offset = 0
            for answer, n in zip(answers, rows, strict=True):
                answer[name] = array[offset : offset + n]
                offset += n
        return answers

    def _scatter(
        self,
        name: str,
        array: np.ndarray,
        scattered: tuple[str, tuple[int, ...]],
        requests: Sequence[Mapping[str, np.ndarray]],
        answers: list[dict[str, np.ndarray]],
    ) -> None:
        """Output ``name``'s elements, one request's after another, each shaped as its config's dims (with the
        batch dimension) with every -1 the size its source input has at that place (Triton's naive mapping)."""
        source, dims = scattered
        flat = np.asarray(array).reshape(-1)
        offset = 0
        for answer, r in zip(answers, requests, strict=True):
            given = r[source].shape
            shape = tuple(given[i] if d == -1 and i < len(given) else d for i, d in enumerate((-1, *dims)))
            if any(d < 0 for d in shape):
                raise BackendError(f"output {name!r}: its dims {list(dims)} leave a size its source {source!r} does not give")
            n = math.prod(shape)
            if offset + n > flat.size:
                raise BackendError(
                    f"output {name!r} holds {flat.size} elements, fewer than the batch's inputs {source!r} ask for "
                    "(scattered by their shapes)"
                )
            answer[name] = flat[offset : offset + n].reshape(shape)
            offset += n

    def close(self) -> None:
        self.inner.close()


def _rows(request: Mapping[str, np.ndarray]) -> int:
    """The request's batch size: the first dimension of its inputs (all take the batch first)."""
    return next((int(a.shape[0]) for a in request.values() if np.ndim(a)), 1)


def _fill(b: BatchInput, requests: Sequence[Mapping[str, np.ndarray]]) -> np.ndarray:
    """Batch input ``b``'s value for ``requests``, as Triton's backends compute it (BackendInputCollector)."""
    shapes = [np.shape(r[b.source]) for r in requests]
    counts = [math.prod(s) for s in shapes]  # each request's elements, its batch included
    dtype = b.dtype.numpy
    if b.kind == ELEMENT_COUNT:
        return np.asarray(counts, dtype=dtype)
    if b.kind == ACCUMULATED:
        return np.cumsum(counts).astype(dtype)
    if b.kind == ACCUMULATED_WITH_ZERO:
        return np.concatenate([[0], np.cumsum(counts)]).astype(dtype)
    if b.kind == MAX_AS_SHAPE:  # its shape says it; Triton leaves the data uninitialized
        return np.zeros(max(counts), dtype=dtype)
    items = [list(s[1:]) for s in shapes for _ in range(s[0])]  # each batch item's shape
    if b.kind == ITEM_SHAPE:
        return np.asarray(items, dtype=dtype).reshape(len(items), len(shapes[0]) - 1)
    return np.asarray(items, dtype=dtype).reshape(-1)  # ITEM_SHAPE_FLATTEN
