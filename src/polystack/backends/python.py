"""Triton's Python backend: a ``model.py`` whose ``TritonPythonModel`` answers requests (``initialize(args)``,
``execute(requests)``, ``finalize()``), run in the server's own process over ``triton_python_utils`` (imported by
the model as ``triton_python_backend_utils``).

The artifact (``formats/python_model.py``) is the model's version folder as one zip, with its config. Loading
unpacks it into a folder of its own, imports ``model.py`` from there (its folder first on ``sys.path`` while
it is imported, so that its own modules import) and calls ``initialize`` with Triton's ``args``, once for each
instance its config's ``instance_group`` asks for (each its own import, as each of Triton's is a process; one
after another, as they share this process). A reload of the same files whose config changes only the instance
groups takes the instances it keeps from the model it replaces (Triton's in-place instance update): they and their
folder live until the last model holding them closes. ``infer`` runs one request, and ``infer_apart`` a batch the
dynamic batcher gathered, its requests apart as Triton hands them, by ``execute`` on an instance running no other;
``close`` calls ``finalize`` of each instance no other model holds and removes the folder once none is left.
An ``async def execute`` runs on an event loop of its instance's own, in a thread of its own that runs between
executes too (tasks an execute starts go on after it returned, as in Triton's stub), so that it can await its calls
together; a decoupled model's does not hold the instance, whose next ``execute`` starts while it awaits (Triton's
async execute, 24.04). A request whose server reads its responses from a stream (``RequestFacts.responses``: a
decoupled model's, and one answered once that is not a sequence's) may be answered after ``execute`` returned.

What the model gets besides its inputs comes from the server that hosts it (``hosting``): the request's id,
parameters and requested outputs, and the server its calls to other models go to (``InferenceRequest.exec``).

The model's answer is checked as Triton checks it: one response, its outputs among those its config declares (each
sent of the data type the model gave it, as Triton's core sends it). A response carrying an error, or an exception
from ``execute``, fails the request with its words (``TritonError.INVALID_ARG``: the client's error, 400; any
other: 500).
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import contextlib
import functools
import importlib.machinery
import importlib.util
import inspect
import json
import logging
import os
import queue
import sys
import threading
import time
import uuid
import weakref
import zipfile
from collections.abc import Awaitable, Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from types import FrameType, ModuleType
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict

from polystack import temp_folders
from polystack.backends import hosting, python_packages
from polystack.backends import triton_python_utils as pb_utils
from polystack.backends.base import RESCHEDULED, Apart, Backend, LoadedModel, Rescheduled, writable
from polystack.errors import (
    AlreadyExists,
    BackendError,
    BackendUnavailable,
    Cancelled,
    InvalidModelFile,
    InvalidRequest,
    NotFound,
    PolystackError,
    Unavailable,
    UnknownError,
    Unsupported,
)
from polystack.formats import python_model, triton_config
from polystack.formats.python_model import MANIFEST
from polystack.types import Signature

log = logging.getLogger("polystack.backends.python")

UTILS = "triton_python_backend_utils"  # the name models import Triton's utilities by
# the folders models are unpacked into, in the temporary folder; beside each, a file locked while its model is loaded
# (released when its process ends: temp_folders.py), out of the model's sight
FOLDER_PREFIX = "polystack-python-model-"
_LOOP_STOP_S = 30.0  # what an instance's close waits for its event loop's thread to stop
# the models loaded, which a reload of one whose config changes only its instance groups takes instances from
_LIVE: weakref.WeakSet[PythonModel] = weakref.WeakSet()
# how long a readiness query waits for a Python model's own readiness (Triton's Python backend waits a few seconds too:
# its QA test's model answering after 8 s is not ready to a first query and ready to the next, which waits for the
# same check)
READY_TIMEOUT_S = 5.0
# the names Triton's Python backend asks a model's own readiness by: its newest QA names it is_model_ready(), its pytest
# suite's models (and the feature's first release) is_ready(); the first a model defines is asked
READINESS_NAMES = ("is_model_ready", "is_ready")

_SHARING = threading.Lock()  # held while instances and folders change hands, and their holders are counted
_IMPORTING = threading.Lock()  # held while a model.py imports, its folder first on sys.path (``_import``)


class _Folder:
    """The folder a model's files were unpacked into, which its instances imported ``model.py`` from: released once
    neither the model nor an instance of it holds it (a reload keeps an instance, and so its folder, alive)."""

    def __init__(self, path: Path, owner: Any) -> None:
        self.path, self.owner = path, owner
        self.holders = 1  # the model that unpacked it

    def drop(self) -> None:
        with _SHARING:
            self.holders -= 1
            last = self.holders == 0
        if last:
            temp_folders.release(self.path, self.owner)


class _Instance:
    """One instance of a Python model: its own import of ``model.py`` and its own ``TritonPythonModel``, as each of
    Triton's instances is a stub process of its own; an ``async def execute`` runs on its own event loop."""

    def __init__(self, name: str, kind: str = "CPU", signature: str = "") -> None:
        self.name = name  # Triton's instance name: the model's in its words for a failed execute
        self.kind = kind  # Triton's: CPU, or MODEL where its group places itself (KIND_MODEL)
        self.signature = signature  # its group's but the name and count: what a reload that keeps it must ask
        self.module: ModuleType | None = None
        self.model: Any = None
        self.loop: asyncio.AbstractEventLoop | None = None  # made at its first async execute
        self.runner: threading.Thread | None = None  # the thread that runs ``loop`` (``_loop_of``)
        self.started = False  # its initialize returned: finalize runs at the close
        self.lock = threading.Lock()  # held while it runs an execute: one at a time, as on Triton's
        # the models serving it (a reload that changes only the instance groups keeps it): the last one finalizes it
        self.holders = 1
        self.folder: _Folder | None = None  # the folder it imported model.py from
        self.checking: concurrent.futures.Future[bool] | None = None  # its model's is_ready() running now
        self.gone = threading.Event()  # finalized and let go: the metric families it made keep their series


class PythonModel:
    def __init__(
        self,
        artifact: Path,
        signature: Signature,
        device: str,
        config: str | None = None,
        complete: bool = False,
        folder: str | None = None,
    ) -> None:
        self.signature = signature
        self._host = hosting.HOST.get()  # the server that loads it, which its calls to other models go to
        self._instances: list[_Instance] = []  # those that take requests
        self._passive: list[_Instance] = []  # a passive group's: initialized, finalized, given no request (Triton's)
        self._idle: queue.SimpleQueue[_Instance] = queue.SimpleQueue()  # those running no execute now
        # the folders a killed server left are removed first (once a minute at most)
        self._folder, owner = temp_folders.make(FOLDER_PREFIX)
        unpacked = _Folder(self._folder, owner)
        self._unpacked: _Folder | None = unpacked  # its own hold on the folder, until its close drops it
        self._closed = False
        self._given: set[_Instance] = set()  # the instances a reload took (each once)
        self._donor: weakref.ref[PythonModel] | None = None  # the model it took instances from
        self._taken: set[_Instance] = set()  # those instances: given back if it closes before that model
        try:
            try:
                with zipfile.ZipFile(artifact) as zf:
                    zf.extractall(self._folder)
                    files = _files_but_config(zf)
                manifest = json.loads((self._folder / MANIFEST).read_text())
            except (zipfile.BadZipFile, OSError, ValueError) as e:
                raise InvalidModelFile(f"{artifact} is not a Python model as polystack stores one: {e}") from None
            self.name = str(manifest["model"])
            check_name(self.name)
            self.version = int(manifest["version"])
            # the folder args["model_repository"] names: the repository's, as Triton's, while it is there
            self._repository = folder if folder is not None and os.path.isdir(folder) else str(self._folder)
            if self._host is not None:  # where calls from threads the model starts itself go
                pb_utils._SERVER[:] = [weakref.ref(self._host)]
            given = json.loads(config) if config is not None else manifest["config"]  # a load's, else the folder's
            if config is not None and complete:  # a load's, completed by the model as Triton's load completes it,
                # once: where registering its files completed this config already, that completion serves
                done = _completion(given, manifest)
                backend = self._folder / python_model.BACKEND if manifest.get("backend") else None
                given = done if done is not None else auto_complete(
                    self._folder, self.version, str(manifest["file"]), given, self.name, backend
                )
            # the name its code is handed: its config's (a copy's folder's name under namespacing, as Triton's)
            self.own = str(manifest["config"].get("name") or self.name)
            if self.own != self.name:  # (a load's config, GET config's of the copy, names it by the copy's name)
                given = {**given, "name": self.own}
            self.config: dict[str, Any] = _completed(given, self.own)
            if manifest.get("backend"):  # a Python-based backend's model: its config names that backend, as Triton's
                self.config["backend"] = manifest["backend"]
            self._env = _execution_env(self.config)
            if self._env is not None:
                log.warning(
                    "a Python model's execution environment is not used: polystack runs Python models in its own "
                    "process and Python environment; install what the model imports there",
                    extra={"model": self.name, "execution_env_path": self._env, "python": sys.executable},
                )
            # its requests' responses are sent apart from execute's return, any number of them (Triton's decoupled)
            self.decoupled = pb_utils.using_decoupled_model_transaction_policy(self.config)
            # its requests may ask to run again in a later batch (``set_release_flags``: Triton's iterative sequences)
            self.iterative = bool((self.config.get("sequence_batching") or {}).get("iterative_sequence"))
            self._waiting: set[_Gathered] = set()  # requests whose responses are still to come (close fails them)
            self._closing = False  # the server stops serving it: no request waits for its sender any more
            # a reload whose config changes only its instance groups keeps the instances it still has, as Triton
            # 23.x on updates instances in place: only those added initialize, those removed finalize (with the
            # model it replaces, once their requests ran)
            self._key = (files, self.name, self.version, _but_groups(self.config))
            donor = next(  # a model of the same server (one loaded outside a server shares nothing), unless this
                # one loads afresh (its folder was modified since: Triton reloads it whole)
                (m for m in list(_LIVE) if m._key == self._key and m._host is self._host and not m._closed), None
            ) if self._host is not None and not hosting.AFRESH.get() else None  # fmt: skip
            if donor is not None:
                self._donor = weakref.ref(donor)
            kept_any = False
            wanted = _instance_names(given, self.own)
            # Triton keeps an instance whose signature (kind, placement, rate limiter, passive) a new one has, whatever
            # its group's name: each new one takes the old of its name and signature, else another of its signature
            kept_by_name = [self._take(donor, name, group) for name, _, _, group in wanted]
            for (name, kind, passive, group), kept in zip(wanted, kept_by_name, strict=True):
                kept = kept or self._take(donor, None, group)
                kept_any = kept_any or kept is not None
                instance = kept or _Instance(name, kind, group)
                (self._passive if passive else self._instances).append(instance)
                if kept is None:
                    instance.folder = unpacked
                    with _SHARING:
                        unpacked.holders += 1
                    self._make(instance, manifest)  # one import at a time: each puts its folder on sys.path
            # one after another, where Triton initializes instances at once, each a process of its own: here they are
            # threads of one process, where the file locks (fcntl) models guard what their instances share with
            # exclude nothing (Triton's own QA model model_init_del counted wrong and failed its load: helper-170)
            for instance in (*self._instances, *self._passive):
                if not instance.started:
                    self._initialize(instance, manifest)
            # whether it took instances from the model it replaces and left some: that one's close finalizes those,
            # which the load waits for, as Triton's update returns once the instances it removed are finalized (one
            # that only adds instances waits for nothing: the requests running on the old ones go on)
            self.removes_instances = donor is not None and kept_any and donor._leaves_any()
            _LIVE.add(self)
            if kept_any and donor is not None:  # it replaces the donor, which gives no more (unless this one closes
                _LIVE.discard(donor)  # first: ``close``)
            for instance in self._instances:
                self._idle.put(instance)
        except BaseException:
            with contextlib.suppress(Exception):  # the load's own failure is what it says
                self.close()
            raise

    def _take(self, donor: PythonModel | None, name: str | None, signature: str) -> _Instance | None:
        """``donor._give(name, signature)``, kept in ``_taken`` at once (the close of a load that fails gives back
        what it took, whether or not it came to place it)."""
        kept = donor._give(name, signature) if donor is not None else None
        if kept is not None:
            self._taken.add(kept)
        return kept

    def _give(self, name: str | None, signature: str) -> _Instance | None:
        """An instance of its with ``signature`` (and ``name``, unless None) not given yet, held by the model that
        replaces it too; None where it has none such."""
        for instance in (*self._instances, *self._passive):
            if instance.signature == signature and name in (None, instance.name) and instance.started:
                with _SHARING:
                    if self._closed or instance in self._given:
                        continue
                    self._given.add(instance)
                    instance.holders += 1
                    if instance.folder is not None:
                        instance.folder.holders += 1
                return instance
        return None

    def _leaves_any(self) -> bool:
        """Whether some instance of its was not taken by the model replacing it (its close finalizes those)."""
        with _SHARING:
            return any(i not in self._given for i in (*self._instances, *self._passive))

    def _make(self, instance: _Instance, manifest: dict[str, Any]) -> None:
        """Import ``model.py`` for ``instance`` and make its model."""
        instance.module = self._import(source(self._folder, manifest), instance)
        model_class = getattr(instance.module, "TritonPythonModel", None)
        if model_class is None:
            raise InvalidRequest(f"{manifest['file']} of model {self.name!r} defines no class TritonPythonModel")
        instance.model = model_class()

    def _initialize(self, instance: _Instance, manifest: dict[str, Any]) -> None:
        """Initialize ``instance``'s model, with Triton's ``args``."""
        initialize = getattr(instance.model, "initialize", None)
        if initialize is not None:
            args = {
                "model_config": triton_config.as_handed(self.config, self.own, "model.py"),
                "model_instance_kind": instance.kind,
                "model_instance_name": instance.name,
                "model_instance_device_id": "0",
                "model_repository": self._repository,
                "model_version": str(manifest["version"]),
                "model_name": self.own,
            }
            self._run("initialize", instance, initialize, args)
        instance.started = True

    def _import(self, path: Path, instance: _Instance) -> ModuleType:
        return _import(
            path, self._folder, self.name, lambda load, module: self._run("import", instance, load, module),
            Path(self._repository) / str(self.version),
        )  # fmt: skip

    def _run(
        self, what: str, instance: _Instance, fn: Any, *args: Any, callers: tuple[str, ...] = ()
    ) -> Any:
        """``fn(*args)``, the model's code: an exception it raises fails in its words, as Triton's stub says it (in
        ``execute``: the request's 500; while loading: the load's 400, as Triton refuses a load that fails). Its
        calls to other models go to the server that hosts it (from ``execute`` alone, as in Triton)."""
        try:
            with self._running(instance, what, callers):
                return fn(*args)
        except PolystackError:
            raise
        except pb_utils.TritonError as e:
            raise _error(e) from None
        except (Exception, SystemExit) as e:  # a model's sys.exit fails its call, as Triton's stub answers it
            raise self._failure(what, instance, e) from e

    def _failure(self, what: str, instance: _Instance, e: Exception | SystemExit) -> PolystackError:
        """What the model's code raising ``e`` in ``what`` fails with (``_run``'s)."""
        if isinstance(e, PolystackError):
            return e
        if isinstance(e, pb_utils.TritonError):
            return _error(e)
        message = e.message() if isinstance(e, pb_utils.TritonModelException) else str(e)
        copied = instance.folder.path if instance.folder is not None else self._folder  # a kept instance's own
        at = _at(e, functools.partial(self._in_repository, copied))
        if what == "execute":  # Triton's words, its stub's traceback too
            return BackendError(
                f"Failed to process the request(s) for model '{instance.name}', message: {type(e).__name__}: "
                f"{message}{at}"
            )
        failed = InvalidRequest if what in ("import", "initialize") else BackendError
        hint = _env_hint(self.config, e)  # then where it was raised, as Triton's stub says a load's failure
        return failed(f"Python model {self.name!r} failed in {what}: {type(e).__name__}: {message}{hint}{at}")

    def _in_repository(self, copied: Path, filename: str) -> str:
        """A file of the model's version folder as the repository holds it, which Triton runs it from (polystack
        runs a copy, ``copied``: an instance kept from an earlier load runs that load's); any other file (the copy's
        where the model came from elsewhere) as it is."""
        copy = os.path.join(copied, str(self.version), "")
        if self._repository == str(self._folder) or not filename.startswith(copy):
            return filename
        return os.path.join(self._repository, str(self.version), filename[len(copy) :])

    @contextlib.contextmanager
    def _running(self, instance: _Instance, what: str, callers: tuple[str, ...]) -> Iterator[None]:
        """The model's code runs ``what`` as ``instance`` of this model, hosted by its server (calls to other models:
        in ``execute``, for requests ``callers`` wait for; the instance waits too, while they run)."""
        chain = (*callers, f"{self.name}:{self.version}")
        running = pb_utils._Running(
            self._host, self.name, instance.name, what == "execute", chain, instance.gone, what == "initialize"
        )
        token = pb_utils._RUNNING.set(running)
        try:
            yield
        finally:
            pb_utils._RUNNING.reset(token)

    @property
    def instance_count(self) -> int:
        """The instances that take requests (``infer_apart``'s ``instance`` picks one of them)."""
        return len(self._instances)

    def infer(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """One request, with the facts of the request the server runs (``hosting.REQUEST``)."""
        facts = hosting.REQUEST.get()
        (result,) = self.infer_apart([(inputs, facts.outputs, facts)])
        if isinstance(result, Rescheduled):  # only its sequence batcher runs a request again
            raise _outside_sequence(self.name)
        if isinstance(result, PolystackError):
            raise result
        return result

    def infer_apart(
        self, requests: Sequence[Apart], instance: int | None = None
    ) -> list[dict[str, np.ndarray] | PolystackError | Rescheduled]:
        """A batch's requests, handed to ``execute`` apart as Triton hands them, each with its facts and its
        response sender, on instance ``instance`` (the one a sequence batcher keeps their sequences on; None: the one
        the server's rate limiter gave resources to, ``hosting.CHARGED``, else the first idle one): each one's
        outputs, or the error its response carries. ``execute`` failing fails them all (raised), but those whose
        sender sent their response. A request whose server reads its responses from a stream (``RequestFacts.responses``)
        has them sent there, returned ones too, and its result here has no outputs; without a server, its one
        response is the result."""
        received, wanted = [], []
        gathered: list[_Gathered | None] = []
        for inputs, given, facts in requests:
            # those it asks for (a request read from a stream carries them in its facts alone), else all
            outputs = list(given or ()) or list(facts.outputs)
            names = outputs or [t.name for t in self.signature.outputs]
            tensors = [pb_utils.Tensor(name, writable(pb_utils.as_sent(array))) for name, array in inputs.items()]
            # where its responses go: the server's stream of its request (a decoupled model's any number; another's
            # one, which may come after execute returned, as in Triton), else gathered here
            own = None if facts.responses is not None else _Gathered(facts.gone)
            sink = own or facts.responses
            assert sink is not None
            asked = bool(outputs) and not facts.partial  # those asked for must be there (an ensemble step's may not)
            check = functools.partial(self._answer, outputs=names, asked=asked, whole=not self.decoupled)
            sender = pb_utils.InferenceResponseSender(sink, check, self.decoupled)
            received.append(pb_utils.InferenceRequest.received(self.name, tensors, facts, names, sender))
            gathered.append(own)
            wanted.append((names, asked))
        if instance is None:  # the one the rate limiter gave resources to, where one did
            instance = hosting.CHARGED.get()
        chosen = self._idle.get() if instance is None else self._instances[instance % len(self._instances)]
        try:
            callers = _waiting(facts.callers for _, _, facts in requests)
            with chosen.lock:  # one execute at a time on each instance, as on Triton's
                responses = self._run("execute", chosen, self._execute, chosen, received, callers=callers)
        except PolystackError as e:
            sent = [g.sent() if g is not None else None for g in gathered]
            if self.decoupled or all(r is None for r in sent):
                raise
            # a request whose sender sent its response has it, as Triton's client has it already; the failure is
            # the others' (and the log's)
            log.warning("execute failed after responses were sent", extra={"model": self.name, "error": e.message})
            return [e if r is None else r for r in sent]
        finally:
            if instance is None:
                self._idle.put(chosen)
        again = [self._again(request, chosen) for request in received]
        if self.decoupled:
            if responses is not None:
                raise _must_return_none(chosen.name)
            return [
                a if a is not None else {} if g is None else self._one(g) for a, g in zip(again, gathered, strict=True)
            ]
        if responses is None:  # each request answered by its response sender (now, or later from a thread)
            responses = [None] * len(received)
        failed = f"Failed to process the request(s) for model '{chosen.name}', message: "  # Triton's words below
        if not isinstance(responses, list):  # a tuple too, as Triton's stub refuses it
            raise BackendError(f"{failed}Expected a list in the execute return, found type '{type(responses)}'.")
        if len(responses) != len(received):
            raise BackendError(
                f"{failed}Number of InferenceResponse objects do not match the number of InferenceRequest objects. "
                f"InferenceRequest(s) size is:{len(received)}, and InferenceResponse(s) size is:{len(responses)}"
            )
        for request, response in zip(received, responses, strict=True):  # its stub fails the whole execute
            if response is not None and request.rescheduled():
                raise BackendError(
                    f"{failed}Expected a None object in the execute function return list for reschduled request, "
                    f"found type '{type(response)}'."
                )
            if response is not None and not isinstance(response, pb_utils.InferenceResponse):
                raise BackendError(
                    f"{failed}Expected an 'InferenceResponse' object in the execute function return list, found type "
                    f"'{type(response)}'."
                )
        results: list[dict[str, np.ndarray] | PolystackError | Rescheduled] = []
        for request, response, sink, (names, asked), rerun in zip(
            received, responses, gathered, wanted, again, strict=True
        ):
            if rerun is not None:
                results.append(rerun)
                continue
            sender = request.get_response_sender()
            if response is not None and sender.sent:  # its response went by its sender
                log.warning(  # Triton's words; the client has the response sent, as Triton's has
                    "Unable to send response. Non-decoupled model cannot send more than one response.",
                    extra={"model": self.name, "instance": chosen.name},
                )
                response = None
            if sink is None:  # the server reads its answer from its stream: a response returned goes there too
                if response is not None:
                    sender.send(response, flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL)
                results.append({})
            elif response is not None:
                results.append(self._answer(response, names, asked))
            else:
                results.append(self._one(sink))
        return results

    def _again(self, request: pb_utils.InferenceRequest, instance: _Instance) -> Rescheduled | PolystackError | None:
        """What a request its model released to run again is (None: one released, as requests are): RESCHEDULED for
        the sequence batcher of an iterative sequence model to queue again, else an error failing it."""
        if not request.rescheduled():
            return None
        if not self.iterative:
            return InvalidRequest(  # Triton core's sentence (L0_iterative_sequence looks for it), then what to do
                f"Failed to process the request(s) for model '{instance.name}', message: Request is released with "
                "TRITONSERVER_REQUEST_RELEASE_RESCHEDULE, while the model is not configured to handle such a flag: set "
                "sequence_batching { iterative_sequence: true } in its config"
            )
        return RESCHEDULED

    def _answer(
        self, response: Any, outputs: list[str], asked: bool, whole: bool = True
    ) -> dict[str, np.ndarray] | PolystackError:
        """A response as the server takes it: its error, or its outputs (those ``outputs`` names), checked against
        the config; ``whole``: each of those the request ``asked`` for is there (a decoupled model's responses may
        hold some of them)."""
        if not isinstance(response, pb_utils.InferenceResponse):
            return BackendError(
                f"Python model {self.name!r}: execute returned {type(response).__name__}, not an InferenceResponse"
            )
        error = response.error()
        if error is not None:
            return _error(error)
        result: dict[str, np.ndarray] = {}
        for tensor in response.output_tensors():
            spec = next((t for t in self.signature.outputs if t.name == tensor.name()), None)
            if spec is None:  # dropped, as Triton drops it
                continue
            if spec.name in outputs:  # one it was not asked for is dropped, as Triton prunes it
                # of the data type the model gave, its config's or not: Triton's core takes a response's output by
                # its name alone and sends it as it is (pb_utils.Tensor holds Triton's data types only)
                result[spec.name] = tensor._data()
        parameters = response._wire_parameters()  # sent to the client with its outputs (Triton's response parameters)
        if parameters:
            result = hosting.Answer(result, parameters)
        # a declared output the model leaves out is left out of the answer, as Triton leaves it; one the request
        # asks for by name fails it (its client would read nothing there)
        missing = [name for name in outputs if name not in result] if whole and asked else []
        if missing:
            return BackendError(
                f"Python model {self.name!r} returned no output {missing[0]!r}, which the request asks for"
            )
        return result

    def closing(self) -> None:
        """The server stops serving it (an unload, a reload, the exit): the requests still waiting for the answer
        their sender has not sent fail now, where they would hold their threads (and the exit) for good."""
        self._closing = True
        for gathered in list(self._waiting):
            gathered.fail(Unavailable(f"model {self.name!r} was unloaded before it answered this request"))

    def _one(self, gathered: _Gathered) -> dict[str, np.ndarray] | PolystackError:
        """The one response a request's sender sends (a model that returns None from execute sends it, now or
        later): waited for until the final flag, or until the model is closing. A decoupled model's, served where
        no stream reads its responses (``polystack predict``, a warm-up), must be one too."""
        self._waiting.add(gathered)
        if self._closing:
            gathered.fail(Unavailable(f"model {self.name!r} was unloaded before it answered this request"))
        try:
            responses = gathered.wait()
        finally:
            self._waiting.discard(gathered)
        if isinstance(responses, PolystackError):
            return responses
        data = [r for r in responses if r is not None]
        if len(data) != 1:
            return InvalidRequest(
                f"model {self.name!r} is decoupled and sent {len(data)} responses to a request answered once here; "
                "serve it and read its responses as a stream (gRPC's ModelStreamInfer, HTTP's generate_stream)"
            )
        return data[0]

    def _execute(self, instance: _Instance, requests: list[pb_utils.InferenceRequest]) -> Any:
        """The instance's ``execute``; an ``async def execute`` run on the instance's own event loop, which runs in a
        thread of its own from its first (so that tasks an execute starts go on after it returned, as in Triton's stub),
        to its end, or, a decoupled model's, started there (``_overlap``); with the context of the call."""
        responses = instance.model.execute(requests)
        if inspect.isawaitable(responses):
            loop = self._loop_of(instance)
            if self.decoupled:
                self._overlap(instance, loop, responses, requests)
                return None
            responses = asyncio.run_coroutine_threadsafe(_awaited(responses), loop).result()
            if isinstance(responses, _Exited):
                raise responses.exit
        return responses

    def ready(self, timeout_s: float = READY_TIMEOUT_S) -> bool:
        """Whether each of its instances' model answers its ``is_model_ready()`` or ``is_ready()`` (where it defines
        one, plain or ``async``: Triton's user-defined readiness) with True within ``timeout_s``: False, an exception,
        another value or no answer in time is not ready (logged). A check still running from an earlier query is
        waited for, not started again, and runs on after a query stopped waiting, as Triton's stub's does."""
        deadline = time.monotonic() + timeout_s
        checks = [(i, c) for i, c in ((i, self._readiness(i)) for i in list(self._instances)) if c is not None]
        for instance, check in checks:
            try:
                if not check.result(timeout=max(0.0, deadline - time.monotonic())):
                    return False
            except concurrent.futures.TimeoutError:
                log.warning(
                    "a Python model's readiness (is_model_ready/is_ready) did not answer in time: not ready",
                    extra={"model": self.name, "instance": instance.name, "timeout_s": timeout_s},
                )
                return False
        return True

    def _readiness(self, instance: _Instance) -> concurrent.futures.Future[bool] | None:
        """The check of ``instance``'s ``is_model_ready()`` (or ``is_ready()``) running now, else one started on a
        thread of its own (None: its model has neither)."""
        named = next((n for n in READINESS_NAMES if callable(getattr(instance.model, n, None))), None)
        if named is None:
            return None
        is_ready = getattr(instance.model, named)
        with _SHARING:
            if instance.checking is not None and not instance.checking.done():
                return instance.checking
            check: concurrent.futures.Future[bool] = concurrent.futures.Future()
            instance.checking = check
        worker = threading.Thread(
            target=self._check, args=(instance, named, is_ready, check), name=f"python-model-ready-{instance.name}",
            daemon=True,
        )  # fmt: skip
        worker.start()
        return check

    def _check(
        self, instance: _Instance, named: str, is_ready: Callable[[], Any], check: concurrent.futures.Future[bool]
    ) -> None:
        """Run its readiness method ``named`` (a coroutine on the instance's event loop) and set ``check`` to whether
        it said True."""
        why = ""
        try:
            answer = self._run(named, instance, is_ready)
            if inspect.isawaitable(answer):
                answer = asyncio.run_coroutine_threadsafe(_awaited(answer), self._loop_of(instance)).result()
            if not isinstance(answer, bool | np.bool_):
                why = f"it returned {type(answer).__name__}, not a bool"
            elif not answer:
                why = "it returned False"
        except PolystackError as e:
            why = e.message
        except Exception as e:  # an async readiness method's own failure: not ready, whatever it is
            why = f"Python model {self.name!r} failed in {named}: {type(e).__name__}: {e}"
        if why:
            log.warning(
                f"a Python model's {named}() says it is not ready",
                extra={"model": self.name, "instance": instance.name, "why": why},
            )
        check.set_result(not why)

    @staticmethod
    def _loop_of(instance: _Instance) -> asyncio.AbstractEventLoop:
        """The instance's event loop, running in its thread (started the first time)."""
        if instance.runner is None:
            instance.loop = asyncio.new_event_loop()
            instance.runner = threading.Thread(
                target=instance.loop.run_forever, name=f"python-model-{instance.name}", daemon=True
            )
            instance.runner.start()
        assert instance.loop is not None
        return instance.loop

    def _overlap(
        self,
        instance: _Instance,
        loop: asyncio.AbstractEventLoop,
        execute: Awaitable[Any],
        requests: list[pb_utils.InferenceRequest],
    ) -> None:
        """Triton's async execute of a decoupled model: its coroutine runs on the instance's event loop (``loop``),
        which the instance's other executes share (so the next request starts while this one awaits; the server does
        not bound how many). Its responses go by their senders; a failure, or a return other than None, is the final
        response of each request not finished."""

        async def run() -> None:
            error: PolystackError | None
            try:
                returned = await execute
            except (Exception, SystemExit) as e:  # SystemExit too: it would stop the instance's event loop
                error = self._failure("execute", instance, e)
            else:
                error = None if returned is None else _must_return_none(instance.name)
            if error is not None:
                log.warning("async execute failed", extra={"model": self.name, "error": error.message})
                for request in requests:
                    request.get_response_sender()._fail(error)

        asyncio.run_coroutine_threadsafe(run(), loop)

    def close(self) -> None:
        """``finalize`` each instance no other model holds (the server closes a model once no call runs on it),
        then forget them."""
        failed: BaseException | None = None
        if hasattr(self, "_waiting"):  # requests whose sender never sent: they fail now
            self.closing()
        with _SHARING:
            self._closed = True
            donor = self._donor() if self._donor is not None else None
            if donor is not None and not donor._closed:  # its load failed, or it closes first: the donor serves on
                donor._given -= self._taken
                _LIVE.add(donor)
        _LIVE.discard(self)
        placed = (*self._instances, *self._passive)
        for instance in (*placed, *(self._taken - set(placed))):  # those taken but not placed: a load failed between
            with _SHARING:
                instance.holders -= 1
                kept = instance.holders > 0  # the model that replaced this one serves it (or the one this one took it
                # from, if this one's load failed): that one finalizes it
            if kept:
                if instance.folder is not None:
                    instance.folder.drop()
                continue
            try:
                finalize = getattr(instance.model, "finalize", None)
                if finalize is not None and instance.started:
                    self._run("finalize", instance, finalize)
            except BaseException as e:  # the others finalize still; the first failure is raised
                failed = failed or e
            finally:
                instance.gone.set()
                if instance.loop is not None:
                    _close(instance.loop, instance.runner)
                if instance.module is not None:
                    _forget(instance.module)
                if instance.folder is not None:
                    instance.folder.drop()
                instance.module = instance.model = None  # no call reaches a closed model: the server refuses them
        self._instances, self._passive, self._taken = [], [], set()
        if self._unpacked is not None:
            self._unpacked.drop()  # its own hold: the folder goes once no instance kept from it lives
        self._unpacked = None
        if failed is not None:
            raise failed


class _Gathered:
    """A request's responses as its sender sends them, where no server stream reads them (``hosting.Responses``):
    gathered until the final flag, which ``wait`` waits for."""

    def __init__(self, gone: threading.Event | None = None) -> None:
        self._gone = gone  # set when the request's client went away (None: it cannot)
        self._responses: list[dict[str, np.ndarray] | PolystackError | None] = []
        self._done = threading.Event()
        self._failed: PolystackError | None = None

    @property
    def cancelled(self) -> bool:
        return self._gone is not None and self._gone.is_set()

    def send(self, outputs: dict[str, np.ndarray] | PolystackError | None, final: bool) -> None:
        if outputs is not None:
            self._responses.append(outputs)
        if final:
            self._done.set()

    def fail(self, error: PolystackError) -> None:
        """End it with ``error``, unless its final response came already (that answer stands)."""
        if self._done.is_set():
            return
        self._failed = error
        self._done.set()

    def wait(self) -> list[dict[str, np.ndarray] | PolystackError | None] | PolystackError:
        """Its responses once the final flag came; a request whose client went away is not waited for (its
        model may never answer it, as Triton's models may leave a cancelled request)."""
        while not self._done.wait(0.05 if self._gone is not None else None):
            if self.cancelled:
                return Cancelled("the client went away before the model answered this request")
        return self._failed or self._responses

    def sent(self) -> dict[str, np.ndarray] | PolystackError | None:
        """The first response sent so far (None: none)."""
        return next((r for r in self._responses if r is not None), None)


def source(folder: Path, manifest: Mapping[str, Any]) -> Path:
    """The ``model.py`` a model unpacked in ``folder`` runs: its version folder's, or its Python-based backend's."""
    if manifest.get("backend"):
        return folder / python_model.BACKEND / "model.py"
    return folder / str(manifest["version"]) / str(manifest["file"])


def _import(
    path: Path,
    root: Path,
    model: str,
    run: Callable[[Callable[[ModuleType], None], ModuleType], Any],
    model_dir: Path,
) -> ModuleType:
    """``model.py`` as a module of a package of its own, its folder (as Triton imports it from its version folder,
    so that ``from . import file2`` finds a module beside it), that folder first on ``sys.path`` while it imports
    (``import file1`` too; ``run`` runs the import, in the words of its failure); ``model_dir``: the model's version
    folder, which ``pb_utils.get_model_dir()`` gives (a Python-based backend's ``model.py`` lies elsewhere). The
    package is importable by name in the processes the model starts anew too (python_packages.py)."""
    sys.modules.setdefault(UTILS, pb_utils)
    sys.modules.setdefault(OWN, _OwnModel(OWN))
    package = f"{pb_utils.MODEL_PACKAGE}{uuid.uuid4().hex}"
    folder = importlib.machinery.ModuleSpec(package, None, is_package=True)
    folder.submodule_search_locations = [str(path.parent)]
    name = f"{package}.{path.stem}"
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise InvalidRequest(f"cannot import {path.name} of model {model!r}")
    module = importlib.util.module_from_spec(spec)
    with _IMPORTING:  # models of different names load at once: one puts its folder on sys.path at a time
        before = set(sys.modules)
        sys.path.insert(0, str(path.parent))
        try:
            sys.modules[package] = importlib.util.module_from_spec(folder)
            setattr(sys.modules[package], pb_utils.MODEL_DIR, str(model_dir))
            python_packages.publish(package, path.parent, model_dir, pb_utils.MODEL_DIR)
            sys.modules[name] = module
            run(spec.loader.exec_module, module)
        except BaseException:
            _forget(module)
            raise
        finally:
            sys.path.remove(str(path.parent))
            # its own modules imported by name (a utils.py beside it) leave the module cache, so that another model's of
            # that name imports its own, as in Triton, whose models each run in a process of their own (those of its
            # package are its own by their names)
            for other in set(sys.modules) - before:
                if not other.startswith(package) and str(getattr(sys.modules[other], "__file__", "") or "").startswith(
                    str(root)
                ):
                    _BESIDE.setdefault(module, []).append(sys.modules.pop(other))
    return module


# what current Triton's Python backend refuses in a model's name, as its stub starts through a shell (tritonserver 2.51
# has no such check: a load of such a name there hangs or fails in the shell's words)
STUB_UNSAFE = frozenset(";|&$`<>()[]{}\\\"'*?~#!")



def check_name(name: str) -> None:
    """Refuse a Python model's name holding what current Triton's Python backend refuses, in its words: before
    anything of the model is imported, as Triton checks it before its stub starts."""
    if unsafe := sorted(set(name) & STUB_UNSAFE):
        raise InvalidRequest(
            f"Invalid stub name: contains invalid characters: model name {name!r} holds {''.join(unsafe)!r}, which "
            "Triton's Python backend refuses in a Python model's name; rename it"
        )


OWN = "model"  # the name a model imports its own model.py by (Triton's QA models: ``unittest.main("model")``)


class _OwnModel(ModuleType):
    """``sys.modules["model"]``: the ``model.py`` of the Python model whose code reads it, found on the calling
    thread's stack (the nearest frame of a module of an instance's package: its execute, or a thread or task it
    started). Triton's stub puts the version folder on ``sys.path``, so there ``import model`` imports the model's
    file again in its own process; here models share one process, and so one module cache, and each instance's
    ``import model`` gets its own import of the file. A real module named ``model`` imported before the first
    Python model keeps the name (``sys.modules.setdefault``)."""

    def _own(self) -> ModuleType:
        package = pb_utils.calling_package(3)
        own = sys.modules.get(f"{package}.{OWN}") if package is not None else None
        if own is not None:
            return own
        raise AttributeError(
            f"module {OWN!r} is the model.py of the Python model whose code reads it, and none is running here: "
            "read it from the code of a model whose file is model.py"
        )

    def __getattr__(self, name: str) -> Any:
        return getattr(self._own(), name)

    def __dir__(self) -> list[str]:
        return dir(self._own())


def _execution_env(config: Mapping[str, Any]) -> str | None:
    """The execution environment (a conda-pack archive or folder) the model's config names for Triton's stub to run
    it in (its ``EXECUTION_ENV_PATH`` parameter), as written; None: none."""
    parameters = config.get("parameters")
    value = parameters.get("EXECUTION_ENV_PATH") if isinstance(parameters, Mapping) else None
    path = value.get("string_value") if isinstance(value, Mapping) else value
    return str(path) if path else None


def _env_hint(config: Mapping[str, Any], e: BaseException) -> str:
    """What to do where a model whose config names an execution environment imports what polystack's lacks (``e``:
    an ``ImportError``); "" otherwise."""
    env = _execution_env(config)
    if env is None or not isinstance(e, ImportError):
        return ""
    return (
        f"; its config names the execution environment {env} (EXECUTION_ENV_PATH), which polystack does not use (its "
        f"Python models run in its own process): install what the model imports into polystack's environment "
        f"({sys.executable} -m pip install ...)"
    )


def _outside_sequence(model: str) -> BackendError:
    return BackendError(
        f"Python model {model!r} asked to run a request again (TRITONSERVER_REQUEST_RELEASE_RESCHEDULE) outside its "
        "sequence batcher, which alone runs a request again: send it as a request to the model"
    )


def _forget(module: ModuleType) -> None:
    """Take a model's module, its package and the modules of its package out of the module cache (and the package
    out of the processes the model starts anew from now on), and empty them and the modules its file imported by
    name beside it (``_BESIDE``), as Python empties modules at its exit and as Triton's stub process exits: a module
    and its functions hold each other (a function's globals are its module's), so what a file made at import
    (weights read at module level) stayed until the cycle collector ran, never in an idle server and never for a
    model loaded at the start (whose objects the start freezes: ``gc.freeze``). helper-273: a 100 MB module-level
    array grew the server by 100 MB at each unload, to 1.2 GB after a dozen reloads. What the model's threads still
    running then read of its module is gone, as in Triton, where they end with its stub."""
    package = module.__name__.rpartition(".")[0] or module.__name__
    python_packages.withdraw(package)
    emptied = [sys.modules.pop(n) for n in [n for n in sys.modules if n == package or n.startswith(package + ".")]]
    for each in (*emptied, module, *_BESIDE.pop(module, ())):
        vars(each).clear()


# the modules a model's file imported by name from its folder (a utils.py beside it), which leave the module cache
# after its import (``_import``), by that file's module: emptied with it (``_forget``)
_BESIDE: weakref.WeakKeyDictionary[ModuleType, list[ModuleType]] = weakref.WeakKeyDictionary()


# what a config may differ in from the one its registering completed and still be that one: what chose the model's
# files, versions and runtime, which the server takes out before the model sees it
_NOT_COMPARED = frozenset(
    {"name", "backend", "platform", "default_model_filename", "defaultModelFilename", "version_policy",
     "versionPolicy", "model_repository_agents", "modelRepositoryAgents"}
)  # fmt: skip


def _completion(config: dict[str, Any], manifest: dict[str, Any]) -> dict[str, Any] | None:
    """The config the model's ``auto_complete_config`` made of ``config`` as its files were registered (the
    manifest's): where ``config`` is that one, or what it completed; None: it is to be completed now."""

    def compared(doc: Any) -> Any:
        return {k: v for k, v in doc.items() if k not in _NOT_COMPARED} if isinstance(doc, dict) else None

    completed, asked = manifest.get("config"), manifest.get(python_model.COMPLETED_FROM)
    if asked is None or not isinstance(completed, dict):  # registered without completing it
        return None
    return completed if compared(config) in (compared(completed), compared(asked)) else None


def auto_complete(
    folder: Path, version: int, file: str, config: dict[str, Any], model: str, backend: Path | None = None
) -> dict[str, Any]:
    """The config the model's ``auto_complete_config`` makes of ``config`` (the folder's, or none), as Triton
    calls it before loading the model (unless ``--disable-auto-complete-config``): imported from the version
    folder (or its Python-based ``backend``'s folder) for that call alone, and let go of after it (``_forget``), as
    Triton's auto-complete stub exits. A model without the method keeps its config."""

    check_name(model)

    def run(load: Callable[[ModuleType], None], module: ModuleType) -> None:
        try:
            load(module)
        except (Exception, SystemExit) as e:
            raise InvalidRequest(
                f"Python model {model!r} failed in import: {type(e).__name__}: {e}{_env_hint(config, e)}{_at(e)}"
            ) from e

    path = backend / "model.py" if backend is not None else folder / str(version) / file
    module = _import(path, backend or folder, model, run, folder / str(version))
    try:
        complete = getattr(getattr(module, "TritonPythonModel", None), "auto_complete_config", None)
        if complete is None:
            return config
        given = {"name": model, "max_batch_size": 0, "input": [], "output": [], **_numbers(config)}
        policy = given.get("model_transaction_policy")
        if isinstance(policy, dict):  # given: printed in full, as Triton's JSON of a message the config gives
            given["model_transaction_policy"] = {"decoupled": False, **policy}
        try:
            done = complete(pb_utils.ModelConfig(json.dumps(given)))
        except (Exception, SystemExit) as e:  # Triton's stub fails the load with its words
            raise InvalidRequest(
                f"Python model {model!r} failed in auto_complete_config: {type(e).__name__}: {e}{_at(e)}"
            ) from e
        if not isinstance(done, pb_utils.ModelConfig):
            raise InvalidRequest(  # Triton's words, then ours
                f"auto_complete_config function in model {model!r} must return a valid pb.ModelConfig object: it "
                f"returned {type(done).__name__}, not the pb_utils.ModelConfig it was given"
            )
        return done.as_dict()
    finally:
        _forget(module)


def _at(e: BaseException, shown: Callable[[str], str] = str) -> str:
    """Where ``e`` was raised, as Triton's stub words an exception from ``execute`` (pybind11's): ``At:``, then the
    frames from the innermost out, each ``  <file>(<line>): <function>`` (the file as ``shown`` names it), up to
    the model's ``execute`` (the frames that called it are polystack's, where Triton's are none), but the innermost
    of polystack's own code (pb_utils' ``send``, say: C++ in Triton's stub, so never among its frames), and none of
    Python's import machinery; none at all where this module raised it (the model's code never ran)."""
    tb = e.__traceback__
    if tb is None:
        return ""
    while tb.tb_next is not None:
        tb = tb.tb_next
    frames: list[str] = []
    frame: FrameType | None = tb.tb_frame
    while frame is not None and frame.f_code.co_filename.startswith(_OWN_CODE):
        if frame.f_code.co_filename == __file__:  # raised before the model's code ran (it has no execute, say)
            return ""
        frame = frame.f_back
    while frame is not None and frame.f_code.co_filename != __file__:
        if not _importing(frame.f_code.co_filename):  # (an import's frames: the model's modules alone)
            frames.append(f"  {shown(frame.f_code.co_filename)}({frame.f_lineno}): {frame.f_code.co_name}\n")
        frame = frame.f_back
    return "\n\nAt:\n" + "".join(frames) if frames else ""


_OWN_CODE = os.path.join(os.path.dirname(os.path.dirname(__file__)), "")  # polystack's package folder


def _importing(filename: str) -> bool:
    """Whether a frame of ``filename`` is Python's import machinery (which runs a model's ``model.py``)."""
    return filename.startswith("<frozen importlib")


def _waiting(chains: Iterable[tuple[str, ...]]) -> tuple[str, ...]:
    """The model instances a batch's requests have waiting for them: each model as often as the most of its
    instances any one request has waiting (a request's chain is not its batch-mates')."""
    most: dict[str, int] = {}
    for chain in chains:
        for key, count in collections.Counter(chain).items():
            most[key] = max(most.get(key, 0), count)
    return tuple(key for key, count in most.items() for _ in range(count))


class _Exited:
    """An ``async def execute`` that called ``sys.exit``: raised again in the thread that waits for it (``_execute``),
    since a ``SystemExit`` leaving a task would stop the instance's event loop for good."""

    def __init__(self, exit: SystemExit) -> None:
        self.exit = exit


async def _awaited(execute: Awaitable[Any]) -> Any:
    """What an ``async def execute`` returns (``run_coroutine_threadsafe`` takes a coroutine, not any awaitable)."""
    try:
        return await execute
    except SystemExit as e:
        return _Exited(e)


def _must_return_none(instance: str) -> BackendError:
    """A decoupled model's execute that returned a value, in Triton's words."""
    return BackendError(
        f"Failed to process the request(s) for model '{instance}', message: Python model '{instance}' is using the "
        "decoupled mode and the execute function must return None."
    )


def _close(loop: asyncio.AbstractEventLoop, runner: threading.Thread | None = None) -> None:
    """Close an instance's event loop (stopped first where ``runner`` runs it): the tasks its executes left running
    are cancelled first."""
    if runner is not None:
        loop.call_soon_threadsafe(loop.stop)
        runner.join(timeout=_LOOP_STOP_S)
        if runner.is_alive():  # a task holds it in the model's own blocking code: it is left to end with the process
            log.warning("a Python model's event loop did not stop", extra={"thread": runner.name})
            return
    left = asyncio.all_tasks(loop)
    for task in left:
        task.cancel()
    with contextlib.suppress(Exception):
        loop.run_until_complete(asyncio.gather(*left, return_exceptions=True))
        loop.run_until_complete(loop.shutdown_asyncgens())
    loop.close()


def _files_but_config(zf: zipfile.ZipFile) -> tuple[tuple[str, int, int], ...]:
    """The model's files as its zip lists them (name, size, CRC-32), but its config's: the same code and data,
    whatever its config says (which ``_but_groups`` compares)."""
    return tuple(
        sorted(
            (i.filename, i.file_size, i.CRC)
            for i in zf.infolist()
            if i.filename != MANIFEST and i.filename != "config.pbtxt" and not i.filename.startswith("configs/")
        )
    )


def _but_groups(config: dict[str, Any]) -> str:
    """``config`` but its instance groups, as a key: two loads whose configs differ in those alone share instances.
    As Triton compares an update's configs once both are normalized, the key is the config as model_config.proto
    reads it, with the defaults Triton's normalization fills in (which GET config shows, so that the config it
    returns, its count changed, loads back as an update), without its version_policy (the key holds the version)
    and the parameters polystack adds to what GET config shows (its device, its batcher's idle gap)."""
    from google.protobuf import json_format
    from tritonclient.grpc import model_config_pb2  # Triton's model_config.proto, generated

    try:
        message = json_format.ParseDict(config, model_config_pb2.ModelConfig())
    except (json_format.ParseError, TypeError, ValueError):  # a field tritonclient's proto lacks: compared as given
        return json.dumps({k: v for k, v in config.items() if k != "instance_group"}, sort_keys=True, default=str)
    message.ClearField("instance_group")
    message.ClearField("version_policy")
    for polystacks in ("polystack_device", "polystack_idle_gap_ms"):  # model_config.render adds them
        if polystacks in message.parameters:
            del message.parameters[polystacks]
    message.platform, message.backend = "", "python"
    message.default_model_filename = message.default_model_filename or "model.py"
    for pinned in ("input_pinned_memory", "output_pinned_memory"):
        if not message.optimization.HasField(pinned):  # Triton's default: enabled
            getattr(message.optimization, pinned).enable = True
    _clear_empty(message)
    batching = message.dynamic_batching
    if message.HasField("dynamic_batching") and not batching.preferred_batch_size and message.max_batch_size > 0:
        batching.preferred_batch_size.append(message.max_batch_size)
    sequence = message.sequence_batching
    if message.HasField("sequence_batching") and not sequence.max_sequence_idle_microseconds:
        sequence.max_sequence_idle_microseconds = 1_000_000
    if sequence.HasField("oldest") and not sequence.oldest.preferred_batch_size and message.max_batch_size > 0:
        sequence.oldest.preferred_batch_size.append(message.max_batch_size)
    return json_format.MessageToJson(message, sort_keys=True, preserving_proto_field_name=True)


def _clear_empty(message: Any) -> None:
    """Clear, through ``message``, each message field given at its defaults (``response_cache {}``, GET config's
    ``default_queue_policy`` of zeros): as if not given, as Triton reads them. Not a oneof's (``dynamic_batching {}``
    chooses a scheduler, ``direct {}`` a strategy)."""
    for field, value in message.ListFields():
        if field.message_type is None:
            continue
        if field.is_repeated:
            entries = value.values() if field.message_type.GetOptions().map_entry else value
            for entry in entries:
                if hasattr(entry, "ListFields"):  # a map's values may be plain values
                    _clear_empty(entry)
            continue
        _clear_empty(value)
        if not value.ByteSize() and field.containing_oneof is None:
            message.ClearField(field.name)


def _instance_names(config: dict[str, Any], model: str) -> list[tuple[str, str, bool, str]]:
    """Triton's names of the instances the config's ``instance_group`` asks for (``<group>_<i>``; a group without
    a name is ``<model>_<g>``; without groups, one: ``<model>_0``), each with its kind as Triton hands it (``CPU``;
    ``MODEL`` for a group of ``KIND_MODEL``), whether its group is passive, and its signature (its group but the
    name and count: what Triton's instance update compares). Each ``KIND_GPU`` group's count is per GPU."""
    groups = config.get("instance_group") or []
    if not groups:
        return [(f"{model}_0", "CPU", False, json.dumps({"kind": "CPU"}))]
    names = []
    for g, group in enumerate(groups):
        count = int(group.get("count", 1) or 1) * max(1, len(group.get("gpus") or []))
        kind = "MODEL" if group.get("kind") == "KIND_MODEL" else "CPU"
        passive = group.get("passive") is True
        rest = {k: v for k, v in group.items() if k not in ("name", "count", "kind") and v not in (None, False, "", [], {})}
        signature = json.dumps({**rest, "kind": kind}, sort_keys=True, default=str)  # KIND_AUTO is CPU here
        names += [(f"{group.get('name') or f'{model}_{g}'}_{i}", kind, passive, signature) for i in range(count)]
    return names


def _error(error: pb_utils.TritonError) -> PolystackError:
    """A model's ``TritonError`` as polystack's: its words as they are, with the status Triton gives its code
    (``server/status.py``: INTERNAL, the default, 500), raised in the request's run (Triton's response error,
    whatever its code: traced, generate's 400, a stream's error response), its code kept for a model calling it."""
    kind = _CODES.get(error.code(), BackendError)
    e = kind(error.message()).failed_in_run()
    e.model_code = int(error.code())
    return e


_CODES: dict[int, type[PolystackError]] = {
    pb_utils.TritonError.INVALID_ARG: InvalidRequest,
    pb_utils.TritonError.NOT_FOUND: NotFound,
    pb_utils.TritonError.UNAVAILABLE: Unavailable,
    pb_utils.TritonError.UNSUPPORTED: Unsupported,
    pb_utils.TritonError.ALREADY_EXISTS: AlreadyExists,
    pb_utils.TritonError.CANCELLED: Cancelled,
    pb_utils.TritonError.UNKNOWN: UnknownError,
}


def _completed(config: dict[str, Any], name: str) -> dict[str, Any]:
    """The config the model is served with: numbers as numbers (a config.pbtxt's read as JSON has them as strings),
    and the fields its completion adds where the file leaves them out (its code gets it as Triton hands it:
    ``triton_config.as_handed``)."""
    done = _numbers(config)
    done.setdefault("name", name)
    done.setdefault("max_batch_size", 0)
    done.setdefault("parameters", {})
    done.setdefault("instance_group", [{"name": f"{name}_0", "kind": "KIND_CPU", "count": 1}])
    return done


def _numbers(value: Any, key: str = "") -> Any:
    """A config read as JSON (a config.pbtxt's has its numbers as strings) with its numbers as numbers."""
    if isinstance(value, dict):
        return {k: _numbers(v, k) for k, v in value.items()}
    if isinstance(value, list):
        return [_numbers(v, key) for v in value]
    if isinstance(value, str) and key in _NUMERIC and value.lstrip("-").isdigit():
        return int(value)
    return value


_NUMERIC = {"dims", "max_batch_size", "count", "shape", "preferred_batch_size", "max_queue_delay_microseconds", "gpus"}


class PythonOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")

    config: str | None = None  # the config the load follows, as JSON (None: the folder's, stored with the model)
    # that config goes through the model's auto_complete_config first, as Triton's load completes it (unless
    # --disable-auto-complete-config); the folder's was completed when it was stored
    auto_complete: bool = False
    # the model's folder in a local repository, which args["model_repository"] names, as Triton's does (None: the
    # copy it runs from; a load's uploaded files, a cloud repository's, as Triton's names a copy of its own there)
    folder: str | None = None


class PythonBackend(Backend):
    name = "python"
    formats = frozenset({"python"})
    Options = PythonOptions

    def load(self, artifact: Path, signature: Signature, options: BaseModel, device: str) -> LoadedModel:
        if device not in self.devices():  # its instances run on the CPU (a model's own code may use a GPU)
            raise BackendUnavailable(f"backend 'python' runs its models' instances on the CPU, not {device!r}")
        assert isinstance(options, PythonOptions)
        return PythonModel(artifact, signature, device, options.config, options.auto_complete, options.folder)
