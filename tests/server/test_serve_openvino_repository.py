"""`polystack serve --model-repository DIR` with models for Triton's OpenVINO backend (``backend: "openvino"``):
OpenVINO IR (model.xml and model.bin) and ONNX files named for it, served by OpenVINO as their configs say, with
the backend's parameters; a real server process and tritonclient."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import tritonclient.http as httpclient
from servekit import cli_server, free_port, refused_at_start

from polystack.examples import mlp_onnx

IR_CONFIG = """
backend: "openvino"
max_batch_size: 8
input [ { name: "x", data_type: TYPE_FP32, dims: [ 16 ] } ]
output [ { name: "y", data_type: TYPE_FP32, dims: [ 4 ] } ]
parameters [
  { key: "NUM_STREAMS", value: { string_value: "2" } },
  { key: "PERFORMANCE_HINT", value: { string_value: "throughput" } },
  { key: "INFERENCE_NUM_THREADS", value: { string_value: "1" } },
  { key: "SKIP_OV_DYNAMIC_BATCHSIZE", value: { string_value: "YES" } }
]
dynamic_batching { }
"""


def _ir(folder: Path, seed: int) -> Path:
    """An MLP (16 -> 4) saved as OpenVINO IR in ``folder`` (model.xml, model.bin); its ONNX form beside."""
    import openvino as ov

    folder.mkdir(parents=True, exist_ok=True)
    onnx = mlp_onnx(folder.parent / f"source-{seed}.onnx", seed=seed)
    ov.save_model(ov.convert_model(str(onnx)), str(folder / "model.xml"), compress_to_fp16=False)
    return onnx


def _expected(onnx: Path, x: np.ndarray) -> np.ndarray:
    return ort.InferenceSession(str(onnx), providers=["CPUExecutionProvider"]).run(["y"], {"x": x})[0]


def _infer(client: httpclient.InferenceServerClient, model: str, x: np.ndarray) -> np.ndarray:
    i = httpclient.InferInput("x", list(x.shape), "FP32")
    i.set_data_from_numpy(x)
    return client.infer(model, [i]).as_numpy("y")


def test_openvino_models_of_a_triton_repository_are_served_by_openvino_as_their_configs_say(tmp_path: Path) -> None:
    root = tmp_path / "models"
    ir_source = _ir(root / "ir" / "1", seed=1)
    (root / "ir" / "config.pbtxt").write_text(IR_CONFIG)
    plain_source = _ir(root / "plain" / "1", seed=2)  # no config: Triton's auto-complete finds model.xml
    (root / "onnx_ov" / "1").mkdir(parents=True)  # an ONNX file for Triton's OpenVINO backend
    onnx = mlp_onnx(root / "onnx_ov" / "1" / "model.onnx", seed=3)
    (root / "onnx_ov" / "config.pbtxt").write_text(
        'backend: "openvino"\ndefault_model_filename: "model.onnx"\n'
        'parameters [ { key: "HINT_BF16", value: { string_value: "yes" } } ]\n'
    )
    for name in ("ir", "plain", "onnx_ov"):
        (root / name / "1" / "notes.txt").write_text("a file beside the model, as repositories have")
    port = free_port()
    x = np.random.default_rng(0).standard_normal((3, 16)).astype(np.float32)
    with cli_server(tmp_path / "home", ["--model-repository", str(root), "--grpc-port", "-1"], port, tmp_path / "log"):
        client = httpclient.InferenceServerClient(f"127.0.0.1:{port}")
        np.testing.assert_allclose(_infer(client, "ir", x), _expected(ir_source, x), rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(_infer(client, "plain", x), _expected(plain_source, x), rtol=1e-5, atol=1e-5)
        # bf16, as HINT_BF16 asks: close, not exact
        np.testing.assert_allclose(_infer(client, "onnx_ov", x), _expected(onnx, x), rtol=0.05, atol=0.05)
        # as Triton shows a backend's model: its name in metadata, an empty platform in its config
        assert client.get_model_metadata("ir")["platform"] == "openvino"
        assert client.get_model_metadata("onnx_ov")["platform"] == "openvino"
        config = client.get_model_config("ir")
        assert config["backend"] == "openvino" and config["platform"] == "" and config["max_batch_size"] == 8
        assert config["parameters"]["NUM_STREAMS"] == {"string_value": "2"}
        onnx_ov = client.get_model_config("onnx_ov")
        assert onnx_ov["backend"] == "openvino"  # its ONNX file, on OpenVINO
        assert onnx_ov["default_model_filename"] == "model.onnx"  # as its config names it (helper-269: ignored)
        assert client.get_model_config("plain")["backend"] == "openvino"
    lines = [json.loads(line) for line in (tmp_path / "log").read_text().splitlines() if line.startswith("{")]
    loaded = {r.get("model"): r for r in lines if r.get("msg") == "model loaded"}
    assert loaded["ir"]["backend"] == "openvino" and loaded["onnx_ov"]["backend"] == "openvino", loaded
    assert loaded["ir"]["options"]["num_streams"] == 2 and loaded["ir"]["options"]["performance_hint"] == "THROUGHPUT"
    assert loaded["ir"]["options"]["inference_num_threads"] == 1
    assert loaded["onnx_ov"]["options"]["inference_precision"] == "bf16"
    assert loaded["plain"]["options"]["inference_precision"] == "f32"  # IR's own precision unless asked


@pytest.mark.parametrize(
    ("parameters", "words"),
    [
        (
            '{ key: "PERFORMANCE_HINT", value: { string_value: "fast" } }',
            "to be LATENCY/THROUGHPUT/CUMULATIVE_THROUGHPUT, got fast",
        ),
        ('{ key: "NUM_STREAMS", value: { string_value: "many" } }', "to be either AUTO/NUMA/<int_value>, got many"),
        ('{ key: "NUM_STREAMS", value: { string_value: "²" } }', "to be either AUTO/NUMA/<int_value>, got ²"),
        ('{ key: "INFERENCE_NUM_THREADS", value: { string_value: "-2" } }', "to be a non-negative number, got -2"),
        ('{ key: "HINT_BF16", value: { string_value: "no" } }', "'HINT_BF16' to be YES, got no"),
        (
            '{ key: "CPU_EXTENSION_PATH", value: { string_value: "/opt/libcustom.so" } }',
            "which polystack does not load",
        ),
        ('{ key: "intra_op_thread_count", value: { string_value: "1" } }', "of Triton's ONNX Runtime backend"),
    ],
    ids=["hint", "streams", "streams-superscript", "threads", "bf16", "extension", "onnxruntime-parameter"],
)
def test_openvino_parameters_triton_refuses_are_refused_at_start_in_its_words(
    tmp_path: Path, parameters: str, words: str
) -> None:
    root = tmp_path / "models"
    _ir(root / "ir" / "1", seed=1)
    (root / "ir" / "config.pbtxt").write_text(f'backend: "openvino"\nparameters [ {parameters} ]\n')
    line = refused_at_start(tmp_path, ["--model-repository", str(root)])
    assert "failed to load 'ir:1'" in line and words in line, line


def test_ir_without_its_weights_is_refused_naming_the_file(tmp_path: Path) -> None:
    root = tmp_path / "models"
    _ir(root / "ir" / "1", seed=1)
    (root / "ir" / "1" / "model.bin").unlink()
    (root / "ir" / "config.pbtxt").write_text('backend: "openvino"\n')
    line = refused_at_start(tmp_path, ["--model-repository", str(root)])
    assert "model 'ir'" in line and "model.bin beside it, which is not there" in line, line


def test_a_loads_config_backend_chooses_the_runtime_among_those_polystack_has_for_the_model(tmp_path: Path) -> None:
    import subprocess
    import sys

    from tritonclient.utils import InferenceServerException

    onnx = mlp_onnx(tmp_path / "mlp.onnx", seed=4)
    polystack = [sys.executable, "-m", "polystack", "--home", str(tmp_path / "home")]
    subprocess.run([*polystack, "register", str(onnx), "--name", "mlp"], check=True, capture_output=True)
    port = free_port()
    x = np.ones((2, 16), np.float32)
    with cli_server(tmp_path / "home", ["mlp", "--allow-model-control", "--grpc-port", "-1"], port, tmp_path / "log"):
        client = httpclient.InferenceServerClient(f"127.0.0.1:{port}")
        assert client.get_model_config("mlp")["backend"] == "onnxruntime"
        client.load_model("mlp", config=json.dumps({"backend": "openvino"}))
        assert client.get_model_config("mlp")["backend"] == "openvino"
        assert client.get_model_metadata("mlp")["platform"] == "openvino"
        np.testing.assert_allclose(_infer(client, "mlp", x), _expected(onnx, x), rtol=1e-5, atol=1e-5)
        client.load_model("mlp", config=json.dumps({"backend": "onnxruntime"}))
        assert client.get_model_config("mlp")["backend"] == "onnxruntime"
        with pytest.raises(InferenceServerException, match="of Triton's ONNX Runtime backend"):
            client.load_model(
                "mlp",
                config=json.dumps(
                    {"backend": "openvino", "parameters": {"intra_op_thread_count": {"string_value": "1"}}}
                ),
            )
        with pytest.raises(InferenceServerException, match="asks for backend 'fil'"):  # no such runtime here
            client.load_model("mlp", config=json.dumps({"backend": "fil"}))
        assert client.get_model_config("mlp")["backend"] == "onnxruntime"  # a refused load changes nothing
        np.testing.assert_allclose(_infer(client, "mlp", x), _expected(onnx, x), rtol=1e-5, atol=1e-5)


def test_openvino_says_why_it_cannot_read_an_ir_and_a_fixed_batch_of_1_is_named(tmp_path: Path) -> None:
    import openvino as ov

    root = tmp_path / "models"
    _ir(root / "ir" / "1", seed=1)
    weights = root / "ir" / "1" / "model.bin"
    weights.write_bytes(weights.read_bytes()[:100])  # truncated: OpenVINO's reason, not a word of custom layers
    (root / "ir" / "config.pbtxt").write_text('backend: "openvino"\n')
    line = refused_at_start(tmp_path, ["--model-repository", str(root)])
    assert "Incorrect weights in bin file" in line and "custom layers" not in line, line
    static = tmp_path / "static"
    _ir(static / "src" / "1", seed=2)
    model = ov.Core().read_model(str(static / "src" / "1" / "model.xml"))
    model.reshape({"x": [1, 16]})  # a batch fixed at 1, as many converted models have
    ov.save_model(model, str(static / "m" / "1" / "model.xml"), compress_to_fp16=False)
    (static / "m" / "config.pbtxt").write_text('backend: "openvino"\nmax_batch_size: 4\n')
    (static / "src").rename(tmp_path / "elsewhere")
    line = refused_at_start(tmp_path / "second", ["--model-repository", str(static)])
    assert "'x' fixes its first dim at 1" in line and "openvino.Model.reshape" in line, line


def test_a_load_with_files_takes_openvino_ir_as_its_two_files(tmp_path: Path) -> None:
    source = _ir(tmp_path / "ir" / "1", seed=5)
    files = {f"file:1/{name}": (tmp_path / "ir" / "1" / name).read_bytes() for name in ("model.xml", "model.bin")}
    port = free_port()
    args = ["--model-repository", str(tmp_path / "empty"), "--model-control-mode", "explicit", "--grpc-port", "-1"]
    (tmp_path / "empty").mkdir()
    with cli_server(tmp_path / "home", args, port, tmp_path / "log"):
        client = httpclient.InferenceServerClient(f"127.0.0.1:{port}")
        client.load_model("ir", config=json.dumps({"backend": "openvino", "parameters": {}}), files=files)
        x = np.ones((2, 16), np.float32)
        np.testing.assert_allclose(_infer(client, "ir", x), _expected(source, x), rtol=1e-5, atol=1e-5)


def test_num_streams_0_leaves_the_streams_to_openvino_as_triton_takes_it(tmp_path: Path) -> None:
    root = tmp_path / "models"
    _ir(root / "ir" / "1", seed=1)
    (root / "ir" / "config.pbtxt").write_text(
        'backend: "openvino"\nparameters [ { key: "NUM_STREAMS", value: { string_value: "0" } } ]\n'
    )
    port = free_port()
    with cli_server(tmp_path / "home", ["--model-repository", str(root), "--grpc-port", "-1"], port, tmp_path / "log"):
        client = httpclient.InferenceServerClient(f"127.0.0.1:{port}")
        assert _infer(client, "ir", np.ones((1, 16), np.float32)).shape == (1, 4)
