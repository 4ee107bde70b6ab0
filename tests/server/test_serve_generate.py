"""Triton's generate extension (POST /v2/models/{m}/generate and generate_stream), as tritonserver 2.51 answers it
(bench/triton_parity.py sends the same requests to both)."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator

import numpy as np
import pytest
import tritonclient.http as httpclient
from conftest import Raw
from servekit import single_op, start

from polystack.batching import BatchPolicy
from polystack.formats import import_model
from polystack.server.app import ServerThread
from polystack.store import ModelRecord, Store

GENERATE = "/v2/models/mlp/generate"
SSE = "text/event-stream; charset=utf-8"


def infer_y(server: ServerThread, x: np.ndarray) -> list[float]:
    """The MLP's answer to ``x`` through /infer, as JSON writes it (float64 values of the FP32 outputs)."""
    client = httpclient.InferenceServerClient(server.http_url)
    i = httpclient.InferInput("x", list(x.shape), "FP32")
    i.set_data_from_numpy(x)
    return [float(v) for v in client.infer("mlp", [i]).as_numpy("y").reshape(-1)]


def test_generate_answers_each_output_by_name_with_the_model_and_version(server: ServerThread, raw: Raw) -> None:
    x = np.linspace(-1, 1, 16, dtype=np.float32)
    status, headers, body = raw.request("POST", GENERATE, json.dumps({"x": x.tolist()}))
    assert status == 200 and headers["content-type"] == "application/json", body
    doc = json.loads(body)
    assert doc == {"model_name": "mlp", "model_version": "1", "y": infer_y(server, x[None, :])}


def test_a_flat_list_fills_the_batch_dimension_after_the_fixed_ones(server: ServerThread, raw: Raw) -> None:
    """[-1, 16] takes 32 values as [2, 16] (Triton fills fixed dimensions first, the innermost -1 with the rest)."""
    x = np.arange(32, dtype=np.float32) / 32
    status, doc = raw.json("POST", GENERATE, {"x": x.tolist()})
    assert status == 200 and doc["y"] == infer_y(server, x.reshape(2, 16)), doc
    # values that do not fill the fixed dimensions, or nested ones, are refused in Triton's words
    for value in ([0.5] * 24, [[0.5] * 16]):
        status, doc = raw.json("POST", GENERATE, {"x": value})
        assert status == 400 and doc["error"].startswith(
            "The schema can not convert input 'x' to tensor with proper shape"
        ), (value, doc)
    raw.infer_ok()


def test_other_keys_and_parameters_are_request_parameters_and_inputs_may_sit_in_parameters(
    server: ServerThread, raw: Raw
) -> None:
    x = [0.25] * 16
    status, doc = raw.json("POST", GENERATE, {"id": "req-7", "max_tokens": 5, "parameters": {"x": x, "stop": False}})
    assert status == 200, doc
    assert doc["id"] == "req-7" and doc["y"] == infer_y(server, np.asarray([x], np.float32))
    # parameters are checked as /infer checks them (Triton's generate endpoint lets triton_ keys through)
    for body, words in (
        ({"x": x, "timeout": "soon"}, "Unable to parse 'timeout'"),
        ({"x": x, "stop": [1, 2]}, "parameter 'stop' has invalid type"),
        ({"x": x, "parameters": 5}, "Expected JSON object for keyword: 'parameters'"),
        ({"x": x, "parameters": {"x": x}}, "input 'x' already exists in request"),
        ([1, 2], "a generate request must be a JSON object"),
    ):
        status, doc = raw.json("POST", GENERATE, body)
        assert status == 400 and words in doc["error"], (body, doc)
    assert raw.json("POST", GENERATE, {"x": x, "triton_x": 1})[0] == 200
    # a key given twice: JSON readers keep the last, and the first was dropped unseen (helper-153; Triton's
    # test_duplicate_inputs): an input named twice is refused, in the words of a key at both levels
    text = json.dumps(x)
    for body, named in (
        (f'{{"x": {text}, "x": {text}}}', "x"),
        (f'{{"parameters": {{"x": {text}, "x": {text}}}}}', "x"),
        (f'{{"x": {text}, "id": "a", "id": "b", "x": {text}}}', "x"),  # id is no input: x, met again later
    ):
        status, _, data = raw.request("POST", GENERATE, body, {"Content-Type": "application/json"})
        assert status == 400 and f"input '{named}' already exists in request" in json.loads(data)["error"], data


def test_strings_booleans_and_integers_keep_their_datatypes(server: ServerThread, raw: Raw) -> None:
    cases = (("strid", {"s": ["héllo", "b"]}, {"t": ["héllo", "b"]}), ("notb", {"p": [True, False, True]},
             {"q": [False, True, False]}), ("ident64", {"a": [1, -2, 3, 2**40]}, {"b": [1, -2, 3, 2**40]}))  # fmt: skip
    for model, body, outputs in cases:
        status, doc = raw.json("POST", f"/v2/models/{model}/generate", body)
        assert status == 200 and doc == {"model_name": model, "model_version": "1", **outputs}, doc
    status, doc = raw.json("POST", "/v2/models/notb/generate", {"p": [1, 0, 1]})
    assert status == 400 and "BOOL" in doc["error"], doc


def test_refusals_before_the_run_are_json_errors_and_the_server_keeps_serving(raw: Raw) -> None:
    for path, body, want, words in (
        ("/v2/models/nope/generate", {"x": [1.0]}, 404, "Request for unknown model: 'nope' is not found"),
        ("/v2/models/mlp/versions/7/generate", {"x": [0.0] * 16}, 404, "Request for unknown model"),
        ("/v2/models/two/generate", {"x": [0.0] * 3}, 400, "The schema can not convert input 'x'"),
        ("/v2/models/two/generate", {"y": [0.0] * 4}, 400, "parameter 'y' has invalid type"),  # not an input
        ("/v2/models/mlp/generate_stream", {"z": 0.5}, 400, "expected 1 inputs but got 0 inputs"),
    ):
        status, headers, data = raw.request("POST", path, json.dumps(body), {"Content-Type": "application/json"})
        assert status == want and headers["content-type"] == "application/json", (path, data)
        assert words in json.loads(data)["error"], (path, data)
    status, _, data = raw.request("GET", GENERATE)
    assert status == 405 and "POST" in json.loads(data)["error"]
    raw.infer_ok()


def test_generate_stream_sends_the_answer_as_one_server_sent_event(raw: Raw) -> None:
    body = json.dumps({"x": [0.5] * 16})
    _, _, whole = raw.request("POST", GENERATE, body)
    status, headers, data = raw.request("POST", "/v2/models/mlp/generate_stream", body)
    assert status == 200 and headers["content-type"] == SSE, data
    assert data == b"data: " + whole + b"\n\n"


def test_a_request_that_fails_in_its_run_is_an_event_holding_the_error(
    model_store: tuple[Store, dict[str, ModelRecord]],
) -> None:
    """Triton answers a generate_stream request that failed in its run as an event with the error, and 400 whatever
    the error (helper-194: tritonserver 2.51 answers a model's UNAVAILABLE there 400): here one whose timeout passed
    while it waited behind a slow batch (/infer's 503)."""
    store, _ = model_store
    policy = BatchPolicy(max_batch_size=1, max_queue_delay_ms=0)
    st = start(store, models=["slow"], policy_for=lambda *_: policy)
    try:
        raw = Raw(st.http_port)
        blocker = threading.Thread(target=raw.json, args=("POST", "/v2/models/slow/generate", {"x": [0.0] * 16}))
        blocker.start()
        time.sleep(0.01)
        status, headers, data = raw.request(
            "POST", "/v2/models/slow/generate_stream", json.dumps({"x": [0.0] * 16, "timeout": 1000})
        )
        blocker.join(10)
        assert headers["content-type"] == SSE and data.startswith(b"data: {") and data.endswith(b"\n\n"), data
        assert status == 400 and json.loads(data[6:])["error"].startswith("Request timeout expired"), data
    finally:
        st.stop()


@pytest.fixture(scope="module")
def one_value(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerThread]:
    """A model whose output has one element: Triton writes that element alone."""
    from onnx import TensorProto

    work = tmp_path_factory.mktemp("generate")
    store = Store.at(work / "home")
    path = single_op(work / "neg.onnx", "Neg", TensorProto.FLOAT, 1, "x", [("y", "Neg")])
    imported = import_model(path, work / "import")
    store.register(imported.artifact, name="neg", format=imported.format, signature=imported.signature)
    st = start(store, models=["neg"])
    yield st
    st.stop()
    store.close()


def test_an_output_of_one_element_is_its_value_alone(one_value: ServerThread) -> None:
    raw = Raw(one_value.http_port)
    status, doc = raw.json("POST", "/v2/models/neg/generate", {"x": 1.5})
    assert status == 200 and doc == {"model_name": "neg", "model_version": "1", "y": -1.5}, doc
    status, doc = raw.json("POST", "/v2/models/neg/generate", {"x": [1.5, 2.0]})  # [2, 1]
    assert status == 200 and doc["y"] == [-1.5, -2.0], doc


def test_the_extension_is_listed_over_http_only(server: ServerThread) -> None:
    import tritonclient.grpc as grpcclient

    assert "generate" in httpclient.InferenceServerClient(server.http_url).get_server_metadata()["extensions"]
    grpc = grpcclient.InferenceServerClient(server.grpc_url)
    assert "generate" not in grpc.get_server_metadata(as_json=True)["extensions"]
