"""polystack doctor: what this machine is and which runtimes it can use."""

from __future__ import annotations

import typer
from rich.table import Table

from polystack.cli.app import app, console, print_json
from polystack.fleet.doctor import backends_table, machine, report


@app.command()
def doctor(as_json: bool = typer.Option(False, "--json", help="Print JSON.")) -> None:
    """Describe this machine: CPU and ISA, memory, accelerators, installed runtimes and their devices."""
    rep = report()
    backends = backends_table()
    if as_json:
        print_json({**rep.to_dict(), "fingerprint": machine()[0], "backends": backends})
        return
    console.print(f"[bold]python[/]        {rep.python} on {rep.platform}")
    console.print(
        f"[bold]cpu[/]           {rep.cpu_model} ({rep.cpu_arch}), {rep.logical_cores} logical cores"
        + (f", {rep.physical_cores} physical" if rep.physical_cores else "")
    )
    console.print(f"[bold]isa[/]           {', '.join(rep.isa) or 'none detected'}")
    console.print(f"[bold]memory[/]        {rep.memory_bytes / 2**30:.1f} GiB")
    console.print(f"[bold]accelerators[/]  {', '.join(rep.accelerators) or 'none'}")
    console.print(f"[bold]fingerprint[/]   {machine()[0]}")
    table = Table("runtime", "version", "devices / execution providers", title="runtimes")
    for r in rep.runtimes:
        version = r.version or ("installed" if r.installed else "[dim]not installed[/]")
        table.add_row(r.name, version, ", ".join(r.devices) + (f" {r.detail}" if r.detail else ""))
    console.print(table)
    bt = Table("backend", "available", "formats", "devices", title="polystack backends")
    for b in backends:
        bt.add_row(b["backend"], "yes" if b["available"] else "no", ", ".join(b["formats"]), ", ".join(b["devices"]))
    console.print(bt)
