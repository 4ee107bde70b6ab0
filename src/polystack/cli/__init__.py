"""The command line: one module per command group, all on one Typer app."""

from __future__ import annotations

import logging
import sys

from polystack.cli import batch, demo, doctor, models, predict, serve, tune, variants  # noqa: F401  (registers the commands)
from polystack.cli.app import app, err_console
from polystack.errors import PolystackError


def main() -> None:
    """Run the CLI; a polystack error or an unreadable file exits 2 with one line on stderr."""
    try:
        app()
    except PolystackError as e:
        # one line, whatever the message holds (a Python model's traceback, Triton's "At:" lines, is on lines of its
        # own: joined here)
        line = " ".join(part.strip() for part in e.message.splitlines() if part.strip())
        err_console.print(f"error: {line}", highlight=False, markup=False, soft_wrap=True)
        _log_file(e.message)
        sys.exit(2)
    except OSError as e:
        err_console.print(
            f"error: {e.strerror or e}: {e.filename or ''}".rstrip(": "), highlight=False, markup=False, soft_wrap=True
        )
        sys.exit(2)


def _log_file(message: str) -> None:
    """The error, in the log file too where ``serve --log-file`` named one (its lines go there, not to stderr,
    so a start that fails says why in the file a deployment reads, as Triton's does)."""
    if "polystack.server.logs" in sys.modules:
        from polystack.server import logs

        if logs.SETTINGS.file:
            logging.getLogger("polystack.server").error("the server did not start", extra={"error": message})
