"""The engine on real runtimes: load, infer, validation, metadata, unload."""

import dataclasses
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from polystack.engine import Engine, LoadSpec, default_spec, with_concurrency
from polystack.errors import BackendUnavailable, InvalidTensor, ModelNotFound, ModelNotReady
from polystack.formats import import_model
from polystack.store import ModelRecord, Store


@pytest.fixture
def record(store: Store, mlp_path: Path) -> ModelRecord:
    imported = import_model(mlp_path, mlp_path.parent)
    return store.register(imported.artifact, name="mlp", format="onnx", signature=imported.signature)[0]


def test_infer_matches_onnxruntime_called_directly(store: Store, record: ModelRecord, mlp_path: Path) -> None:
    engine = Engine(store)
    entry = engine.load("mlp")
    assert entry.spec.backend == "onnxruntime"
    x = np.random.default_rng(0).standard_normal((5, 8)).astype(np.float32)
    got = engine.infer("mlp", {"x": x})["y"]
    want = ort.InferenceSession(str(mlp_path), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    np.testing.assert_allclose(got, want, rtol=1e-6)
    stats = entry.stats.to_dict()
    # no row limit: its model configuration says max_batch_size 0, under which Triton counts the request
    assert stats["inference_count"] == 1 and stats["execution_count"] == 1
    assert stats["inference_stats"]["success"]["count"] == 1
    limited = engine.load("mlp", dataclasses.replace(entry.spec, max_batch_size=8))
    engine.infer("mlp", {"x": x})
    assert limited.stats.to_dict()["inference_count"] == 5  # a row limit: rows are inferences


def test_bad_inputs_are_refused_before_the_runtime_and_counted_as_failures(store: Store, record: ModelRecord) -> None:
    engine = Engine(store)
    entry = engine.load("mlp")
    with pytest.raises(InvalidTensor, match="unexpected shape for input 'x' for model 'mlp'"):
        engine.infer("mlp", {"x": np.zeros((2, 9), np.float32)})
    with pytest.raises(InvalidTensor, match="inference input 'x' data-type is 'INT64', but model 'mlp' expects 'FP32'"):
        engine.infer("mlp", {"x": np.zeros((2, 8), np.int64)})
    with pytest.raises(InvalidTensor, match="unexpected inference input 'z' for model 'mlp'"):
        engine.infer("mlp", {"z": np.zeros((2, 8), np.float32)})
    assert entry.stats.to_dict()["inference_stats"]["fail"]["count"] == 3
    assert engine.infer("mlp", {"x": np.zeros((2, 8), np.float32)})["y"].shape == (2, 3)


def test_requested_outputs_are_selected(store: Store, record: ModelRecord) -> None:
    engine = Engine(store)
    engine.load("mlp")
    x = np.zeros((1, 8), np.float32)
    assert list(engine.infer("mlp", {"x": x}, outputs=["y"])) == ["y"]
    with pytest.raises(InvalidTensor, match="unexpected inference output 'nope' for model 'mlp'"):
        engine.infer("mlp", {"x": x}, outputs=["nope"])


def test_ready_metadata_and_unload(store: Store, record: ModelRecord) -> None:
    engine = Engine(store)
    assert not engine.ready("mlp")
    # Triton's words and codes: no version loaded is an unknown model (NOT_FOUND), a version not loaded is not ready
    with pytest.raises(ModelNotFound, match="Request for unknown model: 'mlp' has no available versions"):
        engine.infer("mlp", {"x": np.zeros((1, 8), np.float32)})
    with pytest.raises(ModelNotReady, match="'mlp' version 1 is not at ready state"):
        engine.get("mlp", 1)
    with pytest.raises(ModelNotFound):
        engine.get("ghost")
    engine.load("mlp:1")
    assert engine.ready("mlp") and engine.ready("mlp", 1) and not engine.ready("mlp", 2)
    meta = engine.metadata("mlp").to_dict()
    assert meta["platform"] == "onnxruntime_onnx"
    assert meta["inputs"] == [{"name": "x", "datatype": "FP32", "shape": [-1, 8], "dim_names": ["batch", None]}]
    engine.unload("mlp")
    assert not engine.ready("mlp")


def test_null_backend_serves_zeros_of_the_declared_shape(store: Store, record: ModelRecord) -> None:
    engine = Engine(store)
    engine.load("mlp", default_spec(store, record, backend="null"))
    y = engine.infer("mlp", {"x": np.ones((4, 8), np.float32)})["y"]
    assert y.shape == (4, 3) and not y.any()


def test_onnxruntime_options_are_typed_and_checked(store: Store, record: ModelRecord) -> None:
    engine = Engine(store)
    spec = default_spec(store, record)
    good = LoadSpec(**{**spec.__dict__, "options": {"intra_op_threads": 1, "graph_optimization_level": "basic"}})
    engine.load("mlp", good)
    from polystack.errors import InvalidRequest

    bad = LoadSpec(**{**spec.__dict__, "options": {"intra_op_threads": 0}})
    with pytest.raises(InvalidRequest, match="invalid options for backend 'onnxruntime'"):
        engine.load("mlp", bad)
    typo = LoadSpec(**{**spec.__dict__, "options": {"threads": 2}})
    with pytest.raises(InvalidRequest, match="it takes: intra_op_threads"):
        engine.load("mlp", typo)


def test_a_device_the_runtime_does_not_offer_is_refused_with_what_it_offers(store: Store, record: ModelRecord) -> None:
    engine = Engine(store)
    spec = default_spec(store, record, device="cuda:0")
    if "CUDAExecutionProvider" in ort.get_available_providers():
        pytest.skip("this machine has CUDA; the refusal path is for machines without it")
    with pytest.raises(BackendUnavailable, match="it offers"):
        engine.load("mlp", spec)


def test_concurrency_sets_threads_streams_and_copies_only_where_the_runtime_needs_them(tmp_path: Path) -> None:
    ort_spec = LoadSpec(tmp_path / "m.onnx", "onnx", "onnxruntime")
    # onnxruntime runs concurrent calls on one session: only the per-call threads are set
    assert with_concurrency(ort_spec, 1, instances=2).options == {"intra_op_threads": 1}
    assert with_concurrency(ort_spec, None) is ort_spec
    # OpenVINO runs one call per stream: two instances get two streams and the threads of both
    ov_spec = LoadSpec(tmp_path / "m.tar", "openvino", "openvino", options={"inference_precision": "f32"})
    assert with_concurrency(ov_spec, 1, instances=2).options == {
        "inference_precision": "f32",
        "num_streams": 2,
        "inference_num_threads": 2,
    }
    assert with_concurrency(ov_spec, 2).options == {"inference_precision": "f32", "inference_num_threads": 2}
    # a TorchScript module may keep state: a copy per instance, each call's threads its own
    ts_spec = LoadSpec(tmp_path / "m.zip", "torchscript", "torchscript")
    assert with_concurrency(ts_spec, 1, instances=2).options == {"instances": 2, "intra_op_threads": 1}
    assert with_concurrency(ts_spec, None) is ts_spec


def test_a_model_unloaded_or_replaced_mid_call_closes_when_the_call_returns(store: Store, record: ModelRecord) -> None:
    import threading

    from polystack.errors import Unavailable

    engine = Engine(store)
    spec = LoadSpec(artifact=store.artifact_path(record), format=record.format, backend="null", options={"delay_ms": 200})
    old = engine.load(record.ref, spec)
    x = {"x": np.zeros((1, 8), np.float32)}
    answers: list[dict[str, np.ndarray]] = []
    running = threading.Thread(target=lambda: answers.append(old.model.infer(x)))
    running.start()
    time.sleep(0.05)
    new, replaced = engine.swap(record.ref, spec)
    assert replaced is old and engine.get(record.name) is new
    old.model.close()  # while the call runs
    assert not old.model.inner.closed
    running.join(5)
    assert answers and old.model.inner.closed  # the call finished, then the runtime closed
    with pytest.raises(Unavailable, match="send it again"):
        old.model.infer(x)  # routed to it just before: refused, never run on a closed runtime
    (gone,) = engine.unload(record.name)
    assert gone is new and new.model.inner.closed
    engine.close()
