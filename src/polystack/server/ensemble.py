"""Triton's ensembles: a model that is a pipeline of served models, declared by its config alone
(``platform: "ensemble"`` and ``ensemble_scheduling``), as a Triton model repository declares one::

    DIR/pipeline/config.pbtxt   (platform "ensemble", its inputs, outputs and steps)
    DIR/pipeline/1/             (an empty version folder, as Triton needs)

Each step names a served model (``model_name``; ``model_version`` -1 for its latest) and maps the ensemble's
tensors to it: ``input_map`` from the step model's input to the ensemble tensor it takes, ``output_map``
from the step model's output to the ensemble tensor it gives. A request runs each step as soon as the
tensors it takes are there (steps that do not depend on one another run at once), each step as a request
of its own to its model: through that model's batcher, counted in that model's statistics and metrics.

``read`` checks what the config alone decides (each tensor given once, every ensemble input taken, every
ensemble output given, no step waiting on a tensor nothing gives, so no cycle); ``check`` checks it against
the models it names as they are served (their inputs all given, types and shapes agreeing along the way,
batch sizes within theirs). An ensemble holds no weights, so nothing of it goes in the store.
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Collection, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from polystack.backends.reshaped import Reshape
from polystack.errors import InvalidRequest, PolystackError, quote
from polystack.labels import file_in, labels_for
from polystack.server import config_schema, config_text, model_config, repository_agents
from polystack.types import DType, Signature, TensorSpec

log = logging.getLogger("polystack.server.ensemble")

PLATFORM = "ensemble"
MAX_STEPS = 256  # a pipeline of more is a mistake (a generated config gone wrong), and each runs per request
MAX_DEPTH = 8  # ensembles whose steps name ensembles, nested this deep at most


@dataclass(frozen=True)
class Step:
    """One step: the model it runs (``version`` None: its latest) and the tensors it takes and gives."""

    model: str
    version: int | None
    inputs: tuple[tuple[str, str], ...]  # (the step model's input, the ensemble tensor it takes)
    outputs: tuple[tuple[str, str], ...]  # (the step model's output, the ensemble tensor it gives)
    written: str = ""  # the model as the config names it, where it runs a copy served by another name (namespacing)

    @property
    def asked(self) -> str | None:
        """Its version as a request names it (None: the latest), as the data plane resolves a model's."""
        return None if self.version is None else str(self.version)

    def describe(self, index: int) -> str:
        return f"step {index} ({self.model}{'' if self.version is None else f':{self.version}'})"


@dataclass(frozen=True)
class Ensemble:
    """An ensemble as its config declares it: its name and version, the batch size its requests may carry
    (0: no batch dimension), its inputs and outputs as requests see them, and its steps in config order."""

    name: str
    version: int
    max_batch_size: int
    signature: Signature
    steps: tuple[Step, ...]
    response_cache: bool = False  # its answers are kept in the server's response cache (--cache-config)
    agents: repository_agents.Agents = ()  # the repository agents that ran on its folder (model_repository_agents)
    # its outputs' label files, as its config names them (label_filename), by output, and their labels once read
    # from its folder (``with_labels``): the classification of that output names its classes so, before any step's
    label_files: tuple[tuple[str, str], ...] = ()
    labels: tuple[tuple[str, tuple[str, ...]], ...] = ()
    # every version served (its version_policy may pick several, as Triton's QA ensembles' [1, 3]), ``version`` the
    # latest: each runs the same steps, as one config.pbtxt serves them all in Triton; () is (version,)
    versions: tuple[int, ...] = ()
    # the version_policy its config (a load's, else its folder's) writes, as JSON ("": none), which GET config shows: a
    # load whose config writes what picks the same versions serves the ensemble as it was
    written_policy: str = dataclasses.field(default="", compare=False)
    given: frozenset[str] = frozenset()  # the messages of model_config.SHOWN_WHERE_GIVEN its config gives
    formats: tuple[tuple[str, str], ...] = ()  # (input, FORMAT_NHWC or FORMAT_NCHW), for clients
    # its inputs and outputs whose config gives a reshape: requests send and get them in their dims (``signature``),
    # its steps take and give them in the reshape's shape (``flowing``), as Triton's ensembles pass them
    reshapes: tuple[Reshape, ...] = ()

    @property
    def served_versions(self) -> tuple[int, ...]:
        return self.versions or (self.version,)

    @property
    def flowing(self) -> Signature:
        """Its inputs and outputs in the shapes its steps take and give them (a reshape's, else the dims')."""
        if not self.reshapes:
            return self.signature
        return self.signature.with_shapes({r.name: r.full(r.model) for r in self.reshapes})

    @property
    def models(self) -> set[str]:
        """The models its steps name."""
        return {s.model for s in self.steps}


def renamed_steps(ensemble: Ensemble, names: Mapping[str, str]) -> Ensemble:
    """``ensemble`` with its steps naming ``names``' models by the names given (model: the name it serves under),
    each step's config name kept for its config (``Step.written``)."""
    steps = tuple(
        dataclasses.replace(s, model=names[s.model], written=s.written or s.model) if s.model in names else s
        for s in ensemble.steps
    )
    return dataclasses.replace(ensemble, steps=steps)


def is_ensemble(doc: Mapping[str, Any]) -> bool:
    """Whether a parsed config declares an ensemble."""
    platform = doc.get("platform") or doc.get("backend") or ""
    return platform == PLATFORM or "ensemble_scheduling" in doc or "ensembleScheduling" in doc


def read(text: str, name: str, version: int) -> Ensemble:
    """The ensemble config ``text`` (JSON, as ``config_text.as_json`` gives it) declares, checked as far as
    the config alone decides; ``InvalidRequest`` says what is wrong and where."""
    _triton_checks(config_text.parse_json(text), name)
    config = config_text.parse_config(text, "ensemble")
    platform = config_schema.read_string(config, "platform", "config")
    backend = config_schema.read_string(config, "backend", "config")
    if platform != PLATFORM or backend:
        raise InvalidRequest(
            f"an ensemble's config sets platform {PLATFORM!r} and no backend (it has platform {quote(platform)}, "
            f"backend {quote(backend)})"
        )
    given = config_schema.read_string(config, "name", "config")
    if given and given != name:
        raise InvalidRequest(f"the config names model {quote(given)}, but it is loaded as {name!r}")
    max_batch = config_schema.read_int(config, "max_batch_size", "config", 0, (1 << 31) - 1)
    inputs, optional, taken = _tensors(config, "input", max_batch, name)
    outputs, _, given_back = _tensors(config, "output", max_batch, name)
    scheduling = config_schema.read_message(
        config.get("ensemble_scheduling", {}), "ensemble_scheduling", "ensemble_scheduling"
    )
    raw_steps = scheduling.get("step", [])
    if not isinstance(raw_steps, list) or not raw_steps:  # Triton's words, then what to do
        raise InvalidRequest(
            f"must specify 'step' for ensemble {name!r}: ensemble_scheduling must list one or more steps "
            "(step [ { model_name: ... } ])"
        )
    if len(raw_steps) > MAX_STEPS:
        raise InvalidRequest(f"ensemble_scheduling lists {len(raw_steps)} steps; an ensemble runs at most {MAX_STEPS}")
    steps = tuple(_step(item, i, name) for i, item in enumerate(raw_steps))
    cache = config_schema.read_message(config.get("response_cache", {}), "response_cache", "response_cache")
    cached = config_schema.read_bool(cache, "enable", "response_cache")
    label_files = tuple(config_text.label_files(text, "ensemble").items())
    formats = _formats(config["input"])
    ensemble = Ensemble(
        name, version, max_batch, Signature(inputs, outputs, optional), steps, cached, label_files=label_files,
        given=model_config.given_messages(config), formats=formats, reshapes=taken + given_back,
    )  # fmt: skip
    _check_flow(ensemble)
    return ensemble


def _triton_checks(doc: Any, name: str) -> None:
    """Triton's first checks of an ensemble's config (ValidateModelConfig, ValidateEnsembleSchedulingConfig), in
    its words, then what to do: its platform and backend, and the fields an ensemble has no use for."""
    if not isinstance(doc, dict):
        return  # parse_config says what is wrong

    def given(key: str) -> Any:
        camel = key.split("_")[0] + "".join(part.title() for part in key.split("_")[1:])
        return doc.get(key, doc.get(camel))

    if given("platform") != PLATFORM and given("ensemble_scheduling") is not None:
        raise InvalidRequest(
            f"ensemble scheduling cannot be set for model {name!r} whose platform is not ensemble: its config sets "
            f"ensemble_scheduling and platform {quote(given('platform'))}; set platform \"ensemble\" and no backend, "
            "or leave ensemble_scheduling out"
        )
    if given("backend"):
        raise InvalidRequest(
            f"Ensemble model {name!r} must have platform type 'ensemble' and empty backend type: its config sets "
            f"backend {quote(given('backend'))}; leave backend out"
        )
    if given("ensemble_scheduling") is None:
        raise InvalidRequest(
            f"ensemble scheduling must be set for ensemble {name} whose platform is ensemble: its config has no "
            "ensemble_scheduling; list its steps there (ensemble_scheduling { step [ { model_name: ... } ] })"
        )
    for key, words in (
        ("instance_group", "instance group should not be specified"),
        ("optimization", "optimization should not be specified"),
        ("model_warmup", "model_warmup can not be specified"),
    ):
        # an optimization message is refused where given, even empty (Triton's has_optimization); the lists if not empty
        if (given(key) is not None) if key == "optimization" else given(key):
            raise InvalidRequest(
                f"{words} for ensemble {name!r}: an ensemble runs its steps' models, each with its own; leave {key} out"
            )


def with_labels(ensemble: Ensemble, folder: Path | None) -> Ensemble:
    """``ensemble`` with the labels of the files its outputs name, read from its ``folder`` (as Triton reads them,
    a path in it); refused where one is not there, or where there is no folder (a config given alone)."""
    if not ensemble.label_files:
        return ensemble
    where = f"ensemble {ensemble.name!r}"
    if folder is None:
        raise InvalidRequest(f"{where} names label files, but it has no folder to read them from; leave them out")
    read = tuple(
        (output, tuple(labels_for(ensemble.signature, output, file_in(folder, output, file), where, checked=False)))
        for output, file in ensemble.label_files
    )
    return dataclasses.replace(ensemble, labels=read)


def _tensors(
    config: dict[str, Any], key: str, max_batch: int, model: str
) -> tuple[tuple[TensorSpec, ...], tuple[TensorSpec, ...], tuple[Reshape, ...]]:
    """The config's tensors of ``key`` (input or output) of ensemble ``model``: those a request gives (or gets),
    the inputs it may leave out (``optional``), and the reshapes the config gives them."""
    items = config.get(key, [])
    if not isinstance(items, list) or not items:
        raise InvalidRequest(f"an ensemble's config lists its {key}s ({key} [ {{ name, data_type, dims }} ])")
    found: dict[str, TensorSpec] = {}
    optional: set[str] = set()
    reshapes: list[Reshape] = []
    for i, item in enumerate(items):
        where = f"{key}[{i}]"
        d = config_schema.read_message(item, where, key)
        name = config_schema.read_string(d, "name", where)
        if not name:
            raise InvalidRequest(f"{where} has no name")
        if name in found:
            raise InvalidRequest(f"{where} lists {key} {quote(name)} a second time")
        dtype = config_schema.dtype_of(config_schema.read_enum(d, "data_type", where, "DataType"), where)
        if "dims" not in d:
            raise InvalidRequest(
                f"{where} ({name}) has no dims; give its shape without the batch dimension (-1: any size)"
            )
        dims = config_schema.io_dims(d["dims"], where, key, name, model)
        if max_batch == 0 and not dims:
            raise InvalidRequest(f"{where} ({name}) has no dims; with max_batch_size 0 give its whole shape")
        if dims and d.get("reshape") is not None:  # Triton's checks of a model's reshape (ValidateIOShape)
            model_config.reshape_fits(d, where, key, name, model)
        reshape = model_config.read_reshape(d, where, name, max_batch, model)
        if reshape is not None:
            reshapes.append(reshape)
        if key == "input" and config_schema.read_bool(d, "optional", where):
            optional.add(name)
        if key == "input" and config_schema.read_bool(d, "allow_ragged_batch", where):
            raise InvalidRequest(
                f"{where} ({name}) allows a ragged batch, which polystack's ensembles do not take (their steps' models "
                "may); leave allow_ragged_batch out"
            )
        found[name] = TensorSpec(name, dtype, ((-1,) if max_batch else ()) + tuple(dims))
    given = tuple(t for t in found.values() if t.name not in optional)
    return given, tuple(t for t in found.values() if t.name in optional), tuple(reshapes)


def _formats(inputs: list[dict[str, Any]]) -> tuple[tuple[str, str], ...]:
    """The layouts (``format``) the config gives the ensemble's inputs (``_tensors`` read them): for clients, as
    a model's (Triton's image_client reads them), with three dims besides the batch where one is given."""
    formats = []
    for i, d in enumerate(inputs):
        where = f"input[{i}]"
        layout = config_schema.read_enum(d, "format", where, "ModelInput.Format") or "FORMAT_NONE"
        if layout not in model_config.FORMATS:
            raise InvalidRequest(f"{where} has format {quote(layout)}; Triton's are {', '.join(model_config.FORMATS)}")
        if layout != "FORMAT_NONE" and len(d["dims"]) != 3:  # as a model's (its dims leave the batch out)
            raise InvalidRequest(
                f"{where} ({d['name']}) has format {layout}, which needs 3 dims besides the batch, but its dims are "
                f"{list(d['dims'])}; leave format out"
            )
        if layout != "FORMAT_NONE":
            formats.append((str(d["name"]), layout))
    return tuple(formats)


def _step(item: Any, index: int, ensemble: str) -> Step:
    """Step ``index`` of ``ensemble``'s config, checked as Triton's BuildEnsembleGraph checks it (its words)."""
    where = f"ensemble_scheduling.step[{index}]"
    d = config_schema.read_message(item, where, "step")
    model = config_schema.read_string(d, "model_name", where)
    if not model:
        raise InvalidRequest(
            f"must specify 'model_name' in step {index} of ensemble {ensemble!r}: {where} has no model_name; name "
            "the served model it runs"
        )
    raw_version = config_schema.read_int(d, "model_version", where, -1, (1 << 63) - 1) if "model_version" in d else -1
    if raw_version == 0:
        raise InvalidRequest(f"{where} ({model}) asks for model_version 0; give a version from 1, or -1 for the latest")
    maps = []
    for key in ("input_map", "output_map"):
        value = d.get(key, {})
        if not isinstance(value, dict) or not value:
            raise InvalidRequest(
                f"must specify '{key}' in step {index} of ensemble {ensemble!r}: {where} ({model}) has no {key}; map "
                "each of the model's tensors to an ensemble tensor"
            )
        if not all(isinstance(k, str) and k and isinstance(v, str) and v for k, v in value.items()):
            raise InvalidRequest(f"{where}.{key} maps tensor names (strings) to tensor names (strings)")
        maps.append(tuple(value.items()))
    return Step(model, None if raw_version == -1 else raw_version, maps[0], maps[1])


def _check_flow(ensemble: Ensemble) -> None:
    """What the config alone decides, in the order of Triton's ValidateEnsembleSchedulingConfig and with its words
    first: each tensor given once, every ensemble input taken, every ensemble output given (and written: by steps
    whose tensors come from the request or steps that run before, so no cycle), every tensor a step gives taken."""
    sig = ensemble.signature
    takes = [t.name for t in (*sig.inputs, *sig.optional)]
    given: dict[str, str] = {t: "the request" for t in takes}
    for i, step in enumerate(ensemble.steps):
        for _, tensor in step.outputs:
            if tensor in given:
                triton = (  # Triton's words where two output maps give it (the request's input is not in one)
                    f"ensemble tensor {quote(tensor)} can appear in an output map only once for ensemble "
                    f"{ensemble.name!r} step {i}: "
                    if given[tensor] != "the request"
                    else ""
                )
                raise InvalidRequest(
                    f"{triton}ensemble tensor {quote(tensor)} is given by {step.describe(i)} and by {given[tensor]}; "
                    "each tensor is given once (rename one in its output_map)"
                )
            given[tensor] = step.describe(i)
    taken = {tensor for step in ensemble.steps for _, tensor in step.inputs}
    for name in takes:
        if name not in taken:
            raise InvalidRequest(  # Triton's words (its missing quote too), then ours
                f"ensemble input {quote(name)} for ensemble {ensemble.name}' is not used: ensemble input "
                f"{quote(name)} is taken by no step; map it in a step's input_map, or drop it"
            )
    for name in sig.output_names:
        if name not in given or given[name] == "the request":
            raise InvalidRequest(  # Triton's words (its missing quote too), then ours
                f"ensemble output {quote(name)} for ensemble {ensemble.name}' is not used: ensemble output "
                f"{quote(name)} is given by no step; map a step model's output to it in an output_map"
            )
    triton = _not_written(ensemble)  # Triton's words for an output whose steps cannot run, then ours
    for i, step in enumerate(ensemble.steps):
        missing = [tensor for _, tensor in step.inputs if tensor not in given]
        if missing:  # Triton's words: an output it keeps from being written, else the tensor, never written, unused
            words = triton or f"ensemble tensor {quote(missing[0])} is unused in ensemble {ensemble.name!r}: "
            raise InvalidRequest(
                f"{words}{step.describe(i)} takes {', '.join(map(quote, missing))}, which no step gives and the "
                "request does not carry; give it in another step's output_map, or list it as an ensemble input"
            )
    try:
        order(ensemble)  # a cycle: refused there
    except InvalidRequest as e:
        raise InvalidRequest(f"{triton}{e.message}") from None
    if triton:
        raise InvalidRequest(triton.removesuffix(": "))
    for tensor, giver in given.items():
        if tensor not in taken and tensor not in sig.output_names and giver != "the request":
            raise InvalidRequest(  # Triton's words, then ours
                f"ensemble tensor {quote(tensor)} is unused in ensemble {ensemble.name!r}: ensemble tensor "
                f"{quote(tensor)}, given by {giver}, is taken by no step and is not an ensemble output; drop it from "
                "the output_map (a step model's outputs need not all be mapped)"
            )


def _not_written(ensemble: Ensemble) -> str:
    """Triton's words for the first ensemble output its steps cannot write (a tensor they need that nothing gives,
    or a cycle), as its ValidateEnsembleSchedulingConfig says them, followed by ": "; "" where every output is
    written. A tensor is written once every tensor the step giving it takes is; the request's inputs are."""
    feeds: dict[str, list[str]] = {}  # a tensor a step gives -> the tensors that step takes
    for step in ensemble.steps:
        for _, out in step.outputs:
            feeds.setdefault(out, []).extend(tensor for _, tensor in step.inputs)
    ready = {t.name for t in (*ensemble.signature.inputs, *ensemble.signature.optional)}
    grew = True
    while grew:
        grew = False
        for tensor, needs in feeds.items():
            if tensor not in ready and needs and all(n in ready for n in needs):
                ready.add(tensor)
                grew = True
    for name in ensemble.signature.output_names:
        if name in ready:
            continue
        # the deepest tensor it waits on that is not written, as Triton walks back to it
        last, seen, needs = name, set(), feeds.get(name, [])
        while needs:
            waiting = next((n for n in needs if n not in ready and n not in seen), None)
            if waiting is None:
                break
            seen.add(waiting)
            last, needs = waiting, feeds.get(waiting, [])
        source = f": at least one of its depending tensors, {quote(last)}, is not connected" if last != name else ""
        return f"output {quote(name)} for ensemble {ensemble.name!r} is not written{source}: "
    return ""


def order(ensemble: Ensemble) -> list[list[int]]:
    """The steps in waves: each wave's steps take only tensors the request or earlier waves give."""
    have = {t.name for t in (*ensemble.signature.inputs, *ensemble.signature.optional)}
    left = list(range(len(ensemble.steps)))
    waves: list[list[int]] = []
    while left:
        wave = [i for i in left if all(t in have for _, t in ensemble.steps[i].inputs)]
        if not wave:
            stuck = ", ".join(ensemble.steps[i].describe(i) for i in left)
            raise InvalidRequest(
                f"the steps {stuck} wait on one another's tensors (a cycle); each step must take only what the "
                "request or other steps give"
            )
        waves.append(wave)
        for i in wave:
            have.update(t for _, t in ensemble.steps[i].outputs)
        left = [i for i in left if i not in wave]
    return waves


@dataclass(frozen=True)
class Served:
    """What a step model serves, as an ensemble sees it: its signature (its tensors' full shapes, the batch
    dimension included) and the most rows a request may carry (0: no limit, or no batch)."""

    signature: Signature
    max_batch_size: int


def as_step(inner: Ensemble, step: Step) -> Served:
    """What ensemble ``inner`` serves as ``step`` of another, which must ask for its version or the latest."""
    if step.version is not None and step.version not in inner.served_versions:
        has = f"version{'s' if len(inner.served_versions) > 1 else ''} {', '.join(map(str, inner.served_versions))}"
        raise InvalidRequest(f"ensemble {inner.name!r} has {has}, not {step.version}")
    return Served(inner.signature, inner.max_batch_size)


def check(ensemble: Ensemble, served: Callable[[Step], Served]) -> None:
    """Check ``ensemble`` against the models its steps run as ``served`` gives them (which raises for one
    not served): every input of each step model given, outputs its own, types and shapes agreeing, and
    batch sizes the ensemble's requests may carry within theirs."""
    batching = ensemble.max_batch_size > 0
    # each tensor's type and whole shape, who gives it, and whether that one batches
    # (and the model Triton says its type is inferred from)
    flowing = ensemble.flowing  # (a reshape's shapes)
    types: dict[str, tuple[DType, tuple[int, ...], str, bool, str]] = {
        t.name: (t.dtype, t.shape, "the ensemble's input", batching, ensemble.name)
        for t in (*flowing.inputs, *flowing.optional)
    }
    wanted = {t.name: t for t in flowing.outputs}
    for i in [i for wave in order(ensemble) for i in wave]:
        step = ensemble.steps[i]
        where = step.describe(i)
        try:
            model = served(step)
        except PolystackError as e:
            raise e.prefixed(where) from None
        inputs = {t.name: t for t in (*model.signature.inputs, *model.signature.optional)}
        outputs = {t.name: t for t in model.signature.outputs}
        for kind, mapping, own in (("input", step.inputs, inputs), ("output", step.outputs, outputs)):
            for tensor, _ in mapping:
                if tensor not in own:
                    raise InvalidRequest(
                        f"{where}: its {kind}_map names {quote(tensor)}, which is not an {kind} of {step.model!r}; its "
                        f"{kind}s are {', '.join(own)}"
                    )
        unmapped = [t.name for t in model.signature.inputs if t.name not in dict(step.inputs)]  # optional ones may be
        if unmapped:
            raise InvalidRequest(  # Triton's words, then ours
                f"in ensemble {ensemble.name}, input {unmapped[0]} in model {step.model} is not mapped to any ensemble "
                f"tensors: {where}: the model's input {', '.join(map(quote, unmapped))} is in no input_map; map it"
            )
        # a step model without batching may serve a batching ensemble, as in Triton, where the shapes agree with the
        # batch dimension included (its requests then carry the batch), or without it (a batch of 1 is then passed
        # without its batch dimension, and given one back: ``fit``)
        if ensemble.max_batch_size and 0 < model.max_batch_size < ensemble.max_batch_size:
            raise InvalidRequest(  # tritonserver 2.51's words (helper-118), then where and what to do
                f"ensemble {ensemble.name} allows maximum batch size {ensemble.max_batch_size}, but it contains model "
                f"{step.model} which only allows maximum batch size to be {model.max_batch_size} ({where}); lower the "
                "ensemble's, or raise the model's (its config's max_batch_size; for a config that lists no inputs or "
                "outputs, serve --backend-config default-max-batch-size sets the size Triton's auto-complete gives it)"
            )
        batches = model.max_batch_size > 0
        for model_tensor, tensor in step.inputs:
            dtype, shape, source, given_batched, given_by = types[tensor]
            what = f"{step.model!r}'s input {model_tensor!r}"
            inferred = (ensemble.name, given_by, step.model)
            _agree(where, tensor, what, inputs[model_tensor], dtype, shape, source, given_batched != batches, inferred)
        for model_tensor, tensor in step.outputs:
            spec = outputs[model_tensor]
            if tensor in wanted:
                out = wanted[tensor]
                inferred = (ensemble.name, ensemble.name, step.model)
                _agree(where, tensor, f"{step.model!r}'s output {model_tensor!r}", spec, out.dtype, out.shape,
                       "the ensemble's output", batches != batching, inferred)  # fmt: skip
            types[tensor] = (
                spec.dtype, spec.shape, f"{where}'s {step.model!r} output {model_tensor!r}", batches, step.model
            )  # fmt: skip


def _agree(
    where: str,
    tensor: str,
    what: str,
    spec: TensorSpec,
    dtype: DType,
    shape: tuple[int, ...],
    source: str,
    one_batches: bool,
    inferred: tuple[str, str, str],
) -> None:
    """``spec`` takes (or gives) what ``source`` gives as ``dtype`` of ``shape``; ``one_batches``: one side
    batches and the other not, so the shapes may differ by the batching side's batch dimension; ``inferred``: the
    ensemble, the model Triton says ``dtype`` is inferred from and the one ``spec``'s is (for its words)."""
    if spec.dtype is not dtype:
        ensemble, given_by, model = inferred
        raise InvalidRequest(  # Triton's words, then ours
            f"in ensemble {ensemble}, ensemble tensor {tensor}: inconsistent data type: "
            f"{config_schema.type_name(dtype)} is inferred from model {given_by} while "
            f"{config_schema.type_name(spec.dtype)} is inferred from model {model}: "
            f"{where}: ensemble tensor {quote(tensor)} is {dtype.value} as {source}, but {what} is {spec.dtype.value}"
        )
    # ranks of 0 are left alone: ONNX may leave an output's shape unknown
    if spec.shape and shape and not _agreeing(spec.shape, shape, one_batches):
        raise InvalidRequest(
            f"{where}: ensemble tensor {quote(tensor)} has shape {list(shape)} as {source}, but {what} has "
            f"{list(spec.shape)} (-1: any size)"
        )


def _compatible(a: tuple[int, ...], b: tuple[int, ...]) -> bool:
    return len(a) == len(b) and all(x == y or x == -1 or y == -1 for x, y in zip(a, b, strict=True))


def _agreeing(a: tuple[int, ...], b: tuple[int, ...], one_batches: bool) -> bool:
    """Whether whole shapes ``a`` and ``b`` agree, or, where one side batches and the other not, agree but for the
    batching side's batch dimension (as Triton compares an ensemble's tensors: their dims, or their dims with
    the batch dimension, ``ValidateTensorConsistency``)."""
    if _compatible(a, b):
        return True
    if not one_batches:
        return False
    return (len(a) == len(b) + 1 and _compatible(a[1:], b)) or (len(b) == len(a) + 1 and _compatible(a, b[1:]))


def fit(array: np.ndarray, spec: TensorSpec, given_batched: bool, batched: bool) -> np.ndarray:
    """``array``, given by a side that batches or not (``given_batched``), in the shape ``spec`` takes on a side
    that batches or not (``batched``), as Triton's ensembles pass tensors between batching and non-batching
    models (``ReshapeTensorDims``): a batch of 1 loses its batch dimension for a side that takes none, and a
    tensor without one gains it for a side that takes one; any other shape is left for the model to refuse."""
    if given_batched == batched or not spec.shape or spec.accepts(array.shape):
        return array
    if given_batched and array.ndim == len(spec.shape) + 1 and array.shape[0] == 1 and spec.accepts(array.shape[1:]):
        return array.reshape(array.shape[1:])
    if batched and array.ndim + 1 == len(spec.shape) and spec.accepts((1, *array.shape)):
        return array.reshape((1, *array.shape))
    return array


def render(ensemble: Ensemble) -> dict[str, Any]:
    """Its Triton-shaped configuration (the model_configuration extension)."""

    reshapes = {r.name: r for r in ensemble.reshapes}

    def tensor(t: TensorSpec) -> dict[str, Any]:
        dims = list(t.shape[1:] if ensemble.max_batch_size else t.shape)
        shown: dict[str, Any] = {"name": t.name, "data_type": config_schema.type_name(t.dtype), "dims": dims}
        if t.name in reshapes:  # as Triton shows it, after the dims
            shown["reshape"] = {"shape": list(reshapes[t.name].model)}
        return {**shown, "is_shape_tensor": False}

    # the fields Triton prints at their defaults are printed too, as a model's config prints them (clients index
    # them: tritonserver 2.51's ensemble config has them all, polystack's had none, helper-108)
    config: dict[str, Any] = {
        "name": ensemble.name,
        "platform": PLATFORM,
        "backend": "",
        "max_batch_size": ensemble.max_batch_size,
        "input": [
            {**tensor(t), "format": dict(ensemble.formats).get(t.name, "FORMAT_NONE"), "allow_ragged_batch": False,
             "optional": t in ensemble.signature.optional}
            for t in (*ensemble.signature.inputs, *ensemble.signature.optional)
        ],
        "output": [{**tensor(t), "label_filename": dict(ensemble.label_files).get(t.name, "")}
                   for t in ensemble.signature.outputs],
        "batch_input": [],
        "batch_output": [],
        "ensemble_scheduling": {
            "step": [
                {
                    "model_name": s.written or s.model,
                    "model_version": -1 if s.version is None else s.version,
                    "input_map": dict(s.inputs),
                    "output_map": dict(s.outputs),
                    "model_namespace": "",
                }
                for s in ensemble.steps
            ]
        },
        "instance_group": [],
        "default_model_filename": "",
        "cc_model_filenames": {},
        "metric_tags": {},
        "parameters": {},
        "model_warmup": [],
        # as tritonserver 2.51 shows every ensemble's (the data plane sets true where a step is decoupled)
        "model_transaction_policy": {"decoupled": False},
        **({"response_cache": {"enable": ensemble.response_cache}} if "response_cache" in ensemble.given else {}),
    }
    if ensemble.agents:
        config["model_repository_agents"] = repository_agents.render(ensemble.agents)
    return config


# (index, step, its inputs by the step model's names, whether each one's giver batches) -> (its outputs, whether
# the step's model batches)
StepRun = Callable[[int, Step, dict[str, np.ndarray], dict[str, bool]], Awaitable[tuple[Mapping[str, np.ndarray], bool]]]
# the same for a decoupled step: its responses as they come, each one's outputs, whether its model batches, and
# whether it was sent final (with the final flag: the step sends nothing after it)
StepStream = Callable[
    [int, Step, dict[str, np.ndarray], dict[str, bool]], AsyncIterator[tuple[Mapping[str, np.ndarray], bool, bool]]
]


def needed(ensemble: Ensemble, outputs: Collection[str]) -> list[int]:
    """The steps that lead to ``outputs`` (Triton runs only those for a request that asks for some)."""
    giver = {tensor: i for i, step in enumerate(ensemble.steps) for _, tensor in step.outputs}
    wanted, steps = list(outputs), set()
    while wanted:
        i = giver.get(wanted.pop())
        if i is not None and i not in steps:
            steps.add(i)
            wanted += [tensor for _, tensor in ensemble.steps[i].inputs]
    return sorted(steps)


async def run(
    ensemble: Ensemble, inputs: Mapping[str, np.ndarray], outputs: Collection[str], step_run: StepRun
) -> dict[str, np.ndarray]:
    """Run the steps of ``ensemble`` that lead to ``outputs`` on ``inputs`` (checked against its signature by
    the caller), each as soon as the tensors it takes are there, by ``step_run`` (``StepRun``), which returns the
    step model's outputs and whether it batches; those ``outputs``, by name. The first
    step that fails fails it (its error led by where it happened), and the steps still running are
    cancelled."""
    tensors = _flowing(ensemble, inputs)
    batched = dict.fromkeys(inputs, ensemble.max_batch_size > 0)  # whether each tensor's giver batches
    waiting = needed(ensemble, outputs)
    await _settle(ensemble, tensors, batched, waiting, step_run)
    if waiting:  # read() refuses such configs
        raise InvalidRequest(f"ensemble {ensemble.name!r}: steps {waiting} wait on tensors nothing gives")
    return _outputs(ensemble, tensors, batched, outputs)


async def stream(
    ensemble: Ensemble,
    inputs: Mapping[str, np.ndarray],
    outputs: Collection[str],
    step_run: StepRun,
    step_stream: StepStream,
    decoupled: Collection[int],
) -> AsyncIterator[tuple[dict[str, np.ndarray], bool]]:
    """``run`` for an ensemble whose steps ``decoupled`` answer any number of times (``step_stream`` gives each
    of their responses' outputs): the steps that do not depend on them run once; for each response of a decoupled
    step, the steps downstream of it run on that response's tensors, and the ensemble answers ``outputs`` for it.
    A step whose inputs come from several decoupled steps runs for each combination, in order. Each answer comes
    with whether it is the last: every decoupled step it came from sent its response final, as Triton's ensemble
    then sends its answer with the final flag (else the flag comes alone once the steps are done)."""
    tensors = _flowing(ensemble, inputs)
    batched = dict.fromkeys(inputs, ensemble.max_batch_size > 0)
    async for done, done_batched, final in _branches(
        ensemble, tensors, batched, needed(ensemble, outputs), step_run, step_stream, frozenset(decoupled)
    ):
        yield _outputs(ensemble, done, done_batched, outputs), final


async def _branches(
    ensemble: Ensemble,
    tensors: dict[str, np.ndarray],
    batched: dict[str, bool],
    waiting: list[int],
    step_run: StepRun,
    step_stream: StepStream,
    decoupled: frozenset[int],
) -> AsyncIterator[tuple[dict[str, np.ndarray], dict[str, bool], bool]]:
    """The ensemble's tensors once every step of ``waiting`` ran: the steps that answer once run as in ``run``,
    then the first decoupled step whose inputs are there streams, and the rest runs again for each response.
    Each with whether it is the last (its decoupled steps' responses were each sent final)."""
    await _settle(ensemble, tensors, batched, waiting, step_run, decoupled)
    if not waiting:
        yield tensors, batched, True
        return
    absent = _absent(ensemble, tensors, waiting)
    ready = [i for i in waiting if all(t in tensors or t in absent for _, t in ensemble.steps[i].inputs)]
    if not ready:  # read() refuses such configs
        raise InvalidRequest(f"ensemble {ensemble.name!r}: steps {waiting} wait on tensors nothing gives")
    i = ready[0]
    step = ensemble.steps[i]
    rest = [j for j in waiting if j != i]
    responses = _Ahead(step_stream(i, step, *_given(step, tensors, batched)))
    try:
        while True:
            try:
                result, batches, sent_final = await responses.next()
            except StopAsyncIteration:
                return
            except PolystackError as e:
                raise _in_step(e, ensemble, step, i) from None
            these, these_batched = dict(tensors), dict(batched)
            for model_tensor, tensor in step.outputs:
                if model_tensor not in result:
                    raise InvalidRequest(
                        f"in ensemble {ensemble.name!r}, {step.describe(i)} sent a response without its output "
                        f"{model_tensor!r}, which the ensemble takes as {tensor!r}; send it in each response"
                    )
                these[tensor], these_batched[tensor] = result[model_tensor], batches
            branches = _branches(ensemble, these, these_batched, list(rest), step_run, step_stream, decoupled)
            async for done, done_batched, last in branches:
                # the last: the step sent this response final, or has ended by now with nothing more to send (its
                # final flag came alone meanwhile), as Triton's ensemble marks the answer that completes the request
                yield done, done_batched, last and (sent_final or responses.ended)
    finally:
        await responses.aclose()  # (the client went away, or a later step failed): the step's request ends too


class _Ahead:
    """A decoupled step's responses, read as they come by a task of their own, ahead of the steps that run on each:
    so that whether the step has ended, its final flag sent alone, is known as an answer goes out, not only once the
    next response is asked for."""

    def __init__(self, responses: AsyncIterator[tuple[Mapping[str, np.ndarray], bool, bool]]) -> None:
        self._responses = responses
        self._came: collections.deque[tuple[Mapping[str, np.ndarray], bool, bool]] = collections.deque()
        self._over = False  # the step sent its last (or failed: ``_error``)
        self._error: BaseException | None = None
        self._moved = asyncio.Event()
        self._reader = asyncio.ensure_future(self._read())

    async def _read(self) -> None:
        try:
            async for response in self._responses:
                self._came.append(response)
                self._moved.set()
        except Exception as e:  # given to the reader at its turn, after the responses before it
            self._error = e
        finally:
            self._over = True
            self._moved.set()

    @property
    def ended(self) -> bool:
        """Whether the step has sent everything it will, and every response was read."""
        return self._over and self._error is None and not self._came

    async def next(self) -> tuple[Mapping[str, np.ndarray], bool, bool]:
        while not self._came:
            if self._over:
                if self._error is not None:
                    raise self._error
                raise StopAsyncIteration
            self._moved.clear()
            await self._moved.wait()
        return self._came.popleft()

    async def aclose(self) -> None:
        """Stop reading: the step's stream closes, and so its request ends."""
        if not self._reader.done():
            self._reader.cancel()
            await asyncio.wait([self._reader], timeout=1.0)  # its end seen (never raising the reader's cancellation)
        close = getattr(self._responses, "aclose", None)
        if close is not None:
            await close()
        # let go of the step's error (raised from the frames that name this) and of the reader's task (which keeps
        # its cancellation, whose traceback holds _read's frame, which names this): reference cycles, which held
        # the step's model until Python's cycle collector ran
        self._error = None
        self._reader = None  # type: ignore[assignment]


async def _settle(
    ensemble: Ensemble,
    tensors: dict[str, np.ndarray],
    batched: dict[str, bool],
    waiting: list[int],
    step_run: StepRun,
    held: Collection[int] = (),
) -> None:
    """Run the steps of ``waiting`` but those ``held``, each as soon as the tensors it takes are there (at once
    where they do not depend on one another), until none can run: each that ran leaves ``waiting``, its outputs
    added to ``tensors``. The first that fails fails it, and the others still running are cancelled."""
    absent = _absent(ensemble, tensors, waiting)
    running: dict[asyncio.Future[tuple[Mapping[str, np.ndarray], bool]], int] = {}
    try:
        while True:
            for i in [i for i in waiting if i not in held]:
                if not all(t in tensors or t in absent for _, t in ensemble.steps[i].inputs):
                    continue
                waiting.remove(i)
                step = ensemble.steps[i]
                running[asyncio.ensure_future(step_run(i, step, *_given(step, tensors, batched)))] = i
            if not running:
                return
            done, _ = await asyncio.wait(running, return_when=asyncio.FIRST_COMPLETED)
            for future in done:
                i = running.pop(future)
                step = ensemble.steps[i]
                try:
                    result, batches = future.result()
                except PolystackError as e:
                    raise _in_step(e, ensemble, step, i) from None
                for model_tensor, tensor in step.outputs:
                    if model_tensor in result:
                        tensors[tensor], batched[tensor] = result[model_tensor], batches
                    else:  # left out by its model: absent for the steps that take it (as an optional input)
                        absent.add(tensor)
    finally:
        for future in running:
            future.cancel()
        if running:  # their ends are seen (a trace of the request holds theirs) before the request's own
            await asyncio.wait(running, timeout=1.0)
        # the failed step's task keeps its error, which is raised from here: its traceback holds this frame, which
        # named the task (and so the error, whose traceback holds the step's model): a reference cycle
        done = future = None  # type: ignore[assignment]


def _in_step(e: PolystackError, ensemble: Ensemble, step: Step, index: int) -> PolystackError:
    """``e``, the failure of ``step`` (its ``index``), as the ensemble's: in Triton's words (``in ensemble 'e', `` and
    the step's own, which Triton's QA matches), then which step it was."""
    return e.framed(f"in ensemble {ensemble.name!r}, ", f" [{step.describe(index)}]")


def _given(
    step: Step, tensors: Mapping[str, np.ndarray], batched: Mapping[str, bool]
) -> tuple[dict[str, np.ndarray], dict[str, bool]]:
    """What ``step`` takes of the ensemble's tensors, by its model's input names, and whether each one's giver
    batches."""
    given = {model_tensor: tensors[tensor] for model_tensor, tensor in step.inputs if tensor in tensors}
    return given, {model_tensor: batched[tensor] for model_tensor, tensor in step.inputs if tensor in tensors}


def _absent(ensemble: Ensemble, tensors: Mapping[str, np.ndarray], waiting: Collection[int]) -> set[str]:
    """The optional inputs the request left out, and the outputs the steps that ran (those not ``waiting``, none
    running) left out: the steps that take them run without them, as Triton's do (a step whose input is not
    optional is refused by its model)."""
    left = {t.name for t in ensemble.signature.optional if t.name not in tensors}
    ran = (step for i, step in enumerate(ensemble.steps) if i not in waiting)
    return left | {tensor for step in ran for _, tensor in step.outputs if tensor not in tensors}


def _flowing(ensemble: Ensemble, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The request's ``inputs`` as the ensemble's steps take them: in their reshape's shape, where one is given."""
    tensors = dict(inputs)
    for r in ensemble.reshapes:
        if r.name in tensors:  # an input's (the outputs' reshapes are there too: ``_outputs`` reads them)
            tensors[r.name] = tensors[r.name].reshape(r.target(tensors[r.name].shape, to_model=True))
    return tensors


def _outputs(
    ensemble: Ensemble, tensors: Mapping[str, np.ndarray], batched: Mapping[str, bool], outputs: Collection[str]
) -> dict[str, np.ndarray]:
    """The ``outputs`` of the ensemble's ``tensors`` as requests get them: with or without a batch dimension as it
    batches, in their dims where a reshape is given (Triton's words where a step left one out)."""
    specs = {t.name: t for t in ensemble.flowing.outputs}
    back = {r.name: r for r in ensemble.reshapes}
    for name in outputs:
        if name not in tensors:  # left out by the step giving it: the answer holds the others, as Triton's (its words)
            log.warning(
                f"Composing models did not output tensor {name}",
                extra={"ensemble": ensemble.name, "output": name},
            )
    answers = {
        name: fit(tensors[name], specs[name], batched[name], ensemble.max_batch_size > 0)
        for name in outputs
        if name in tensors
    }
    for name in back.keys() & answers.keys():
        answers[name] = answers[name].reshape(back[name].target(answers[name].shape, to_model=False))
    return answers


def load_order(ensembles: Mapping[str, Ensemble]) -> list[str]:
    """The names of ``ensembles`` with each after those its steps run (a cycle: in name order, for the load to
    refuse)."""
    done: list[str] = []

    def visit(name: str, path: frozenset[str]) -> None:
        if name in done or name in path or name not in ensembles:
            return
        for model in sorted(ensembles[name].models):
            visit(model, path | {name})
        done.append(name)

    for name in sorted(ensembles):
        visit(name, frozenset())
    return done
