"""AOTInductor packages (``torch._inductor.aoti_compile_and_package``'s ``model.pt2``) as Triton's PyTorch backend
serves them (``platform: "torch_aoti"``), kept by the store as one zip: the package, its Triton config and how the
two meet (``pack``). ``backends/torch_aoti.py`` runs them.

A package is compiled native code: a shared library of the model's kernels and its weights. It says nothing of its
tensors' names, so the signature is the config's, as in Triton (which auto-completes nothing for it). How config
tensors meet the compiled model is its call spec (the pytree of ``torch.export``'s arguments and results), by the
names Triton's backend gives its leaves (``pt2/model_state.cc``): ``ARGS[i]`` (nested: ``ARGS[1][0]``,
``ARGS[2][key]``), ``KWARGS[key]`` (also ``KWARGSkey``, as Triton's code writes it), ``RESULT`` for a lone tensor
or ``RESULT[i]``/``RESULT[key]``, and ``INPUT__i``/``OUTPUT__i`` for the i-th leaf. Every input must be in the
config; the outputs may be a subset. Strings, sequence batching and ``batch_input`` are refused, as Triton's backend
refuses or cannot run them.

The call spec is read from the package's generated C++ source where it has one, so registering a package runs none
of its code; from the loaded library otherwise. What its inputs were compiled for is read from the same source
(``aoti_source.py``): a config that promises other types or shapes is refused here (AOTInductor checks none, and
its kernels would read past a smaller request), and ``Compiled.check`` applies the rest to each batch. A package
without that source is served as Triton serves it, with a warning.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from polystack.errors import InvalidModelFile
from polystack.formats import ImportedModel, triton_io, zip_holds
from polystack.formats.aoti_source import Compiled, read_source, wrapper_source
from polystack.formats.torchscript import TORCH_TYPES
from polystack.types import DType, Signature

log = logging.getLogger("polystack.formats")

NAME = "torch_aoti"
MANIFEST = "polystack-torch-aoti.json"  # the config, the binding and the compiled shapes
MODEL = "model.pt2"  # the package, stored as it was given
_DATE = (1980, 1, 1, 0, 0, 0)
_SPEC_TYPES = ("builtins.tuple", "builtins.list", "builtins.dict")


def is_package(names: list[str]) -> bool:
    """Whether a zip's entries are an AOTInductor package's (its compiled model under ``data/aotinductor/``)."""
    return any(n.startswith("data/aotinductor/") or "/data/aotinductor/" in n for n in names)


def is_package_file(path: Path) -> bool:
    """Whether ``path`` is an AOTInductor package (reads its zip index only)."""
    try:
        with zipfile.ZipFile(path) as zf:
            return is_package(zf.namelist())
    except (zipfile.BadZipFile, OSError):
        return False


@dataclass(frozen=True)
class Binding:
    """How a config's tensors meet the compiled model: ``inputs``, the config's input names in the order of the
    call spec's leaves; ``outputs``, each config output's leaf index among the results."""

    inputs: tuple[str, ...]
    outputs: tuple[tuple[str, int], ...]
    spec: tuple[str, str] | None = None  # the call spec (in, out) as the package's generated source gives it

    def to_json(self) -> dict[str, Any]:
        return {
            "inputs": list(self.inputs),
            "outputs": [list(o) for o in self.outputs],
            "spec": list(self.spec) if self.spec else None,
        }

    @classmethod
    def from_json(cls, doc: dict[str, Any]) -> Binding:
        spec = doc.get("spec")
        return cls(
            tuple(doc["inputs"]),
            tuple((str(n), int(i)) for n, i in doc["outputs"]),
            (str(spec[0]), str(spec[1])) if spec else None,
        )


def signature(config: dict[str, Any]) -> Signature:
    """The config's inputs and outputs (``triton_io``): nothing else says what a package takes and gives."""
    for key in ("input", "output"):
        if not config.get(key):
            raise InvalidModelFile(
                f"model configuration must contain at least one {key}, none were specified: an AOTInductor package "
                f"(model.pt2) does not say what its tensors are named, so its config.pbtxt lists its {key}s (name, "
                "data_type, dims), as Triton's PyTorch backend needs"
            )
    return triton_io.signature(config, "an AOTInductor model")


def _tree(text: str, what: str, model: str) -> dict[str, Any]:
    """The pytree spec ``treespec_dumps`` wrote: ``[version, spec]``."""
    try:
        doc = json.loads(text)
    except ValueError:
        doc = None
    if not isinstance(doc, list) or len(doc) != 2 or not isinstance(doc[1], dict):
        raise InvalidModelFile(
            f'Failed to parse {what} call specification for model "{model}": Expected [version, spec] array.'
        )
    return doc[1]


def _children(node: dict[str, Any], model: str) -> list[tuple[str, dict[str, Any]]]:
    """A node's children, each with the name segment Triton's backend gives it (``[i]`` or ``[key]``); a leaf has
    none."""
    kind = node.get("type")
    if not isinstance(kind, str):
        return []  # a leaf: a tensor (None, int and float arguments too, as Triton counts them)
    if kind not in _SPEC_TYPES:
        raise InvalidModelFile(
            f"Value of `type` property ('{kind}') is unsupported: the model's arguments and results may nest tensors "
            f"in tuples, lists and dicts only (model {model!r}); export it so"
        )
    children = node.get("children_spec") or []
    if kind == "builtins.dict":
        context = node.get("context")
        keys = json.loads(context) if isinstance(context, str) and context != "null" else context or []
        if not isinstance(keys, list) or len(keys) != len(children):
            raise InvalidModelFile(
                "Number of entries in 'children_spec' does not match number of entries in 'context'."
            )
        return [(f"[{k}]", c) for k, c in zip(keys, children, strict=True)]
    return [(f"[{i}]", c) for i, c in enumerate(children)]


def _leaves(node: dict[str, Any], prefix: str, model: str) -> list[str]:
    """The names of a tree's leaves, in the order the compiled model takes and gives them."""
    children = _children(node, model)
    if not isinstance(node.get("type"), str):
        return [prefix]
    return [name for segment, child in children for name in _leaves(child, prefix + segment, model)]


def call_names(in_spec: str, out_spec: str, model: str) -> tuple[list[list[str]], list[list[str]]]:
    """Each input leaf's and output leaf's names, in order: Triton's (``ARGS[0]``, ``KWARGS[key]``, ``RESULT``)
    and the ordinal ones (``INPUT__0``, ``OUTPUT__0``)."""
    top = _tree(in_spec, "input", model)
    if top.get("type") != "builtins.tuple" or len(top.get("children_spec") or []) != 2:
        raise InvalidModelFile(
            f'Unexpected input call specification for model "{model}". Expected structure to be tuple[tuple, dict]: '
            "compile the package from torch.export.export(model, args, kwargs)"
        )
    args, kwargs = top["children_spec"]
    if args.get("type") != "builtins.tuple" or kwargs.get("type") != "builtins.dict":
        raise InvalidModelFile(
            f'Unexpected input call specification structure for model "{model}". Expected structure to be '
            "tuple[tuple, dict]: compile the package from torch.export.export(model, args, kwargs)"
        )
    inputs = [[name] for name in _leaves(args, "ARGS", model)]
    for segment, child in _children(kwargs, model):
        leaves = _leaves(child, "KWARGS" + segment, model)
        if leaves == ["KWARGS" + segment]:  # Triton's code writes a top-level keyword's name without brackets too
            inputs.append([leaves[0], "KWARGS" + segment[1:-1]])
        else:
            inputs += [[name] for name in leaves]
    out = _tree(out_spec, "output", model)
    outputs = ["RESULT"] if not isinstance(out.get("type"), str) else _leaves(out, "RESULT", model)
    named_in = [[*names, f"INPUT__{i}"] for i, names in enumerate(inputs)]
    named_out = [[n, f"OUTPUT__{i}"] for i, n in enumerate(outputs)]
    return named_in, named_out


def bind(in_spec: str, out_spec: str, config: dict[str, Any], model: str) -> Binding:
    """The binding of ``config`` to the compiled model's call spec, refused in the words of Triton's PyTorch
    backend where it refuses it."""
    sig = signature(config)
    if sig.optional:
        raise InvalidModelFile(
            f"input {sig.optional[0].name!r} is optional, but an AOTInductor model takes every input it was compiled "
            "with; take optional out of the config"
        )
    if config.get("batch_input"):
        raise InvalidModelFile(
            "the config sets batch_input, which an AOTInductor model does not take (Triton's backend refuses it); "
            "take it out, or export the model to ONNX, whose ragged batching polystack serves"
        )
    if "sequence_batching" in config:
        raise InvalidModelFile(
            "sequence batching is not supported for AOTInductor models (nor in Triton's backend); take "
            "sequence_batching out, or serve the model as TorchScript or ONNX"
        )
    for tensors, kind in ((sig.inputs, "input"), (sig.outputs, "output")):
        for t in tensors:
            if t.dtype is DType.BYTES:
                raise InvalidModelFile(
                    f"{kind} {t.name!r} is TYPE_STRING, but an AOTInductor model takes and gives tensors only "
                    "(Triton's backend cannot run strings either); give it a tensor type"
                )
            if t.dtype not in TORCH_TYPES:
                raise InvalidModelFile(
                    f'Unsupported datatype TYPE_{t.dtype.value} for {kind} "{t.name}" for model "{model}".'
                )
    ins, outs = call_names(in_spec, out_spec, model)
    if len(ins) != len(sig.inputs):
        raise InvalidModelFile(
            f'Failed to load model "{model}" configuration expects {len(sig.inputs)} inputs, but model expects '
            f"{len(ins)} inputs: it takes {', '.join(n[0] for n in ins)}; list each in the config"
        )
    order: list[str | None] = [None] * len(ins)
    for t in sig.inputs:
        index = _leaf(ins, t.name)
        if index is None:
            raise InvalidModelFile(
                f'Input "{t.name}" for model "{model}" is not found in model input map: name it '
                f"{' or '.join(sorted({n[0] for n in ins} | {n[-1] for n in ins}))}"
            )
        if order[index] is not None:
            raise InvalidModelFile(
                f"inputs {order[index]!r} and {t.name!r} both name the model's input {ins[index][0]}; give each its own"
            )
        order[index] = t.name
    outputs = []
    for t in sig.outputs:
        index = _leaf(outs, t.name)
        if index is None:
            raise InvalidModelFile(
                f'Output "{t.name}" for model "{model}" is not found in model output map: name it '
                f"{' or '.join(sorted({n for names in outs for n in names}))}"
            )
        outputs.append((t.name, index))
    return Binding(tuple(str(n) for n in order), tuple(outputs))


def _leaf(leaves: list[list[str]], name: str) -> int | None:
    """The index of the leaf ``name`` is one of the names of (``call_names``), or None."""
    return next((i for i, names in enumerate(leaves) if name in names), None)


def check_config(compiled: Compiled, binding: Binding, config: dict[str, Any], model: str) -> None:
    """Refuse a config whose inputs the package was not compiled for: another type, another rank, a size it does
    not take, a batch larger than it takes (its kernels would read past the request's buffer)."""
    given = {t.name: t for t in signature(config).inputs}
    batch = int(config.get("max_batch_size") or 0)
    for index, name in enumerate(binding.inputs):
        t, dtype, dims = given[name], compiled.dtypes[index], compiled.dims[index]
        if dtype is not None and dtype is not t.dtype:
            raise InvalidModelFile(
                f"input {name!r} is TYPE_{t.dtype.value} in the config, but model {model!r} was compiled for "
                f"TYPE_{dtype.value}; give the config its type (AOTInductor converts nothing)"
            )
        if dims is None:
            continue
        fits = len(dims) == len(t.shape) and all(
            (d.holds(n) if n >= 0 else d.size is None) for d, n in zip(dims, t.shape, strict=True)
        )
        if not fits:
            raise InvalidModelFile(
                f"input {name!r} has dims {list(t.shape)} in the config"
                + (" (the first: its batch, as max_batch_size > 0)" if batch else "")
                + f", but model {model!r} was compiled for [{', '.join(d.shown() for d in dims)}]: give the config "
                "those dims, or export the model with torch.export.Dim where the config has -1"
            )
        if batch and dims[0].high is not None and batch > dims[0].high:
            raise InvalidModelFile(
                f"the config's max_batch_size is {batch}, but model {model!r} was compiled for at most "
                f"{dims[0].high} rows of input {name!r}; set max_batch_size to {dims[0].high} or less"
            )


def pack(path: Path, config: dict[str, Any], model: str, out: Path, shown: str = "") -> Path:
    """Write ``path`` (an AOTInductor package) and ``config`` as one zip at ``out``, with the binding of the two
    and what the package's inputs were compiled for."""
    signature(config)  # what the config lacks first, as Triton's backend says it before it reads the file
    shown = shown or path.name
    try:
        with zipfile.ZipFile(path) as zf:
            if not is_package(zf.namelist()):
                raise InvalidModelFile(
                    f"{shown} is not an AOTInductor package (no data/aotinductor/ in it): compile it with "
                    "torch._inductor.aoti_compile_and_package(torch.export.export(model, args), package_path=...)"
                )
            source = wrapper_source(zf)
    except (zipfile.BadZipFile, OSError) as e:
        raise InvalidModelFile(f"{shown} is not an AOTInductor package ({type(e).__name__}: {e})") from None
    spec, compiled = (None, None)
    if source is not None:
        spec, _ = read_source(source, 0, model)
    if spec is None:  # no generated source: the compiled library says it
        from polystack.backends.torch_aoti import call_spec

        spec = call_spec(path, shown)
    binding = bind(spec[0], spec[1], config, model)
    if source is not None:
        binding = dataclasses.replace(binding, spec=spec)
        _, compiled = read_source(source, len(binding.inputs), model)
    if compiled is None:
        log.warning(
            "polystack could not read from the AOTInductor package's generated source what its inputs were compiled "
            "for: requests are not checked against those shapes (nor does AOTInductor check them), as in Triton",
            extra={"model": model, "file": shown},
        )
    else:
        check_config(compiled, binding, config, model)
    manifest = {
        "config": config,
        "binding": binding.to_json(),
        "compiled": compiled.to_json() if compiled else None,
    }
    with zipfile.ZipFile(out, "w", zipfile.ZIP_STORED) as zf:
        zf.writestr(zipfile.ZipInfo(MANIFEST, _DATE), json.dumps(manifest, sort_keys=True))
        with path.open("rb") as src, zf.open(zipfile.ZipInfo(MODEL, _DATE), "w", force_zip64=True) as dst:
            while chunk := src.read(1 << 20):
                dst.write(chunk)
    return out


def unpack(path: Path) -> tuple[dict[str, Any], Binding, Compiled | None]:
    """The config, binding and compiled inputs ``pack`` wrote (the package is ``MODEL`` in the zip)."""
    try:
        with zipfile.ZipFile(path) as zf:
            manifest = json.loads(zf.read(MANIFEST))
            compiled = manifest.get("compiled")
            return (
                manifest["config"],
                Binding.from_json(manifest["binding"]),
                Compiled.from_json(compiled) if compiled else None,
            )
    except (zipfile.BadZipFile, KeyError, ValueError, TypeError, OSError) as e:
        raise InvalidModelFile(
            f"{path.name} is not an AOTInductor model as polystack keeps one ({type(e).__name__}); register it again "
            "from its repository folder"
        ) from None


def sniff(path: Path) -> bool:
    return zip_holds(path, MANIFEST)


def load(path: Path, workdir: Path, **options: Any) -> ImportedModel:
    """The packed model, with the most rows its compiled batch takes (``max_batch_size`` in its settings: the
    most a load's config may ask for), where it batches and says."""
    config, _, compiled = unpack(path)
    settings: dict[str, Any] = {}
    if compiled is not None and int(config.get("max_batch_size") or 0) > 0:
        highs = [ds[0].high for ds in compiled.dims if ds and ds[0].high is not None]
        if highs:
            settings["max_batch_size"] = min(highs)
    return ImportedModel(NAME, signature(config), path, settings)
