"""OpenTelemetry tracing: Triton's spans for each sampled inference (its request, the model's run, the model call),
the caller's trace context carried over, and Triton's trace extension (global and per-model settings) through the
real tritonclient.

The spans are caught by an in-memory exporter on this process's tracer provider, which can be set once
per process: every test here that turns tracing on runs in this module, after the fixture set it."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.grpc.aio as aiogrpcclient
import tritonclient.http as httpclient
from conftest import Raw
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from servekit import failing_at_run, mlp_ones, register_like, start
from tritonclient.utils import InferenceServerException

from polystack.errors import InvalidRequest
from polystack.formats import import_model
from polystack.server.app import ServerThread
from polystack.server.tracing import Tracing
from polystack.store import ModelRecord, Store

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT_ID = "00f067aa0ba902b7"
TRACEPARENT = f"00-{TRACE_ID}-{PARENT_ID}-01"
# the span processor's settings, listed as tritonserver 2.51 lists them in its opentelemetry mode (helper-119)
BSP = {"bsp_max_export_batch_size": "512", "bsp_schedule_delay": "5000", "bsp_max_queue_size": "2048"}
OFF = {"trace_level": ["OFF"], "trace_rate": "1", "trace_count": "-1", "trace_mode": "opentelemetry", **BSP}


@pytest.fixture(scope="module")
def spans() -> Iterator[Any]:
    from opentelemetry import trace

    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    trace.set_tracer_provider(provider)  # the global provider can be set once per process
    yield exporter
    provider.shutdown()


@pytest.fixture
def untraced(model_store: tuple[Store, dict[str, ModelRecord]], spans: Any) -> Iterator[ServerThread]:
    """A server started without tracing: its settings are the extension's to change. Fresh for each test."""
    st = start(model_store[0], models=["mlp", "ident64"], trace=False)
    spans.clear()
    yield st
    st.stop()


def _infer_http(client: httpclient.InferenceServerClient, model: str = "mlp", **kw: Any) -> None:
    if model == "mlp":
        x = mlp_ones(2)
    else:
        x = httpclient.InferInput("a", [1, 4], "INT64")
        x.set_data_from_numpy(np.ones((1, 4), np.int64))
    client.infer(model, [x], **kw)


def _infer_grpc(client: grpcclient.InferenceServerClient, **kw: Any) -> None:
    client.infer("mlp", [mlp_ones(1, grpcclient)], **kw)


def _finished(spans: Any) -> list[Any]:
    """The spans of the models' runs (Triton's spans named after the model), in the order they ended."""
    return [s for s in spans.get_finished_spans() if "triton.model_name" in (s.attributes or {})]


def _around(spans: Any, span: Any) -> Any:
    """The span ``span`` is in."""
    (found,) = [s for s in spans.get_finished_spans() if s.context.span_id == span.parent.span_id]
    return found


def _inside(spans: Any, span: Any) -> list[Any]:
    """The spans in ``span``."""
    return [s for s in spans.get_finished_spans() if s.parent is not None and s.parent.span_id == span.context.span_id]


def test_a_traced_server_records_one_span_per_inference_with_its_model_and_id(
    model_store: tuple[Store, dict[str, ModelRecord]], spans: Any
) -> None:
    store, records = model_store
    st = start(store, models=["mlp"], trace=True)
    spans.clear()
    try:
        client = httpclient.InferenceServerClient(st.http_url)
        _infer_http(client, request_id="req-7")
        client.close()
    finally:
        st.stop()
    (run,) = _finished(spans)
    from opentelemetry.trace import SpanKind

    # as tritonserver 2.51 exports them (helper-121): the front end's request, the model's run in it, its call in that
    request = _around(spans, run)
    (compute,) = _inside(spans, run)
    assert [s.name for s in (request, run, compute)] == ["InferRequest", "mlp", "compute"]
    assert all(s.kind == SpanKind.SERVER for s in (request, run, compute))
    assert request.parent is None  # the request carried no trace context: a trace of its own
    assert dict(run.attributes) == {
        "triton.model_name": "mlp", "triton.model_version": records["mlp"].version, "triton.trace_id": run.attributes[
            "triton.trace_id"], "triton.trace_parent_id": 0, "triton.request_id": "req-7",
    }  # fmt: skip
    assert not request.attributes and not compute.attributes
    events = {s.name: [e.name for e in s.events] for s in (request, run, compute)}
    assert events == {
        "InferRequest": ["HTTP_RECV_START", "HTTP_RECV_END", "INFER_RESPONSE_COMPLETE", "HTTP_SEND_START", "HTTP_SEND_END"],
        "mlp": ["REQUEST_START", "QUEUE_START", "REQUEST_END"],
        "compute": ["COMPUTE_START", "COMPUTE_INPUT_END", "COMPUTE_OUTPUT_START", "COMPUTE_END"],
    }
    for outer, inner in ((request, run), (run, compute)):
        assert outer.start_time <= inner.start_time and inner.end_time <= outer.end_time
    for span in (request, run, compute):
        assert all(span.start_time <= e.timestamp <= span.end_time for e in span.events), span.name


def test_an_untraced_server_records_no_span(untraced: ServerThread, spans: Any) -> None:
    client = httpclient.InferenceServerClient(untraced.http_url)
    _infer_http(client)
    assert client.get_trace_settings() == OFF
    assert _finished(spans) == []
    assert not Tracing(enabled=False).active


def test_a_span_continues_the_callers_trace_over_http_and_grpc(
    model_store: tuple[Store, dict[str, ModelRecord]], spans: Any
) -> None:
    st = start(model_store[0], models=["mlp"], trace=True)
    spans.clear()
    try:
        http = httpclient.InferenceServerClient(st.http_url)
        _infer_http(http, headers={"traceparent": TRACEPARENT})
        grpc = grpcclient.InferenceServerClient(st.grpc_url)
        _infer_grpc(grpc, headers={"traceparent": TRACEPARENT})
        _infer_grpc(grpc)  # no context: a trace of its own
    finally:
        st.stop()
    first, second, third = (_around(spans, run) for run in _finished(spans))
    for span in (first, second):
        assert format(span.context.trace_id, "032x") == TRACE_ID
        assert format(span.parent.span_id, "016x") == PARENT_ID and span.parent.is_remote
    assert format(third.context.trace_id, "032x") != TRACE_ID and third.parent is None
    assert [e.name for e in second.events][:2] == ["GRPC_WAITREAD_START", "GRPC_WAITREAD_END"]


def test_the_trace_extension_turns_tracing_on_with_a_rate_and_a_count(untraced: ServerThread, spans: Any) -> None:
    client = httpclient.InferenceServerClient(untraced.http_url)
    assert "trace" in client.get_server_metadata()["extensions"]
    got = client.update_trace_settings(settings={"trace_level": ["TIMESTAMPS"], "trace_rate": "2"})
    assert got == {**OFF, "trace_level": ["TIMESTAMPS"], "trace_rate": "2"}
    for _ in range(6):
        _infer_http(client)
    assert len(_finished(spans)) == 3  # one request in two
    assert client.update_trace_settings(settings={"trace_rate": "1", "trace_count": "2"})["trace_count"] == "2"
    for _ in range(5):
        _infer_http(client)
    assert len(_finished(spans)) == 5  # two more, then the count is spent
    assert client.get_trace_settings()["trace_count"] == "0"
    # null puts a global setting back to its value at start
    assert client.update_trace_settings(settings={"trace_level": None, "trace_count": None}) == OFF
    _infer_http(client)
    assert len(_finished(spans)) == 5


def test_model_settings_override_the_global_ones_and_follow_them_where_unset(
    untraced: ServerThread, spans: Any
) -> None:
    client = httpclient.InferenceServerClient(untraced.http_url)
    got = client.update_trace_settings("mlp", {"trace_level": ["TIMESTAMPS"]})
    assert got == {**OFF, "trace_level": ["TIMESTAMPS"]}
    assert client.get_trace_settings() == OFF  # the global settings are untouched
    _infer_http(client, "mlp")
    _infer_http(client, "ident64")
    assert [s.attributes["triton.model_name"] for s in _finished(spans)] == ["mlp"]
    # a global change reaches the model's settings it does not set itself
    client.update_trace_settings(settings={"trace_rate": "3"})
    assert client.get_trace_settings("mlp")["trace_rate"] == "3"
    # and null gives a model's setting back to the global one
    assert client.update_trace_settings("mlp", {"trace_level": None})["trace_level"] == ["OFF"]
    spans.clear()
    for _ in range(3):
        _infer_http(client, "mlp")
    assert _finished(spans) == []


def test_grpc_trace_settings_sync_and_asyncio(untraced: ServerThread, spans: Any) -> None:
    import asyncio

    client = grpcclient.InferenceServerClient(untraced.grpc_url)
    got = client.update_trace_settings("mlp", {"trace_level": ["TIMESTAMPS"], "trace_count": "1"}, as_json=True)
    assert got["settings"]["trace_level"]["value"] == ["TIMESTAMPS"]
    assert got["settings"]["trace_count"]["value"] == ["1"]
    _infer_grpc(client)
    _infer_grpc(client)
    assert len(_finished(spans)) == 1
    read = client.get_trace_settings("mlp", as_json=True)["settings"]
    assert {k: v["value"] for k, v in read.items()} == {**OFF, "trace_level": ["TIMESTAMPS"], "trace_count": ["0"]} | {
        "trace_rate": ["1"],
        "trace_mode": ["opentelemetry"],
        **{k: [v] for k, v in BSP.items()},
    }

    async def main() -> dict[str, Any]:
        aio = aiogrpcclient.InferenceServerClient(untraced.grpc_url)
        try:
            # an empty value list (None in tritonclient) clears a setting
            return await aio.update_trace_settings("mlp", {"trace_level": None, "trace_count": None}, as_json=True)
        finally:
            await aio.close()

    cleared = asyncio.run(main())["settings"]
    assert cleared["trace_level"]["value"] == ["OFF"] and cleared["trace_count"]["value"] == ["-1"]
    assert httpclient.InferenceServerClient(untraced.http_url).get_trace_settings("mlp") == OFF


BAD_SETTINGS = [
    ({"trace_level": ["TENSORS"]}, "not tensors"),
    ({"trace_level": ["OFF", "TIMESTAMPS"]}, "OFF alone"),
    ({"trace_level": "LOUD"}, "trace_level must be"),
    ({"trace_level": []}, "trace_level must be"),
    ({"trace_rate": "0"}, "between 1 and"),
    ({"trace_rate": "ten"}, "Unable to parse 'trace_rate', got: ten"),  # tritonserver 2.51's words (helper-119)
    ({"trace_rate": "4294967296"}, "Unable to parse 'trace_rate', value is out of range [ 0, 4294967295 ], got: 4294967296"),
    ({"trace_rate": "--5"}, "whole number"),
    ({"trace_count": "--1"}, "whole number"),
    ({"trace_rate": "99999999999999999999999"}, "whole number"),
    ({"trace_count": "-2"}, "Unable to parse 'trace_count'. Expecting value >= -1, got:-2"),
    # tritonserver 2.51's words (helper-166)
    ({"trace_count": "10000000000"}, "Unable to parse 'trace_count', value is out of range [ -1, 2147483647 ], got: 10000000000"),
    ({"trace_count": True}, "whole number"),
    ({"log_frequency": "10"}, "Triton's trace files"),
    ({"trace_mode": "triton"}, "can not be changed"),
    ({"trace_level": ["TIMESTAMPS", "LOUD"]}, "trace_level must be"),
    ({"trace_rate": "x" * 100_000}, "..."),  # the error quotes the value cut short
]


@pytest.mark.parametrize(("settings", "says"), BAD_SETTINGS, ids=[str(s) for s, _ in BAD_SETTINGS])
def test_a_bad_trace_setting_is_a_400_that_changes_nothing(
    untraced: ServerThread, settings: dict[str, Any], says: str
) -> None:
    client = httpclient.InferenceServerClient(untraced.http_url)
    with pytest.raises(InferenceServerException) as e:
        client.update_trace_settings(settings={"trace_rate": "7", **settings})  # the good one is not applied either
    assert e.value.status() == "400" and says in e.value.message()
    # the same over gRPC, where every value is a list of strings (an empty one clears a setting)
    sendable = {k: v for k, v in settings.items() if isinstance(v, str) or (isinstance(v, list) and v)}
    if sendable:
        grpc = grpcclient.InferenceServerClient(untraced.grpc_url)
        with pytest.raises(InferenceServerException) as g:
            grpc.update_trace_settings(settings={"trace_rate": "7", **sendable})
        assert "INVALID_ARGUMENT" in str(g.value.status()) and says in g.value.message()
    assert client.get_trace_settings() == OFF


def test_keys_that_name_no_trace_setting_are_left_unread_over_http_and_grpc(untraced: ServerThread) -> None:
    """Triton reads the settings it has and no other key (tritonserver 2.51, helper-106); polystack refused the
    whole update with a 400, its good settings too."""
    http = httpclient.InferenceServerClient(untraced.http_url)
    assert http.update_trace_settings(settings={"trace_ratee": "2", "trace_rate": "7"})["trace_rate"] == "7"
    grpc = grpcclient.InferenceServerClient(untraced.grpc_url)
    got = grpc.update_trace_settings(model_name="mlp", settings={"foo": "1", "trace_count": "3"}, as_json=True)
    assert "foo" not in got["settings"] and got["settings"]["trace_count"]["value"] == ["3"]


def test_a_trace_file_is_refused_as_triton_refuses_it_and_changes_nothing(untraced: ServerThread) -> None:
    """Triton's words and code (UNSUPPORTED: HTTP 501, gRPC UNIMPLEMENTED); it was a 400 (helper-81)."""
    client = httpclient.InferenceServerClient(untraced.http_url)
    with pytest.raises(InferenceServerException) as e:
        client.update_trace_settings(settings={"trace_rate": "7", "trace_file": "/tmp/trace.json"})
    assert e.value.status() == "501"
    assert e.value.message().startswith("trace file location can not be updated through network protocol")
    grpc = grpcclient.InferenceServerClient(untraced.grpc_url)
    with pytest.raises(InferenceServerException) as g:
        grpc.update_trace_settings(settings={"trace_rate": "7", "trace_file": "/tmp/trace.json"})
    assert "UNIMPLEMENTED" in str(g.value.status()) and "trace file location" in g.value.message()
    assert client.get_trace_settings() == OFF


def test_null_for_tritons_trace_file_settings_changes_nothing_else(untraced: ServerThread) -> None:
    http = httpclient.InferenceServerClient(untraced.http_url)
    assert http.update_trace_settings(settings={"trace_rate": "7", "trace_file": None})["trace_rate"] == "7"
    assert http.update_trace_settings("mlp", {"log_frequency": None, "trace_count": "3"})["trace_count"] == "3"
    grpc = grpcclient.InferenceServerClient(untraced.grpc_url)  # tritonclient sends None as an empty list
    got = grpc.update_trace_settings(settings={"trace_rate": "9", "trace_file": None}, as_json=True)
    assert got["settings"]["trace_rate"]["value"] == ["9"] and "trace_file" not in got["settings"]
    assert http.get_trace_settings("mlp") == {**OFF, "trace_rate": "9", "trace_count": "3"}


def test_a_caller_trace_not_sampled_gets_no_span_and_spends_no_count(untraced: ServerThread, spans: Any) -> None:
    client = httpclient.InferenceServerClient(untraced.http_url)
    client.update_trace_settings(settings={"trace_level": ["TIMESTAMPS"], "trace_count": "1"})
    _infer_http(client, headers={"traceparent": f"00-{TRACE_ID}-{PARENT_ID}-00"})  # flags 00: not sampled
    assert _finished(spans) == [] and client.get_trace_settings()["trace_count"] == "1"
    _infer_http(client)
    assert len(_finished(spans)) == 1 and client.get_trace_settings()["trace_count"] == "0"


def test_trace_settings_of_an_unknown_model_and_bad_requests_are_clear_errors(untraced: ServerThread) -> None:
    client = httpclient.InferenceServerClient(untraced.http_url)
    # Triton's INVALID_ARG, in its words (was 404 / NOT_FOUND)
    with pytest.raises(InferenceServerException) as e:
        client.get_trace_settings("nope")
    # the name bare, as Triton's L0_trace looks for it (helper-166: quoted, 4 of its 6 tests failed)
    assert e.value.status() == "400" and "Request for unknown model : nope;" in e.value.message()
    grpc = grpcclient.InferenceServerClient(untraced.grpc_url)
    with pytest.raises(InferenceServerException) as g:
        grpc.update_trace_settings("nope", {"trace_rate": "2"})
    assert "INVALID_ARGUMENT" in str(g.value.status()) and "Request for unknown model : nope;" in g.value.message()
    raw = Raw(untraced.http_port)
    status, doc = raw.json("POST", "/v2/trace/setting", [1, 2])
    assert status == 400 and "JSON object" in doc["error"]
    status, _, body = raw.request("POST", "/v2/trace/setting", b"{not json", {"Content-Type": "application/json"})
    assert status == 400 and b"error" in body
    status, doc = raw.json("PUT", "/v2/trace/setting", {})
    assert status == 405 and "GET or POST" in doc["error"]
    status, doc = raw.json("POST", "/v2/models/mlp/versions/1/trace/setting", {})
    assert status == 404
    assert client.is_server_ready() and client.get_trace_settings() == OFF


def test_bad_start_up_settings_are_refused() -> None:
    with pytest.raises(InvalidRequest, match="between 1 and"):
        Tracing(enabled=False, rate=0)
    with pytest.raises(InvalidRequest, match="-1"):
        Tracing(enabled=False, count=-5)


def _events(span: Any) -> dict[str, int]:
    return {e.name: e.timestamp for e in span.events}


def test_spans_carry_tritons_timestamps_with_batching_and_without(
    model_store: tuple[Store, dict[str, ModelRecord]], spans: Any
) -> None:
    from polystack.batching import BatchPolicy

    for batching in (None, BatchPolicy(max_batch_size=8, max_queue_delay_ms=2)):
        st = start(model_store[0], models=["mlp"], trace=True, batching=batching, no_batching=batching is None)
        spans.clear()
        try:
            _infer_http(httpclient.InferenceServerClient(st.http_url))
        finally:
            st.stop()
        (run,) = _finished(spans)
        (compute,) = _inside(spans, run)
        # queued: in the batcher's queue, or waiting for an inference thread (Triton's scheduler queue either way)
        stamps = [*_events(run).values(), *_events(compute).values()]
        assert list(_events(run)) == ["REQUEST_START", "QUEUE_START", "REQUEST_END"], batching
        assert list(_events(compute)) == ["COMPUTE_START", "COMPUTE_INPUT_END", "COMPUTE_OUTPUT_START", "COMPUTE_END"]
        assert stamps[1] <= stamps[3] <= stamps[-1] <= stamps[2], batching  # queued, computed, ended


def test_a_request_rerouted_by_a_reload_is_one_span(
    model_store: tuple[Store, dict[str, ModelRecord]], spans: Any
) -> None:
    """A request waiting for the only inference thread while a reload replaces its model runs on the new
    instance inside its one span, which ends OK; the trace count is spent once."""
    import concurrent.futures
    import time

    store, records = model_store
    register_like(store, records["mlp"], "slow150", tags={"delay_ms": "150"})
    st = start(
        store, models=["slow150"], allow_model_control=True, workers=1, inline_max_ms=0, trace=True, trace_count=2
    )
    spans.clear()
    try:
        with concurrent.futures.ThreadPoolExecutor(2) as pool:
            first = pool.submit(
                httpclient.InferenceServerClient(st.http_url).infer, "slow150", [mlp_ones()], request_id="a"
            )
            time.sleep(0.03)
            second = pool.submit(
                httpclient.InferenceServerClient(st.http_url).infer, "slow150", [mlp_ones()], request_id="b"
            )
            time.sleep(0.03)
            httpclient.InferenceServerClient(st.http_url).load_model("slow150", config="{}")  # a reload
            first.result(timeout=10), second.result(timeout=10)
    finally:
        st.stop()
    done = _finished(spans)
    assert sorted(s.attributes["triton.request_id"] for s in done) == ["a", "b"], done
    assert all(s.status.is_unset for s in done)


def test_tritons_trace_file_settings_are_left_unread_in_its_opentelemetry_mode() -> None:
    """helper-104: Triton warns of trace-file settings beside mode=opentelemetry (any case) and runs; polystack
    exited 2."""
    from polystack.server.tracing import trace_flags

    flags = trace_flags(["triton,file=/tmp/trace.json", "mode=OpenTelemetry", "level=TIMESTAMPS", "rate=10"])
    assert flags.level is True and flags.rate == 10 and flags.mode == "opentelemetry" and not flags.file
    files = trace_flags(["triton,file=/tmp/trace.json", "level=TIMESTAMPS"])  # a file alone: Triton's trace files
    assert files.mode == "triton" and files.file == "/tmp/trace.json"


def test_a_run_that_fails_gives_its_spans_an_error_status_with_its_words(
    model_store: tuple[Store, dict[str, ModelRecord]], spans: Any, tmp_path: Path
) -> None:
    """The module's word (Triton sets no status): a failed run's request and run spans say ERROR and why; a
    request that succeeds leaves them unset."""
    from opentelemetry.trace import StatusCode

    store, _ = model_store
    imported = import_model(failing_at_run(tmp_path / "failing.onnx"), tmp_path / "import")
    store.register(imported.artifact, name="failing_traced", format=imported.format, signature=imported.signature)
    st = start(store, models=["mlp", "failing_traced"], trace=True)
    spans.clear()
    try:
        client = httpclient.InferenceServerClient(st.http_url)
        x = httpclient.InferInput("x", [1, 2], "FP32")
        x.set_data_from_numpy(np.ones((1, 2), np.float32))
        with pytest.raises(InferenceServerException, match="ONNX Runtime failed"):
            client.infer("failing_traced", [x])
        _infer_http(client)
        client.close()
    finally:
        st.stop()
    failed, ok = _finished(spans)
    assert failed.name == "failing_traced" and ok.name == "mlp"
    for span in (failed, _around(spans, failed)):
        assert span.status.status_code == StatusCode.ERROR and "ONNX Runtime failed" in (span.status.description or "")
    assert all(s.status.status_code == StatusCode.UNSET for s in (ok, _around(spans, ok)))
