"""One contract, run against every backend installed here: load, infer, shapes, dtypes, errors.

A backend whose runtime is not installed is skipped with the reason (and must say so through
``available()``, never an import error).
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from polystack.backends import registry
from polystack.backends.base import Backend, CheckedModel
from polystack.errors import BackendUnavailable, InvalidRequest, PolystackError
from polystack.examples import mlp_onnx
from polystack.formats import import_model
from polystack.types import Signature


def _openvino_ir(folder: Path) -> Path:
    import openvino as ov

    from polystack.backends.openvino import pack_ir

    src = mlp_onnx(folder / "src.onnx", sizes=(8, 16, 3))
    ov.save_model(ov.convert_model(str(src)), str(folder / "model.xml"), compress_to_fp16=False)
    return pack_ir(folder / "model.xml", folder / "model.bin", folder / "model.openvino.tar")


_PYTHON_MLP = """
import numpy as np
import triton_python_backend_utils as pb_utils

rng = np.random.default_rng(0)
W1, W2 = rng.standard_normal((8, 16)).astype(np.float32), rng.standard_normal((16, 3)).astype(np.float32)


class TritonPythonModel:
    def execute(self, requests):
        out = []
        for request in requests:
            x = pb_utils.get_input_tensor_by_name(request, "x").as_numpy()
            out.append(pb_utils.InferenceResponse([pb_utils.Tensor("y", np.maximum(x @ W1, 0) @ W2)]))
        return out
"""


def _python_mlp(folder: Path) -> Path:
    """The contract's MLP as a Triton Python-backend model (x FP32[-1, 8] -> y FP32[-1, 3]), packed as the store
    keeps one."""
    from polystack.formats import python_model

    (folder / "m" / "1").mkdir(parents=True)
    (folder / "m" / "1" / "model.py").write_text(_PYTHON_MLP)
    config = {
        "backend": "python", "max_batch_size": 8,
        "input": [{"name": "x", "data_type": "TYPE_FP32", "dims": [8]}],
        "output": [{"name": "y", "data_type": "TYPE_FP32", "dims": [3]}],
    }  # fmt: skip
    return python_model.pack(folder / "m", 1, "m", config, "model.py", folder / "m.zip")


def _artifact(backend: str) -> tuple[Callable[[Path], Path], str | None] | None:
    from polystack import zoo

    known: dict[str, tuple[Callable[[Path], Path], str | None]] = {
        "onnxruntime": (lambda d: mlp_onnx(d / "m.onnx", sizes=(8, 16, 3)), None),
        "openvino": (_openvino_ir, "onnx"),  # the IR; its signature comes from the source ONNX
        "null": (lambda d: mlp_onnx(d / "m.onnx", sizes=(8, 16, 3)), None),
        "torch": (lambda d: zoo.mlp_pt2(d / "m.pt2", sizes=(8, 16, 3)), None),
        "jax": (lambda d: zoo.jax_mlp(d / "m.jax"), None),
        "xgboost": (lambda d: zoo.xgboost_model(d / "m.json"), None),
        "lightgbm": (lambda d: zoo.lightgbm_model(d / "m.txt", n_classes=3), None),
        "sklearn": (lambda d: zoo.sklearn_pipeline_skops(d / "m.skops"), None),
        "litert": (lambda d: zoo.litert_mlp(d / "m.tflite"), None),
        "python": (_python_mlp, None),
        "fil": (lambda d: zoo.fil_xgboost(d / "m.fil.zip"), None),
        "torchscript": (lambda d: zoo.torchscript_mlp(d / "m.torchscript.zip"), None),
        "torch_aoti": (lambda d: zoo.aoti_mlp(d / "m.torch_aoti.zip"), None),
    }
    return known.get(backend)


BACKENDS = registry.names()


@pytest.fixture(scope="module", params=BACKENDS)
def case(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> tuple[Backend, Path, Signature]:
    backend = registry.get(request.param)
    if not backend.available():
        pytest.skip(f"{request.param}: runtime not installed here")
    recipe = _artifact(request.param)
    if recipe is None:
        pytest.skip(f"{request.param}: no contract model for it yet; add one to _artifact")
    folder = tmp_path_factory.mktemp(request.param)
    build, _ = recipe
    artifact = build(folder)
    if request.param == "openvino":
        signature = import_model(folder / "src.onnx", folder).signature
    else:
        signature = import_model(artifact, folder).signature
    return backend, artifact, signature


def _inputs(signature: Signature, batch: int, seed: int | None = None) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(batch if seed is None else seed)
    return {
        s.name: rng.standard_normal([batch if d == -1 else d for d in s.shape]).astype(s.dtype.numpy)
        for s in signature.inputs
    }


def test_name_is_the_entry_point_key_and_module(case: tuple[Backend, Path, Signature]) -> None:
    backend, _, _ = case
    assert backend.name in registry.names()
    assert type(backend).__module__ == f"polystack.backends.{backend.name}"
    assert backend.formats, "a backend declares the formats it loads"


def test_devices_include_cpu(case: tuple[Backend, Path, Signature]) -> None:
    backend, _, _ = case
    devices = backend.devices()
    assert "cpu" in devices and all(isinstance(d, str) and d == d.lower() for d in devices)


def test_options_are_typed_and_unknown_ones_refused(case: tuple[Backend, Path, Signature]) -> None:
    backend, _, _ = case
    assert isinstance(backend.parse_options({}), backend.Options)
    with pytest.raises(InvalidRequest, match="invalid options"):
        backend.parse_options({"no_such_option": 1})


@pytest.mark.parametrize("batch", [1, 5])
def test_infer_returns_every_output_with_declared_dtype_and_batch(
    case: tuple[Backend, Path, Signature], batch: int
) -> None:
    backend, artifact, signature = case
    model = CheckedModel(backend.load(artifact, signature, backend.parse_options({}), "cpu"))
    try:
        x = _inputs(signature, batch)
        out = model.infer(x)
        assert list(out) == signature.output_names
        for spec in signature.outputs:
            arr = out[spec.name]
            assert isinstance(arr, np.ndarray)
            assert arr.dtype == spec.dtype.numpy, (spec.name, arr.dtype)
            assert spec.accepts(arr.shape) and (not spec.batched or arr.shape[0] == batch)
        again = model.infer(x)
        for name in out:
            np.testing.assert_array_equal(out[name], again[name])  # deterministic
    finally:
        model.close()


def test_outputs_stay_the_callers_after_the_next_call(case: tuple[Backend, Path, Signature]) -> None:
    """Servers write output arrays to the socket as they are, while the next batch runs: a backend must
    not reuse them (OpenVINO's infer requests do when asked to share their outputs: this test then fails)."""
    backend, artifact, signature = case
    model = CheckedModel(backend.load(artifact, signature, backend.parse_options({}), "cpu"))
    try:
        first = model.infer(_inputs(signature, 3, seed=100))
        kept = {name: arr.copy() for name, arr in first.items()}
        for seed, b in enumerate((3, 2, 5, 3), start=101):  # other data, the same shape among them
            model.infer(_inputs(signature, b, seed=seed))
        for name, arr in first.items():
            np.testing.assert_array_equal(arr, kept[name])
    finally:
        model.close()


def test_concurrent_callers_each_get_their_own_answer(case: tuple[Backend, Path, Signature]) -> None:
    """Serving instances and batch workers share one loaded model across threads."""
    backend, artifact, signature = case
    options = {backend.streams_option: 2} if backend.streams_option else {}
    model = CheckedModel(backend.load(artifact, signature, backend.parse_options(options), "cpu"))
    try:
        inputs = [_inputs(signature, b) for b in range(1, 9)]
        expected = [model.infer(x) for x in inputs]
        with ThreadPoolExecutor(4) as pool:
            got = list(pool.map(model.infer, inputs * 5))
        for i, out in enumerate(got):
            for name, arr in expected[i % len(inputs)].items():
                np.testing.assert_allclose(out[name], arr, rtol=1e-5, atol=1e-6)
    finally:
        model.close()


def test_a_device_it_does_not_offer_is_refused_as_unavailable(case: tuple[Backend, Path, Signature]) -> None:
    backend, artifact, signature = case
    if backend.name == "null":
        pytest.skip("null runs anywhere")
    with pytest.raises(BackendUnavailable):
        backend.load(artifact, signature, backend.parse_options({}), "quantum:7")


def test_a_garbage_artifact_raises_a_polystack_error(case: tuple[Backend, Path, Signature], tmp_path: Path) -> None:
    backend, _, signature = case
    if backend.name == "null":
        pytest.skip("null reads no artifact")
    junk = tmp_path / "junk"
    junk.write_bytes(b"\x00\x01 this is not a model " * 64)
    with pytest.raises(PolystackError):
        model = backend.load(junk, signature, backend.parse_options({}), "cpu")
        model.infer(_inputs(signature, 1))


def test_a_backend_whose_runtime_is_missing_reports_unavailable_not_an_error() -> None:
    class Missing(Backend):
        name = "missing"
        formats = frozenset({"onnx"})
        requires = ("polystack_no_such_runtime_xyz",)

        def load(self, *args: object, **kwargs: object) -> object:  # type: ignore[override]
            raise AssertionError("never called")

    assert Missing().available() is False
