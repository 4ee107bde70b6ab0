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
from polystack.backends.hosting import Responses, answered, parameters_of
from polystack.errors import BackendError, PolystackError


@dataclass(frozen=True)
class Reshape:
    """One tensor's two shapes, past the batch dimension when ``batched``: ``client`` what clients send or get,
    ``model`` what the model takes or gives. Each -1 (any size) of one stands for the same size as the -1 at
    the same place among the other's -1s (the config reader checks that the sizes between them match)."""

    name: str
    batched: bool
    client: tuple[int, ...]
    model: tuple[int, ...]

    def full(self, dims: tuple[int, ...]) -> tuple[int, ...]:
        return ((-1,) if self.batched else ()) + dims

    def target(self, shape: tuple[int, ...], to_model: bool) -> tuple[int, ...]:
        """The shape an array of ``shape`` takes on the other side: the other's dims, each -1 the size of the
        array's dim at the same place among its -1s (numpy could not infer a -1 of an empty array)."""
        lead = shape[:1] if self.batched else ()
        here, there = (self.client, self.model) if to_model else (self.model, self.client)
        rest = shape[len(lead) :]
        if len(rest) != len(here) or any(dim not in (-1, size) for size, dim in zip(rest, here, strict=False)):
            raise BackendError(  # an output of another shape than its config says (inputs are checked before)
                f"{'input' if to_model else 'output'} {self.name!r} has shape {list(shape)}, which its config's "
                f"{'dims' if to_model else 'reshape'} do not take ({list(self.full(here))}); fix the config's dims "
                "and reshape to the shapes the model takes and gives"
            )
        sizes = iter([size for size, dim in zip(rest, here, strict=True) if dim == -1])
        return lead + tuple(next(sizes) if dim == -1 else dim for dim in there)


class Reshaped:
    def __init__(self, inner: LoadedModel, reshapes: tuple[Reshape, ...]) -> None:
        self.inner = inner
        self._by_name = {r.name: r for r in reshapes}
        self.signature = inner.signature.with_shapes({r.name: r.full(r.client) for r in reshapes})

    def _reshaped(self, arr: np.ndarray, r: Reshape, to_model: bool) -> np.ndarray:
        return arr.reshape(r.target(arr.shape, to_model))

    def infer(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        by_name = self._by_name
        feed = {n: self._reshaped(a, by_name[n], True) if n in by_name else a for n, a in inputs.items()}
        result = self.inner.infer(feed)
        shaped = {n: self._reshaped(a, by_name[n], False) if n in by_name else a for n, a in result.items()}
        return answered(shaped, parameters_of(result))  # with its response's parameters

    def close(self) -> None:
        self.inner.close()


class ReshapedResponses:
    """A hosted model's responses sent apart from its return (``hosting.Responses``: a decoupled model's, or one
    answered after ``execute`` returned), each answer reshaped to what clients get on its way to ``inner``, as
    ``Reshaped`` reshapes a returned one; an output of another shape than its config says is the response's error."""

    def __init__(self, inner: Responses, reshapes: tuple[Reshape, ...]) -> None:
        self.inner = inner
        self._by_name = {r.name: r for r in reshapes}

    @property
    def cancelled(self) -> bool:
        return self.inner.cancelled

    def send(self, outputs: dict[str, np.ndarray] | PolystackError | None, final: bool) -> None:
        if isinstance(outputs, dict):
            try:
                shaped = {
                    n: a.reshape(self._by_name[n].target(a.shape, False)) if n in self._by_name else a
                    for n, a in outputs.items()
                }
                outputs = answered(shaped, parameters_of(outputs))  # with its response's parameters
            except BackendError as e:
                outputs = e
        self.inner.send(outputs, final)
