"""Triton's trace files (its ``triton`` trace mode): what a server started with ``--trace-config triton,file=...``
writes for each sampled request, read back as Triton's tools read it (a JSON array of objects grouped by trace
id), for requests from the real tritonclient over HTTP and gRPC; the numbered files of ``log_frequency``; the
trace extension's settings in that mode."""

from __future__ import annotations

import concurrent.futures
import json
import signal
import time
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from servekit import cli_server, failing_at_run, free_port, mlp_ones, start, until
from test_serve_ensemble import pipeline_repository
from tritonclient.utils import InferenceServerException

from polystack.server.app import ServerThread
from polystack.server.request_trace import TENSORS
from polystack.store import ModelRecord, Store

COMPUTE = ["COMPUTE_START", "COMPUTE_INPUT_END", "COMPUTE_OUTPUT_START", "COMPUTE_END", "REQUEST_END"]
# in the order tritonserver 2.51 writes them (helper-120), which is not the order they happened in
HTTP_STAMPS = ["HTTP_RECV_START", "HTTP_RECV_END", "REQUEST_START", "QUEUE_START", "INFER_RESPONSE_COMPLETE",
               *COMPUTE, "HTTP_SEND_START", "HTTP_SEND_END"]  # fmt: skip
GRPC_STAMPS = ["REQUEST_START", "QUEUE_START", *COMPUTE, "GRPC_WAITREAD_START", "GRPC_WAITREAD_END",
               "INFER_RESPONSE_COMPLETE", "GRPC_SEND_START", "GRPC_SEND_END"]  # fmt: skip
# the order they happened in
HAPPENED = ["RECV_START", "RECV_END", "REQUEST_START", "QUEUE_START", "COMPUTE_START", "COMPUTE_INPUT_END",
            "COMPUTE_OUTPUT_START", "COMPUTE_END", "INFER_RESPONSE_COMPLETE", "REQUEST_END", "SEND_START", "SEND_END"]  # fmt: skip


def _traces(path: Path) -> dict[int, list[dict[str, Any]]]:
    """The file's objects by trace id, in the order written (the file must be one whole JSON array)."""
    by_id: dict[int, list[dict[str, Any]]] = defaultdict(list)
    for entry in json.loads(path.read_text()):
        by_id[entry["id"]].append(entry)
    return dict(by_id)


def _numbered(folder: Path) -> list[Path]:
    """The numbered files of trace.json there, in order."""
    found = [f for f in folder.glob("trace.json.*") if f.suffix[1:].isdigit()]
    return sorted(found, key=lambda f: int(f.suffix[1:]))


def _head(entries: list[dict[str, Any]]) -> dict[str, Any]:
    (head,) = [e for e in entries if "model_name" in e]
    return head


def _stamps(entries: list[dict[str, Any]]) -> list[tuple[str, int]]:
    return [(t["name"], t["ns"]) for e in entries if "timestamps" in e for t in e["timestamps"]]


def _tensors(entries: list[dict[str, Any]]) -> list[tuple[str, dict[str, str]]]:
    return [(e["activity"], e["tensor"]) for e in entries if "activity" in e]


@pytest.fixture
def traced(model_store: tuple[Store, dict[str, ModelRecord]], tmp_path: Path) -> Iterator[tuple[ServerThread, Path]]:
    """A server writing Triton's trace file for every request, at level TIMESTAMPS."""
    path = tmp_path / "trace.json"
    st = start(model_store[0], models=["mlp", "ident64"], trace=True, trace_mode="triton", trace_file=str(path))
    yield st, path
    st.stop()


def test_each_request_is_traced_with_tritons_timestamps_over_http_and_grpc_in_order_on_the_monotonic_clock(
    traced: tuple[ServerThread, Path],
) -> None:
    st, path = traced
    before = time.monotonic_ns()  # Triton's steady clock: CLOCK_MONOTONIC
    httpclient.InferenceServerClient(st.http_url).infer("mlp", [mlp_ones(2)], request_id="h-1")
    grpcclient.InferenceServerClient(f"127.0.0.1:{st.grpc_port}").infer("mlp", [mlp_ones(1, grpcclient)])
    after = time.monotonic_ns()
    st.stop()  # the file's array is closed as the server stops
    traces = _traces(path)
    assert len(traces) == 2, traces
    (first, http), (second, grpc) = sorted(traces.items())
    assert second > first
    assert _head(http) == {"id": first, "model_name": "mlp", "model_version": 1, "request_id": "h-1"}
    assert _head(grpc) == {"id": second, "model_name": "mlp", "model_version": 1}  # no id: no request_id
    for entries, names in ((http, HTTP_STAMPS), (grpc, GRPC_STAMPS)):
        stamps = _stamps(entries)
        assert [n for n, _ in stamps] == names
        at = {n.replace("GRPC_WAITREAD", "RECV").removeprefix("HTTP_").removeprefix("GRPC_"): ns for n, ns in stamps}
        times = [at[n] for n in HAPPENED]
        assert times == sorted(times) and before <= times[0] and times[-1] <= after, stamps
        assert _tensors(entries) == []  # TIMESTAMPS alone
    # the request's own object comes just before its REQUEST_START, the front end's receipt first (Triton's order)
    assert "model_name" in http[2] and http[3]["timestamps"][0]["name"] == "REQUEST_START"


def test_level_tensors_writes_each_requests_tensors_as_triton_writes_them(
    model_store: tuple[Store, dict[str, ModelRecord]], tmp_path: Path
) -> None:
    path = tmp_path / "trace.json"
    st = start(
        model_store[0], models=["ident64", "notb", "strid", "two"], trace=True, trace_mode="triton",
        trace_file=str(path), trace_levels=TENSORS,
    )  # fmt: skip
    try:
        client = httpclient.InferenceServerClient(st.http_url)
        cases: list[tuple[str, str, np.ndarray]] = [
            ("ident64", "a", np.array([[1, -2, 3, 2**40]], np.int64)),
            ("notb", "p", np.array([[True, False, True]])),
            ("strid", "s", np.array([[b"ab", 'q"ü'.encode()]], dtype=np.object_)),
            ("two", "x", np.array([[0.1, 1e-7, 1234567.0, -2.5]], np.float32)),
        ]
        for model, name, array in cases:
            tensor = httpclient.InferInput(name, list(array.shape), {"i": "INT64", "b": "BOOL", "O": "BYTES"}.get(
                array.dtype.kind, "FP32"))  # fmt: skip
            tensor.set_data_from_numpy(array)
            client.infer(model, [tensor])
    finally:
        st.stop()
    traces = [entries for _, entries in sorted(_traces(path).items())]
    # TENSORS alone: no timestamps, and no object naming the request either (Triton writes that with its timestamps)
    assert all(_stamps(t) == [] and not any("model_name" in e for e in t) for t in traces)
    assert [_tensors(t)[0][1]["name"] for t in traces] == ["a", "p", "s", "x"]  # ident64, notb, strid, two
    ident, notb, strid, two = (_tensors(t) for t in traces)
    int_in = {"name": "a", "data": f"1,-2,3,{2**40}", "shape": "1,4", "dtype": "INT64"}
    # the inputs as queued and the outputs as answered, as Triton's writes them (no backend inputs)
    assert ident == [("TENSOR_QUEUE_INPUT", int_in), ("TENSOR_BACKEND_OUTPUT", {**int_in, "name": "b"})]
    assert notb[0][1] == {"name": "p", "data": "1,0,1", "shape": "1,3", "dtype": "BOOL"}
    assert notb[1][1]["data"] == "0,1,0"
    # in quotes, as Triton's; the file stays JSON (Triton writes a quote inside one as it is)
    assert strid[0][1] == {"name": "s", "data": '"ab","q"ü"', "shape": "1,2", "dtype": "BYTES"}
    # floats as a C++ stream prints them (%g: six significant digits)
    assert two[0][1] == {"name": "x", "data": "0.1,1e-07,1.23457e+06,-2.5", "shape": "1,4", "dtype": "FP32"}
    assert [(activity, t["name"]) for activity, t in two[1:]] == [
        ("TENSOR_BACKEND_OUTPUT", "same"), ("TENSOR_BACKEND_OUTPUT", "neg")
    ]  # fmt: skip
    assert two[2][1]["data"] == "-0.1,-1e-07,-1.23457e+06,2.5"


DOUBLING = """
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):
        return [pb_utils.InferenceResponse([pb_utils.Tensor("y", pb_utils.get_input_tensor_by_name(r, "x").as_numpy() * 2)])
                for r in requests]
"""


def test_level_tensors_writes_a_python_models_outputs_and_an_ensembles_own_tensors(tmp_path: Path) -> None:
    """helper-181 (L0_cmdline_trace): tritonserver 2.51 writes a Python model's outputs, and an ensemble's own
    inputs and outputs, as it enqueues a request and sends its response; polystack wrote neither."""
    repo, port, path = tmp_path / "models", free_port(), tmp_path / "trace.json"
    io = 'input [ { name: "x", data_type: TYPE_FP32, dims: [ 2 ] } ]\noutput [ { name: "y", data_type: TYPE_FP32, dims: [ 2 ] } ]\n'
    (repo / "double" / "1").mkdir(parents=True)
    (repo / "double" / "1" / "model.py").write_text(DOUBLING)
    (repo / "double" / "config.pbtxt").write_text('backend: "python"\n' + io)
    (repo / "pipe" / "1").mkdir(parents=True)
    (repo / "pipe" / "config.pbtxt").write_text(
        'platform: "ensemble"\n' + io + 'ensemble_scheduling { step [ { model_name: "double" model_version: -1 '
        'input_map { key: "x" value: "x" } output_map { key: "y" value: "mid" } }, { model_name: "double" '
        'model_version: -1 input_map { key: "x" value: "mid" } output_map { key: "y" value: "y" } } ] }\n'
    )
    args = ["--model-repository", str(repo), "--allow-python-models", "--grpc-port", "-1",
            "--trace-config", f"triton,file={path}", "--trace-config", "level=TENSORS", "--trace-config", "rate=1"]  # fmt: skip
    with cli_server(tmp_path / "home", args, port, tmp_path / "serve.log") as proc:
        client = httpclient.InferenceServerClient(f"127.0.0.1:{port}")
        x = httpclient.InferInput("x", [2], "FP32")
        x.set_data_from_numpy(np.array([1.0, -2.0], np.float32))
        for model in ("double", "pipe"):
            client.infer(model, [x])
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0, (tmp_path / "serve.log").read_text()
    traces = [_tensors(entries) for _, entries in sorted(_traces(path).items())]

    def tensor(name: str, data: str) -> dict[str, str]:
        return {"name": name, "data": data, "shape": "2", "dtype": "FP32"}

    alone, pipe, first, second = traces  # the model's request, then the ensemble's and its steps'
    assert alone == [("TENSOR_QUEUE_INPUT", tensor("x", "1,-2")), ("TENSOR_BACKEND_OUTPUT", tensor("y", "2,-4"))]
    assert pipe == [("TENSOR_QUEUE_INPUT", tensor("x", "1,-2")), ("TENSOR_BACKEND_OUTPUT", tensor("y", "4,-8"))]
    assert first == [("TENSOR_QUEUE_INPUT", tensor("x", "1,-2")), ("TENSOR_BACKEND_OUTPUT", tensor("y", "2,-4"))]
    assert second == [("TENSOR_QUEUE_INPUT", tensor("x", "2,-4")), ("TENSOR_BACKEND_OUTPUT", tensor("y", "4,-8"))]


CALLING = """
import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):
        out = []
        for r in requests:
            x = pb_utils.get_input_tensor_by_name(r, "x")
            traced = pb_utils.InferenceRequest(model_name="double", inputs=[x], requested_output_names=["y"],
                                               trace=r.trace())
            traced.set_flags(0)
            y = pb_utils.get_output_tensor_by_name(traced.exec(), "y").as_numpy()
            untraced = pb_utils.InferenceRequest(model_name="double", inputs=[pb_utils.Tensor("x", y)],
                                                 requested_output_names=["y"])
            y = pb_utils.get_output_tensor_by_name(untraced.exec(), "y").as_numpy()
            context = np.array([repr(r.trace().get_context()).encode()], dtype=np.object_)
            out.append(pb_utils.InferenceResponse([pb_utils.Tensor("y", y), pb_utils.Tensor("context", context)]))
        return out
"""


def calling_repository(repo: Path) -> Path:
    """``calling`` (CALLING) and the ``double`` it calls, Python models in ``repo``."""
    io = 'input [ { name: "x", data_type: TYPE_FP32, dims: [ 2 ] } ]\noutput [ { name: "y", data_type: TYPE_FP32, dims: [ 2 ] } ]\n'
    for name, source, extra in (("double", DOUBLING, ""),
                                ("calling", CALLING, 'output [ { name: "context", data_type: TYPE_STRING, dims: [ 1 ] } ]\n')):  # fmt: skip
        (repo / name / "1").mkdir(parents=True)
        (repo / name / "1" / "model.py").write_text(source)
        (repo / name / "config.pbtxt").write_text('backend: "python"\n' + io + extra)
    return repo


def test_a_request_a_python_model_sends_with_its_requests_trace_is_traced_as_its_child_and_no_other_is(
    tmp_path: Path,
) -> None:
    """Triton's BLS tracing (``InferenceRequest(..., trace=request.trace())``), as tritonserver 2.51 writes it (run
    here beside polystack): the call made with the request's trace is a trace whose parent is the request's, the
    call made without one is not traced, and ``get_context()`` is None in the trace-file mode. polystack's
    requests had no ``trace()``, and every request of such a model failed."""
    repo, port, path = calling_repository(tmp_path / "models"), free_port(), tmp_path / "trace.json"
    args = ["--model-repository", str(repo), "--allow-python-models", "--grpc-port", "-1",
            "--trace-config", f"triton,file={path}", "--trace-config", "level=TIMESTAMPS", "--trace-config", "rate=1"]  # fmt: skip
    with cli_server(tmp_path / "home", args, port, tmp_path / "serve.log") as proc:
        client = httpclient.InferenceServerClient(f"127.0.0.1:{port}")
        x = httpclient.InferInput("x", [2], "FP32")
        x.set_data_from_numpy(np.array([1.0, -2.0], np.float32))
        answer = client.infer("calling", [x], request_id="r1")
        np.testing.assert_array_equal(answer.as_numpy("y"), np.array([4.0, -8.0], np.float32))
        assert answer.as_numpy("context").tolist() == [b"None"]
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0, (tmp_path / "serve.log").read_text()
    heads = {i: _head(entries) for i, entries in _traces(path).items()}
    (root,) = [i for i, h in heads.items() if h["model_name"] == "calling"]
    assert heads[root]["request_id"] == "r1" and "parent_id" not in heads[root]
    (child,) = [h for h in heads.values() if h["model_name"] == "double"]  # the call without the trace: none
    assert child["parent_id"] == root


def test_batched_requests_are_traces_of_their_own_sharing_their_batchs_compute_timestamps(
    model_store: tuple[Store, dict[str, ModelRecord]], tmp_path: Path
) -> None:
    from polystack.batching import BatchPolicy

    path = tmp_path / "trace.json"
    st = start(
        model_store[0], models=["slow"], trace=True, trace_mode="triton", trace_file=str(path),
        batching=BatchPolicy(max_batch_size=8, max_queue_delay_ms=200),
    )  # fmt: skip
    try:
        with concurrent.futures.ThreadPoolExecutor(4) as pool:
            calls = [
                pool.submit(httpclient.InferenceServerClient(st.http_url).infer, "slow", [mlp_ones()], request_id=f"b{i}")
                for i in range(4)
            ]
            for call in calls:
                call.result(timeout=30)
    finally:
        st.stop()
    traces = _traces(path)
    assert sorted(_head(t)["request_id"] for t in traces.values()) == ["b0", "b1", "b2", "b3"]
    computes = {tuple(ns for n, ns in _stamps(t) if n.startswith("COMPUTE")) for t in traces.values()}
    assert len(computes) < 4, computes  # some requests ran in one batch: one model call's timestamps
    for entries in traces.values():
        assert [n for n, _ in _stamps(entries)] == HTTP_STAMPS


def test_an_ensembles_steps_are_traces_whose_parent_is_the_ensembles_and_log_frequency_numbers_the_files(
    tmp_path: Path,
) -> None:
    """Started as a Triton user starts tritonserver; one trace in 2 (the second request), each file holding two
    traces, the one left at SIGTERM in the next file."""
    repo, port, path = pipeline_repository(tmp_path / "models"), free_port(), tmp_path / "trace.json"
    args = ["--model-repository", str(repo), "--grpc-port", "-1", "--trace-config", f"triton,file={path}",
            "--trace-config", "level=TIMESTAMPS", "--trace-config", "rate=2",
            "--trace-config", "triton,log-frequency=2"]  # fmt: skip
    with cli_server(tmp_path / "home", args, port, tmp_path / "serve.log") as proc:
        client = httpclient.InferenceServerClient(f"127.0.0.1:{port}")
        settings = client.get_trace_settings()
        assert settings == {
            "trace_level": ["TIMESTAMPS"], "trace_rate": "2", "trace_count": "-1", "log_frequency": "2",
            "trace_file": str(path), "trace_mode": "triton",
        }  # fmt: skip
        x = httpclient.InferInput("IN", [1, 16], "FP32")
        x.set_data_from_numpy(np.ones((1, 16), np.float32))
        for i in range(6):
            client.infer("pipe" if i < 2 else "mlp", [x] if i < 2 else [mlp_ones()], request_id=f"q{i}")
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0, (tmp_path / "serve.log").read_text()
    assert not path.exists()  # with a log frequency, every trace went into a numbered file
    files = _numbered(tmp_path)
    assert [f.name for f in files] == ["trace.json.0", "trace.json.1"]
    first = _traces(files[0])
    roots = {i: e for i, e in first.items() if "parent_id" not in _head(e)}
    steps = {i: e for i, e in first.items() if "parent_id" in _head(e)}
    assert [_head(e)["request_id"] for e in roots.values()] == ["q1", "q3"]  # the 2nd and 4th requests
    (pipe,) = [i for i, e in roots.items() if _head(e)["model_name"] == "pipe"]
    assert sorted(_head(e)["model_name"] for e in steps.values()) == ["head", "mlp", "neg"]
    assert {_head(e)["parent_id"] for e in steps.values()} == {pipe}
    assert all(_head(e)["request_id"] == "q1" for e in steps.values())  # a step carries its request's id
    assert [n for n, _ in _stamps(first[pipe])] == [  # as Triton's: its steps compute, it does not
        "HTTP_RECV_START", "HTTP_RECV_END", "REQUEST_START", "QUEUE_START", "INFER_RESPONSE_COMPLETE", "REQUEST_END",
        "HTTP_SEND_START", "HTTP_SEND_END",
    ]  # fmt: skip
    for entries in steps.values():
        assert [n for n, _ in _stamps(entries)] == ["REQUEST_START", "QUEUE_START", *COMPUTE]
    (left,) = _traces(files[1]).values()  # the 6th request, written at shutdown
    assert _head(left)["request_id"] == "q5"


def test_the_trace_extension_shows_and_changes_the_file_settings_in_tritons_words(
    traced: tuple[ServerThread, Path],
) -> None:
    st, path = traced
    http = httpclient.InferenceServerClient(st.http_url)
    grpc = grpcclient.InferenceServerClient(f"127.0.0.1:{st.grpc_port}")
    shown = {"trace_level": ["TIMESTAMPS"], "trace_rate": "1", "trace_count": "-1", "log_frequency": "0",
             "trace_file": str(path), "trace_mode": "triton"}  # fmt: skip
    assert http.get_trace_settings() == shown
    got = grpc.get_trace_settings(as_json=True)["settings"]
    assert {k: v["value"] for k, v in got.items()} == {k: v if isinstance(v, list) else [v] for k, v in shown.items()}
    changed = http.update_trace_settings("mlp", {"log_frequency": "3", "trace_level": ["TIMESTAMPS", "TENSORS"]})
    assert changed == {**shown, "log_frequency": "3", "trace_level": ["TIMESTAMPS", "TENSORS"]}
    assert http.get_trace_settings() == shown  # the model's alone
    for client in (http, grpc):
        with pytest.raises(InferenceServerException, match="trace file location can not be updated"):
            client.update_trace_settings(settings={"trace_file": "/tmp/elsewhere.json"})
    with pytest.raises(InferenceServerException, match="log_frequency must be between 0"):
        http.update_trace_settings(settings={"log_frequency": "-1"})
    with pytest.raises(InferenceServerException) as e:  # tritonserver 2.51's words first (helper-166)
        http.update_trace_settings(settings={"log_frequency": "4294967296"})
    assert "Unable to parse 'log_frequency', value is out of range [ 0, 4294967295 ], got: 4294967296" in e.value.message()
    assert http.update_trace_settings(settings={"trace_count": "1"})["trace_count"] == "1"
    http.infer("ident64", [_ident_ones()])
    assert http.get_trace_settings()["trace_count"] == "0"  # taken
    numbered = path.with_name("trace.json.0")
    assert until(numbered.exists, 10)  # at once, as Triton's (by the file's writer thread)
    assert [_head(t)["model_name"] for t in _traces(numbered).values()] == ["ident64"]
    http.infer("ident64", [_ident_ones()])
    st.stop()
    assert not path.exists()  # the count's traces went into the numbered file alone


def _ident_ones() -> httpclient.InferInput:
    x = httpclient.InferInput("a", [1, 4], "INT64")
    x.set_data_from_numpy(np.ones((1, 4), np.int64))
    return x


def test_turning_tracing_on_without_a_file_is_refused_in_tritons_words(
    model_store: tuple[Store, dict[str, ModelRecord]],
) -> None:
    st = start(model_store[0], models=["mlp"], trace_mode="triton")
    try:
        client = httpclient.InferenceServerClient(st.http_url)
        assert client.get_trace_settings()["trace_file"] == ""
        with pytest.raises(InferenceServerException, match="Attempting to set invalid trace setting :trace file name"):
            client.update_trace_settings(settings={"trace_level": ["TIMESTAMPS"]})
        assert client.get_trace_settings()["trace_level"] == ["OFF"]
    finally:
        st.stop()


def test_a_level_set_at_run_time_starts_tracing_into_the_file(
    model_store: tuple[Store, dict[str, ModelRecord]], tmp_path: Path
) -> None:
    path = tmp_path / "trace.json"
    st = start(model_store[0], models=["mlp"], trace_mode="triton", trace_file=str(path))
    try:
        client = httpclient.InferenceServerClient(st.http_url)
        client.infer("mlp", [mlp_ones()], request_id="before")
        client.update_trace_settings(settings={"trace_level": ["TIMESTAMPS"]})
        client.infer("mlp", [mlp_ones()], request_id="after")
    finally:
        st.stop()
    assert [_head(t)["request_id"] for t in _traces(path).values()] == ["after"]


def test_a_request_refused_before_its_run_is_not_traced_and_one_failing_in_it_is(
    model_store: tuple[Store, dict[str, ModelRecord]], tmp_path: Path
) -> None:
    """As tritonserver 2.51: a missing input leaves no trace; a model that fails leaves its whole trace."""
    from polystack.formats import import_model

    store, _ = model_store
    imported = import_model(failing_at_run(tmp_path / "failing.onnx"), tmp_path / "import")
    store.register(imported.artifact, name="failing", format=imported.format, signature=imported.signature)
    path = tmp_path / "trace.json"
    st = start(store, models=["mlp", "failing"], trace=True, trace_mode="triton", trace_file=str(path))
    try:
        client = httpclient.InferenceServerClient(st.http_url)
        wrong = httpclient.InferInput("nope", [1, 16], "FP32")
        wrong.set_data_from_numpy(np.ones((1, 16), np.float32))
        with pytest.raises(InferenceServerException, match="nope"):
            client.infer("mlp", [wrong], request_id="refused")
        x = httpclient.InferInput("x", [1, 2], "FP32")
        x.set_data_from_numpy(np.zeros((1, 2), np.float32))
        with pytest.raises(InferenceServerException, match="cannot be reshaped"):
            client.infer("failing", [x], request_id="failed")
    finally:
        st.stop()
    (failed,) = _traces(path).values()
    assert _head(failed)["request_id"] == "failed"
    assert [n for n, _ in _stamps(failed)] == HTTP_STAMPS


def test_a_spent_count_writes_its_traces_at_once_even_when_one_of_its_requests_was_refused(
    traced: tuple[ServerThread, Path],
) -> None:
    st, path = traced
    client = httpclient.InferenceServerClient(st.http_url)
    client.update_trace_settings(settings={"trace_count": "2"})
    wrong = httpclient.InferInput("nope", [1, 4], "INT64")
    wrong.set_data_from_numpy(np.ones((1, 4), np.int64))
    with pytest.raises(InferenceServerException, match="nope"):
        client.infer("ident64", [wrong])  # takes one of the two, and leaves no trace
    client.infer("ident64", [_ident_ones()], request_id="kept")
    numbered = path.with_name("trace.json.0")
    assert until(numbered.exists, 10)
    assert [_head(t)["request_id"] for t in _traces(numbered).values()] == ["kept"]


def test_traces_of_requests_running_across_a_settings_update_are_written(
    model_store: tuple[Store, dict[str, ModelRecord]], tmp_path: Path
) -> None:
    """helper-124: an update replaced every scope's collector, and the traces of requests still running went into
    the replaced one, never to be written."""
    path = tmp_path / "trace.json"
    st = start(model_store[0], models=["slow", "mlp"], trace=True, trace_mode="triton", trace_file=str(path),
               trace_log_frequency=2)  # fmt: skip
    try:
        client = httpclient.InferenceServerClient(st.http_url)
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            running = pool.submit(httpclient.InferenceServerClient(st.http_url).infer, "slow", [mlp_ones()],
                                  request_id="running")  # fmt: skip
            time.sleep(0.02)
            client.update_trace_settings("mlp", {"trace_rate": "1"})  # another model's
            client.update_trace_settings(settings={})  # and the global ones, changing nothing
            running.result(timeout=30)
        for i in range(3):
            client.infer("mlp", [mlp_ones()], request_id=f"after{i}")
    finally:
        st.stop()
    ids = sorted(_head(t)["request_id"] for f in _numbered(tmp_path) for t in _traces(f).values())
    assert ids == ["after0", "after1", "after2", "running"]


def test_a_global_count_spent_by_one_model_writes_what_another_models_settings_took(
    traced: tuple[ServerThread, Path],
) -> None:
    st, path = traced
    client = httpclient.InferenceServerClient(st.http_url)
    client.update_trace_settings("ident64", {"log_frequency": "0"})  # a scope of its own, drawing on the global count
    client.update_trace_settings(settings={"trace_count": "2"})
    client.infer("ident64", [_ident_ones()], request_id="first")
    client.infer("mlp", [mlp_ones()], request_id="second")  # spends the count
    assert until(lambda: len(_numbered(path.parent)) == 2, 10)
    ids = sorted(_head(t)["request_id"] for f in _numbered(path.parent) for t in _traces(f).values())
    assert ids == ["first", "second"]


def test_an_upgrade_request_is_traced_with_its_receipt(traced: tuple[ServerThread, Path]) -> None:
    """helper-124: a request with an Upgrade header (curl --http2) was traced with HTTP_RECV_* at 0."""
    import http.client

    st, path = traced
    body = json.dumps({"inputs": [{"name": "x", "shape": [1, 16], "datatype": "FP32", "data": [1.0] * 16}]})
    conn = http.client.HTTPConnection("127.0.0.1", st.http_port, timeout=30)
    before = time.monotonic_ns()
    conn.request("POST", "/v2/models/mlp/infer", body, {"Upgrade": "h2c", "Connection": "Upgrade, HTTP2-Settings"})
    assert conn.getresponse().status == 200
    conn.close()
    st.stop()
    (trace,) = _traces(path).values()
    assert all(ns >= before for _, ns in _stamps(trace))


def test_an_ensemble_whose_later_step_is_refused_keeps_the_steps_that_ran(tmp_path: Path) -> None:
    """helper-124: the refused step's error reached the ensemble as a refusal before its run, and dropped the whole
    trace."""
    import asyncio

    from polystack.errors import InvalidTensor
    from polystack.server.tracing import Tracing

    path = tmp_path / "trace.json"
    tracing = Tracing(True, mode="triton", file=str(path))

    async def step(name: str, refused: bool) -> None:
        with tracing.span(name, 1, "r", step=True) as trace:
            if refused:
                raise InvalidTensor(f"{name}: refused before its run")
            trace.stages(1, 2, 3, {}, {})

    async def ensemble() -> None:
        with tracing.span("pipe", 1, "r", ensemble=True):
            await asyncio.ensure_future(step("first", False))
            await asyncio.ensure_future(step("second", True))

    with pytest.raises(InvalidTensor):
        asyncio.run(ensemble())
    tracing.shutdown()
    assert sorted(_head(t)["model_name"] for t in _traces(path).values()) == ["first", "pipe"]
