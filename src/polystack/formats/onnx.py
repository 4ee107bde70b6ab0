"""ONNX models: validate, refuse unsafe external data, derive the Signature, store as one file.

External data is allowed only as relative paths that resolve, symlinks followed, inside the
model's own folder; the tensors are then inlined so the store keeps one self-contained file.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

from polystack.errors import InvalidModelFile, UnsafeModel
from polystack.formats import ImportedModel
from polystack.types import DType, Signature, TensorSpec

log = logging.getLogger(__name__)

NAME = "onnx"
_MAX_INLINE_BYTES = 2**31 - 1  # protobuf's limit for one serialised message


def sniff(path: Path) -> bool:
    if path.suffix.lower() == ".onnx":
        return True
    # ONNX has no magic number; a ModelProto starts with field 1 (ir_version, varint): byte 0x08.
    with open(path, "rb") as f:
        head = f.read(2)
    return head[:1] == b"\x08" and len(head) == 2 and 3 <= head[1] <= 20


def _value_info_to_spec(vi: Any) -> TensorSpec | None:
    t = vi.type
    if t.WhichOneof("value") != "tensor_type":
        return None  # sequences and maps (ONNX-ML ZipMap outputs) are not tensors
    dims: list[int] = []
    names: list[str | None] = []
    for d in t.tensor_type.shape.dim:
        if d.HasField("dim_value") and d.dim_value > 0:
            dims.append(int(d.dim_value))
            names.append(None)
        else:
            dims.append(-1)
            names.append(d.dim_param or None)
    return TensorSpec(
        name=vi.name,
        dtype=DType.from_onnx(t.tensor_type.elem_type),
        shape=tuple(dims),
        dim_names=tuple(names) if any(names) else (),
    )


def signature_of(model: Any) -> Signature:
    """The Signature of an onnx.ModelProto: graph inputs that are not initializers, and outputs."""
    initializers = {i.name for i in model.graph.initializer}
    inputs = []
    for vi in model.graph.input:
        if vi.name in initializers:
            continue
        spec = _value_info_to_spec(vi)
        if spec is None:
            raise InvalidModelFile(f"input {vi.name!r} is not a tensor; polystack serves tensor inputs only")
        inputs.append(spec)
    outputs = [s for s in (_value_info_to_spec(vi) for vi in model.graph.output) if s is not None]
    if not outputs:
        raise InvalidModelFile("the model has no tensor outputs; export it with tensor outputs (e.g. zipmap=False)")
    return Signature(inputs=tuple(inputs), outputs=tuple(outputs))


def overridable_inputs(path: Path) -> tuple[TensorSpec, ...]:
    """The graph inputs of the ONNX model at ``path`` that an initializer backs, which a request may feed or
    leave out (ONNX Runtime's overridable initializers: IR version 4 on; before it every initializer is
    listed as an input and none can be fed). ``signature_of`` leaves them out; a Triton config may mark them
    ``optional``."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    if model.ir_version < 4:
        return ()
    initializers = {i.name for i in model.graph.initializer}
    specs = [_value_info_to_spec(vi) for vi in model.graph.input if vi.name in initializers]
    return tuple(s for s in specs if s is not None)


def check_external_data(model: Any, folder: Path) -> tuple[int, int]:
    """Refuse external data outside ``folder``; return (tensors stored outside, bytes they take)."""
    from onnx.external_data_helper import ExternalDataInfo, _get_all_tensors, uses_external_data

    root = folder.resolve()
    count = total = 0
    for tensor in _get_all_tensors(model):
        if not uses_external_data(tensor):
            continue
        info = ExternalDataInfo(tensor)
        location = info.location
        if not location or os.path.isabs(location) or Path(location).drive:
            raise UnsafeModel(
                f"tensor {tensor.name!r} points at external data {location!r}, an absolute path; "
                "external data must sit beside the model, named relatively"
            )
        if ".." in Path(location).parts:
            raise UnsafeModel(
                f"tensor {tensor.name!r} points at external data {location!r}, outside the model's folder; "
                "move the data file beside the model"
            )
        target = (folder / location).resolve()
        if not target.is_relative_to(root):
            raise UnsafeModel(
                f"tensor {tensor.name!r} points at external data {location!r}, which resolves (through a "
                f"symlink) to {target}, outside the model's folder; copy the data beside the model"
            )
        if not target.is_file():
            raise InvalidModelFile(
                f"tensor {tensor.name!r} points at external data {location!r}, which does not exist; "
                "keep the data file beside the model"
            )
        length = int(info.length) if info.length else target.stat().st_size - int(info.offset or 0)
        total += max(length, 0)
        count += 1
    return count, total


def _runtime_loads(model: Any) -> bool:
    """Whether ONNX Runtime, where installed, makes a session of ``model`` (asked only of a model onnx.checker
    refuses: Triton's generators write graph inputs and outputs without a shape, which the checker refuses)."""
    try:
        import onnxruntime as ort
    except ImportError:
        return False
    try:
        ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    except Exception:  # ORT raises its own Fail, InvalidGraph, ... for what it cannot load
        return False
    return True


def load(path: Path, workdir: Path, **options: Any) -> ImportedModel:
    import onnx
    from google.protobuf.message import DecodeError

    if path.is_dir():
        raise InvalidModelFile(f"{path} is a folder; give the .onnx file inside it")
    try:
        model = onnx.load_model(str(path), load_external_data=False)
    except (DecodeError, RuntimeError, ValueError, OSError) as e:
        raise InvalidModelFile(
            f"{path.name} is not a readable ONNX model ({type(e).__name__}: {e}); it may be truncated "
            "or another format: re-export it, or pass --format"
        ) from e
    external_tensors, total = check_external_data(model, path.parent)
    has_external = external_tensors > 0
    if has_external:
        if total + model.ByteSize() > _MAX_INLINE_BYTES:
            raise InvalidModelFile(
                f"{path.name} holds {total} bytes of external data; models over 2 GiB are not supported yet"
            )
        onnx.load_external_data_for_model(model, str(path.parent))
    try:
        onnx.checker.check_model(model)
    except Exception as e:  # onnx raises ValidationError and, for truncated protos, others
        why = str(e).splitlines()[0] if str(e) else type(e).__name__
        if not _runtime_loads(model):  # Triton's ONNX Runtime backend runs no checker: what ORT loads, it serves
            raise InvalidModelFile(
                f"{path.name} is not a valid ONNX model: {why}; ONNX Runtime cannot load it either: re-export it "
                "(it may be truncated)"
            ) from e
        log.warning("onnx.checker refuses the model, ONNX Runtime loads it: taken", extra={"file": path.name, "error": why})
    signature = signature_of(model)
    if has_external:
        artifact = workdir / "model.onnx"
        onnx.save_model(model, str(artifact))
    else:
        artifact = path
    return ImportedModel(format=NAME, signature=signature, artifact=artifact)
