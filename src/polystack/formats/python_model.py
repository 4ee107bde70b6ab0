"""Triton Python-backend models (``backend: "python"``, ``<version>/model.py``), as the store keeps them: the
version folder, the model folder's own files beside it and the model's config in one zip (``pack``), whose signature is the config's inputs and outputs
(a Python model declares them; nothing else says what its code takes). ``backends/python.py`` runs them.

The zip is written the same way each time (entries in name order, one fixed date), so that a folder packed again
unchanged is the same bytes, which the store registers once. A version folder holding a pickle is refused, as
everywhere (``pickle_guard``).
"""

from __future__ import annotations

import json
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from polystack.errors import InvalidModelFile
from polystack.formats import ImportedModel, triton_io, zip_holds
from polystack.types import Signature

NAME = "python"
MANIFEST = "polystack-python-model.json"  # the model's name, version, file and config (and its backend's name)
BACKEND = "polystack-backend"  # where a Python-based backend's folder (its model.py) lies in the zip
COMPLETED_FROM = "completed_from"  # the manifest's: the config its auto_complete_config completed (if it ran)
MAX_FILES = 10_000  # a version folder with more is a mistake (a data set copied in), refused
_DATE = (1980, 1, 1, 0, 0, 0)  # every entry's, so that the same files are the same bytes


def pack(
    folder: Path,
    version: int,
    name: str,
    config: dict[str, Any],
    file: str,
    out: Path,
    backend: Path | None = None,
    completed_from: dict[str, Any] | None = None,
) -> Path:
    """Zip the model ``folder`` as its version ``version`` sees it (that version's folder, ``file`` among its
    files, and the folder's own files beside the version folders: its ``config.pbtxt``, label files, a tokenizer
    folder; Triton's ``args["model_repository"]`` holds them) with ``config`` into ``out``; refused where the
    file is missing or the folder holds more than ``MAX_FILES`` files. A model of a Python-based backend (Triton's:
    its config names a backend whose folder holds a ``model.py``) runs that folder's ``model.py``: the folder goes in
    too, under ``BACKEND``, and its version folder needs no file of its own. ``completed_from``: the config the
    model's ``auto_complete_config`` made ``config`` of, kept so that its load does not call it again."""
    root = folder / str(version)
    if backend is None and not (root / file).is_file():
        raise InvalidModelFile(f"{root / file} is missing: a Python model's version folder holds its {file}")
    if backend is not None and not root.is_dir():
        raise InvalidModelFile(f"{root} is missing: a model of a Python-based backend has a version folder")
    entries = [(p, p.relative_to(folder).as_posix()) for p in _files(folder, version)]
    if any(arc == MANIFEST or arc.partition("/")[0] == BACKEND for _, arc in entries):
        raise InvalidModelFile(f"{folder}: polystack keeps its own {MANIFEST} and {BACKEND} there; rename yours")
    if backend is not None:
        entries += [(p, f"{BACKEND}/{p.relative_to(backend).as_posix()}") for p in _files(backend, None)]
    if len(entries) > MAX_FILES:
        raise InvalidModelFile(f"{folder} holds more than {MAX_FILES} files; keep the model's own files there")
    manifest = {"model": name, "version": version, "file": file, "config": config}
    if backend is not None:
        manifest["backend"] = backend.name
    if completed_from is not None:
        manifest[COMPLETED_FROM] = completed_from
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr(zipfile.ZipInfo(MANIFEST, _DATE), json.dumps(manifest, sort_keys=True))
        for path, arc in sorted(entries, key=lambda e: e[1]):
            info = zipfile.ZipInfo(arc, _DATE)
            info.external_attr = 0o644 << 16
            zf.writestr(info, path.read_bytes(), zipfile.ZIP_DEFLATED)
    return out


def backend_of(path: Path) -> str:
    """The name of the Python-based backend whose ``model.py`` the packed model at ``path`` runs ("": its own)."""
    try:
        with zipfile.ZipFile(path) as zf:
            return str(json.loads(zf.read(MANIFEST)).get("backend") or "")
    except (zipfile.BadZipFile, KeyError, OSError, ValueError) as e:
        raise InvalidModelFile(f"{path} is not a Python model as polystack stores one: {e}") from None


def _files(folder: Path, version: int | None) -> Iterator[Path]:
    """The files of ``folder`` that version ``version`` of its model sees: all but other versions' (folders named by
    a number) and Python's caches (None: all but the caches)."""
    for entry in folder.iterdir():
        if version is not None and entry.is_dir() and entry.name.isdigit() and entry.name != str(version):
            continue
        found = entry.rglob("*") if entry.is_dir() else (entry,)
        yield from (p for p in found if p.is_file() and "__pycache__" not in p.relative_to(folder).parts)


def sniff(path: Path) -> bool:
    return zip_holds(path, MANIFEST)


def load(path: Path, workdir: Path, **options: Any) -> ImportedModel:
    with zipfile.ZipFile(path) as zf:
        manifest = json.loads(zf.read(MANIFEST))
    return ImportedModel(NAME, signature(manifest["config"]), path)


def signature(config: dict[str, Any]) -> Signature:
    """The inputs and outputs a Python model's config declares (``triton_io``)."""
    return triton_io.signature(config, triton_io.PYTHON)
