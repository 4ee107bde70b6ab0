"""Batch-job fixtures: a registered ONNX MLP (x FP32[batch, 16] -> y FP32[batch, 4]) and its inputs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from jobdata import FEATURES, register_mlp

from polystack.store import ModelRecord, Store


@pytest.fixture
def mlp(store: Store, tmp_path: Path) -> ModelRecord:
    return register_mlp(store, tmp_path)


@pytest.fixture
def features() -> np.ndarray:
    return np.random.default_rng(0).standard_normal((300, FEATURES)).astype(np.float32)
