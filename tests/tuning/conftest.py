"""Fixtures for tuning: a registered ONNX MLP and variants written straight into the table.

The ``null`` backend (zeros after ``delay_ms``) makes search outcomes deterministic: a variant
that sleeps 0.2 ms beats one that sleeps 3 ms on any machine, however loaded.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from polystack.formats import import_model
from polystack.store import ModelRecord, Store, VariantRecord


@pytest.fixture
def mlp(store: Store, mlp_path: Path, tmp_path: Path) -> ModelRecord:
    imported = import_model(mlp_path, tmp_path)
    record, _ = store.register(imported.artifact, name="mlp", format=imported.format, signature=imported.signature)
    return record


AddVariant = Callable[..., VariantRecord]


@pytest.fixture
def add_variant() -> AddVariant:
    """add_variant(store, record, backend="null", status="verified", size_bytes=None, precision="fp32", **options)."""
    return _add_variant


def _add_variant(
    store: Store,
    record: ModelRecord,
    backend: str = "null",
    status: str = "verified",
    size_bytes: int | None = None,
    precision: str = "fp32",
    **options: Any,
) -> VariantRecord:
    return store.variants.upsert(
        record,
        backend=backend,
        device="cpu",
        precision=precision,
        options=options,
        format=record.format,
        digest=record.digest,
        size_bytes=size_bytes if size_bytes is not None else record.size_bytes,
        status=status,  # type: ignore[arg-type]
        metrics={"cosine": 0.92} if status == "rejected" else {},
        error="min cosine 0.92 < 0.99" if status == "rejected" else None,
    )
