"""Triton's model repository extension: the index, loads and unloads by name, and the repository's polls.

``GET/POST /v2/repository/index``, ``/v2/repository/models/{m}/load`` and ``unload`` (gRPC's RepositoryIndex,
RepositoryModelLoad and RepositoryModelUnload), a model's ``pb_utils.load_model``, Triton's poll mode
(``serve --repository-poll-secs``) and the repository registrations of SageMaker's multi-model endpoints, in
Triton's words and codes. Each load or unload is a change on the data plane's loader (``DataPlane.control``), in
flight like a request; the plane builds, routes and retires what it serves, and both keep what they learn of a
name's loads in the ``LoadHistory`` they share. The transports call this object (``DataPlane.repository_extension``)
and hold no logic of their own.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import io
import json
import logging
import zipfile
from collections.abc import Callable, Collection, Mapping, Sequence
from contextvars import ContextVar
from pathlib import Path
from typing import TYPE_CHECKING, Any

from polystack.engine import LoadedEntry
from polystack.errors import (
    AlreadyExists,
    Conflict,
    InvalidRequest,
    ModelControlOff,
    NotFound,
    NotUnique,
    PollFailed,
    PolystackError,
    ShuttingDown,
    StepNotServed,
    Unsupported,
    load_failed_words,
    quote,
)
from polystack.formats import torchscript_guard
from polystack.server import config_text, ensemble, model_config, model_files, model_repository, repository_agents
from polystack.server.load_history import LoadHistory
from polystack.store import ModelRecord, ModelRef

if TYPE_CHECKING:
    from polystack.server.dataplane import DataPlane

log = logging.getLogger("polystack.server")

# set while a load of uploaded files plans the version they make: a Python model's args["model_repository"] names its
# copy then (Triton's: a folder of its own), not the repository's folder of the same name (``ModelLoads._local_folder``)
UPLOADED: ContextVar[bool] = ContextVar("polystack_uploaded_files", default=False)


def _one_repository(repository_name: str) -> None:
    """Triton's refusal of a repository named in an index, load or unload (gRPC's ``repository_name``): UNSUPPORTED,
    where polystack answered of every repository (tritonserver 2.51, helper-107)."""
    if repository_name:
        raise Unsupported(
            "'repository_name' specification is not supported; leave it out: the request is of every repository"
        )


def _polled(name: str) -> str:
    """Triton's words for a load whose model could not be read (``PollFailed``)."""
    return f"failed to load {quote(name, 140)}, failed to poll from model repository"


def _asks_python(config: str, parameters: Mapping[str, Any]) -> bool:
    """Whether a load's config (JSON, not yet read: that comes with its files) and files are a model for Triton's
    Python backend (``model_repository.is_python``)."""
    try:
        doc = json.loads(config)
    except ValueError:
        return False
    if not isinstance(doc, dict):
        return False
    names = model_files.version_paths(parameters)
    return model_repository.is_python(doc, names.__contains__)


def _is_torchscript(files: model_files.ModelFiles | model_files.Folder, config: str) -> bool:
    """Whether a load's files are a TorchScript module (its archive, a model.pt, or a config that names PyTorch's
    backend), found without reading it."""
    if not isinstance(files, model_files.ModelFiles):
        return False
    if files.model_path.endswith(".pt") or model_config.triton_format(config) == "torchscript":
        return True
    try:
        with zipfile.ZipFile(io.BytesIO(files.model)) as zf:
            return torchscript_guard.is_archive(zf.namelist())
    except (zipfile.BadZipFile, OSError, ValueError):
        return False


def _is_aoti(files: model_files.ModelFiles | model_files.Folder, config: str) -> bool:
    """Whether a load's files are an AOTInductor package (a config with platform torch_aoti, or a package's
    entries), found without reading it."""
    if not isinstance(files, model_files.ModelFiles):
        return False
    return model_files.is_aoti(files.model_path, files.model, config)


def load_refused(name: str, e: PolystackError) -> PolystackError:
    """``e``, a repository load of model ``name`` that failed once its model was read, with tritonserver 2.51's
    words first ("load failed for model 'm': ..."; its L0 tests look for them, helper-118); a load whose model
    could not be read is ``PollFailed``'s "failed to load 'm', failed to poll from model repository"."""
    return e.prefixed(f"load failed for model {quote(name, 140)}")


class RepositoryExtension:
    """The model repository extension of ``plane``: what its transports, its models and its polls ask of the
    repository, each answered by a change of what the plane serves."""

    def __init__(self, plane: DataPlane) -> None:
        self.plane = plane

    @property
    def history(self) -> LoadHistory:
        """What the plane keeps of each name's loads, which the extension reads and writes too."""
        return self.plane.history

    def _check_control(self) -> None:
        """A load or unload refused as Triton refuses it where its model control is not explicit (its poll
        mode, and its default, none): 503 / UNAVAILABLE in Triton's words, then what to do."""
        if self.plane.repository is not None and self.plane.repository.polled:  # Triton's poll mode
            raise ModelControlOff(
                "explicit model load / unload is not allowed if polling is enabled; change the model's folder in "
                "the repository, and the next poll loads what changed (serve --repository-poll-secs)"
            )
        if not self.plane.allow_model_control:
            raise ModelControlOff(
                "explicit model load / unload is not allowed if polling is enabled (Triton's words: model control "
                "is off); start the server with --allow-model-control (or Triton's --model-control-mode explicit) to "
                "load and unload models (under --engine ray, which has none, name the models at start)"
            )

    async def index(self, ready_only: bool = False, repository_name: str = "") -> list[dict[str, Any]]:
        """The repository index, read on a thread: it lists the store (with model control), and the repositories'
        folders (a network file system may be slow to answer), which the event loop must not wait for."""
        _one_repository(repository_name)
        return await asyncio.get_running_loop().run_in_executor(None, self._index, ready_only)

    def _index(self, ready_only: bool) -> list[dict[str, Any]]:
        """As Triton's index lists models: each version served, ``READY``; each version this server stopped
        serving, ``UNAVAILABLE`` with the reason ``unloaded``; a name whose last load failed and that nothing
        else lists, ``UNAVAILABLE`` with the failure; every other name a load could serve (the store's, the
        repository's folders), by its name alone. Without model control no load serves the store's models:
        those not served are not listed (as Triton's index lists its repository, not whatever else the disk holds)."""
        # the versions loading, read before those served: a load routes to its versions before it stops calling
        # them loading, so a version read in neither (a load ending between the two reads) cannot be
        building = frozenset(self.plane.loading)
        ready = {(e.name, e.version) for e in self.plane.engine.loaded() if e.name not in self.plane.ensembles}
        ready |= {(name, each.ensemble.version) for name, p in list(self.plane.ensembles.items()) for each in p.every}
        out: list[dict[str, Any]] = [{"name": n, "version": str(v), "state": "READY"} for n, v in ready]
        if not ready_only:
            # what a load could serve (the store's models, the repository's folders): nothing else is listed
            store = self.plane.allow_model_control and not self.plane.repository_only
            names = {r.name for r in self.plane.store.models.list()} if store else set()
            if self.plane.repository is not None:
                names |= self.plane.repository.folders()[0].keys()
                names |= self.plane.repository.others if self.plane.repository_only else set()
            names |= self.history.noted  # a model that failed at start (--exit-on-error false): listed with why
            gone = {(n, v) for n, v in frozenset(self.history.stopped) - ready if n in names}
            loading = {(n, v) for n, v in building - ready if n in names}
            gone -= loading
            out += [{"name": n, "version": str(v), "state": "UNAVAILABLE", "reason": "unloaded"} for n, v in gone]
            out += [{"name": n, "version": str(v), "state": "LOADING"} for n, v in loading]
            listed = {n for n, _ in ready | gone | loading}
            failed = {n: f for n, f in list(self.history.failures.items()) if n in names and (n, f[0]) not in ready}
            for n, (v, why) in failed.items():  # the version that failed, as Triton lists it, else the name
                if (n, v) in loading:  # loaded again now
                    continue
                if (n, v) in gone:  # unloaded before; its load failed since
                    out = [m for m in out if (m["name"], m.get("version")) != (n, str(v))]
                if v is not None or n not in listed:
                    at = {} if v is None else {"version": str(v)}
                    out.append({"name": n, **at, "state": "UNAVAILABLE", "reason": why})
            out += [{"name": n} for n in names - listed - failed.keys()]
        return sorted(out, key=lambda m: (m["name"], int(m.get("version") or 0)))

    def note_unmet(self, name: str) -> None:
        """A repository ensemble that failed to load at start for want of its models (``--exit-on-error false``):
        a poll that changes models tries it again, as it tries an ensemble a poll could not load."""
        if self.plane.repository is not None and self.plane.repository.folder(name) is not None:
            self.history.unmet.add(name)

    def note_failed_load(self, name: str, e: PolystackError) -> None:
        """A load of ``name`` at start that failed, the server serving on without it (``serve --exit-on-error
        false``): the index lists it with why, and strict readiness counts it."""
        self.history.noted.add(name)
        self.history.failed(name, e)

    async def load(self, name: str, parameters: dict[str, Any] | None = None, repository_name: str = "") -> None:
        """Triton's repository load of ``name``: from its repository folder (or the store, with model control), or
        from the request's ``file:`` parameters with their ``config``; with --model-namespacing, each copy of a name
        two repositories hold. The repository ensembles waiting for it load again once it serves."""
        _one_repository(repository_name)
        self._check_control()
        if not isinstance(name, str) or not name:
            raise InvalidRequest("a model name is required")
        parameters = parameters or {}
        for key in parameters:  # a misspelt config= loaded the folder's config, the client none the wiser
            if key != "config" and not key.startswith("file:"):
                raise InvalidRequest(  # Triton's words (tritonserver 2.51 refuses the load: helper-107)
                    f"unrecognized load parameter {quote(key, 140)}.; a load takes 'config' (the model "
                    "configuration as JSON) and 'file:<path>' (the model's files)"
                )
        copies = self.plane.copies(name) if not model_files.given(parameters) else []
        failures: list[PolystackError] = []
        for each in copies or [name]:  # (--model-namespacing) a name two repositories hold: the copy of each
            try:
                await self._load_asked(each, parameters)
            except PolystackError as e:  # in the log too, as Triton logs a load that failed (its QA greps the words)
                if not isinstance(e, ShuttingDown):
                    log.error(load_failed_words(each, e.message), extra={"model": each})
                if not copies or isinstance(e, ShuttingDown):
                    raise
                failures.append(e)  # the other copies load all the same, as Triton loads each
        if len(failures) < len(copies or [name]):
            await self._replace_copies(name, copies)
        for each in copies or [name]:
            if self.history.unmet:
                try:  # the load succeeded whatever this does: its client hears so
                    await self.plane.control(self._restore_dependents, each)
                except ShuttingDown:
                    pass
                except Exception:
                    log.exception("loading again the ensembles that run a model failed", extra={"model": each})
        if failures:  # each copy that failed, in Triton's words for each
            raise failures[0] if len(failures) == 1 else InvalidRequest("; ".join(e.message for e in failures))

    async def _replace_copies(self, name: str, copies: list[str]) -> None:
        """(--model-namespacing) After a load of ``name`` as ``copies`` (none: as itself): what served it otherwise
        is unloaded, a copy whose repository no longer holds it, or the folder's own name where copies serve now;
        the ensembles that ran them load again, each running its repository's copy."""
        stale = [n for n in self.plane.served_copies(name) if n not in copies]
        if copies and self.plane.serves(name):  # served by its name before a copy came
            stale.append(name)
        for each in stale:
            await self.plane.control(lambda n: self._unload_by_name(n, False), each)

    async def _load_asked(self, name: str, parameters: dict[str, Any]) -> None:
        """The load ``load`` was asked for, its parameters checked: from the request's files, or the
        repository's folder (brought up to date first where it is a bucket's copy)."""
        repository = self.plane.repository if self.plane.repository_only else None
        files = model_files.given(parameters)
        if files and "config" not in parameters:
            raise PollFailed(  # Triton's words and code, then what to do
                f"{_polled(name)}: a load with file: parameters needs the 'config' parameter too, the model "
                "configuration of those files"
            )
        if repository is not None and not files and repository.clouds and not self._in_repository(name, repository):
            # a folder added to a bucket since the copy was last brought up to date: its copy first, as Triton's
            # explicit mode reads the repository as it is now (on the loader, in turn with the loads)
            await asyncio.wrap_future(self.plane.loader.submit(self._refresh, repository, name))
        if repository is not None and not files and not self._in_repository(name, repository):
            raise PollFailed(  # Triton's words and code, then what to do
                f"{_polled(name)}: no model folder {name!r} in --model-repository {repository.shown()}; add it, "
                "or load a model folder it holds"
            )
        await self._repository_load(name, parameters)

    def _restore_dependents(self, name: str) -> None:
        """After an explicit load of ``name``: the repository ensembles not served for want of their models load
        again once every model they run is served, as Triton's load of a model loads the ensembles that depend on it
        (tritonserver 2.51 brought an ensemble back on a reload of its step where polystack left it unloaded:
        helper-108). An ensemble unloaded by name is not waiting (``unload``)."""
        for other in sorted(self.history.unmet):  # any of them: a load of one ensemble may have loaded another's model
            runs = self.history.unmet_runs.get(other)
            if other not in self.history.unmet or runs is None:
                continue
            if not all(self.plane.model_ready(model, None) or self._renamed(model) for model in runs):
                continue  # a load of it would load the rest
            kept = self.history.configured.get(other)  # the last load's config, while the folder is as it was then
            folder = self.plane.repository.folder(other) if self.plane.repository is not None else None
            if kept is not None and (folder is None or model_repository.fingerprint(folder) != kept.folder):
                self.history.configured.pop(other, None)
                kept = None
            try:
                if kept is None:
                    self.plane.model_loads.load_from_repository(other, None)
                else:
                    self.plane.model_loads.load_from_repository(other, kept.config, policy=kept.policy)
            except PolystackError as e:
                log.info("an ensemble still does not fit its models", extra={"model": other, "error": e.message})
                continue
            log.info("ensemble loaded again: every model it runs is served again", extra={"model": other})
            self._restore_dependents(other)  # the ensembles that run this one

    def _renamed(self, model: str) -> bool:
        """(--model-namespacing) Whether an ensemble step naming ``model`` may name another now, its folder in
        two repositories or in one: a copy's name, or a name two repositories hold (its ensemble is read again)."""
        repository = self.plane.repository
        return repository is not None and bool(repository.copy_of(model) or repository.copies(model))

    def _refresh(self, repository: model_repository.ModelRepository, name: str) -> None:
        """Bring the copy of cloud folder ``name`` up to date, once a load of it building now is done."""
        self.plane.in_turn(name)
        repository.refresh(name)

    def _in_repository(self, name: str, repository: model_repository.ModelRepository) -> bool:
        """Whether explicit model control over ``repository`` knows ``name``: a folder's model (or one it served),
        an ensemble served, a model served another way."""
        return name in self.plane.ensembles or name in repository.others or repository.owns(name)

    async def _repository_load(self, name: str, parameters: dict[str, Any]) -> None:
        config = parameters.get("config")
        if "config" in parameters and not isinstance(config, str):
            raise self._settled(
                name,
                InvalidRequest("the 'config' load parameter must be a string: the model configuration as JSON text"),
            )
        # a lone group where a list goes ("instance_group": {...}), as Triton's JSON reading takes
        if config is not None:
            config = config_text.lists_where_repeated(config)
        if model_files.given(parameters):
            assert config is not None  # load() refused files without their config, in Triton's words
            rules = self.plane.folder_rules
            try:
                python = _asks_python(config, parameters)
                files: model_files.ModelFiles | model_files.Folder = (
                    model_files.read_folder(parameters) if python else model_files.read(parameters)
                )
                if python and not rules.python_models:  # its files are not even unpacked
                    raise model_repository.python_refused(name)
                if _is_torchscript(files, config) and not rules.torchscript_models:  # torch reads none
                    raise InvalidRequest(f"model {name!r}: {model_repository.TORCHSCRIPT_REFUSED}")
                if _is_aoti(files, config) and not rules.aoti_models:
                    raise InvalidRequest(f"model {name!r}: {model_repository.AOTI_REFUSED}")
            except PolystackError as e:
                raise self._settled(name, e) from None
            await self.plane.control(self._recorded(lambda n: self._load_files(n, files, config)), name)
            return
        await self.plane.control(self._recorded(lambda n: self.plane.model_loads.load_only(n, config)), name)

    def _recorded(self, change: Callable[[str], Any]) -> Callable[[str], Any]:
        """``change``, a load, with what the index and readiness keep of its outcome recorded on the loader along
        with it: an unload queued behind it then finds it recorded (recorded afterwards on the event loop, a failure
        outlived the unload, the server unready until a load succeeded: helper-112)."""

        def run(name: str) -> Any:
            try:
                done = change(name)
            except PolystackError as e:
                raise self._settled(name, e) from None
            self.history.failures.pop(name, None)
            return done

        return run

    def _settled(self, name: str, e: PolystackError) -> PolystackError:
        """The answer to a repository load of ``name`` that failed with ``e``, in Triton's words and codes, its
        failure kept for the index (but for a name nothing holds, which Triton does not track)."""
        if isinstance(e, NotFound):  # nothing of that name to load: Triton's poll finds nothing, its 500
            return PollFailed(f"{_polled(name)}: {e.message}")
        if e.unread and not isinstance(e, (PollFailed, StepNotServed)):  # its model unread: Triton's poll fails
            polled = PollFailed(f"{_polled(name)}: {e.message}").at_version(e.failed_version)  # its 500
            self.history.failed(name, e if isinstance(e, NotUnique) else polled)  # (Triton's reason for a duplicate)
            return polled
        failed = load_refused(name, e)
        self.history.failed(name, failed)
        if isinstance(failed, Conflict):  # a version the store holds otherwise: Triton's 400
            return InvalidRequest(failed.message)
        return failed

    def _load_files(
        self, name: str, files: model_files.ModelFiles | model_files.Folder, config: str
    ) -> LoadedEntry | ensemble.Ensemble:
        """Register a load's model file (or a Python model's folder) as a version of ``name`` and load that version
        with ``config``; what registering changed in the store is undone when the load fails."""
        self.plane.in_turn(name)
        if name in self.plane.ensembles:
            raise InvalidRequest(f"{name!r} is an ensemble, served without model files; unload it first")
        policy, config = model_config.split_field(config, "version_policy")
        if policy is not None:  # among the files' one version directory, as Triton reads them as a model folder
            model_repository.pick_versions(policy, [files.version], name)
        # run on the files before they are registered, as Triton runs them on the folder it makes of them
        agents, config = model_config.split_field(config, "model_repository_agents")
        ran = repository_agents.verify(agents, repository_agents.of_files(files.by_path()))
        if isinstance(files, model_files.Folder):
            doc = config_text.parse_config(config)
            registered = model_files.register_python(self.plane.store, name, files, doc, self.plane.auto_complete)
        else:
            registered = model_files.register(self.plane.store, name, files, config)
        record = registered.record
        facts = {"model": name, "version": record.version, "digest": record.digest, "format": record.format}
        uploaded = UPLOADED.set(True)
        try:
            entry = self.plane.model_loads.load_only(record.ref, config, ran)
        except BaseException:
            registered.undo(self.plane.store)
            log.warning("a load's model file was not served; the store is as it was", extra=facts)
            raise
        finally:
            UPLOADED.reset(uploaded)
        registered.settle(self.plane.store)  # the bytes it replaced, no longer served
        self.history.configured.pop(name, None)  # what serves is the files': a load without a config reads the folder
        if registered.created or registered.settings_before is not None:  # the store changed: say so
            log.info("model registered from a load's files", extra={**facts, "new_version": registered.created})
        return entry

    async def poll(self) -> None:
        """Load, reload or unload the repository models whose folders changed since the last poll (Triton's
        poll mode), on the loader and in flight like a load; ShuttingDown once the drain has begun."""
        await self.plane.control(lambda _: self._poll(), "")

    def _poll(self) -> None:
        repository = self.plane.repository
        assert repository is not None
        repository.refresh()  # the repositories in cloud storage as they are now
        folders, complete = repository.folders()
        now = {name: model_repository.fingerprint(folder) for name, folder in folders.items()}
        changed = False
        deferred: dict[str, str] = {}  # ensembles whose load failed: tried again once the poll's other loads ran
        failed: set[str] = set()  # folders that failed to load in this poll: not tried again within it
        todo: list[str] = []  # the folders to load, in order
        for name in sorted(repository.duplicated if complete else ()):  # Triton's poll unloads such a model
            now[name] = model_repository.DUPLICATED  # read again once one repository holds it alone
            if repository.seen.get(name) == model_repository.DUPLICATED:
                continue
            served = [e.version for e in self.plane.engine.loaded() if e.name == name]
            if self.plane.serves(name):
                self.plane.model_loads.unload(name)
                changed = True
            log.error(
                f"failed to load {quote(name, 140)}: {NotUnique.TRITON}; keep it in one", extra={"model": name}
            )
            # at the latest version it served: the index lists it so, in place of "unloaded"
            self.history.failed(name, NotUnique(NotUnique.TRITON).at_version(max(served, default=None)))
        for name in sorted(now.keys() | repository.seen.keys()):
            before, after = repository.seen.get(name), now.get(name)
            if after == before or (after is None and not complete):  # unseen (a repository unreadable) is not gone
                continue
            if after == model_repository.DUPLICATED:  # unloaded above
                repository.seen[name] = after
                continue
            if self.plane.draining:  # the rest waits for the next start
                return
            if after is None:  # its folder is gone
                repository.seen.pop(name, None)
                self.history.unmet.discard(name)
                if self.plane.serves(name):
                    self.plane.model_loads.unload(name)
                    changed = True
                # gone from the repository: the index no longer lists it, as Triton's does not
                self.history.stopped = {(n, v) for n, v in self.history.stopped if n != name}
                self.history.failures.pop(name, None)
                continue
            repository.seen[name] = after  # a folder that fails is read again once it changes again
            todo.append(name)
        # the changed folders load at once (as Triton's poll loads them), each a task of the loader's; their outcomes
        # are taken in order
        for name, outcome in zip(todo, self._load_folders(todo, failed), strict=True):
            if outcome is None:  # an ensemble's model that failed in this poll, a moment ago
                continue
            try:
                if isinstance(outcome, BaseException):
                    try:
                        raise outcome
                    finally:  # its traceback holds this frame: naming it made a cycle, which kept what the failed
                        outcome = None  # load had made (a Python model's instance) until Python's cycle collector ran
                loaded = outcome
            except ShuttingDown:  # a warm-up the drain stopped: the rest waits for the next start
                return
            except PolystackError as e:
                if name in self.history.unmet:  # an ensemble: a model it runs may load later in this poll
                    deferred[name] = e.message
                    continue
                log.error(
                    f"failed to load {name!r} from the model repository; what was served of it serves on, and its "
                    "folder is read again once it changes",
                    extra={"model": name, "error": e.message},
                )
                self.history.failed(name, load_refused(name, e))
            except Exception:
                log.exception("failed to load a model from the model repository", extra={"model": name})
            else:
                changed = True
                self.history.failures.pop(name, None)
                self.history.policies.pop(name, None)  # the folder's config holds again
                served = sorted(e.version for e in self.plane.engine.loaded() if e.name == name) or [loaded.version]
                log.info("model folder read again", extra={"model": name, "serving": served, "latest": loaded.version})
        still = self._load_unmet(deferred.keys(), failed) if changed or deferred else {}
        for name, message in deferred.items():
            if name in self.history.unmet:  # still failing once the poll's models loaded
                failure = InvalidRequest(f"failed to load {quote(name, 140)}: {still.get(name, message)}")
                self.history.failed(name, failure)
                log.error(
                    f"failed to load ensemble {name!r} from the model repository; what was served of it serves on, "
                    "and it is read again once its folder changes or a poll changes models",
                    extra={"model": name, "error": still.get(name, message)},
                )

    def _load_folders(
        self, names: Sequence[str], failed: set[str]
    ) -> list[LoadedEntry | ensemble.Ensemble | BaseException | None]:
        """Load the repository folders ``names`` at once, each a task of the loader's (this task lets go of the turn
        while they run): what each load gave or raised, in order; None for a folder skipped, which an ensemble's
        load in this poll failed meanwhile (``failed``). One at a time outside a loader task, or with one thread."""

        def one(name: str) -> LoadedEntry | ensemble.Ensemble | None:
            self.plane.refuse_when_draining()  # the rest waits for the next start
            if name in failed:
                return None
            return self.plane.model_loads.load_from_repository(name, None, failed=failed)

        outcomes: list[LoadedEntry | ensemble.Ensemble | BaseException | None] = []
        loads = self.plane.loader
        if len(names) < 2 or not loads.holds_turn() or loads.threads < 2:  # (this task holds one)
            for name in names:
                try:
                    outcomes.append(one(name))
                except Exception as e:  # given back in order, as the tasks' are
                    outcomes.append(e)
            try:
                return outcomes
            finally:  # a failure's traceback holds this frame: naming the list that holds it made a cycle
                del outcomes
        futures = [self.plane.loader.submit(one, name) for name in names]
        with self.plane.loader.let_go():
            concurrent.futures.wait(futures)
        for future in futures:
            failure = future.exception()
            outcomes.append(failure if failure is not None else future.result())
        return outcomes

    def _load_unmet(self, quiet: Collection[str] = (), tried: set[str] | None = None) -> dict[str, str]:
        """Load again the repository ensembles not served as their folders say for want of their models as they
        were, now that a poll changed models (Triton's poll mode reloads an ensemble's dependents): pass after
        pass while one more loads. Those that still fail, with why (logged, but for those in ``quiet``). The models
        in ``tried`` (the poll's failures) are not read again for them; a pass that loads one tries them anew."""
        failed: dict[str, str] = {}
        for _ in range(len(self.history.unmet)):  # each pass loads one more of them, or it is the last
            progress = False
            tried_now = set(tried or ())  # what fails in this pass is read once in it
            for name in sorted(self.history.unmet):
                assert self.plane.repository is not None  # only repository ensembles are unmet
                if self.plane.draining:
                    return failed
                if name not in self.history.unmet:  # loaded meanwhile, as a model another one runs
                    continue
                if self.plane.repository.folder(name) is None:  # its folder is gone
                    self.history.unmet.discard(name)
                    continue
                try:
                    self.plane.model_loads.load_from_repository(name, None, failed=tried_now)
                except ShuttingDown:
                    return failed
                except PolystackError as e:
                    failed[name] = e.message
                else:
                    self.history.unmet.discard(name)  # served as its folder says (an ensemble, or a model now)
                    failed.pop(name, None)
                    progress = True
                    log.info("model folder read again: what it runs fits it now", extra={"model": name})
            if not progress:
                break
        for name, message in failed.items():
            if name not in quiet:
                log.info("an ensemble still does not fit its models", extra={"model": name, "error": message})
        return failed

    async def unload(self, name: str, parameters: dict[str, Any] | None = None, repository_name: str = "") -> None:
        """Triton's repository unload of ``name``: every version of it stops being served (and, with the
        ``unload_dependents`` parameter, the models its ensemble runs); with --model-namespacing, each copy."""
        _one_repository(repository_name)
        self._check_control()
        if not isinstance(name, str) or not name:
            raise InvalidRequest("a model name is required")
        dependents = (parameters or {}).get("unload_dependents", False)
        if not isinstance(dependents, bool):
            raise InvalidRequest(
                f"the 'unload_dependents' unload parameter must be true or false, not {quote(dependents)}"
            )
        ref = ModelRef.parse(name)  # an unsafe name is refused as a load's is
        if ref.version is not None:
            raise InvalidRequest(
                f"an unload takes a model's name, not a version: unload {ref.name!r} (every version of it stops "
                "being served, as in Triton)"
            )
        # (--model-namespacing) each copy of a name two repositories hold, and those serving from before
        for each in dict.fromkeys([*self.plane.copies(name), *self.plane.served_copies(name), name]):
            await self.plane.control(lambda n: self._unload_by_name(n, dependents), each)

    async def load_repository(self, root: Path, mapping: Mapping[str, str], model: str) -> list[ModelRecord]:
        """Serve the repository at ``root`` too, ``mapping``'s folders (folder: model name; the folder "": ``root``
        is that model's folder itself) under their names, and load ``model`` from it: Triton's
        TRITONSERVER_ServerRegisterModelRepository then its load, by which its SageMaker multi-model endpoint loads
        each model, as one change on the loader. With explicit model control only. A load that fails takes back
        all it did (the models it brought up, the store rows it made, the registration); else the store rows it
        made, which ``unload_repository`` takes back."""
        self._check_registration("registration")
        made: list[ModelRecord] = []
        await self.plane.control(lambda _: made.extend(self._load_repository(root, mapping, model)), model)
        return made

    def _load_repository(self, root: Path, mapping: Mapping[str, str], model: str) -> list[ModelRecord]:
        repository = self._repositories()
        mapped = model in repository.mapped  # refused by the registration, in Triton's words
        if not mapped and (model in repository.others or self.plane.serves(model)):
            raise AlreadyExists(  # a name another load or the start serves: the archive would never be read
                f"model {model!r} is served already; load the archive under another name, or unload that model first"
            )
        before, rows = self.plane.names_served(), {r.id for r in self.plane.store.models.list()}

        def made() -> list[ModelRecord]:
            """The rows of the models it brought up (not another process's, meanwhile): those it added, and those it
            serves that a repository's files registered before (a load of the same archive before a restart)."""
            names = self.plane.names_served() - before | {model}
            served = {(e.name, e.version) for e in self.plane.engine.loaded()}
            return [
                r for r in self.plane.store.models.list()
                if r.name in names
                and (r.id not in rows or (r.settings.get(model_files.FROM_FILES) and (r.name, r.version) in served))
            ]  # fmt: skip

        repository.register_repository(root, mapping)
        try:
            self._recorded(lambda n: self.plane.model_loads.load_only(n, None))(model)
        except BaseException:
            undone = made()
            for name in sorted(self.plane.names_served() - before):  # an ensemble's models, loaded before it failed
                self.plane.model_loads.unload(name)
            self._take_back(undone)
            self._forget_names(repository.unregister_repository(root))
            self.history.failures.pop(model, None)  # its repository is gone: nothing left to be unready for
            raise
        return made()

    async def unload_repository(self, root: Path, model: str, made: Collection[ModelRecord], wait_s: float) -> bool:
        """Unload ``model`` and the models its ensemble runs, wait up to ``wait_s`` for what they run, then
        unregister the repository at ``root`` and take back the store rows its load ``made``; whether what they ran
        finished in time."""
        self._check_registration("unregistration")
        await self.plane.control(lambda n: self._unload_by_name(n, True), model)
        finished = await asyncio.get_running_loop().run_in_executor(None, self.plane.model_loads.wait_retired, wait_s)

        def forget(_: str) -> None:
            self._forget_names(self._repositories().unregister_repository(root))
            self._take_back([r for r in made if not self.plane.serves_model(r.name)])  # unless loaded again meanwhile

        await self.plane.control(forget, model)
        return finished

    def _forget_names(self, names: Collection[str]) -> None:
        """What loads from their folders left of ``names``, whose folders no repository holds now: a later load of
        one reads the store, as before them."""
        for name in names:
            if not self.plane.serves(name):
                self.plane.model_configs.pop(name, None)
                self.history.configured.pop(name, None)
                self.history.policies.pop(name, None)

    def _take_back(self, records: Collection[ModelRecord]) -> None:
        """Delete these store rows, those still as they were, with the blobs nothing else uses."""
        for record in records:
            self.plane.store.take_back(record)

    def _check_registration(self, what: str) -> None:
        if not self.plane.allow_model_control or (self.plane.repository is not None and self.plane.repository.polled):
            raise Unsupported(  # Triton's words, then what to do
                f"repository {what} is not allowed if model control mode is not EXPLICIT; start the server with "
                "--model-control-mode explicit (or --allow-model-control)"
            )

    def _repositories(self) -> model_repository.ModelRepository:
        """The repositories served, made empty on a first registration by a server started without one (whose
        models served at start, or by their configs, no folder replaces)."""
        if self.plane.repository is None:
            others = self.plane.names_served() | set(self.plane.model_configs)
            self.plane.repository = model_repository.ModelRepository([], (), others, rules=self.plane.folder_rules)
        return self.plane.repository

    def _unload_by_name(self, name: str, dependents: bool) -> None:
        """An unload's change, on the loader (a load queued behind it then sees all of it): what is served, and
        what the server kept of the name's loads."""
        self.plane.in_turn(name)
        self.plane.model_loads.unload(name, dependents)
        self.history.unloaded(name)
