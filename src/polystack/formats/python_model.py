"""Triton Python-backend models (``backend: "python"``, ``<version>/model.py``), as the store keeps them: the
version folder and the model's config in one zip (``pack``), whose signature is the config's inputs and outputs
(a Python model declares them; nothing else says what its code takes). ``backends/python.py`` runs them.

The zip is written the same way each time (entries in name order, one fixed date), so that a folder packed again
unchanged is the same bytes, which the store registers once. A version folder holding a pickle is refused, as
everywhere (``pickle_guard``).
"""

from __future__ import annotations

import json
import zipfile
from pathlib import Path
from typing import Any

from polystack.errors import InvalidModelFile
from polystack.formats import ImportedModel
from polystack.types import DType, Signature, TensorSpec

NAME = "python"
MANIFEST = "polystack-python-model.json"  # the model's name, version, file and config
MAX_FILES = 10_000  # a version folder with more is a mistake (a data set copied in), refused
_DATE = (1980, 1, 1, 0, 0, 0)  # every entry's, so that the same files are the same bytes
_TYPES = {f"TYPE_{d.value}": d for d in DType if d is not DType.BYTES} | {"TYPE_STRING": DType.BYTES}


def pack(folder: Path, version: int, name: str, config: dict[str, Any], file: str, out: Path) -> Path:
    """Zip ``folder``'s version ``version`` (the model's files, ``file`` among them) with ``config`` into
    ``out``; refused where the file is missing or the folder holds more than ``MAX_FILES`` files."""
    root = folder / str(version)
    if not (root / file).is_file():
        raise InvalidModelFile(f"{root / file} is missing: a Python model's version folder holds its {file}")
    files = sorted(p for p in root.rglob("*") if p.is_file() and "__pycache__" not in p.parts)
    if len(files) > MAX_FILES:
        raise InvalidModelFile(f"{root} holds more than {MAX_FILES} files; keep the model's own files there")
    manifest = {"model": name, "version": version, "file": file, "config": config}
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr(zipfile.ZipInfo(MANIFEST, _DATE), json.dumps(manifest, sort_keys=True))
        for path in files:
            info = zipfile.ZipInfo(f"{version}/{path.relative_to(root).as_posix()}", _DATE)
            info.external_attr = 0o644 << 16
            zf.writestr(info, path.read_bytes(), zipfile.ZIP_DEFLATED)
    return out


def sniff(path: Path) -> bool:
    if not path.is_file() or not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as zf:
        return MANIFEST in zf.namelist()


def load(path: Path, workdir: Path, **options: Any) -> ImportedModel:
    with zipfile.ZipFile(path) as zf:
        manifest = json.loads(zf.read(MANIFEST))
    return ImportedModel(NAME, signature(manifest["config"]), path)


def signature(config: dict[str, Any]) -> Signature:
    """The inputs and outputs a Python model's config declares (with the batch dimension where it batches)."""
    batched = int(config.get("max_batch_size") or 0) > 0
    found: dict[str, list[TensorSpec]] = {"input": [], "output": [], "optional": []}
    for key in ("input", "output"):
        items = config.get(key) or []
        if not items:
            raise InvalidModelFile(
                f"a Python model's config lists its {key}s (name, data_type, dims): nothing else says what its code "
                f"{'takes' if key == 'input' else 'returns'}"
            )
        for item in items:
            name, kind, dims = item.get("name"), item.get("data_type"), item.get("dims")
            if not isinstance(name, str) or not name or kind not in _TYPES or not isinstance(dims, list):
                raise InvalidModelFile(
                    f"the config's {key} {json.dumps(item)} needs a name, a data_type (TYPE_FP32, ...) and dims"
                )
            spec = TensorSpec(name, _TYPES[kind], ((-1,) if batched else ()) + tuple(int(d) for d in dims))
            found["optional" if key == "input" and item.get("optional") else key].append(spec)
    listed = {t.name for t in found["input"] + found["optional"]}
    found["input"] += [c for c in _controls(config, batched) if c.name not in listed]
    return Signature(tuple(found["input"]), tuple(found["output"]), tuple(found["optional"]))


_CONTROL_TYPES = {"int32_false_true": DType.INT32, "fp32_false_true": DType.FP32, "bool_false_true": DType.BOOL}


def _controls(config: dict[str, Any], batched: bool) -> list[TensorSpec]:
    """The control inputs its sequence batching sets (START, END, READY, CORRID): inputs of the model that its
    config lists there alone, as Triton hands a Python model them, one value per request."""
    specs = []
    for control_input in (config.get("sequence_batching") or {}).get("control_input") or []:
        controls = control_input.get("control") or [{}]
        kind = next((_CONTROL_TYPES[k] for k in _CONTROL_TYPES if k in controls[0]), None)
        if kind is None:  # CONTROL_SEQUENCE_CORRID: its data_type (one the server's checks of the config read)
            kind = _TYPES.get(str(controls[0].get("data_type")), DType.UINT64)
        name = control_input.get("name")
        if isinstance(name, str) and name:
            specs.append(TensorSpec(name, kind, ((-1,) if batched else ()) + (1,)))
    return specs
