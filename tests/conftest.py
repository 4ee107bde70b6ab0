"""Shared fixtures: a fresh store in a temp folder and small ONNX models built on the spot."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest

from polystack.config import StoreSettings
from polystack.examples import mlp_onnx
from polystack.store import Store


@pytest.fixture
def home(tmp_path: Path) -> Path:
    return tmp_path / "home"


@pytest.fixture
def store(home: Path) -> Store:
    s = Store(StoreSettings(home=home))
    yield s
    s.close()


@pytest.fixture
def mlp_path(tmp_path: Path) -> Path:
    return mlp_onnx(tmp_path / "mlp.onnx", sizes=(8, 16, 3))


class AotiPackages:
    """AOTInductor packages compiled once per test run (tens of seconds of C++), with the modules they were
    compiled from: ``mlp`` (4 -> 3, a dynamic batch of 1..64), ``structured`` (a tuple argument, a keyword, a dict
    of a tensor and a tuple returned; dynamic batch), ``static`` (the MLP for a batch of exactly 2)."""

    def __init__(self, folder: Path) -> None:
        import torch

        from polystack.zoo import aoti_package

        torch.manual_seed(0)
        self.mlp_module = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 3)).eval()
        self.structured_module = _structured_module().eval()
        x = torch.randn(2, 4)
        self.mlp = aoti_package(folder / "mlp.pt2", self.mlp_module, (x,))
        self.static = aoti_package(folder / "static.pt2", self.mlp_module, (x,), max_batch=None)
        pair = (torch.randn(2, 4), torch.randn(2, 2))
        self.structured = aoti_package(
            folder / "structured.pt2", self.structured_module, (x, pair), {"c": torch.randn(2, 4)}
        )


def _structured_module() -> Any:
    """A module taking a tuple and a keyword and returning a dict holding a tensor and a tuple (torch imported
    here: most tests need none)."""
    import torch

    class Structured(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.w = torch.nn.Parameter(torch.randn(4, 4))

        def forward(self, a: torch.Tensor, pair: tuple[torch.Tensor, torch.Tensor], c: torch.Tensor) -> dict[str, Any]:
            p0, p1 = pair
            return {"sum": a @ self.w + p0 + c, "parts": (p1 * 2, (a - p0).to(torch.int64))}

    return Structured()


@pytest.fixture(scope="session")
def aoti(tmp_path_factory: pytest.TempPathFactory) -> AotiPackages:
    was = sys.getrecursionlimit()
    try:
        return AotiPackages(tmp_path_factory.mktemp("aoti"))
    finally:
        sys.setrecursionlimit(was)  # torch's compiler raises it; the tests after it run as in any process
