"""Shared fixtures: a fresh store in a temp folder and small ONNX models built on the spot."""

from __future__ import annotations

import functools
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import pytest

from polystack.config import StoreSettings
from polystack.examples import mlp_onnx
from polystack.store import Store

_INDUCTOR_CACHE = pytest.StashKey[str]()


def pytest_configure(config: pytest.Config) -> None:
    """torch's compilers (AOTInductor, torch.compile) cache what they build under /tmp/torchinductor_<user>, which
    grew by about 0.5 GB with every run of the suite and was never cleaned (with other leftovers it filled this
    machine's disk): the run's compilers cache in a folder of its own, removed at the run's end. Set in the first
    process, before xdist starts its workers, which inherit it, as do the servers the tests start; a folder the
    caller chose is kept."""
    if hasattr(config, "workerinput") or "TORCHINDUCTOR_CACHE_DIR" in os.environ:
        return
    for stale in Path(tempfile.gettempdir()).glob("polystack-tests-inductor-*"):  # a run killed before its end
        if time.time() - stale.stat().st_mtime > 86_400:
            shutil.rmtree(stale, ignore_errors=True)
    folder = tempfile.mkdtemp(prefix="polystack-tests-inductor-")
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = folder
    # the precompiled headers of torch's C++ kernels go to /tmp/torchinductor_<user> whatever the cache folder, under
    # names that hash the run's folder in: 0.45 GB more with every run. The run compiles without them (AOTInductor's
    # own: ``zoo.aoti_package``)
    os.environ["TORCHINDUCTOR_CPP_CACHE_PRECOMPILE_HEADERS"] = "0"
    config.stash[_INDUCTOR_CACHE] = folder


def pytest_unconfigure(config: pytest.Config) -> None:
    folder = config.stash.get(_INDUCTOR_CACHE, None)
    if folder is not None:
        shutil.rmtree(folder, ignore_errors=True)
        del os.environ["TORCHINDUCTOR_CACHE_DIR"]
        del os.environ["TORCHINDUCTOR_CPP_CACHE_PRECOMPILE_HEADERS"]


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
    """AOTInductor packages compiled once per test run, each when a test first asks for it (seconds of C++ each),
    with the modules they were compiled from: ``mlp`` (4 -> 3, a dynamic batch of 1..64), ``static`` (the MLP for a
    batch of exactly 2), ``structured`` (a tuple argument, a keyword, a dict of a tensor and a tuple returned;
    dynamic batch), ``pair`` (x * mask, both [batch, length] with both dims dynamic and shared), ``heavy`` (a call
    long enough to watch)."""

    def __init__(self, folder: Path) -> None:
        import torch

        torch.manual_seed(0)
        self.folder = folder
        self.mlp_module = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 3)).eval()
        self.structured_module = _structured_module().eval()

    def _compiled(self, name: str, module: Any, args: tuple[Any, ...], **options: Any) -> Path:
        from polystack.zoo import aoti_package

        was = sys.getrecursionlimit()
        try:
            return aoti_package(self.folder / f"{name}.pt2", module, args, **options)
        finally:
            sys.setrecursionlimit(was)  # torch's compiler raises it; the tests after it run as in any process

    @functools.cached_property
    def mlp(self) -> Path:
        import torch

        return self._compiled("mlp", self.mlp_module, (torch.randn(2, 4),))

    @functools.cached_property
    def static(self) -> Path:
        import torch

        return self._compiled("static", self.mlp_module, (torch.randn(2, 4),), max_batch=None)

    @functools.cached_property
    def structured(self) -> Path:
        import torch

        args = (torch.randn(2, 4), (torch.randn(2, 4), torch.randn(2, 2)))
        return self._compiled("structured", self.structured_module, args, kwargs={"c": torch.randn(2, 4)})

    @functools.cached_property
    def heavy(self) -> Path:
        """x [batch, 256] through 24 matrix products and tanh: tens of milliseconds a call at batch 256."""
        import torch

        class Heavy(torch.nn.Module):
            def __init__(self) -> None:
                super().__init__()
                self.w = torch.nn.Parameter(torch.randn(256, 256) / 16)

            def forward(self, x: torch.Tensor) -> torch.Tensor:
                for _ in range(24):
                    x = torch.tanh(x @ self.w)
                return x

        return self._compiled("heavy", Heavy(), (torch.randn(2, 256),), max_batch=1024)

    @functools.cached_property
    def pair(self) -> Path:
        import torch

        class Masked(torch.nn.Module):
            def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
                return x * mask

        batch, length = torch.export.Dim("batch", min=1, max=16), torch.export.Dim("length", min=1, max=128)
        shapes = ({0: batch, 1: length}, {0: batch, 1: length})
        return self._compiled("pair", Masked(), (torch.randn(2, 5), torch.ones(2, 5)), max_batch=None, dynamic=shapes)


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
    return AotiPackages(tmp_path_factory.mktemp("aoti"))
