"""polystack demo: the main path end to end on models it builds itself (no downloads).

The demo is a list of steps, each a function of a ``DemoContext``; a feature adds its step in its
own module and is listed in ``STEPS`` here.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import typer
from rich.console import Console
from rich.panel import Panel

from polystack.cli.app import app, console
from polystack.config import StoreSettings
from polystack.engine import Engine
from polystack.examples import mlp_onnx
from polystack.formats import import_model
from polystack.store import ModelRecord, Store


@dataclass
class DemoContext:
    store: Store
    engine: Engine
    workdir: Path
    console: Console
    models: dict[str, ModelRecord] = field(default_factory=dict)  # what earlier steps registered, by name

    def step(self, title: str) -> None:
        self.console.rule(f"[bold]{title}")


def register_models(ctx: DemoContext) -> None:
    ctx.step("build a model (an MLP written as ONNX, random weights) and register it")
    path = mlp_onnx(ctx.workdir / "mlp.onnx", sizes=(16, 64, 64, 4))
    imported = import_model(path, ctx.workdir)
    record, created = ctx.store.register(
        imported.artifact,
        name="demo-mlp",
        format=imported.format,
        signature=imported.signature,
        tags={"source": "demo"},
        source_filename=path.name,
    )
    ctx.models[record.name] = record
    ctx.console.print(
        f"{record.name}:{record.version} {'registered' if created else 'already registered'} "
        f"({path.stat().st_size:,} bytes, sha256:{record.digest[:12]})",
        markup=False,
    )
    for t in record.signature.inputs + record.signature.outputs:
        ctx.console.print(f"  {t.describe()}", markup=False)


def predict(ctx: DemoContext) -> None:
    ctx.step("predict")
    record = ctx.models["demo-mlp"]
    entry = ctx.engine.load(record.ref)
    x = np.random.default_rng(1).standard_normal((3, 16)).astype(np.float32)
    started = time.perf_counter()
    y = ctx.engine.infer(record.name, {"x": x})["y"]
    took_ms = (time.perf_counter() - started) * 1000
    ctx.console.print(
        f"backend {entry.spec.backend} on {entry.spec.device}, loaded in {entry.load_time_s * 1000:.1f} ms"
    )
    ctx.console.print(f"input x {list(x.shape)} -> output y {list(y.shape)} in {took_ms:.2f} ms", markup=False)
    ctx.console.print(f"y[0] = {np.array2string(y[0], precision=4)}", markup=False)


def _variants(ctx: DemoContext) -> None:
    from polystack.cli.variants import demo_step

    demo_step(ctx)


def _tune(ctx: DemoContext) -> None:
    from polystack.tuning.demo import demo_step

    demo_step(ctx)


def _serve(ctx: DemoContext) -> None:
    from polystack.server.demo import demo_step

    demo_step(ctx)


def _batch(ctx: DemoContext) -> None:
    from polystack.jobs.demo import demo_step

    demo_step(ctx)


# Feature steps import lazily: `polystack --help` must not pay for them.
STEPS: list[Callable[[DemoContext], None]] = [register_models, _variants, _tune, predict, _serve, _batch]


@app.command()
def demo(
    home: Path | None = typer.Option(None, "--demo-home", help="Keep the demo's store here (default: a temp folder)."),
) -> None:
    """Build small models, register them, run them, and show what happened."""
    with tempfile.TemporaryDirectory(prefix="polystack-demo-") as tmp:
        work = Path(tmp)
        store = Store(StoreSettings(home=home or work / "home"))
        engine = Engine(store)
        console.print(Panel.fit(f"polystack demo — store at {store.home}", style="bold"))
        ctx = DemoContext(store=store, engine=engine, workdir=work, console=console)
        try:
            for step in STEPS:
                step(ctx)
        finally:
            engine.close()
            store.close()
        console.print("[green]demo finished[/]")
