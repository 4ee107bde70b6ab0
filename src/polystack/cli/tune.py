"""polystack tune / polystack plan show: measure variants for a deployment profile, keep the plan."""

from __future__ import annotations

import datetime
import sys
from pathlib import Path
from typing import Any

import typer
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from polystack.cli.app import app, console, err_console, open_store, print_json
from polystack.errors import InvalidRequest
from polystack.store import PlanRecord

plan_app = typer.Typer(help="Stored tuning plans.", no_args_is_help=True)
app.add_typer(plan_app, name="plan")

PROFILE_HELP = (
    "realtime (lowest p99), server (max QPS at p99 <= SLO), batch (max throughput), edge (smallest within SLO)"
)

METRICS: dict[str, tuple[tuple[str, str], ...]] = {
    "realtime": (("p50 ms", "p50_ms"), ("p99 ms", "p99_ms"), ("ES p90 ms", "early_stop_p90_ms")),
    "edge": (("mem+artifact", "footprint_bytes"), ("p99 ms", "p99_ms")),
    "batch": (("samples/s", "throughput"), ("batch p99 ms", "batch_p99_ms")),
    "server": (("QPS", "qps"), ("p99 ms", "p99_ms"), ("mean batch", "mean_batch_size")),
}


def _fmt(v: Any, key: str = "") -> str:
    if v is None:
        return "-"
    if key.endswith("bytes") and isinstance(v, (int, float)):
        return f"{v / 1e6:.1f} MB"
    if isinstance(v, float):
        return f"{v:,.0f}" if abs(v) >= 1000 else f"{v:.3g}"
    return str(v)


def _stands(trial: dict[str, Any]) -> bool:
    """Whether ``trial`` is the run its configuration was judged by: the chosen one, or a finalist's median."""
    return bool(trial.get("chosen") or trial.get("median_of"))


def results_table(data: dict[str, Any], limit: int = 25) -> Table:
    """The final-rung (or best) trials per configuration, best first, the chosen one marked."""
    profile = data["profile"]
    cols = METRICS.get(profile, ())
    trials = [r for r in data["measurements"] if r.get("kind") == "trial"]
    top_rung: dict[str, dict[str, Any]] = {}
    for t in trials:  # each configuration's run that decided (the median of a finalist's), else its latest longest
        key = f"{t['variant_id']}/{t['settings']}"
        held = top_rung.get(key)
        if held is None or _stands(t) or (not _stands(held) and t["rung"] >= held["rung"]):
            top_rung[key] = t
    rows = sorted(top_rung.values(), key=lambda t: (not t.get("chosen"), -t["rung"], not t.get("feasible")))
    table = Table("", "variant", "settings", *(c[0] for c in cols), "run", "verdict", title=f"{profile}: measured")
    for t in rows[:limit]:
        table.add_row(
            "[bold green]*[/]" if t.get("chosen") else "",
            escape(str(t["label"])),
            escape(str(t["settings"])),
            *(_fmt(t.get(k), k) for _, k in cols),
            f"{t['duration_ms']} ms" + (f", median of {t['median_of']}" if t.get("median_of") else ""),
            escape(t.get("reason") or t.get("error") or ("ok" if t.get("feasible") else "-")),
        )
    if len(rows) > limit:
        table.caption = f"{len(rows) - limit} more configurations in --json / --report"
    return table


@app.command()
def tune(
    ref: str = typer.Argument(..., metavar="NAME[:VERSION]"),
    profile: str = typer.Option("realtime", "--profile", "-p", help=PROFILE_HELP),
    slo_ms: float | None = typer.Option(None, "--slo-ms", help="p99 bound for server and edge (default 50 / 100)."),
    budget_s: float = typer.Option(120.0, "--budget-s", help="Time for the whole search, seconds."),
    duration_ms: int = typer.Option(300, "--duration-ms", help="LoadGen minimum duration of a full run."),
    strategy: str = typer.Option("auto", "--strategy", help="auto, exhaustive or halving."),
    threads: list[int] = typer.Option([], "--threads", help="Thread counts to try (repeatable; default 1,2,4..cores)."),
    no_memory: bool = typer.Option(False, "--no-memory", help="Skip the per-variant memory probe (subprocess)."),
    as_json: bool = typer.Option(False, "--json", help="Print the result as JSON."),
    report: Path | None = typer.Option(None, "--report", help="Write a self-contained HTML report here."),
) -> None:
    """Measure the verified variants under the profile's MLPerf scenario; store and print the plan."""
    from polystack.tuning import TuneOptions
    from polystack.tuning import report as report_mod
    from polystack.tuning import tune as run_tune
    from polystack.tuning.profiles import PROFILES

    if profile not in PROFILES:
        raise InvalidRequest(f"unknown profile {profile!r}; choose one of {', '.join(PROFILES)}")
    if strategy not in ("auto", "exhaustive", "halving"):
        raise InvalidRequest(f"unknown strategy {strategy!r}; choose auto, exhaustive or halving")
    if any(t < 1 for t in threads):
        raise InvalidRequest("--threads must be >= 1")
    if report is not None and not report.parent.is_dir():  # checked now, not once the budget is spent
        what = "is a file" if report.parent.exists() else "does not exist"
        raise InvalidRequest(f"--report {report}: the folder {report.parent} {what}; name a folder that exists")
    if report is not None and report.is_dir():
        raise InvalidRequest(f"--report {report} is a folder; name the HTML file to write")
    store = open_store()
    record = store.get(ref)
    options = TuneOptions(
        slo_ms=slo_ms,
        budget_s=budget_s,
        duration_ms=duration_ms,
        strategy=strategy,  # type: ignore[arg-type]
        threads=threads or None,
        memory=not no_memory,
    )
    show = not as_json and sys.stderr.isatty()
    with Progress(
        TextColumn("[bold]tune[/]"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("{task.description}"),
        console=err_console,
        disable=not show,
        transient=True,
    ) as bar:
        task = bar.add_task("gathering variants", total=None)

        def progress(message: str, done: int, total: int) -> None:
            bar.update(task, description=escape(message), completed=done, total=max(total, 1))

        result = run_tune(store, record, profile, options, progress=progress)
    data = result.to_dict()
    if as_json:
        print_json(data)
    else:
        console.print(results_table(data))
        for note in result.notes:
            console.print(f"[yellow]note:[/] {escape(note)}")
        if result.settings is not None:
            console.print(
                f"[bold green]plan[/] {record.name}:{record.version} {profile}: {escape(result.settings.describe())}"
            )
        console.print(escape(result.explanation))
        console.print(
            f"[dim]{result.outcome.strategy}, {result.outcome.configs_measured} of {result.outcome.configs_total} "
            f"configurations measured in {result.elapsed_s:.1f} s; machine {result.fingerprint}[/]"
        )
    if report is not None:  # after the results: a file that cannot be written loses none of them
        page = report_mod.render({**data, "machine": result.machine, "created_at": datetime.datetime.now().timestamp()})
        try:
            report.write_text(page, encoding="utf-8")
        except OSError as e:
            raise InvalidRequest(f"--report {report}: {e.strerror or e}; the plan is stored (`polystack plan show`)") from None
        if not as_json:
            console.print(f"report: {report}")
    if result.chosen is None:
        raise typer.Exit(1)


@plan_app.command("show")
def plan_show(
    ref: str = typer.Argument(..., metavar="NAME[:VERSION]"),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
    report: Path | None = typer.Option(None, "--report", help="Write the HTML report of one plan (with --profile)."),
    profile: str | None = typer.Option(None, "--profile", "-p", help="Only this profile."),
) -> None:
    """Show the stored plans of a model; plans measured on another machine are marked stale."""
    from polystack.tuning import report as report_mod
    from polystack.tuning.plan import PlanSettings, fingerprint, plan_status, usable
    from polystack.tuning.profiles import PROFILES

    if profile is not None and profile not in PROFILES:
        raise InvalidRequest(f"unknown profile {profile!r}; choose one of {', '.join(PROFILES)}")
    store = open_store()
    record = store.get(ref)
    here = fingerprint()
    plans = [p for p in store.plans.for_model(record) if profile is None or p.profile == profile]

    def state(plan: PlanRecord) -> str:  # fresh, stale (another machine's) or unusable (its variant rejected since)
        status = plan_status(plan, here)
        return "unusable" if status == "fresh" and not usable(store, record, plan) else status

    if report is not None:
        fresh = [p for p in plans if p.fingerprint == here] or plans
        if not fresh:
            raise InvalidRequest(f"{record.name}:{record.version} has no plan to report; run `polystack tune` first")
        chosen = fresh[0]
        page = report_mod.render(report_mod.plan_data(record, chosen, plan_status(chosen, here)))
        report.write_text(page, encoding="utf-8")
    if as_json:
        print_json(
            [
                {
                    "model": f"{record.name}:{record.version}",
                    "status": state(p),
                    **{k: v for k, v in p.to_dict().items() if k != "measurements"},
                    "measurements": p.measurements,
                }
                for p in plans
            ]
        )
        return
    if not plans:
        what = f"no {profile} plan" if profile is not None else "no plans yet"
        console.print(
            f"{record.name}:{record.version} has {what}: polystack tune {record.name}:{record.version} "
            f"--profile {profile or 'realtime'}"
        )
        return
    table = Table(
        "profile", "status", "plan", "explanation", "measured", title=f"plans of {record.name}:{record.version}"
    )
    shown = {"fresh": "[green]fresh[/]", "unusable": "[red]unusable[/] (its variant was rejected since)"}
    for p in plans:
        status = state(p)
        settings = PlanSettings.from_dict(p.settings)
        table.add_row(
            p.profile,
            shown.get(status, f"[yellow]stale[/] ({p.fingerprint})"),
            escape(settings.describe()),
            escape(p.explanation),
            datetime.datetime.fromtimestamp(p.created_at).strftime("%Y-%m-%d %H:%M"),
        )
    console.print(table)
    if any(plan_status(p, here) == "stale" for p in plans):
        console.print(
            f"[yellow]stale plans were measured on another machine (this one is {here}); re-run polystack tune[/]"
        )
    if any(state(p) == "unusable" for p in plans):
        console.print(
            "[red]unusable plans name a variant no longer verified (or removed): serve and batch use the default "
            f"instead; re-run polystack tune {record.name}:{record.version}[/]"
        )
    if report is not None:
        console.print(f"report: {report}")
