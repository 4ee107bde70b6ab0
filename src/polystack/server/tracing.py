"""OpenTelemetry spans for inference requests, and Triton's trace extension over them.

Off unless turned on: ``polystack serve --trace``, ``OTEL_EXPORTER_OTLP_ENDPOINT`` set at start, or
the trace extension at run time (``POST /v2/trace/setting {"trace_level": ["TIMESTAMPS"]}``, which
is tritonclient's ``update_trace_settings``). Off, a request costs one attribute read.

**Spans.** One ``polystack.infer`` span (kind SERVER) per sampled request, with the model, version
and request id, and Triton's timestamps as events: ``QUEUE_START`` (batched models),
``COMPUTE_START`` and ``COMPUTE_END`` (the model call that answered it; with batching, the merged
batch's). When the request carries W3C trace context (the ``traceparent`` HTTP header or gRPC
metadata, or whatever ``OTEL_PROPAGATORS`` names), the span is a child of the caller's.

**Export.** When the process has no tracer provider of its own (``opentelemetry-instrument`` and
tests set one), the first use sets up the SDK with a batch span processor and the exporter that
``OTEL_TRACES_EXPORTER`` names, as the OpenTelemetry specification has it: ``otlp`` (the default:
OTLP over HTTP/protobuf to ``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`` or ``OTEL_EXPORTER_OTLP_ENDPOINT``,
else http://localhost:4318; ``grpc`` protocol when its exporter package is installed), ``console``
(stdout) or ``none``. The service is called ``polystack`` unless ``OTEL_SERVICE_NAME`` or
``OTEL_RESOURCE_ATTRIBUTES`` names it. Spans still queued at shutdown are flushed, for at most 5 s
(a collector that is down must not hold the exit past an orchestrator's grace period). A caller's
trace whose flags say it is not sampled gets no span, and takes nothing from ``trace_count``.

**Settings** (Triton's trace extension in its ``opentelemetry`` mode): ``trace_level`` (``["OFF"]``
or ``["TIMESTAMPS"]``), ``trace_rate`` (trace one request in N), ``trace_count`` (traces left to
take, ``-1`` for no limit; it counts down as they are taken), ``trace_mode`` (``opentelemetry``,
read only). Global, and per model: a model's setting left unset follows the global one, and ``null``
clears a setting (a model's back to the global one, a global one back to its value at start).
``trace_file`` and ``log_frequency`` belong to Triton's own trace files and are refused: ``trace_file``
in Triton's words and code (UNSUPPORTED), ``log_frequency`` as a bad request (``null`` for them changes
nothing).
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from typing import Any, cast

from polystack import __version__
from polystack.errors import BackendUnavailable, InvalidRequest, Unavailable, Unsupported, quote

log = logging.getLogger("polystack.server.tracing")

_NO_SPAN = contextlib.nullcontext()  # reusable: entering it does nothing and keeps no state
MODE = "opentelemetry"
SETTINGS = ("trace_level", "trace_rate", "trace_count", "trace_mode")
_MAX_RATE = 2**32 - 1  # Triton's ranges: rate a uint32, count an int32 of at least -1
_MAX_COUNT = 2**31 - 1
Carrier = Callable[[], Mapping[str, Any]]  # the request's headers or metadata, read only when a span is made
_INTEGER = re.compile(r"-?[0-9]{1,19}")
_PROVIDER: Any = None  # the SDK provider set up here, once per process (the global one can be set once)


@dataclass
class _Scope:
    """Settings of one scope, None where a model follows the global one, and its sampling state."""

    level: bool | None = None  # True: TIMESTAMPS, False: OFF
    rate: int | None = None
    count: int | None = None  # traces left to take; -1: no limit
    seen: int = 0  # requests since the last one traced

    def empty(self) -> bool:
        return self.level is None and self.rate is None and self.count is None


class Tracing:
    def __init__(self, enabled: bool | None = None, *, rate: int = 1, count: int = -1) -> None:
        """``enabled`` None: on when ``OTEL_EXPORTER_OTLP_ENDPOINT`` is set. ``rate`` and ``count`` are the
        global settings at start (``--trace-rate``, ``--trace-count``)."""
        if enabled is None:
            enabled = bool(os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT"))
        self._start = _Scope(level=enabled, rate=_rate(rate), count=_count(count))
        self._global = replace(self._start)
        self._models: dict[str, _Scope] = {}
        self._tracer: Any = None
        self._extract: Any = None  # opentelemetry's propagate.extract, and use_span and the SERVER kind
        self._use_span: Any = None
        self._kind: Any = None
        self.active = False  # some scope traces: the one thing a request reads while tracing is off
        if enabled:
            self.setup()
        self._refresh()

    def setup(self) -> None:
        """Get a tracer, setting up export from the ``OTEL_*`` variables if nothing else has; raises
        ``BackendUnavailable`` / ``Unavailable`` (503 to a client of the extension, exit 2 at start) with
        what to install or set."""
        global _PROVIDER
        if self._tracer is not None:
            return
        try:
            from opentelemetry import trace
        except ImportError:
            raise BackendUnavailable(
                "tracing needs OpenTelemetry: pip install 'polystack[serve]' (opentelemetry-sdk and its OTLP exporter)"
            ) from None
        try:  # builds the propagators OTEL_PROPAGATORS names, and fails on one not installed
            from opentelemetry import propagate
        except Exception as e:
            raise Unavailable(
                f"tracing cannot start: {e} (OTEL_PROPAGATORS; the default is tracecontext,baggage)"
            ) from None
        provider = trace.get_tracer_provider()
        if isinstance(provider, trace.ProxyTracerProvider):  # nobody configured one: ours, from OTEL_*
            provider = _sdk_provider()
            trace.set_tracer_provider(provider)
            _PROVIDER = provider
        self._extract, self._use_span, self._kind = propagate.extract, trace.use_span, trace.SpanKind.SERVER
        self._tracer = provider.get_tracer("polystack.server", __version__)

    def shutdown(self, timeout_s: float = 5.0) -> None:
        """Export the spans still queued, waiting at most ``timeout_s``, when polystack set up the export.

        The provider is flushed, not shut down: it is the process's for good (a second server in the
        process uses it too), and its threads are daemons. The SDK's flush ignores its own timeout, and an
        export to a collector that is down retries for ~10 s, so the flush runs in a thread of its own."""
        provider = _PROVIDER
        if self._tracer is None or provider is None:
            return
        flush = threading.Thread(target=provider.force_flush, name="trace-flush", daemon=True)
        flush.start()
        flush.join(timeout_s)
        if flush.is_alive():
            log.warning(
                "spans still queued were not exported in time; is the collector up?",
                extra={"waited_s": timeout_s, "endpoint": os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT", "")},
            )

    # -- per request -------------------------------------------------------------------------------
    def span(
        self, model: str, version: int, request_id: str, carrier: Carrier | None = None
    ) -> contextlib.AbstractContextManager[Any]:
        """A span around one request of ``model`` when its settings sample it, else a shared no-op."""
        if not self.active:
            return _NO_SPAN
        budget = self._sample(model)
        if budget is None:
            return _NO_SPAN
        parent = self._extract(carrier()) if carrier is not None else None
        span = self._tracer.start_span(
            "polystack.infer",
            context=parent,
            kind=self._kind,
            attributes={"model": model, "version": version, "id": request_id},
        )
        if not span.is_recording():  # the caller's trace is not sampled: nothing to record or count
            return _NO_SPAN
        if budget.count is not None and budget.count > 0:
            budget.count -= 1
        return cast(contextlib.AbstractContextManager[Any], self._use_span(span, end_on_exit=True))

    @staticmethod
    def stages(span: Any, queued: int | None, compute_start: int, compute_end: int) -> None:
        """Triton's TIMESTAMPS events on ``span``, from ``time.perf_counter_ns()`` readings."""
        epoch = time.time_ns() - time.perf_counter_ns()  # perf_counter's zero, on the clock spans use
        if queued is not None:
            span.add_event("QUEUE_START", timestamp=epoch + queued)
        span.add_event("COMPUTE_START", timestamp=epoch + compute_start)
        span.add_event("COMPUTE_END", timestamp=epoch + compute_end)

    def _sample(self, model: str) -> _Scope | None:
        """Whether this request of ``model`` is one to trace: the scope whose ``trace_count`` it takes
        from if so, else None."""
        scope = self._models.get(model)
        g = self._global
        level = g.level if scope is None or scope.level is None else scope.level
        if not level:
            return None
        counter = scope or g  # a model with settings of its own counts its own requests
        rate = g.rate if scope is None or scope.rate is None else scope.rate
        counter.seen += 1
        if counter.seen < (rate or 1):
            return None
        counter.seen = 0
        budget = scope if scope is not None and scope.count is not None else g
        return None if budget.count == 0 else budget

    # -- the trace extension -----------------------------------------------------------------------
    def settings(self, model: str | None = None) -> dict[str, Any]:
        """The settings in effect for ``model`` (None: the global ones), as Triton's extension spells them."""
        scope = self._models.get(model) if model else None
        g = self._global
        level = g.level if scope is None or scope.level is None else scope.level
        rate = g.rate if scope is None or scope.rate is None else scope.rate
        count = g.count if scope is None or scope.count is None else scope.count
        shown = {
            "trace_level": ["TIMESTAMPS"] if level else ["OFF"],
            "trace_rate": str(rate),
            "trace_count": str(count),
            "trace_mode": MODE,
        }
        # and the span processor's settings, and the collector's address where one is given, as tritonserver 2.51
        # lists them in its opentelemetry mode (helper-119): what --trace-config opentelemetry,... or OTEL_* set
        for setting, variable in _OTEL_SETTINGS.items():
            value = os.environ.get(variable) or _SDK_DEFAULTS.get(setting)
            if value is not None:
                shown[setting] = value
        return shown

    def update(self, model: str | None, changes: Mapping[str, Any]) -> dict[str, Any]:
        """Apply ``changes`` (all or none: each is checked first; keys that name no setting are left unread,
        as in Triton) and return the settings in effect."""
        unknown = [key for key in changes if key not in SETTINGS and key not in ("trace_file", "log_frequency")]
        if unknown:  # left unread, as Triton reads only the settings it has
            log.warning("trace settings %s are not among %s: left unread", unknown, ", ".join(SETTINGS))
        parsed = {key: _parse(key, value) for key, value in changes.items() if key not in unknown}
        for key in ("trace_mode", "trace_file", "log_frequency"):  # checked: nothing they can change
            parsed.pop(key, None)
        if parsed.get("trace_level"):
            self.setup()  # turning tracing on without an exporter: set it up now, or refuse
        if model:
            scope = self._models.setdefault(model, _Scope())
            for key, value in parsed.items():
                setattr(scope, key.removeprefix("trace_"), value)
            if scope.empty():
                del self._models[model]
        else:
            for key, value in parsed.items():
                field = key.removeprefix("trace_")
                setattr(self._global, field, getattr(self._start, field) if value is None else value)
        self._refresh()
        return self.settings(model)

    def _refresh(self) -> None:
        self.active = self._tracer is not None and (
            bool(self._global.level) or any(s.level for s in self._models.values())
        )


def _parse(key: str, value: Any) -> Any:
    """One setting's new value (None: clear it), or InvalidRequest saying what it takes."""
    if key == "trace_file" or key == "log_frequency":
        if value is None:
            return None
        if key == "trace_file":  # Triton's words and code (UNSUPPORTED), then what to do
            raise Unsupported(
                "trace file location can not be updated through network protocol: polystack exports spans through "
                "OpenTelemetry (set OTEL_EXPORTER_OTLP_ENDPOINT or OTEL_TRACES_EXPORTER before starting the server)"
            )
        raise InvalidRequest(
            f"{key!r} belongs to Triton's trace files; polystack exports spans through OpenTelemetry "
            "(set OTEL_EXPORTER_OTLP_ENDPOINT or OTEL_TRACES_EXPORTER before starting the server)"
        )
    if value is None:
        return None
    if key == "trace_level":
        levels = [value] if isinstance(value, str) else value
        if not isinstance(levels, list) or not levels or not all(isinstance(v, str) for v in levels):
            raise InvalidRequest(f'trace_level must be ["OFF"] or ["TIMESTAMPS"], not {quote(value)}')
        if "TENSORS" in levels:
            raise InvalidRequest('polystack traces timestamps (spans), not tensors: use ["TIMESTAMPS"]')
        if levels == ["OFF"]:
            return False
        if set(levels) == {"TIMESTAMPS"}:
            return True
        raise InvalidRequest(f'trace_level must be ["OFF"] or ["TIMESTAMPS"] (OFF alone), not {quote(value)}')
    if key == "trace_rate":
        return _rate(_integer(key, value))
    if key == "trace_count":
        return _count(_integer(key, value))
    if key == "trace_mode" and _single(key, value) != MODE:
        raise InvalidRequest(f"trace_mode is {MODE!r} in polystack and can not be changed, not {quote(value)}")
    return MODE


def _single(key: str, value: Any) -> Any:
    if isinstance(value, list):  # gRPC sends every setting as a list of strings
        if len(value) != 1:
            raise InvalidRequest(f"{key} takes one value, not {quote(value)}")
        return value[0]
    return value


def _integer(key: str, value: Any) -> int:
    value = _single(key, value)
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, str) and _INTEGER.fullmatch(value.strip()):
        return int(value)
    shown = value if isinstance(value, str) and len(value) <= 80 else quote(value)  # a client's: kept short
    raise InvalidRequest(  # Triton's words, then what to send
        f"Unable to parse '{key}', got: {shown}; {key} is a whole number as a string (e.g. \"100\")"
    )


def _rate(rate: int) -> int:
    if rate > _MAX_RATE:  # Triton's words
        raise InvalidRequest(
            f"Unable to parse 'trace_rate', value is out of range [ 0, {_MAX_RATE} ], got: {rate}; trace_rate is "
            'one request traced in that many; set trace_level ["OFF"] to stop tracing'
        )
    if rate < 1:
        raise InvalidRequest(
            f"trace_rate must be between 1 and {_MAX_RATE} (trace one request in that many), not {rate}; "
            'set trace_level ["OFF"] to stop tracing'
        )
    return rate


def _count(count: int) -> int:
    if count < -1:  # Triton's words
        raise InvalidRequest(
            f"Unable to parse 'trace_count'. Expecting value >= -1, got:{count}; trace_count must be -1 (no limit) or "
            f"between 0 and {_MAX_COUNT}"
        )
    if count > _MAX_COUNT:
        raise InvalidRequest(f"trace_count must be -1 (no limit) or between 0 and {_MAX_COUNT}, not {count}")
    return count


def _sdk_provider() -> Any:
    """An SDK tracer provider exporting as the ``OTEL_*`` variables say (see the module's docstring)."""
    try:
        from opentelemetry.sdk.resources import SERVICE_NAME, Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter
    except ImportError:
        raise BackendUnavailable("tracing needs the OpenTelemetry SDK: pip install 'polystack[serve]'") from None
    resource = Resource.create()
    if str(resource.attributes.get(SERVICE_NAME, "")).startswith("unknown_service"):
        resource = resource.merge(Resource({SERVICE_NAME: "polystack"}))
    provider = TracerProvider(resource=resource, shutdown_on_exit=False)  # flushed by shutdown(), bounded
    # empty is unset, as the specification has it (a templated ``OTEL_TRACES_EXPORTER=${X}``)
    names = [n.strip().lower() for n in (os.environ.get("OTEL_TRACES_EXPORTER") or "otlp").split(",") if n.strip()]
    for name in names:
        if name == "none":
            continue
        if name == "console":
            exporter: Any = ConsoleSpanExporter()
        elif name == "otlp":
            exporter = _otlp_exporter()
        else:
            raise Unavailable(f"OTEL_TRACES_EXPORTER names {name!r}; polystack exports with otlp, console or none")
        provider.add_span_processor(BatchSpanProcessor(exporter))
    return provider


def _otlp_exporter() -> Any:
    protocol = (
        os.environ.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL") or os.environ.get("OTEL_EXPORTER_OTLP_PROTOCOL")
    ) or "http/protobuf"
    if protocol == "http/protobuf":
        try:
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        except ImportError:
            raise BackendUnavailable(
                "OTLP export needs opentelemetry-exporter-otlp-proto-http: pip install 'polystack[serve]'"
            ) from None
        return OTLPSpanExporter()
    if protocol == "grpc":
        try:
            from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter as GrpcExporter
        except ImportError:
            raise BackendUnavailable(
                "OTLP over gRPC needs opentelemetry-exporter-otlp-proto-grpc (pip install it), "
                "or set OTEL_EXPORTER_OTLP_PROTOCOL=http/protobuf"
            ) from None
        return GrpcExporter()
    raise Unavailable(f"the OTLP protocol {protocol!r} is not one polystack exports with: http/protobuf or grpc")


# tritonserver's --trace-config opentelemetry settings, as the OpenTelemetry SDK's variables that say the same
_OTEL_SETTINGS = {
    "url": "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
    "bsp_max_queue_size": "OTEL_BSP_MAX_QUEUE_SIZE",
    "bsp_schedule_delay": "OTEL_BSP_SCHEDULE_DELAY",
    "bsp_max_export_batch_size": "OTEL_BSP_MAX_EXPORT_BATCH_SIZE",
}
_SDK_DEFAULTS = {"bsp_max_export_batch_size": "512", "bsp_schedule_delay": "5000", "bsp_max_queue_size": "2048"}
_LEVELS_ON = {"timestamps", "true", "on", "min", "max"}  # Triton's level words that trace timestamps
_LEVELS_OFF = {"off", "false"}
TRITON_RATE = 1000  # tritonserver's trace rate where --trace-config gives none


@dataclass(frozen=True)
class TraceFlags:
    """What tritonserver's ``--trace-config`` options say, as polystack's settings: tracing on or off (None: not
    said), the rate and count (None: not said), and the OpenTelemetry SDK variables its ``opentelemetry,``
    settings stand for."""

    level: bool | None = None
    rate: int | None = None
    count: int | None = None
    environment: tuple[tuple[str, str], ...] = ()
    names_service: bool = False  # its resource names the service: OTEL_SERVICE_NAME, which would win, goes


def trace_flags(items: list[str]) -> TraceFlags:
    """tritonserver's ``--trace-config [<mode>,]<setting>=<value>`` options, checked, in Triton's words where it
    refuses them. polystack traces in Triton's ``opentelemetry`` mode: its ``triton`` mode (trace files) is
    refused, saying what to give instead, unless ``mode=opentelemetry`` is given, which leaves them unread (as
    Triton warns and does); the level ``TENSORS`` is refused too. A level ``OFF`` turns tracing off whatever
    else is given, as in Triton."""
    levels: list[bool] = []
    rate = count = None
    mode = ""
    environment: dict[str, str] = {}
    resources: list[str] = []
    triton: list[str] = []  # the trace-file mode's settings
    for item in items:
        head, eq, value = item.partition("=")
        scope, _, setting = head.rpartition(",") if "," in head else ("", "", head)
        scope = scope.lower()
        if not eq or not setting:
            raise InvalidRequest(f"--trace-config option format is '<trace mode>,<setting>=<value>'. Got {item}")
        if scope == "triton":
            triton.append(item)
        elif scope not in ("", "opentelemetry"):
            raise InvalidRequest(
                f'invalid value for trace mode option: {scope}. Available options are "triton" and "opentelemetry"'
            )
        elif scope == "opentelemetry":
            if setting == "resource":
                resources.append(value)
            elif setting == "url":
                environment[_OTEL_SETTINGS[setting]] = value if "://" in value else f"http://{value}"  # Triton's form
            elif setting in _OTEL_SETTINGS:
                if not _INTEGER.fullmatch(value.strip()) or int(value) < 1:
                    raise InvalidRequest(f"--trace-config {item}: give a whole number from 1")
                environment[_OTEL_SETTINGS[setting]] = value.strip()
            else:
                raise InvalidRequest(
                    f"--trace-config {item}: Triton's opentelemetry settings are url, resource, "
                    f"{', '.join(s for s in _OTEL_SETTINGS if s != 'url')}"
                )
        elif setting == "mode":
            mode = value.lower()
            if mode not in ("triton", "opentelemetry"):
                raise InvalidRequest(
                    f'invalid value for trace mode option: {value}. Available options are "triton" and "opentelemetry"'
                )
            if mode == "triton":
                triton.append(item)
        elif setting == "level":
            word = value.lower()
            if word == "tensors":
                raise InvalidRequest(
                    "--trace-config level=TENSORS: polystack's spans carry Triton's timestamps, not tensors; give "
                    "level=TIMESTAMPS"
                )
            if word not in _LEVELS_ON | _LEVELS_OFF:
                raise InvalidRequest(f"invalid value for trace level option: {value}")
            levels.append(word in _LEVELS_ON)
        elif setting in ("rate", "count"):
            if not _INTEGER.fullmatch(value.strip()):
                raise InvalidRequest(f"--trace-config {setting}={value}: give a whole number")
            if setting == "rate":
                rate = _rate(int(value))
            else:
                count = _count(int(value))
        else:
            raise InvalidRequest(
                f"--trace-config {item}: Triton's settings are level, rate, count and mode, and opentelemetry,<setting>"
            )
    if triton and mode != "opentelemetry":
        raise InvalidRequest(
            f"--trace-config {triton[0]}: Triton's trace files (its triton mode) are not in polystack, whose traces "
            "are OpenTelemetry spans: give --trace-config mode=opentelemetry, and opentelemetry,url=<collector>"
        )
    if triton:
        log.warning("Triton's trace-file settings are not read in its opentelemetry mode", extra={"settings": triton})
    queue = int(environment.get("OTEL_BSP_MAX_QUEUE_SIZE", os.environ.get("OTEL_BSP_MAX_QUEUE_SIZE") or 2048))
    batch = environment.get("OTEL_BSP_MAX_EXPORT_BATCH_SIZE")
    if batch is not None and int(batch) > queue:  # the SDK refuses it when tracing starts
        raise InvalidRequest(
            f"--trace-config opentelemetry,bsp_max_export_batch_size={batch} is more than the span queue holds "
            f"({queue}); give bsp_max_queue_size={batch} or more too"
        )
    if resources:  # after the environment's own, so that the flag's win where both name a key (Triton's)
        given = os.environ.get("OTEL_RESOURCE_ATTRIBUTES", "")
        environment["OTEL_RESOURCE_ATTRIBUTES"] = ",".join([*([given] if given else []), *resources])
    level = None if not levels else all(levels)  # OFF anywhere: off, as in Triton
    names_service = any(r.strip().startswith("service.name=") or ",service.name=" in r for r in resources)
    return TraceFlags(level, rate, count, tuple(environment.items()), names_service)
