"""The command line: one module per command group, all on one Typer app."""

from __future__ import annotations

import logging
import sys
from typing import NoReturn

import typer

from polystack.errors import PolystackError

try:  # typer's own copy of click (0.2x and newer), else click's
    from typer._click.exceptions import ClickException, UsageError
except ImportError:  # pragma: no cover - older typer
    from click.exceptions import ClickException, UsageError  # type: ignore[assignment]


def main() -> None:
    """Run the CLI. A polystack error, a mistake in the command line (click's) or an unreadable file exits 2 with one
    line on stderr that says what to do; Ctrl-C exits 130 saying so, also while the commands are imported."""
    try:
        from polystack.cli import batch, demo, doctor, models, predict, serve, tune, variants  # noqa: F401  (commands)
        from polystack.cli.app import app

        code = app(standalone_mode=False)  # click's errors come here, where they are said in one line
    except KeyboardInterrupt:
        _say("stopped (Ctrl-C)")
        sys.exit(130)
    except UsageError as e:  # click's words, then where the command's options are told
        if not e.format_message():  # a group run bare: its help, printed already
            sys.exit(e.exit_code)
        _fail(f"{e.format_message().rstrip('.')}; see {e.ctx.command_path if e.ctx else 'polystack'} --help")
    except ClickException as e:
        _fail(e.format_message(), e.exit_code)
    except typer.Abort as e:  # typer's answer to an EOFError (a file that ended before its data did), and click's
        if isinstance(e.__cause__, KeyboardInterrupt):  # to Ctrl-C (typer before 0.2x)
            _say("stopped (Ctrl-C)")
            sys.exit(130)
        _fail(f"an input file ended too soon ({e.__cause__ or 'end of file'}); check that it was written whole")
    except PolystackError as e:
        _log_file(e.message)
        _fail(e.message)
    except OSError as e:
        _fail(f"{e.strerror or e}: {e.filename or ''}".rstrip(": "))
    if code == 130:  # typer's answer to Ctrl-C in a command
        _say("stopped (Ctrl-C)")
    sys.exit(code if isinstance(code, int) else 0)


def _say(line: str) -> None:
    from polystack.cli.app import err_console

    err_console.print(line, highlight=False, markup=False, soft_wrap=True)


def _fail(message: str, code: int = 2) -> NoReturn:
    """``error: message`` on one line of stderr, whatever lines the message holds (a Python model's traceback,
    Triton's "At:" lines, are joined), then exit ``code``."""
    _say("error: " + " ".join(part.strip() for part in message.splitlines() if part.strip()))
    sys.exit(code)


def _log_file(message: str) -> None:
    """The error, in the log file too where ``serve --log-file`` named one (its lines go there, not to stderr,
    so a start that fails says why in the file a deployment reads, as Triton's does)."""
    if "polystack.server.logs" in sys.modules:
        from polystack.server import logs

        if logs.SETTINGS.file:
            logging.getLogger("polystack.server").error("the server did not start", extra={"error": message})
