"""PyTorch programs saved with ``torch.export.save`` (``.pt2``): the Signature from the graph.

The archive is checked by ``pickle_guard.check_pt2`` before torch reads it (``import_model`` and
``detect`` call the guard first), so a ``.pt2`` carrying pickled objects is refused unread.
Dynamic dimensions (``torch.export.Dim``) become -1.
"""

from __future__ import annotations

import zipfile
from pathlib import Path
from typing import Any

from polystack.errors import InvalidModelFile
from polystack.formats import ImportedModel
from polystack.formats.pickle_guard import is_pt2_archive
from polystack.types import DType, Signature, TensorSpec

NAME = "torch.export"

_DTYPES = {
    "float32": DType.FP32,
    "float16": DType.FP16,
    "bfloat16": DType.BF16,
    "float64": DType.FP64,
    "int64": DType.INT64,
    "int32": DType.INT32,
    "int16": DType.INT16,
    "int8": DType.INT8,
    "uint8": DType.UINT8,
    "bool": DType.BOOL,
}


def sniff(path: Path) -> bool:
    if not zipfile.is_zipfile(path):
        return False
    try:
        with zipfile.ZipFile(path) as zf:
            return is_pt2_archive(zf.namelist())
    except (zipfile.BadZipFile, OSError):
        return False


def dtype_of(torch_dtype: Any) -> DType:
    name = str(torch_dtype).removeprefix("torch.")
    try:
        return _DTYPES[name]
    except KeyError:
        raise InvalidModelFile(
            f"tensor dtype {name} is not supported; use float32/float16/bfloat16/int64/..."
        ) from None


def _spec(name: str, value: Any) -> TensorSpec:
    import torch

    if not isinstance(value, torch.Tensor):
        raise InvalidModelFile(
            f"{name!r} is a {type(value).__name__}, not a tensor; export a module whose inputs and outputs are tensors"
        )
    shape = tuple(int(d) if isinstance(d, int) else -1 for d in value.shape)
    return TensorSpec(name=name, dtype=dtype_of(value.dtype), shape=shape)


def signature_of(ep: Any) -> Signature:
    """Inputs: the program's user inputs in call order; outputs: output_0, output_1, ... (flattened)."""
    user_inputs = list(ep.graph_signature.user_inputs)
    placeholders = {n.name: n for n in ep.graph.nodes if n.op == "placeholder"}
    inputs = [_spec(name, placeholders[name].meta.get("val")) for name in user_inputs]
    output_node = next(n for n in ep.graph.nodes if n.op == "output")
    results = output_node.args[0]
    n_user = len(ep.graph_signature.user_outputs)
    user_results = list(results)[-n_user:] if n_user else []
    outputs = [_spec(f"output_{i}", getattr(node, "meta", {}).get("val")) for i, node in enumerate(user_results)]
    if not outputs:
        raise InvalidModelFile("the exported program returns no tensors")
    return Signature(inputs=tuple(inputs), outputs=tuple(outputs))


def load_program(path: Path) -> Any:
    import torch

    try:
        with open(path, "rb") as f:  # a file object: torch wants a .pt2 suffix on paths, blobs have none
            return torch.export.load(f)
    except Exception as e:
        raise InvalidModelFile(
            f"{path.name} is not a readable torch.export archive ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}); "
            "save it with torch.export.save(torch.export.export(model, args), 'model.pt2')"
        ) from e


def load(path: Path, workdir: Path, **options: Any) -> ImportedModel:
    ep = load_program(path)
    return ImportedModel(format=NAME, signature=signature_of(ep), artifact=path)
