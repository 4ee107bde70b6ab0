"""ONNX import: what is accepted, what is refused, and what the error says."""

import os
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from polystack.errors import InvalidModelFile, UnsafeModel, UnsupportedFormat
from polystack.formats import detect, import_model
from polystack.types import DType


def external_model(folder: Path, location: str) -> Path:
    """A MatMul model whose weight lives in external data at ``location`` (written relative to folder)."""
    w = np.arange(16, dtype=np.float32).reshape(4, 4)
    tensor = numpy_helper.from_array(w, "w")
    tensor.data_location = TensorProto.EXTERNAL
    tensor.ClearField("raw_data")
    for key, value in (("location", location), ("offset", "0"), ("length", str(w.nbytes))):
        entry = tensor.external_data.add()
        entry.key, entry.value = key, value
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"])],
        "ext",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 4])],
        [tensor],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "model.onnx"
    path.write_bytes(model.SerializeToString())
    return path


def test_signature_is_derived_with_dynamic_dims_and_symbolic_names(mlp_path: Path, tmp_path: Path) -> None:
    imported = import_model(mlp_path, tmp_path)
    (x,) = imported.signature.inputs
    assert (x.name, x.dtype, x.shape, x.dim_names) == ("x", DType.FP32, (-1, 8), ("batch", None))
    assert imported.signature.outputs[0].shape == (-1, 3)
    assert imported.artifact == mlp_path  # no external data: stored as given


def test_a_file_that_is_not_onnx_is_refused(tmp_path: Path) -> None:
    p = tmp_path / "notes.onnx"
    p.write_text("these are my notes, not a model\n" * 10)
    with pytest.raises(InvalidModelFile, match=r"not a (readable|valid) ONNX model"):
        import_model(p, tmp_path)


def test_an_unknown_file_without_suffix_is_not_recognised(tmp_path: Path) -> None:
    p = tmp_path / "blob"
    p.write_bytes(b"\x00\x01garbage" * 10)
    with pytest.raises(UnsupportedFormat, match="pass --format"):
        detect(p)


def test_a_truncated_onnx_file_is_refused(mlp_path: Path, tmp_path: Path) -> None:
    cut = tmp_path / "cut.onnx"
    cut.write_bytes(mlp_path.read_bytes()[: mlp_path.stat().st_size // 2])
    with pytest.raises(InvalidModelFile, match="truncated"):
        import_model(cut, tmp_path)


def test_external_data_beside_the_model_is_inlined(tmp_path: Path) -> None:
    folder = tmp_path / "m"
    path = external_model(folder, "weights.bin")
    (folder / "weights.bin").write_bytes(np.arange(16, dtype=np.float32).tobytes())
    work = tmp_path / "work"
    work.mkdir()
    imported = import_model(path, work)
    assert imported.artifact.parent == work
    inlined = onnx.load_model(str(imported.artifact))
    assert numpy_helper.to_array(inlined.graph.initializer[0])[3, 3] == 15.0


def test_external_data_with_an_absolute_path_is_refused(tmp_path: Path) -> None:
    secret = tmp_path / "secret.bin"
    secret.write_bytes(b"\0" * 64)
    path = external_model(tmp_path / "m", str(secret))
    with pytest.raises(UnsafeModel, match="absolute path"):
        import_model(path, tmp_path)


def test_external_data_escaping_with_dotdot_is_refused(tmp_path: Path) -> None:
    (tmp_path / "outside.bin").write_bytes(b"\0" * 64)
    path = external_model(tmp_path / "m", "../outside.bin")
    with pytest.raises(UnsafeModel, match="outside the model's folder"):
        import_model(path, tmp_path)


def test_external_data_through_a_symlink_outside_is_refused(tmp_path: Path) -> None:
    (tmp_path / "outside.bin").write_bytes(b"\0" * 64)
    folder = tmp_path / "m"
    path = external_model(folder, "weights.bin")
    os.symlink(tmp_path / "outside.bin", folder / "weights.bin")
    with pytest.raises(UnsafeModel, match="symlink"):
        import_model(path, tmp_path)


def test_missing_external_data_says_so(tmp_path: Path) -> None:
    path = external_model(tmp_path / "m", "weights.bin")
    with pytest.raises(InvalidModelFile, match="does not exist"):
        import_model(path, tmp_path)


def _identity(tmp_path: Path, op: str = "Identity") -> Path:
    """A graph whose input and output carry no shape (unknown rank), as Triton's gen_qa_ort_scalar_models.py
    writes them: onnx.checker refuses it, ONNX Runtime loads and runs it."""
    io = [helper.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in ("INPUT", "OUTPUT")]
    graph = helper.make_graph([helper.make_node(op, ["INPUT"], ["OUTPUT"])], "scalar", io[:1], io[1:])
    path = tmp_path / f"{op}.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    return path


def test_a_model_the_onnx_checker_refuses_is_taken_where_onnx_runtime_loads_it_as_tritons_backend_does(
    tmp_path: Path,
) -> None:
    """helper-165: Triton's L0_scalar_io models have shapeless graph inputs and outputs; Triton's ONNX Runtime
    backend serves them (it runs no checker), polystack refused them ("Field 'shape' of 'type' is required")."""
    path = _identity(tmp_path)
    with pytest.raises(onnx.checker.ValidationError, match="shape"):
        onnx.checker.check_model(onnx.load(path))
    imported = import_model(path, tmp_path)
    assert [(t.name, t.shape) for t in (*imported.signature.inputs, *imported.signature.outputs)] == [
        ("INPUT", ()),
        ("OUTPUT", ()),
    ]  # no rank known: taken as ONNX Runtime and Triton's backend report it, a scalar
    with pytest.raises(InvalidModelFile, match=r"NoSuchOp\.onnx is not a valid ONNX model: .*; ONNX Runtime cannot load it either"):
        import_model(_identity(tmp_path, "NoSuchOp"), tmp_path)
