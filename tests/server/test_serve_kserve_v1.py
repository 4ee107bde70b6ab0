"""KServe's V1 protocol on a real server, over plain HTTP: its routes, what each answers, and the refusals
(KServe's own client, with the V1 protocol, is in test_serve_kserve_clients.py)."""

from __future__ import annotations

import gzip
import json

import numpy as np
import tritonclient.http as httpclient
from conftest import Raw

from polystack.server.app import ServerThread


def test_the_v1_routes_answer_as_kserves_model_servers_do(server: ServerThread, raw: Raw) -> None:
    assert raw.json("GET", "/") == (200, {"status": "alive"})
    status, doc = raw.json("GET", "/v1/models")
    assert status == 200 and {"mlp", "notb", "two"} <= set(doc["models"]) and doc["models"] == sorted(doc["models"])
    assert raw.json("GET", "/v1/models/mlp") == (200, {"name": "mlp", "ready": True})
    status, doc = raw.json("GET", "/v1/models/nope")
    assert status == 404 and "Request for unknown model: 'nope' is not found" in doc["error"]
    status, doc = raw.json("POST", "/v1/models/mlp:explain", {"instances": [[0.0] * 16]})
    assert status == 404 and "serves no explainers" in doc["error"]
    status, headers, _ = raw.request("GET", "/v1/models/mlp:predict")
    assert status == 405 and headers["allow"] == "POST"
    status, doc = raw.json("POST", "/v1/models/mlp:classify", {})
    assert status == 404 and "KServe's V1 ones under /v1/models" in doc["error"]


def test_a_v1_prediction_is_the_models_answer_and_counts_in_its_statistics(server: ServerThread, raw: Raw) -> None:
    client = httpclient.InferenceServerClient(f"127.0.0.1:{server.http_port}")
    x = np.linspace(-1, 1, 32, dtype=np.float32).reshape(2, 16)
    tensor = httpclient.InferInput("x", [2, 16], "FP32")
    tensor.set_data_from_numpy(x)
    want = client.infer("mlp", [tensor]).as_numpy("y")
    before = client.get_inference_statistics("mlp")["model_stats"][0]["inference_count"]
    status, doc = raw.json("POST", "/v1/models/mlp:predict", {"instances": x.tolist()})
    assert status == 200, doc
    np.testing.assert_allclose(np.array(doc["predictions"], np.float32), want, rtol=1e-6)
    # a compressed body, as for the v2 endpoints
    packed = gzip.compress(json.dumps({"inputs": {"x": x.tolist()}}).encode())
    status, _, body = raw.request(
        "POST", "/v1/models/mlp:predict", packed, {"Content-Type": "application/json", "Content-Encoding": "gzip"}
    )
    assert status == 200 and np.allclose(json.loads(body)["predictions"], want, rtol=1e-6)
    assert client.get_inference_statistics("mlp")["model_stats"][0]["inference_count"] == before + 4


def test_v1_refusals_are_clear_and_the_server_serves_on(server: ServerThread, raw: Raw) -> None:
    cases = [
        ({"instances": [[0.0] * 3]}, 400, r"unexpected shape for input 'x' for model 'mlp'. Expected [-1,16], got [1,3]"),
        ({"instances": [[0.0] * 16, [0.0]]}, 400, "its nested lists are of different lengths"),
        ({"rows": [[0.0] * 16]}, 400, 'as "instances"'),
        ({"instances": [{"x": [0.0] * 16, "z": [1]}]}, 400, "unexpected inference input 'z' for model 'mlp'"),
        ({"instances": [{"x": [0.0] * 16, "z": [0, 0.5, "a", None]}]}, 400, "unexpected inference input 'z'"),
    ]
    for doc, status, words in cases:
        got, answer = raw.json("POST", "/v1/models/mlp:predict", doc)
        assert got == status and words in answer["error"], answer
    status, _, body = raw.request("POST", "/v1/models/mlp:predict", b"[", {"Content-Type": "application/json"})
    assert status == 400 and b"not valid JSON" in body
    status, _, body = raw.request("POST", "/v1/models/mlp:predict", b"{}", {"Content-Type": "text/csv"})
    assert status == 415
    raw.infer_ok()
