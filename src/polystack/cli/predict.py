"""polystack predict: run one model on inputs from a file."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from polystack.cli.app import app, console, open_store
from polystack.engine import Engine, default_spec, spec_for_variant
from polystack.errors import InvalidRequest
from polystack.store import ModelRef
from polystack.tensorfile import read_inputs, to_jsonable, write_outputs


@app.command()
def predict(
    ref: str = typer.Argument(..., metavar="NAME[:VERSION]"),
    input: Path = typer.Option(..., "--input", "-i", help=".npy (one input), .npz or .json {name: list}"),
    output: Path | None = typer.Option(None, "--output", "-o", help="Write outputs to .npy/.npz/.json."),
    backend: str | None = typer.Option(None, "--backend", help="Run on this backend instead of the default."),
    device: str | None = typer.Option(None, "--device", help="cpu (default), cuda:0, ... as the backend offers."),
    variant: str | None = typer.Option(
        None, "--variant", help="Run this verified variant (an id from `polystack variants NAME`)."
    ),
) -> None:
    """Run a registered model once on inputs from a file; print or save the outputs."""
    if variant and (backend or device):  # a variant runs where it was built (it was ignored, silently)
        given = " and ".join(f for f, v in (("--backend", backend), ("--device", device)) if v)
        raise InvalidRequest(f"--variant runs on the backend and device it was built for; leave out {given}")
    store = open_store()
    model_ref = ModelRef.parse(ref)
    record = store.get(model_ref)
    inputs = read_inputs(input, record.signature)
    engine = Engine(store)
    try:
        spec = spec_for_variant(store, variant) if variant else default_spec(store, record, backend, device or "cpu")
        entry = engine.load(record.ref, spec)
        outputs = engine.infer(record.name, inputs, version=record.version)
    finally:
        engine.close()
    if output is not None:
        write_outputs(output, outputs)
        console.print(
            f"{record.name}:{record.version} on {entry.spec.backend}/{entry.spec.device}: "
            f"wrote {', '.join(outputs)} to {output}",
            highlight=False,
        )
    else:
        print(json.dumps(to_jsonable(outputs)))
