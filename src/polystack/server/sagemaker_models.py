"""SageMaker's multi-model endpoints, as Triton's SageMaker front end serves them: the models SageMaker loads,
invokes and unloads by a name of its own (a hash of the archive's S3 key), each archive unpacked by SageMaker in a
folder of its own (``/opt/ml/models/<hash>/model``), and served under the name SageMaker's
``X-Amzn-SageMaker-Target-Model`` header gives (the archive's key, ``resnet.tar.gz``; without the header, the
hash), as tritonserver 2.51 does:

- the folder is a repository of its own, registered while serving with its model folder mapped to that name, and
  the model is loaded by name, as a repository load loads it (``RepositoryExtension.load_repository``, one change:
  a load that fails takes back all it did); an ensemble's models are the repository's other folders, served under
  their own names;
- the model folder is the archive folder itself where it holds a ``config.pbtxt``, else the one folder in it, or
  the ensemble among its folders;
- an unload unloads the model and the models an ensemble runs, waits for what they were running, unregisters the
  repository and takes back the store rows the load made (``RepositoryExtension.unload_repository``).

Transport-free: the SageMaker port (``sagemaker.py``) answers with Triton's statuses.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import re
from collections.abc import Awaitable, Coroutine
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from polystack.errors import AlreadyExists, InvalidName, InvalidRequest, NotFound, quote
from polystack.server.dataplane import DataPlane
from polystack.server.model_repository import CONFIG
from polystack.store import ModelRecord, validate_name

log = logging.getLogger("polystack.server")
T = TypeVar("T")

_ENSEMBLE = re.compile(r'platform:\s*"ensemble"')  # how Triton's front end finds the ensemble among the folders
_SYSTEM = ("/dev/", "/proc/", "/sys/")  # folders Triton's front end never reads models from
UNLOAD_WAIT_S = 350.0  # SageMaker gives an unload 360 s; Triton waits this long for its model to stop
# the words by which Triton's front end knows a failure as the memory running out: 507, so that SageMaker unloads
# other models and tries again
_OUT_OF_MEMORY = (
    "CUDA out of memory", "CUDA_OUT_OF_MEMORY", "Out of memory", "Out Of Memory", "out of memory", "MemoryError",
    "OutOfMemory", "OOM", "Dst tensor is not initialized", "Src tensor is not initialized",
    "CNMEM_STATUS_OUT_OF_MEMORY", "CUDNN_STATUS_NOT_INITIALIZED", "CUBLAS_STATUS_ALLOC_FAILED",
    "CUBLAS_STATUS_NOT_INITIALIZED", "Failed to allocate memory", "failed to allocate memory",
    "No space left on device",
)  # fmt: skip


def out_of_memory(message: str) -> bool:
    """Whether a failure's words say the memory (or the disk) ran out, as Triton's front end reads them."""
    return any(words in message for words in _OUT_OF_MEMORY)


@dataclass(frozen=True)
class Archive:
    """One model SageMaker loaded: its name for it, the repository registered for it (GET /models shows it as
    the model's URL), the name the model serves under, and the store rows its load made (its unload takes them
    back)."""

    name: str
    repository: Path
    model: str
    made: tuple[ModelRecord, ...] = ()


class MultiModels:
    """The models a SageMaker multi-model endpoint loaded, by SageMaker's names for them. A load or unload runs
    to its end even when its client goes (SageMaker tries again; what it finds then is consistent), and one name
    is loaded or unloaded by one request at a time."""

    def __init__(self, plane: DataPlane) -> None:
        self.plane = plane
        self._archives: dict[str, Archive] = {}
        self._busy: set[str] = set()  # names a load or unload is changing now

    def get(self, name: str) -> Archive | None:
        return self._archives.get(name)

    def listed(self) -> list[Archive]:
        """The models loaded and ready, in the order they were loaded."""
        return [a for a in list(self._archives.values()) if self.plane.model_ready(a.model, None)]

    async def load(self, name: str, url: str, model: str | None) -> Archive:
        """Load the archive SageMaker unpacked at ``url`` as ``name``, served as ``model`` (None: as ``name``).
        ``AlreadyExists`` where ``name``, its folder or ``model`` are loaded already; the load's own failure
        otherwise, having taken back all it did."""
        if not name:
            raise InvalidRequest('a load needs "model_name", SageMaker\'s name for the model')
        if not url:
            raise InvalidRequest('a load needs "url", the folder that holds the model\'s files')
        target = model or name
        model = served_name(target)
        where = Path(os.path.abspath(os.path.normpath(url)))
        if (str(where) + "/").startswith(_SYSTEM):
            raise InvalidRequest(f"url {quote(url)}: a model is never read from /dev/, /proc/ or /sys/")
        if (where / CONFIG).is_file():  # the model folder itself: a repository of that one model
            repository, folder = where, ""
        else:
            repository, folder = where, _model_folder(where)
        loaded = self._archives.get(name)
        if loaded is not None:  # as Triton words it for the same folder
            raise AlreadyExists(
                f"model repository '{loaded.repository}' has already been registered"
                if loaded.repository == repository
                else f"SageMaker model {quote(name)} is loaded already, from {loaded.repository}; unload it first"
            )
        self._reserve(name)
        log.info(
            "loading a SageMaker model",
            extra={"model": model, "sagemaker_name": name, "url": str(where), **({"target": target} if target != model else {})},
        )
        return await _to_the_end(self._load(name, repository, folder, model))

    async def _load(self, name: str, repository: Path, folder: str, model: str) -> Archive:
        try:
            made = await self.plane.repository_extension.load_repository(repository, {folder: model}, model)
            archive = Archive(name, repository, model, tuple(made))
            self._archives[name] = archive
            return archive
        finally:
            self._busy.discard(name)

    async def unload(self, name: str) -> None:
        """Unload the model SageMaker loaded as ``name`` (and the models its ensemble runs), wait for what it
        runs, unregister its repository and take back the store rows its load made. ``NotFound`` where none is
        loaded so."""
        archive = self._archives.get(name)
        if archive is None:
            raise NotFound(f"no SageMaker model {quote(name)} is loaded")
        self._reserve(name)
        log.info("unloading a SageMaker model", extra={"model": archive.model, "sagemaker_name": name})
        await _to_the_end(self._unload(archive))

    async def _unload(self, archive: Archive) -> None:
        try:
            extension = self.plane.repository_extension
            finished = await extension.unload_repository(archive.repository, archive.model, archive.made, UNLOAD_WAIT_S)
            self._archives.pop(archive.name, None)
        finally:
            self._busy.discard(archive.name)
        if not finished:
            log.error(
                f"the unload did not finish within {UNLOAD_WAIT_S:g} s, which may time out SageMaker's",
                extra={"model": archive.model},
            )

    def _reserve(self, name: str) -> None:
        if name in self._busy:
            raise AlreadyExists(f"SageMaker model {quote(name)} is being loaded or unloaded now; try again once it is")
        self._busy.add(name)


def served_name(target: str) -> str:
    """The name a model SageMaker names ``target`` serves under: ``target`` itself where it is a model name
    polystack takes, else one made of it (characters other than letters, digits, '.', '_' and '-' as '_', cut to
    fit, and a hash of the whole, so that two targets never share one): SageMaker's keys may hold S3 folders
    (``team/resnet/model.tar.gz``) and run to 1024 characters."""
    try:
        return validate_name(target)
    except InvalidName:
        pass
    readable = re.sub(r"[^A-Za-z0-9._-]", "_", target).replace("..", "__").lstrip("._-")[:100]
    digest = hashlib.sha256(target.encode("utf-8", "surrogatepass")).hexdigest()[:16]
    return f"{readable}-{digest}" if readable else f"model-{digest}"


def _to_the_end(change: Coroutine[Any, Any, T]) -> Awaitable[T]:
    """``change``, run to its end even when its client goes (the awaiting request is cancelled then); its
    failure is its client's answer, and not logged as lost when no client is left to take it."""
    task = asyncio.ensure_future(change)
    task.add_done_callback(lambda t: t.cancelled() or t.exception())
    return asyncio.shield(task)


def _model_folder(where: Path) -> str:
    """The model folder of an archive folder: its one folder, else the ensemble among them (whose models are the
    others)."""
    if not where.is_dir():
        raise InvalidRequest(f"failed to register '{where}', repository not found")
    try:
        folders = sorted(p for p in where.iterdir() if p.is_dir() and not p.name.startswith("."))
    except OSError as e:
        raise InvalidRequest(f"cannot read {where}: {e.strerror}") from None
    ensembles = [p.name for p in folders if _is_ensemble(p)]
    if len(ensembles) == 1:
        return ensembles[0]
    if len(folders) == 1:
        return folders[0].name
    if not folders:
        raise InvalidRequest(f"{where} holds no model folder; the archive holds <model>/{CONFIG} and <model>/1/")
    raise InvalidRequest(
        f"{where} holds {len(folders)} model folders ({', '.join(p.name for p in folders)}) and "
        f"{'several ensembles' if ensembles else 'no ensemble'}: which one is the model is unknown; put one "
        "model in an archive, or one ensemble and the models it runs"
    )


def _is_ensemble(folder: Path) -> bool:
    try:
        return bool(_ENSEMBLE.search((folder / CONFIG).read_text(encoding="utf-8", errors="replace")))
    except OSError:
        return False
