"""Converters: each produces an artifact its target runtime loads, with the model's names and dynamic batch."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper

from polystack import samples, zoo
from polystack.convert import ConvertContext, step
from polystack.convert.torch_onnx import rename_outputs
from polystack.examples import mlp_onnx
from polystack.formats import import_model


def _ctx(path: Path, work: Path, **kw: object) -> tuple[ConvertContext, dict[str, np.ndarray]]:
    imported = import_model(path, work, **kw)  # type: ignore[arg-type]
    data = samples.synthesize(imported.signature, count=16)
    out = work / "out"
    out.mkdir(exist_ok=True)
    return (
        ConvertContext(imported.format, imported.signature, data, out, imported.settings),
        data,
    )


def _ort(path: Path, feed: dict[str, np.ndarray]) -> tuple[list[str], list[np.ndarray]]:
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return [o.name for o in sess.get_outputs()], sess.run(None, feed)


def test_torch_export_to_onnx_keeps_names_and_a_dynamic_batch(tmp_path: Path) -> None:
    src = zoo.cnn_pt2(tmp_path / "cnn.pt2", size=16)
    ctx, data = _ctx(src, tmp_path)
    out = step("onnx")(src, ctx)
    model = onnx.load(str(out))
    assert [i.name for i in model.graph.input] == ["input"]
    for batch in (1, 7):
        names, (y,) = _ort(out, {"input": data["input"][:batch]})
        assert names == ["output_0"] and y.shape == (batch, 10)


TABULAR: dict[str, Callable[[Path], Path]] = {
    "pipeline.skops": zoo.sklearn_pipeline_skops,
    "xgb.json": zoo.xgboost_model,
    "lgb-classifier.txt": lambda p: zoo.lightgbm_model(p, n_classes=3),
    "lgb-regressor.txt": zoo.lightgbm_model,
}


@pytest.mark.parametrize("name", list(TABULAR))
def test_tabular_models_become_onnx_ml_without_zipmap(name: str, tmp_path: Path) -> None:
    src = TABULAR[name](tmp_path / name)
    ctx, data = _ctx(src, tmp_path)
    out = step("onnx")(src, ctx)
    names, results = _ort(out, {"input": data["input"]})
    assert names == ctx.signature.output_names
    assert all(isinstance(r, np.ndarray) for r in results)  # tensors, not ZipMap dictionaries
    assert any(o.domain == "ai.onnx.ml" for o in onnx.load(str(out)).opset_import)


def test_onnx_to_openvino_ir_is_one_archive_openvino_reads(tmp_path: Path) -> None:
    from polystack.backends import registry

    src = mlp_onnx(tmp_path / "m.onnx", sizes=(8, 16, 3))
    ctx, data = _ctx(src, tmp_path)
    ir = step("openvino-ir")(src, ctx)
    import tarfile

    with tarfile.open(ir) as tar:
        assert sorted(tar.getnames()) == ["model.bin", "model.xml"]
    backend = registry.get("openvino")
    model = backend.load(ir, ctx.signature, backend.parse_options({"inference_precision": "f32"}), "cpu")
    _, (want,) = _ort(src, {"x": data["x"]})
    np.testing.assert_allclose(model.infer({"x": data["x"]})["y"], want, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(
    ("name", "marker"), [("int8-dynamic", "DynamicQuantizeLinear"), ("int8-static", "QuantizeLinear")]
)
def test_quantizers_write_int8_onnx(tmp_path: Path, name: str, marker: str) -> None:
    src = mlp_onnx(tmp_path / "m.onnx", sizes=(8, 32, 3))
    ctx, data = _ctx(src, tmp_path)
    out = step(name)(src, ctx)
    ops = {n.op_type for n in onnx.load(str(out)).graph.node}
    assert marker in ops, ops
    _, (y,) = _ort(out, {"x": data["x"]})
    assert y.shape == (16, 3)


def test_renaming_outputs_moves_a_clashing_value_aside() -> None:
    graph = helper.make_graph(
        [helper.make_node("Relu", ["x"], ["y"]), helper.make_node("Neg", ["y"], ["z"])],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2])],
        [helper.make_tensor_value_info("z", TensorProto.FLOAT, [2])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    rename_outputs(model, ["y"])
    onnx.checker.check_model(model)
    assert [o.name for o in model.graph.output] == ["y"]
    assert [list(n.output) for n in model.graph.node] == [["y__renamed"], ["y"]]


def test_int8_static_is_calibrated_on_every_other_row_of_the_samples(tmp_path: Path) -> None:
    """So that the gate, which runs every sample, judges it on rows it was not calibrated on (calibrated and
    judged on the same two rows, an MLP's int8 passed and agreed on 94% of fresh rows' top-1, helper-258), and
    samples sorted by class or time are still all in its ranges (the first half would leave the rest out)."""
    from polystack.convert.quantize import _SamplesReader

    ctx, data = _ctx(mlp_onnx(tmp_path / "m.onnx", sizes=(8, 16, 3)), tmp_path)
    reader = _SamplesReader(ctx)
    seen = []
    while (batch := reader.get_next()) is not None:
        seen.append(batch["x"])
    np.testing.assert_array_equal(np.concatenate(seen), data["x"][::2])  # 8 of the 16 rows
