"""TorchScript modules (``torch.jit.save``'s ``model.pt``) as Triton's PyTorch backend serves them, kept by the
store as one zip: the module's archive and its Triton config (``pack``). ``backends/torchscript.py`` runs them.

A TorchScript file says nothing of its tensors' types and shapes, so the signature is the config's, as in Triton
(whose PyTorch backend auto-completes nothing): its inputs and outputs, the control inputs and states of its
sequence batching. How they meet ``forward`` is ``Binding``, worked out once at registration from the module's
schema, by the rules of Triton's PyTorch backend (``model_instance_state.cc``), in its words where it has them:

- inputs: by forward's argument names where every config input is one; else ``<name>__<index>`` (the index of the
  argument); else the config's order. A single ``Dict[str, Tensor]`` argument takes every input by name. Sequence
  controls and states always go by ``<name>__<index>``. A ragged batch's ``batch_input``s (``backends/ragged.py``
  fills them) go after the config's inputs by their convention: by forward's argument name, by ``<name>__<index>``,
  else in the ``batch_input`` order; a dict takes them by name. A ragged input is one dimension, every request's
  elements over the whole batch. Forward takes exactly as many arguments as that.
- outputs: ``<name>__<index>`` (the index into the tuple forward returns) where every output has one; else the
  config's order. TYPE_STRING tensors are ``List[str]``, of one dimension, batch included.

Triton's backend writes past its arguments on an index out of range, and a duplicate index leaves a hole; both are
refused here, as is a batch input it would hand to argument 0 over an input (a target that is not forward's
argument's name, or has no index, where the config's inputs go so). A returned ``Dict[str, Tensor]`` is taken by
output name (Triton's backend refuses one).

TorchScript is code, restricted to torch's operators; ``load_module`` checks it (``torchscript_guard``) before
torch reads it and once torch has, and refuses a module that reaches outside the model (files, sockets, libraries).
"""

from __future__ import annotations

import io
import json
import re
import warnings
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from polystack.backends.ragged import ELEMENT_COUNT, RANKS, BatchInput
from polystack.errors import InvalidModelFile
from polystack.formats import ImportedModel, triton_io, zip_holds
from polystack.formats.torchscript_guard import check_code, check_ops, is_archive
from polystack.types import DType, Signature, TensorSpec

NAME = "torchscript"
MANIFEST = "polystack-torchscript.json"  # the config and the binding
MODEL = "model.pt"  # the module's archive, stored as it was given
_DATE = (1980, 1, 1, 0, 0, 0)  # every entry's, so that the same files are the same bytes

# Triton's PyTorch backend's types (libtorch_utils.cc): these nine, and TYPE_STRING as List[str]
TORCH_TYPES = {
    DType.BOOL: "bool", DType.UINT8: "uint8", DType.INT8: "int8", DType.INT16: "int16", DType.INT32: "int32",
    DType.INT64: "int64", DType.FP16: "float16", DType.FP32: "float32", DType.FP64: "float64",
}  # fmt: skip

_INDEXED = re.compile(r"__(\d*)$")


def is_archive_file(path: Path) -> bool:
    """Whether ``path`` is a TorchScript archive (reads its zip index only)."""
    try:
        with zipfile.ZipFile(path) as zf:
            return is_archive(zf.namelist())
    except (zipfile.BadZipFile, OSError):
        return False


@dataclass(frozen=True)
class Binding:
    """How a config's tensors meet ``forward``: ``arguments``, the tensor names in forward's argument order (a
    ``Dict[str, Tensor]`` argument, ``dict_input``: its keys); ``outputs``, each config output's index into what
    forward returns."""

    arguments: tuple[str, ...]
    outputs: tuple[tuple[str, int], ...]
    dict_input: bool = False

    def to_json(self) -> dict[str, Any]:
        return {
            "arguments": list(self.arguments),
            "outputs": [list(o) for o in self.outputs],
            "dict_input": self.dict_input,
        }

    @classmethod
    def from_json(cls, doc: dict[str, Any]) -> Binding:
        return cls(tuple(doc["arguments"]), tuple((str(n), int(i)) for n, i in doc["outputs"]), bool(doc["dict_input"]))


def signature(config: dict[str, Any]) -> Signature:
    """The config's inputs and outputs (``triton_io``), with its sequence batching's states: each an input and
    an output of the module."""
    for key in ("input", "output"):
        if not config.get(key):  # Triton's PyTorch backend's words, then what to do
            raise InvalidModelFile(
                f"model configuration must contain at least one {key}, none were specified: a TorchScript module (model.pt) does "
                f"not say what it {'takes' if key == 'input' else 'gives'}, so its config.pbtxt lists its {key}s "
                "(name, data_type, dims), as Triton's PyTorch backend needs"
            )
    sig = triton_io.signature(config, "a TorchScript model")
    batch = (-1,) if int(config.get("max_batch_size") or 0) > 0 else ()
    inputs, outputs = list(sig.inputs), list(sig.outputs)
    for state in (config.get("sequence_batching") or {}).get("state") or []:
        dtype = triton_io.TYPES.get(str(state.get("data_type")))
        dims = batch + tuple(int(d) for d in state.get("dims") or [])
        if dtype is None or not state.get("input_name") or not state.get("output_name"):
            continue  # model_config says what is wrong with it
        if state["input_name"] not in {t.name for t in inputs}:
            inputs.append(TensorSpec(str(state["input_name"]), dtype, dims))
        if state["output_name"] not in {t.name for t in outputs}:
            outputs.append(TensorSpec(str(state["output_name"]), dtype, dims))
    ragged = {str(i.get("name")) for i in config.get("input") or [] if i.get("allow_ragged_batch") is True}
    inputs = [TensorSpec(t.name, t.dtype, (-1,)) if t.name in ragged else t for t in inputs]
    for fill in batch_inputs(config):
        if fill.target not in {t.name for t in inputs}:  # one the config lists: model_config says so
            inputs.append(TensorSpec(fill.target, fill.dtype, (-1,) * RANKS.get(fill.kind, 1)))
    return Signature(tuple(inputs), tuple(outputs), sig.optional)


def batch_inputs(config: dict[str, Any]) -> list[BatchInput]:
    """The config's ``batch_input``s, in its order, each one target filled from one source input with TYPE_INT32 or
    TYPE_FP32 (as model_config checks them, in its words, so that forward's arguments can be counted first)."""
    found = []
    for i, item in enumerate(config.get("batch_input") or []):
        d = item if isinstance(item, dict) else {}
        targets, sources = d.get("target_name") or [], d.get("source_input") or []
        if not isinstance(targets, list) or not isinstance(sources, list) or len(targets) != 1 or len(sources) != 1:
            raise InvalidModelFile(f"batch_input[{i}] must name one target_name and one source_input")
        dtype = {"TYPE_INT32": DType.INT32, "TYPE_FP32": DType.FP32}.get(str(d.get("data_type")))
        if dtype is None:
            raise InvalidModelFile(
                f"batch_input[{i}] has data_type {d.get('data_type')}; a batch input is TYPE_INT32 or TYPE_FP32"
            )
        found.append(BatchInput(str(d.get("kind") or ELEMENT_COUNT), str(targets[0]), dtype, str(sources[0])))
    return found


def is_ragged(config: dict[str, Any]) -> bool:
    """Whether the config batches ragged tensors (``allow_ragged_batch``, ``batch_input``, ``batch_output``): forward
    then takes each ragged input's elements over the whole batch, and its outputs' rows are the server's to check."""
    listed = [i for i in config.get("input") or [] if isinstance(i, dict)]
    return any(i.get("allow_ragged_batch") is True for i in listed) or bool(
        config.get("batch_input") or config.get("batch_output")
    )


def bind(module: Any, config: dict[str, Any], model: str) -> Binding:
    """The binding of ``config`` to ``module``'s forward (a loaded ScriptModule), refused in Triton's PyTorch
    backend's words where it refuses it."""
    sig = signature(config)
    if sig.optional:
        raise InvalidModelFile(
            f"input {sig.optional[0].name!r} is optional, but Triton's PyTorch backend hands forward every input; "
            "take optional out of the config (forward's arguments have no defaults there)"
        )
    configured = {str(i.get("name")) for i in config.get("input") or []}
    for tensors, kind in ((sig.inputs, "input"), (sig.outputs, "output")):
        for t in tensors:
            if t.dtype is not DType.BYTES and t.dtype not in TORCH_TYPES:
                if kind == "input" and t.name not in configured:  # a sequence control: its check's words
                    raise InvalidModelFile(
                        f"input '{t.name}' type 'TYPE_{t.dtype.value}' is not supported by PyTorch. It is a "
                        f"sequence control of model '{model}': give it a data type torch has (TYPE_INT32, TYPE_INT64)"
                    )
                raise InvalidModelFile(
                    f"unsupported datatype TYPE_{t.dtype.value} for {kind} '{t.name}' for model '{model}'"
                )
            if t.dtype is DType.BYTES and len(t.shape) > 1:
                raise InvalidModelFile(
                    f"Triton only supports 1 dimensional List of String as {kind} for '{t.name}' for model '{model}'; "
                    "a batching model's is dims: [ 1 ] with reshape: { shape: [ ] }"
                )
    arguments = _arguments(module, model)
    listed = [str(i.get("name")) for i in config.get("input") or []]
    filled = [b.target for b in batch_inputs(config) if b.target not in listed]  # by the inputs' convention
    # controls and states: <name>__<index> always
    indexed = [t.name for t in sig.inputs if t.name not in listed and t.name not in filled]
    states = (config.get("sequence_batching") or {}).get("state") or []
    if len(arguments) == 1 and arguments[0][1] == "DictType":
        strings = [t.name for t in sig.inputs if t.dtype is DType.BYTES]
        if strings:
            raise InvalidModelFile(
                f"forward takes a Dict[str, Tensor], which holds tensors, but input {strings[0]!r} is TYPE_STRING; "
                "give it a tensor type, or take the strings as a List[str] argument of their own"
            )
        return Binding(tuple(t.name for t in sig.inputs), _outputs(config, sig, model, bool(states)), dict_input=True)
    if any(kind == "DictType" for _, kind in arguments):
        raise InvalidModelFile(
            "Multiple inputs of kind DictType were detected. Only a single input of type Dict(str, Tensor) is supported."
        )
    for _, kind in arguments:
        if kind not in ("TensorType", "ListType"):
            raise InvalidModelFile(
                f"An input of type '{kind}' was detected in the model. Only a single input of type Dict(str, Tensor) "
                "or input(s) of type Tensor are supported."
            )
    if len(arguments) != len(sig.inputs):
        raise InvalidModelFile(
            f"unable to load model '{model}', configuration expects {len(sig.inputs)} inputs, model provides "
            f"{len(arguments)}: forward takes ({', '.join(n for n, _ in arguments)})"
        )
    names = [n for n, _ in arguments]
    slots: dict[str, int] = {}
    if all(n in names for n in listed):  # Triton's FORWARD_ARGUMENT
        slots = {n: names.index(n) for n in listed}
        named = False
        for n in filled:  # Triton's backend hands one that is not an argument's name to argument 0, over its input
            if n not in names:
                raise InvalidModelFile(
                    f"batch input {n!r} is not an argument of forward ({', '.join(names)}), whose arguments the "
                    "config's inputs name; name its target_name as forward's argument that takes it"
                )
            slots[n] = names.index(n)
    else:
        named = all(_INDEXED.search(n) for n in listed)  # NAMED_INDEX, else STRICT_CONFIG_ORDERING
        slots = {n: _index(n) if named else i for i, n in enumerate(listed)}
        for i, n in enumerate(filled):  # after the config's inputs, as Triton's backend places them
            if named and not _INDEXED.search(n):  # Triton's backend reads an index out of any name: refused
                raise InvalidModelFile(
                    f"input '{n}' does not follow <name>__<index> naming convention. The config's inputs do, so "
                    f"batch input {n!r} goes by its index too: name its target_name <name>__<index>"
                )
            slots[n] = _index(n) if named else len(listed) + i
    if states and not named:
        raise InvalidModelFile(
            f"PyTorch model '{model}' is using sequence batching with state but not all inputs and outputs follow the "
            "<name>__<index> naming convention."
        )
    for n in indexed:
        if not _INDEXED.search(n):
            raise InvalidModelFile(f"input '{n}' does not follow <name>__<index> naming convention.")
        slots[n] = _index(n)
    order: list[str | None] = [None] * len(arguments)
    for n, slot in slots.items():
        if slot >= len(arguments) or order[slot] is not None:
            raise InvalidModelFile(
                f"input {n!r} names forward's argument {slot}, which "
                + (
                    f"{order[slot]!r} names too"
                    if slot < len(arguments)
                    else f"forward has not: it takes {len(arguments)}"
                )
                + f" ({', '.join(names)}); give each input its own index from 0"
            )
        order[slot] = n
    types = {t.name: t.dtype for t in sig.inputs}
    for (arg, kind), given in zip(arguments, order, strict=True):
        want = "ListType" if types[str(given)] is DType.BYTES else "TensorType"
        if kind != want:
            raise InvalidModelFile(
                f"input {given!r} is TYPE_{'STRING' if want == 'ListType' else types[str(given)].value}, but forward's argument "
                f"{arg!r} takes a {'List[str]' if kind == 'ListType' else 'Tensor'}; give TYPE_STRING to its List[str] "
                "arguments and a tensor type to its Tensor arguments"
            )
    return Binding(tuple(str(n) for n in order), _outputs(config, sig, model, bool(states)))


def _arguments(module: Any, model: str) -> list[tuple[str, str]]:
    """forward's arguments but ``self``: (name, kind of type)."""
    try:
        schema = module.forward.schema
    except Exception as e:
        raise InvalidModelFile(
            f"the TorchScript module of model '{model}' has no forward method to run ({e})"
        ) from None
    found = [(a.name, a.type.kind()) for a in schema.arguments]
    return found[1:] if found and found[0][1] == "ClassType" else found


def _index(name: str) -> int:
    match = _INDEXED.search(name)
    assert match is not None
    return int(match.group(1) or 0)  # Triton's atoi: "x__" is index 0


def _outputs(config: dict[str, Any], sig: Signature, model: str, states: bool) -> tuple[tuple[str, int], ...]:
    names = [t.name for t in sig.outputs]
    named = all(_INDEXED.search(n) for n in names)
    if states and not named:
        raise InvalidModelFile(
            f"PyTorch model '{model}' is using sequence batching with state but not all inputs and outputs follow the "
            "<name>__<index> naming convention."
        )
    return tuple((n, _index(n) if named else i) for i, n in enumerate(names))


def load_module(data: bytes, shown: str, device: str = "cpu") -> Any:
    """The ScriptModule in ``data``, on ``device``, checked (``torchscript_guard``) before torch reads it and
    once torch has: a module that reaches outside the model is refused."""
    import torch

    check_code(data, shown)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # torch 2.13 deprecates TorchScript; Triton serves it
            module = torch.jit.load(io.BytesIO(data), map_location=device)
    except Exception as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise InvalidModelFile(f"torch cannot load the TorchScript module: {first}") from None
    check_ops(module, shown)
    return module


def pack(path: Path, config: dict[str, Any], model: str, out: Path, shown: str = "") -> Path:
    """Write ``path`` (a TorchScript archive) and ``config`` as one zip at ``out``, with the binding of the two;
    refused where the archive's code calls what a served model may not, or the config does not fit forward."""
    signature(config)  # what the config lacks first, as Triton's backend says it before it reads the file
    data = path.read_bytes()
    binding = bind(load_module(data, shown or path.name), config, model)
    manifest = {"config": config, "binding": binding.to_json()}
    with zipfile.ZipFile(out, "w", zipfile.ZIP_STORED) as zf:
        zf.writestr(zipfile.ZipInfo(MANIFEST, _DATE), json.dumps(manifest, sort_keys=True))
        zf.writestr(zipfile.ZipInfo(MODEL, _DATE), data)
    return out


def unpack(path: Path) -> tuple[dict[str, Any], Binding, bytes]:
    """The config, binding and module archive ``pack`` wrote."""
    try:
        with zipfile.ZipFile(path) as zf:
            manifest = json.loads(zf.read(MANIFEST))
            return manifest["config"], Binding.from_json(manifest["binding"]), zf.read(MODEL)
    except (zipfile.BadZipFile, KeyError, ValueError, TypeError, OSError) as e:
        raise InvalidModelFile(
            f"{path.name} is not a TorchScript model as polystack keeps one ({type(e).__name__}); register it again "
            "from its repository folder"
        ) from None


def sniff(path: Path) -> bool:
    return zip_holds(path, MANIFEST)


def load(path: Path, workdir: Path, **options: Any) -> ImportedModel:
    config, _, _ = unpack(path)
    return ImportedModel(NAME, signature(config), path)
