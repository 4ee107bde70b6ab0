"""Shared fixtures: a fresh store in a temp folder and small ONNX models built on the spot."""

from __future__ import annotations

from pathlib import Path

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
