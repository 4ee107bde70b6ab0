"""The Typer app and what every command shares: the store location, consoles, JSON output."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

import typer
from rich.console import Console

from polystack.config import StoreSettings
from polystack.errors import InvalidRequest
from polystack.store import Store

app = typer.Typer(
    name="polystack",
    help="Register a model once; build, verify, measure and serve its fastest correct variant.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
# Piped output (CI logs, files) gets wide tables instead of rich's 80-column default.
console = Console(emoji=False) if sys.stdout.isatty() or "COLUMNS" in os.environ else Console(width=160, emoji=False)
err_console = Console(stderr=True, emoji=False)  # no :x: in a message turned into an emoji

_state: dict[str, Path | None] = {"home": None}


@app.callback()
def _root(
    home: Path | None = typer.Option(
        None, "--home", envvar="POLYSTACK_HOME", help="Model store folder (default ~/.polystack)."
    ),
) -> None:
    _state["home"] = home


def store_settings() -> StoreSettings:
    home = _state["home"]
    return StoreSettings(home=home) if home is not None else StoreSettings()


def open_store() -> Store:
    settings = store_settings()
    if settings.home.exists() and not settings.home.is_dir():  # mkdir's words were "File exists"
        raise InvalidRequest(f"the store's home {settings.home} is a file; give --home (or POLYSTACK_HOME) a folder")
    return Store(settings)


def print_json(data: Any) -> None:
    sys.stdout.write(json.dumps(data, indent=2, default=str) + "\n")
