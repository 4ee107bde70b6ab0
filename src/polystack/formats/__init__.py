"""Source formats: recognise a file a user saved with their framework and import it.

An importer is a small module exposing ``NAME`` (the format name stored in the catalog),
``sniff(path) -> bool`` (cheap recognition, no deserialisation) and
``load(path, workdir) -> ImportedModel`` (validate, derive the Signature, and produce the single
file the store keeps). ``detect`` tries them in order; ``--format`` forces one.
Pickle-family files are refused before any byte is unpickled (see ``pickle_guard``).
"""

from __future__ import annotations

import importlib
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from polystack.errors import InvalidModelFile, UnsupportedFormat
from polystack.formats import pickle_guard
from polystack.types import Signature


@dataclass(frozen=True)
class ImportedModel:
    format: str
    signature: Signature
    artifact: Path  # the one file the store keeps (may be a normalised copy in workdir)
    settings: dict[str, Any] = field(default_factory=dict)  # facts the importer learnt (e.g. trusted types)


class Importer(Protocol):
    NAME: str

    def sniff(self, path: Path) -> bool: ...

    def load(self, path: Path, workdir: Path, **options: Any) -> ImportedModel: ...


# Format name -> module under polystack.formats. Order matters for detection.
IMPORTERS: dict[str, str] = {
    "python": "polystack.formats.python_model",  # a zip the store writes itself: before the zips of other formats
    "onnx": "polystack.formats.onnx",
    "torch.export": "polystack.formats.torch_export",
    "skops": "polystack.formats.skops",
    "xgboost": "polystack.formats.xgboost",
    "lightgbm": "polystack.formats.lightgbm",
    "litert": "polystack.formats.litert",
    "jax.export": "polystack.formats.jax_export",
    "openvino": "polystack.formats.openvino_ir",
    "fil": "polystack.formats.fil",  # a zip of polystack's own, from a repository's folder for Triton's FIL backend
    "torchscript": "polystack.formats.torchscript",  # a zip of polystack's own: a TorchScript module and its config
    "torch_aoti": "polystack.formats.torch_aoti",  # a zip of polystack's own: an AOTInductor package and its config
}


def zip_holds(path: Path, entry: str) -> bool:
    """Whether ``path`` is a zip holding ``entry``: how the formats polystack packs itself (a Python model's folder,
    a FIL model's file, a TorchScript module with its config) mark theirs."""
    if not path.is_file() or not zipfile.is_zipfile(path):
        return False
    try:
        with zipfile.ZipFile(path) as zf:
            return entry in zf.namelist()
    except (zipfile.BadZipFile, OSError):
        return False


def importer(name: str) -> Importer:
    try:
        module: Importer = importlib.import_module(IMPORTERS[name])
    except KeyError:
        raise UnsupportedFormat(f"unknown format {name!r}; known formats: {', '.join(IMPORTERS)}") from None
    return module


def detect(path: Path) -> str:
    """The format of ``path``; refuses pickle-family files without unpickling them."""
    if not path.exists():
        raise InvalidModelFile(f"{path} does not exist")
    if path.is_dir():  # each importer reads a file (ONNX's opened it: "Is a directory")
        raise InvalidModelFile(
            f"{path} is a folder; give the model's file in it (an .onnx, an OpenVINO .xml, a saved program, ...), "
            "or serve a Triton model folder with `polystack serve --model-repository`"
        )
    pickle_guard.refuse_pickle(path)
    for name in IMPORTERS:
        if importer(name).sniff(path):
            return name
    from polystack.formats.torch_aoti import is_package_file

    if is_package_file(path):
        raise InvalidModelFile(
            f"{path.name} is an AOTInductor package, whose file does not name its tensors: serve it from a Triton model "
            'repository, as <name>/1/model.pt2 beside a <name>/config.pbtxt (platform: "torch_aoti") that lists its '
            "inputs and outputs, with serve --allow-torch-aoti-models, or save the exported program (torch.export.save) "
            "to register it here"
        )
    raise UnsupportedFormat(
        f"{path} is not a format polystack recognises ({', '.join(IMPORTERS)}); pass --format to force one"
    )


def import_model(path: Path, workdir: Path, format: str | None = None, **options: Any) -> ImportedModel:
    """Recognise (or take ``format``), validate and import ``path``; writes only under ``workdir``."""
    path = Path(path)
    if not path.exists():
        raise InvalidModelFile(f"{path} does not exist; give the path of a saved model file")
    pickle_guard.refuse_pickle(path)
    name = format or detect(path)
    return importer(name).load(path, workdir, **options)
