"""OpenVINO IR: ``model.xml`` (the graph) with its weights file beside it (``model.bin``, the same name), as
``openvino.save_model`` writes them and Triton's OpenVINO backend reads them from a version folder.

The pair is kept as one uncompressed tar (``backends/openvino.pack_ir``), the form the openvino backend reads
from memory; that tar registers again as it is. The signature is the model's own: each port's first name
(``get_any_name``, the name Triton's OpenVINO backend matches a config against), its element type, and its
shape with a dynamic dimension as -1. IR that needs an extension library (custom layers) does not read, and is
refused saying so: polystack loads no shared libraries a model names.
"""

from __future__ import annotations

import tarfile
from pathlib import Path
from typing import Any

from polystack.errors import InvalidModelFile
from polystack.formats import ImportedModel
from polystack.types import DType, Signature, TensorSpec

NAME = "openvino"
_HEAD_BYTES = 512

# OpenVINO's element types (``Type.get_type_name()``) -> the protocol's
_TYPES = {
    "boolean": DType.BOOL, "u8": DType.UINT8, "u16": DType.UINT16, "u32": DType.UINT32, "u64": DType.UINT64,
    "i8": DType.INT8, "i16": DType.INT16, "i32": DType.INT32, "i64": DType.INT64, "f16": DType.FP16,
    "bf16": DType.BF16, "f32": DType.FP32, "f64": DType.FP64, "string": DType.BYTES,
}  # fmt: skip


def sniff(path: Path) -> bool:
    if path.is_dir():
        return False
    if tarfile.is_tarfile(path):  # the stored form, registered again
        from polystack.backends.openvino import IR_BIN, IR_XML

        try:
            with tarfile.open(path, "r:") as tar:
                return {IR_XML, IR_BIN} <= set(tar.getnames())
        except (tarfile.TarError, OSError):
            return False
    with open(path, "rb") as f:
        head = f.read(_HEAD_BYTES)
    return b"<net " in head and head.lstrip().startswith(b"<")


def weights_of(xml: Path) -> Path:
    """The weights file OpenVINO reads beside ``xml``: the same name, ``.bin``."""
    return xml.with_suffix(".bin")


def _spec(port: Any, kind: str) -> TensorSpec:
    names = sorted(port.get_names())
    if not names:
        raise InvalidModelFile(f"an {kind} of the OpenVINO model has no name; name its tensors when converting it")
    name = port.get_any_name()
    element = port.get_element_type().get_type_name()
    dtype = _TYPES.get(element)
    if dtype is None:
        raise InvalidModelFile(f"{kind} {name!r} is of OpenVINO type {element}, which the protocol has no type for")
    shape = port.get_partial_shape()
    if shape.rank.is_dynamic:
        raise InvalidModelFile(
            f"{kind} {name!r} has no fixed number of dimensions; polystack serves tensors of known rank: reshape the "
            "model (openvino.Model.reshape) before saving it"
        )
    return TensorSpec(name, dtype, tuple(d.get_length() if d.is_static else -1 for d in shape))


def signature_of(model: Any) -> Signature:
    inputs = tuple(_spec(p, "input") for p in model.inputs)
    outputs = tuple(_spec(p, "output") for p in model.outputs)
    if not outputs:
        raise InvalidModelFile("the OpenVINO model has no outputs")
    return Signature(inputs=inputs, outputs=outputs)


def read(path: Path) -> Any:
    """The ``openvino.Model`` of a stored IR tar or of an ``.xml`` with its weights beside it."""
    import openvino as ov

    from polystack.backends.openvino import read_ir, reason_of

    core = ov.Core()
    try:
        if tarfile.is_tarfile(path):
            return read_ir(core, path)
        return core.read_model(str(path), str(weights_of(path)))
    except InvalidModelFile:
        raise
    except Exception as e:  # openvino's RuntimeError and friends
        why = reason_of(e)
        custom = "opset" in why or "Cannot create" in why  # an operation OpenVINO does not have: a custom layer
        raise InvalidModelFile(
            f"OpenVINO cannot read {path.name} ({why}); save it again with openvino.save_model"
            + (", without custom layers (polystack loads no extension libraries)" if custom else "")
        ) from None


def load(path: Path, workdir: Path, **options: Any) -> ImportedModel:
    from polystack.backends.openvino import pack_ir

    if path.is_dir():
        raise InvalidModelFile(f"{path} is a folder; give the model's .xml file (its .bin beside it)")
    if not tarfile.is_tarfile(path) and not weights_of(path).is_file():
        raise InvalidModelFile(
            f"{path.name} is OpenVINO IR, whose weights OpenVINO reads from {weights_of(path).name} beside it, which "
            "is not there; keep the .bin file the model was saved with beside the .xml"
        )
    model = read(path)
    signature = signature_of(model)
    workdir.mkdir(parents=True, exist_ok=True)
    artifact = path if tarfile.is_tarfile(path) else pack_ir(path, weights_of(path), workdir / "model.openvino.tar")
    return ImportedModel(format=NAME, signature=signature, artifact=artifact)
