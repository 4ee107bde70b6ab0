"""KServe's own Python SDK clients against a real ``polystack serve`` process: a KServe user's
``InferenceRESTClient`` and ``InferenceGRPCClient`` code works unchanged, over REST (JSON and the binary tensor
extension) and gRPC (typed and raw contents), for FP32, INT64, BOOL, BYTES and FP16 tensors, with requested
outputs, request ids, readiness, and refusals the clients surface as errors with the server's words; and the
REST client with KServe's V1 protocol (``:predict``, rows and columns).

KServe pins pandas < 3 and protobuf < 7, which polystack's environment is past, so the clients run in a
venv of their own (``.venv-kserve``, which ``make setup`` builds from ``constraints-kserve.txt``), in a
subprocess (``kserve_calls.py``) that prints what they got."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper
from servekit import cli_server, free_port

from polystack.examples import mlp_onnx

ROOT = Path(__file__).resolve().parents[2]
KSERVE_PYTHON = ROOT / ".venv-kserve" / "bin" / "python"
X = np.arange(48, dtype=np.float32).reshape(3, 16) / 48  # as kserve_calls.py sends it


def types_onnx(path: Path, fp16: bool) -> Path:
    """io = i (INT64), bo = not b (BOOL), so = s (BYTES) and, with ``fp16``, ho = h (FP16); rows batched."""
    kinds = [("i", "io", TensorProto.INT64, "Identity"), ("b", "bo", TensorProto.BOOL, "Not"),
             ("s", "so", TensorProto.STRING, "Identity")] + ([("h", "ho", TensorProto.FLOAT16, "Identity")] if fp16 else [])  # fmt: skip
    graph = helper.make_graph(
        [helper.make_node(op, [i], [o]) for i, o, _, op in kinds],
        "types",
        [helper.make_tensor_value_info(i, t, ["n", 2]) for i, _, t, _ in kinds],
        [helper.make_tensor_value_info(o, t, ["n", 2]) for _, o, t, _ in kinds],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))
    return path


@pytest.fixture(scope="module")
def got(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[dict[str, Any], np.ndarray]]:
    """What the KServe clients got from a server of mlp, types and plain, and the mlp's answer to X."""
    if not KSERVE_PYTHON.exists():
        pytest.fail(f"{KSERVE_PYTHON} is missing: `make setup` builds it (KServe's clients in a venv of their own)")
    root = tmp_path_factory.mktemp("kserve")
    mlp = mlp_onnx(root / "models" / "mlp" / "1" / "model.onnx")
    types_onnx(root / "models" / "types" / "1" / "model.onnx", fp16=True)
    types_onnx(root / "models" / "plain" / "1" / "model.onnx", fp16=False)
    expected = ort.InferenceSession(str(mlp), providers=["CPUExecutionProvider"]).run(None, {"x": X})[0]
    port, grpc_port = free_port(), free_port()
    args = ["--model-repository", str(root / "models"), "--grpc-port", str(grpc_port)]
    with cli_server(root / "home", args, port, root / "serve.log") as server:
        out = subprocess.run(
            [str(KSERVE_PYTHON), str(Path(__file__).with_name("kserve_calls.py")), str(port), str(grpc_port)],
            capture_output=True, text=True, timeout=180,
        )  # fmt: skip
        assert out.returncode == 0, out.stderr[-4000:]
        assert server.poll() is None  # it served on through every refusal
        yield json.loads(out.stdout.strip().splitlines()[-1]), expected


@pytest.mark.parametrize("transport", ["rest", "grpc"])
def test_readiness_answers_as_the_clients_read_it(got, transport: str) -> None:
    calls = got[0][transport]
    assert calls["live"] is True and calls["ready"] is True and calls["model_ready"] is True
    # not an error: REST answers it 400, which the client reads as not ready, gRPC ready false (as Triton's)
    assert calls["unknown_model_ready"] is False


@pytest.mark.parametrize("transport", ["rest", "grpc"])
@pytest.mark.parametrize("binary", [False, True])
def test_fp32_requests_get_the_models_answer_and_their_id_back(got, transport: str, binary: bool) -> None:
    calls, expected = got
    answer = calls[transport][f"mlp_binary_{binary}"]
    assert answer["id"] == f"{transport}-{binary}" and answer["model_name"] == "mlp"
    y = answer["outputs"]["y"]
    assert y["datatype"] == "FP32" and y["shape"] == [3, 4]
    np.testing.assert_allclose(np.array(y["data"], np.float32).reshape(3, 4), expected, rtol=1e-5, atol=1e-6)


def _typed_answers(outputs: dict[str, Any], fp16: bool) -> None:
    assert outputs["io"] == {"datatype": "INT64", "shape": [2, 2], "data": [1, -(2**40), 3, 2**62]}
    assert outputs["bo"] == {"datatype": "BOOL", "shape": [2, 2], "data": [False, True, True, False]}
    # BYTES pass through byte for byte: UTF-8, empty, an embedded NUL (shown here as latin-1 text)
    assert outputs["so"] == {"datatype": "BYTES", "shape": [2, 2], "data": ["a", "\u00c3\u00a9", "", "x\x00y"]}
    if fp16:
        assert outputs["ho"] == {"datatype": "FP16", "shape": [2, 2], "data": [0.5, 2.0, -1.0, 65504.0]}


@pytest.mark.parametrize(("transport", "cell"), [("rest", "plain_json"), ("grpc", "plain_typed")])
def test_int64_bool_and_bytes_as_json_or_typed_contents(got, transport: str, cell: str) -> None:
    answer = got[0][transport][cell]
    assert answer["model_name"] == "plain" and answer["id"] == ("plain" if transport == "rest" else "plain-g")
    _typed_answers(answer["outputs"], fp16=False)


@pytest.mark.parametrize(("transport", "cell"), [("rest", "types_binary"), ("grpc", "types_raw")])
def test_int64_bool_bytes_and_fp16_as_binary_data(got, transport: str, cell: str) -> None:
    _typed_answers(got[0][transport][cell]["outputs"], fp16=True)


@pytest.mark.parametrize(("transport", "output"), [("rest", "so"), ("grpc", "bo")])
def test_requested_outputs_are_the_only_ones_answered(got, transport: str, output: str) -> None:
    assert list(got[0][transport]["types_one_output"]["outputs"]) == [output]


def test_a_plain_dict_request_as_kserves_docs_send_one(got) -> None:
    calls, expected = got
    answer = calls["rest"]["mlp_dict"]
    assert answer["id"] == "d"
    np.testing.assert_allclose(np.array(answer["outputs"]["y"]["data"], np.float32), expected[0], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(
    ("transport", "cell", "code", "words"),
    [
        ("rest", "unexpected_input", 400, "unexpected inference input 'q' for model 'mlp'"),
        ("rest", "unknown_model", 404, "Request for unknown model: 'nope' is not found"),
        ("rest", "short_data", 400, "needs 16 elements but 'data' holds 1"),
        ("grpc", "unexpected_input", "INVALID_ARGUMENT", "unexpected inference input 'q' for model 'mlp'"),
        ("grpc", "unknown_model", "NOT_FOUND", "Request for unknown model: 'nope' is not found"),
    ],
)
def test_refusals_reach_the_client_with_their_status_and_words(
    got, transport: str, cell: str, code: Any, words: str
) -> None:
    refused = got[0][transport][cell]
    assert refused["code"] == code and words in refused["message"], refused


def test_kserves_v1_protocol_rows_and_columns(got) -> None:
    calls, expected = got
    v1 = calls["v1"]
    assert v1["live"] is True and v1["model_ready"] is True
    np.testing.assert_allclose(np.array(v1["rows"]["predictions"], np.float32), expected, rtol=1e-5, atol=1e-6)
    # the columnar form is answered as KServe's servers answer it, predictions too
    np.testing.assert_allclose(np.array(v1["columnar"]["predictions"], np.float32), expected[:1], rtol=1e-5, atol=1e-6)
    # several outputs: an object per instance; BYTES as text, sent as text or base64 ("eABZ": x, NUL, Y)
    assert v1["named"] == {"predictions": [{"io": [1, 2], "bo": [False, True], "so": ["a", "x\u0000Y"]}]}


@pytest.mark.parametrize(
    ("cell", "code", "words"),
    [
        ("unexpected_input", 400, "unexpected inference input 'q' for model 'mlp'"),
        ("unknown_model", 404, "Request for unknown model: 'nope' is not found"),
        ("ragged", 400, "input 'x': its nested lists are of different lengths at depth 1"),
    ],
)
def test_kserves_v1_refusals_reach_the_client(got, cell: str, code: int, words: str) -> None:
    refused = got[0]["v1"][cell]
    assert refused["code"] == code and words in refused["message"], refused
