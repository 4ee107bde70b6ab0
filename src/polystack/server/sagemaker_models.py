"""SageMaker's multi-model endpoints, as Triton's SageMaker front end serves them: the models SageMaker loads,
invokes and unloads by a name of its own (a hash of the archive's S3 key), each archive unpacked by SageMaker in a
folder of its own (``/opt/ml/models/<hash>/model``), and served under the name SageMaker's
``X-Amzn-SageMaker-Target-Model`` header gives (the archive's key, ``resnet.tar.gz``; without the header, the
hash), as tritonserver 2.51 does:

- the folder is a repository of its own, registered while serving with its model folder mapped to that name
  (``DataPlane.register_repository``), then the model is loaded by name, as a repository load loads it; an
  ensemble's models are the repository's other folders, served under their own names;
- the model folder is the archive folder itself where it holds a ``config.pbtxt``, else the one folder in it, or
  the ensemble among its folders;
- an unload unloads the model and the models an ensemble runs, waits for what they were running, and unregisters
  the repository.

Transport-free: the SageMaker port (``sagemaker.py``) answers with Triton's statuses.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path

from polystack.errors import AlreadyExists, InvalidRequest, NotFound, PolystackError, quote
from polystack.server.dataplane import DataPlane
from polystack.server.model_repository import CONFIG

log = logging.getLogger("polystack.server")

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
    the model's URL), the model folder there, and the name the model serves under."""

    name: str
    repository: Path
    folder: str
    model: str
    registered: frozenset[str] = frozenset()  # the names its load registered in the store, which its unload removes


class MultiModels:
    """The models a SageMaker multi-model endpoint loaded, by SageMaker's names for them."""

    def __init__(self, plane: DataPlane) -> None:
        self.plane = plane
        self._archives: dict[str, Archive] = {}

    def get(self, name: str) -> Archive | None:
        return self._archives.get(name)

    def listed(self) -> list[Archive]:
        """The models loaded and ready, in the order they were loaded."""
        return [a for a in list(self._archives.values()) if self.plane.model_ready(a.model, None)]

    async def load(self, name: str, url: str, model: str | None) -> Archive:
        """Load the archive SageMaker unpacked at ``url`` as ``name``, served as ``model`` (None: as ``name``).
        ``AlreadyExists`` where ``name``, its folder or ``model`` are loaded already; the load's own failure
        otherwise, the repository unregistered again."""
        if not name:
            raise InvalidRequest('a load needs "model_name", SageMaker\'s name for the model')
        if not url:
            raise InvalidRequest('a load needs "url", the folder that holds the model\'s files')
        model = model or name
        where = Path(os.path.abspath(os.path.normpath(url)))
        if (str(where) + "/").startswith(_SYSTEM):
            raise InvalidRequest(f"url {quote(url)}: a model is never read from /dev/, /proc/ or /sys/")
        if (where / CONFIG).is_file():  # the model folder itself
            repository, folder = where.parent, where.name
        else:
            repository, folder = where, _model_folder(where)
        loaded = self._archives.get(name)
        if loaded is not None and loaded.repository != repository:  # the same folder: refused as Triton words it
            raise AlreadyExists(f"SageMaker model {quote(name)} is loaded already, from {loaded.repository}; unload it first")
        log.info("loading a SageMaker model", extra={"model": model, "sagemaker_name": name, "url": str(where)})
        loop = asyncio.get_running_loop()
        before = await loop.run_in_executor(None, self._stored)
        await self.plane.register_repository(repository, {folder: model})
        try:
            await self.plane.repository_load(model)
        except BaseException:
            try:
                await self.plane.unregister_repository(repository)
            except PolystackError as e:  # the load's failure is the answer
                log.warning("unregistering a failed load's repository failed", extra={"error": e.message})
            raise
        added = frozenset(await loop.run_in_executor(None, self._stored) - before)
        archive = Archive(name, repository, folder, model, added)
        self._archives[name] = archive
        return archive

    def _stored(self) -> set[str]:
        return {r.name for r in self.plane.store.models.list()}

    async def unload(self, name: str) -> None:
        """Unload the model SageMaker loaded as ``name`` (and the models its ensemble runs), wait for what it
        runs, and unregister its repository. ``NotFound`` where none is loaded so."""
        archive = self._archives.get(name)
        if archive is None:
            raise NotFound(f"no SageMaker model {quote(name)} is loaded")
        log.info("unloading a SageMaker model", extra={"model": archive.model, "sagemaker_name": name})
        await self.plane.repository_unload(archive.model, {"unload_dependents": True})
        loop = asyncio.get_running_loop()
        if not await loop.run_in_executor(None, self.plane.wait_retired, UNLOAD_WAIT_S):
            log.error(
                f"the unload did not finish within {UNLOAD_WAIT_S:g} s, which may time out SageMaker's",
                extra={"model": archive.model},
            )
        self._archives.pop(name, None)
        await self.plane.unregister_repository(archive.repository)
        # what its load registered goes too: SageMaker loads and unloads models for as long as the endpoint lives,
        # and would otherwise fill the store's disk with copies of every model it ever loaded
        gone = [m for m in sorted(archive.registered) if not self.plane.model_ready(m, None)]
        await loop.run_in_executor(None, lambda: [self.plane.store.remove(m) for m in gone])
        if gone:
            log.info("removed from the store what the SageMaker model's load registered", extra={"models": gone})


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
