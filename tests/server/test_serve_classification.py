"""Triton's classification extension through tritonclient's class_count, over HTTP and gRPC."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from servekit import register_like, start
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
