"""JSON log lines (one object a line) carrying request ids and whatever ``extra`` a call adds, and
Triton's logging extension over them (``GET``/``POST /v2/logging``, gRPC ``LogSettings``).

The extension's settings are switches, one per level, as Triton has them: ``log_info``,
``log_warning``, ``log_error`` (true or false) and ``log_verbose_level`` (0: no debug lines; 1 or
more: polystack's debug lines, one level of them, among them a line for every HTTP request, as
``--access-log`` writes at info). ``log_file`` is ``""`` (stderr) or the file ``serve --log-file`` named,
and can not be changed over the protocol (Triton refuses it too). Their values at start are ``LogOptions``:
``--log-level``, then tritonserver's own flags over it (``--log-verbose``, ``--log-info``, ...). ``log_format`` takes Triton's two, ``"default"`` and ``"ISO8601"``,
which differ in Triton by the lines' times; polystack's lines are JSON with ISO 8601 times either way. Logging is the process's, so there is one ``SETTINGS``. OpenTelemetry's
own lines (an exporter that cannot reach its collector) go through the same JSON handler and switches.
"""

from __future__ import annotations

import contextlib
import io
import logging
import sys
import threading
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any, TextIO

import orjson

from polystack.errors import InvalidRequest, Unsupported, quote

_STANDARD = set(vars(logging.makeLogRecord({}))) | {"message", "asctime"}


# a field's text past this many characters is cut (saying how much was left out), a message's past four times
# it: a client's request id of 500 KB made a line of 500 KB, which log collectors split (Docker at 16 KiB) into
# lines no JSON parser reads
MAX_FIELD_CHARS = 2048


def _bounded(text: str, most: int = MAX_FIELD_CHARS) -> str:
    return text if len(text) <= most else f"{text[:most]}... ({len(text):,} characters)"


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        doc: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": _bounded(record.getMessage(), 4 * MAX_FIELD_CHARS),  # a model's print of a whole file, say
        }
        for k, v in vars(record).items():
            if k not in _STANDARD and not k.startswith("_"):
                doc[k] = _bounded(v) if isinstance(v, str) else v
        if record.exc_info:
            doc["exc"] = self.formatException(record.exc_info)
        return orjson.dumps(doc, default=str).decode()


_SWITCHES = ("log_info", "log_warning", "log_error")
_MAX_VERBOSE = 2**32 - 1  # a uint32, as in Triton's LogSettings message


FORMATS = ("default", "ISO8601")  # Triton's log formats; JSON lines with ISO 8601 times, both


@dataclass(frozen=True)
class LogOptions:
    """The log settings a server starts with: ``--log-level``, then tritonserver's flags over it, each
    None where not given (``serve --log-verbose``, ``--log-info``, ``--log-warning``, ``--log-error``,
    ``--log-format``, ``--log-file``). Checked when made, as Triton's parser checks them."""

    level: str = "info"
    verbose: int | None = None
    info: bool | None = None
    warning: bool | None = None
    error: bool | None = None
    format: str = "default"
    file: str = ""  # "": stderr

    def __post_init__(self) -> None:
        if self.verbose is not None and not 0 <= self.verbose <= _MAX_VERBOSE:
            raise InvalidRequest(f"--log-verbose takes 0 (off) or a level from 1, not {self.verbose}")
        if self.format not in FORMATS:  # as Triton reads it: exactly one of its two
            raise InvalidRequest(
                f"invalid argument for --log-format: {self.format!r}; give default or ISO8601 (polystack writes JSON "
                "lines with ISO 8601 times for both)"
            )


class LogSettings(logging.Filter):
    """Which of polystack's log lines are written: a filter on its handler, and the logger's level
    set to the lowest level written, so that a line nobody writes costs one comparison."""

    def __init__(self) -> None:
        super().__init__()
        self.switches = dict.fromkeys(_SWITCHES, True)
        self.verbose = 0
        self.format = "default"
        self.file = ""  # stderr

    def start(self, options: LogOptions) -> None:
        """The settings ``options`` give at start: its level, then each of Triton's flags given over it."""
        self.set_level(options.level)
        for key, on in zip(_SWITCHES, (options.info, options.warning, options.error), strict=True):
            if on is not None:
                self.switches[key] = on
        if options.verbose is not None:
            self.verbose = options.verbose
        self.format = options.format
        self._apply()

    def set_level(self, level: str) -> None:
        """Start-up's ``--log-level`` as switches: debug, info, warning or error and above."""
        order = ["debug", "info", "warning", "error"]
        name = {"warn": "warning", "critical": "error", "fatal": "error"}.get(level.lower(), level.lower())
        if name not in order:
            raise InvalidRequest(f"--log-level {level!r} is not one of {', '.join(order)}")
        at = order.index(name)
        self.verbose = 1 if at == 0 else 0
        self.switches = {"log_info": at <= 1, "log_warning": at <= 2, "log_error": True}
        self._apply()

    def filter(self, record: logging.LogRecord) -> bool:
        n = record.levelno
        if n >= logging.ERROR:
            return self.switches["log_error"]
        if n >= logging.WARNING:
            return self.switches["log_warning"]
        if n >= logging.INFO:
            return self.switches["log_info"]
        return self.verbose > 0

    def settings(self) -> dict[str, Any]:
        return {"log_file": self.file, **self.switches, "log_verbose_level": self.verbose, "log_format": self.format}

    def update(self, changes: Mapping[str, Any]) -> dict[str, Any]:
        """Apply ``changes`` (all or none: each is checked first; null leaves a setting as it is, and a key
        that names no setting is left unread, as in Triton) and return every setting."""
        switches = dict(self.switches)
        verbose = self.verbose
        form = self.format
        known = ["log_file", *_SWITCHES, "log_verbose_level", "log_format"]
        for key, value in changes.items():
            if key not in known:  # left unread, as Triton reads only the settings it has
                logging.getLogger("polystack.server").warning(
                    "log setting %s is not one of %s: left unread", quote(key), ", ".join(known)
                )
                continue
            if value is None:
                continue
            if key in switches:
                if not isinstance(value, bool):
                    raise InvalidRequest(f"expect boolean for '{key}': {key} must be true or false, not {quote(value)}")
                switches[key] = value
            elif key == "log_verbose_level":
                if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= _MAX_VERBOSE:
                    raise InvalidRequest(  # Triton's words, then what to send
                        f"expect int32 for 'log_verbose_level': it must be a whole number from 0 (off) up, not "
                        f"{quote(value)}"
                    )
                verbose = value
            elif key == "log_file":
                if value != self.file:  # Triton's words and code (UNSUPPORTED), then what to do
                    where = f"to {self.file}" if self.file else "to stderr"
                    raise Unsupported(
                        f"log file location can not be updated through network protocol: polystack logs {where}; "
                        "restart the server with --log-file (or redirect its stderr)"
                    )
            elif key == "log_format":
                if not isinstance(value, str):
                    raise InvalidRequest(f"expect string for 'log_format': give {' or '.join(map(repr, FORMATS))}")
                if value not in FORMATS:
                    raise InvalidRequest(  # Triton's words, then what to send
                        f"invalid argument for log_format, got: {value if len(value) <= 80 else quote(value)}; give "
                        "one of Triton's, "
                        f"{' or '.join(map(repr, FORMATS))} (polystack writes JSON lines with ISO 8601 times for both)"
                    )
                form = value
        self.switches, self.verbose, self.format = switches, verbose, form
        self._apply()
        return self.settings()

    def _apply(self) -> None:
        levels = [(self.verbose > 0, logging.DEBUG)] + [
            (self.switches[k], lv)
            for k, lv in zip(_SWITCHES, (logging.INFO, logging.WARNING, logging.ERROR), strict=True)
        ]
        logger = logging.getLogger("polystack")
        logger.setLevel(next((lv for on, lv in levels if on), logging.CRITICAL + 1))
        others = logging.getLogger("opentelemetry").handlers + logging.getLogger().handlers
        for handler in logger.handlers + [h for h in others if getattr(h, "_polystack_json", False)]:
            if self not in handler.filters:
                handler.addFilter(self)


SETTINGS = LogSettings()


def request_level(settings: LogSettings | None, access_log: bool) -> int | None:
    """The level of a transport's one line per request, or None for no line: ``--access-log`` writes it
    at info; the logging extension's ``log_verbose_level`` >= 1 writes it at debug, also when info is
    switched off (``settings`` None: a Ray Serve replica, without the extension)."""
    verbose = settings is not None and settings.verbose > 0
    if not (access_log or verbose):
        return None
    at_info = access_log and (settings is None or settings.switches["log_info"])
    return logging.INFO if at_info else logging.DEBUG


def configure(options: LogOptions | None = None) -> None:
    """Send polystack's logs, OpenTelemetry's (warnings and up), and any other logger's that propagate to the
    root (a Python model's own, a library's: warnings and up, Python's default), Python's warnings among them, to
    stderr (or ``options.file``, appended to, as Triton's --log-file) as JSON lines, with the settings ``options``
    give (idempotent)."""
    options = options or LogOptions()
    handler: logging.Handler | None = None
    if options.file:
        try:
            handler = logging.FileHandler(options.file, encoding="utf-8")
        except OSError as e:
            raise InvalidRequest(f"--log-file {options.file}: cannot open it: {e.strerror}") from None
    logging.captureWarnings(True)  # warnings.warn's lines: the "py.warnings" logger's, JSON lines too
    for name in ("polystack", "opentelemetry", ""):
        logger = logging.getLogger(name)
        ours = [h for h in logger.handlers if getattr(h, "_polystack_json", False)]
        if ours and handler is None:
            continue
        for old in ours:  # another file now (a second configure in one process: tests)
            logger.removeHandler(old)
        if handler is None:  # the real stderr, never the lines of ``output_as_log_lines`` (they come here)
            stream = sys.stderr
            handler = logging.StreamHandler(stream.stream if isinstance(stream, _LogLines) else stream)
        handler.setFormatter(JsonFormatter())
        handler._polystack_json = True  # type: ignore[attr-defined]
        logger.addHandler(handler)
        if name:
            logger.propagate = False
    logging.getLogger("opentelemetry").setLevel(logging.WARNING)
    SETTINGS.file = options.file  # as given, as Triton reports it
    SETTINGS.start(options)


class _LogLines(io.TextIOBase):
    """A text stream whose lines are log lines: what code the server runs writes to ``sys.stdout`` or ``sys.stderr``
    (a Python model's ``print``), each whole line a JSON line of the ``polystack.output`` logger at ``level``, with
    ``stream`` naming which. Each thread's partial line waits for its end (or ``_MAX_PARTIAL`` characters), so that
    two threads' writes do not mix. A write while this thread is already writing one (a log handler that failed and
    reports it to ``sys.stderr``) goes to the stream itself."""

    _MAX_PARTIAL = 65536

    def __init__(self, name: str, level: int, stream: TextIO) -> None:
        super().__init__()
        self.name, self.level, self.stream = name, level, stream
        self._logger = logging.getLogger("polystack.output")
        self._local = threading.local()

    @property
    def encoding(self) -> str:  # type: ignore[override]
        return getattr(self.stream, "encoding", None) or "utf-8"

    def writable(self) -> bool:
        return True

    def isatty(self) -> bool:
        return False

    def fileno(self) -> int:  # a library writing to the descriptor writes past the log, as C code does
        return self.stream.fileno()

    @property
    def buffer(self) -> Any:  # bytes written to it go past the log too (``sys.stdout.buffer.write``)
        return self.stream.buffer

    def write(self, text: str) -> int:
        local = self._local
        if getattr(local, "writing", False):
            return self.stream.write(text)
        local.writing = True
        try:
            pending = getattr(local, "partial", "") + text
            *lines, rest = pending.split("\n")
            if len(rest) > self._MAX_PARTIAL:
                lines, rest = [*lines, rest], ""
            local.partial = rest
            for line in lines:
                self._logger.log(self.level, line.rstrip("\r"), extra={"stream": self.name})
        finally:
            local.writing = False
        return len(text)

    def end(self) -> None:
        """Write this thread's partial line, if any."""
        if getattr(self._local, "partial", ""):
            self.write("\n")


@contextlib.contextmanager
def output_as_log_lines() -> Iterator[None]:
    """``sys.stdout`` and ``sys.stderr`` as log lines while the server runs (``_LogLines``: stdout's at info,
    stderr's at warning), so that a Python model's ``print`` is a JSON line too, and never splits one of
    polystack's (helper-265: 68 of 20,863 lines were glued to a model's text, which log collectors then drop).
    Output written to the descriptors themselves (C code's, gRPC's core) is not seen."""
    if isinstance(sys.stdout, _LogLines) or isinstance(sys.stderr, _LogLines):  # already (a server in a server)
        yield
        return
    before = sys.stdout, sys.stderr
    out, err = _LogLines("stdout", logging.INFO, sys.stdout), _LogLines("stderr", logging.WARNING, sys.stderr)
    sys.stdout, sys.stderr = out, err
    try:
        yield
    finally:
        sys.stdout, sys.stderr = before
        out.end()
        err.end()
