"""Triton's Vertex AI front end (``--allow-vertex-ai true``, or ``AIP_MODE=PREDICTION``): the health and predict routes
Vertex AI gives a container (``AIP_HEALTH_ROUTE``, ``AIP_PREDICT_ROUTE``), the default model, binary tensors with
Vertex's content type, and the protocol's endpoints reached through ``X-Vertex-Ai-Triton-Redirect``."""

from __future__ import annotations

import http.client
import json
import re
import signal
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import tritonclient.http as httpclient
from servekit import (
    cli_server,
    free_port,
    http_call,
    mlp_ones,
    refused_after_loads,
    refused_at_start,
    register_like,
    start,
)

from polystack.server.app import ServerThread
from polystack.server.vertex_ai import VertexAiSettings
from polystack.store import ModelRecord, Store

BINARY = "application/vnd.vertex-ai-triton.binary+json;json-header-size="
PREDICT = "/v1/endpoints/1/deployedModels/2:predict"
TENSOR = {"name": "x", "shape": [1, 16], "datatype": "FP32", "data": [0.5] * 16}
ROUTES = {"AIP_PREDICT_ROUTE": PREDICT, "AIP_HEALTH_ROUTE": "/health"}


_call = http_call


@pytest.fixture
def vertex(model_store: tuple[Store, dict[str, ModelRecord]]) -> Iterator[tuple[ServerThread, int]]:
    settings = VertexAiSettings(re.compile(re.escape(PREDICT)), re.compile("/health"), "mlp")
    st = start(model_store[0], models=["mlp", "two"], vertex_ai_port=0, vertex_ai=settings)
    port = st.server.platform_ports.get("Vertex AI")
    assert port is not None
    yield st, port
    st.stop()


def test_the_health_route_answers_200_with_an_empty_body_and_other_methods_405(vertex: tuple[ServerThread, int]) -> None:
    _, port = vertex
    assert _call(port, "GET", "/health") == (200, "text/plain", b"")
    status, ctype, body = _call(port, "POST", "/health")
    assert status == 405 and ctype == "application/json" and "Method Not Allowed" in json.loads(body)["error"]


def test_the_predict_route_runs_the_default_model_as_the_http_ports_infer_does(vertex: tuple[ServerThread, int]) -> None:
    st, port = vertex
    body = json.dumps({"id": "v1", "inputs": [TENSOR]}).encode()
    status, ctype, answer = _call(port, "POST", PREDICT, body)
    assert (status, ctype) == (200, "application/json")
    assert json.loads(answer) == json.loads(_call(st.http_port, "POST", "/v2/models/mlp/infer", body)[2])
    assert _call(port, "GET", PREDICT)[0] == 405


def test_binary_tensors_come_with_vertexs_content_type_and_go_as_the_binary_extension_sends_them(
    vertex: tuple[ServerThread, int],
) -> None:
    """As tritonserver 2.51 answers them (helper-125): the JSON part's length in the request's content type, and in
    the answer's Inference-Header-Content-Length."""
    _, port = vertex
    y = httpclient.InferRequestedOutput("y", binary_data=True)
    body, json_size = httpclient.InferenceServerClient.generate_request_body([mlp_ones(2)], outputs=[y])
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    conn.request("POST", PREDICT, body=body, headers={"Content-Type": f"{BINARY}{json_size}"})
    resp = conn.getresponse()
    answer = resp.read()
    conn.close()
    assert resp.status == 200 and resp.getheader("content-type") == "application/octet-stream", answer[:200]
    length = int(resp.getheader("inference-header-content-length") or "")
    result = httpclient.InferenceServerClient.parse_response_body(answer, header_length=length)
    assert result.as_numpy("y").shape == (2, 4)


def test_a_redirect_reaches_the_protocols_endpoints_as_triton_dispatches_them(vertex: tuple[ServerThread, int]) -> None:
    st, port = vertex

    def redirect(target: str, body: bytes = b"") -> tuple[int, bytes]:
        status, _, answer = _call(port, "POST", PREDICT, body, {"X-Vertex-Ai-Triton-Redirect": target})
        return status, answer

    x = json.dumps({"inputs": [{"name": "x", "shape": [1, 4], "datatype": "FP32", "data": [1, -2, 3, -4]}]}).encode()
    status, answer = redirect("v2/models/two/infer", x)  # another model than the default one
    assert status == 200 and [o["name"] for o in json.loads(answer)["outputs"]] == ["same", "neg"]
    for target, expected in (
        ("v2/models/mlp", "/v2/models/mlp"),
        ("v2/models/mlp/versions/1/config", "/v2/models/mlp/versions/1/config"),
        ("v2", "/v2"),
        ("v2/models/stats", "/v2/models/stats"),
    ):
        status, answer = redirect(target)
        assert status == 200 and json.loads(answer) == json.loads(_call(st.http_port, "GET", expected)[2]), target
    assert redirect("v2/health/ready")[0] == 200
    assert b"polystack_inference_request_success" in redirect("metrics")[1]
    assert redirect("v2/logging") == (400, b"")  # not an endpoint Triton's redirect reaches
    assert _call(port, "GET", PREDICT, None, {"X-Vertex-Ai-Triton-Redirect": "v2"})[0] == 405


def test_any_other_path_is_400_with_an_empty_body_as_in_triton(vertex: tuple[ServerThread, int]) -> None:
    _, port = vertex
    for path in ("/", "/v2/health/ready", "/predict", "/health/"):
        assert _call(port, "GET", path) == (400, "text/plain", b""), path


def test_while_draining_health_says_not_ready_and_predictions_are_refused(vertex: tuple[ServerThread, int]) -> None:
    st, port = vertex
    st.server.plane.start_draining()
    assert _call(port, "GET", "/health")[0] == 400
    status, _, answer = _call(port, "POST", PREDICT, json.dumps({"inputs": [TENSOR]}).encode())
    assert status == 503 and "shutting down" in json.loads(answer)["error"]


class _Health:
    """cli_server's readiness check, on the Vertex AI port's health route."""

    def __init__(self, port: int) -> None:
        self.port = port

    def is_server_ready(self) -> bool:
        return _call(self.port, "GET", "/health")[0] == 200


def test_aip_mode_prediction_serves_the_repository_at_aip_storage_uri_on_aip_http_port_alone(tmp_path: Path) -> None:
    """As Triton in Vertex AI's containers: AIP_MODE=PREDICTION turns the Vertex AI port on and the HTTP and gRPC
    ports off, and AIP_STORAGE_URI is the model repository where none is given."""
    from polystack.examples import mlp_onnx

    (tmp_path / "repo" / "solo" / "1").mkdir(parents=True)
    mlp_onnx(tmp_path / "repo" / "solo" / "1" / "model.onnx", sizes=(16, 8, 4))
    port, grpc_port, vertex_port = free_port(), free_port(), free_port()
    env = {"AIP_MODE": "PREDICTION", "AIP_HTTP_PORT": str(vertex_port), "AIP_STORAGE_URI": str(tmp_path / "repo"),
           **ROUTES}  # fmt: skip
    args = ["--grpc-port", str(grpc_port)]  # read as Triton reads it: not, the gRPC port being off
    with cli_server(tmp_path / "home", args, port, tmp_path / "log", client=_Health(vertex_port), env=env) as proc:
        raw = np.full((1, 16), 0.5, np.float32).tobytes()  # header size 0: the body is the one input
        status, ctype, _ = _call(vertex_port, "POST", PREDICT, raw, {"Content-Type": f"{BINARY}0"})
        assert status == 200 and ctype == "application/octet-stream"  # every output binary
        with pytest.raises(OSError):
            _call(port, "GET", "/v2/health/ready")  # no HTTP port
        with pytest.raises(OSError):
            _call(grpc_port, "GET", "/")  # and no gRPC port
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0, (tmp_path / "log").read_text()


@pytest.mark.parametrize(
    ("env", "args", "says"),
    [
        ({"AIP_HEALTH_ROUTE": "/health"}, [], "API_PREDICT_ROUTE is not defined for Vertex AI endpoint"),
        ({"AIP_PREDICT_ROUTE": "/p"}, [], "AIP_HEALTH_ROUTE is not defined for Vertex AI endpoint"),
        ({**ROUTES, "AIP_PREDICT_ROUTE": "(unclosed"}, [], "AIP_PREDICT_ROUTE='(unclosed' is not a regular expression"),
        (ROUTES, ["--vertex-ai-port", "8000"], "at the same address and port 8000"),
        (ROUTES, ["--engine", "ray"], "served by the local engine's server"),
        (ROUTES, ["--vertex-ai-thread-count", "0"], "Triton takes from 1"),
        ({**ROUTES, "AIP_MODE": "PREDICTION", "AIP_STORAGE_URI": "https://storage.googleapis.com/b/models"},
         ["--allow-vertex-ai", "true"], "AIP_STORAGE_URI=https://storage.googleapis.com/b/models: polystack reads "
         "model repositories from local folders, s3://, gs:// and as://"),
        # said as the variable it came from, not as a --model-repository never given (helper-262)
        ({**ROUTES, "AIP_MODE": "PREDICTION", "AIP_STORAGE_URI": "/nonexistent/models"}, ["--allow-vertex-ai", "true"],
         "AIP_STORAGE_URI=/nonexistent/models: not a folder; give the folder that holds the model folders"),
    ],
)
def test_bad_vertex_ai_settings_exit_2_with_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, env: dict[str, str], args: list[str], says: str
) -> None:
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    line = refused_at_start(tmp_path, ["--http-port", "8000", "--grpc-port", "-1", "--allow-vertex-ai", "true", *args])
    assert says in line, line


@pytest.mark.parametrize(
    ("models", "default", "says"),
    [
        (["mlp", "two"], [], "Expect the model repository contains only a single model if default model is not specified"),
        (["mlp"], ["--vertex-ai-default-model", "nope"], "Expect the default model 'nope' is loaded"),
    ],
)
def test_a_default_model_that_is_not_one_model_served_stops_the_start_in_tritons_words(
    model_store: tuple[Store, dict[str, ModelRecord]], monkeypatch: pytest.MonkeyPatch, models: list[str],
    default: list[str], says: str,
) -> None:  # fmt: skip
    store, _ = model_store
    for key, value in ROUTES.items():
        monkeypatch.setenv(key, value)
    args = [*models, "--allow-vertex-ai", "true", "--vertex-ai-port", "0", *default]
    assert says in refused_after_loads(store.settings.home.parent, args)


def test_a_redirect_is_held_to_the_http_ports_restricted_apis_and_names_models_by_their_path(
    model_store: tuple[Store, dict[str, ModelRecord]],
) -> None:
    """helper-127: --http-restricted-api did not reach the redirect (an unload went through without the header), and a
    model named load was asked for with POST."""
    from polystack.server import restricted

    store, records = model_store
    register_like(store, records["mlp"], "load")
    settings = VertexAiSettings(re.compile(re.escape(PREDICT)), re.compile("/health"), "mlp")
    limits = restricted.parse(["model-repository,statistics:admin=s3cret"], "--http-restricted-api")
    st = start(store, models=["mlp", "load"], vertex_ai_port=0, vertex_ai=settings, http_restricted=limits,
               allow_model_control=True)  # fmt: skip
    try:
        port = st.server.platform_ports["Vertex AI"]

        def redirect(target: str, **headers: str) -> int:
            return _call(port, "POST", PREDICT, b"", {"X-Vertex-Ai-Triton-Redirect": target, **headers})[0]

        assert redirect("v2/repository/models/mlp/unload") == 403
        assert redirect("v2/models/stats") == 403
        assert redirect("v2/models/stats", admin="s3cret") == 200
        assert _call(st.http_port, "GET", "/v2/models/mlp/ready")[0] == 200  # still served
        assert redirect("v2/models/load") == 200  # its metadata: a GET
    finally:
        st.stop()


def test_aip_mode_prediction_turns_http_off_even_beside_allow_vertex_ai_true(
    model_store: tuple[Store, dict[str, ModelRecord]], tmp_path: Path
) -> None:
    store, _ = model_store
    port, vertex_port = free_port(), free_port()
    env = {"AIP_MODE": "PREDICTION", **ROUTES}
    args = ["mlp", "--allow-vertex-ai", "true", "--vertex-ai-port", str(vertex_port)]
    with cli_server(store.settings.home, args, port, tmp_path / "log", client=_Health(vertex_port), env=env) as proc:
        with pytest.raises(OSError):
            _call(port, "GET", "/v2/health/ready")
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0, (tmp_path / "log").read_text()


def test_aip_storage_uri_is_the_repository_where_none_is_given_even_without_vertex_ais_port(tmp_path: Path) -> None:
    """helper-126: as Triton reads it, whatever serves."""
    from polystack.examples import mlp_onnx

    (tmp_path / "repo" / "solo" / "1").mkdir(parents=True)
    mlp_onnx(tmp_path / "repo" / "solo" / "1" / "model.onnx", sizes=(16, 8, 4))
    port = free_port()
    env = {"AIP_STORAGE_URI": str(tmp_path / "repo")}
    with cli_server(tmp_path / "home", ["--grpc-port", "-1"], port, tmp_path / "log", env=env):
        assert _call(port, "GET", "/v2/models/solo/ready")[0] == 200
