"""tritonclient's HTTP clients (sync and asyncio) against a real server: every datatype, both encodings."""

from __future__ import annotations

import asyncio
import gzip
import http.client
import json
import re
import threading
import urllib.request
import zlib
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
import tritonclient.http.aio as aiohttpclient
from conftest import Raw
from servekit import mlp_ones, register_like, start, threads_calling, until
from tritonclient.utils import InferenceServerException

from polystack.examples import mlp_onnx
from polystack.formats import import_model
from polystack.server.app import ServerThread
from polystack.store import ModelRecord, Store

CASES = [
    ("mlp", "x", "y", "FP32", np.random.default_rng(0).standard_normal((3, 16)).astype(np.float32)),
    ("ident64", "a", "b", "INT64", np.array([[1, -2, 3, 2**40], [0, 5, -6, 7]], dtype=np.int64)),
    ("notb", "p", "q", "BOOL", np.array([[True, False, True], [False, False, True]])),
    ("strid", "s", "t", "BYTES", np.array([[b"hello", b""], ["ünï".encode(), b"with space"]], dtype=object)),
]


def expected(model: str, arr: np.ndarray) -> np.ndarray | None:
    if model == "notb":
        return ~arr
    if model in ("ident64", "strid"):
        return arr
    return None  # mlp: checked against onnxruntime below


@pytest.fixture(scope="module")
def client(server: ServerThread) -> httpclient.InferenceServerClient:
    return httpclient.InferenceServerClient(server.http_url)


def mlp_reference(server: ServerThread, x: np.ndarray) -> np.ndarray:
    return server.server.engine.infer("mlp", {"x": x})["y"]


@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
@pytest.mark.parametrize(("model", "inp", "out", "dtype", "arr"), CASES, ids=[c[0] for c in CASES])
def test_infer_every_datatype_binary_and_json(
    client: httpclient.InferenceServerClient,
    server: ServerThread,
    model: str,
    inp: str,
    out: str,
    dtype: str,
    arr: np.ndarray,
    binary: bool,
) -> None:
    i = httpclient.InferInput(inp, list(arr.shape), dtype)
    i.set_data_from_numpy(arr, binary_data=binary)
    outputs = [httpclient.InferRequestedOutput(out, binary_data=binary)]
    result = client.infer(model, [i], outputs=outputs, request_id="req-7")
    got = result.as_numpy(out)
    assert result.get_response()["id"] == "req-7"
    want = expected(model, arr)
    if want is None:
        want = mlp_reference(server, arr)
        np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)
    elif dtype == "BYTES" and not binary:
        # JSON carries BYTES as text: what is valid UTF-8 comes back as the same bytes
        assert got.shape == want.shape
        assert got[0, 0] in (b"hello", "hello")
    else:
        assert got.dtype == want.dtype or dtype == "BYTES"
        np.testing.assert_array_equal(got, want)


def test_non_finite_floats_round_trip_as_json(client: httpclient.InferenceServerClient) -> None:
    """tritonclient writes NaN / Infinity in JSON tensors (Python's json does), and reads them back."""
    x = np.array([[np.nan, np.inf, -np.inf, 1.5]], np.float32)
    i = httpclient.InferInput("x", [1, 4], "FP32")
    i.set_data_from_numpy(x, binary_data=False)
    outputs = [httpclient.InferRequestedOutput(n, binary_data=False) for n in ("same", "neg")]
    result = client.infer("two", [i], outputs=outputs)
    np.testing.assert_array_equal(result.as_numpy("same"), x)
    np.testing.assert_array_equal(result.as_numpy("neg"), -x)


def test_binary_data_output_is_for_the_outputs_a_request_does_not_list(raw: Raw) -> None:
    """As Triton's L0_http checks: an output the request lists is binary only when its own binary_data says
    so (helper-96: binary_data_output made a listed output without binary_data binary)."""
    x = {"name": "x", "datatype": "FP32", "shape": [1, 4], "data": [1, 2, 3, 4]}
    cases = [
        ([{"name": "same", "parameters": {"binary_data": False}}, {"name": "neg"}], {"same": False, "neg": False}),
        ([{"name": "same", "parameters": {"binary_data": True}}, {"name": "neg"}], {"same": True, "neg": False}),
        (None, {"same": True, "neg": True}),  # none listed: every output as binary_data_output says
    ]
    for outputs, binary in cases:
        doc: dict[str, Any] = {"inputs": [x], "parameters": {"binary_data_output": True}}
        if outputs is not None:
            doc["outputs"] = outputs
        status, headers, body = raw.request("POST", "/v2/models/two/infer", json.dumps(doc).encode())
        assert status == 200, body
        size = int(headers.get("inference-header-content-length", len(body)))
        got = json.loads(body[:size])
        assert {o["name"]: "data" not in o for o in got["outputs"]} == binary, got


def test_a_raw_binary_request_is_the_models_one_input_as_in_triton(
    raw: Raw, client: httpclient.InferenceServerClient
) -> None:
    """Triton's raw binary request (Inference-Header-Content-Length: 0, its L0_http test_raw_binary): the body is
    the data of the model's one input, shaped from its config, and every output comes back binary (helper-96:
    the body was read as JSON, and refused)."""
    x = np.arange(16, dtype=np.float32) / 10
    status, headers, body = raw.request(
        "POST", "/v2/models/mlp/infer", x.tobytes(), {"Inference-Header-Content-Length": "0"}
    )
    assert status == 200, body
    size = int(headers["inference-header-content-length"])
    [y] = json.loads(body[:size])["outputs"]
    assert y["shape"] == [1, 4] and y["parameters"] == {"binary_data_size": 16}, y
    given = httpclient.InferInput("x", [1, 16], "FP32")
    given.set_data_from_numpy(x.reshape(1, 16))
    expected = client.infer("mlp", [given]).as_numpy("y")
    np.testing.assert_array_equal(np.frombuffer(body[size:], np.float32).reshape(1, 4), expected)
    status, _, body = raw.request("POST", "/v2/models/mlp/infer", x[:15].tobytes(), {"Inference-Header-Content-Length": "0"})
    assert status == 400 and b"'x'" in body, body  # 15 floats for a [1, 16] input
    status, _, body = raw.request("POST", "/v2/models/strid/infer", b"abc", {"Inference-Header-Content-Length": "0"})
    assert status == 400 and b"For BYTE datatype raw input 's', the model must have input shape [1]" in body, body


def test_default_outputs_come_back_binary(client: httpclient.InferenceServerClient) -> None:
    x = np.ones((2, 4), np.float32)
    i = httpclient.InferInput("x", [2, 4], "FP32")
    i.set_data_from_numpy(x)
    result = client.infer("two", [i])  # no outputs named: every output, binary
    np.testing.assert_array_equal(result.as_numpy("same"), x)
    np.testing.assert_array_equal(result.as_numpy("neg"), -x)
    assert all("binary_data_size" in o["parameters"] for o in result.get_response()["outputs"])


def test_a_client_that_reads_late_holds_back_its_own_requests_and_gets_every_byte(server: ServerThread) -> None:
    """Binary outputs go to the socket as views of the arrays, not copies. A client that pipelines and
    reads late gets every answer whole and in order; meanwhile the server stops reading its requests
    once its answers back up (pause_writing), so it holds at most about one answer beyond the kernel's
    buffers instead of all of them."""
    import socket
    import threading
    import time

    shape = (60000, 4)  # 0.9 MiB in, two outputs of as much back; under MAX_BODY
    nbytes = 4 * shape[0] * shape[1]
    answer = 2 * nbytes
    head = json.dumps(
        {"inputs": [{"name": "x", "datatype": "FP32", "shape": list(shape), "parameters": {"binary_data_size": nbytes}}],
         "parameters": {"binary_data_output": True}}
    ).encode()  # fmt: skip
    prefix = (
        b"POST /v2/models/two/infer HTTP/1.1\r\nHost: x\r\nContent-Type: application/octet-stream\r\n"
        b"Inference-Header-Content-Length: %d\r\nContent-Length: %d\r\n\r\n" % (len(head), len(head) + nbytes)
    ) + head
    try:
        with open("/proc/sys/net/ipv4/tcp_wmem") as f:
            kernel_max = int(f.read().split()[2])
    except OSError:
        kernel_max = 4 << 20  # Linux's default
    # more answers than the kernel's buffers hold, and four more: without flow control the server would
    # keep at least those four waiting in its transport
    count = -(-(kernel_max + (4 << 20)) // answer) + 4
    # each request its own data: an answer overwritten by a later one cannot pass for itself
    xs = [np.random.default_rng(k).standard_normal(shape).astype(np.float32) for k in range(count)]
    with socket.create_connection(("127.0.0.1", server.http_port), timeout=60) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
        # the requests go from another thread: once the server stops reading them, sendall waits
        sender = threading.Thread(target=sock.sendall, args=(b"".join(prefix + x.tobytes() for x in xs),))
        sender.start()
        time.sleep(1.0)
        held = max(c.transport.get_write_buffer_size() for c in list(server.server.http.connections) if c.transport)
        assert 0 < held <= 2 * answer, held  # some answers wait in the transport, as views; not all of them
        data = bytearray()
        for x in xs:
            while b"\r\n\r\n" not in data:
                data += sock.recv(1 << 20)
            top, _, rest = bytes(data).partition(b"\r\n\r\n")
            fields = dict(line.split(b": ", 1) for line in top.split(b"\r\n")[1:])
            length, header_length = int(fields[b"content-length"]), int(fields[b"inference-header-content-length"])
            while len(rest) < length:
                rest += sock.recv(1 << 20)
            body, data = rest[:length], bytearray(rest[length:])
            doc = json.loads(body[:header_length])
            same, neg = doc["outputs"][0], doc["outputs"][1]
            blob = memoryview(body)[header_length:]
            n = same["parameters"]["binary_data_size"]
            assert n == x.nbytes and neg["parameters"]["binary_data_size"] == x.nbytes and len(blob) == 2 * n
            np.testing.assert_array_equal(np.frombuffer(blob[:n], np.float32).reshape(x.shape), x)
            np.testing.assert_array_equal(np.frombuffer(blob[n:], np.float32).reshape(x.shape), -x)
        sender.join(30)
        assert not sender.is_alive()


def test_requested_outputs_return_only_those(client: httpclient.InferenceServerClient) -> None:
    x = np.arange(8, dtype=np.float32).reshape(2, 4)
    i = httpclient.InferInput("x", [2, 4], "FP32")
    i.set_data_from_numpy(x)
    result = client.infer("two", [i], outputs=[httpclient.InferRequestedOutput("neg", binary_data=False)])
    names = [o["name"] for o in result.get_response()["outputs"]]
    assert names == ["neg"]
    np.testing.assert_array_equal(result.as_numpy("neg"), -x)
    assert result.as_numpy("same") is None


def test_versioned_paths_and_metadata(client: httpclient.InferenceServerClient) -> None:
    assert client.is_server_live() and client.is_server_ready()
    assert client.is_model_ready("mlp") and client.is_model_ready("mlp", "1")
    assert not client.is_model_ready("mlp", "9")
    md = client.get_model_metadata("mlp", "1")
    assert md["name"] == "mlp" and md["versions"] == ["1"] and md["platform"] == "onnxruntime_onnx"
    assert md["inputs"][0] == {"name": "x", "datatype": "FP32", "shape": [-1, 16], "dim_names": ["batch", None]}
    i = httpclient.InferInput("x", [1, 16], "FP32")
    i.set_data_from_numpy(np.zeros((1, 16), np.float32))
    assert client.infer("mlp", [i], model_version="1").as_numpy("y").shape == (1, 4)
    server_md = client.get_server_metadata()
    assert server_md["name"] == "polystack"
    assert server_md["extensions"] == [
        "binary_tensor_data",
        "classification",
        "model_configuration",
        "parameters",  # Triton 2.51 lists it: request parameters are read (helper-106)
        "schedule_policy",
        "sequence",
        "statistics",
        "logging",
        "trace",
        "model_repository",  # the index answers without model control, as in Triton (loads are refused)
        "model_repository(unload_dependents)",
        "generate",  # HTTP's alone (test_serve_generate.py)
    ]


def test_model_config_is_triton_shaped(client: httpclient.InferenceServerClient) -> None:
    config = client.get_model_config("mlp")
    assert config["name"] == "mlp" and config["platform"] == "onnxruntime_onnx"
    assert config["max_batch_size"] == 64
    # with the fields Triton prints at their defaults (code written against Triton indexes them; were missing)
    assert config["input"] == [{
        "name": "x", "data_type": "TYPE_FP32", "dims": [16], "format": "FORMAT_NONE", "is_shape_tensor": False,
        "allow_ragged_batch": False, "optional": False,
    }]  # fmt: skip
    assert config["output"] == [
        {"name": "y", "data_type": "TYPE_FP32", "dims": [4], "label_filename": "", "is_shape_tensor": False}
    ]
    assert config["batch_input"] == [] and config["batch_output"] == [] and config["model_warmup"] == []
    assert config["default_model_filename"] == "model.onnx" and config["metric_tags"] == {}
    assert config["cc_model_filenames"] == {}
    [group] = config["instance_group"]
    assert group["kind"] == "KIND_CPU" and group["gpus"] == [] and group["secondary_devices"] == []
    assert group["profile"] == [] and group["passive"] is False and group["host_policy"] == ""
    assert client.get_model_config("strid")["input"][0]["data_type"] == "TYPE_STRING"


def test_statistics_count_requests(client: httpclient.InferenceServerClient) -> None:
    before = client.get_inference_statistics("mlp")["model_stats"][0]
    for _ in range(3):
        client.infer("mlp", [mlp_rows(2)])
    after = client.get_inference_statistics("mlp")["model_stats"][0]
    assert after["name"] == "mlp" and after["version"] == "1"
    s0, s1 = before["inference_stats"]["success"], after["inference_stats"]["success"]
    assert s1["count"] == s0["count"] + 3 and s1["ns"] > s0["ns"]
    assert after["inference_count"] == before["inference_count"] + 6  # max_batch_size 64: rows are inferences
    assert after["execution_count"] == before["execution_count"] + 3
    # every duration Triton reports is there, so code written against Triton's statistics reads them all
    assert set(after["inference_stats"]) == {
        "success", "fail", "queue", "compute_input", "compute_infer", "compute_output", "cache_hit", "cache_miss",
    }  # fmt: skip
    for phase in ("queue", "compute_input", "compute_infer"):  # each request counts once in each, as in Triton
        assert after["inference_stats"][phase]["count"] == before["inference_stats"][phase]["count"] + 3, phase
    # a request's success time covers its queue time and its compute time
    spent = {k: after["inference_stats"][k]["ns"] - before["inference_stats"][k]["ns"] for k in after["inference_stats"]}
    assert spent["success"] >= spent["queue"] + spent["compute_infer"]
    assert any(row["batch_size"] == 2 for row in after["batch_stats"])
    assert all(set(row) == {"batch_size", "compute_input", "compute_infer", "compute_output"}
               for row in after["batch_stats"])  # fmt: skip
    # every field Triton 24.x gives a model's statistics (response_stats, memory_usage were missing)
    assert set(after) == {
        "name", "version", "last_inference", "inference_count", "execution_count", "inference_stats",
        "response_stats", "batch_stats", "memory_usage",
    }  # fmt: skip
    everything = client.get_inference_statistics()["model_stats"]
    assert {m["name"] for m in everything} >= {"mlp", "ident64", "notb", "strid", "two"}
    # in name order, then version, as Triton lists them (helper-76: ensembles came last)
    assert [(m["name"], int(m["version"])) for m in everything] == sorted((m["name"], int(m["version"])) for m in everything)


def test_requests_refused_as_they_are_read_count_in_the_statistics_as_in_metrics(
    server: ServerThread, client: httpclient.InferenceServerClient
) -> None:
    """helper-76: a request refused while its body was read (a bad id, a negative class count) counted in
    /metrics, under version "", and not in the statistics the README says count it too."""
    raw = Raw(server.http_port)
    x = {"name": "x", "datatype": "FP32", "shape": [1, 16], "data": [0.0] * 16}
    bodies = [{"id": 5, "inputs": [x]}, {"inputs": [x], "outputs": [{"name": "y", "parameters": {"classification": -1}}]}]

    def failures() -> tuple[int, float]:
        fail = client.get_inference_statistics("mlp")["model_stats"][0]["inference_stats"]["fail"]["count"]
        text = urllib.request.urlopen(f"http://127.0.0.1:{server.http_port}/metrics").read().decode()
        found = re.findall(r'^polystack_inference_request_failure_total\{model="mlp",reason="InvalidRequest",'
                           r'version="1"\} (\S+)$', text, re.M)  # fmt: skip
        return fail, float(found[0]) if found else 0.0

    before = failures()
    for doc in bodies:
        status, answer = raw.json("POST", "/v2/models/mlp/infer", doc)
        assert status == 400, answer
    after = failures()
    assert (after[0] - before[0], after[1] - before[1]) == (2, 2)


def test_an_empty_batch_is_refused_before_the_model_runs(client: httpclient.InferenceServerClient) -> None:
    """Triton refuses a batch of 0 rows in its request checks (tritonserver 2.51, helper-106); polystack ran the
    model and counted an execution under batch size 0. Now no execution is counted, and the refusal is a failure."""
    before = client.get_inference_statistics("mlp")["model_stats"][0]
    empty = httpclient.InferInput("x", [0, 16], "FP32")
    empty.set_data_from_numpy(np.zeros((0, 16), np.float32))
    with pytest.raises(InferenceServerException, match=r"batch-size must be >= 1 for 'mlp', not 0") as e:
        client.infer("mlp", [empty])
    assert e.value.status() == "400"
    after = client.get_inference_statistics("mlp")["model_stats"][0]
    assert after["execution_count"] == before["execution_count"]
    assert after["inference_stats"]["fail"]["count"] == before["inference_stats"]["fail"]["count"] + 1


def test_a_model_without_max_batch_size_counts_one_inference_a_request(client: httpclient.InferenceServerClient) -> None:
    """As Triton counts a model whose config says max_batch_size 0: its first dimension is not a batch."""
    assert client.get_model_config("ident64")["max_batch_size"] == 0
    before = client.get_inference_statistics("ident64")["model_stats"][0]
    i = httpclient.InferInput("a", [2, 4], "INT64")
    i.set_data_from_numpy(np.zeros((2, 4), np.int64))
    for _ in range(3):
        client.infer("ident64", [i])
    after = client.get_inference_statistics("ident64")["model_stats"][0]
    assert after["inference_count"] == before["inference_count"] + 3
    assert after["execution_count"] == before["execution_count"] + 3
    assert [row["batch_size"] for row in after["batch_stats"]] == [1]


def test_statistics_of_a_model_without_a_version_cover_every_loaded_version(
    model_store: tuple[Store, dict[str, ModelRecord]], tmp_path: Path
) -> None:
    """As Triton's statistics extension says: no version, all versions."""
    store, records = model_store
    register_like(store, records["mlp"], "vv")
    other = import_model(mlp_onnx(tmp_path / "seed1.onnx", seed=1), tmp_path / "import")
    store.register(other.artifact, name="vv", format=other.format, signature=other.signature)
    st = start(store, models=["vv:1", "vv:2"])
    try:
        for url, module in ((st.http_url, httpclient), (st.grpc_url, grpcclient)):
            c = module.InferenceServerClient(url)
            c.infer("vv", [mlp_ones(1, module)], model_version="1")
            stats = c.get_inference_statistics("vv", as_json=True) if module is grpcclient else c.get_inference_statistics("vv")
            assert [(m["name"], m["version"]) for m in stats["model_stats"]] == [("vv", "1"), ("vv", "2")]
            one = c.get_inference_statistics("vv", "2", as_json=True) if module is grpcclient else c.get_inference_statistics("vv", "2")
            assert [m["version"] for m in one["model_stats"]] == ["2"]
    finally:
        st.stop()


def mlp_rows(rows: int) -> httpclient.InferInput:
    x = httpclient.InferInput("x", [rows, 16], "FP32")
    x.set_data_from_numpy(np.ones((rows, 16), np.float32))
    return x


def test_metrics_endpoint_reports_requests(server: ServerThread, raw: Raw) -> None:
    raw.infer_ok()
    status, headers, body = raw.request("GET", "/metrics")
    text = body.decode()
    assert status == 200 and headers["content-type"].startswith("text/plain")
    assert 'polystack_inference_request_success_total{model="mlp",version="1"}' in text
    assert "polystack_inference_request_duration_seconds_bucket" in text
    assert "polystack_models_loaded 6.0" in text
    # an unbatched model's wait for a thread is its queue time here as in its statistics (it was counted there only)
    queued = re.search(r'polystack_inference_queue_duration_seconds_count\{model="mlp",version="1"\} (\S+)', text)
    assert queued is not None and float(queued.group(1)) >= 1, text


def test_metrics_are_written_off_the_event_loop_and_gzipped_for_a_scraper_that_takes_it(
    server: ServerThread, raw: Raw, monkeypatch: pytest.MonkeyPatch
) -> None:
    """helper-272: a scrape of 80 models took 90 ms on the event loop, every request waiting that long; and the
    text went uncompressed to Prometheus, which asks for gzip. Its content type is Triton's (text format 0.0.4)."""
    raw.infer_ok()
    seen = threads_calling(monkeypatch, server.server.plane, "render_metrics")
    status, headers, plain = raw.request("GET", "/metrics")
    assert status == 200 and headers["content-type"] == "text/plain; version=0.0.4; charset=utf-8"
    assert "content-encoding" not in headers and b"_created" not in plain
    status, headers, body = raw.request("GET", "/metrics", headers={"Accept-Encoding": "gzip"})
    assert status == 200 and headers["content-encoding"] == "gzip" and headers["vary"] == "accept-encoding"
    text = gzip.decompress(body).decode()
    assert 'polystack_inference_request_success_total{model="mlp",version="1"}' in text
    assert len(body) < len(plain) / 4
    assert len(seen) == 2 and all(name.startswith("codec") for name in seen), seen


def test_metrics_port_serves_the_metrics_alone_as_tritons_8002_does(
    model_store: tuple[Store, dict[str, ModelRecord]],
) -> None:
    """``--metrics-port``: scrape configs written for Triton name a port of the metrics' own. It serves GET
    /metrics (the same series as the HTTP port's) and refuses the rest with a 404 that says where it is;
    it closes with the server."""
    store, _ = model_store
    st = start(store, models=["mlp"], metrics_port=0)
    try:
        assert st.metrics_port not in (None, st.http_port, st.grpc_port)
        Raw(st.http_port).infer_ok()
        metrics = Raw(st.metrics_port)  # type: ignore[arg-type]
        status, headers, body = metrics.request("GET", "/metrics")
        assert status == 200 and headers["content-type"].startswith("text/plain")
        assert 'polystack_inference_request_success_total{model="mlp",version="1"} 1.0' in body.decode()
        assert Raw(st.http_port).request("GET", "/metrics")[0] == 200  # still on the HTTP port too
        status, _, body = metrics.request("GET", "/v2/health/ready")
        assert status == 404 and "metrics port" in json.loads(body)["error"]
        status, _, body = metrics.request("POST", "/v2/models/mlp/infer", "{}")
        assert status == 404 and "error" in json.loads(body)
        assert metrics.request("POST", "/metrics", "")[0] == 405
    finally:
        st.stop()
    with pytest.raises(OSError):
        http.client.HTTPConnection("127.0.0.1", st.metrics_port, timeout=2).request("GET", "/metrics")  # type: ignore[arg-type]


def test_a_large_body_is_decoded_off_the_event_loop(server: ServerThread, monkeypatch: pytest.MonkeyPatch) -> None:
    """Reading a large body (JSON, gzip, BYTES elements) takes long enough to hold every other client up;
    from 256 KiB it runs on the front end's codec threads, and smaller ones on the loop as before."""
    from polystack.protocol import http_codec

    seen = threads_calling(monkeypatch, http_codec, "decode_infer_request")
    raw = Raw(server.http_port)
    doc = json.dumps({"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 16], "data": [0.5] * 16}]})
    for padding in (0, 256 * 1024):  # JSON may end in any amount of white space
        status, _, body = raw.request("POST", "/v2/models/mlp/infer", doc + " " * padding)
        assert status == 200, body
    assert seen[0] == "polystack-server" and seen[1].startswith("codec"), seen


def test_a_request_larger_than_a_fast_models_usual_ones_runs_off_the_event_loop(
    model_store: tuple[Store, dict[str, ModelRecord]], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A lone request to an unbatched model that answers fast runs on the event loop; one of many more rows ran
    there too (the model's usual time, not this request's, decided), holding every other client for all of it."""
    from polystack.server import dataplane

    store, _ = model_store
    st = start(store, models=["mlp"], inline_max_ms=50)  # however loaded the machine: 1-row calls count as fast
    try:
        seen = threads_calling(monkeypatch, dataplane, "_timed_infer")
        conn = http.client.HTTPConnection("127.0.0.1", st.http_port, timeout=10)
        for rows in [1] * 30 + [64]:
            doc = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [rows, 16], "data": [0.5] * 16 * rows}]}
            assert _infer_on(conn, json.dumps(doc)) == 200
        conn.close()
    finally:
        st.stop()
    assert seen[-2] == "polystack-server" and seen[-1] != "polystack-server", seen[-3:]


def _infer_on(conn: http.client.HTTPConnection, body: str, model: str = "mlp") -> int:
    """A JSON inference request on ``conn``, kept alive: its answer's status."""
    conn.request("POST", f"/v2/models/{model}/infer", body, {"Content-Type": "application/json"})
    answer = conn.getresponse()
    answer.read()
    return answer.status


def test_clients_taking_turns_have_their_requests_run_off_the_event_loop(
    model_store: tuple[Store, dict[str, ModelRecord]], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A request that is the only one in flight ran on the loop even where other clients' requests waited unread
    behind it (they do not show while a call holds the loop): one whose connection did not send the request before
    it now runs on a thread, as every request from two connections in turn does."""
    store, _ = model_store
    st = start(store, models=["mlp"], inline_max_ms=50)  # however loaded the machine: 1-row calls count as fast
    on_loop, in_turn = _where_requests_ran(st, monkeypatch, 4, 4)
    assert on_loop == [False, True, True, True]  # the first: no average yet
    assert not any(in_turn)


def _where_requests_ran(
    st: ServerThread, monkeypatch: pytest.MonkeyPatch, alone: int, rounds: int
) -> tuple[list[bool], list[bool]]:
    """Whether each model call ran on the event loop: of ``alone`` requests sent one after another on one kept-alive
    connection, then of ``rounds`` pairs sent from a second connection and the first in turn. Stops ``st``."""
    from polystack.server import dataplane

    try:
        seen = threads_calling(monkeypatch, dataplane, "_timed_infer")
        body = json.dumps({"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 16], "data": [0.5] * 16}]})
        one, other = (http.client.HTTPConnection("127.0.0.1", st.http_port, timeout=10) for _ in range(2))
        assert [_infer_on(one, body) for _ in range(alone)] == [200] * alone
        assert [_infer_on(conn, body) for conn in [other, one] * rounds] == [200] * 2 * rounds
        one.close()
        other.close()
    finally:
        st.stop()
    on_loop = [name == "polystack-server" for name in seen]
    return on_loop[:alone], on_loop[alone:]


def test_a_client_sending_one_request_at_a_time_has_slower_models_run_on_the_event_loop(
    model_store: tuple[Store, dict[str, ModelRecord]], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Past --inline-max-ms, a model runs on the loop for a client that sends its requests one at a time on one
    connection, once 8 in a row after its first came so (--inline-serial-max-ms): the handoff to a thread lengthened
    each answer, and no other request waited. Requests from two connections in turn stay on threads, as every
    request does again once another connection's comes."""
    store, _ = model_store
    st = start(store, models=["mlp"], inline_max_ms=1e-6, inline_serial_max_ms=50)  # no call is that fast
    on_loop, in_turn = _where_requests_ran(st, monkeypatch, 12, 6)
    assert on_loop == [False] * 8 + [True] * 4  # from the 9th: 8 in a row after the first
    assert not any(in_turn)


def test_a_serial_clients_request_finding_the_server_idle_starts_in_the_read_that_brought_it(
    model_store: tuple[Store, dict[str, ModelRecord]], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A task starts a turn of the event loop after it is made. Once a client has sent its requests one at a time on
    one connection (8 in a row after its first), one that finds nothing in flight starts at once, in the read
    callback, and one whose model runs on the loop is answered there. Others start as tasks, behind the answers
    due: a request that comes while another is in flight, and those of clients taking turns."""
    from polystack.server import dataplane
    from polystack.server.http_connection import HttpProtocol

    reading = [False]
    started: list[bool] = []  # for each request: whether the data plane took it within a read callback
    answered: list[bool] = []  # for each answer: whether it was written within one
    read, send, infer = HttpProtocol.data_received, HttpProtocol._send, dataplane.DataPlane.infer

    def data_received(self: HttpProtocol, data: bytes) -> None:
        reading[0] = True
        try:
            read(self, data)
        finally:
            reading[0] = False

    def answer(self: HttpProtocol, *args: Any) -> None:
        answered.append(reading[0])
        send(self, *args)

    async def take(self: dataplane.DataPlane, *args: Any, **kwargs: Any) -> Any:
        started.append(reading[0])
        return await infer(self, *args, **kwargs)

    held, holding, release = [False], threading.Event(), threading.Event()
    timed = dataplane._timed_infer

    def held_call(*args: Any, **kwargs: Any) -> Any:
        if held[0]:  # the first call after ``held`` is set waits for ``release``
            held[0] = False
            holding.set()
            release.wait(30)
        return timed(*args, **kwargs)

    monkeypatch.setattr(HttpProtocol, "data_received", data_received)
    monkeypatch.setattr(HttpProtocol, "_send", answer)
    monkeypatch.setattr(dataplane.DataPlane, "infer", take)
    monkeypatch.setattr(dataplane, "_timed_infer", held_call)
    store, _ = model_store
    st = start(store, models=["mlp"], inline_max_ms=50)  # however loaded the machine: 1-row calls count as fast
    try:
        body = json.dumps({"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 16], "data": [0.5] * 16}]})
        one, other = (http.client.HTTPConnection("127.0.0.1", st.http_port, timeout=30) for _ in range(2))
        assert [_infer_on(one, body) for _ in range(12)] == [200] * 12
        # from the 10th, which came after 8 in a row after the first (the 2nd to 9th ran on the loop too, a turn later)
        assert started == answered == [False] * 9 + [True] * 3
        held[0] = True
        rows = json.dumps({"inputs": [{"name": "x", "datatype": "FP32", "shape": [4, 16], "data": [0.5] * 64}]})
        # its call is held on an inference thread: 4 rows run off the loop, larger than the usual request
        first = threading.Thread(target=_infer_on, args=(one, rows))
        first.start()
        assert holding.wait(30)
        other.request("POST", "/v2/models/mlp/infer", body, {"Content-Type": "application/json"})
        assert until(lambda: len(started) == 14)
        release.set()
        first.join(30)
        assert other.getresponse().read() and started[12:] == [True, False]  # the second came as the first ran
        assert _infer_on(one, body) == 200
        assert started[14:] == [False]  # another connection's request came between: no longer one client
        one.close()
        other.close()
    finally:
        release.set()
        st.stop()


def test_a_requests_size_counts_the_bytes_of_its_strings() -> None:
    """What the inline check compares: an array of strings' nbytes is 8 per element, however long they are, so
    a 50 MB string to a fast BYTES model still ran on the event loop."""
    from polystack.server.dataplane import _size

    assert _size(np.array([b"x" * 1000, b"yz"], dtype=object)) == 1002
    assert _size(np.zeros((2, 16), np.float32)) == 128


def test_only_bodies_slow_to_read_leave_the_loop() -> None:
    from polystack.server.http import Request, _slow_to_read

    big = 256 * 1024
    head = b'{"inputs":[{"name":"x","datatype":"FP32","shape":[1,65536],"parameters":{"binary_data_size":262144}}]}'

    def req(body: bytes, **headers: str) -> Request:
        return Request(b"POST", "/", {k.replace("_", "-").encode(): v.encode() for k, v in headers.items()}, body, True)

    ihcl = str(len(head))
    assert not _slow_to_read(req(b" " * (big - 1)))  # small: on the loop
    assert _slow_to_read(req(b" " * big))  # JSON to parse
    assert _slow_to_read(req(b"x" * big, content_encoding="gzip"))  # to inflate
    assert _slow_to_read(req(b"x" * 100, content_encoding="gzip"))  # small, but it may inflate to the limit
    assert not _slow_to_read(req(head + bytes(big), inference_header_content_length=ihcl))  # numbers, in place
    with_bytes = head.replace(b"FP32", b"BYTES")
    assert _slow_to_read(req(with_bytes + bytes(big), inference_header_content_length=str(len(with_bytes))))
    assert _slow_to_read(req(b" " * big + bytes(8), inference_header_content_length=str(big)))  # a large header
    assert not _slow_to_read(req(bytes(big), inference_header_content_length="x"))  # refused at once


def test_asyncio_client_works_too(server: ServerThread) -> None:
    async def main() -> tuple[np.ndarray, bool, dict]:
        client = aiohttpclient.InferenceServerClient(server.http_url)
        try:
            ready = await client.is_server_ready()
            config = await client.get_model_config("notb")
            x = np.array([[True, True, False]])
            i = aiohttpclient.InferInput("p", [1, 3], "BOOL")
            i.set_data_from_numpy(x)
            results = await asyncio.gather(*(client.infer("notb", [i]) for _ in range(8)))
            return results[-1].as_numpy("q"), ready, config
        finally:
            await client.close()

    q, ready, config = asyncio.run(main())
    assert ready and config["name"] == "notb"
    np.testing.assert_array_equal(q, [[False, False, True]])


@pytest.mark.parametrize("algorithm", ["gzip", "deflate"])
def test_responses_come_back_compressed_when_the_client_asks(
    client: httpclient.InferenceServerClient, server: ServerThread, algorithm: str
) -> None:
    x = np.arange(512 * 4, dtype=np.float32).reshape(512, 4)
    i = httpclient.InferInput("x", [512, 4], "FP32")
    i.set_data_from_numpy(x)
    for binary in (True, False):
        outputs = [httpclient.InferRequestedOutput("neg", binary_data=binary)]
        result = client.infer("two", [i], outputs=outputs, response_compression_algorithm=algorithm)
        np.testing.assert_array_equal(result.as_numpy("neg"), -x)
    body = json.dumps({"inputs": [{"name": "x", "datatype": "FP32", "shape": [512, 4], "data": x.ravel().tolist()}]})
    conn = http.client.HTTPConnection("127.0.0.1", server.http_port, timeout=10)
    try:
        # q among other parameters and x-gzip as gzip (RFC 9110), and Vary on every answer that depends on it
        alias = [("x-gzip", "gzip"), ("gzip;level=1;q=0", None)] if algorithm == "gzip" else []
        # the higher q wins, and of two alike the one listed first, as Triton picks (helper-205)
        other = "deflate" if algorithm == "gzip" else "gzip"
        weighed = [(f"{other};q=0.5, {algorithm};q=1.0", algorithm), (f"{algorithm}, {other}", algorithm),
                   (f"*;q=0.1, {algorithm};q=0.2", algorithm)]  # fmt: skip
        for accept, want in ((f"{algorithm};q=0.5", algorithm), (f"{algorithm};q=0", None), ("br", None), *alias,
                             *weighed):  # fmt: skip
            conn.request("POST", "/v2/models/two/infer", body, {"Accept-Encoding": accept})
            resp = conn.getresponse()
            data = resp.read()
            assert resp.status == 200 and resp.getheader("content-encoding") == want, accept
            assert resp.getheader("vary") == "accept-encoding"
            if want is not None:
                data = zlib.decompress(data, 31 if want == "gzip" else 15)
            assert json.loads(data)["outputs"][0]["shape"] == [512, 4]
        # a small answer is not worth compressing
        small = json.dumps({"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 4], "data": [1, 2, 3, 4]}]})
        conn.request("POST", "/v2/models/two/infer", small, {"Accept-Encoding": algorithm})
        resp = conn.getresponse()
        resp.read()
        assert resp.getheader("content-encoding") is None
    finally:
        conn.close()
