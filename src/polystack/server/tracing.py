"""OpenTelemetry tracing, only when configured: ``--trace`` or ``OTEL_EXPORTER_OTLP_ENDPOINT``.

opentelemetry is an optional import; without it, or unconfigured, ``span`` is a no-op context.
The SDK and exporter are the application's to configure (``opentelemetry-instrument`` or
environment variables); polystack only asks the global tracer provider for a tracer.
"""

from __future__ import annotations

import contextlib
import os
from typing import Any, cast

_NO_SPAN = contextlib.nullcontext()  # reusable: entering it does nothing and keeps no state


class Tracer:
    def __init__(self, enabled: bool | None = None) -> None:
        if enabled is None:
            enabled = bool(os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT"))
        self._tracer: Any = None
        if enabled:
            try:
                from opentelemetry import trace
            except ImportError:
                return
            self._tracer = trace.get_tracer("polystack.server")

    @property
    def enabled(self) -> bool:
        return self._tracer is not None

    def span(self, name: str, **attributes: Any) -> contextlib.AbstractContextManager[Any]:
        """A span around a block; with tracing off, one shared no-op context (no generator per request)."""
        if self._tracer is None:
            return _NO_SPAN
        return cast(
            contextlib.AbstractContextManager[Any], self._tracer.start_as_current_span(name, attributes=attributes)
        )
