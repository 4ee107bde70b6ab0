"""OpenTelemetry tracing: a span per inference when configured, none (and no cost) when not."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pytest
import tritonclient.http as httpclient
from servekit import start

from polystack.server.tracing import Tracer
from polystack.store import ModelRecord, Store

sdk_trace = pytest.importorskip("opentelemetry.sdk.trace")
export = pytest.importorskip("opentelemetry.sdk.trace.export")
in_memory = pytest.importorskip("opentelemetry.sdk.trace.export.in_memory_span_exporter")


@pytest.fixture(scope="module")
def spans() -> Iterator[object]:
    from opentelemetry import trace

    exporter = in_memory.InMemorySpanExporter()
    provider = sdk_trace.TracerProvider()
    provider.add_span_processor(export.SimpleSpanProcessor(exporter))
    trace.set_tracer_provider(provider)  # the global provider can be set once per process
    yield exporter
    provider.shutdown()


def _serve_one_request(store: Store, trace: bool) -> None:
    st = start(store, models=["mlp"], trace=trace)
    try:
        client = httpclient.InferenceServerClient(st.http_url)
        x = httpclient.InferInput("x", [2, 16], "FP32")
        x.set_data_from_numpy(np.ones((2, 16), np.float32))
        client.infer("mlp", [x], request_id="req-7")
        client.close()
    finally:
        st.stop()


def test_a_traced_server_records_one_span_per_inference_with_its_model_and_id(
    model_store: tuple[Store, dict[str, ModelRecord]], spans: object
) -> None:
    store, records = model_store
    spans.clear()  # type: ignore[attr-defined]
    _serve_one_request(store, trace=True)
    (span,) = [s for s in spans.get_finished_spans() if s.name == "polystack.infer"]  # type: ignore[attr-defined]
    assert span.attributes["model"] == "mlp"
    assert span.attributes["version"] == records["mlp"].version
    assert span.attributes["id"] == "req-7"


def test_an_untraced_server_records_no_span(model_store: tuple[Store, dict[str, ModelRecord]], spans: object) -> None:
    store, _ = model_store
    spans.clear()  # type: ignore[attr-defined]
    _serve_one_request(store, trace=False)
    assert spans.get_finished_spans() == ()  # type: ignore[attr-defined]
    assert not Tracer(enabled=False).enabled
