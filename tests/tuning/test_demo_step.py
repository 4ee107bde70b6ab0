"""The demo's tuning step prints a plan per model and profile, and stores them."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
from rich.console import Console

from polystack.cli.demo import DemoContext
from polystack.engine import Engine
from polystack.store import ModelRecord, Store
from polystack.tuning import demo


def test_demo_step_tunes_the_demo_models_and_prints_their_plans(
    store: Store,
    mlp: ModelRecord,
    tmp_path: Path,
    add_variant,
    monkeypatch: pytest.MonkeyPatch,  # type: ignore[no-untyped-def]
) -> None:
    add_variant(store, mlp, delay_ms=0.1)
    monkeypatch.setattr(demo, "PLANS", (("demo-mlp", "realtime", None), ("absent", "batch", None)))
    monkeypatch.setattr(demo, "BUDGET_S", 2.0)
    out = io.StringIO()
    ctx = DemoContext(store=store, engine=Engine(store), workdir=tmp_path, console=Console(file=out, width=200))
    ctx.models["demo-mlp"] = mlp
    demo.demo_step(ctx)
    text = out.getvalue()
    assert "plans on this machine" in text and "null fp32" in text and "chosen for realtime" in text
    assert [p.profile for p in store.plans.for_model(mlp)] == ["realtime"]
