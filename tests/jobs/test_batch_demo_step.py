"""The demo's batch step runs on the demo's model and says what happened."""

from __future__ import annotations

import io
from pathlib import Path

from rich.console import Console

from polystack.cli.demo import DemoContext, register_models
from polystack.engine import Engine
from polystack.jobs.demo import demo_step
from polystack.store import Store


def test_demo_step_scores_a_file_and_shows_bad_rows(store: Store, tmp_path: Path) -> None:
    buf = io.StringIO()
    ctx = DemoContext(store=store, engine=Engine(store), workdir=tmp_path, console=Console(file=buf, width=200))
    register_models(ctx)
    demo_step(ctx)
    text = buf.getvalue()
    assert "20,000 read, 19,998 written, 2 bad" in text
    assert "u00123" in text and "already done" in text
