"""Reshaped: a loaded model whose inputs and outputs clients send and get in other shapes (Triton's reshape).

A Triton config's input or output ``dims`` are what clients see, and its ``reshape`` the shape the model
takes or gives: a model of a batch of scalars (input ``[batch]``) served as ``dims: [1]`` with
``reshape: { shape: [] }``. This wraps the runtime's model (composition: the ``CheckedModel`` around it
validates what clients send against the shapes they see), reshaping each request's arrays on the way in
and each answer's on the way out; the element counts match (the config reader checks them), so no data is
copied.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from polystack.backends.base import LoadedModel


@dataclass(frozen=True)
class Reshape:
    """One tensor's two shapes, past the batch dimension when ``batched``: ``client`` what clients send or get,
    ``model`` what the model takes or gives (each with at most one -1)."""

    name: str
    batched: bool
    client: tuple[int, ...]
    model: tuple[int, ...]

    def full(self, dims: tuple[int, ...]) -> tuple[int, ...]:
        return ((-1,) if self.batched else ()) + dims


class Reshaped:
    def __init__(self, inner: LoadedModel, reshapes: tuple[Reshape, ...]) -> None:
        self.inner = inner
        self._by_name = {r.name: r for r in reshapes}
        self.signature = inner.signature.with_shapes({r.name: r.full(r.client) for r in reshapes})

    def _reshaped(self, arr: np.ndarray, r: Reshape, to_model: bool) -> np.ndarray:
        lead = arr.shape[:1] if r.batched else ()
        return arr.reshape(lead + (r.model if to_model else r.client))

    def infer(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        by_name = self._by_name
        feed = {n: self._reshaped(a, by_name[n], True) if n in by_name else a for n, a in inputs.items()}
        result = self.inner.infer(feed)
        return {n: self._reshaped(a, by_name[n], False) if n in by_name else a for n, a in result.items()}

    def close(self) -> None:
        self.inner.close()
