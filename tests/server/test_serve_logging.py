"""Triton's logging extension: read and change the log settings over HTTP and gRPC with tritonclient,
and see the change in what ``polystack serve`` writes."""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
import logging
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.grpc.aio as aiogrpcclient
import tritonclient.http as httpclient
from conftest import Raw
from servekit import caught_logs, cli_server, free_port, mlp_ones, refused_at_start, register_like, start, until
from tritonclient.utils import InferenceServerException

from polystack.errors import InvalidRequest
from polystack.server import logs
from polystack.server.app import ServerThread
from polystack.store import ModelRecord, Store

DEFAULT = {
    "log_file": "",
    "log_info": True,
    "log_warning": True,
    "log_error": True,
    "log_verbose_level": 0,
    "log_format": "default",
}


@pytest.fixture
def served(model_store: tuple[Store, dict[str, ModelRecord]]) -> Iterator[ServerThread]:
    """A server in this process, whose log settings (the process's) are put back afterwards."""
    before = logs.SETTINGS.settings()
    st = start(model_store[0], models=["mlp"])
    yield st
    st.stop()
    logs.SETTINGS.update(before)


def test_log_settings_read_and_change_over_http_and_grpc(served: ServerThread) -> None:
    http = httpclient.InferenceServerClient(served.http_url)
    grpc = grpcclient.InferenceServerClient(served.grpc_url)
    logs.SETTINGS.set_level("info")
    assert "logging" in http.get_server_metadata()["extensions"]
    assert http.get_log_settings() == DEFAULT
    # Triton answers with every setting, not only the ones changed
    assert http.update_log_settings({"log_info": False, "log_verbose_level": 2}) == {
        **DEFAULT,
        "log_info": False,
        "log_verbose_level": 2,
    }
    assert grpc.get_log_settings(as_json=True)["settings"]["log_info"] == {"bool_param": False}
    got = grpc.update_log_settings({"log_info": True, "log_warning": False, "log_verbose_level": 0}, as_json=True)
    assert got["settings"]["log_warning"] == {"bool_param": False}
    assert got["settings"]["log_format"] == {"string_param": "default"}
    assert http.get_log_settings() == {**DEFAULT, "log_warning": False}

    async def main() -> Any:
        aio = aiogrpcclient.InferenceServerClient(served.grpc_url)
        try:
            return await aio.update_log_settings({"log_warning": True}, as_json=True)
        finally:
            await aio.close()

    assert asyncio.run(main())["settings"]["log_warning"] == {"bool_param": True}
    assert http.get_log_settings() == DEFAULT


BAD = [  # tritonserver 2.51's words first (helper-119), then what to send
    ({"log_format": "RFC3339"}, "invalid argument for log_format, got: RFC3339; give one of Triton's"),
    ({"log_info": "yes"}, "expect boolean for 'log_info': log_info must be true or false"),
    ({"log_verbose_level": -1}, "expect int32 for 'log_verbose_level': it must be a whole number"),
    ({"log_verbose_level": True}, "expect int32 for 'log_verbose_level'"),
    ({"log_verbose_level": 1.5}, "expect int32 for 'log_verbose_level'"),
    ({"log_format": 5}, "expect string for 'log_format'"),
    ({"log_info": "y" * 100_000}, "..."),  # the error quotes the value cut short
    ({"log_format": "f" * 100_000}, "..."),
]


def test_a_log_file_is_refused_as_triton_refuses_it_and_changes_nothing(served: ServerThread) -> None:
    """Triton's words and code (UNSUPPORTED: HTTP 501, gRPC UNIMPLEMENTED); it was a 400 (helper-81). The file
    it has (stderr's "") may be sent back, as get_log_settings gives it."""
    http = httpclient.InferenceServerClient(served.http_url)
    before = http.get_log_settings()
    with pytest.raises(InferenceServerException) as e:
        http.update_log_settings({"log_info": not before["log_info"], "log_file": "/tmp/polystack.log"})
    assert e.value.status() == "501"
    assert e.value.message().startswith("log file location can not be updated through network protocol")
    with pytest.raises(InferenceServerException) as g:
        grpcclient.InferenceServerClient(served.grpc_url).update_log_settings({"log_file": "x.log"})
    assert "UNIMPLEMENTED" in str(g.value.status()) and "log file location" in g.value.message()
    assert http.get_log_settings() == before
    assert http.update_log_settings(before) == before


def test_log_format_takes_tritons_two_formats_over_http_and_grpc(served: ServerThread) -> None:
    """Triton's "default" and "ISO8601" (polystack's JSON lines carry ISO 8601 times for both); ISO8601 was
    refused, a 400 to a client setting what Triton takes."""
    http = httpclient.InferenceServerClient(served.http_url)
    grpc = grpcclient.InferenceServerClient(served.grpc_url)
    try:
        assert http.update_log_settings({"log_format": "ISO8601"})["log_format"] == "ISO8601"
        assert grpc.get_log_settings(as_json=True)["settings"]["log_format"] == {"string_param": "ISO8601"}
        grpc.update_log_settings({"log_format": "default"})
        assert http.get_log_settings()["log_format"] == "default"
    finally:
        http.update_log_settings({"log_format": "default"})


@pytest.mark.parametrize(("settings", "says"), BAD, ids=[str(s) for s, _ in BAD])
def test_a_bad_log_setting_is_a_400_that_changes_nothing(
    served: ServerThread, settings: dict[str, Any], says: str
) -> None:
    http = httpclient.InferenceServerClient(served.http_url)
    before = http.get_log_settings()
    with pytest.raises(InferenceServerException) as e:
        http.update_log_settings({"log_info": not before["log_info"], **settings})  # not applied either
    assert e.value.status() == "400" and says in e.value.message()
    assert http.get_log_settings() == before


def test_keys_that_name_no_log_setting_are_left_unread_over_http_and_grpc(served: ServerThread) -> None:
    """Triton reads the settings it has and no other key (tritonserver 2.51, helper-106, -107); polystack
    refused the whole update with a 400, its good settings too."""
    http = httpclient.InferenceServerClient(served.http_url)
    grpc = grpcclient.InferenceServerClient(served.grpc_url)
    before = http.get_log_settings()
    try:
        after = http.update_log_settings({"log_colour": True, "log_info": not before["log_info"]})
        assert "log_colour" not in after and after["log_info"] is (not before["log_info"])
        grpc.update_log_settings({"log_colour": True, "log_info": before["log_info"]})
        assert http.get_log_settings() == before
    finally:
        http.update_log_settings(before)


def test_bad_log_settings_over_grpc_are_invalid_argument(served: ServerThread) -> None:
    grpc = grpcclient.InferenceServerClient(served.grpc_url)
    with pytest.raises(InferenceServerException) as e:
        grpc.update_log_settings({"log_format": "json"})
    assert "INVALID_ARGUMENT" in str(e.value.status())
    # tritonclient sends the switches as bool_param: a number there is the wrong type
    import grpc as grpclib

    from polystack.protocol.grpc_gen import inference_pb2 as pb
    from polystack.protocol.grpc_gen import inference_pb2_grpc as pb_grpc

    with grpclib.insecure_channel(served.grpc_url) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        request = pb.LogSettingsRequest()
        request.settings["log_info"].uint32_param = 1
        with pytest.raises(grpclib.RpcError) as r:
            stub.LogSettings(request)
        assert r.value.code() == grpclib.StatusCode.INVALID_ARGUMENT and "true or false" in r.value.details()
    assert grpc.is_server_ready()


def test_the_logging_and_trace_extensions_are_off_where_settings_cannot_be_shared(
    model_store: tuple[Store, dict[str, ModelRecord]],
) -> None:
    st = start(model_store[0], models=["mlp"], runtime_settings=False)  # as in a Ray Serve replica
    try:
        http = httpclient.InferenceServerClient(st.http_url)
        extensions = http.get_server_metadata()["extensions"]
        assert "logging" not in extensions and "trace" not in extensions
        for path in ("/v2/logging", "/v2/trace/setting", "/v2/models/mlp/trace/setting"):
            status, doc = Raw(st.http_port).json("POST", path, {})
            assert status == 404 and "each replica has settings of its own" in doc["error"]
    finally:
        st.stop()


def _request_lines(log: Path) -> list[dict[str, Any]]:
    lines = [json.loads(ln) for ln in log.read_text().splitlines() if ln.startswith("{")]
    return [d for d in lines if d.get("msg") == "request" and d.get("path", "").endswith("/infer")]


def test_start_up_log_levels_map_to_the_switches() -> None:
    before = logs.SETTINGS.settings()
    try:
        for level, expected, lowest in [
            ("debug", (True, True, True, 1), logging.DEBUG),
            ("INFO", (True, True, True, 0), logging.INFO),
            ("warn", (False, True, True, 0), logging.WARNING),
            ("critical", (False, False, True, 0), logging.ERROR),
        ]:
            logs.SETTINGS.set_level(level)
            got = logs.SETTINGS.settings()
            assert (got["log_info"], got["log_warning"], got["log_error"], got["log_verbose_level"]) == expected
            assert logging.getLogger("polystack").level == lowest  # a line nobody writes costs one comparison
        with pytest.raises(InvalidRequest, match="not one of"):
            logs.SETTINGS.set_level("loud")
    finally:
        logs.SETTINGS.update(before)


def test_verbose_logs_requests_at_debug_even_with_the_access_log_and_info_off(
    model_store: tuple[Store, dict[str, ModelRecord]], tmp_path: Path
) -> None:
    store, _ = model_store
    http_port = free_port()
    log = tmp_path / "serve.log"
    with cli_server(store.settings.home, ["mlp", "--grpc-port", "-1", "--access-log"], http_port, log) as proc:
        client = httpclient.InferenceServerClient(f"127.0.0.1:{http_port}")
        x = mlp_ones()
        client.infer("mlp", [x], headers={"X-Request-ID": "access"})
        client.update_log_settings({"log_info": False, "log_verbose_level": 1})
        client.infer("mlp", [x], headers={"X-Request-ID": "verbose"})
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
    assert [(d["request_id"], d["level"]) for d in _request_lines(log)] == [("access", "info"), ("verbose", "debug")]


def test_changes_take_effect_in_the_servers_log(
    model_store: tuple[Store, dict[str, ModelRecord]], tmp_path: Path
) -> None:
    store, _ = model_store
    http_port = free_port()
    log = tmp_path / "serve.log"
    with cli_server(store.settings.home, ["mlp", "--grpc-port", "-1"], http_port, log) as proc:
        client = httpclient.InferenceServerClient(f"127.0.0.1:{http_port}")
        x = mlp_ones()
        client.infer("mlp", [x], headers={"X-Request-ID": "quiet"})
        # verbose: every request is logged, at debug, as Triton's verbose log does
        client.update_log_settings({"log_verbose_level": 1})
        client.infer("mlp", [x], headers={"X-Request-ID": "loud"})
        # info off: the line saying the server stopped (info) is not written either
        client.update_log_settings({"log_verbose_level": 0, "log_info": False})
        client.infer("mlp", [x], headers={"X-Request-ID": "quiet-again"})
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
    text = log.read_text()
    assert [(d["request_id"], d["level"]) for d in _request_lines(log)] == [("loud", "debug")], text
    messages = [json.loads(ln)["msg"] for ln in text.splitlines() if ln.startswith("{")]
    assert "serving" in messages and "stopped" not in messages
    assert messages.count("log settings changed") == 2  # said at warning, which stayed on


def test_grpc_calls_are_logged_like_http_requests(
    model_store: tuple[Store, dict[str, ModelRecord]], tmp_path: Path
) -> None:
    """A line per call (unary, and per request of a stream) with its request id and status: from the
    call's x-request-id metadata, else the inference request's id."""
    store, _ = model_store
    http_port, grpc_port = free_port(), free_port()
    log = tmp_path / "serve.log"
    args = ["mlp", "--grpc-port", str(grpc_port), "--access-log"]
    with cli_server(store.settings.home, args, http_port, log) as proc:
        g = grpcclient.InferenceServerClient(f"127.0.0.1:{grpc_port}")
        x = mlp_ones(1, grpcclient)
        g.infer("mlp", [x], headers={"x-request-id": "by-metadata"})
        with pytest.raises(InferenceServerException):
            g.infer("nope", [x], request_id="by-id")
        answers: list[Any] = []
        g.start_stream(callback=lambda result, error: answers.append(error or result))
        g.async_stream_infer("mlp", [x], request_id="streamed")
        deadline = time.monotonic() + 10
        while not answers:
            assert time.monotonic() < deadline, "the stream was not answered"
            time.sleep(0.05)
        g.stop_stream()
        g.update_log_settings({"log_info": False, "log_verbose_level": 1})
        g.infer("mlp", [x], request_id="verbose")
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
    lines = [json.loads(ln) for ln in log.read_text().splitlines() if ln.startswith("{")]
    calls = [(d["request_id"], d["rpc"].rsplit("/", 1)[1], d["status"], d["level"]) for d in lines if "rpc" in d]
    infers = [c for c in calls if c[1] in ("ModelInfer", "ModelStreamInfer")]
    assert infers == [
        ("by-metadata", "ModelInfer", "OK", "info"),
        ("by-id", "ModelInfer", "NOT_FOUND", "info"),
        ("streamed", "ModelStreamInfer", "OK", "info"),
        ("verbose", "ModelInfer", "OK", "debug"),
    ], calls
    assert any(c[1] == "ServerReady" or c[1] == "LogSettings" for c in calls)  # every call, not only inference


@pytest.fixture
def grpc_log() -> Iterator[list[logging.LogRecord]]:
    """What the gRPC transport logs, debug and up, caught in this process."""
    with caught_logs("polystack.server.grpc") as records:
        yield records


def _lines(records: list[logging.LogRecord]) -> list[tuple[str, str, str]]:
    return [
        (r.__dict__["request_id"], r.__dict__["rpc"].rsplit("/", 1)[1], r.__dict__["status"])
        for r in records
        if r.getMessage() == "request"
    ]


def test_grpc_failures_on_the_servers_side_are_logged(
    model_store: tuple[Store, dict[str, ModelRecord]], grpc_log: list[logging.LogRecord]
) -> None:
    """As the HTTP transport logs its 5xx answers, with the request's id: here a full queue (UNAVAILABLE)."""
    from polystack.batching import BatchPolicy

    policy = BatchPolicy(max_batch_size=1, max_queue_delay_ms=0, max_queue_size=1)
    st = start(model_store[0], models=["slow"], policy_for=lambda *_: policy)
    try:

        async def burst() -> list[Any]:
            client = aiogrpcclient.InferenceServerClient(st.grpc_url)
            x = mlp_ones(1, aiogrpcclient)
            calls = [client.infer("slow", [x], request_id=f"q{i}") for i in range(6)]
            done = await asyncio.gather(*calls, return_exceptions=True)
            await client.close()
            return done

        done = asyncio.run(burst())
        refused = [d for d in done if isinstance(d, InferenceServerException)]
        assert refused, done
    finally:
        st.stop()
    warned = [r.__dict__ for r in grpc_log if r.getMessage() == "request failed"]
    assert len(warned) == len(refused) and all("queued" in w["error"] for w in warned), warned
    assert {w["request_id"] for w in warned} <= {f"q{i}" for i in range(6)}
    assert {w["rpc"] for w in warned} == {"/inference.GRPCInferenceService/ModelInfer"}
    assert not [r for r in grpc_log if r.getMessage() == "request"]  # no access log asked for


def test_grpc_calls_cut_short_are_logged_as_such(
    model_store: tuple[Store, dict[str, ModelRecord]], grpc_log: list[logging.LogRecord]
) -> None:
    """A client's deadline or cancellation is the call's status in its line (not OK), and no server-side
    failure; each request of a stream is logged under its own id, the stream's metadata id after it."""
    store, records = model_store
    if "slow400" not in {r.name for r in store.models.list()}:
        register_like(store, records["mlp"], "slow400", tags={"delay_ms": "400"})
    st = start(store, models=["slow", "slow400", "mlp"], access_log=True)
    try:
        g = grpcclient.InferenceServerClient(st.grpc_url)
        x = mlp_ones(1, grpcclient)
        with pytest.raises(InferenceServerException):
            # past its deadline while the model runs: a deadline of 10 ms to a model of 50 ms could pass before
            # the server had the call (under load), which then left no line
            g.infer("slow400", [x], request_id="late", client_timeout=0.15)
        answers: list[Any] = []
        g.start_stream(callback=lambda result, error: answers.append(error or result), headers={"x-request-id": "md"})
        g.async_stream_infer("mlp", [x], request_id="s1")
        g.async_stream_infer("mlp", [x])
        deadline = time.monotonic() + 10
        while len(answers) < 2:
            assert time.monotonic() < deadline, "the stream was not answered"
            time.sleep(0.02)
        g.async_stream_infer("slow", [x], request_id="dropped")
        time.sleep(0.01)
        g.stop_stream(cancel_requests=True)
        deadline = time.monotonic() + 10
        while not any(line[0] == "dropped" for line in _lines(grpc_log)):
            assert time.monotonic() < deadline, _lines(grpc_log)
            time.sleep(0.02)
    finally:
        st.stop()
    lines = _lines(grpc_log)
    assert ("late", "ModelInfer", "DEADLINE_EXCEEDED") in lines, lines
    assert ("s1", "ModelStreamInfer", "OK") in lines and ("md", "ModelStreamInfer", "OK") in lines, lines
    assert ("dropped", "ModelStreamInfer", "CANCELLED") in lines, lines
    assert not [r for r in grpc_log if r.getMessage() == "request failed"]


def test_the_access_log_names_a_request_by_its_inference_id_without_a_header(
    model_store: tuple[Store, dict[str, ModelRecord]],
) -> None:
    """As the README says: the X-Request-ID header, else the inference request's ``id``, else one made up
    once, so that every line about one request carries the same id."""
    store, _ = model_store
    st = start(store, models=["mlp"], access_log=True)
    try:
        doc = {"id": "my-req-7", "inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 16], "data": [0.0] * 16}]}
        with caught_logs("polystack.server.http", logging.INFO) as records:
            assert Raw(st.http_port).json("POST", "/v2/models/mlp/infer", doc)[0] == 200
            assert Raw(st.http_port).json("POST", "/v2/models/mlp/infer", doc, **{"X-Request-ID": "hdr"})[0] == 200
            assert Raw(st.http_port).json("POST", "/v2/models/mlp/infer", {"inputs": doc["inputs"]})[0] == 200
        ids = [r.__dict__["request_id"] for r in records if r.getMessage() == "request"]
        assert ids[:2] == ["my-req-7", "hdr"] and ids[2].startswith("r"), ids
        # the id the answer echoes, beside the header's (helper-265: it was in no line)
        both = [r.__dict__.get("inference_id") for r in records if r.getMessage() == "request"]
        assert both == [None, "my-req-7", None], both
    finally:
        st.stop()


def test_a_grpc_call_with_an_id_and_x_request_id_metadata_logs_both(
    model_store: tuple[Store, dict[str, ModelRecord]],
) -> None:
    store, _ = model_store
    st = start(store, models=["mlp"], access_log=True, grpc_port=0)
    try:
        client = grpcclient.InferenceServerClient(f"127.0.0.1:{st.grpc_port}")
        x = grpcclient.InferInput("x", [1, 16], "FP32")
        x.set_data_from_numpy(np.zeros((1, 16), np.float32))
        with caught_logs("polystack.server.grpc", logging.INFO) as records:
            client.infer("mlp", [x], request_id="oip-1", headers={"x-request-id": "md-1"})
        said = [(r.__dict__["request_id"], r.__dict__.get("inference_id")) for r in records
                if r.getMessage() == "request"]  # fmt: skip
        assert ("md-1", "oip-1") in said, said
    finally:
        st.stop()


def test_a_log_lines_fields_are_cut_short_so_that_collectors_keep_it_one_line() -> None:
    """A client's 500 KB id made a 500 KB line, which Docker splits at 16 KiB into lines no JSON parser reads
    (helper-265)."""
    from polystack.server.logs import MAX_FIELD_CHARS, JsonFormatter

    record = logging.makeLogRecord({"msg": "request", "request_id": "x" * 500_000, "status": 200})
    line = JsonFormatter().format(record)
    doc = json.loads(line)
    assert len(line) < MAX_FIELD_CHARS + 200 and doc["status"] == 200
    assert doc["request_id"].endswith("... (500,000 characters)")
    printed = json.loads(JsonFormatter().format(logging.makeLogRecord({"msg": "y" * 100_000})))["msg"]
    assert len(printed) < 4 * MAX_FIELD_CHARS + 100 and printed.endswith("... (100,000 characters)")


CHATTY = '''
import logging
import sys
import warnings

import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args):
        print("initialize says hello")

    def execute(self, requests):
        print("to stderr", end="", file=sys.stderr)
        print(" in two writes", file=sys.stderr)
        logging.getLogger("chatty").warning("the model's own logger")
        warnings.warn("a warning of the model's")
        return [pb_utils.InferenceResponse([pb_utils.Tensor("y", np.zeros(1, np.float32))]) for _ in requests]
'''


def test_what_a_python_model_prints_logs_or_warns_is_json_lines_and_splits_none_of_polystacks(tmp_path: Path) -> None:
    """A model's print, its own logger and its warnings were plain text on the server's stderr, and a print in two
    writes (text, then its newline) had polystack's lines written between them (helper-265: 68 of 20,863 lines
    glued to a model's text, which a JSON log collector drops)."""
    from test_serve_python_models import python_folder

    repo = tmp_path / "models"
    python_folder(repo, "chatty", CHATTY, 'backend: "python"\nmax_batch_size: 0\n'
                  'input [ { name: "x", data_type: TYPE_FP32, dims: [ 1 ] } ]\n'
                  'output [ { name: "y", data_type: TYPE_FP32, dims: [ 1 ] } ]\n')  # fmt: skip
    port, log = free_port(), tmp_path / "serve.log"
    args = ["--model-repository", str(repo), "--allow-python-models", "--grpc-port", "-1", "--log-verbose", "1"]
    with cli_server(tmp_path / "home", args, port, log) as proc:
        x = httpclient.InferInput("x", [1], "FP32")
        x.set_data_from_numpy(np.zeros(1, np.float32))

        def ten(_: int) -> None:  # a client each: tritonclient's HTTP client is not shared across threads
            with httpclient.InferenceServerClient(f"127.0.0.1:{port}") as client:
                for _ in range(10):
                    client.infer("chatty", [x])

        with concurrent.futures.ThreadPoolExecutor(4) as pool:  # its lines and the access log's, at once
            list(pool.map(ten, range(4)))
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
    records = [json.loads(line) for line in log.read_text().splitlines()]  # every line JSON
    said = {(r["logger"], r["msg"]) for r in records}
    assert ("polystack.output", "initialize says hello") in said
    assert ("polystack.output", "to stderr in two writes") in said
    assert ("chatty", "the model's own logger") in said
    assert any(logger == "py.warnings" and "a warning of the model's" in msg for logger, msg in said), said
    streams = {r["stream"] for r in records if r["logger"] == "polystack.output"}
    assert streams == {"stdout", "stderr"}
    assert sum(r["msg"] == "request" and r["path"].endswith("/infer") for r in records) == 40
    assert any(r["msg"].startswith("stopping: readiness is false") for r in records)  # said when the drain begins


def test_the_access_log_names_a_request_refused_while_its_body_is_read_by_its_inference_id(
    model_store: tuple[Store, dict[str, ModelRecord]],
) -> None:
    """A request whose tensors are refused as its body is read (three values for sixteen, a binary section shorter
    than its binary_data_size) is logged under the ``id`` it gave, as one refused later is: the requests a user
    looks for by id are the failed ones."""
    store, _ = model_store
    st = start(store, models=["mlp"], access_log=True)
    try:
        short = {"id": "short-1", "inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 16], "data": [0.0] * 3}]}
        binary = {"id": "bin-1", "inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 16],
                                             "parameters": {"binary_data_size": 64}}]}  # fmt: skip
        head = json.dumps(binary).encode()
        with caught_logs("polystack.server.http", logging.INFO) as records:
            assert Raw(st.http_port).json("POST", "/v2/models/mlp/infer", short)[0] == 400
            status, _, _ = Raw(st.http_port).request(
                "POST", "/v2/models/mlp/infer", head + bytes(32), {"Inference-Header-Content-Length": str(len(head))}
            )
            assert status == 400
            assert Raw(st.http_port).json("POST", "/v2/models/mlp/infer", {"inputs": short["inputs"]})[0] == 400
        ids = [r.__dict__["request_id"] for r in records if r.getMessage() == "request"]
        assert ids[:2] == ["short-1", "bin-1"] and ids[2].startswith("r"), ids
    finally:
        st.stop()


def test_a_request_made_up_id_is_made_once() -> None:
    from polystack.server.http import Request

    req = Request(b"GET", "/v2", {}, b"", True)
    assert req.request_id == req.request_id


def test_tritons_log_flags_set_the_settings_a_server_starts_with(
    model_store: tuple[Store, dict[str, ModelRecord]], tmp_path: Path
) -> None:
    """tritonserver's --log-verbose, --log-info, --log-warning, --log-error, --log-format and --log-file (a
    launch script's) start polystack as they start Triton: they were refused as unknown options."""
    store, _ = model_store
    http_port = free_port()
    log_file, stderr = tmp_path / "triton.log", tmp_path / "stderr.log"
    log_file.write_text("kept\n")  # appended to, as Triton appends
    args = ["mlp", "--grpc-port", "-1", "--log-verbose=1", "--log-info", "false", "--log-warning=0",
            "--log-error=true", "--log-format", "ISO8601", "--log-file", str(log_file)]  # fmt: skip
    with cli_server(store.settings.home, args, http_port, stderr) as proc:
        client = httpclient.InferenceServerClient(f"127.0.0.1:{http_port}")
        assert client.get_log_settings() == {
            "log_file": str(log_file), "log_info": False, "log_warning": False, "log_error": True,
            "log_verbose_level": 1, "log_format": "ISO8601",
        }  # fmt: skip
        client.infer("mlp", [mlp_ones()], headers={"X-Request-ID": "verbose"})
        with pytest.raises(InferenceServerException, match=f"polystack logs to {log_file}"):
            client.update_log_settings({"log_file": ""})
        assert client.update_log_settings({"log_file": str(log_file)})["log_file"] == str(log_file)  # as it is
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
    assert log_file.read_text().startswith("kept\n")
    assert [(d["request_id"], d["level"]) for d in _request_lines(log_file)] == [("verbose", "debug")]
    levels = {json.loads(ln)["level"] for ln in log_file.read_text().splitlines() if ln.startswith("{")}
    assert levels == {"debug"}, levels  # info and warning off: the serving line (info) is not written
    assert not [ln for ln in stderr.read_text().splitlines() if ln.startswith("{")]  # nothing on stderr


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["--log-verbose", "loud"], "--log-verbose takes a level (0: off, 1 or more: on), not 'loud'"),
        (["--log-verbose", "-1"], "--log-verbose takes 0 (off) or a level from 1, not -1"),
        (["--log-info", "maybe"], "--log-info takes 1 or 0 (true or false), not 'maybe'"),
        (["--log-format", "iso8601"], "invalid argument for --log-format: 'iso8601'; give default or ISO8601"),
        (["--log-file", "/nonexistent/dir/x.log"], "--log-file /nonexistent/dir/x.log: cannot open it"),
        (["--log-file", "x.log", "--engine", "ray"], "Ray Serve replicas run as processes of their own"),
    ],
)
def test_tritons_log_flags_with_bad_values_exit_2(tmp_path: Path, args: list[str], words: str) -> None:
    assert words in refused_at_start(tmp_path, args)


def test_a_server_started_with_nothing_to_serve_says_how_to_give_it_a_model(tmp_path: Path) -> None:
    port = free_port()
    log = tmp_path / "serve.log"
    with cli_server(tmp_path / "home", ["--grpc-port", str(free_port())], port, log):
        assert until(lambda: "serving no model" in log.read_text(), 10)  # (ready may come before the line)
    warned = [json.loads(line) for line in log.read_text().splitlines() if "no model" in line]
    assert warned and warned[0]["level"] == "warning"
    assert "polystack register" in warned[0]["msg"] and "--model-repository" in warned[0]["msg"]


def test_output_as_log_lines_keeps_each_threads_partial_line_its_own_and_passes_bytes_through() -> None:
    import sys
    import threading

    before = sys.stdout
    with caught_logs("polystack.output", logging.INFO) as records, logs.output_as_log_lines():
        sys.stdout.write("first half ")

        def other() -> None:
            sys.stdout.write("another thread's line\n")

        thread = threading.Thread(target=other)
        thread.start()
        thread.join()
        sys.stdout.write("second half\n")
        assert sys.stdout is not before and sys.stdout.buffer is before.buffer  # bytes go past the log
        sys.stdout.write("left without its newline")
    said = [(r.getMessage(), r.__dict__["stream"]) for r in records]
    assert said == [("another thread's line", "stdout"), ("first half second half", "stdout"),
                    ("left without its newline", "stdout")], said  # fmt: skip
