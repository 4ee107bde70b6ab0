"""Triton's SageMaker front end (``--allow-sagemaker true``): GET /ping and POST /invocations on a port of their own,
as tritonserver 2.51 answers them (helper-122), driven the way Triton's SageMaker docs drive them (tritonclient's
``generate_request_body`` and ``parse_response_body`` around a plain HTTP call)."""

from __future__ import annotations

import json
import signal
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import tritonclient.http as httpclient
from servekit import cli_server, free_port, http_call, mlp_ones, refused_at_start, start

from polystack.server.app import ServerThread
from polystack.server.sagemaker import SageMakerSettings
from polystack.store import ModelRecord, Store

BINARY = "application/vnd.sagemaker-triton.binary+json;json-header-size="
X = [0.5] * 16
TENSOR = {"name": "x", "shape": [1, 16], "datatype": "FP32", "data": X}


def _call(port: int, method: str, path: str, body: bytes | None = None, ctype: str = "") -> tuple[int, str, bytes]:
    return http_call(port, method, path, body, {"Content-Type": ctype} if ctype else {})


@pytest.fixture
def sagemaker(model_store: tuple[Store, dict[str, ModelRecord]]) -> Iterator[tuple[ServerThread, int]]:
    st = start(model_store[0], models=["mlp", "two"], sagemaker_port=0, sagemaker=SageMakerSettings(model="mlp"))
    assert st.server.platform_ports.get("SageMaker") is not None
    yield st, st.server.platform_ports.get("SageMaker")
    st.stop()


def test_ping_answers_200_with_an_empty_body_and_other_methods_405(sagemaker: tuple[ServerThread, int]) -> None:
    _, port = sagemaker
    assert _call(port, "GET", "/ping") == (200, "text/plain", b"")
    status, ctype, body = _call(port, "POST", "/ping")
    assert status == 405 and json.loads(body)["error"].startswith("Method Not Allowed")
    assert ctype == "application/json"  # the body it labels (text/plain, helper-262)


def test_invocations_answer_json_as_the_http_ports_infer_does(sagemaker: tuple[ServerThread, int]) -> None:
    st, port = sagemaker
    body = json.dumps({"id": "s1", "inputs": [{"name": "x", "shape": [1, 16], "datatype": "FP32", "data": X}]})
    status, ctype, answer = _call(port, "POST", "/invocations", body.encode())
    assert (status, ctype) == (200, "application/json")
    expected = _call(st.http_port, "POST", "/v2/models/mlp/infer", body.encode())[2]
    assert json.loads(answer) == json.loads(expected)


def test_binary_tensors_come_and_go_with_sagemakers_content_type(sagemaker: tuple[ServerThread, int]) -> None:
    """As Triton's SageMaker docs do it: the JSON header's length in the content type, both ways (no
    Inference-Header-Content-Length)."""
    _, port = sagemaker
    x = mlp_ones(2)
    y = httpclient.InferRequestedOutput("y", binary_data=True)
    body, json_size = httpclient.InferenceServerClient.generate_request_body([x], outputs=[y], request_id="b1")
    status, ctype, answer = _call(port, "POST", "/invocations", body, f"{BINARY}{json_size}")
    assert status == 200 and ctype.startswith(BINARY), (status, ctype, answer[:200])
    result = httpclient.InferenceServerClient.parse_response_body(answer, header_length=int(ctype[len(BINARY) :]))
    as_json = {"inputs": [{"name": "x", "shape": [2, 16], "datatype": "FP32", "data": [1.0] * 32}]}
    _, _, json_answer = _call(port, "POST", "/invocations", json.dumps(as_json).encode())
    expected = np.asarray(json.loads(json_answer)["outputs"][0]["data"]).reshape(2, 4)
    np.testing.assert_allclose(result.as_numpy("y"), expected)
    assert result.get_response()["id"] == "b1"


def test_a_header_size_of_0_makes_the_body_the_models_one_input_and_every_output_binary(
    sagemaker: tuple[ServerThread, int],
) -> None:
    _, port = sagemaker
    raw = np.full((1, 16), 0.5, np.float32).tobytes()
    status, ctype, answer = _call(port, "POST", "/invocations", raw, f"{BINARY}0")
    assert status == 200 and ctype.startswith(BINARY), (status, answer[:200])
    result = httpclient.InferenceServerClient.parse_response_body(answer, header_length=int(ctype[len(BINARY) :]))
    assert result.as_numpy("y").shape == (1, 4)


@pytest.mark.parametrize(
    ("method", "path", "body", "ctype", "status", "says"),
    [
        ("POST", "/invocations", b'{"inputs": []}', f"{BINARY}999", 400, "should be in range (0, 14), got: 999"),
        ("POST", "/invocations", b"{}", f"text/plain; {BINARY}2", 400, "expect MIME type for binary data starts with"),
        ("POST", "/invocations", json.dumps({"inputs": [{**TENSOR, "name": "nope"}]}).encode(), "", 400,
         "unexpected inference input 'nope'"),
        ("GET", "/invocations", None, "", 405, "Method Not Allowed"),
    ],
)
def test_bad_requests_are_refused_in_tritons_words_and_the_port_goes_on(
    sagemaker: tuple[ServerThread, int], method: str, path: str, body: bytes | None, ctype: str, status: int, says: str
) -> None:
    _, port = sagemaker
    got, _, answer = _call(port, method, path, body, ctype)
    assert got == status and says in json.loads(answer)["error"], answer
    assert _call(port, "GET", "/ping")[0] == 200


def test_any_other_path_is_400_with_an_empty_body_as_in_triton(sagemaker: tuple[ServerThread, int]) -> None:
    _, port = sagemaker
    for path in ("/v2/health/ready", "/metrics", "/ping/", "/invocations/"):
        assert _call(port, "GET", path) == (400, "text/plain", b""), path


def test_without_a_default_model_invocations_say_which_name_they_looked_for(
    model_store: tuple[Store, dict[str, ModelRecord]],
) -> None:
    st = start(model_store[0], models=["mlp"], sagemaker_port=0)
    try:
        port = st.server.platform_ports.get("SageMaker")
        assert port is not None
        status, _, answer = _call(port, "POST", "/invocations", b"{}")
        assert status == 404 and "unspecified_SAGEMAKER_TRITON_DEFAULT_MODEL_NAME" in json.loads(answer)["error"]
        said = json.loads(answer)["error"]
        assert said.endswith("; set SAGEMAKER_TRITON_DEFAULT_MODEL_NAME to the model /invocations runs"), said
    finally:
        st.stop()


def test_serve_allow_sagemaker_serves_the_environments_model_and_pings_live(
    model_store: tuple[Store, dict[str, ModelRecord]], tmp_path: Path
) -> None:
    store, _ = model_store
    port, sagemaker_port = free_port(), free_port()
    args = ["mlp", "--grpc-port", "-1", "--allow-sagemaker", "true", "--sagemaker-port", str(sagemaker_port),
            "--sagemaker-thread-count", "4"]  # fmt: skip
    env = {"SAGEMAKER_TRITON_DEFAULT_MODEL_NAME": "mlp", "SAGEMAKER_TRITON_PING_MODE": "live"}
    with cli_server(store.settings.home, args, port, tmp_path / "log", env=env) as proc:
        assert _call(sagemaker_port, "GET", "/ping") == (200, "text/plain", b"")
        body = json.dumps({"inputs": [{"name": "x", "shape": [1, 16], "datatype": "FP32", "data": X}]}).encode()
        status, _, answer = _call(sagemaker_port, "POST", "/invocations", body)
        assert status == 200 and json.loads(answer)["model_name"] == "mlp"
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0, (tmp_path / "log").read_text()


@pytest.mark.parametrize("kind", ["generate", "generate_stream"])
def test_the_inference_type_makes_invocations_tritons_generate(
    model_store: tuple[Store, dict[str, ModelRecord]], kind: str
) -> None:
    """SAGEMAKER_TRITON_INFERENCE_TYPE (Triton's newer releases; LLM containers set it): /invocations answers as the
    HTTP port's generate or generate_stream route of the default model."""
    settings = SageMakerSettings(model="mlp", inference_type=kind)
    st = start(model_store[0], models=["mlp"], sagemaker_port=0, sagemaker=settings)
    try:
        port = st.server.platform_ports.get("SageMaker")
        assert port is not None
        body = json.dumps({"x": X, "id": "g1"}).encode()
        status, ctype, answer = _call(port, "POST", "/invocations", body, "application/json")
        expected = _call(st.http_port, "POST", f"/v2/models/mlp/{kind}", body, "application/json")
        assert (status, ctype, answer) == expected and status == 200
        assert ctype.startswith("application/json" if kind == "generate" else "text/event-stream")
        bad = json.dumps({"x": X, "y": X}).encode()  # a parameter that is no input must be a scalar: refused
        status, _, answer = _call(port, "POST", "/invocations", bad, "application/json")
        assert (status, json.loads(answer)) == (400, json.loads(_call(st.http_port, "POST", f"/v2/models/mlp/{kind}",
                                                                      bad, "application/json")[2]))  # fmt: skip
    finally:
        st.stop()


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["--allow-sagemaker", "maybe"], "--allow-sagemaker takes 1 or 0"),
        (["--allow-sagemaker", "true", "--sagemaker-port", "8000"], "at the same address and port 8000"),
        (["--allow-sagemaker", "true", "--sagemaker-port", "70000"], "give a port from 0"),
        (["--allow-sagemaker", "true", "--sagemaker-safe-port-range", "9000-9100"], "allowed port range is [9000, 9100]"),
        (["--allow-sagemaker", "true", "--sagemaker-safe-port-range", "high-low"], "give <low>-<high>"),
        (["--allow-sagemaker", "true", "--engine", "ray"], "served by the local engine's server"),
        (["--sagemaker-thread-count", "0"], "invalid argument for --sagemaker-thread-count"),
    ],
)
def test_bad_sagemaker_flags_exit_2_with_one_line(tmp_path: Path, args: list[str], says: str) -> None:
    assert says in refused_at_start(tmp_path, ["--http-port", "8000", "--grpc-port", "-1", *args])


def test_an_unknown_inference_type_exits_2_once_the_port_is_served(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SAGEMAKER_TRITON_INFERENCE_TYPE", "predict")
    line = refused_at_start(tmp_path, ["--http-port", "8000", "--grpc-port", "-1", "--allow-sagemaker", "true"])
    assert "Server has invalid inference type 'predict'. Must be one of: infer, generate, generate_stream." in line


@pytest.mark.parametrize("live", [False, True])
def test_while_draining_ping_says_not_ready_unless_asked_for_liveness_and_invocations_are_refused(
    model_store: tuple[Store, dict[str, ModelRecord]], live: bool
) -> None:
    """helper-124: the port took new invocations through the whole drain, then cut them off."""
    st = start(model_store[0], models=["mlp"], sagemaker_port=0, sagemaker=SageMakerSettings(model="mlp", ping_live=live))
    try:
        port = st.server.platform_ports.get("SageMaker")
        assert port is not None and _call(port, "GET", "/ping")[0] == 200
        st.server.plane.start_draining()  # as SIGTERM starts a drain
        assert _call(port, "GET", "/ping")[0] == (200 if live else 400)
        status, _, answer = _call(port, "POST", "/invocations", json.dumps({"inputs": [TENSOR]}).encode())
        assert status == 503 and "shutting down" in json.loads(answer)["error"]
    finally:
        st.stop()


def test_the_body_is_read_as_it_came_whatever_its_type_or_encoding_and_hints_name_sagemakers_header(
    sagemaker: tuple[ServerThread, int],
) -> None:
    """helper-123: a content type or encoding the HTTP port reads was read here too (415, a gzip length checked
    against the compressed body), and a missing header length was asked for as Inference-Header-Content-Length,
    which this port does not read."""
    _, port = sagemaker
    body = json.dumps({"inputs": [TENSOR]}).encode()
    assert _call(port, "POST", "/invocations", body, "text/csv")[0] == 200  # Triton reads any type as JSON
    x = mlp_ones(1)
    binary, _ = httpclient.InferenceServerClient.generate_request_body([x])
    status, _, answer = _call(port, "POST", "/invocations", binary, "application/octet-stream")
    assert status == 400 and f"send Content-Type: {BINARY}<N>" in json.loads(answer)["error"], answer
