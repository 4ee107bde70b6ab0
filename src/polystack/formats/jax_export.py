"""JAX functions serialized with ``jax.export`` (``exported.serialize()`` written to a file).

The file is a flatbuffer holding StableHLO (MLIR bytecode), no Python code. Input names come from
dict keys in the exported function's arguments where it has them, else ``input_0``, ``input_1``...;
outputs likewise. Symbolic dimensions become -1.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from polystack.errors import InvalidModelFile
from polystack.formats import ImportedModel
from polystack.types import DType, Signature, TensorSpec

NAME = "jax.export"
_MLIR_BYTECODE = b"ML\xefR"
SUFFIXES = (".jax", ".jaxexport", ".jax_exported")


def sniff(path: Path) -> bool:
    with open(path, "rb") as f:
        head = f.read(1 << 16)
    if head[4:8] == b"TFL3":
        return False
    return path.suffix.lower() in SUFFIXES or (len(head) > 8 and _MLIR_BYTECODE in head)


def deserialize(data: bytes) -> Any:
    from jax import export

    try:
        return export.deserialize(bytearray(data))
    except Exception as e:
        raise InvalidModelFile(
            f"not a jax.export serialization ({type(e).__name__}: {str(e)[:200]}); write "
            "jax.export.export(jax.jit(f))(*shapes).serialize() to a file"
        ) from e


def leaf_names(tree: Any, prefix: str) -> list[str]:
    """Names for the leaves of a pytree: dict keys where present, else prefix_i."""
    import jax

    skeleton = jax.tree_util.tree_unflatten(tree, list(range(tree.num_leaves)))
    names: list[str] = []
    for path, index in jax.tree_util.tree_flatten_with_path(skeleton)[0]:
        keys = [str(k.key) for k in path if isinstance(k, jax.tree_util.DictKey)]
        names.append(".".join(keys) if keys else f"{prefix}_{index}")
    if len(set(names)) != len(names):
        names = [f"{prefix}_{i}" for i in range(len(names))]
    return names


def _spec(name: str, aval: Any) -> TensorSpec:
    shape = tuple(int(d) if isinstance(d, (int, np.integer)) else -1 for d in aval.shape)
    return TensorSpec(name=name, dtype=DType.from_numpy(np.dtype(aval.dtype)), shape=shape)


def signature_of(exported: Any) -> Signature:
    ins = leaf_names(exported.in_tree, "input")
    outs = leaf_names(exported.out_tree, "output")
    return Signature(
        inputs=tuple(_spec(n, a) for n, a in zip(ins, exported.in_avals, strict=True)),
        outputs=tuple(_spec(n, a) for n, a in zip(outs, exported.out_avals, strict=True)),
    )


def load(path: Path, workdir: Path, **options: Any) -> ImportedModel:
    exported = deserialize(path.read_bytes())
    return ImportedModel(
        format=NAME,
        signature=signature_of(exported),
        artifact=path,
        settings={"jax_platforms": list(exported.platforms)},
    )
