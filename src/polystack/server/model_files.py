"""Triton's model file overrides on a repository load: ``file:`` load parameters that carry a model's
file (``file:1/model.onnx``) and its label files (``file:labels.txt``), so that a client can hand the
server a model it has (tritonclient's ``load_model(name, config=..., files=...)``).

Triton loads such a model from a temporary directory made of the files. polystack serves from its
store, so the file is imported and registered as the version its directory names (the same bytes register
once; other bytes replace those a repository or an earlier load's files gave that version, set aside until
the load serves, and are refused for a version ``polystack register`` made) and then loaded, with the
load's config, as that version. Label files are those the config's outputs name as ``label_filename``.
The files are read and checked, and the model imported, before the store changes; a load that fails after
that (a config the model does not match, a runtime that cannot load it) undoes what registering changed
(``Registered``).
"""

from __future__ import annotations

import dataclasses
import io
import logging
import tempfile
import zipfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from polystack.backends import python
from polystack.errors import InvalidRequest, PolystackError, UnsupportedFormat, quote
from polystack.formats import IMPORTERS, fil, import_model, python_model, torch_aoti, torchscript
from polystack.formats.pickle_guard import is_pt2_archive
from polystack.labels import label_settings, parse_label_options
from polystack.server import config_text, fil_config, model_config
from polystack.store import ModelRecord, Store

log = logging.getLogger("polystack.server")

PREFIX = "file:"
# a model record's setting: created from a Triton model repository's files or a load's, so a repository may replace
# its bytes (a version file rewritten in place); a row registered another way first never gets it
FROM_FILES = "from_triton_files"
_WHERE = (
    "the model file as file:<version>/<name> (file:1/model.onnx; OpenVINO IR as file:1/model.xml with "
    "file:1/model.bin), label files beside it as file:<name> (or in a folder: file:labels/<name>)"
)


@dataclass(frozen=True)
class ModelFiles:
    """The files of a load: its one model file (path in the override directory, and bytes) and its
    label files (name -> bytes)."""

    model_path: str
    model: bytes
    labels: dict[str, bytes]
    beside: tuple[tuple[str, bytes], ...] = ()  # files the model reads beside it (OpenVINO IR's weights)

    @property
    def model_name(self) -> str:
        return self.model_path.partition("/")[2]

    @property
    def version(self) -> int:
        """The number of its version directory, the version it serves as (Triton's folder of the files)."""
        return int(self.model_path.partition("/")[0])

    def by_path(self) -> dict[str, bytes]:
        """The files by their path in the folder Triton makes of them (``1/model.onnx``, ``labels.txt``)."""
        return {self.model_path: self.model, **dict(self.beside), **self.labels}


@dataclass(frozen=True)
class Registered:
    """What registering a load's files did to the store, so that a load that fails can undo it: a new
    version (``created``), in place of one that held other bytes (``replaced``), or new settings (labels)
    on the version that already held the bytes. Once the load serves, ``settle`` removes the bytes it
    replaced."""

    record: ModelRecord
    created: bool
    settings_before: dict[str, Any] | None  # that version's settings before (None: the same, or a new version)
    replaced: ModelRecord | None = None  # the row whose version it took, set aside until ``settle``

    def undo(self, store: Store) -> None:
        if self.created:
            store.take_back(self.record)  # by id: gone already, or another writer's row at its version, is left
        elif self.settings_before is not None:  # update_settings adds to the record's: give it none to add to
            store.models.update_settings(dataclasses.replace(self.record, settings={}), self.settings_before)
        if self.replaced is not None and not store.restore(self.replaced):
            log.warning(  # taken by another writer meanwhile (a second server on the same store), or removed
                "the version a failed load replaced could not be put back in the store: its version is taken, or "
                "it was removed",
                extra={"model": f"{self.record.name}:{self.record.version}"},
            )

    def settle(self, store: Store) -> None:
        if self.replaced is not None:
            store.drop(self.replaced)


def given(parameters: Mapping[str, Any]) -> bool:
    return any(k.startswith(PREFIX) for k in parameters)


def read(parameters: Mapping[str, Any]) -> ModelFiles:
    """The files among a load's parameters, their contents as bytes (the HTTP adapter decodes base64)."""
    models: list[tuple[str, bytes]] = []
    labels: dict[str, bytes] = {}
    for key, path, value in _files(parameters):
        parts = path.split("/")
        numbered = parts[0].isascii() and parts[0].isdigit()
        if (len(parts) == 1 or not numbered) and len(parts) <= 8 and all(_plain(p) for p in parts):
            labels[path] = value  # a label file, in the model's folder or a folder of it (labels/en.txt)
        elif len(parts) == 2 and _plain(parts[1]):
            version = parts[0]
            if not (version.isascii() and version.isdigit() and len(version) <= 18 and int(version) >= 1):
                raise InvalidRequest(
                    f"load parameter {quote(key)} is not in a version directory (a number from 1); polystack takes "
                    f"{_WHERE}"
                )
            models.append((path, value))
        else:
            raise InvalidRequest(f"load parameter {quote(key)} is not a file polystack takes; it takes {_WHERE}")
    for label in labels:  # a file and a folder of one name cannot both be
        parents = ["/".join(label.split("/")[:i]) for i in range(1, label.count("/") + 1)]
        clash = next((p for p in parents if p in labels), None)
        if clash is not None:
            raise InvalidRequest(
                f"load parameters {quote(PREFIX + clash)} and {quote(PREFIX + label)} name {quote(clash)} as a file and "
                "as a folder; rename one"
            )
    ir = sorted(models, key=lambda m: not m[0].endswith(".xml"))  # OpenVINO IR: model.xml and its weights
    if len(ir) == 2 and ir[0][0].endswith(".xml") and ir[1][0] == ir[0][0].removesuffix(".xml") + ".bin":
        return ModelFiles(ir[0][0], ir[0][1], labels, beside=(ir[1],))
    if len(models) != 1:
        found = f"{len(models)} model files ({', '.join(quote(PREFIX + p) for p, _ in models)})" if models else "none"
        raise InvalidRequest(
            f"polystack takes one model file per load, in a version directory, and the load carries {found}; "
            f"send {_WHERE}"
        )
    [(model_path, model)] = models
    return ModelFiles(model_path, model, labels)


@dataclass(frozen=True)
class Folder:
    """A Python model's files of a load: its version, and each file's bytes by its path in the version folder."""

    version: int
    files: dict[str, bytes]

    def by_path(self) -> dict[str, bytes]:
        return {f"{self.version}/{path}": data for path, data in self.files.items()}


def read_folder(parameters: Mapping[str, Any]) -> Folder:
    """A Python model's files among a load's parameters: its ``model.py`` and the files beside it, in one version
    directory (``file:1/model.py``, ``file:1/utils/text.py``)."""
    versions: set[str] = set()
    found: dict[str, bytes] = {}
    for key, given, value in _files(parameters):
        version, _, path = given.partition("/")
        parts = path.split("/")
        if not (version.isascii() and version.isdigit() and len(version) <= 18 and int(version) >= 1) or not (
            len(parts) <= 8 and all(_plain(p) for p in parts)
        ):
            raise InvalidRequest(
                f"load parameter {quote(key)} is not a file in a version directory; a Python model's load takes its "
                "files as file:<version>/<path> (file:1/model.py)"
            )
        versions.add(version)
        found[path] = value
    if len(versions) != 1:
        raise InvalidRequest(
            f"a Python model's load carries the files of one version directory, and this one carries "
            f"{len(versions)} ({', '.join(sorted(versions))}); load one version at a time"
        )
    return Folder(int(versions.pop()), found)


def register_python(store: Store, name: str, folder_files: Folder, doc: dict[str, Any], auto_complete: bool) -> Registered:
    """Register a Python model's files of a load (``read_folder``) with its config ``doc``, packed as the store
    keeps Python models (``formats/python_model.py``), its ``auto_complete_config`` completing the config unless
    ``auto_complete`` is off (``--disable-auto-complete-config``)."""
    file = str(doc.get("default_model_filename") or "model.py")
    version = folder_files.version
    with tempfile.TemporaryDirectory(prefix="polystack-load-") as tmp:
        folder = Path(tmp) / "model"
        for path, data in folder_files.files.items():
            (folder / str(version) / path).parent.mkdir(parents=True, exist_ok=True)
            (folder / str(version) / path).write_bytes(data)
        asked = doc  # the load hands the model this again: completed once, here (``completed_from``)
        if auto_complete:
            doc = python.auto_complete(folder, version, file, doc, name)
        packed = python_model.pack(folder, version, name, {**doc, "name": name}, file, Path(tmp) / "model.zip",
                                   completed_from=asked if auto_complete else None)  # fmt: skip
        (Path(tmp) / "import").mkdir()
        shown = {packed: f"{PREFIX}{version}/{file}"}
        return register_file(store, name, packed, {}, Path(tmp) / "import", shown, version, exact_labels=True,
                             triton_io=True)  # fmt: skip


def _files(parameters: Mapping[str, Any]) -> Iterator[tuple[str, str, bytes]]:
    """A load's ``file:`` parameters: each one's key, the path it names and its bytes."""
    for key, value in parameters.items():
        if not key.startswith(PREFIX):
            continue
        if not isinstance(value, bytes):
            raise InvalidRequest(f"load parameter {quote(key)} must carry the file's contents as bytes")
        # a leading slash names the model's folder all the same, as Triton joins the path to its folder
        path = key[len(PREFIX) :].lstrip("/")
        if ".." in path.split("/"):  # Triton's poll fails ("must stay within model directory"), its "failed to load
            # 'm', failed to poll from model repository" (a 500)
            raise InvalidRequest(
                f"load parameter {quote(key)} names a path outside the model's folder; name a file in it ({_WHERE})"
            ).before_model_read()
        yield key, path, value


def version_paths(parameters: Mapping[str, Any]) -> set[str]:
    """The paths a load's files have in their version directory (``file:1/model.py``: ``model.py``)."""
    return {path.partition("/")[2] for _, path, _ in _files(parameters) if "/" in path}


def _plain(name: str) -> bool:
    """A file name of its own: not empty, no directory parts, nothing a file system reads specially."""
    return bool(name) and name not in (".", "..") and "\\" not in name and name.isprintable() and len(name) <= 255


def is_aoti(model_path: str, model: bytes, config: str) -> bool:
    """Whether a load's model file is an AOTInductor package: its config's platform is torch_aoti, or it is a
    ``.pt2`` holding a compiled model and no exported program (one holding both is a torch.export program unless
    the config says torch_aoti), found from the zip's index alone."""
    if model_config.triton_format(config) == torch_aoti.NAME:
        return True
    if not model_path.endswith(".pt2"):
        return False
    try:
        with zipfile.ZipFile(io.BytesIO(model)) as zf:
            names = zf.namelist()
    except (zipfile.BadZipFile, OSError, ValueError):
        return False
    return torch_aoti.is_package(names) and not is_pt2_archive(names)


def register(store: Store, name: str, files: ModelFiles, config: str) -> Registered:
    """Import and register the model file of a load with ``config`` (label files as its outputs name
    them) under ``name``, as the version its directory names, as Triton serves a load's files: other bytes
    there replace the version's (set aside until the load serves, ``Registered``) when files made it, and are
    refused when ``polystack register`` did."""
    named = config_text.label_files(config)
    stray = sorted(set(files.labels) - set(named.values()))
    if stray:
        raise InvalidRequest(
            f"{', '.join(quote(PREFIX + s) for s in stray)} is not a label file any output of the config names "
            "(label_filename); name it there, or leave it out"
        )
    for output, label in named.items():
        if label not in files.labels:
            raise InvalidRequest(
                f"the config's output {quote(output)} names label file {quote(label)}, which the load does not "
                f"carry; add it as {quote(PREFIX + label)}, or leave label_filename out"
            )
    with tempfile.TemporaryDirectory(prefix="polystack-load-") as tmp:
        where = Path(tmp)
        (where / "model").mkdir()
        path = where / "model" / files.model_name  # its own folder: a file named "import" or "labels" is fine
        path.write_bytes(files.model)
        for beside, data in files.beside:  # IR's weights, where OpenVINO reads them
            (where / "model" / beside.partition("/")[2]).write_bytes(data)
        if model_config.runtime_of(config) == "fil":  # Triton's FIL backend's file: packed with its settings
            path = fil.pack(path, fil_config.settings(config_text.parse_config(config)), where / "model.fil.zip")
        elif is_aoti(files.model_path, files.model, config):  # an AOTInductor package: packed with the config
            path = torch_aoti.pack(
                path, {**config_text.parse_config(config), "name": name, "platform": torch_aoti.NAME}, name,
                where / "model.torch_aoti.zip", PREFIX + files.model_path,
            )  # fmt: skip
        elif (  # Triton's PyTorch backend's: packed with the config, its signature (or told what it is not)
            torchscript.is_archive_file(path)
            or path.suffix == ".pt"
            or model_config.triton_format(config) == "torchscript"
        ):
            path = torchscript.pack(
                path, {**config_text.parse_config(config), "name": name}, name, where / "model.torchscript.zip",
                PREFIX + files.model_path,
            )  # fmt: skip
        labels: dict[str, Path] = {}
        if named:
            (where / "labels").mkdir()
            for output, label in named.items():
                labels[output] = where / "labels" / label
                labels[output].parent.mkdir(parents=True, exist_ok=True)
                labels[output].write_bytes(files.labels[label])
        shown = {path: PREFIX + files.model_path, **{labels[o]: PREFIX + named[o] for o in labels}}
        return register_file(
            store, name, path, labels, where / "import", shown, files.version, triton_io=True, label_names=named
        )


def register_file(
    store: Store,
    name: str,
    path: Path,
    labels: Mapping[str, Path],
    work: Path,
    shown: Mapping[Path, str],
    version: int | None = None,
    exact_labels: bool = False,
    triton_io: bool = False,
    label_names: Mapping[str, str] | None = None,
) -> Registered:
    """Import the model file at ``path`` (in place: an ONNX model's external data beside it is read there)
    and register it under ``name`` with the label files ``labels`` (by output), as ``version`` when given
    (a model repository's, ``model_repository.py``), else as the store numbers it. ``work`` is a folder of
    its own for the import; errors name the files as ``shown`` says. With ``exact_labels`` the record's
    labels become these (none: none) even when the store already held the bytes, whose settings a
    registration otherwise adds to (a repository's label files are the truth). With ``triton_io`` the record
    shows its inputs and outputs as Triton auto-completes a config's (``model_config.TRITON_IO``). A label
    file keeps the name ``label_names`` gives its output (the config's ``label_filename``, a path in the model's
    folder), else its file's name."""
    model_shown = shown.get(path, str(path))
    try:
        imported = import_model(path, work)
    except UnsupportedFormat:
        raise InvalidRequest(
            f"{quote(model_shown)} is not a model format polystack recognises ({', '.join(IMPORTERS)})"
        ) from None
    except PolystackError as e:
        message = e.message.replace(str(path), model_shown).replace(", or pass --format", "")
        raise InvalidRequest(f"{quote(model_shown)}: {message}") from None
    settings = dict(imported.settings)
    found: dict[str, Any] = {}
    for output, file in labels.items():  # one at a time: an error names the config's output and its file
        try:
            found.update(parse_label_options([f"{output}={file}"], imported.signature, checked=not triton_io))
            if label_names and output in label_names:
                found[output] = found[output]._replace(name=label_names[output])
        except PolystackError as e:
            message = e.message.removeprefix(f"--labels {output}={file}: ")
            for p, text in shown.items():
                message = message.replace(str(p), text)
            raise InvalidRequest(
                f"label file {quote(shown.get(file, str(file)))} of the config's output {quote(output)}: {message}"
            ) from None
    if found or exact_labels:
        settings.update(label_settings(found))
    if triton_io:
        settings[model_config.TRITON_IO] = True
    before = {r.id: r.settings for r in store.models.list(name)}
    record, created, replaced, _ = store.add(
        imported.artifact,
        name=name,
        format=imported.format,
        signature=imported.signature,
        source_filename=path.name,
        settings=settings,
        version=version,
        # a version folder's file rewritten in place is the version anew, as Triton reloads it; a version the
        # store holds another way (`polystack register`) is not the repository's to replace
        replaceable=_from_triton_files if version is not None else None,
        settings_if_new={FROM_FILES: True} if triton_io else None,
    )
    prior = None if created else before.get(record.id)  # None too if another writer registered it just now
    if (exact_labels or triton_io) and not created:
        # settings given again are added to the record's, key by key: labels an output lost stay unless replaced
        exact = {**record.settings, **(label_settings(found) if exact_labels else {})}
        if triton_io:
            exact[model_config.TRITON_IO] = True
        if exact != record.settings:
            record = store.models.update_settings(dataclasses.replace(record, settings={}), exact)
    return Registered(record, created, prior if prior is not None and prior != record.settings else None, replaced)


def _from_triton_files(record: ModelRecord) -> bool:
    """Whether a version was created from a Triton model repository's files or a load's (not registered
    another way first, as ``polystack register``, whose row a repository's same bytes then serve)."""
    return bool(record.settings.get(FROM_FILES))
