"""Model commands: register, models, show, remove."""

from __future__ import annotations

import datetime
import tempfile
from pathlib import Path

import typer
from rich.markup import escape
from rich.table import Table

from polystack.cli.app import app, console, err_console, open_store, print_json
from polystack.errors import InvalidRequest
from polystack.formats import import_model
from polystack.store.models import SYNTHESIZED


def parse_tags(tags: list[str]) -> dict[str, str]:
    out: dict[str, str] = {}
    for t in tags:
        key, sep, value = t.partition("=")
        if not sep or not key:
            raise InvalidRequest(f"tag {t!r} is not KEY=VALUE; write --tag team=search")
        out[key] = value
    return out


def _when(ts: float) -> str:
    return datetime.datetime.fromtimestamp(ts).strftime("%Y-%m-%d %H:%M:%S")


@app.command()
def register(
    path: Path = typer.Argument(..., help="The saved model file."),
    name: str | None = typer.Option(None, "--name", "-n", help="Model name (default: the file name's stem)."),
    tag: list[str] = typer.Option([], "--tag", "-t", help="KEY=VALUE, repeatable."),
    format: str | None = typer.Option(None, "--format", "-f", help="Force a format instead of detecting it."),
    as_json: bool = typer.Option(False, "--json", help="Print the record as JSON."),
    samples: Path | None = typer.Option(
        None, "--samples", help="Sample inputs (.npz by input name, .npy, .parquet) for verification and calibration."
    ),
    trust: list[str] = typer.Option(
        [], "--trust", help="A type a skops file may load beyond skops' defaults (repeatable)."
    ),
    tolerance: list[str] = typer.Option(
        [], "--tolerance", help="Gate tolerance KEY=VALUE (repeatable), e.g. int8_min_cosine=0.95."
    ),
    labels: list[str] = typer.Option(
        [],
        "--labels",
        metavar="OUTPUT=FILE",
        help="Class labels of an output, one per line (Triton's label file), for classification results "
        "(repeatable; FILE alone for a model with one output; registering again replaces the named outputs' "
        "labels and keeps the others).",
    ),
) -> None:
    """Register a model file; the same bytes under the same name register once."""
    from polystack import samples as samples_mod
    from polystack.labels import label_settings, parse_label_options
    from polystack.verify import Tolerance

    tags = parse_tags(tag)
    store = open_store()
    with tempfile.TemporaryDirectory(prefix="polystack-import-") as tmp:
        imported = import_model(path, Path(tmp), format=format, trusted=trust)
        settings = dict(imported.settings)
        if labels:
            settings.update(label_settings(parse_label_options(labels, imported.signature)))
        if tolerance:
            tol = Tolerance.parse(tolerance)
            tol.check_outputs(imported.signature)
            settings["tolerance"] = tol.model_dump(exclude_defaults=True)
        if samples is not None:
            data = samples_mod.read(samples, imported.signature)
            given = samples_mod.rows(data, imported.signature)
            if imported.signature.batched and given < samples_mod.FEW_ROWS:
                err_console.print(
                    f"[yellow]warning:[/] the samples hold {given} rows: the gate judges every variant on them (and "
                    f"int8 is calibrated on half), so its figures mean little below {samples_mod.FEW_ROWS}; give more",
                    highlight=False,
                )
        else:
            data = samples_mod.synthesize(imported.signature)
            settings[SYNTHESIZED] = True
        samples_file = samples_mod.to_npz(data, Path(tmp) / "samples.npz")
        added = store.add(
            imported.artifact,
            name=name or path.stem,
            format=imported.format,
            signature=imported.signature,
            tags=tags,
            source_filename=path.name,
            settings=settings,
            samples=samples_file,
        )
    record, created = added.record, added.created
    if samples is None and record.settings.get(SYNTHESIZED):
        err_console.print(f"[yellow]warning:[/] {samples_mod.SYNTHETIC_WARNING}")
    changed = "new samples" if added.samples_replaced else "tolerances given again" if tolerance and not created else ""
    if changed and store.variants.for_model(record):
        err_console.print(
            f"[yellow]note:[/] {record.name}:{record.version} has {changed}; its variants were built and checked "
            f"before: `polystack variants {record.name}:{record.version} --rebuild` builds and checks them again",
            highlight=False,
        )
    if as_json:
        print_json({**record.to_dict(), "created": created})
        return
    verb = "registered" if created else "already registered"
    console.print(
        f"[bold]{record.name}:{record.version}[/] {verb} ({record.format}, {record.size_bytes} bytes, "
        f"sha256:{record.digest[:12]})"
    )
    for t in record.signature.inputs:
        console.print(f"  input  {t.describe()}", markup=False)
    for t in record.signature.outputs:
        console.print(f"  output {t.describe()}", markup=False)


@app.command("models")
def list_models(as_json: bool = typer.Option(False, "--json", help="Print JSON.")) -> None:
    """List registered models and their versions."""
    records = open_store().models.list()
    if as_json:
        print_json([r.to_dict() for r in records])
        return
    table = Table("name", "version", "format", "inputs", "outputs", "size", "registered", "tags")
    for r in records:
        table.add_row(
            r.name,
            str(r.version),
            r.format,
            escape("; ".join(t.describe() for t in r.signature.inputs)),
            escape("; ".join(t.describe() for t in r.signature.outputs)),
            f"{r.size_bytes:,}",
            _when(r.created_at),
            ", ".join(f"{k}={v}" for k, v in r.tags.items()),
        )
    console.print(table if records else "no models registered yet: polystack register PATH")


@app.command()
def show(
    ref: str = typer.Argument(..., metavar="NAME[:VERSION]"),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """Show one model version (the latest when no version is given)."""
    record = open_store().get(ref)
    if as_json:
        print_json(record.to_dict())
        return
    console.print(f"[bold]{record.name}:{record.version}[/]")
    console.print(f"  format     {record.format}")
    console.print(f"  digest     sha256:{record.digest}")
    console.print(f"  size       {record.size_bytes:,} bytes")
    console.print(f"  registered {_when(record.created_at)} from {record.source_filename or '?'}")
    if record.tags:
        console.print(f"  tags       {', '.join(f'{k}={v}' for k, v in record.tags.items())}")
    for t in record.signature.inputs:
        console.print(f"  input      {t.describe()}", markup=False)
    for t in record.signature.outputs:
        console.print(f"  output     {t.describe()}", markup=False)


@app.command()
def remove(ref: str = typer.Argument(..., metavar="NAME[:VERSION]")) -> None:
    """Remove one version, or every version of a name; blobs no one uses are deleted."""
    store = open_store()
    removed = store.remove(ref)
    for r in removed:
        console.print(f"removed {r.name}:{r.version}")
    swept = store.gc()  # bytes replaced, or left by writers killed mid-way, an hour ago or more
    if swept:
        console.print(
            f"deleted {swept} file{'s' if swept > 1 else ''} nothing names (replaced, or left by interrupted "
            "writers, an hour ago or more)"
        )
