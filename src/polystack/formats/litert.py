"""LiteRT (TensorFlow Lite) flatbuffers: recognised by the ``TFL3`` file identifier.

Names come from the model's single signature (``serving_default``) when it has one, else from its
tensors; ``shape_signature`` gives the dynamic dimensions (-1).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from polystack.errors import InvalidModelFile
from polystack.formats import ImportedModel
from polystack.types import DType, Signature, TensorSpec

NAME = "litert"


def sniff(path: Path) -> bool:
    with open(path, "rb") as f:
        head = f.read(8)
    return head[4:8] == b"TFL3"


def interpreter(data: bytes, num_threads: int | None = None) -> Any:
    from ai_edge_litert.interpreter import Interpreter

    try:
        return Interpreter(model_content=data, num_threads=num_threads)
    except Exception as e:
        raise InvalidModelFile(f"not a loadable LiteRT model ({type(e).__name__}: {str(e)[:200]})") from e


def tensor_names(interp: Any) -> tuple[dict[int, str], dict[int, str]]:
    """(tensor index -> input name, tensor index -> output name) from the one signature, if any."""
    full = interp._get_full_signature_list() if hasattr(interp, "_get_full_signature_list") else {}
    if len(full) == 1:
        sig = next(iter(full.values()))
        return ({int(i): n for n, i in sig["inputs"].items()}, {int(i): n for n, i in sig["outputs"].items()})
    return (
        {int(d["index"]): str(d["name"]) for d in interp.get_input_details()},
        {int(d["index"]): str(d["name"]) for d in interp.get_output_details()},
    )


def _spec(name: str, detail: dict[str, Any]) -> TensorSpec:
    shape = detail.get("shape_signature")
    if shape is None or len(shape) == 0:
        shape = detail["shape"]
    return TensorSpec(name=name, dtype=DType.from_numpy(np.dtype(detail["dtype"])), shape=tuple(int(d) for d in shape))


def signature_of(interp: Any) -> Signature:
    in_names, out_names = tensor_names(interp)
    return Signature(
        inputs=tuple(_spec(in_names[int(d["index"])], d) for d in interp.get_input_details()),
        outputs=tuple(_spec(out_names[int(d["index"])], d) for d in interp.get_output_details()),
    )


def load(path: Path, workdir: Path, **options: Any) -> ImportedModel:
    return ImportedModel(format=NAME, signature=signature_of(interpreter(path.read_bytes())), artifact=path)
