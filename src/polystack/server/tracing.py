"""Traces of inference requests, in Triton's two trace modes, and Triton's trace extension over them.

Off unless turned on: ``polystack serve --trace``, ``OTEL_EXPORTER_OTLP_ENDPOINT`` set at start,
``--trace-config level=TIMESTAMPS``, or the trace extension at run time (``POST /v2/trace/setting
{"trace_level": ["TIMESTAMPS"]}``, which is tritonclient's ``update_trace_settings``). Off, a request costs one
attribute read. The mode is chosen at start: Triton's ``triton`` mode (trace files, trace_files.py) when
``--trace-config triton,file=<path>`` or ``mode=triton`` is given, else ``opentelemetry``.

Either way a sampled request is a ``RequestTrace`` (request_trace.py): Triton's timestamps as it passes the front
end (``Front``), the queue and the model, its ensemble steps' as children, handed once it is answered to its sink.

**Spans** (opentelemetry mode, ``_Spans``): tritonserver 2.51's three spans a request, exported once it is answered:
``InferRequest`` (the front end's), in it one named after the model (Triton's ``triton.*`` attributes), in that
``compute``, with Triton's timestamps as their events. When the request carries W3C trace context (the
``traceparent`` HTTP header or gRPC metadata, or whatever ``OTEL_PROPAGATORS`` names), ``InferRequest`` is a child
of the caller's span.

**Export.** When the process has no tracer provider of its own (``opentelemetry-instrument`` and
tests set one), the first use sets up the SDK with a batch span processor and the exporter that
``OTEL_TRACES_EXPORTER`` names, as the OpenTelemetry specification has it: ``otlp`` (the default:
OTLP over HTTP/protobuf to ``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`` or ``OTEL_EXPORTER_OTLP_ENDPOINT``,
else http://localhost:4318; ``grpc`` protocol when its exporter package is installed), ``console``
(stdout) or ``none``. The service is called ``polystack`` unless ``OTEL_SERVICE_NAME`` or
``OTEL_RESOURCE_ATTRIBUTES`` names it. Spans still queued at shutdown are flushed, for at most 5 s
(a collector that is down must not hold the exit past an orchestrator's grace period). A caller's
trace whose flags say it is not sampled gets no spans, and takes nothing from ``trace_count``.

**Trace files** (triton mode): a sampled request's timestamps, the front end's among them (``Front``), and at
level ``TENSORS`` its tensors, written in Triton's form once it is answered; an ensemble's steps are its children.

**Settings** (Triton's trace extension): ``trace_level`` (``["OFF"]``, ``["TIMESTAMPS"]``, and in the triton mode
``["TENSORS"]`` or both), ``trace_rate`` (trace one request in N), ``trace_count`` (traces left to take, ``-1`` for
no limit; it counts down as they are taken), ``trace_mode`` (read only), and in the triton mode ``log_frequency``
and ``trace_file`` (read only, as in tritonserver 2.51). Global, and per model: a model's setting left unset
follows the global one, and ``null`` clears a setting (a model's back to the global one, a global one back to its
value at start). In the opentelemetry mode ``trace_file`` and ``log_frequency`` are refused: ``trace_file`` in
Triton's words and code (UNSUPPORTED), ``log_frequency`` as a bad request (``null`` for them changes nothing).
"""

from __future__ import annotations

import contextlib
import contextvars
import json
import logging
import os
import re
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from typing import Any

from polystack import __version__
from polystack.errors import BackendUnavailable, InvalidRequest, PolystackError, Unavailable, Unsupported, quote
from polystack.server.request_trace import TENSORS, TIMESTAMPS, RequestTrace, Sink
from polystack.server.trace_files import Collector, TraceFile

log = logging.getLogger("polystack.server.tracing")

_NO_SPAN = contextlib.nullcontext()  # reusable: entering it does nothing and keeps no state
MODE = "opentelemetry"
FILES = "triton"  # Triton's own mode: trace files (trace_files.py)
SETTINGS = ("trace_level", "trace_rate", "trace_count", "trace_mode")
FILE_SETTINGS = ("log_frequency", "trace_file")  # the trace-file mode's
_MAX_RATE = 2**32 - 1  # Triton's ranges: rate a uint32, count an int32 of at least -1
_MAX_COUNT = 2**31 - 1
Carrier = Callable[[], Mapping[str, Any]]  # the request's headers or metadata, read only when a span is made
_INTEGER = re.compile(r"-?[0-9]{1,19}")
_PROVIDER: Any = None  # the SDK provider set up here, once per process (the global one can be set once)
# the trace of the request being run (an ensemble's steps are its children); None outside one
_CURRENT: contextvars.ContextVar[RequestTrace | None] = contextvars.ContextVar("polystack_trace", default=None)
_RECEIPT = {"HTTP": ("HTTP_RECV_START", "HTTP_RECV_END"), "GRPC": ("GRPC_WAITREAD_START", "GRPC_WAITREAD_END")}


@dataclass
class _Scope:
    """Settings of one scope, None where a model follows the global one, and its sampling state."""

    level: int | None = None  # trace_files.TIMESTAMPS | TENSORS; 0: OFF
    rate: int | None = None
    count: int | None = None  # traces left to take; -1: no limit
    log_frequency: int | None = None  # the trace-file mode's: traces a numbered file holds (0: into the file)
    seen: int = 0  # requests since the last one traced
    collector: Collector | None = None  # the trace-file mode's: where its traces go, made at its first trace

    def empty(self) -> bool:
        return self.level is None and self.rate is None and self.count is None and self.log_frequency is None


class Front:
    """The front end's side of one request's trace: when it received the request, and (``sent``) when it answered,
    which ends the trace. Made by a front end only while tracing is on (``Tracing.active``)."""

    __slots__ = ("protocol", "received", "trace")

    def __init__(self, protocol: str, received_start: int, received_end: int) -> None:
        self.protocol = protocol  # "HTTP" or "GRPC"
        self.received = (received_start, received_end)
        self.trace: RequestTrace | None = None  # set when the request is traced

    def sent(self, start: int, end: int) -> None:
        """The answer went: its timestamps, and the trace to its sink."""
        trace = self.trace
        if trace is not None:
            trace.stamp(f"{self.protocol}_SEND_START", start)
            trace.stamp(f"{self.protocol}_SEND_END", end)
            self.abandon()

    def abandon(self) -> None:
        """No answer went (the client went away): the trace to its sink, without sending timestamps."""
        trace, self.trace = self.trace, None
        if trace is not None:
            for name, ns in zip(_RECEIPT[self.protocol], self.received, strict=True):
                trace.stamp(name, ns)
            trace.end()


class _Traced:
    """A trace around one request's run: REQUEST_END as it leaves (and what its run failed with); the trace ends
    there unless a front end answers for it (``Front.sent``). Its steps see it as the current trace."""

    __slots__ = ("_token", "front", "trace")

    def __init__(self, trace: RequestTrace, front: Front | None) -> None:
        self.trace = trace
        self.front = front

    def __enter__(self) -> RequestTrace:
        self._token = _CURRENT.set(self.trace)
        return self.trace

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None, tb: object) -> None:
        _CURRENT.reset(self._token)
        trace = self.trace
        # refused before its run (Triton traces none): a step, or a request none of whose steps ran
        if isinstance(error, PolystackError) and not error.in_run and (trace is not trace.root or len(trace.group) == 1):
            trace.drop()
            return
        trace.error = error
        if self.front is not None and (error is None or isinstance(error, PolystackError)):  # an answer is due
            trace.stamp("INFER_RESPONSE_COMPLETE", time.perf_counter_ns())
        self.trace.stamp("REQUEST_END", time.perf_counter_ns())
        if self.front is None:
            self.trace.end()


# Triton's OpenTelemetry spans (helper-121): the front end's request span, a span of the model's run in it (an
# ensemble's steps' in the ensemble's), and the model call's in that, each with these timestamps as events
_FRONT_EVENTS = {
    "HTTP": ("HTTP_RECV_START", "HTTP_RECV_END", "INFER_RESPONSE_COMPLETE", "HTTP_SEND_START", "HTTP_SEND_END"),
    "GRPC": ("GRPC_WAITREAD_START", "GRPC_WAITREAD_END", "INFER_RESPONSE_COMPLETE", "GRPC_SEND_START", "GRPC_SEND_END"),
    "": (),
}
_RUN_EVENTS = ("REQUEST_START", "QUEUE_START", "REQUEST_END")
_COMPUTE_EVENTS = ("COMPUTE_START", "COMPUTE_INPUT_END", "COMPUTE_OUTPUT_START", "COMPUTE_END")


class _Spans:
    """The OpenTelemetry mode's sink: a request's trace as tritonserver 2.51's spans, started as it begins (``open``:
    a Python model it runs gets its run span's context) and ended once it is answered (a request refused before its
    run ends and exports none, as in Triton), all of kind SERVER:

    - ``InferRequest``, a child of the caller's span (``traceparent``), from the front end's receipt to its answer,
      with the front end's timestamps as events;
    - in it, a span named after the model, from REQUEST_START to REQUEST_END, with Triton's attributes
      (``triton.model_name``, ``triton.model_version``, ``triton.trace_id``, ``triton.trace_parent_id``, and
      ``triton.request_id`` when the request has an id) and REQUEST_START, QUEUE_START, REQUEST_END as events; an
      ensemble's steps' spans are in its own, and so are those of a call a Python model sent with its request's trace;
    - in that, ``compute``, the model call (a batched request's is its batch's), with the COMPUTE_ events.

    A run that failed gives its spans an ERROR status with the error's message (Triton sets none)."""

    def __init__(self) -> None:
        self.tracer: Any = None
        # OpenTelemetry's modules and names, bound with the tracer (``bind``): a traced request imports nothing
        self._trace: Any = None
        self._propagate: Any = None
        self._context: Any = None  # opentelemetry.context.Context
        self._server: Any = None  # SpanKind.SERVER
        self._error: Any = None  # a Status of StatusCode.ERROR, given its message

    def bind(self, tracer: Any) -> None:
        """Make spans with ``tracer`` from now on (``Tracing.setup``, once OpenTelemetry is known to be there)."""
        from opentelemetry import propagate, trace
        from opentelemetry.context import Context
        from opentelemetry.trace import SpanKind, Status, StatusCode

        self._trace, self._propagate, self._context, self._server = trace, propagate, Context, SpanKind.SERVER
        self._error = lambda message: Status(StatusCode.ERROR, message)
        self.tracer = tracer

    def sampled(self, context: Any) -> bool:
        """Whether the caller's trace (if any) records: one whose flags say it does not gets no spans."""
        found = self._trace.get_current_span(context).get_span_context()
        return not found.is_valid or found.trace_flags.sampled

    def dropped(self) -> None:
        pass

    def open(self, started: RequestTrace, received: int | None) -> None:
        """Start the spans of a request that begins (its trace, at REQUEST_START): a request's own, ``InferRequest``
        from the front end's receipt (``received``) and its run's in it; a step's (or a call a model made with its
        request's trace) run in its parent's. Started as it begins, the run's span is the context a Python model's
        ``request.trace().get_context()`` hands on, as Triton's."""
        if self.tracer is None:
            return
        trace = self._trace
        begun = started.stamps[0][1] if started.stamps else time.perf_counter_ns()
        parent = started.parent
        if parent is None:
            offset = time.time_ns() - time.perf_counter_ns()  # perf_counter's zero on the clock spans use, once a
            # request (its steps' too), so that its events fall within its spans
            request = self._span("InferRequest", started.context or self._context(), (received or begun) + offset)
            inside = request
        else:
            if parent.spans is None:
                return
            request, inside, offset = None, parent.spans[1], parent.spans[2]
        run = self._span(started.model, trace.set_span_in_context(inside), begun + offset)
        started.spans = (request, run, offset)
        carrier: dict[str, str] = {}  # its context as Triton hands it to a model: the propagation headers as JSON
        self._propagate.inject(carrier, context=trace.set_span_in_context(run))
        started.handed = json.dumps(carrier, separators=(",", ":"))

    def add(self, root: RequestTrace) -> None:
        """End and export the spans ``open`` started for ``root`` and its steps, with their events."""
        if self.tracer is None or root.spans is None:
            return
        trace = self._trace
        request, _, offset = root.spans  # offset: perf_counter's zero on the clock its spans started on
        stamps = {name: ns + offset for name, ns in root.stamps}
        if not stamps:
            return
        self._events(request, _FRONT_EVENTS[root.protocol], stamps)
        self._fail(request, root.error)
        for step in root.group:
            at = stamps if step is root else {name: ns + offset for name, ns in step.stamps}
            if step.spans is None or "REQUEST_START" not in at:
                continue
            run = step.spans[1]
            run.set_attributes({
                "triton.model_name": step.model,
                "triton.model_version": step.version,
                "triton.trace_id": step.id,
                "triton.trace_parent_id": step.parent.id if step.parent is not None else 0,
                **({"triton.request_id": step.request_id} if step.request_id else {}),
            })  # fmt: skip
            self._events(run, _RUN_EVENTS, at)
            self._fail(run, step.error)
            if "COMPUTE_START" in at:
                compute = self._span("compute", trace.set_span_in_context(run), at["COMPUTE_START"])
                self._events(compute, _COMPUTE_EVENTS, at)
                compute.end(end_time=at.get("COMPUTE_END", at["COMPUTE_START"]))
            run.end(end_time=at.get("REQUEST_END", max(at.values())))
        request.end(end_time=max(stamps.values()))

    def _span(self, name: str, context: Any, start: int) -> Any:
        return self.tracer.start_span(name, context=context, kind=self._server, start_time=start)

    @staticmethod
    def _events(span: Any, names: tuple[str, ...], at: Mapping[str, int]) -> None:
        for name in names:
            if name in at:
                span.add_event(name, timestamp=at[name])

    def _fail(self, span: Any, error: BaseException | None) -> None:
        if error is not None:
            message = error.message if isinstance(error, PolystackError) else f"{type(error).__name__}: {error}"
            span.set_status(self._error(message))


class Tracing:
    def __init__(
        self,
        enabled: bool | None = None,
        *,
        rate: int = 1,
        count: int = -1,
        levels: int = TIMESTAMPS,
        mode: str = MODE,
        file: str = "",
        log_frequency: int = 0,
        shown: Mapping[str, str] | None = None,
    ) -> None:
        """``enabled`` None: on when ``OTEL_EXPORTER_OTLP_ENDPOINT`` is set (OpenTelemetry mode). ``rate`` and
        ``count`` are the global settings at start (``--trace-rate``, ``--trace-count``); ``levels`` what it takes
        when on (TIMESTAMPS, TENSORS: Triton's level bits, TENSORS in the trace-file mode alone). ``mode`` ``triton`` writes Triton's trace files (``file``, ``log_frequency``) in place of
        spans. ``shown``: opentelemetry settings the trace settings list as they were given (``--trace-config
        opentelemetry,url=`` without a scheme, ``resource=``)."""
        self.mode = mode
        self._shown = dict(shown or {})
        self._flushed = False  # shut down once: a second shutdown (the close's, after the exit's) waits for nothing
        self.file = TraceFile(file) if mode == FILES and file else None  # None in the trace-file mode: no file given
        if enabled is None:
            enabled = mode == MODE and bool(os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT"))
        level = levels if enabled else 0
        self._start = _Scope(level=level, rate=_rate(rate), count=_count(count), log_frequency=log_frequency)
        self._global = replace(self._start)
        self._models: dict[str, _Scope] = {}
        self._tracer: Any = None
        self._extract: Any = None  # opentelemetry's propagate.extract
        self._spans = _Spans()  # the OpenTelemetry mode's sink
        self.active = False  # some scope traces: the one thing a request reads while tracing is off
        if enabled and mode == MODE:
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
        self._extract = propagate.extract
        self._tracer = provider.get_tracer("polystack.server", __version__)
        self._spans.bind(self._tracer)

    def shutdown(self, timeout_s: float = 5.0) -> None:
        """Export the spans still queued, waiting at most ``timeout_s``, when polystack set up the export.

        The provider is flushed, not shut down: it is the process's for good (a second server in the
        process uses it too), and its threads are daemons. The SDK's flush ignores its own timeout, and an
        export to a collector that is down retries for ~10 s, so the flush runs in a thread of its own. Once: a second
        call returns at once."""
        if self._flushed:
            return
        self._flushed = True
        if self.file is not None:  # the traces scopes hold go out, and the file's array ends
            for scope in (self._global, *self._models.values()):
                if scope.collector is not None:
                    scope.collector.flush()
            self.file.close()
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
        self,
        model: str,
        version: int,
        request_id: str,
        carrier: Carrier | None = None,
        front: Front | None = None,
        step: bool = False,
        ensemble: bool = False,
        called: bool = False,
        parent: RequestTrace | None = None,
    ) -> contextlib.AbstractContextManager[Any]:
        """A ``RequestTrace`` around one request of ``model`` when its settings sample it, else a shared no-op.
        ``carrier`` gives the caller's trace context (OpenTelemetry); ``front`` the front end's timestamps (it ends
        the trace once it has answered); an ensemble's ``step`` is traced as a child of its ensemble's trace, or not
        at all; a request a model sent (``called``) as a child of the ``parent`` trace it was sent with, or not at
        all, as Triton traces a BLS request only when its model hands it the trace of the request it runs."""
        if not self.active:
            return _NO_SPAN
        if step or called:
            parent = _CURRENT.get() if step else parent
            if parent is None:
                return _NO_SPAN
            trace = parent.child()
        else:
            context = None
            if self.file is None:
                context = self._extract(carrier()) if carrier is not None else None
                if context is not None and not self._spans.sampled(context):
                    return _NO_SPAN  # the caller's trace is not sampled: nothing to record, count or sample
            sampled = self._sample(model)
            if sampled is None:
                return _NO_SPAN
            scope, budget = sampled
            if budget.count is not None and budget.count > 0:
                budget.count -= 1
            sink: Sink = self._spans
            if self.file is not None:
                sink = collector = self._collector(scope)
                collector.took()
                if budget.count == 0:  # spent: the other scopes drawing on it write what they hold
                    for other in (self._global, *self._models.values()):
                        if other.collector is not None and other.collector is not collector:
                            other.collector.poke()
            trace = RequestTrace(self._level(scope), sink)
            trace.context = context
            if front is not None:  # it stamps its receipt and its answer once it has answered
                trace.protocol = front.protocol
                front.trace = trace
        now = time.perf_counter_ns()
        trace.begin(model, version, request_id, now)
        if trace.sink is self._spans:  # its spans start as it begins: a model it runs may hand on their context
            self._spans.open(trace, front.received[0] if front is not None and not step else None)
        if ensemble:  # its steps are queued now (a model's run stamps its own queue)
            trace.stamp("QUEUE_START", now)
        return _Traced(trace, None if step else front)

    def _sample(self, model: str) -> tuple[_Scope, _Scope] | None:
        """Whether this request of ``model`` is one to trace: if so, the scope whose settings it follows (the
        model's own, else the global one) and the one whose ``trace_count`` it takes from; else None."""
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
        return None if budget.count == 0 else (counter, budget)

    def _level(self, scope: _Scope) -> int:
        return self._global.level or 0 if scope.level is None else scope.level

    def _collector(self, scope: _Scope) -> Collector:
        """Where ``scope``'s traces go: made at its first trace, and anew after each settings update."""
        if scope.collector is None:
            assert self.file is not None
            frequency = self._global.log_frequency if scope.log_frequency is None else scope.log_frequency
            budget = scope if scope.count is not None else self._global
            spent = (lambda: budget.count == 0) if budget.count != -1 else None  # a count: held until it is spent
            scope.collector = Collector(self.file, frequency or 0, spent)
        return scope.collector

    # -- the trace extension -----------------------------------------------------------------------
    def settings(self, model: str | None = None) -> dict[str, Any]:
        """The settings in effect for ``model`` (None: the global ones), as Triton's extension spells them."""
        scope = self._models.get(model) if model else None
        g = self._global
        level = g.level if scope is None or scope.level is None else scope.level
        rate = g.rate if scope is None or scope.rate is None else scope.rate
        count = g.count if scope is None or scope.count is None else scope.count
        levels = [word for bit, word in ((TIMESTAMPS, "TIMESTAMPS"), (TENSORS, "TENSORS")) if (level or 0) & bit]
        shown = {"trace_level": levels or ["OFF"], "trace_rate": str(rate), "trace_count": str(count)}
        if self.mode == FILES:  # Triton's trace-file mode lists its file settings, and nothing of OpenTelemetry's
            frequency = g.log_frequency if scope is None or scope.log_frequency is None else scope.log_frequency
            shown.update(log_frequency=str(frequency), trace_file=self.file.path if self.file else "", trace_mode=FILES)
            return shown
        shown["trace_mode"] = MODE
        # and the span processor's settings, and the collector's address where one is given, as tritonserver 2.51
        # lists them in its opentelemetry mode (helper-119): what --trace-config opentelemetry,... or OTEL_* set
        for setting, variable in _OTEL_SETTINGS.items():
            value = os.environ.get(variable) or _SDK_DEFAULTS.get(setting)
            if value is not None:
                shown[setting] = value
        return shown | self._shown  # the url as given (Triton adds no scheme where it lists it), the resource

    def update(self, model: str | None, changes: Mapping[str, Any]) -> dict[str, Any]:
        """Apply ``changes`` (all or none: each is checked first; keys that name no setting are left unread,
        as in Triton) and return the settings in effect."""
        unknown = [key for key in changes if key not in SETTINGS and key not in FILE_SETTINGS]
        if unknown:  # left unread, as Triton reads only the settings it has
            log.warning("trace settings %s are not among %s: left unread", unknown, ", ".join(SETTINGS))
        files = self.mode == FILES
        parsed = {key: _parse(key, value, files) for key, value in changes.items() if key not in unknown}
        for key in ("trace_mode", "trace_file"):  # checked: nothing they can change
            parsed.pop(key, None)
        if not files:
            parsed.pop("log_frequency", None)
        if parsed.get("trace_level"):
            if files and self.file is None:  # Triton's words and code, then what to do
                raise InvalidRequest(
                    "Attempting to set invalid trace setting :trace file name is not given; start the server with "
                    "--trace-config triton,file=<path>"
                )
            if not files:
                self.setup()  # turning tracing on without an exporter: set it up now, or refuse
        # replaced settings (the model's, or with the global ones every scope's): what they hold goes out, and so do
        # the traces of their requests still running, as each comes
        for scope in (self._models.get(model),) if model else (self._global, *self._models.values()):
            if scope is not None and scope.collector is not None:
                scope.collector.retire()
                scope.collector = None
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
        self.active = (self._tracer is not None or self.file is not None) and (
            bool(self._global.level) or any(s.level for s in self._models.values())
        )


def _parse(key: str, value: Any, files: bool = False) -> Any:
    """One setting's new value (None: clear it), or InvalidRequest saying what it takes; ``files``: in the
    trace-file mode."""
    if key == "trace_file" and value is not None:  # Triton's words and code (UNSUPPORTED), then what to do
        raise Unsupported(
            "trace file location can not be updated through network protocol: "
            + (
                "start the server with --trace-config triton,file=<path>"
                if files
                else "polystack exports spans through OpenTelemetry (set OTEL_EXPORTER_OTLP_ENDPOINT or "
                "OTEL_TRACES_EXPORTER before starting the server)"
            )
        )
    if key == "log_frequency" and value is not None:
        if not files:
            raise InvalidRequest(
                f"{key!r} belongs to Triton's trace files; polystack exports spans through OpenTelemetry "
                "(set OTEL_EXPORTER_OTLP_ENDPOINT or OTEL_TRACES_EXPORTER before starting the server), or writes "
                "them when started with --trace-config triton,file=<path>"
            )
        return log_frequency(_integer(key, value))
    if value is None:
        return None
    if key == "trace_level":
        levels = [value] if isinstance(value, str) else value
        allowed = '["OFF"], ["TIMESTAMPS"], ["TENSORS"] or both' if files else '["OFF"] or ["TIMESTAMPS"]'
        if not isinstance(levels, list) or not levels or not all(isinstance(v, str) for v in levels):
            raise InvalidRequest(f"trace_level must be {allowed}, not {quote(value)}")
        if "TENSORS" in levels and not files:
            raise InvalidRequest(
                'polystack traces timestamps (spans), not tensors: use ["TIMESTAMPS"], or start the server with '
                "--trace-config triton,file=<path> for Triton's trace files, which hold tensors"
            )
        if levels == ["OFF"]:
            return 0
        if set(levels) <= {"TIMESTAMPS", "TENSORS"}:
            return (TIMESTAMPS if "TIMESTAMPS" in levels else 0) | (TENSORS if "TENSORS" in levels else 0)
        raise InvalidRequest(f"trace_level must be {allowed} (OFF alone), not {quote(value)}")
    if key == "trace_rate":
        return _rate(_integer(key, value))
    if key == "trace_count":
        return _count(_integer(key, value))
    mode = FILES if files else MODE
    if key == "trace_mode" and _single(key, value) != mode:
        raise InvalidRequest(
            f"trace_mode is {mode!r}, set when the server starts (--trace-config mode=), and can not be changed, "
            f"not {quote(value)}"
        )
    return mode


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


def log_frequency(value: int) -> int:
    """A ``log_frequency``: how many traces each numbered file holds (0: none, all into the file itself)."""
    if not 0 <= value <= _MAX_RATE:  # Triton's words, then what it means
        raise InvalidRequest(
            f"Unable to parse 'log_frequency', value is out of range [ 0, {_MAX_RATE} ], got: {value}; log_frequency "
            f"must be between 0 (every trace into the file itself) and {_MAX_RATE} (traces to a numbered file)"
        )
    return value


def _count(count: int) -> int:
    if count < -1:  # Triton's words
        raise InvalidRequest(
            f"Unable to parse 'trace_count'. Expecting value >= -1, got:{count}; trace_count must be -1 (no limit) or "
            f"between 0 and {_MAX_COUNT}"
        )
    if count > _MAX_COUNT:  # Triton's words, then what it takes
        raise InvalidRequest(
            f"Unable to parse 'trace_count', value is out of range [ -1, {_MAX_COUNT} ], got: {count}; trace_count "
            f"must be -1 (no limit) or between 0 and {_MAX_COUNT}"
        )
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
    mode: str = MODE  # FILES: Triton's trace files
    file: str = ""  # the trace-file mode's file
    log_frequency: int = 0
    levels: int = TIMESTAMPS  # what tracing takes when on: TIMESTAMPS, and TENSORS in the trace-file mode
    shown: tuple[tuple[str, str], ...] = ()  # the opentelemetry settings the trace settings list as given: url, resource


def trace_flags(items: list[str]) -> TraceFlags:
    """tritonserver's ``--trace-config [<mode>,]<setting>=<value>`` options, checked, in Triton's words where it
    refuses them. Its ``triton`` mode (trace files: ``triton,file=``, ``triton,log-frequency=``) is chosen by
    ``mode=triton`` or by a file given without ``mode=opentelemetry`` (which leaves them unread, as Triton warns
    and does); else polystack traces in the ``opentelemetry`` mode, which leaves the level ``TENSORS`` refused.
    A level ``OFF`` turns tracing off whatever else is given, as in Triton."""
    levels: list[str] = []
    rate = count = None
    mode = ""
    environment: dict[str, str] = {}
    resources: list[str] = []
    triton: list[str] = []  # the trace-file mode's settings
    file, frequency, url = "", 0, ""
    for item in items:
        head, eq, value = item.partition("=")
        scope, _, setting = head.rpartition(",") if "," in head else ("", "", head)
        scope = scope.lower()
        if not eq or not setting:
            raise InvalidRequest(f"--trace-config option format is '<trace mode>,<setting>=<value>'. Got {item}")
        if scope == "triton":
            triton.append(item)
            if setting == "file":
                file = value
            elif setting in ("log-frequency", "log_frequency"):
                if not _INTEGER.fullmatch(value.strip()):
                    raise InvalidRequest(f"--trace-config {item}: give a whole number (traces a numbered file holds)")
                frequency = log_frequency(int(value))
            else:
                raise InvalidRequest(f"--trace-config {item}: Triton's trace-file settings are file and log-frequency")
        elif scope not in ("", "opentelemetry"):
            raise InvalidRequest(
                f'invalid value for trace mode option: {scope}. Available options are "triton" and "opentelemetry"'
            )
        elif scope == "opentelemetry":
            if setting == "resource":
                resources.append(value)
            elif setting == "url":
                url = value
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
            if mode not in (FILES, MODE):
                raise InvalidRequest(
                    f'invalid value for trace mode option: {value}. Available options are "triton" and "opentelemetry"'
                )
        elif setting == "level":
            word = value.lower()
            if word not in _LEVELS_ON | _LEVELS_OFF | {"tensors"}:
                raise InvalidRequest(f"invalid value for trace level option: {value}")
            levels.append(word)
        elif setting in ("rate", "count"):
            if not _INTEGER.fullmatch(value.strip()):
                raise InvalidRequest(f"--trace-config {setting}={value}: give a whole number")
            if setting == "rate":
                rate = _rate(int(value))
            else:
                count = _count(int(value))
        else:
            raise InvalidRequest(
                f"--trace-config {item}: Triton's settings are level, rate, count and mode, triton,<setting> and "
                "opentelemetry,<setting>"
            )
    mode = mode or (FILES if triton else MODE)
    if mode == MODE and "tensors" in levels:
        raise InvalidRequest(
            "--trace-config level=TENSORS: polystack's spans carry Triton's timestamps, not tensors; give "
            "level=TIMESTAMPS, or trace into Triton's trace files (--trace-config triton,file=<path>), which hold them"
        )
    level = None if not levels else not any(w in _LEVELS_OFF for w in levels)  # OFF anywhere: off, as in Triton
    if mode == FILES:
        if environment or resources:
            log.warning("Triton's opentelemetry settings are not read in its triton mode (trace files)")
        if level and not file:
            raise InvalidRequest(
                "--trace-config mode=triton writes traces into a file: give --trace-config triton,file=<path> (or "
                "mode=opentelemetry, for spans)"
            )
        if file:
            try:
                TraceFile.check(file)
            except OSError as e:
                raise InvalidRequest(f"--trace-config triton,file={file}: {e}; give a file that can be written") from None
        bits = (TIMESTAMPS if any(w in _LEVELS_ON for w in levels) else 0) | (TENSORS if "tensors" in levels else 0)
        return TraceFlags(level, rate, count, mode=FILES, file=file, log_frequency=frequency, levels=bits or TIMESTAMPS)
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
    names_service = any(r.strip().startswith("service.name=") or ",service.name=" in r for r in resources)
    shown = {"url": url} if url else {}
    if resources:
        shown["resource"] = ",".join(resources)
    return TraceFlags(level, rate, count, tuple(environment.items()), names_service, shown=tuple(shown.items()))
