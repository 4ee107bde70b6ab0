"""Triton's model repository: ``serve --model-repository DIR`` serves the models of a folder laid out as
Triton reads one (``tritonserver --model-repository DIR``), so that a deployment written for Triton serves
as it is::

    DIR/
      <model>/
        config.pbtxt          (optional: without one, polystack chooses, by its plan or profile)
        <labels file>         (the files the config's outputs name as label_filename)
        <version>/            (1, 2, ...: a number from 1, with no leading zero; other folders are ignored)
          model.onnx          (or the config's default_model_filename; model.xml and model.bin for Triton's
                               OpenVINO backend, model.py for its Python backend, a tree model's file for its FIL
                               backend: xgboost.json, model.txt, ...)

Each version the model's ``version_policy`` picks (Triton's default: the latest one) is registered in the
store under the model's folder name and its version number, as ``polystack register`` would (the same bytes
register once; the labels are the folder's label files, even for bytes registered before), and served with
the folder's config as ``serve --model-config`` gives it. A version whose file was rewritten in place is that
version anew, as Triton serves what the folder holds: the store's row for it, registered from a repository or
a load's files before, is replaced (``settle`` removes the old bytes once the new ones serve, ``undo`` puts
them back); a version the store holds another way (``polystack register``) with other bytes is refused,
with how to free it. A start that fails takes back what it registered.

While serving, ``ModelRepository`` reads a model's folder again, as Triton's explicit model control does: a
load of the model by name (``--allow-model-control``) registers the versions its folder holds now and serves
those its policy picks, with the config it has now, and a load of a name that only has a folder now serves
that new model. With ``--repository-poll-secs`` the server polls the folders instead (Triton's poll mode): a
folder whose files changed (a new version folder, a new config, a file rewritten) is read again and reloaded, a new folder
loaded, a folder gone unloaded. A reload that fails leaves what was served serving, and takes back what it
registered.

What a config says of the file (``platform``, ``backend``, ``default_model_filename``) chooses the file and
is then left out of the config the server applies, since polystack chooses the runtime (its plan, or the
default variant), but for a backend that chooses it (OpenVINO's, kept; a FIL model's file is registered with
its config's settings, ``formats/fil.py``); the version policy is the repository's, and the server loads what it
picked. A folder whose
config declares an ensemble (``platform: "ensemble"``, ``ensemble.py``) holds no model file: its version
folder is empty, nothing of it goes in the store, and the server serves it once the models it runs are
loaded. A model folder polystack cannot serve (another framework's files, no version folder) stops the start
with one line naming it.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import logging
import os
import tempfile
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePath, PurePosixPath
from typing import Any

from polystack.backends import python
from polystack.errors import AlreadyExists, InvalidRequest, NotFound, NotUnique, PolystackError, Unavailable, quote
from polystack.formats import fil, python_model, torch_aoti, torchscript
from polystack.labels import file_in as label_file_in
from polystack.server import config_text, fil_config, model_config, model_files, repository_agents
from polystack.server.cloud_repository import CloudRepository
from polystack.server.ensemble import Ensemble, is_ensemble, renamed_steps, with_labels
from polystack.server.ensemble import read as read_ensemble
from polystack.store import Store, validate_name
from polystack.store.refs import MAX_VERSION

log = logging.getLogger("polystack.server")

CONFIG = "config.pbtxt"
# Triton's default file name by platform or backend, for those polystack reads (ONNX, OpenVINO IR); the others
# are named in the refusal
_DEFAULT_FILES = {"onnxruntime_onnx": "model.onnx", "onnxruntime": "model.onnx", "openvino": "model.xml"}
# (FIL's default file is its model_type's: formats/fil.py)
_OTHER_FILES = {
    "model.plan": "TensorRT",
    "model.savedmodel": "TensorFlow SavedModel",
    "model.graphdef": "TensorFlow GraphDef",
    "model.py": "Python backend",
}
# why a TorchScript model is refused without --allow-torchscript-models
TORCHSCRIPT_REFUSED = (
    "it is a model for Triton's PyTorch backend (a TorchScript model.pt): torch would run its code in the server's process, and "
    "torch's operators reach past the model (polystack refuses those it knows; it is no sandbox); start the server "
    "with --allow-torchscript-models to serve it, from repositories you trust"
)
# why an AOTInductor package is refused without --allow-torch-aoti-models
AOTI_REFUSED = (
    "it is a model for Triton's PyTorch backend (an AOTInductor package, model.pt2): its compiled library would run "
    "as native code in the server's process, with its rights; start the server with --allow-torch-aoti-models to "
    "serve it, from repositories you trust"
)


def python_refused(name: str) -> InvalidRequest:
    """A Python model refused by a server started without --allow-python-models."""
    return InvalidRequest(
        f"model {name!r} is a Python model: its code would run in the server's process, with the server's rights; "
        "start the server with --allow-python-models to serve it"
    )


# Triton's names for its PyTorch backend's TorchScript models (``torch_aoti`` is its AOTInductor packages')
_PYTORCH = frozenset({"pytorch", "pytorch_libtorch", "libtorch"})
AOTI = "torch_aoti"
# backends a config keeps when served, since they choose the runtime (Triton's OpenVINO backend runs ONNX files
# too); ONNX Runtime's is left out, so that a plan may choose another runtime for a repository's ONNX model
_CHOOSING = frozenset({"openvino"})


@dataclass(frozen=True)
class FolderRules:
    """How a model folder is read, as tritonserver's flags say: ``config_name`` (``--model-config-name``) reads
    ``configs/<name>.pbtxt`` in place of config.pbtxt where the folder has one; without ``auto_complete``
    (``--disable-auto-complete-config``) a folder needs a config, which must list the model's tensors."""

    config_name: str = ""
    auto_complete: bool = True
    # Triton's Python-backend models (``backend: "python"``) are served (serve --allow-python-models): their
    # model.py runs in the server's process, with its rights
    python_models: bool = False
    # Triton's PyTorch-backend models (TorchScript, model.pt) are served (serve --allow-torchscript-models): torch
    # runs their code, whose operators reach past the model (torchscript_guard refuses those it knows, no sandbox)
    torchscript_models: bool = False
    # its AOTInductor packages (platform torch_aoti, model.pt2) are served (serve --allow-torch-aoti-models): their
    # compiled library runs as native code in the server's process
    aoti_models: bool = False
    # where Python-based backends are found (serve --backend-directory; Triton's default): a config naming a backend
    # whose folder there holds a model.py runs it as a Python model (with --allow-python-models)
    backend_directory: Path = Path("/opt/tritonserver/backends")
    # Triton's --model-namespacing: a model folder two or more repositories hold is a model in each of them, the
    # copy of each serving under ``namespaced(name, namespaces(roots)[root])``, the ensembles of a repository
    # running its copy; without, such a folder is not served (Triton's poll of it fails)
    namespacing: bool = False

    def config_path(self, folder: Path) -> Path:
        if self.config_name:
            custom = folder / "configs" / f"{self.config_name}.pbtxt"
            if custom.exists():
                return custom
        return folder / CONFIG


@dataclass(frozen=True)
class RepositoryModel:
    """One model of a repository as served: its name, the versions its policy picked (registered in the
    store), and its config (None: the folder has no config.pbtxt)."""

    name: str
    versions: tuple[int, ...]
    config: model_config.ConfigFile | None
    ensemble: Ensemble | None = None  # an ensemble's folder: served as this, nothing registered (versions: its one)
    ran: repository_agents.Agents = ()  # the repository agents that ran on its files (the folder's, or a load's)

    @property
    def refs(self) -> list[str]:
        return [f"{self.name}:{v}" for v in self.versions]


def _is_dir(path: Path) -> bool:
    """Whether ``path`` is a folder, False where it cannot be told (a repository this process may not read)."""
    try:
        return path.is_dir()
    except OSError:
        return False


def _subfolders(root: Path) -> list[Path]:
    try:
        return [p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")]
    except OSError:
        return []


def model_folders(root: Path) -> list[Path]:
    """The model folders of the repository at ``root``, in name order (hidden ones, named from '.', left out).
    An empty repository is served empty, as Triton serves it (models come later, by a load or a poll)."""
    if not root.is_dir():
        raise InvalidRequest(f"--model-repository {root}: not a folder; give the folder that holds the model folders")
    try:
        folders = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    except OSError as e:
        raise InvalidRequest(f"--model-repository {root}: cannot read it: {e.strerror}") from None
    return folders


def register(store: Store, root: Path, done: list[model_files.Registered]) -> list[RepositoryModel]:
    """Register the models of the repository at ``root`` (the versions their policies pick) and return them,
    in name order; what each registration did is appended to ``done``, for ``undo`` if the start fails.
    ``InvalidRequest`` names the first model folder that cannot be served and why."""
    return [register_folder(store, folder, done) for folder in model_folders(root)]


# a read of a folder runs the repository agents its own config names (a load with a config runs the config's)
FOLDER_AGENTS: Any = object()


def register_folder(
    store: Store,
    folder: Path,
    done: list[model_files.Registered],
    policy: Any = None,
    agents: Any = FOLDER_AGENTS,
    rules: FolderRules = FolderRules(),
    name: str | None = None,
    config: str | None = None,
) -> RepositoryModel:
    """Register the model of one folder of a repository (the versions ``policy``, else its config's policy,
    picks) and return it, as ``register`` does for each folder; ``name``: the model's name where a repository
    registered with a mapping maps the folder to it (its config's name then says nothing); ``config``: a load's
    (``ModelRepository.read``)."""
    try:
        return _register_model(store, folder, done, policy, agents, rules, name, config)
    except PolystackError as e:
        raise e.prefixed(f"--model-repository {folder.parent}: model {name or folder.name!r}") from None
    except OSError as e:  # a file or folder this process may not read
        raise InvalidRequest(
            f"--model-repository {folder.parent}: model {name or folder.name!r}: cannot read {e.filename or folder}: "
            f"{e.strerror}"
        ) from None


# A poll stats at most this many files and folders of one model folder (in name order, depth first): a
# folder holding more (a mistake: a data set copied into the repository) costs no more, and a change past
# them is not seen.
MAX_FINGERPRINT_ENTRIES = 10_000


Fingerprint = tuple[tuple[str, int, int], ...] | None
DUPLICATED: Fingerprint = ()  # what a poll saw of a folder in two repositories: read again once it is in one
NAMESPACE_MARK = "@"  # between a model's name and its repository's where two repositories hold the name


def namespaces(roots: Sequence[Path], clouds: Sequence[CloudRepository] = ()) -> dict[Path, str]:
    """The name of each repository among ``roots`` (``namespace_of``), one in cloud storage by its location (bucket
    and path), not its local copy's folder (a new one at each start)."""
    copies = {c.local.absolute(): PurePosixPath(c.shown.partition("://")[2]) for c in clouds}
    shown = [copies.get(root.absolute(), root) for root in roots]
    return {root: namespace_of(where, shown) for root, where in zip(roots, shown, strict=True)}


def namespace_of(root: PurePath, roots: Sequence[PurePath]) -> str:
    """The name of repository ``root`` among ``roots`` (``--model-namespacing``): its folder's name, with as many of
    its parents' as tell it from the other repositories' (SageMaker's archives, ``/opt/ml/models/<hash>/model``:
    ``<hash>.model``), else a digest of its path where that would not make a model name."""
    parts = root.parts[1:] if root.is_absolute() else root.parts
    for n in range(1, len(parts) + 1):
        if all(other == root or other.parts[-n:] != parts[-n:] for other in roots):
            token = ".".join(parts[-n:])
            try:
                return validate_name(token)
            except InvalidRequest:
                break
    return hashlib.sha256(str(root).encode()).hexdigest()[:12]


def namespaced(name: str, namespace: str) -> str:
    """The name the copy of model folder ``name`` in the repository named ``namespace`` serves under, where
    another repository holds a folder of that name too (``--model-namespacing``): ``name@namespace``."""
    return f"{name}{NAMESPACE_MARK}{namespace}"


def in_namespace(
    pipeline: Ensemble, root: Path, holding: Callable[[str], Sequence[Path]], names: Mapping[Path, str]
) -> Ensemble:
    """``pipeline``, of repository ``root``, running its repository's copy of each model two or more repositories
    hold (``holding``: the repositories holding a folder of that name), as Triton's ensembles resolve a step in
    their own namespace first (``--model-namespacing``; ``names``: the repositories' ``namespaces``); a step naming a
    model that only other repositories hold names it as before (served by its own name, or ambiguous)."""
    renamed = {}
    for model in pipeline.models:
        holders = holding(model)
        if len(holders) > 1 and root in holders:
            renamed[model] = namespaced(model, names[root])
    return renamed_steps(pipeline, renamed) if renamed else pipeline


def ambiguous(name: str, copies: Sequence[str]) -> InvalidRequest:
    """A request naming a model that two or more repositories hold (``--model-namespacing``), in Triton's words,
    then which names serve each copy."""
    return InvalidRequest(
        f"There are {len(copies)} identifiers of model {quote(name, 140)} in global map, model namespace must be "
        f"provided to resolve ambiguity.; each repository's copy serves under its own name: {', '.join(copies)}"
    )


def fingerprint(folder: Path) -> Fingerprint:
    """What a poll compares of a model folder: the path, size and modification time of what it holds, the
    folder included (as Triton compares modification times); None when the folder is gone."""
    entries: list[tuple[str, int, int]] = []
    try:
        top = folder.stat()
        entries.append((".", 0, top.st_mtime_ns))
        for dirpath, dirnames, filenames in os.walk(folder):
            dirnames.sort()
            for name in sorted(filenames) + dirnames:
                path = os.path.join(dirpath, name)
                try:
                    st = os.stat(path)
                except OSError:  # gone since the listing (a copy in progress): changed, read again next time
                    st = None
                rel = os.path.relpath(path, folder)
                entries.append((rel, st.st_size if st else -1, st.st_mtime_ns if st else -1))
                if len(entries) >= MAX_FINGERPRINT_ENTRIES:
                    return tuple(entries)
    except FileNotFoundError:
        return None
    except OSError as e:  # unreadable: a state of its own, so that reading it again is tried once it changes
        return ((f"unreadable: {e.strerror}", -1, -1),)
    return tuple(entries)


class ModelRepository:
    """The repositories a server serves (``serve --model-repository``), read again while it serves: for a
    load of one of their models by name, and by a poll. ``models`` are the names they served at start;
    ``others`` the names the server serves another way (named, or with ``--model-config``), which a folder
    of that name never replaces."""

    def __init__(
        self,
        roots: Sequence[Path],
        models: Collection[str],
        others: Collection[str] = (),
        seen: Mapping[str, Fingerprint] | None = None,
        polled: bool = False,
        rules: FolderRules = FolderRules(),
        clouds: Sequence[CloudRepository] = (),
    ) -> None:
        self.polled = polled  # Triton's poll mode: the server reads the folders for changes by itself
        self.clouds = list(clouds)  # repositories in cloud storage, whose local copies are among ``roots``
        self.rules = rules
        # as given, not resolved: a root that is a link (current -> releases/b) follows the link when it moves
        self.roots = [Path(r).absolute() for r in roots]
        self.models = set(models)
        self.others = frozenset(others)
        # model folders served under a name of their own, by that name: the mappings of repositories registered
        # while serving (``register_repository``: SageMaker's multi-model endpoints), as Triton's registry maps them
        self.mapped: dict[str, Path] = {}
        self._alone: set[Path] = set()  # registered repositories that are one model's folder (mapped), not models'
        self._twice: set[str] = set()
        self.duplicated: set[str] = set()  # model folders in two repositories, as the last full read found them
        # what the last poll saw of each model folder: at start, what the start saw before reading it
        self.seen: dict[str, Fingerprint] = (
            dict(seen)
            if seen is not None
            else {name: fingerprint(f) for name, f in self.folders()[0].items()}
            if polled
            else {}  # what only a poll compares
        )

    def refresh(self, name: str | None = None) -> None:
        """Bring the copies of the repositories in cloud storage up to date with their buckets: ``name``'s folder (a
        load of it by name, which fails where a bucket cannot be read), or whole (a poll, which goes on with the
        copy as it was)."""
        for cloud in self.clouds:
            try:
                cloud.sync(name)
            except Unavailable as e:
                if name is not None:
                    raise
                log.warning("cannot read the model repository", extra={"repository": cloud.shown, "error": e.message})

    def is_local(self, folder: Path) -> bool:
        """Whether ``folder`` lies in one of the repositories on a local file system (not a cloud repository's
        copy, which each sync rewrites)."""
        folder = Path(folder).absolute()
        copies = [c.local.absolute() for c in self.clouds]
        roots = [r for r in self.roots if r not in copies]
        return any(folder.is_relative_to(r) for r in [*roots, *self.mapped.values()])

    def shown(self) -> str:
        """The repositories as ``--model-repository`` named them (a cloud copy as its bucket's location)."""
        copies = {c.local.absolute(): c.shown for c in self.clouds}
        return ", ".join(copies.get(root, str(root)) for root in self.roots)

    def folder(self, name: str) -> Path | None:
        """The model's folder now: the one mapped to its name, else in the first repository that has one (None:
        none has); with namespacing, a copy's under its name (``copies``), and none for a name two repositories
        hold (each copy is a model of its own)."""
        if name.startswith(".") or name in self.others:
            return None
        mapped = self.mapped.get(name)
        if mapped is not None:
            return mapped if mapped.is_dir() else None
        holding = self._holding(name)
        if self.rules.namespacing and len(holding) > 1:
            return None
        for root in holding:
            return root / name
        return self._copy(name) if self.rules.namespacing else None

    def copies(self, name: str) -> list[str]:
        """With namespacing, the names the copies of model folder ``name`` serve under where two or more
        repositories hold one (in the repositories' order); else none."""
        holding = self._holding(name) if self.rules.namespacing else []
        if len(holding) < 2:
            return []
        names = namespaces(self._listed(), self.clouds)
        return [namespaced(name, names[root]) for root in holding]

    def copy_of(self, name: str) -> tuple[str, Path] | None:
        """With namespacing, the model folder's name and the repository of the copy named ``name``
        (``model@repository``), whether or not the folder is there now; None: not a copy's name."""
        if not self.rules.namespacing or name in self.mapped:
            return None
        for root, namespace in namespaces(self._listed(), self.clouds).items():
            suffix = NAMESPACE_MARK + namespace
            if name.endswith(suffix) and len(name) > len(suffix):
                return name[: -len(suffix)], root
        return None

    def _copy(self, name: str) -> Path | None:
        """The folder of the copy served as ``name`` (``model@repository``), while two repositories hold it."""
        copy = self.copy_of(name)
        if copy is None:
            return None
        model, root = copy
        holding = self._holding(model)
        return root / model if len(holding) > 1 and root in holding else None

    def in_namespace(self, pipeline: Ensemble, folder: Path) -> Ensemble:
        """``pipeline`` (read from ``folder``) with its steps in its repository's namespace (``in_namespace``)."""
        if not self.rules.namespacing:
            return pipeline
        return in_namespace(pipeline, folder.parent, self._holding, namespaces(self._listed(), self.clouds))

    def unique_folder(self, name: str) -> Path | None:
        """The model's folder now (None: none has one), ``NotUnique`` where two repositories hold a model of that
        name (a folder, or a mapping), as Triton's load fails then."""
        folder = self.folder(name)
        copy = folder is not None and folder.name != name and name not in self.mapped  # (namespacing)
        holding = self._holding(name) if folder is not None and not copy else []
        also = holding if name in self.mapped else holding[1:]
        if folder is not None and also:
            raise NotUnique(  # Triton's words, then where and what to do
                f"{NotUnique.TRITON}: {name!r} is in --model-repository {folder.parent} and in {also[0]}; keep it in "
                "one, or serve with --model-namespacing true to serve each"
            )
        return folder

    def _holding(self, name: str) -> list[Path]:
        """The repositories with a folder ``name`` served under that name (not mapped to another), in order."""
        taken = set(self.mapped.values())
        return [r for r in self._listed() if _is_dir(r / name) and r / name not in taken]

    def _listed(self) -> list[Path]:
        """The repositories whose folders are models (not those registered as one model's folder)."""
        return [root for root in self.roots if root not in self._alone]

    def register_repository(self, root: Path, mapping: Mapping[str, str]) -> None:
        """Serve the model folders of ``root`` too, those ``mapping`` names (folder: model name) under their
        mapped names, the others under their own (the folder "": ``root`` is that model's folder, and holds no
        other); refused in Triton's words (TRITONSERVER_ServerRegisterModelRepository) where ``root`` is not a
        folder, is registered already, or a name is mapped already."""
        root = Path(root).absolute()
        if not root.is_dir():
            raise InvalidRequest(f"failed to register '{root}', repository not found")
        if root in self.roots:
            raise AlreadyExists(f"model repository '{root}' has already been registered")
        for name in mapping.values():
            validate_name(name)
            if name in self.mapped:
                raise AlreadyExists(f"failed to register '{name}', there is a conflicting mapping for '{name}'")
        self.roots.append(root)
        if "" in mapping:
            self._alone.add(root)
        self.mapped.update({name: root / folder for folder, name in mapping.items()})
        log.info("model repository registered", extra={"repository": str(root), "mapping": dict(mapping)})

    def unregister_repository(self, root: Path) -> set[str]:
        """Stop serving the folders of ``root`` (its mappings with them); the models loaded from it serve on until
        unloaded, as in Triton, and a later load of their names reads the repositories (or the store) as before.
        The names of its folders no repository holds now."""
        root = Path(root).absolute()
        if root not in self.roots:
            raise InvalidRequest(f"failed to unregister '{root}', repository not found")
        gone = {name for name, path in self.mapped.items() if root in (path, path.parent)}
        gone |= {p.name for p in _subfolders(root)} if root not in self._alone else set()
        gone |= {copy for name in set(gone) for copy in self.copies(name)}  # (namespacing) as they were named
        self.roots.remove(root)
        self._alone.discard(root)
        self.mapped = {name: path for name, path in self.mapped.items() if root not in (path, path.parent)}
        gone = {name for name in gone if self.folder(name) is None}
        self.models -= gone
        log.info("model repository unregistered", extra={"repository": str(root)})
        return gone

    def owns(self, name: str) -> bool:
        """Whether a load of ``name`` by name reads a repository: a model it served, or one with a folder now."""
        return name not in self.others and (name in self.models or self.folder(name) is not None)

    def folders(self) -> tuple[dict[str, Path], bool]:
        """Every model folder now, by name, and whether every repository could be read (one that cannot is
        logged and left out: what it held is not gone, only unseen)."""
        found: dict[str, Path] = {}
        complete = True
        twice: set[str] = set()
        spread: set[str] = set()  # names whose copies are listed (namespacing)
        taken = set(self.mapped.values())
        for root in self._listed():
            try:
                names = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
            except OSError as e:
                log.warning("cannot read the model repository", extra={"repository": str(root), "error": e.strerror})
                complete = False
                continue
            for name in names:
                if name in self.others or root / name in taken:
                    continue
                if name in spread:
                    continue
                if name in found and self.rules.namespacing:  # a model in each of them, under its copy's name
                    for copy, holder in zip(self.copies(name), self._holding(name), strict=True):
                        found[copy] = holder / name
                    found.pop(name, None)
                    spread.add(name)
                    continue
                if name in found:
                    twice.add(name)
                    if name not in self._twice:  # said once, not at every poll
                        self._twice.add(name)
                        log.warning(
                            "a model folder is in two repositories; it does not load until one of them holds it alone",
                            extra={"model": name, "read": str(found[name]), "ignored": str(root / name)},
                        )
                    continue
                found[name] = root / name
        for name, path in self.mapped.items():
            if name in found:  # mapped, and a folder of that name elsewhere: as Triton's poll, in neither
                twice.add(name)
            elif path.is_dir() and name not in self.others:
                found[name] = path
        if complete:
            self.duplicated = twice
            self._twice &= twice  # said again should it come back
        return found, complete

    def read(
        self, store: Store, name: str, policy: Any = None, agents: Any = FOLDER_AGENTS, config: str | None = None
    ) -> tuple[RepositoryModel, list[model_files.Registered]]:
        """Read the model's folder again, registering the versions its policy picks now (or ``policy``, a
        load's ``version_policy``, picks) once the repository agents its config names (or ``agents``, those a
        load's config names, in its place) passed its files; ``config``: a load's, in place of the folder's where
        the model's file does not say what it takes (``_config_signature``); the model, and what registering did
        (for ``undo`` if its load fails)."""
        folder = self.unique_folder(name)
        copies = self.copies(name) if folder is None else []
        if copies:  # (namespacing) each copy is a model of its own, under its own name
            raise ambiguous(name, copies)
        if folder is None:
            raise NotFound(
                f"model {name!r} has no folder in --model-repository {self.shown()} now; put "
                "it back (or unload the model)"
            )
        done: list[model_files.Registered] = []
        try:
            mapped = name if name in self.mapped or name != folder.name else None  # (a copy's name: namespacing)
            model = register_folder(store, folder, done, policy, agents, self.rules, mapped, config)
        except BaseException:
            undo(store, done)
            raise
        if model.ensemble is not None:
            model = dataclasses.replace(model, ensemble=self.in_namespace(model.ensemble, folder))
        return model, done


def undo(store: Store, done: list[model_files.Registered]) -> None:
    """Take back what registering a repository did (a start that failed): the versions it added, the labels
    it changed, the versions whose bytes it replaced."""
    for registered in reversed(done):
        registered.undo(store)
    done.clear()


def settle(store: Store, done: list[model_files.Registered]) -> None:
    """What registering a repository did serves: remove the bytes of the versions it replaced (a version
    file rewritten in place), which ``undo`` needed."""
    for registered in done:
        registered.settle(store)
    done.clear()


def _register_model(
    store: Store,
    folder: Path,
    done: list[model_files.Registered],
    policy: Any = None,
    agents: Any = FOLDER_AGENTS,
    rules: FolderRules = FolderRules(),
    mapped_to: str | None = None,
    loaded_with: str | None = None,
) -> RepositoryModel:
    name = mapped_to or folder.name
    validate_name(name)
    config_path = rules.config_path(folder)
    config_file = config_path.relative_to(folder).as_posix()  # config.pbtxt, or configs/<name>.pbtxt
    doc: dict[str, Any] = {}
    text = None
    try:  # a config that cannot be read: Triton's poll of the folder fails (its strict readiness does not count it)
        if config_path.exists() and not config_path.is_file():
            raise InvalidRequest(f"its {config_file} is not a file")
        if config_path.is_file():
            text, doc = _read_config(config_path, config_file, name, mapped=mapped_to is not None)
    except PolystackError as e:
        raise e.before_model_read() from None
    if text is None and not rules.auto_complete:  # no config to read: Triton's poll of the folder fails
        raise InvalidRequest(
            f"it has no {CONFIG}, which --disable-auto-complete-config (Triton's strict model config) needs: add one "
            "that lists the model's inputs, outputs and max_batch_size, or serve without the flag"
        ).before_model_read()
    platform = str(doc.get("platform") or doc.get("backend") or "")
    versions = folder_versions(folder)
    if not versions:
        # Triton's words where neither its config nor a file names the backend (its auto-complete then tries a
        # custom backend by the model's name, which fails so), then polystack's
        triton = (
            f"Invalid model name: Could not determine backend for model '{name}' with no backend in model "
            "configuration. Expected model name of the form 'model.<backend_name>'. "
            if not platform and not is_ensemble(doc)
            else ""
        )
        raise InvalidRequest(
            f"{triton}it has no version folder (a number from 1: 1/, 2/, ...) holding its model file; add one, as "
            "Triton needs" + (" (an ensemble's is empty)" if is_ensemble(doc) else "")
        )
    own, doc = repository_agents.split(doc)  # run on the folder's files before anything is registered
    ran = repository_agents.verify(own if agents is FOLDER_AGENTS else agents, repository_agents.in_folder(folder))
    shown = ran if agents is FOLDER_AGENTS else ()  # the folder's, when they ran: GET config shows them with it
    served = pick_versions(
        policy if policy is not None else doc.get("version_policy", doc.get("versionPolicy")), versions, name
    )
    if is_ensemble(doc):
        text = json.dumps({k: v for k, v in doc.items() if k not in ("version_policy", "versionPolicy")})
        source = f"--model-repository {config_path}"
        written = doc.get("version_policy", doc.get("versionPolicy"))
        pipeline = read_ensemble(text, name, max(served))  # each version it picks runs these steps, as in Triton
        pipeline = dataclasses.replace(
            pipeline, agents=shown, versions=tuple(sorted(served)),
            written_policy=json.dumps(policy if policy is not None else written) if (policy or written) else "",
        )  # fmt: skip
        pipeline = with_labels(pipeline, folder)
        ensemble_config = model_config.ConfigFile(text, folder, source, served, written_policy=written)
        return RepositoryModel(name, served, ensemble_config, pipeline, ran)
    if loaded_with is not None:  # a load's config, whole, in place of the folder's, where it alone gives the signature
        given = config_text.parse_config(loaded_with)
        if _config_signature(given, folder / str(served[-1])) or _config_signature(doc, folder / str(served[-1])):
            doc = {k: v for k, v in given.items() if k not in ("version_policy", "versionPolicy")}
            text = json.dumps(doc)
    filename = str(doc.get("default_model_filename") or doc.get("defaultModelFilename") or "")
    if filename and (filename in (".", "..") or "/" in filename or "\\" in filename):
        raise InvalidRequest(f"default_model_filename {quote(filename)} must name a file in the version folder")
    latest = folder / str(served[-1])
    if _is_python(doc, latest):
        doc = {**doc, "backend": "python"}
    if doc.get("backend") == "python":
        return _register_python(store, folder, name, doc, served, filename or "model.py", done, rules, shown, ran)
    if doc.get("backend") == "fil":
        return _register_fil(store, folder, name, doc, served, filename, done, rules, shown, ran)
    if _is_aoti(doc, filename, latest):
        return _register_aoti(store, folder, name, doc, served, filename, done, rules, shown, ran)
    if _is_pytorch(doc, filename, latest):
        return _register_torchscript(store, folder, name, doc, served, filename, done, rules, shown, ran)
    backend = _python_backend(doc, rules)
    if backend is not None:
        return _register_python(store, folder, name, doc, served, "model.py", done, rules, shown, ran, backend)
    for asked in (doc.get("platform"), doc.get("backend")):  # each, whatever file it names (Triton's backend's)
        if asked and not isinstance(asked, str):
            raise InvalidRequest(f"its config's platform and backend must be strings, not {quote(asked)}")
        if asked and asked not in _DEFAULT_FILES:
            raise InvalidRequest(
                f"its config asks for {quote(asked)}, which polystack does not run from a repository; export the "
                "model to ONNX as model.onnx and leave platform and backend out (or set them to onnxruntime), or "
                "to OpenVINO IR as model.xml and model.bin with backend openvino (a tree model: backend fil; a TorchScript "
                "module: model.pt with platform pytorch_libtorch)"
            )
    served_text = None if text is None else _served_config(doc)  # what the server applies, checked at load
    labels = _label_files(folder, served_text)
    paths = []
    for version in served:  # every file found before anything is registered
        path = folder / str(version) / (filename or _DEFAULT_FILES.get(platform, "") or _guess(folder / str(version)))
        if path.is_dir():  # Triton's folder form of an ONNX model: model.onnx inside, its external data beside it
            if not (path / "model.onnx").is_file():
                raise InvalidRequest(
                    f"{path} is a folder without a model.onnx file in it; an ONNX model given as a folder (Triton's "
                    "form for models with external data) keeps its main file there as model.onnx"
                ).at_version(version)
            path = path / "model.onnx"
        if not path.is_file():
            raise InvalidRequest(_missing(path)).at_version(version)
        paths.append((version, path))
    for version, path in paths:
        with tempfile.TemporaryDirectory(prefix="polystack-repository-") as work:
            try:
                registered = model_files.register_file(
                    store, name, path, labels, Path(work), {}, version=version, exact_labels=True, triton_io=True,
                    label_names=config_text.label_files(served_text) if served_text is not None else None,
                )  # fmt: skip
            except PolystackError as e:
                e.at_version(version)
                raise
        done.append(registered)
        if registered.created:
            log.debug("registered from the model repository", extra={"model": name, "version": version, "file": str(path)})
    source = f"--model-repository {config_path}"
    written = doc.get("version_policy", doc.get("versionPolicy"))
    config = (
        None
        if served_text is None
        else model_config.ConfigFile(served_text, folder, source, served, agents=shown, written_policy=written)
    )
    return RepositoryModel(name, served, config, ran=ran)


def _python_backend(doc: dict[str, Any], rules: FolderRules) -> Path | None:
    """The folder of the Python-based backend a config names (Triton's: ``<backend directory>/<backend>/model.py``,
    as its vLLM backend ships), else None."""
    backend = doc.get("backend")
    if not isinstance(backend, str) or backend in ("", ".", "..", "python") or "/" in backend or "\\" in backend:
        return None
    if backend in _DEFAULT_FILES:  # a runtime polystack has of its own
        return None
    folder = rules.backend_directory / backend
    return folder if (folder / "model.py").is_file() else None


def _register_python(
    store: Store,
    folder: Path,
    name: str,
    doc: dict[str, Any],
    served: tuple[int, ...],
    file: str,
    done: list[model_files.Registered],
    rules: FolderRules,
    shown: repository_agents.Agents,
    ran: repository_agents.Agents,
    backend: Path | None = None,
) -> RepositoryModel:
    """Register a Triton Python-backend model's versions: each version folder and the config as one zip
    (``formats/python_model.py``), served by the ``python`` backend; a Python-based ``backend``'s model runs its
    ``model.py`` (packed with it) on its own version folder."""
    if not rules.python_models:
        what = f"its backend's {backend / 'model.py'}" if backend is not None else f"its {file}"
        raise InvalidRequest(
            f"it is a model for Triton's Python backend: {what} would run in the server's process, with the "
            "server's rights; start the server with --allow-python-models to serve it"
        )
    asked = doc  # what its load hands the model again is completed once, here (``completed_from``)
    # a copy's code (``name@repository``, namespacing) is handed the folder's name, as Triton names it
    own = folder.name if rules.namespacing and name.startswith(folder.name + NAMESPACE_MARK) else name
    if rules.auto_complete:  # its auto_complete_config completes the config, as Triton's Python backend calls it
        try:  # (on the newest version's model.py: a failure is that version's, as Triton's index lists it)
            doc = python.auto_complete(folder, served[-1], file, doc, own, backend)
        except PolystackError as e:
            raise e.at_version(served[-1]) from None
    config = {**doc, "name": own}  # the model's own, as its args give it (its backend's name in it)
    completed_from = asked if rules.auto_complete else None

    def pack(version: int, path: Path, work: Path) -> Path:
        return python_model.pack(folder, version, name, config, file, work / "model.zip", backend, completed_from)

    files = [(version, folder / str(version)) for version in served]
    served_doc = {**doc, "backend": "python"} if backend is not None else doc  # what runs it: the Python backend
    return _register_versions(store, folder, name, served_doc, files, pack, done, rules, shown, ran)


def _register_fil(
    store: Store,
    folder: Path,
    name: str,
    doc: dict[str, Any],
    served: tuple[int, ...],
    filename: str,
    done: list[model_files.Registered],
    rules: FolderRules,
    shown: repository_agents.Agents,
    ran: repository_agents.Agents,
) -> RepositoryModel:
    """Register the versions of a model for Triton's FIL backend: each version's tree model file and the
    settings its config gives (``fil_config.py``) as one zip (``formats/fil.py``), served by the fil backend."""
    settings = fil_config.settings(doc)
    paths = []
    for version in served:  # every file found before anything is registered
        path = folder / str(version) / (filename or fil.MODEL_TYPES[settings.model_type])
        if path.is_dir():  # as FIL reads a folder: its model type's file in it
            path = path / fil.MODEL_TYPES[settings.model_type]
        if not path.is_file():
            raise InvalidRequest(
                f"{path} is not there; put the model file there (Triton's FIL backend reads "
                f"{fil.MODEL_TYPES[settings.model_type]} for model_type {settings.model_type}), or name it with "
                f"default_model_filename in {CONFIG}"
            ).at_version(version)
        paths.append((version, path))

    def pack(version: int, path: Path, work: Path) -> Path:
        return fil.pack(path, settings, work / "model.fil.zip")

    return _register_versions(store, folder, name, doc, paths, pack, done, rules, shown, ran)


def _is_pytorch(doc: dict[str, Any], filename: str, latest: Path) -> bool:
    """Whether a folder's model is for Triton's PyTorch backend: its config says so (backend, platform, or a file
    named model.pt), or names no backend and its version folder holds a file model.pt and no model.onnx, as
    Triton's auto-complete finds one."""
    backend, platform = doc.get("backend"), doc.get("platform")
    given = [v for v in (backend, platform) if v]
    if not all(isinstance(v, str) for v in given):
        return False  # the platform and backend check says what is wrong with them
    named = [v for v in given if v in _PYTORCH]
    if named and len(named) != len(given):
        raise InvalidRequest(
            f"its config's platform {quote(platform)} and backend {quote(backend)} name different runtimes; give the "
            "one the model's file is for (a TorchScript model.pt: platform pytorch_libtorch)"
        )
    if given:
        return bool(named)
    return filename == "model.pt" or (
        not filename and (latest / "model.pt").is_file() and not (latest / "model.onnx").exists()
    )


def _config_signature(doc: dict[str, Any], latest: Path) -> bool:
    """Whether a folder whose config is ``doc`` holds a model whose file does not say what it takes, so that its
    config gives the signature it is registered with (Python, TorchScript, AOTInductor)."""
    filename = str(doc.get("default_model_filename") or doc.get("defaultModelFilename") or "")
    try:
        return _is_python(doc, latest) or _is_aoti(doc, filename, latest) or _is_pytorch(doc, filename, latest)
    except InvalidRequest:
        return False  # the registration says what is wrong with the config


def _is_python(doc: dict[str, Any], latest: Path) -> bool:
    """Whether a folder's model is a Python model (``is_python``), its latest version folder being ``latest``."""
    return is_python(doc, lambda f: (latest / f).is_file() if f.endswith(".py") else (latest / f).exists())


def is_python(doc: dict[str, Any], holds: Callable[[str], bool]) -> bool:
    """Whether a model is a Python model: its config says ``backend: "python"``, or it names neither platform nor
    backend (or there is none) and its version folder holds its file (model.py, or the .py file it names) and no
    other model's file, as Triton's auto-complete finds the Python backend. ``holds``: whether the version folder
    holds a file of that name (a repository's folder, or a load's files)."""
    if doc.get("backend") == "python":
        return True
    filename = doc.get("default_model_filename") or doc.get("defaultModelFilename") or "model.py"
    if doc.get("platform") or doc.get("backend") or not isinstance(filename, str) or not filename.endswith(".py"):
        return False
    others = {"model.onnx", "model.xml", "model.pt", "model.pt2", *_OTHER_FILES} - {"model.py"}  # another model's
    return holds(filename) and not any(holds(f) for f in others)


def _is_aoti(doc: dict[str, Any], filename: str, latest: Path) -> bool:
    """Whether a folder's model is an AOTInductor package for Triton's PyTorch backend: its config's platform is
    torch_aoti, or it names neither platform nor backend nor file and its version folder holds a model.pt2 that is
    a package and no model.pt or model.onnx, as Triton's auto-complete finds one (``backend: "pytorch"`` alone is
    TorchScript's, as in Triton)."""
    platform, backend = doc.get("platform"), doc.get("backend")
    if platform == AOTI:
        if backend not in (None, "", "pytorch"):
            raise InvalidRequest(
                f"its config's platform {quote(platform)} and backend {quote(backend)} name different runtimes; an "
                "AOTInductor package (model.pt2) is platform torch_aoti, backend pytorch"
            )
        return True
    if platform or backend or filename:
        return False
    found = latest / "model.pt2"
    return (  # its zip's index alone: a torch.export program of that name is registered as one
        found.is_file() and not (latest / "model.pt").exists() and not (latest / "model.onnx").exists()
        and torch_aoti.is_package_file(found)
    )  # fmt: skip


def _register_aoti(
    store: Store,
    folder: Path,
    name: str,
    doc: dict[str, Any],
    served: tuple[int, ...],
    filename: str,
    done: list[model_files.Registered],
    rules: FolderRules,
    shown: repository_agents.Agents,
    ran: repository_agents.Agents,
) -> RepositoryModel:
    """Register the versions of an AOTInductor package for Triton's PyTorch backend: each version's package and
    the config, which alone names its tensors, as one zip (``formats/torch_aoti.py``); served by the
    ``torch_aoti`` runtime."""
    if not rules.aoti_models:  # refused before torch reads a byte of it
        raise InvalidRequest(AOTI_REFUSED)
    config = {**doc, "name": name, "platform": AOTI}
    paths = _version_files(
        folder, served, filename or "model.pt2", "the AOTInductor package (torch._inductor.aoti_compile_and_package("
        "torch.export.export(model, args), package_path='model.pt2'))",
    )  # fmt: skip

    def pack(version: int, path: Path, work: Path) -> Path:
        return torch_aoti.pack(path, config, name, work / "model.torch_aoti.zip", str(path))

    return _register_versions(store, folder, name, {**doc, "platform": AOTI}, paths, pack, done, rules, shown, ran)


def _register_torchscript(
    store: Store,
    folder: Path,
    name: str,
    doc: dict[str, Any],
    served: tuple[int, ...],
    filename: str,
    done: list[model_files.Registered],
    rules: FolderRules,
    shown: repository_agents.Agents,
    ran: repository_agents.Agents,
) -> RepositoryModel:
    """Register the versions of a model for Triton's PyTorch backend: each version's TorchScript module and the
    config, which alone says what it takes and gives (Triton auto-completes nothing for it), as one zip
    (``formats/torchscript.py``). Its runtime is the plan's: ``torchscript`` by default."""
    named = folder / str(served[-1]) / (filename or "model.pt")
    if named.suffix == ".pt2" and torch_aoti.is_package_file(named):  # its zip index alone
        raise InvalidRequest(
            f"{named} is an AOTInductor package, which Triton's PyTorch backend serves with platform "
            '"torch_aoti" (backend "pytorch" alone is TorchScript\'s, as in Triton); set the platform in its config'
        )
    if not rules.torchscript_models:  # refused before torch reads a byte of it
        raise InvalidRequest(TORCHSCRIPT_REFUSED)
    config = {**doc, "name": name}
    paths = _version_files(
        folder, served, filename or "model.pt",
        "the TorchScript module (torch.jit.save(torch.jit.script(model), 'model.pt'))",
    )  # fmt: skip

    def pack(version: int, path: Path, work: Path) -> Path:
        return torchscript.pack(path, config, name, work / "model.torchscript.zip", str(path))

    return _register_versions(store, folder, name, doc, paths, pack, done, rules, shown, ran)


def _version_files(folder: Path, served: tuple[int, ...], filename: str, what: str) -> list[tuple[int, Path]]:
    """Each served version's ``filename`` (version, path), every one found before anything is registered; refused
    saying to put ``what`` there where one is missing."""
    paths = []
    for version in served:
        path = folder / str(version) / filename
        if not path.is_file():
            raise InvalidRequest(
                f"{path} is not there; put {what} there, or name it with default_model_filename in {CONFIG}"
            ).at_version(version)
        paths.append((version, path))
    return paths


def _register_versions(
    store: Store,
    folder: Path,
    name: str,
    doc: dict[str, Any],
    files: list[tuple[int, Path]],
    pack: Callable[[int, Path, Path], Path],
    done: list[model_files.Registered],
    rules: FolderRules,
    shown: repository_agents.Agents,
    ran: repository_agents.Agents,
) -> RepositoryModel:
    """Register each version's ``files`` (version, path) as the store keeps them packed, by ``pack(version, path,
    work folder)``, with the config the server applies (Python, FIL and TorchScript models)."""
    served_text = _served_config(doc)
    labels = _label_files(folder, served_text)
    for version, path in files:
        done.append(
            _register_packed(store, name, version, functools.partial(pack, version, path), str(path), labels, served_text)
        )
    source = f"--model-repository {rules.config_path(folder)}"
    written = doc.get("version_policy", doc.get("versionPolicy"))
    served = tuple(version for version, _ in files)
    config = model_config.ConfigFile(served_text, folder, source, served, agents=shown, written_policy=written)
    return RepositoryModel(name, served, config, ran=ran)


def _register_packed(
    store: Store,
    name: str,
    version: int,
    pack: Callable[[Path], Path],
    shown: str,
    labels: Mapping[str, Path],
    served_text: str,
) -> model_files.Registered:
    """Register one version of a model whose files the store keeps packed as one (a Python model's folder, a FIL
    model's file and settings): ``pack`` writes it in the work folder it is given; errors name it as ``shown``."""
    with tempfile.TemporaryDirectory(prefix="polystack-repository-") as work:
        try:
            packed = pack(Path(work))
            return model_files.register_file(
                store, name, packed, labels, Path(work), {packed: shown}, version=version, exact_labels=True,
                triton_io=True, label_names=config_text.label_files(served_text),
            )  # fmt: skip
        except PolystackError as e:
            e.at_version(version)
            raise


def _read_config(path: Path, shown: str, name: str, mapped: bool = False) -> tuple[str, dict[str, Any]]:
    """A folder's config file as JSON text and as a document; refused where it cannot be read, is not one
    config, or names another model. A folder ``mapped`` to a name has that name whatever its config says, as in
    Triton (SageMaker's archives name the folder, or what they like)."""
    try:
        raw = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise InvalidRequest(f"cannot read {shown}: {e.strerror if isinstance(e, OSError) else 'not UTF-8'}") from None
    try:
        text = config_text.as_json(raw)
    except InvalidRequest as e:  # which file (helper-269: with --model-config-name, not the config.pbtxt it said)
        raise e.prefixed(shown) from None
    doc = json.loads(text)
    if not isinstance(doc, dict):
        raise InvalidRequest(f"{shown} must hold one model configuration (protobuf text, or a JSON object)")
    given = doc.get("name")
    if given and given != name and not mapped:
        raise InvalidRequest(  # Triton's words (its repository poll), then polystack's
            f"unexpected directory name {quote(name)} for model {quote(given)}, directory name must equal model name: "
            f"its {shown} names model {quote(given)}; rename the folder, or the config's name"
        )
    if given and given != name:
        doc["name"] = name
        text = json.dumps(doc)
    return text, doc


def folder_versions(folder: Path) -> list[int]:
    """The version folders, as Triton counts them: names of digits without a leading zero (within the
    store's 64-bit versions)."""
    found = []
    for p in folder.iterdir():
        n = p.name
        digits = n.isascii() and n.isdigit() and not n.startswith("0") and len(n) <= len(str(MAX_VERSION))
        if digits and p.is_dir() and int(n) <= MAX_VERSION:
            found.append(int(n))
    return sorted(found)


def _count(value: Any, what: str) -> int:
    """A whole number from a config (protobuf's JSON writes 64-bit ones as strings); no fractions."""
    if isinstance(value, float) and value.is_integer() and abs(value) < 2**64:
        value = int(value)  # protobuf's JSON takes 2.0 for 2
    if isinstance(value, int) and not isinstance(value, bool) and abs(value) < 1 << 64:
        return value
    text = value.strip() if isinstance(value, str) else ""
    digits = text[1:] if text[:1] in ("+", "-") else text  # one sign at most
    if not digits.isdigit() or not digits.isascii() or len(digits) > 20:  # a uint64's digits at most
        raise InvalidRequest(f"{what} must be whole numbers (of at most 20 digits), not {quote(value)}")
    return int(text)


# Triton's version_policy where a config gives none (NormalizeModelConfig): the latest version
DEFAULT_POLICY: Mapping[str, Any] = {"latest": {"num_versions": 1}}


def pick_versions(value: Any, versions: list[int], model: str = "") -> tuple[int, ...]:
    """The versions Triton's ``version_policy`` picks among ``versions`` (default: the latest one); versions it
    names that ``model`` lacks are logged (none named: not logged, a policy only compared)."""
    if value is None:
        return (versions[-1],)
    if isinstance(value, Mapping) and not value:
        return tuple(versions)  # an empty message: Triton's version manager then loads every version
    if not isinstance(value, Mapping) or len(value) != 1:
        raise InvalidRequest("version_policy must be one of latest, all or specific")
    [(kind, body)] = value.items()
    body = body or {}
    if not isinstance(body, Mapping):
        raise InvalidRequest(f"version_policy {kind} must be a message")
    if kind == "all":
        return tuple(versions)
    if kind == "latest":
        n = _count(body.get("num_versions", body.get("numVersions", 0)), "version_policy latest num_versions")
        if not 1 <= n <= (1 << 32) - 1:  # a uint32
            raise InvalidRequest(f"version_policy latest needs num_versions from 1 to 4294967295, not {n}")
        return tuple(versions[-n:])
    if kind == "specific":
        wanted = body.get("versions") or []
        if not isinstance(wanted, list):
            raise InvalidRequest("version_policy specific versions must be a list of version numbers")
        picked = sorted({_count(v, "version_policy specific versions") for v in wanted})
        there = tuple(v for v in picked if v in versions)
        if not there:
            raise InvalidRequest(
                f"version_policy specific asks for versions {picked}, but the model's versions are {versions}; "
                "name versions it has"
            )
        if len(there) < len(picked) and model:  # Triton serves the others, and says so, naming the model
            log.warning(
                f"version_policy of model {model!r} names versions it does not have; serving the others",
                extra={"model": model, "missing": [v for v in picked if v not in versions], "serving": list(there)},
            )
        return there
    raise InvalidRequest(f"version_policy {quote(kind)} is not latest, all or specific")


def policy_json(value: Mapping[str, Any]) -> dict[str, Any]:
    """A version policy ``pick_versions`` took, as GET config shows one: protobuf's field names, whole numbers."""
    [(kind, body)] = value.items()
    body = body or {}
    if kind == "latest":
        return {"latest": {"num_versions": _count(body.get("num_versions", body.get("numVersions", 0)), "")}}
    if kind == "specific":
        return {"specific": {"versions": sorted({_count(v, "") for v in body.get("versions") or []})}}
    return {"all": {}}


def _guess(version_dir: Path) -> str:
    """The model file of a version folder without a config that names it: model.onnx, model.xml (OpenVINO IR,
    as Triton's auto-complete finds one), or its one file."""
    for name in ("model.onnx", "model.xml"):
        if (version_dir / name).exists():
            return name
    files = [p.name for p in version_dir.iterdir() if not p.name.startswith(".") and p.name not in _OTHER_FILES]
    return files[0] if len(files) == 1 and (version_dir / files[0]).is_file() else "model.onnx"


def _missing(path: Path) -> str:
    other = [f"{n} ({what})" for n, what in _OTHER_FILES.items() if (path.parent / n).exists() and n != "model.py"]
    if not other and (path.parent / "model.py").is_file():  # served, as a Python model: the config named another
        return (
            f"{path} is not there, and {path.parent} holds model.py, a model for Triton's Python backend; to serve "
            f"that, leave platform and backend out of {CONFIG} or set backend: \"python\""
        )
    if other:
        return (
            f"{path.parent} holds {', '.join(other)}, which polystack does not serve; export the model to ONNX "
            "(model.onnx), or register it in a format polystack reads (`polystack register`)"
        )
    return f"{path} is not there; put the model file there, or name it with default_model_filename in {CONFIG}"


def _label_files(folder: Path, text: str | None) -> dict[str, Path]:
    """The label files the config's outputs name, by output, in the model folder (where Triton reads them)."""
    if text is None:
        return {}
    return {output: label_file_in(folder, output, label) for output, label in config_text.label_files(text).items()}


def _served_config(doc: dict[str, Any]) -> str:
    """The config the server applies: without what chose the platform and the versions (done here), and without a
    backend that leaves the runtime to polystack's plan; the file's name stays, for GET config to show."""
    skip = {"platform", "version_policy", "versionPolicy"}
    if doc.get("backend") not in _CHOOSING:
        skip.add("backend")
    return json.dumps({k: v for k, v in doc.items() if k not in skip})
