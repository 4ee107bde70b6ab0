"""The torch runtime (``backends/torch.py``: a ``torch.export`` program run eagerly): what it does with the
caller's arrays."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from polystack.backends import registry
from polystack.formats import import_model
from polystack.zoo import save_torch_export


class _AddsInPlace(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x.add_(1.0)  # an exported program may write into its input (torch.export keeps user input mutations)
        return x * 2


def test_a_program_writing_into_its_input_leaves_a_read_only_request_as_it_came(tmp_path: Path) -> None:
    # a request's binary data (bytes) and a client's shared memory reach the runtime read-only: torch wrote into
    # them (a Python bytes object changed under its owner), and warned on stderr that it would
    path = save_torch_export(_AddsInPlace(), (torch.ones(2, 3),), tmp_path / "m.pt2")
    sig = import_model(path, tmp_path).signature
    backend = registry.get("torch")
    model = backend.load(path, sig, backend.parse_options({}), "cpu")
    data = np.arange(6, dtype=np.float32).tobytes()
    x = np.frombuffer(data, np.float32).reshape(2, 3)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # "The given NumPy array is not writable"
        [y] = model.infer({sig.inputs[0].name: x}).values()
    assert data == np.arange(6, dtype=np.float32).tobytes()
    np.testing.assert_array_equal(y, (np.arange(6, dtype=np.float32).reshape(2, 3) + 1) * 2)


def test_inputs_outside_the_programs_exported_bounds_are_refused_as_the_clients_mistake(tmp_path: Path) -> None:
    # torch.export's Dim(max=1024) guard failed as "PyTorch failed: AssertionError: Guard failed: ...", a server
    # error that did not say what to do (helper-258)
    from polystack.errors import InvalidTensor

    path = save_torch_export(torch.nn.Linear(3, 2), (torch.ones(2, 3),), tmp_path / "m.pt2")
    sig = import_model(path, tmp_path).signature
    backend = registry.get("torch")
    model = backend.load(path, sig, backend.parse_options({}), "cpu")
    name = sig.inputs[0].name
    assert model.infer({name: np.ones((1024, 3), np.float32)})[sig.outputs[0].name].shape == (1024, 2)
    with pytest.raises(InvalidTensor, match=r"Guard failed.*torch.export bounded the sizes it takes"):
        model.infer({name: np.ones((1025, 3), np.float32)})
