"""polystack variants: build what is missing for a model and list every variant with the gate's figures."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

import typer
from rich.markup import escape
from rich.table import Table

from polystack.cli.app import app, console, err_console, open_store, print_json
from polystack.samples import SYNTHETIC_WARNING
from polystack.store import VariantRecord
from polystack.variants import build
from polystack.verify import summary

if TYPE_CHECKING:
    from polystack.cli.demo import DemoContext

_STYLE = {"verified": "green", "rejected": "yellow", "failed": "red", "pending": "dim"}


def _size(n: int | None) -> str:
    if n is None:
        return "-"
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024  # type: ignore[assignment]
    return str(n)


def variants_table(variants: list[VariantRecord], title: str | None = None) -> Table:
    table = Table(
        "id", "backend", "device", "precision", "options / recipe", "status", "figures", "size", "build", title=title
    )
    for v in variants:
        opts = ", ".join(f"{k}={val}" for k, val in sorted(v.options.items()) if k != "trusted")
        how = "; ".join(x for x in (opts, f"via {v.recipe}" if v.recipe else "source") if x)
        figures = "\n".join(x for x in (summary(v.metrics), v.error or "") if x)
        table.add_row(
            v.id,
            v.backend,
            v.device,
            v.precision,
            escape(how),
            f"[{_STYLE.get(v.status, '')}]{v.status}[/]",
            escape(figures),
            _size(v.size_bytes),
            f"{v.build_time_s:.2f} s" if v.build_time_s is not None else "-",
        )
    return table


@app.command()
def variants(
    ref: str = typer.Argument(..., metavar="NAME[:VERSION]"),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
    rebuild: bool = typer.Option(False, "--rebuild", help="Build and verify every variant again."),
    no_build: bool = typer.Option(False, "--no-build", help="Only list what is stored."),
    skip_compile: bool = typer.Option(False, "--skip-compile", help="Leave out torch.compile (slow to compile)."),
) -> None:
    """Build the variants a model is missing here, verify each against its source, and list them all."""
    store = open_store()
    record = store.get(ref)
    if no_build:
        found = store.variants.for_model(record)
    else:
        say = (lambda _m: None) if as_json else (lambda m: err_console.print(f"  {m}", markup=False, highlight=False))
        report = build(
            store,
            record,
            rebuild=rebuild,
            include=(lambda r: not r.options.get("compile")) if skip_compile else None,
            log=say,
        )
        if report.samples_synthesized and not as_json:
            err_console.print(f"[yellow]warning:[/] {SYNTHETIC_WARNING}")
        record, found = report.model, report.variants
        store.gc()  # bytes builds replaced an hour ago or more (``Store._retire``), and what killed writers left
    if as_json:
        print_json({"model": f"{record.name}:{record.version}", "variants": [v.to_dict() for v in found]})
        return
    if not found:
        console.print(f"{record.name}:{record.version} has no variants; run without --no-build to build them")
        return
    console.print(variants_table(found, title=f"{record.name}:{record.version} ({record.format})"))


def demo_step(ctx: DemoContext) -> None:
    """Demo: models from three frameworks (torch.export, skops, ONNX) and their verified variants."""
    from polystack import samples as samples_mod
    from polystack import zoo
    from polystack.formats import import_model

    ctx.step("specialize: register models from three frameworks, build and verify their variants")
    work = ctx.workdir / "specialize"
    work.mkdir(parents=True, exist_ok=True)
    x, _ = zoo.classification_data(16, 4, rows=128, seed=1)
    sources = [
        ("demo-torch-mlp", zoo.mlp_pt2(work / "mlp.pt2", train=True), x, "torch.export.save"),
        ("demo-sklearn", zoo.sklearn_pipeline_skops(work / "pipeline.skops"), None, "skops.io.dump"),
    ]
    records = []
    for name, path, data, how in sources:
        imported = import_model(path, work)
        given = samples_mod.check({"input": data}, imported.signature) if data is not None else None
        rows = given if given is not None else samples_mod.synthesize(imported.signature)
        record, _ = ctx.store.register(
            imported.artifact,
            name=name,
            format=imported.format,
            signature=imported.signature,
            tags={"source": "demo"},
            source_filename=path.name,
            settings=imported.settings,
            samples=samples_mod.to_npz(rows, work / f"{name}.npz"),
        )
        ctx.models[name] = record
        ctx.console.print(f"{name}:{record.version} registered from {path.name} ({how}, format {record.format})")
        records.append(record)
    if "demo-mlp" in ctx.models:
        records.append(ctx.models["demo-mlp"])
    for record in records:
        started = time.perf_counter()
        report = build(ctx.store, record, include=lambda r: not r.options.get("compile"))
        ctx.models[record.name] = report.model
        took = time.perf_counter() - started
        verified = sum(v.status == "verified" for v in report.variants)
        ctx.console.print(
            variants_table(
                report.variants,
                title=f"{record.name} ({record.format}): {verified}/{len(report.variants)} verified, built in {took:.1f} s",
            )
        )
        if report.samples_synthesized:
            ctx.console.print(f"[yellow]note:[/] {record.name} has no real samples; {SYNTHETIC_WARNING}")
    ctx.console.print(
        "rejected variants keep the figures that rejected them and are never served; "
        "torch.compile variants are left out here (7-17 s of compilation each): `polystack variants NAME` builds them"
    )
