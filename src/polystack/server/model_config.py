"""Triton's model configuration, both ways: rendered from a loaded model (the model_configuration
extension) and read from a repository load's ``config`` parameter (the model repository extension)
or from ``serve --model-config`` (JSON, or Triton's config.pbtxt: ``config_text.as_json``).

A load's config replaces polystack's own choice of *scheduling* for that load, as Triton's replaces
config.pbtxt: ``max_batch_size``, ``dynamic_batching`` (absent: not batched) and ``instance_group``;
its ``model_warmup`` samples (``warmup.py``) run before the load routes to the new instance.
What it leaves out means what it means to Triton (protobuf's zero: no queue delay, no queue limit, no
default timeout), except ``max_batch_size`` and the instance count, which polystack fills with its
own choice for the model. A model registered from a Triton repository (or a load's files: ``TRITON_IO``)
whose config lists no inputs or no outputs gets what Triton's auto-complete gives it instead: a
``max_batch_size`` of ``default_max_batch_size`` (Triton's ``--backend-config default-max-batch-size``, 4)
where the model can batch, dynamic batching where that is over 1, and its tensors' dims (``autocomplete``);
one that lists both is not completed, and its ``max_batch_size`` left out is 0, as in Triton.
What polystack decides elsewhere (which runtime and variant, from the plan; the signature, from the
store) the config may repeat but not change: a different value is refused, never ignored. Fields
Triton-only features would read (iterative sequences, ...) are accepted at their defaults, so that a
config copied from a Triton server loads, and refused otherwise. ``sequence_batching`` is read into a
``SequencePolicy`` (``batching/sequence.py``) by ``sequence_config.py``, checked as Triton checks it and against
the model. Which fields Triton has and polystack reads, and the readers of protobuf's JSON (both field spellings,
``max_batch_size`` and ``maxBatchSize``; 64-bit integers as numbers or strings), are ``config_schema.py``'s.
An ensemble's config is read by ``ensemble.py``, with the same readers.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, NamedTuple

import orjson

from polystack.backends import ragged as ragged_model
from polystack.backends.base import nvidia_gpus
from polystack.backends.ragged import RaggedSpec
from polystack.backends.reshaped import Reshape
from polystack.batching import BatchPolicy, DynamicBatcher, QueuePolicy
from polystack.batching.policy import MAX_INSTANCES, priority_refusal
from polystack.batching.rate_limiter import Resource, Rule
from polystack.batching.sequence import SequencePolicy
from polystack.engine import BACKEND_ONLY, LoadedEntry, LoadSpec, runtime_loads
from polystack.errors import InvalidRequest, quote
from polystack.formats import fil as fil_format
from polystack.formats import onnx as onnx_format
from polystack.labels import label_files_of
from polystack.protocol import http_codec
from polystack.server import (
    config_text,
    fil_config,
    onnxruntime_config,
    openvino_config,
    pytorch_config,
    repository_agents,
    sequence_config,
    warmup_config,
)
from polystack.server.config_schema import (
    INT32_MAX,
    MAX_DEPTH,
    MAX_MICROSECONDS,
    UINT32_MAX,
    UINT64_MAX,
    config_dims,
    io_dims,
    read_bool,
    read_enum,
    read_int,
    read_int_list,
    read_message,
    read_string,
    type_name,
    whole,
)
from polystack.server.onnxruntime_config import Accelerator, Optimization
from polystack.server.warmup import WarmupSample
from polystack.store import ModelRecord
from polystack.types import Signature, TensorSpec

log = logging.getLogger("polystack.server")

_MAX_INSTANCES = MAX_INSTANCES  # worker threads for one model

FORMATS = ("FORMAT_NONE", "FORMAT_NHWC", "FORMAT_NCHW")  # an input's layout, for clients (Triton's image_client)


# a batch input as a config gives it (kind, target names, data type, source inputs), and a batch output (target
# names, kind, source inputs)
GivenBatchInput = tuple[str, tuple[str, ...], str, tuple[str, ...]]
GivenBatchOutput = tuple[tuple[str, ...], str, tuple[str, ...]]


@dataclass(frozen=True)
class Additions:
    """What a load's config adds to the model beyond its scheduling, kept with the load and shown in GET
    config: warm-up samples (run before the load routes to it), its inputs' layouts (``format``), the
    runtime options Triton's backend parameters and optimization set (with both as the config gave them, to
    show), whether its answers go through the server's response cache (``response_cache.py``), the shapes
    its dims fix where the model's are dynamic, and the repository agents that ran on its files."""

    warmup: tuple[WarmupSample, ...] = ()
    formats: tuple[tuple[str, str], ...] = ()  # (input, FORMAT_NHWC or FORMAT_NCHW), for clients
    options: dict[str, Any] = field(default_factory=dict)
    response_cache: bool = False
    # (tensor, its whole shape) where the config's dims fix a -1 of the model's: clients see and send these
    shapes: tuple[tuple[str, tuple[int, ...]], ...] = ()
    reshape: tuple[Reshape, ...] = ()  # tensors the config reshapes: the load's spec carries them to the runtime
    parameters: tuple[tuple[str, str], ...] = ()  # Triton's backend parameters (name, string value) it set
    optimization: Optimization = field(default_factory=Optimization)
    agents: repository_agents.Agents = ()  # the repository agents that ran on its files (model_repository_agents)
    # inputs a request may leave out (optional: true): graph inputs an initializer gives a default
    optional: tuple[TensorSpec, ...] = ()
    ragged: RaggedSpec | None = None  # its ragged batching: the load's spec carries it to the runtime
    # the outputs a config lists where it lists some of the model's: all clients get and may ask for, as in
    # Triton (its metadata and answers hold its config's outputs); empty: every output
    outputs: tuple[str, ...] = ()
    # its instance groups as Triton shows them, (name, count, rate_limiter): the config's names, Triton's for
    # those it names itself (<model>_<i>), each group's count (Triton's default where it gives none) and what the
    # rate limiter gives its instances (None: the group sets none); empty: the config gives none, and the one
    # group Triton adds then is named as the model
    groups: tuple[tuple[str, int, Rule | None], ...] = ()
    # the groups (by name) whose instances place themselves (KIND_MODEL: a Python model's or a TorchScript module's)
    placed: frozenset[str] = frozenset()
    # the passive groups, as Triton shows them, (name, count): instances the scheduler gives no requests to (a Python
    # model's are initialized and finalized, as Triton's; other runtimes, having no use for them, start none)
    passive: tuple[tuple[str, int], ...] = ()
    # its requests' responses are any number, sent apart from its execute (Triton's decoupled transaction policy:
    # a Python model's): streamed to the client (gRPC's ModelStreamInfer, HTTP's generate_stream)
    decoupled: bool = False
    # the messages of SHOWN_WHERE_GIVEN the config gives: Triton shows them then alone (each in full)
    given: frozenset[str] = frozenset()
    # the config's instance groups' names in its order (passive ones among them), which GET config keeps
    group_order: tuple[str, ...] = ()
    # the config's default_model_filename ("": none given): GET config shows it, as Triton's; polystack loads its
    # stored artifact whatever it is named
    filename: str = ""
    # a Python model's ragged inputs (allow_ragged_batch): its requests batch whatever their shapes there, as
    # Triton's dynamic batcher batches them, each reaching execute as sent (no runtime's ``ragged``: nothing merged)
    ragged_apart: frozenset[str] = frozenset()
    # a Python model's batch inputs (kind, target names, data type, source inputs) and outputs (target names, kind,
    # source inputs) as its config gives them: shown in GET config and applied by nothing, as Triton's Python backend
    # hands execute each request as sent and returns its outputs as execute gives them (tritonserver 2.51)
    python_batch_io: tuple[tuple[GivenBatchInput, ...], tuple[GivenBatchOutput, ...]] = ((), ())

    def rules(self, instances: int) -> list[tuple[Rule, int]]:
        """What the rate limiter gives each of ``instances`` (each group's rule and count; the config's groups
        where their counts add up to the instances that run, else the first group's rule for all)."""
        if sum(c for _, c, _ in self.groups) == instances:
            return [(rule or Rule(), count) for _, count, rule in self.groups]
        return [((self.groups[0][2] if self.groups else None) or Rule(), instances)]

    def seen(self, signature: Signature) -> Signature:
        """The model's ``signature`` as clients see it with these: fixed dims and reshapes applied, optional
        inputs added (a record's signature has none), the outputs the config lists alone."""
        if self.optional and not signature.optional:
            signature = Signature(signature.inputs, signature.outputs, self.optional)
        if self.outputs:
            kept = tuple(t for t in signature.outputs if t.name in self.outputs)
            signature = Signature(signature.inputs, kept, signature.optional)
        shapes = dict(self.shapes) | {r.name: r.full(r.client) for r in self.reshape}
        return signature.with_shapes(shapes) if shapes else signature


def split_field(text: str, name: str) -> tuple[Any, str]:
    """A load's config ``text`` split into its field ``name`` (either spelling; None: not given), which the
    load acts on before the config is read (``version_policy`` picks the versions it serves,
    ``model_repository_agents`` check its files), and the rest, which each version is served with. Text that
    is not a JSON object is left whole, for ``read`` to refuse."""
    try:
        doc = http_codec.loads(text.encode())
    except InvalidRequest:
        return None, text
    camel = re.sub(r"_([a-z])", lambda m: m.group(1).upper(), name)
    given = {name, camel} & doc.keys() if isinstance(doc, dict) else set()
    if len(given) > 1:
        raise InvalidRequest(f"config sets {name} twice")
    if not given:
        return None, text
    value = doc.pop(given.pop())
    try:
        return value, orjson.dumps(doc).decode()
    except (TypeError, RecursionError):  # deeper than a writer goes: far past what read takes
        raise InvalidRequest(f"the config nests deeper than {MAX_DEPTH} levels") from None


# a model record's setting: registered from a Triton model repository (or a load's model files), whose inputs and
# outputs show as Triton's auto-complete shows a config's (``autocomplete``)
TRITON_IO = "triton_io"
IDLE_GAP = "polystack_idle_gap_ms"  # the parameter that carries BatchPolicy.idle_gap_ms through a config
# Triton's default-max-batch-size (--backend-config): the max_batch_size its auto-complete gives a model that
# can batch and whose config leaves it out (or 0)
DEFAULT_MAX_BATCH_SIZE = 4


def triton_batchable(signature: Signature) -> bool:
    """Whether Triton's ONNX Runtime backend's auto-complete would batch a model of ``signature``
    (``AutoCompleteMaxBatch``): it has inputs, and every input and output has a first dim of -1."""
    return bool(signature.inputs) and all(t.shape[:1] == (-1,) for t in (*signature.inputs, *signature.outputs))


def auto_batched(record: ModelRecord, default_max_batch_size: int) -> bool:
    """Whether Triton's auto-complete batches ``record`` where no config says otherwise (``read``)."""
    return bool(record.settings.get(TRITON_IO)) and triton_batchable(record.signature) and default_max_batch_size > 1


def autocomplete(signature: Signature, config: dict[str, Any], batched: bool) -> tuple[Reshape, ...]:
    """The reshapes Triton's ONNX Runtime backend's auto-complete adds to a ``config`` (read) that lists no
    inputs (or no outputs), as ``AutoCompleteIO`` shows the tensors it adds. For a model it batches
    (``batched``; it can only batch one whose inputs and outputs all have a first dim of -1,
    ``triton_batchable``), a tensor of a batch of scalars (the model's ``[-1]``) shows ``dims: [1]`` reshaped to
    the model's ``[]``, so that clients send and get ``[batch, 1]`` as from Triton. With ``max_batch_size`` 0 it
    shows the model's dims as they are (``[-1]``: clients send and get ``[n]``), but a scalar's (the model's
    ``[]``; such a model cannot batch), which shows as ``dims: [1]`` (no reshape, which Triton refuses
    without batching): clients send and get ``[1]``."""
    unlisted = [t for key, tensors in (("input", signature.inputs), ("output", signature.outputs))
                if not config.get(key) for t in tensors]  # fmt: skip
    if not batched:
        return tuple(Reshape(t.name, False, (1,), ()) for t in unlisted if t.shape == ())
    if not triton_batchable(signature):
        return ()
    return tuple(Reshape(t.name, True, (1,), ()) for t in unlisted if t.shape == (-1,))


@dataclass(frozen=True)
class LoadConfig:
    """What a load's config decides for that load: how to batch (None: not batched) and, without
    batching, the most rows a request may hold (None: as the variant allows) and how many requests
    run at once (its instance count; None: as many as the server's shared inference threads)."""

    batching: BatchPolicy | None
    max_batch_size: int | None
    instances: int | None = None
    additions: Additions = field(default_factory=Additions)  # warm-up, input layouts, runtime options
    sequence: SequencePolicy | None = None  # sequence_batching: a stateful model's (then batching is None)


def render(
    entry: LoadedEntry,
    batcher: DynamicBatcher | None,
    instances: int,
    additions: Additions | None = None,
    sequence: SequencePolicy | None = None,
) -> dict[str, Any]:
    """The Triton-shaped configuration of a loaded model, served through ``batcher`` if it has one (or
    through a sequence batcher with ``sequence``), with ``instances`` of its requests (or batches) running
    at once, and what its config added (inputs without a layout there show Triton's default, FORMAT_NONE).
    A sequence model's inputs are those clients send: its control and state tensors show under
    ``sequence_batching``, as in the config it was loaded with."""
    added = additions or Additions()
    sig = entry.signature
    merging = batcher is not None and batcher.batchable  # one that stopped merging runs requests as they come
    if sequence is not None:
        max_batch = sequence.max_batch_size
    elif merging:
        assert batcher is not None
        max_batch = batcher.max_batch_size
    elif batcher is None and sig.may_batch and entry.spec.max_batch_size:
        max_batch = entry.spec.max_batch_size
    else:
        max_batch = 0

    reshaped = {r.name: r for r in entry.spec.reshape}

    fil_dims = fil_format.configured_dims(entry.record.settings.get("fil") if entry.record.format == "fil" else None)

    def tensor(t: TensorSpec) -> dict[str, Any]:
        shown: dict[str, Any] = {"name": t.name, "data_type": type_name(t.dtype), "dims": config_dims(t, max_batch)}
        if t.name in fil_dims:  # as the config wrote them: FIL's answers leave out its dims of 1
            shown["dims"] = list(fil_dims[t.name])
        r = reshaped.get(t.name)
        if r is not None and (r.model or r.batched):  # clients' dims, and the model's own as Triton's reshape (a
            # scalar's dims of 1s alone: Triton refuses an empty reshape without batching)
            shown["reshape"] = {"shape": list(r.model)}
            if r.batched and not max_batch:  # shown without batching (its batcher stopped merging): reads back
                shown["reshape"] = {"shape": [-1, *r.model]}
        return shown

    label_files = label_files_of(entry.record.settings)
    # the fields Triton prints at their defaults are printed too (clients index them): none of them is read
    # (not Triton 24.x's runtime and is_non_linear_format_io: tritonclient's proto, which clients parse a config
    # with, has neither)
    flags = {"is_shape_tensor": False}
    ragged = (added.ragged.ragged if added.ragged is not None else frozenset()) | added.ragged_apart
    inputs = [
        {**tensor(t), "format": dict(added.formats).get(t.name, "FORMAT_NONE"), **flags,
         "allow_ragged_batch": t.name in ragged, "optional": t in sig.optional}
        for t in (*sig.inputs, *sig.optional)
    ]  # fmt: skip
    device = entry.spec.device
    config: dict[str, Any] = {
        "name": entry.name,
        "platform": "" if entry.spec.backend in BACKEND_ONLY else entry.spec.platform,  # as Triton's config of one
        "backend": entry.spec.triton_backend,
        "max_batch_size": max_batch,
        "input": inputs,
        "output": [{**tensor(t), "label_filename": label_files.get(t.name, ""), **flags} for t in sig.outputs],
        "batch_input": [
            {"kind": b.kind, "target_name": [b.target], "data_type": type_name(b.dtype), "source_input": [b.source]}
            for b in (added.ragged.batch_inputs if added.ragged else ())
        ]
        + [
            {"kind": kind, "target_name": list(targets), "data_type": dtype, "source_input": list(sources)}
            for kind, targets, dtype, sources in added.python_batch_io[0]
        ],
        "batch_output": _render_batch_outputs(added.ragged)
        + [
            {"target_name": list(targets), "kind": kind, "source_input": list(sources)}
            for targets, kind, sources in added.python_batch_io[1]
        ],
        "instance_group": [
            {
                "name": name,
                "kind": "KIND_MODEL" if name in added.placed else _kind(device),
                "count": count,
                "gpus": [int(device.partition(":")[2] or 0)] if _kind(device) == "KIND_GPU" and name not in added.placed else [],
                "secondary_devices": [],
                "profile": [],
                "passive": False,
                "host_policy": "",
                **({"rate_limiter": _render_rule(rule)} if rule is not None else {}),
            }
            # the config's groups, run as one pool of their instances; else one group of the instances running
            for name, count, rule in (
                added.groups
                if sum(c for _, c, _ in added.groups) == instances
                else [(added.groups[0][0], instances, added.groups[0][2]) if added.groups else (entry.name, instances, None)]
            )
        ]
        + [  # its passive groups, as the config gives them (their instances take no requests)
            {
                "name": name, "kind": _kind(device), "count": count, "gpus": [], "secondary_devices": [], "profile": [],
                "passive": True, "host_policy": "",
            }
            for name, count in added.passive
        ],
        # Triton's onnxruntime backend names its file so; polystack loads its stored artifact, whatever it is named
        "default_model_filename": added.filename or _DEFAULT_FILENAMES.get(entry.spec.platform, ""),
        "cc_model_filenames": {},
        "metric_tags": {},
        "parameters": {
            **(  # polystack's early leave (serve's batching flags and plans set it), so that the config loads back
                {IDLE_GAP: {"string_value": repr(batcher.policy.idle_gap_ms)}}  # repr: reads back as the same float
                if merging and batcher is not None and batcher.policy.idle_gap_ms
                else {}
            ),
            **{key: {"string_value": value} for key, value in added.parameters},  # only a config's: chosen again
        },
        "optimization": added.optimization.render(),
        **({"response_cache": {"enable": added.response_cache}} if "response_cache" in added.given else {}),
        **(
            {"model_transaction_policy": {"decoupled": added.decoupled}}
            if added.decoupled or "model_transaction_policy" in added.given
            else {}
        ),
    }
    if batcher is not None and (merging or not batcher.policy.merge):  # (not one that stopped merging)
        p = batcher.policy
        config["dynamic_batching"] = {  # every field, as Triton shows them (clients index them)
            # Triton's NormalizeModelConfig: none given shows max_batch_size (a batch leaves at it all the same)
            "preferred_batch_size": list(p.preferred_batch_sizes) or ([max_batch] if max_batch else []),
            "max_queue_delay_microseconds": round(p.max_queue_delay_ms * 1000),
            "preserve_ordering": p.preserve_ordering,
            "priority_levels": p.priority_levels,
            "default_priority_level": p.default_priority_level,
            "priority_queue_policy": {str(level): _render_queue(q) for level, q in p.priority_queues},
        }
        queue = _render_queue(p.queue_policy(0))
        if queue != _TRITON_QUEUE or "default_queue_policy" in added.given:  # (polystack's flags may set one)
            config["dynamic_batching"]["default_queue_policy"] = queue
    config["model_warmup"] = [warmup_config.render(w, max_batch) for w in added.warmup]
    if sequence is not None:
        config["sequence_batching"] = sequence_config.render(sequence)
    if added.agents:
        config["model_repository_agents"] = repository_agents.render(added.agents)
    if added.group_order:  # passive groups where the config puts them, as Triton keeps its groups' order
        place = {name: i for i, name in enumerate(added.group_order)}
        config["instance_group"].sort(key=lambda g: place.get(g["name"], len(place)))
    return config


# messages Triton's GET config shows only where a config gives them (a message's presence is what protobuf keeps)
SHOWN_WHERE_GIVEN = ("response_cache", "model_transaction_policy", "default_queue_policy")
# the queue policy Triton's default is: what an empty ModelQueuePolicy shows
_TRITON_QUEUE = {
    "timeout_action": "REJECT", "default_timeout_microseconds": 0, "allow_timeout_override": False, "max_queue_size": 0
}  # fmt: skip


def given_messages(config: dict[str, Any]) -> frozenset[str]:
    """Which messages of ``SHOWN_WHERE_GIVEN`` ``config`` gives (null gives none, as in protobuf's JSON)."""
    batching = config.get("dynamic_batching")
    within = {"default_queue_policy": batching if isinstance(batching, dict) else {}}  # where each is, but the top
    return frozenset(key for key in SHOWN_WHERE_GIVEN if within.get(key, config).get(key) is not None)


def _decoupled(value: Any, name: str, spec: LoadSpec, cached: bool) -> bool:
    """Whether the config's ``model_transaction_policy`` makes the model decoupled: a Python model's alone (its
    code sends the responses), and not one answered from the response cache, as in Triton."""
    policy = read_message(value if value is not None else {}, "model_transaction_policy", "model_transaction_policy")
    decoupled = read_bool(policy, "decoupled", "model_transaction_policy")
    if decoupled and spec.backend != "python":
        raise InvalidRequest(
            f"the config sets model_transaction_policy.decoupled, which only a Python model's code honours (it sends "
            f"each request's responses itself); polystack serves {name!r} with {spec.backend!r}, which answers each "
            "request once: leave model_transaction_policy out"
        )
    if decoupled and cached:
        raise InvalidRequest(  # Triton's words
            f"Response Cache does not currently support model {name} with 'decoupled' transaction policy. Please "
            "disable the response cache."
        )
    return decoupled


def _render_batch_outputs(ragged: RaggedSpec | None) -> list[dict[str, Any]]:
    """A config's batch outputs as Triton shows them: one per source input, naming the outputs it scatters."""
    by_source: dict[str, list[str]] = {}
    for output, source, _ in ragged.scattered if ragged is not None else ():
        by_source.setdefault(source, []).append(output)
    return [
        {"target_name": outputs, "kind": ragged_model.SCATTER, "source_input": [source]}
        for source, outputs in by_source.items()
    ]


def _render_queue(q: QueuePolicy) -> dict[str, Any]:
    """``q`` as Triton's ``ModelQueuePolicy``: what reads back (``_queue_policy``) as ``q``."""
    return {  # every field, as tritonserver 2.51 prints them (helper-114: code indexes timeout_action)
        "timeout_action": "DELAY" if q.delay else "REJECT",
        # exact to 2^53 microseconds (285 years); past that the nearest float, within uint64 (2^64 - 1 reads back so)
        "default_timeout_microseconds": min(round(q.timeout_s * 1e6), UINT64_MAX) if q.timeout_s is not None else 0,
        "allow_timeout_override": q.client_timeouts,
        "max_queue_size": q.max_queue_size,
    }


@dataclass(frozen=True)
class ConfigFile:
    """A model's config given at start (``serve --model-config NAME=FILE``, or a model folder of
    ``--model-repository``): its ``text`` as JSON, and the ``directory`` it came from, the model directory
    of Triton's layout: warm-up samples read their ``input_data_file`` from its ``warmup/`` folder.
    ``source`` says where it came from in errors (default: ``serve --model-config NAME``); ``versions`` are
    those a repository's version policy picked, which a load by name loads again (empty: the latest)."""

    text: str
    directory: Path | None = None
    source: str = ""
    versions: tuple[int, ...] = ()
    # a repository folder's model_repository_agents, run on its files each time they are read, shown in GET config
    agents: repository_agents.Agents = ()
    # serve --model-config's version_policy (None: none given), which picks the versions the server serves among
    # the store's where the command line names the model without one (``Server._refs``)
    policy: Any = None
    # a repository folder's version_policy as its config writes it (None: none), which GET config shows while the
    # versions it picks are those served, as Triton shows the config as written
    written_policy: Any = None


# what Triton names the runtime of every file of a format (ONNX's, TorchScript's): a config that says so leaves the
# runtime to polystack's plan, as a repository's config does (model_repository.py leaves it out)
_DEFAULT_RUNTIME = {
    "onnxruntime": "onnx", "onnxruntime_onnx": "onnx",
    "pytorch": "torchscript", "pytorch_libtorch": "torchscript", "libtorch": "torchscript",
    "torch_aoti": "torch_aoti",
}  # fmt: skip


# Triton's platforms polystack has no runtime of, and what they run
_UNSERVED_PLATFORMS = {
    "tensorrt_plan": "TensorRT engines", "tensorflow_graphdef": "TensorFlow GraphDef",
    "tensorflow_savedmodel": "TensorFlow SavedModel", "caffe2_netdef": "Caffe2 NetDef",
}  # fmt: skip


def triton_format(text: str | None) -> str:
    """The format of the file a config's backend or platform is Triton's name for (``onnx``, ``torchscript``), or
    empty."""
    if not text:
        return ""
    try:
        config = config_text.parse_config(text)
        platform = read_string(config, "platform", "config")
        backend = read_string(config, "backend", "config")
    except InvalidRequest:
        return ""  # ``read`` says what is wrong with it
    # the platform first: it names the file (a backend, pytorch, runs TorchScript's and AOTInductor's)
    return _DEFAULT_RUNTIME.get(platform) or _DEFAULT_RUNTIME.get(backend, "")


def runtime_of(text: str | None) -> str:
    """The runtime a config's ``backend`` names, where it names one polystack may choose for a model (empty:
    none, ONNX Runtime or PyTorch, which Triton names for every ONNX or TorchScript file, or Python's, whose
    models have no other);
    ``read`` checks the rest of the config."""
    if not text:
        return ""
    try:
        backend = read_string(config_text.parse_config(text), "backend", "config")
    except InvalidRequest:
        return ""  # ``read`` says what is wrong with it
    return "" if backend in ("", "python") or backend in _DEFAULT_RUNTIME else backend


def read(
    text: str,
    record: ModelRecord,
    spec: LoadSpec,
    default: BatchPolicy | None,
    model_dir: Path | None = None,
    default_max_batch_size: int = DEFAULT_MAX_BATCH_SIZE,
    auto_complete: bool = True,
    python_based: str = "",
    python_folder: Path | None = None,
) -> LoadConfig:
    """What the ``config`` load parameter ``text`` says for ``record`` served by ``spec``; ``default``
    is the batch policy polystack would have chosen, which fills ``max_batch_size`` and the instance
    count where the config leaves them out. ``model_dir`` is the directory warm-up files are read from
    (``warmup/`` in it); a load's config sent over the network has none. A ``TRITON_IO`` model's config that
    lists no inputs or no outputs is auto-completed as Triton does it, with ``default_max_batch_size``; without
    ``auto_complete`` (``serve --disable-auto-complete-config``) it is refused, as Triton's backend refuses it;
    ``python_based``: the Python-based backend a Python model's own config names (its ``backend`` in a load's too)."""
    config = config_text.parse_config(text)
    _check_served_as(config, record, spec, python_based)
    batch_io = _triton_checks(config, record.name)  # the config's batch inputs and outputs, as given
    parameters = _parameters(config.get("parameters"), spec)
    gap = dict(parameters).get(IDLE_GAP)
    parameters = tuple((k, v) for k, v in parameters if k != IDLE_GAP)
    optimization = _optimization(config.get("optimization"))
    options = _runtime_options(config, record, spec, parameters, optimization, auto_complete, python_folder)
    # a Python model's signature is its config's: one taking no inputs batches as the config says (Triton loads it)
    takes_nothing = spec.backend == "python" and record.signature.takes_nothing
    # batched as the outputs the config lists are (the others are never asked for: helper-269, a model with an
    # unlisted fixed-shape output was refused a max_batch_size that Triton's ONNX Runtime backend takes)
    listed = [o.get("name") for o in config.get("output") or () if isinstance(o, dict)]  # the outputs it lists
    shown = {n for n in record.signature.output_names if n in listed} or set(record.signature.output_names)
    batched = record.signature.batches_with(shown) or takes_nothing
    limit = spec.max_batch_size  # the variant's own, if it has one
    max_batch = read_int(config, "max_batch_size", "config", 0, INT32_MAX) if "max_batch_size" in config else None
    # Triton's auto-complete of a repository's config that leaves inputs or outputs to it (``_autofill``)
    both_listed = config.get("input") and config.get("output")
    autofills = bool(record.settings.get(TRITON_IO)) and auto_complete and not both_listed and not takes_nothing
    _check_max_batch(record, max_batch, batched, limit, autofills)
    groups = config.get("instance_group")
    instances = _instances(groups, spec, record.name) if groups is not None else None
    dynamic = config.get("dynamic_batching")
    autofilled: int | None = None
    if record.settings.get(TRITON_IO):
        if not auto_complete:
            _check_strict(config, record)
        if autofills:
            max_batch, dynamic, autofilled = _autofill(record, max_batch, dynamic, config, limit, default_max_batch_size)
        elif max_batch is None:  # Triton's: a config that lists both is not auto-completed, and its zero is 0
            max_batch = 0
    with _autofill_said(autofilled, config):
        sequence, batching, rows, instances, max_batch = _scheduling(
            config, record, spec, default, model_dir, dynamic, max_batch, instances, batched, limit
        )
        if gap is not None:
            batching = _idle_gap(gap, batching)
        formats, shapes, reshapes, optional, ragged = _tensors(config, record, spec, max_batch)
        _all_inputs(config, record, sequence, ragged)
        if ragged is not None and sequence is not None:
            raise InvalidRequest(
                "the config sets sequence_batching and a ragged batch (allow_ragged_batch, batch_input or batch_output); "
                "polystack's sequence batcher batches requests of one shape only: leave the ragged batching out"
            )
        if record.settings.get(TRITON_IO):  # its unlisted tensors as Triton shows them
            if sequence is None:
                filled = {b.target for b in ragged.batch_inputs} if ragged is not None else set()  # not clients'
                reshapes += tuple(r for r in autocomplete(record.signature, config, max_batch > 0) if r.name not in filled)
            else:  # a sequence model's scalar outputs (its inputs and state pass its sequence batcher as they are)
                kept = {t.name for t in record.signature.inputs} | {s.output for s in sequence.states}
                reshapes += tuple(r for r in autocomplete(record.signature, config, False) if r.name not in kept)
        # warm-up samples are in the shapes clients send
        seen = Additions(shapes=shapes, reshape=reshapes, optional=optional).seen(record.signature)
        if ragged is not None:  # ragged inputs in the dims requests send, no batch inputs
            seen = ragged.shown(seen)
        warmup = warmup_config.read(
            config.get("model_warmup"), replace(record, signature=seen), max_batch, model_dir, spec.backend == "python"
        )
        cache = read_message(config.get("response_cache", {}), "response_cache", "response_cache")
        cached = read_bool(cache, "enable", "response_cache")  # answered from the server's cache (--cache-config)
        decoupled = _decoupled(config.get("model_transaction_policy"), record.name, spec, cached)
        if sequence is not None and cached:  # Triton's words, then what to do
            raise InvalidRequest(
                f"Response Cache does not currently support model {record.name!r} with sequence batching scheduler. "
                "Please disable the response cache (its answers depend on the sequence's state)"
            )
    # what clients may get: a sequence model's outputs but the states it keeps (unless the config lists them)
    visible = (sequence.shown(record.signature) if sequence is not None else record.signature).output_names
    some = bool(listed) and set(listed) < set(visible)
    every_group = _groups(groups, record.name, spec) if groups is not None else ()
    passive = _passive(groups)
    shown_groups = tuple(g for g, off in zip(every_group, passive, strict=True) if not off)
    additions = Additions(
        warmup, formats, options, cached, shapes, reshapes, parameters, optimization, optional=optional, ragged=ragged,
        outputs=tuple(t for t in visible if t in listed) if some else (), groups=shown_groups, decoupled=decoupled,
        filename=config.get("default_model_filename") or "", group_order=tuple(g[0] for g in every_group),
        # the groups that place themselves, by the names Triton gives them
        placed=frozenset(
            shown[0] for shown, g in zip(every_group, groups or (), strict=True) if g.get("kind") == "KIND_MODEL"
        ),
        passive=tuple((name, count) for (name, count, _), off in zip(every_group, passive, strict=True) if off),
        given=given_messages(config),
        ragged_apart=frozenset(
            d["name"] for i, d in enumerate(config.get("input") or ())
            if record.format == "python" and read_bool(d, "allow_ragged_batch", f"input[{i}]")
        ),
        python_batch_io=batch_io if record.format == "python" else ((), ()),
    )  # fmt: skip
    if autofilled is not None:  # Triton's warning, with what to do
        log.warning(
            "autofilled max_batch_size, as Triton's auto-complete does: the model can batch and its config gives "
            "none; set max_batch_size in its config (or serve --backend-config default-max-batch-size=N) "
            "for larger batches",
            extra={"model": record.name, "max_batch_size": autofilled},
        )
    return LoadConfig(batching, rows, instances, additions, sequence)


def _check_served_as(config: dict[str, Any], record: ModelRecord, spec: LoadSpec, python_based: str) -> None:
    """The config's name, platform and backend against the model it loads and the runtime polystack serves it with
    (``python_based``: the Python-based backend a Python model's own config names)."""
    name = read_string(config, "name", "config")
    if name and name != record.name:  # Triton's poll fails ("unexpected directory name"): its 500, as 2.51 answers
        raise InvalidRequest(
            f"the config names model {quote(name)}, but it is loading {record.name!r}; leave the name out, or name "
            f"{record.name!r}"
        ).before_model_read()
    for key, ours in (("platform", spec.platform), ("backend", spec.backend)):
        theirs = read_string(config, key, "config")
        served_as = (spec.triton_backend, python_based or None)  # a Python-based backend's model: that backend's name
        if _DEFAULT_RUNTIME.get(theirs) == record.format or (key == "backend" and theirs in served_as):
            continue  # the plan's runtime serves it, as a repository's config with it is served
        if theirs and theirs != ours:
            if key == "platform" and theirs in _UNSERVED_PLATFORMS:
                raise InvalidRequest(
                    f"the config asks for platform {quote(theirs)} ({_UNSERVED_PLATFORMS[theirs]}), which polystack has "
                    f"no runtime of; {record.name!r} is a {record.format} model, which it runs as {ours!r}: leave "
                    "platform and backend out"
                )
            if key == "backend" and not runtime_loads(theirs, record.format):
                raise InvalidRequest(
                    f"the config asks for backend {quote(theirs)}, which polystack has no runtime of for {record.name!r}"
                    f" (a {record.format} model, which it runs as {ours!r}); leave platform and backend out"
                )
            raise InvalidRequest(
                f"the config asks for {key} {quote(theirs)}, but polystack runs {record.name!r} as {ours!r} (its plan "
                "for this profile, or the default variant); leave platform and backend out, or tune a plan that "
                "chooses another runtime (`polystack tune`)"
            )


def _check_max_batch(
    record: ModelRecord, max_batch: int | None, batched: bool, limit: int | None, autofills: bool
) -> None:
    """The config's max_batch_size (None: left out) against the model's batch dimension and the rows the variant
    takes (``limit``); ``autofills``: Triton's auto-complete would fill the config in (its words then)."""
    if max_batch and not batched:
        fixed = [t.name for t in record.signature.inputs if t.shape[:1] == (1,)]
        triton = (  # its words where its auto-complete refuses it (``_autofill``)
            f"autofill failed for model {record.name!r}: model does not support batching while non-zero "
            "max_batch_size is specified: "
            if autofills and not triton_batchable(record.signature)
            else ""
        )
        raise InvalidRequest(
            f"{triton}the config sets max_batch_size {max_batch}, but {record.name!r} takes no batch dimension on "
            "every input"
            + (
                f" ({', '.join(map(repr, fixed))} fixes its first dim at 1); save the model with a dynamic first dim "
                "(OpenVINO IR: openvino.Model.reshape with -1 there, before openvino.save_model), or set max_batch_size 0"
                if fixed
                else "; set max_batch_size 0"
            )
        )
    if limit and batched and max_batch is not None and not 1 <= max_batch <= limit:
        raise InvalidRequest(
            f"the config sets max_batch_size {max_batch}, but the variant polystack serves {record.name!r} with takes "
            f"from 1 to {limit} rows; set max_batch_size from 1 to {limit}"
        )


def _check_strict(config: dict[str, Any], record: ModelRecord) -> None:
    """A repository model's config under ``--disable-auto-complete-config`` (Triton's strict model config): it lists
    what auto-complete would fill in."""
    # Triton's ONNX Runtime backend's words, then what to do (a Python model may take nothing)
    if not config.get("input") and not record.signature.takes_nothing:
        raise InvalidRequest(
            f"unable to load model {record.name!r}, configuration expects 0 inputs, model provides "
            f"{len(record.signature.inputs)}: with --disable-auto-complete-config the config lists the model's "
            "inputs (and outputs)"
        )
    if not config.get("output"):
        raise InvalidRequest(
            f"the config of model {record.name!r} lists no outputs, which --disable-auto-complete-config leaves "
            "to it (Triton's strict model config): list the outputs clients get"
        )
    untyped = [(k, d.get("name")) for k in ("input", "output") for d in config.get(k) or () if isinstance(d, dict)
               and not d.get("data_type")]  # fmt: skip
    if untyped:  # what auto-complete would fill in (Triton's words, then what to do)
        raise InvalidRequest(
            f"model {untyped[0][0]} {quote(untyped[0][1])} must specify 'data_type' for {record.name}: "
            "--disable-auto-complete-config leaves nothing to fill it in; give its data_type"
        )


def _runtime_options(
    config: dict[str, Any],
    record: ModelRecord,
    spec: LoadSpec,
    parameters: tuple[tuple[str, str], ...],
    optimization: Optimization,
    auto_complete: bool,
    python_folder: Path | None,
) -> dict[str, Any]:
    """The options of the runtime serving ``record`` (``spec``'s backend) that the config's ``parameters`` and
    ``optimization`` set, each read as Triton's backend of that runtime reads them."""
    # a Python model's parameters are its own, read by its code in its args' model_config: the config this load
    # follows, as Triton hands its Python backend the config a load overrides
    if spec.backend == "python":
        options: dict[str, Any] = {"config": json.dumps(config), "auto_complete": auto_complete}
        if python_folder is not None:  # its folder in a local repository: args["model_repository"], as Triton's
            options["folder"] = str(python_folder)
    elif spec.backend == "openvino":  # ONNX Runtime's optimization settings refused first, in its module's words
        onnxruntime_config.options((), optimization, spec.backend, spec.device)
        options = openvino_config.options(parameters, spec.device)
    elif spec.backend == "fil":
        onnxruntime_config.options((), optimization, spec.backend, spec.device)
        options = fil_config.options(parameters, record.settings.get("fil"))
    elif record.format == "torchscript":  # Triton's PyTorch backend's parameters: checked, applied by its runtime
        options = onnxruntime_config.options((), optimization, spec.backend, spec.device)
        options |= pytorch_config.options(parameters, applied=spec.backend == "torchscript")
    elif record.format == "torch_aoti":  # the same backend's, as it reads them for AOTInductor packages
        options = onnxruntime_config.options((), optimization, spec.backend, spec.device)
        options |= pytorch_config.aoti_options(parameters)
    else:
        options = onnxruntime_config.options(parameters, optimization, spec.backend, spec.device)
    return options


class _Scheduling(NamedTuple):
    """How a config schedules its model's requests (``_scheduling``)."""

    sequence: SequencePolicy | None  # sequence_batching's
    batching: BatchPolicy | None  # dynamic_batching's
    rows: int | None  # unbatched: the most rows a request may hold
    instances: int | None  # an unbatched model's own threads (None: the shared pool, or a policy holds them)
    max_batch: int  # the max_batch_size it serves with (0: no batch dimension)


def _scheduling(
    config: dict[str, Any],
    record: ModelRecord,
    spec: LoadSpec,
    default: BatchPolicy | None,
    model_dir: Path | None,
    dynamic: Any,
    max_batch: int | None,
    instances: int | None,
    batched: bool,
    limit: int | None,
) -> _Scheduling:
    """Triton's scheduling choice: ``sequence_batching``, ``dynamic_batching`` (``dynamic``), or its default
    scheduler, with the ``max_batch_size`` and instance count the config gives (None: left out) or polystack's
    plan (``default``) within the variant's ``limit``."""
    sequence: SequencePolicy | None = None
    batching: BatchPolicy | None = None
    rows: int | None = None  # unbatched: the most rows a request may hold
    if config.get("sequence_batching") is not None:
        if dynamic is not None:
            raise InvalidRequest(
                "the config sets both dynamic_batching and sequence_batching, which Triton's model configuration "
                "holds one of (scheduling_choice); keep sequence_batching for a stateful model"
            )
        if max_batch is None:  # polystack's own: the policy's, within the variant's limit
            max_batch = (default.max_batch_size if default else BatchPolicy().max_batch_size) if batched else 0
            max_batch = min(max_batch, limit) if limit and max_batch else max_batch
        # Triton's instance count where the config gives none (its slots: max_batch_size per instance)
        count = instances or _default_count(spec) or 1
        sequence = sequence_config.read(
            config["sequence_batching"], record, max_batch, count, model_dir, config, spec.backend == "python"
        )
        # the policy holds them; a max_batch_size of 0 is no batch dimension (inputs' first dims need not agree)
        rows, instances = max_batch, None
    elif dynamic is None:
        # Triton's default scheduler: each instance runs one request at a time, the others queue
        stated = max_batch  # the config's (or Triton's auto-complete's)
        if max_batch is None:  # polystack's own: the variant's limit
            max_batch = limit if batched and limit else 0
        # a stated 0: no batch dimension, so that dims of -1 need not agree as a batch's would (Triton's)
        rows = max_batch or (0 if stated == 0 else None)
    elif not batched or max_batch == 0:
        # Triton's dynamic batcher over a model without batching: each request runs alone, through its queues
        # (their limits, timeouts, priority levels), as Triton creates it whatever max_batch_size is
        given = read_message(dynamic, "dynamic_batching", "dynamic_batching").get("preferred_batch_size")
        if given:
            raise InvalidRequest(
                f"dynamic batching preferred size must be <= max batch size for {record.name}: max_batch_size is "
                "0 (requests run one a call); leave preferred_batch_size out"
            )
        if instances is None:
            instances = default.instances if default else _default_count(spec) or 1  # a plan's, else Triton's
        batching = replace(_batching(dynamic, 1, instances, record.name), merge=False)
        max_batch, rows, instances = 0, 0, None  # no batch dimension
    else:
        if max_batch is None:  # polystack's own: the policy's, within the variant's limit
            max_batch = default.max_batch_size if default else BatchPolicy().max_batch_size
            max_batch = min(max_batch, limit) if limit else max_batch
        if instances is None:
            instances = default.instances if default else _default_count(spec) or 1  # a plan's, else Triton's
        batching, instances = _batching(dynamic, max_batch, instances, record.name), None  # the policy holds them
    assert max_batch is not None
    return _Scheduling(sequence, batching, rows, instances, max_batch)


def _autofill(
    record: ModelRecord, max_batch: int | None, dynamic: Any, config: dict[str, Any], limit: int | None, default: int
) -> tuple[int | None, Any, int | None]:
    """Triton's auto-complete of a config that leaves the model's inputs or outputs to it (AutoCompleteMaxBatch):
    the max_batch_size and dynamic batching it gives ``record`` (what Triton's clients read), and the size it
    filled in (None: the config gave one)."""
    autofilled = None
    if not triton_batchable(record.signature):
        if max_batch:
            raise InvalidRequest(
                f"autofill failed for model {record.name!r}: model does not support batching while non-zero "
                "max_batch_size is specified (Triton's words: the model's inputs and outputs do not all take "
                "a batch on their first dim); set max_batch_size 0, or leave it out"
            )
        return max_batch, dynamic, None
    if not max_batch:
        max_batch = autofilled = min(default, limit) if limit else default
    if max_batch > 1 and dynamic is None and config.get("sequence_batching") is None:
        dynamic = {}  # Triton turns dynamic batching on for a model it can batch
    return max_batch, dynamic, autofilled


@contextlib.contextmanager
def _autofill_said(autofilled: int | None, config: dict[str, Any]) -> Iterator[None]:
    """A refusal of a config whose max_batch_size Triton's auto-complete filled in (``autofilled``; None: it
    did not) says so first: the size it refuses was not written by the user."""
    try:
        yield
    except InvalidRequest as e:
        if autofilled is None or "max_batch_size" not in e.message:  # a refusal the size does not decide
            raise
        missing = "inputs" if not config.get("input") else "outputs"
        raise e.prefixed(
            f"max_batch_size {autofilled} is what Triton's auto-complete gives this model, whose config lists no "
            f"{missing} and leaves max_batch_size 0 (serve --backend-config default-max-batch-size); set "
            "max_batch_size, or list its inputs and outputs"
        ) from None


def _batching(value: Any, max_batch: int, instances: int, model: str) -> BatchPolicy:
    where = "dynamic_batching"
    d = read_message(value, where, where)
    preferred = d.get("preferred_batch_size", [])
    if not isinstance(preferred, list):
        raise InvalidRequest(f"{where}.preferred_batch_size must be a list of batch sizes")
    sizes = [whole(p, f"{where}.preferred_batch_size", 1, max_batch) for p in preferred]
    delay_us = read_int(d, "max_queue_delay_microseconds", where, 0, MAX_MICROSECONDS)
    queue = _queue_policy(d.get("default_queue_policy", {}), f"{where}.default_queue_policy")
    levels = read_int(d, "priority_levels", where, 0, UINT64_MAX)
    default_level = read_int(d, "default_priority_level", where, 0, UINT64_MAX)
    by_level = d.get("priority_queue_policy", {})
    if not isinstance(by_level, dict):
        raise InvalidRequest(f"{where}.priority_queue_policy must map priority levels to queue policies")
    if not levels and (default_level or by_level):
        given = "default_priority_level" if default_level else "priority_queue_policy"
        raise InvalidRequest(
            f"{where} sets {given} without priority_levels, so it would change nothing (Triton ignores it); "
            "set priority_levels, or leave it out"
        )
    queues: dict[int, QueuePolicy] = {}
    for key, policy in by_level.items():
        level = whole(key, f"{where}.priority_queue_policy's level", 0, UINT64_MAX)
        if level in queues:
            raise InvalidRequest(f"{where}.priority_queue_policy gives level {level} twice ({quote(key)} is {level})")
        queues[level] = _queue_policy(policy, f"{where}.priority_queue_policy[{key}]")
    preserve = read_bool(d, "preserve_ordering", where)
    delays = any(q.delay and q.timeout_s for q in (queue, *queues.values()))
    refusal = priority_refusal(levels, default_level, list(queues), preserve, delays)
    if refusal:  # Triton's sentence and the model's name, as Triton says it, then what to change
        raise InvalidRequest(f"{refusal[0]} for {model}; {refusal[1]}")
    return BatchPolicy(
        max_batch_size=max_batch,
        max_queue_delay_ms=delay_us / 1000.0,
        preferred_batch_sizes=tuple(sizes),  # as written: GET config shows them so, as Triton does (helper-279)
        max_queue_size=queue.max_queue_size,
        timeout_s=queue.timeout_s,
        client_timeouts=queue.client_timeouts,
        client_timeout_needs_default=True,  # as Triton's queues take a client's timeout
        delay=queue.delay,
        instances=instances,
        idle_gap_ms=0,  # Triton's rule: a batch waits out the delay for its preferred size
        priority_levels=levels,
        default_priority_level=default_level,
        priority_queues=tuple(sorted(queues.items())),
        preserve_ordering=preserve,
    )


def _queue_policy(value: Any, where: str) -> QueuePolicy:
    """Triton's ``ModelQueuePolicy`` (the default queue's, or a priority level's)."""
    queue = read_message(value, where, "default_queue_policy")
    action = read_enum(queue, "timeout_action", where, "ModelQueuePolicy.TimeoutAction") or "REJECT"
    if action not in ("REJECT", "DELAY"):
        raise InvalidRequest(
            f"{where}.timeout_action {quote(action)} is not a value of Triton's ModelQueuePolicy.TimeoutAction; "
            "give REJECT (refuse a request past its timeout) or DELAY (run it after the others)"
        )
    # any uint64, as Triton takes it (its L0_config_json loads 2^64 - 1): a deadline is compared, never slept to
    timeout_us = read_int(queue, "default_timeout_microseconds", where, 0, UINT64_MAX)
    return QueuePolicy(
        max_queue_size=read_int(queue, "max_queue_size", where, 0, UINT32_MAX),
        timeout_s=timeout_us / 1e6 if timeout_us else None,
        client_timeouts=read_bool(queue, "allow_timeout_override", where),
        delay=action == "DELAY",
    )


def _groups(groups: list[dict[str, Any]], model: str, spec: LoadSpec) -> tuple[tuple[str, int, Rule | None], ...]:
    """The config's instance groups (checked by ``_instances``) as Triton names and counts them
    (NormalizeInstanceGroup): a group without a name is ``<model>_<its index>``, without a count Triton's
    default one; and each one's rate limiter rule."""
    shown = []
    for i, item in enumerate(groups):
        g = read_message(item, f"instance_group[{i}]", "instance_group")
        rule = _rate_limiter(g["rate_limiter"], f"instance_group[{i}].rate_limiter") if "rate_limiter" in g else None
        shown.append((g.get("name") or f"{model}_{i}", int(g.get("count") or 0) or _default_count(spec) or 1, rule))
    return tuple(shown)


def _passive(groups: Sequence[dict[str, Any]] | None) -> list[bool]:
    """Whether each of the config's instance groups is passive (checked by ``_instances``)."""
    return [bool(read_bool(g, "passive", f"instance_group[{i}]")) for i, g in enumerate(groups or ())]


def _instances(value: Any, spec: LoadSpec, model: str) -> int:
    if not isinstance(value, list) or not value:
        raise InvalidRequest("instance_group must be a list of at least one group")
    ours = _kind(spec.device)
    index = int(spec.device.partition(":")[2] or 0) if ours == "KIND_GPU" else None
    total = 0
    active = False
    for i, item in enumerate(value):
        where = f"instance_group[{i}]"
        group = read_message(item, where, "instance_group")
        read_string(group, "name", where)
        passive = read_bool(group, "passive", where)
        kind = read_enum(group, "kind", where, "ModelInstanceGroup.Kind") or "KIND_AUTO"
        gpus = read_int_list(group.get("gpus", []), f"{where}.gpus", -(1 << 31))
        placed = ours if kind == "KIND_AUTO" else kind  # Triton's KIND_AUTO: KIND_CPU where it has no GPU
        if gpus and placed in ("KIND_CPU", "KIND_MODEL"):  # Triton's words (ValidateInstanceGroup), then what to do
            raise InvalidRequest(
                f"instance group {read_string(group, 'name', where) or f'{model}_{i}'} of model {model} has kind "
                f"{placed} but specifies one or more GPUs: {where}.gpus is {gpus}; leave gpus out"
            )
        # KIND_MODEL: the model places itself (Triton's Python and PyTorch backends run its instances so: on the CPU,
        # or, a TorchScript module's, on the device polystack runs it on)
        if kind not in ("KIND_AUTO", ours) and not (kind == "KIND_MODEL" and spec.backend in ONE_INSTANCE):
            triton = (  # Triton's words on a host without GPUs (its ValidateInstanceGroup), then polystack's
                f"instance group {read_string(group, 'name', where) or f'{model}_{i}'} of model {model} has kind "
                "KIND_GPU but no GPUs are available: "
                if kind == "KIND_GPU" and not nvidia_gpus()
                else ""
            )
            raise InvalidRequest(
                f"{triton}{where}.kind {quote(kind)} does not match where polystack runs this model ({spec.device}: "
                f"{ours}); use {ours} or KIND_AUTO, or serve a variant built for that device"
            )
        if any(g != index for g in gpus):
            raise InvalidRequest(
                f"{where}.gpus {gpus} does not match the device polystack runs this model on ({spec.device}); "
                "leave gpus out"
            )
        count = read_int(group, "count", where, 0, _MAX_INSTANCES) if "count" in group else 0
        if not passive:  # a passive group's instances take no requests (Triton's scheduler skips them)
            total += count or _default_count(spec) or 1  # 0 is unset: Triton's default count
            active = True
        if "rate_limiter" in group:
            _rate_limiter(group["rate_limiter"], f"{where}.rate_limiter")  # checked here, kept by _groups
    if not active:
        raise InvalidRequest(
            "every instance_group is passive, so no instance would take the model's requests; leave passive out of "
            "one group (passive instances are for a backend's own use, which polystack's runtimes have none of)"
        )
    if total > _MAX_INSTANCES:
        raise InvalidRequest(
            f"instance_group asks for {total} instances in all; polystack runs at most {_MAX_INSTANCES}"
        )
    return total


# Triton's default file name by the platform its config shows (the ONNX Runtime, Python and PyTorch backends')
_DEFAULT_FILENAMES = {
    "onnxruntime_onnx": "model.onnx", "python": "model.py", "pytorch_libtorch": "model.pt", "torch_aoti": "model.pt2",
}  # fmt: skip


# runtimes whose models run one call at a time unless their config asks for more instances, as Triton's Python and
# PyTorch backends run them: their code may keep state
ONE_INSTANCE = frozenset({"python", "torchscript"})


def _default_count(spec: LoadSpec) -> int | None:
    """Triton's instance count where a config gives none (``SetDefaultInstanceCount``): 2 for its ONNX Runtime
    backend on CPU, else 1; None: polystack's own (a model polystack runs with another runtime). Python models and
    TorchScript modules run one call at a time, as Triton's backends run them: their code may keep state."""
    if spec.backend in ONE_INSTANCE:
        return 1
    if spec.backend == "onnxruntime":
        return 2 if _kind(spec.device) == "KIND_CPU" else 1
    return None


def _render_rule(rule: Rule) -> dict[str, Any]:
    """A group's ``rate_limiter`` as Triton's GET config shows it."""
    return {
        "resources": [{"name": r.name, "global": r.shared, "count": r.count} for r in rule.resources],
        "priority": rule.priority,
    }


def _rate_limiter(value: Any, where: str) -> Rule:
    """An instance group's ``rate_limiter``, checked as Triton's message: what the server's rate limiter gives
    each of its instances when it has one (``serve --rate-limit execution_count``; else it changes nothing)."""
    limiter = read_message(value, where, "rate_limiter")
    priority = read_int(limiter, "priority", where, 0, UINT32_MAX)
    resources = limiter.get("resources", [])
    if not isinstance(resources, list):
        raise InvalidRequest(f"{where}.resources must be a list of resources ({{name, count, global}})")
    needs = []
    for i, item in enumerate(resources):
        at = f"{where}.resources[{i}]"
        resource = read_message(item, at, "resource")
        # a resource without a name is one named "" (Triton loads it: helper-128)
        name = read_string(resource, "name", at)
        needs.append(Resource(name, read_int(resource, "count", at, 0, UINT32_MAX), read_bool(resource, "global", at)))
    return Rule(tuple(needs), priority)


def _idle_gap(given: str, batching: BatchPolicy | None) -> BatchPolicy:
    """``batching`` with the idle gap the ``polystack_idle_gap_ms`` parameter gives: polystack's own rule, which
    serve's batching flags and plans set and GET config shows so that its config loads back as it was served (a
    batch leaves before its queue delay once no request came for that long; 0, Triton's rule: it waits it out)."""
    if batching is None or not batching.merge:
        raise InvalidRequest(
            f"parameter {IDLE_GAP} sets when a dynamic batch leaves early, but this config batches nothing "
            "(dynamic_batching with max_batch_size 1 or more does); leave it out"
        )
    try:  # a number as JSON writes one: not Python's "1_0" or " 1"
        gap = float(given) if re.fullmatch(r"[0-9.eE+-]+", given) else math.nan
    except ValueError:
        gap = math.nan
    if not 0 <= gap <= MAX_MICROSECONDS / 1000:  # NaN too
        raise InvalidRequest(
            f"parameter {IDLE_GAP} takes milliseconds from 0 (wait out the queue delay, as Triton does) up, not "
            f"{quote(given)}"
        )
    return replace(batching, idle_gap_ms=gap)


def _parameters(value: Any, spec: LoadSpec) -> tuple[tuple[str, str], ...]:
    """The config's ``parameters`` as (name, string value), but ``polystack_device``, which must name the device
    polystack runs the model on; ``onnxruntime_config`` reads what they ask of the runtime."""
    if value is None:
        return ()
    if not isinstance(value, dict):
        raise InvalidRequest('parameters must be an object of {name: {"string_value": ...}}')
    out: list[tuple[str, str]] = []
    for key, item in value.items():
        if not isinstance(item, dict):
            raise InvalidRequest(f'parameter {quote(key)} must be {{"string_value": TEXT}}, not {quote(item)}')
        fields = read_message(item, f"parameter {quote(key)}", "parameters.value")
        given = fields.get("string_value", "")  # protobuf's zero, which its JSON leaves out: an empty string
        if not isinstance(given, str):
            raise InvalidRequest(f'parameter {quote(key)} must be {{"string_value": TEXT}}, not {quote(item)}')
        if key != "polystack_device":
            out.append((key, given))
        elif given != spec.device:
            raise InvalidRequest(
                f"parameter polystack_device is {quote(given)}, but polystack runs this model on {spec.device!r}; "
                "leave it out, or serve a variant built for that device"
            )
    return tuple(out)


# Triton's model priorities (optimization.priority) set the nice level of its scheduler threads
_PRIORITIES = ("", "PRIORITY_DEFAULT", "PRIORITY_MAX", "PRIORITY_MIN")


def _optimization(value: Any) -> Optimization:
    """The config's ``optimization``, read whole: what it asks of the runtime (``onnxruntime_config``), and
    Triton's TensorRT-only fields, which Triton's other backends ignore, as polystack does."""
    if value is None:
        return Optimization()
    where = "optimization"
    d = read_message(value, where, where)
    level: int | None = None
    if d.get("graph") is not None:
        graph = read_message(d["graph"], f"{where}.graph", "graph")
        level = read_int(graph, "level", f"{where}.graph", -(1 << 31), INT32_MAX)
    priority = read_enum(d, "priority", where, "ModelOptimizationPolicy.ModelPriority")
    if priority not in _PRIORITIES:
        raise InvalidRequest(f"{where}.priority {quote(priority)} is not Triton's: {', '.join(_PRIORITIES[1:])}")
    if priority == "PRIORITY_MIN":  # Triton: nice 19 for its scheduler threads; polystack's all run at nice 0
        raise InvalidRequest(
            f"the config sets {where}.priority {priority}, which polystack cannot honour: it runs every model's "
            "threads at one scheduling priority, the highest a user process may set (PRIORITY_MAX's); "
            "dynamic_batching's priority_levels order requests within a model; leave it out"
        )
    # Triton's TensorRT backend's (its other backends ignore them, as polystack does): checked as Triton's
    # protobuf reader checks them, and kept to show
    cuda = _cuda(d["cuda"], f"{where}.cuda") if d.get("cuda") is not None else ""
    gather = read_int(d, "gather_kernel_buffer_threshold", where, 0, UINT32_MAX)
    eager = read_bool(d, "eager_batching", where)
    pinned = []  # Triton's default: on (an empty message turns it off)
    for key in ("input_pinned_memory", "output_pinned_memory"):
        buffer = {"enable": True} if d.get(key) is None else read_message(d[key], f"{where}.{key}", "pinned_memory")
        pinned.append(read_bool(buffer, "enable", f"{where}.{key}"))
    cpu: tuple[Accelerator, ...] = ()
    gpu: tuple[Accelerator, ...] = ()
    if d.get("execution_accelerators") is not None:
        kind = "execution_accelerators"
        accelerators = read_message(d[kind], f"{where}.{kind}", kind)
        gpu, cpu = (
            _accelerators(accelerators.get(key), f"{where}.execution_accelerators.{key}")
            for key in ("gpu_execution_accelerator", "cpu_execution_accelerator")
        )
    return Optimization(
        level, cpu, gpu, pinned[0], pinned[1], priority or "PRIORITY_DEFAULT", cuda, gather, eager
    )


def _cuda(value: Any, where: str) -> str:
    """``optimization.cuda`` read against Triton's message (tritonclient ships it), as JSON to show."""
    from google.protobuf import json_format
    from tritonclient.grpc import model_config_pb2

    read_message(value, where, "cuda")  # its field names, in either spelling
    try:
        message = json_format.ParseDict(value, model_config_pb2.ModelOptimizationPolicy.Cuda())
    except json_format.ParseError as e:
        raise InvalidRequest(f"{where} is not Triton's ModelOptimizationPolicy.Cuda: {e}") from None
    return json.dumps(json_format.MessageToDict(message, preserving_proto_field_name=True), sort_keys=True)


def _accelerators(value: Any, where: str) -> tuple[Accelerator, ...]:
    """A list of Triton's execution accelerators: each a name, with a map of string parameters."""
    if value is None:
        return ()
    if not isinstance(value, list):
        raise InvalidRequest(f'{where} must be a list of {{"name": ..., "parameters": {{...}}}}')
    out = []
    for i, item in enumerate(value):
        a = read_message(item, f"{where}[{i}]", "accelerator")
        name = read_string(a, "name", f"{where}[{i}]")
        if not name:
            raise InvalidRequest(f"{where}[{i}] needs a name (openvino for CPU; tensorrt or cuda for GPU)")
        parameters = a.get("parameters") or {}
        if not isinstance(parameters, dict) or not all(isinstance(v, str) for v in parameters.values()):
            raise InvalidRequest(f"{where}[{i}].parameters must map names to strings, not {quote(parameters)}")
        out.append(Accelerator(name, tuple(parameters.items())))
    return tuple(out)


def _tensors(
    config: dict[str, Any], record: ModelRecord, spec: LoadSpec, max_batch: int
) -> tuple[
    tuple[tuple[str, str], ...],
    tuple[tuple[str, tuple[int, ...]], ...],
    tuple[Reshape, ...],
    tuple[TensorSpec, ...],
    RaggedSpec | None,
]:
    """Inputs and outputs the config lists must be the model's own, with the same type and dims (or, with a
    ``reshape``, dims of as many elements and a reshape that fits the model), but that the config's dims may
    fix a dim the model leaves -1, as Triton's ONNX Runtime backend allows; the layouts (``format``) it gives
    inputs, as Triton checks them (NHWC and NCHW: three dims besides the batch), the whole shapes of the
    tensors whose dims it fixed, the tensors it reshapes, the inputs it makes optional (``_optional``), and its
    ragged batching (``_ragged``)."""
    sig = record.signature
    formats: list[tuple[str, str]] = []
    shapes: list[tuple[str, tuple[int, ...]]] = []
    reshapes: list[Reshape] = []
    optional: list[TensorSpec] = []
    ragged: list[tuple[str, tuple[int, ...]]] = []  # (ragged input, its dims)
    ragged_out: list[tuple[str, tuple[int, ...]]] = []  # (output a batch_output scatters, its dims)
    scattered = _scatter_targets(config.get("batch_output"))
    listed = {o.get("name") for o in config.get("output", []) if isinstance(o, dict)}
    unlisted = sorted(scattered - listed)
    if record.format == "python":  # its batch outputs scatter nothing (``python_batch_io``)
        scattered = set()
    if unlisted:
        raise InvalidRequest(
            f"batch_output scatters {quote(unlisted[0])}, which the config's outputs must list, with its dims"
        )
    for key, specs in (("input", sig.inputs), ("output", sig.outputs)):
        items = config.get(key, [])
        if not isinstance(items, list):
            raise InvalidRequest(f"{key} must be a list of tensors")
        by_name = {t.name: t for t in specs}
        label_files = label_files_of(record.settings)
        seen: set[str] = set()
        for i, item in enumerate(items):
            where = f"{key}[{i}]"
            d = read_message(item, where, key)
            name = read_string(d, "name", where)
            if name in seen:
                raise InvalidRequest(f"{where} lists {key} {quote(name)} a second time")
            seen.add(name)
            if d.get("dims") is not None:
                io_dims(d["dims"], where, key, name, record.name)
            t = by_name.get(name)
            if key == "input" and (read_bool(d, "optional", where) or t is None):
                t = _optional(d, where, name, t, record, spec, max_batch)
                if t is not None:
                    optional.append(t)
            if t is None:  # Triton's ONNX Runtime backend's words first (ValidateInputs/ValidateOutputs), then ours
                triton = (
                    f"unable to load model {record.name!r}, configuration expects {len(items)} inputs, model provides "
                    f"{len(specs)}"
                    if key == "input" and len(items) > len(specs)
                    else f"unexpected inference {key} {quote(name)}, allowed {key}s are: {', '.join(by_name)}"
                )
                raise InvalidRequest(
                    f"{triton}: {where} names {quote(name)}, which is not an {key} of {record.name!r}; its {key}s "
                    f"are {', '.join(by_name)}"
                )
            want = type_name(t.dtype)
            got = read_enum(d, "data_type", where, "DataType")
            if got and got != want:
                triton = (  # its words (an output's with its missing quote), then ours
                    f"unable to load model {record.name!r}, input {quote(name)} data-type {want} doesn't match "
                    f"configuration data-type {got}"
                    if key == "input"
                    else f"unable to load model '{record.name}, unexpected datatype {want} for output {quote(name)}, "
                    f"expecting {got}"
                )
                raise InvalidRequest(
                    f"{triton}: {where} ({name}) has data_type {quote(got)}, but the model's is {want}"
                )
            # a Python model's execute gets each request's tensors as sent, ragged or not (Triton's Python backend
            # hands them so): its ragged input is an input as any other, but for its batches (``ragged_apart``)
            if key == "input" and read_bool(d, "allow_ragged_batch", where) and record.format != "python":
                ragged.append((name, _ragged_dims(d, where, name, t, record, max_batch)))
                continue
            if key == "output" and name in scattered:  # its dims are each request's, not the model's
                ragged_out.append((name, tuple(read_int_list(d.get("dims", []), f"{where}.dims"))))
                continue
            dims = d.get("dims")
            reshape = _reshape(d, where, name, t, max_batch, record.name)
            if reshape is not None:
                reshapes.append(reshape)
            elif dims is not None:
                got_dims = read_int_list(dims, f"{where}.dims")
                if key == "output" and record.format == "fil":  # FIL answers without the dims of 1 it is given
                    got_dims = [d for d in got_dims if d != 1]
                model_dims = config_dims(t, max_batch)
                if not t.shape and not max_batch and got_dims:  # a scalar of the model's: Triton takes dims of 1s
                    if any(d != 1 for d in got_dims):  # Triton's words, then what to do
                        raise InvalidRequest(
                            f"unable to load model {record.name!r}, scalar tensor {name!r}, should only provide 1 in "
                            "the model configuration when the model doesn't support batching. Model configuration "
                            f"provided: {got_dims}; give it dims [1]"
                        )
                    reshapes.append(Reshape(name, False, tuple(got_dims), ()))  # clients send and get those dims
                elif not _within(got_dims, model_dims):
                    shape = ",".join(map(str, model_dims)), ",".join(map(str, got_dims))
                    raise InvalidRequest(  # Triton's ONNX Runtime backend's words first, then ours
                        f"unable to load model {record.name!r}, tensor {quote(name)} shape expected by framework "
                        f"[{shape[0]}] doesn't match model configuration shape [{shape[1]}]: "
                        f"{where} ({name}) has dims {got_dims}, but the model's are {model_dims} with "
                        f"max_batch_size {max_batch} (-1: any size); the config's dims may fix a dim the model "
                        "leaves -1, and must match the others"
                    )
                elif got_dims != model_dims:
                    lead = tuple(t.shape[: len(t.shape) - len(model_dims)])  # the batch dim, when batched
                    shapes.append((name, lead + tuple(got_dims)))
            layout = (read_enum(d, "format", where, "ModelInput.Format") if key == "input" else "") or "FORMAT_NONE"
            if layout not in FORMATS:
                raise InvalidRequest(f"{where} ({name}) has format {quote(layout)}; Triton's are {', '.join(FORMATS)}")
            if layout != "FORMAT_NONE":
                # the dims clients send, as Triton's ValidateModelInput counts them: the config's (a reshape
                # gives the model others), else the model's
                counted = read_int_list(dims, f"{where}.dims") if dims is not None else config_dims(t, max_batch)
                if len(counted) != 3:
                    whose = "the config's" if dims is not None else "the model's"
                    # an unbatched model of [1, C, H, W]: Triton's densenet_onnx config serves it [C, H, W]
                    lone = dims is None and len(counted) == 4 and counted[0] == 1 and not max_batch
                    raise InvalidRequest(
                        f"{where} ({name}) has format {layout}, which needs 3 dims besides the batch, but {whose} "
                        f"are {counted} (max_batch_size {max_batch}); leave format out"
                        + ("" if max_batch or not t.batched or dims is not None else ", or set max_batch_size 1 or more")
                        + (
                            f", or give dims {counted[1:]} and reshape {{ shape: {counted} }}, as Triton's "
                            "densenet_onnx config does"
                            if lone
                            else ""
                        )
                    )
                formats.append((name, layout))
            label = read_string(d, "label_filename", where)
            if label and label != label_files.get(name, ""):
                raise InvalidRequest(
                    f"{where} ({name}) names labels {quote(label)}, which are not the labels registered with the "
                    "model; register the model with its labels (`polystack register --labels`) and leave "
                    "label_filename out"
                )
    # a Python model's batch inputs and outputs: shown, not applied (``python_batch_io``)
    spec_ragged = (
        None if record.format == "python" else _ragged(config, record, max_batch, tuple(ragged), dict(ragged_out))
    )
    return tuple(formats), tuple(shapes), tuple(reshapes), tuple(optional), spec_ragged


def _all_inputs(
    config: dict[str, Any], record: ModelRecord, sequence: SequencePolicy | None, ragged: RaggedSpec | None
) -> None:
    """A config that lists inputs must account for every input of the model, as Triton's ONNX Runtime
    backend counts them (ValidateInputs): those it lists (but optional ones, which are initializers' and not
    among the model's inputs), its sequence controls and states, and its batch inputs. A config that lists
    none is auto-completed (a repository's) or shows the model's own."""
    items = [d for d in config.get("input") or () if isinstance(d, dict)]
    if not items:
        return
    given = {d.get("name") for d in items if not d.get("optional")}
    if sequence is not None:
        given |= {c.input for c in sequence.controls} | {s.input for s in sequence.states}
    if ragged is not None:
        given |= {b.target for b in ragged.batch_inputs}
    model = [t.name for t in record.signature.inputs]
    missing = [name for name in model if name not in given]
    if missing:  # Triton's words, then what to do
        raise InvalidRequest(
            f"unable to load model {record.name!r}, configuration expects {len(given)} inputs, model provides "
            f"{len(model)}: the config leaves out {', '.join(map(quote, missing))}; list every input of the model, "
            "or none"
        )


def _ragged_dims(
    d: dict[str, Any], where: str, name: str, t: TensorSpec, record: ModelRecord, max_batch: int
) -> tuple[int, ...]:
    """A ragged input's dims (``allow_ragged_batch``), checked as Triton's ONNX Runtime backend checks it: the
    model takes it as one dimension, ``[-1]``, holding every request's elements; with batching (which an optional
    input is refused, so none is both)."""
    if t.shape != (-1,):
        raise InvalidRequest(
            f"unable to load model {record.name!r}, configuration expects model provides input with shape [-1] for "
            f"ragged input {name!r}, model provides {list(t.shape)}; export the model to take the requests' elements "
            "concatenated in one dimension, or leave allow_ragged_batch out"
        )
    if not max_batch:
        raise InvalidRequest(
            f"{where} ({name}) allows a ragged batch, but the model serves without batching (max_batch_size 0); set "
            "max_batch_size, or leave allow_ragged_batch out"
        )
    dims = tuple(read_int_list(d.get("dims", []), f"{where}.dims"))
    if not dims or d.get("reshape") is not None:
        raise InvalidRequest(
            f"{where} ({name}) is ragged: give the dims each request sends past the batch dimension (-1: any size), "
            "and no reshape"
        )
    return dims


def _scatter_targets(value: Any) -> set[str]:
    """The outputs a config's ``batch_output`` names (read whole by ``_ragged``)."""
    found: set[str] = set()
    for item in value if isinstance(value, list) else []:
        names = item.get("target_name", item.get("targetName")) if isinstance(item, dict) else None
        if isinstance(names, list):
            found.update(n for n in names if isinstance(n, str))
    return found


def _ragged(
    config: dict[str, Any],
    record: ModelRecord,
    max_batch: int,
    inputs: tuple[tuple[str, tuple[int, ...]], ...],
    outputs: dict[str, tuple[int, ...]],
) -> RaggedSpec | None:
    """The config's ragged batching (Triton's ``allow_ragged_batch``, ``batch_input``, ``batch_output``), checked
    against the model: each batch input fills a model input the config does not list, of its data type (TYPE_INT32
    or TYPE_FP32, as Triton's) and rank, from an input the config lists; each batch output scatters outputs the
    config lists by an input's shapes. None: the config asks for none."""
    listed = {read_string(i, "name", "input") for i in config.get("input", []) if isinstance(i, dict)}
    model_inputs = {t.name: t for t in record.signature.inputs}
    fills: list[ragged_model.BatchInput] = []
    for where, d in _messages(config, "batch_input", "{kind, target_name, data_type, source_input}"):
        kind = read_enum(d, "kind", where, "BatchInput.Kind") or ragged_model.ELEMENT_COUNT
        targets, sources = _names(d, "target_name", where), _names(d, "source_input", where)
        if len(targets) != 1 or len(sources) != 1:
            raise InvalidRequest(f"{where} must name one target_name and one source_input")
        target, source = targets[0], sources[0]
        t = model_inputs.get(target)
        if t is None or target in listed:
            raise InvalidRequest(
                f"{where} fills {quote(target)}, which must be an input of {record.name!r} the config does not list "
                f"(the server fills it); the model's inputs are {', '.join(model_inputs)}"
            )
        if source not in listed:
            raise InvalidRequest(f"{where} derives {quote(target)} from {quote(source)}, which the config's inputs do not list")
        dtype_name = read_enum(d, "data_type", where, "DataType")
        if dtype_name not in ("TYPE_INT32", "TYPE_FP32"):
            raise InvalidRequest(f"{where} has data_type {quote(dtype_name or None)}; a batch input is TYPE_INT32 or TYPE_FP32")
        if type_name(t.dtype) != dtype_name:
            raise InvalidRequest(f"{where} has data_type {dtype_name}, but the model's input {target!r} is {type_name(t.dtype)}")
        rank = ragged_model.RANKS.get(kind, 1)
        if len(t.shape) != rank:
            raise InvalidRequest(
                f"{where} ({kind}) fills a tensor of rank {rank}, but the model's input {target!r} has shape "
                f"{list(t.shape)}"
            )
        fills.append(ragged_model.BatchInput(kind, target, t.dtype, source))
    scattered: list[tuple[str, str, tuple[int, ...]]] = []
    for where, d in _messages(config, "batch_output", "{kind, target_name, source_input}"):
        read_enum(d, "kind", where, "BatchOutput.Kind")  # BATCH_SCATTER_WITH_INPUT_SHAPE, its only value
        targets, sources = _names(d, "target_name", where), _names(d, "source_input", where)
        if not targets or len(sources) != 1:
            raise InvalidRequest(f"{where} must name its target_name outputs and one source_input")
        if sources[0] not in dict(inputs):
            raise InvalidRequest(f"{where} scatters by {quote(sources[0])}, which must be a ragged input of the config")
        for target in targets:
            if target not in outputs:
                raise InvalidRequest(f"{where} scatters {quote(target)}, which the config's outputs must list, with its dims")
            scattered.append((target, sources[0], outputs[target]))
    if not (inputs or fills or scattered):
        return None
    if not max_batch:
        raise InvalidRequest("batch_input and batch_output describe a batch: set max_batch_size, or leave them out")
    return ragged_model.RaggedSpec(inputs, tuple(fills), tuple(scattered))


def _messages(config: dict[str, Any], key: str, fields: str) -> list[tuple[str, dict[str, Any]]]:
    """The messages of the config's list ``key``, each with where it is (``batch_input[0]``)."""
    value = config.get(key) or []
    if not isinstance(value, list):
        raise InvalidRequest(f"{key} must be a list of messages ({fields})")
    return [(f"{key}[{i}]", read_message(item, f"{key}[{i}]", key)) for i, item in enumerate(value)]


def _names(d: dict[str, Any], key: str, where: str) -> list[str]:
    value = d.get(key, [])
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        raise InvalidRequest(f"{where}.{key} must be a list of tensor names")
    return list(value)


def _optional(
    d: dict[str, Any], where: str, name: str, t: TensorSpec | None, record: ModelRecord, spec: LoadSpec, max_batch: int
) -> TensorSpec | None:
    """The input ``name`` a config lists as ``optional`` (or names though it is not among the model's
    inputs: ``t`` None), checked as Triton's ONNX Runtime backend checks it: only a graph input an
    initializer gives a default (which a request may then feed or leave out) may be optional, only without
    batching, and every such input the config lists must be optional; a Python model's any input, as in Triton's
    Python backend. None: not such an input."""
    given = read_bool(d, "optional", where)
    if spec.backend == "python":  # a Python model's code reads what came (get_input_tensor_by_name: None), batched too
        return next((o for o in record.signature.optional if o.name == name), None) if given else None
    if given and max_batch:  # Triton's words, then what to do
        raise InvalidRequest(
            f"unable to load model {record.name!r}, optional input {name!r} is not supported for models that support "
            "batching; set max_batch_size 0"
        )
    if given and t is not None:
        raise InvalidRequest(
            f"{where} ({name}) is optional, but {record.name!r} needs it in every request: only an input an ONNX "
            "initializer gives a default may be optional; leave optional out"
        )
    if spec.format != "onnx" or spec.backend != "onnxruntime":
        if given:
            raise InvalidRequest(
                f"{where} ({name}) is optional, which Triton's ONNX Runtime backend reads (an input an ONNX initializer "
                f"gives a default); polystack serves {record.name!r} with {spec.backend} ({spec.format}): leave optional "
                "out, or tune a plan that serves it with onnxruntime"
            )
        return None
    default = next((o for o in onnx_format.overridable_inputs(spec.artifact) if o.name == name), None)
    if default is None:
        if given:
            raise InvalidRequest(
                f"{where} names {quote(name)} optional, which is not an input of {record.name!r}, nor one an initializer "
                f"gives a default; its inputs are {', '.join(t.name for t in record.signature.inputs)}"
            )
        return None
    if not given:  # Triton counts the model's inputs without it, so refuses the config
        raise InvalidRequest(
            f"{where} ({name}) is an input an ONNX initializer gives a default, which a request may feed only if the "
            "config marks it optional (with max_batch_size 0); set optional: true, or leave it out"
        )
    return default


def _reshape(
    d: dict[str, Any], where: str, name: str, t: TensorSpec, max_batch: int, model: str
) -> Reshape | None:
    """A config tensor's ``reshape``, checked as Triton checks one: its shape fits the model's dims (a -1 of
    the model's takes any size), and the config's dims, which clients see, hold as many elements."""
    reshape = read_reshape(d, where, name, max_batch, model)
    if reshape is None:
        return None
    model_dims = tuple(config_dims(t, max_batch))
    if not _within(reshape.model, model_dims):
        raise InvalidRequest(
            f"{where} ({name}) has reshape {list(reshape.model)}, but the model's are {list(model_dims)} with "
            f"max_batch_size {max_batch} (-1: any size); the reshape is the shape the model takes or gives"
        )
    return reshape


def read_reshape(d: dict[str, Any], where: str, name: str, max_batch: int, model: str) -> Reshape | None:
    """A config tensor's ``reshape`` (None: it has none) and its dims, as Triton reads a model's or an ensemble's:
    a shape where the model batches or has one, and dims clients see (``reshape_fits`` checks they agree)."""
    if d.get("reshape") is None:
        return None
    r = read_message(d["reshape"], f"{where}.reshape", "reshape")
    shape = tuple(read_int_list(r.get("shape", []), f"{where}.reshape.shape"))
    if not max_batch and not shape:  # Triton's words, then what to do
        raise InvalidRequest(
            f"model {where.partition('[')[0]} {quote(name)} cannot have empty reshape for non-batching model as scalar "
            f"tensors are not supported for {model}: give {where}'s reshape a shape, or set max_batch_size"
        )
    if d.get("dims") is None:
        raise InvalidRequest(f"{where} ({name}) has a reshape but no dims: a reshape needs the dims clients see; give them")
    dims = tuple(read_int_list(d["dims"], f"{where}.dims"))
    if not dims:  # Triton's words, then what to do
        raise InvalidRequest(
            f"{where} ({name}) must specify 'dims': a reshape needs the dims clients see; a batch of scalars is "
            "dims: [ 1 ] with reshape: { shape: [ ] }"
        )
    return Reshape(name, max_batch > 0, dims, shape)  # dims and reshape agree (``reshape_fits``)


def _triton_checks(
    config: dict[str, Any], model: str
) -> tuple[tuple[GivenBatchInput, ...], tuple[GivenBatchOutput, ...]]:
    """Triton's checks of a config that need no model (core's ValidateModelConfig and ValidateModelIOConfig): a
    negative max_batch_size, each input's and output's dims and reshape, the batch inputs and outputs; in its words,
    with the model's name after them as its log says them, then polystack's detail. They come before the config is
    compared with the model, as Triton validates a config before its backend reads the model. Returns the batch
    inputs and outputs as the config gives them (``_batch_io``)."""
    given = config.get("max_batch_size")
    if isinstance(given, int | str) and re.fullmatch(r"-[0-9]+", str(given)):  # not a number: read_int's words
        raise InvalidRequest(
            f"'max_batch_size' must be non-negative value for {model}: it is {given}; give 0 (no "
            "batch dimension) or the most rows a batch may hold"
        )
    listed: dict[str, set[str]] = {}
    for key in ("input", "output"):
        items = config.get(key) or []
        if not isinstance(items, list):  # (a lone message is a list of it already: ``config_text.lists_where_repeated``)
            raise InvalidRequest(f"{key} must be a list of tensors")
        listed[key] = set()
        for i, item in enumerate(items):
            d = read_message(item, f"{key}[{i}]", key)
            name = read_string(d, "name", f"{key}[{i}]")
            listed[key].add(name)
            if d.get("dims") is not None:
                io_dims(d["dims"], f"{key}[{i}]", key, name, model)
            if d.get("dims") and d.get("reshape") is not None:  # no dims: ``_reshape`` asks for them
                reshape_fits(d, f"{key}[{i}]", key, name, model)
    return _batch_io(config, model, listed)


def reshape_fits(d: dict[str, Any], where: str, key: str, name: str, model: str) -> None:
    """Triton's ValidateIOShape of a tensor's reshape against its dims, in its words: sizes of 1 or more (or -1),
    as many elements, as many -1s, and as many elements between them."""
    dims = tuple(read_int_list(d["dims"], f"{where}.dims", -(1 << 63)))
    r = read_message(d["reshape"], f"{where}.reshape", "reshape")
    shape = tuple(read_int_list(r.get("shape", []), f"{where}.reshape.shape", -(1 << 63)))
    triton = f"model {key} {quote(name)}"
    if any(v < 1 and v != -1 for v in shape):
        raise InvalidRequest(
            f"{triton} reshape dimensions must be integer >= 1, or -1 to indicate a variable-size dimension for "
            f"{model}: {where}.reshape is {list(shape)}"
        )
    held, reshaped = _segments(dims), _segments(shape)
    # GetElementCount: -1 where a dim is -1, 0 for no dims; an empty reshape takes dims of one element
    sizes = [-1 if -1 in v else math.prod(v) if v else 0 for v in (dims, shape)]
    if (sizes[0] != sizes[1] and (sizes[1] != 0 or sizes[0] != 1)) or (sizes[0] == -1 and held != reshaped):
        if sizes[0] == sizes[1] == -1 and len(held) != len(reshaped):
            raise InvalidRequest(
                f"{triton} has different number of variable-size dimensions for dims and reshape for {model}: "
                f"{where} has dims {list(dims)} and reshape {list(shape)}, which need as many -1s (any size)"
            )
        if (-1 in dims) != (-1 in shape):
            detail = f"{where} has dims {list(dims)} and reshape {list(shape)}: a -1 (any size) in one needs one in "
            detail += "the other"
        elif -1 in dims:
            detail = f"{where} dims {list(dims)} and reshape {list(shape)} hold {held} and {reshaped} elements "
            detail += "around their -1s"
        else:
            detail = f"{where} dims {list(dims)} and reshape {list(shape)} hold {sizes[0]} and {sizes[1]} elements"
        raise InvalidRequest(
            f"{triton} has different size for dims and reshape for {model}: {detail}; they must hold as many"
        )


def _batch_io(
    config: dict[str, Any], model: str, listed: dict[str, set[str]]
) -> tuple[tuple[GivenBatchInput, ...], tuple[GivenBatchOutput, ...]]:
    """Triton's ValidateBatchIO, in its words: each batch input and output names one source input the config
    lists, a batch input is TYPE_INT32 or TYPE_FP32, and a batch output's targets are outputs the config lists, each
    once. Names are checked only where the config lists inputs (outputs): auto-complete fills the others. Returns
    them as given (what a Python model's GET config shows: ``Additions.python_batch_io``)."""
    inputs: list[GivenBatchInput] = []
    outputs: list[GivenBatchOutput] = []
    for where, d in _messages(config, "batch_input", "{kind, target_name, data_type, source_input}"):
        kind = read_enum(d, "kind", where, "BatchInput.Kind") or ragged_model.ELEMENT_COUNT
        sources = _names(d, "source_input", where)
        if len(sources) != 1:
            raise InvalidRequest(f"batch input kind '{kind}' expects 1 source input, got {len(sources)} for {model}")
        dtype = read_enum(d, "data_type", where, "DataType")
        if dtype not in ("TYPE_INT32", "TYPE_FP32"):
            raise InvalidRequest(
                f"batch input data type must be TYPE_INT32 or TYPE_FP32 for {model}: {where}.data_type is "
                f"{quote(dtype or None)}"
            )
        if listed["input"] and sources[0] not in listed["input"]:
            raise InvalidRequest(f"unknown source input name {quote(sources[0])} for {model}: the config's inputs are "
                                 f"{', '.join(sorted(listed['input']))}")
        inputs.append((kind, tuple(_names(d, "target_name", where)), dtype, tuple(sources)))
    for where, d in _messages(config, "batch_output", "{kind, target_name, source_input}"):
        kind = read_enum(d, "kind", where, "BatchOutput.Kind") or ragged_model.SCATTER
        sources = _names(d, "source_input", where)
        if len(sources) != 1:
            raise InvalidRequest(f"batch output kind '{kind}' expects 1 source input, got {len(sources)} for {model}")
        if listed["input"] and sources[0] not in listed["input"]:
            raise InvalidRequest(f"unknown source input name {quote(sources[0])} for {model}: the config's inputs are "
                                 f"{', '.join(sorted(listed['input']))}")
        targets: set[str] = set()
        for target in _names(d, "target_name", where):
            if listed["output"] and target not in listed["output"]:
                raise InvalidRequest(f"unknown target output name {quote(target)} for {model}: the config's outputs "
                                     f"are {', '.join(sorted(listed['output']))}")
            if target in targets:
                raise InvalidRequest(f"target output name {quote(target)} can only be specified once for {model}")
            targets.add(target)
        outputs.append((tuple(_names(d, "target_name", where)), kind, tuple(sources)))
    return tuple(inputs), tuple(outputs)


def _within(given: Sequence[int], model: Sequence[int]) -> bool:
    """Whether a config's ``given`` dims fit the model's: the same, but that a -1 of the model's takes any size,
    as Triton's ONNX Runtime backend compares them."""
    return len(given) == len(model) and all(g == m or (m == -1 and g >= 1) for g, m in zip(given, model, strict=True))


def _segments(shape: tuple[int, ...]) -> list[int]:
    """The elements ``shape`` holds before, between and after its -1s."""
    out = [1]
    for v in shape:
        if v == -1:
            out.append(1)
        else:
            out[-1] *= v
    return out


def _kind(device: str) -> str:
    return "KIND_GPU" if device.startswith("cuda") else "KIND_CPU"
