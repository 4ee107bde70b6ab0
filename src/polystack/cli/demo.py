"""polystack demo: the main path end to end on models it builds itself (no downloads)."""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import numpy as np
import typer
from rich.panel import Panel

from polystack.cli.app import app, console
from polystack.config import StoreSettings
from polystack.engine import Engine
from polystack.examples import mlp_onnx
from polystack.formats import import_model
from polystack.store import Store


def _step(title: str) -> None:
    console.rule(f"[bold]{title}")


@app.command()
def demo(
    home: Path | None = typer.Option(None, "--demo-home", help="Keep the demo's store here (default: a temp folder)."),
) -> None:
    """Build a small model, register it, run it, and show what happened."""
    with tempfile.TemporaryDirectory(prefix="polystack-demo-") as tmp:
        work = Path(tmp)
        store = Store(StoreSettings(home=home or work / "home"))
        console.print(Panel.fit(f"polystack demo — store at {store.home}", style="bold"))

        _step("1. build a model (an MLP written as ONNX, random weights)")
        path = mlp_onnx(work / "mlp.onnx", sizes=(16, 64, 64, 4))
        console.print(f"wrote {path.name}: {path.stat().st_size:,} bytes")

        _step("2. register it")
        imported = import_model(path, work)
        record, created = store.register(
            imported.artifact, name="demo-mlp", format=imported.format, signature=imported.signature,
            tags={"source": "demo"}, source_filename=path.name,
        )
        console.print(f"{record.name}:{record.version} {'registered' if created else 'already registered'}, "
                      f"sha256:{record.digest[:12]}")
        for t in record.signature.inputs + record.signature.outputs:
            console.print(f"  {t.describe()}", markup=False)

        _step("3. predict")
        engine = Engine(store)
        entry = engine.load(record.ref)
        x = np.random.default_rng(1).standard_normal((3, 16)).astype(np.float32)
        started = time.perf_counter()
        y = engine.infer(record.name, {"x": x})["y"]
        took_ms = (time.perf_counter() - started) * 1000
        console.print(f"backend {entry.spec.backend} on {entry.spec.device}, loaded in {entry.load_time_s * 1000:.1f} ms")
        console.print(f"input x {list(x.shape)} -> output y {list(y.shape)} in {took_ms:.2f} ms")
        console.print(f"y[0] = {np.array2string(y[0], precision=4)}")
        engine.close()
        store.close()
        console.print("[green]demo finished[/]")
