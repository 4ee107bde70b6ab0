"""The demo's tuning step: measure the demo models' verified variants and keep a plan per profile."""

from __future__ import annotations

from typing import TYPE_CHECKING

from rich.markup import escape
from rich.table import Table

from polystack.tuning.tuner import TuneOptions, tune

if TYPE_CHECKING:
    from polystack.cli.demo import DemoContext

# (model, profile, SLO): a few seconds each on 2 cores
PLANS = (
    ("demo-mlp", "realtime", None),
    ("demo-mlp", "server", 10.0),  # dynamic batching under a p99 bound
    ("demo-torch-mlp", "realtime", None),
    ("demo-sklearn", "batch", None),
)
BUDGET_S = 6.0


def demo_step(ctx: DemoContext) -> None:
    ctx.step("tune: measure verified variants under MLPerf LoadGen scenarios, keep a plan per profile")
    table = Table("model", "profile", "chosen", "settings", "headline", "searched", title="plans on this machine")
    explanations: list[str] = []
    for name, profile, slo in PLANS:
        record = ctx.models.get(name)
        if record is None:
            continue
        record = ctx.store.get(record.ref)  # the latest row (the variants step may have added samples)
        ctx.console.print(
            f"polystack tune {name} --profile {profile}"
            + (f" --slo-ms {slo:g}" if slo else "")
            + f" --budget-s {BUDGET_S:g}",
            markup=False,
            style="dim",
        )
        options = TuneOptions(slo_ms=slo, budget_s=BUDGET_S, duration_ms=200, min_duration_ms=50, memory=False)
        result = tune(ctx.store, record, profile, options)
        if result.chosen is None or result.settings is None:
            table.add_row(name, profile, "-", "-", escape(result.explanation), "")
            continue
        settings = result.settings
        knobs = settings.describe().split(", ", 1)[1] if ", " in settings.describe() else ""
        table.add_row(
            name,
            profile,
            escape(settings.label),
            escape(knobs),
            escape(result.profile.headline(result.chosen)),
            f"{result.outcome.configs_measured}/{result.outcome.configs_total} in {result.elapsed_s:.1f} s",
        )
        explanations.append(f"{name} {profile}: {result.explanation}")
    ctx.console.print(table)
    for line in explanations:
        ctx.console.print(f"  {line}", markup=False)
    ctx.console.print(
        "plans are stored per model x profile x machine: `polystack plan show NAME`; serving and batch jobs "
        "load the plan's variant and settings; `polystack tune NAME --report FILE.html` draws every point",
        style="dim",
    )
