"""Tensors in files: read model inputs from .npy / .npz / .json and write outputs the same ways."""

from __future__ import annotations

import json
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from polystack.errors import InvalidRequest, InvalidTensor
from polystack.types import DType, Signature

SUFFIXES = (".npy", ".npz", ".json")


def _as_dtype(name: str, value: Any, dtype: DType) -> np.ndarray:
    try:
        if dtype is DType.BYTES:
            arr = np.array(value, dtype=object)
            return np.vectorize(lambda v: v.encode() if isinstance(v, str) else bytes(v), otypes=[object])(arr)
        return np.asarray(value, dtype=dtype.numpy)
    except (ValueError, TypeError) as e:
        raise InvalidTensor(f"input {name!r} cannot be read as {dtype.value}: {e}") from e


def read_inputs(path: Path, signature: Signature) -> dict[str, np.ndarray]:
    """Read inputs for ``signature``: .npy (single-input models), .npz or .json ``{name: nested list}``."""
    suffix = path.suffix.lower()
    if path.is_dir():
        raise InvalidRequest(f"input file {path} is a folder; name a file in it")
    if not path.is_file():
        raise InvalidRequest(f"input file {path} does not exist")
    if path.stat().st_size == 0:  # numpy's EOFError, which the command line took for an abort
        raise InvalidRequest(f"input file {path} is empty; write the inputs into it")
    try:
        if suffix == ".npy":
            if len(signature.inputs) != 1:
                raise InvalidRequest(
                    f"a .npy file holds one tensor but the model takes {len(signature.inputs)} inputs "
                    f"({', '.join(signature.input_names)}); use .npz or .json keyed by input name"
                )
            return {signature.inputs[0].name: np.load(path, allow_pickle=False)}
        if suffix == ".npz":
            with np.load(path, allow_pickle=False) as z:
                return {k: z[k] for k in z.files}
        if suffix == ".json":
            data = json.loads(path.read_text())
            if not isinstance(data, dict):
                raise InvalidRequest(f"{path.name} must hold a JSON object {{input_name: nested list}}")
            specs = {t.name: t for t in signature.inputs}
            return {k: _as_dtype(k, v, specs[k].dtype) if k in specs else np.asarray(v) for k, v in data.items()}
    except (ValueError, OSError, EOFError, zipfile.BadZipFile) as e:  # json's errors, numpy's pickle refusal
        raise InvalidRequest(f"cannot read inputs from {path.name}: {e}") from e
    raise InvalidRequest(f"input file {path.name} must end in {', '.join(SUFFIXES)}")


def to_jsonable(outputs: Mapping[str, np.ndarray]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in outputs.items():
        if v.dtype == object:
            out[k] = np.vectorize(lambda b: b.decode("utf-8", "replace") if isinstance(b, bytes) else b)(v).tolist()
        else:
            out[k] = v.astype(np.float32).tolist() if v.dtype.name == "bfloat16" else v.tolist()
    return out


def write_outputs(path: Path, outputs: Mapping[str, np.ndarray]) -> None:
    suffix = path.suffix.lower()
    if suffix == ".npy":
        if len(outputs) != 1:
            raise InvalidRequest(f"the model returns {len(outputs)} outputs; write them to .npz or .json")
        np.save(path, next(iter(outputs.values())), allow_pickle=False)
    elif suffix == ".npz":
        np.savez(path, **dict(outputs))  # type: ignore[arg-type]
    elif suffix == ".json":
        path.write_text(json.dumps(to_jsonable(outputs)))
    else:
        raise InvalidRequest(f"output file {path.name} must end in {', '.join(SUFFIXES)}")
