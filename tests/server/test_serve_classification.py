"""Triton's classification extension through tritonclient's class_count, over HTTP and gRPC."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from servekit import cli_server, free_port, register_like, start
from tritonclient.utils import InferenceServerException

from polystack.server.app import ServerThread
from polystack.store import ModelRecord, Store


@pytest.mark.parametrize("transport", ["http", "grpc"])
def test_classification_returns_top_classes_through_tritonclient(server: ServerThread, transport: str) -> None:
    mod: Any = httpclient if transport == "http" else grpcclient
    client = mod.InferenceServerClient(server.http_url if transport == "http" else server.grpc_url)
    x = np.random.default_rng(3).standard_normal((3, 16)).astype(np.float32)
    i = mod.InferInput("x", [3, 16], "FP32")
    i.set_data_from_numpy(x)
    full = client.infer("mlp", [i]).as_numpy("y")
    got = client.infer("mlp", [i], outputs=[mod.InferRequestedOutput("y", class_count=2)]).as_numpy("y")
    assert got.shape == (3, 2)
    for row, classes in zip(full, got, strict=True):
        best = np.argsort(-row, kind="stable")[:2]
        assert [c.decode() for c in classes] == [f"{row[j]:f}:{j}" for j in best]
    s = mod.InferInput("s", [1, 2], "BYTES")
    s.set_data_from_numpy(np.array([[b"a", b"b"]], dtype=object))
    before = _successes(client, "strid")
    with pytest.raises(InferenceServerException) as e:
        client.infer("strid", [s], outputs=[mod.InferRequestedOutput("t", class_count=1)])
    # Triton's core's words first (helper-118)
    assert e.value.message().startswith("class result not available for output due to unsupported type 'BYTES'")
    assert _successes(client, "strid") == before  # refused before the model ran


def _successes(client: Any, model: str) -> int:
    """The model's successful inferences, from either client (gRPC's as JSON: int64 counts are strings)."""
    grpc = isinstance(client, grpcclient.InferenceServerClient)
    stats = client.get_inference_statistics(model, **({"as_json": True} if grpc else {}))
    return int(stats["model_stats"][0]["inference_stats"].get("success", {}).get("count", 0))


@pytest.mark.parametrize("transport", ["http", "grpc"])
def test_classification_appends_the_models_labels(
    model_store: tuple[Store, dict[str, ModelRecord]], transport: str
) -> None:
    store, records = model_store
    labels = {"y": ["cat", "dog", "fish"]}  # none for class 3: Triton then leaves the label off
    files = {"y": "animals.txt"}
    register_like(store, records["mlp"], "labeled", settings={"labels": labels, "label_files": files})
    st = start(store, models=["labeled", "mlp"])
    try:
        mod: Any = httpclient if transport == "http" else grpcclient
        client = mod.InferenceServerClient(st.http_url if transport == "http" else st.grpc_url)
        # the config names the label file, as Triton's does: an output without labels has ""
        if transport == "http":
            assert [o["label_filename"] for o in client.get_model_config("labeled")["output"]] == ["animals.txt"]
            assert [o["label_filename"] for o in client.get_model_config("mlp")["output"]] == [""]
        else:
            assert [o.label_filename for o in client.get_model_config("labeled").config.output] == ["animals.txt"]
            assert [o.label_filename for o in client.get_model_config("mlp").config.output] == [""]
        x = np.random.default_rng(5).standard_normal((4, 16)).astype(np.float32)
        i = mod.InferInput("x", [4, 16], "FP32")
        i.set_data_from_numpy(x)
        full = client.infer("labeled", [i]).as_numpy("y")
        got = client.infer("labeled", [i], outputs=[mod.InferRequestedOutput("y", class_count=4)]).as_numpy("y")
        for row, classes in zip(full, got, strict=True):
            want = [
                f"{row[j]:f}:{j}" + (f":{labels['y'][j]}" if j < 3 else "") for j in np.argsort(-row, kind="stable")
            ]
            assert [c.decode() for c in classes] == want
    finally:
        st.stop()


@pytest.mark.parametrize("transport", ["http", "grpc"])
def test_classification_of_an_empty_batch_is_refused_as_any_empty_batch(server: ServerThread, transport: str) -> None:
    """Once a 500 (numpy cannot reshape (0, -1)), then an empty answer; Triton refuses a batch of 0 rows before
    its model runs (tritonserver 2.51, helper-106), and so does polystack, classes asked for or not."""
    mod: Any = httpclient if transport == "http" else grpcclient
    client = mod.InferenceServerClient(server.http_url if transport == "http" else server.grpc_url)
    i = mod.InferInput("x", [0, 16], "FP32")
    i.set_data_from_numpy(np.zeros((0, 16), np.float32))
    with pytest.raises(InferenceServerException, match="batch-size must be >= 1 for 'mlp', not 0") as e:
        client.infer("mlp", [i], outputs=[mod.InferRequestedOutput("y", class_count=2)])
    assert e.value.status() in ("400", "StatusCode.INVALID_ARGUMENT")


def _identity(path: Path, elem: int, dims: list[Any]) -> None:
    """OUT = Identity(IN), of ``dims`` (names for dynamic ones)."""
    import onnx
    from onnx import helper

    graph = helper.make_graph(
        [helper.make_node("Identity", ["IN"], ["OUT"])],
        "identity",
        [helper.make_tensor_value_info("IN", elem, dims)],
        [helper.make_tensor_value_info("OUT", elem, dims)],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    path.parent.mkdir(parents=True)
    onnx.save_model(model, str(path))


def _folder(repo: Path, name: str, elem: int, onnx_dims: list[Any], config: str, labels: int) -> None:
    _identity(repo / name / "1" / "model.onnx", elem, onnx_dims)
    (repo / name / "config.pbtxt").write_text(f'platform: "onnxruntime_onnx"\n{config}')
    (repo / name / "labels.txt").write_text("".join(f"label{i}\n" for i in range(labels)))


def test_a_triton_folders_labels_and_classes_are_read_as_triton_reads_them(tmp_path: Path) -> None:
    """Triton's own QA models (helper-157, L0_infer and L0_infer_variable): a text output naming a label file, and a
    label file longer than a non-batching output's dims starting with -1 (taken for a batch: 1 class), both load
    (they stopped the server starting); a model of max_batch_size 0 is classified over its whole output, one with a
    batch dimension by item."""
    from onnx import TensorProto

    repo = tmp_path / "models"
    tensor = 'name: "{}" data_type: {} dims: [ {} ]'
    for name, elem, dims, mbs, labels in [
        ("text", TensorProto.STRING, ["n", 16], "max_batch_size: 8", 16),
        ("nobatch", TensorProto.FLOAT, ["a", "b"], "max_batch_size: 0", 16),  # dims [-1, -1]: no batch there
        ("batched", TensorProto.FLOAT, ["n", "a", "b"], "max_batch_size: 8", 3),
    ]:
        kind = "TYPE_STRING" if elem == TensorProto.STRING else "TYPE_FP32"
        shown = "16" if name == "text" else "-1, -1"
        _folder(repo, name, elem, dims, f"{mbs}\ninput [ {{ {tensor.format('IN', kind, shown)} }} ]\n"
                f'output [ {{ {tensor.format("OUT", kind, shown)} label_filename: "labels.txt" }} ]\n', labels)  # fmt: skip
    port, grpc_port = free_port(), free_port()
    with cli_server(tmp_path / "home", ["--model-repository", str(repo), "--grpc-port", str(grpc_port)], port,
                    tmp_path / "log"):  # fmt: skip
        http = httpclient.InferenceServerClient(f"127.0.0.1:{port}")
        grpc = grpcclient.InferenceServerClient(f"127.0.0.1:{grpc_port}")
        s = httpclient.InferInput("IN", [1, 16], "BYTES")
        s.set_data_from_numpy(np.array([[b"x"] * 16], dtype=object))
        assert http.infer("text", [s]).as_numpy("OUT").tolist() == [[b"x"] * 16]
        assert http.get_model_config("text")["output"][0]["label_filename"] == "labels.txt"
        with pytest.raises(InferenceServerException, match="unsupported type 'BYTES'"):
            http.infer("text", [s], outputs=[httpclient.InferRequestedOutput("OUT", class_count=1)])
        x = np.arange(16, dtype=np.float32).reshape(2, 8)
        for mod, client in ((httpclient, http), (grpcclient, grpc)):
            i = mod.InferInput("IN", [2, 8], "FP32")
            i.set_data_from_numpy(x)
            got = client.infer("nobatch", [i], outputs=[mod.InferRequestedOutput("OUT", class_count=3)])
            assert got.as_numpy("OUT").tolist() == [b"15.000000:15:label15", b"14.000000:14:label14",
                                                    b"13.000000:13:label13"]  # fmt: skip
            b = mod.InferInput("IN", [2, 1, 3], "FP32")
            b.set_data_from_numpy(np.array([[[1, 3, 2]], [[2, 0, 1]]], np.float32))
            got = client.infer("batched", [b], outputs=[mod.InferRequestedOutput("OUT", class_count=1)])
            assert got.as_numpy("OUT").tolist() == [[b"3.000000:1:label1"], [b"2.000000:0:label0"]]
