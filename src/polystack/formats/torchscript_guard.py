"""Refuse TorchScript that reaches outside the model through the operators known to: files, sockets, libraries.

TorchScript is code, restricted to torch's operators, and some of those reach outside: ``aten::from_file`` reads
(and, shared, writes) any file the server can, ``aten::save`` writes one, ``torch.distributed``'s operators and
classes open sockets, and custom operators' namespaces name libraries. ``torch.jit.load`` already runs code: a
class's ``__setstate__``, while it unpickles the module. So a module is checked twice:

- ``check_code``, before torch reads a byte. The archive must be as ``torch.jit.save`` writes it: no entry named twice
  (names that differ in case alone count as one: torch finds entries whatever their case), at most 64 MiB of code
  and pickles, and code of text whose only control character is the newline (Python's parser ends a comment at a
  lone carriage return, TorchScript's does not). Every code file (``.py`` in any case) is parsed with ``ast``, never
  run. The only names TorchScript's importer resolves to operators are ``torch``, ``ops`` and ``math``: each must be
  used by a full dotted name (``torch.add``, ``ops.quantized.linear``), never bound to a local, passed, or handed to
  ``getattr``/``hasattr``; a dotted name used as a value may not stop at a namespace of operators (``torch.ops``).
  Every part of every such name is checked: no operator that reaches files, and after ``ops`` or ``classes`` (in
  code, string annotations and the pickles' classes) a namespace of torch's own numeric ones.
- ``check_ops``, once torch has loaded it: every method of every module, inlined, and every operator in it (blocks
  and forked subgraphs included) must be of those namespaces and not one that reaches files.

This is no sandbox. torch's numeric operators include ones that read and write past a tensor's storage
(``aten::_reshape_alias`` checks no bounds: helper-148 read server memory with it), so TorchScript is served only
when the server is told to (``serve --allow-torchscript-models``), from repositories its operator trusts; these
checks refuse what is known to reach outside, for those.
"""

from __future__ import annotations

import ast
import collections
import io
import math
import re
import types
import zipfile
from typing import Any

from polystack.errors import InvalidModelFile, UnsafeModel

# operators a TorchScript file may call: torch's numeric namespaces; and, of those, the ones that reach files
NAMESPACES = frozenset(
    {"aten", "prim", "prims", "quantized", "_quantized", "mkldnn", "mkldnn_prepacked", "onednn", "mkl", "sparse",
     "quantization", "xnnpack", "prepacked", "torchvision", "rnn", "profiler"}
)  # fmt: skip
DENIED = frozenset({"from_file", "save", "load", "load_tensor", "_load_for_mobile"})
_ROOTS = frozenset({"torch", "ops", "math"})  # the names TorchScript's importer resolves to operators
_REFLECTION = frozenset({"getattr", "hasattr"})
_CLASS_NAMES = re.compile(r"torch\.classes\.(\w+)")
_MAX_CODE_BYTES = 64 << 20  # code and pickles (the weights are beside them)
_CONTROL = re.compile(rb"[\x00-\x09\x0b-\x1f\x7f]")  # but the newline


def is_archive(names: list[str]) -> bool:
    """Whether a zip's entries are a TorchScript archive's (``torch.jit.save``): code beside the pickles."""
    folded = [n.casefold() for n in names]  # torch finds entries whatever their case
    return any(n.endswith("/constants.pkl") for n in folded) and any("/code/" in n and n.endswith(".py") for n in folded)


def check_code(data: bytes, shown: str) -> None:
    """Refuse a TorchScript archive whose code could reach outside the model (the module's docstring says how it
    is told); the code is parsed, never run."""
    try:
        zf = zipfile.ZipFile(io.BytesIO(data))
    except zipfile.BadZipFile:
        raise InvalidModelFile(f"{shown} is not a TorchScript archive (torch.jit.save writes a zip)") from None
    with zf:
        infos = zf.infolist()
        names = [i.filename for i in infos]
        if not is_archive(names):
            raise InvalidModelFile(
                f"{shown} is not a TorchScript archive (torch.jit.save's, with its code/ and constants.pkl); save the "
                "module with torch.jit.save(torch.jit.script(model), 'model.pt')"
            )
        # torch finds entries whatever their case: two names that differ in case alone are one name twice to it
        twice = sorted(n for n, count in collections.Counter(n.casefold() for n in names).items() if count > 1)
        if twice:
            raise UnsafeModel(
                f"{shown} holds {twice[0]!r} twice, and zip readers differ on which one counts; refused unread: save "
                "the module again with torch.jit.save"
            )
        code = [i for i in infos if i.filename.casefold().endswith((".py", ".pkl"))]
        if sum(i.file_size for i in code) > _MAX_CODE_BYTES:
            raise UnsafeModel(f"{shown} holds over {_MAX_CODE_BYTES >> 20} MiB of code and pickles; refused unread")
        for info in code:
            try:
                data = zf.read(info)
            except Exception as e:  # encrypted, another compression: torch's reader might take what this one cannot
                raise InvalidModelFile(f"{shown}: its {info.filename} cannot be read ({e}); refused unread") from None
            if info.filename.casefold().endswith(".pkl"):
                _check_pickle(data, shown, info.filename)
            else:
                _check_source(data, shown, info.filename)


def _check_source(data: bytes, shown: str, where: str) -> None:
    """One code file: as torch.jit.save writes it (text, lines ending in ``\n``, no other control character, on
    which Python's parser and TorchScript's could read it apart), parsed and checked."""
    bad = _CONTROL.search(data)
    if bad is not None:
        raise UnsafeModel(
            f"{shown}: its code {where} holds the control character {bad.group()!r}, which torch.jit.save never "
            "writes (parsers read it apart); refused unread"
        )
    try:
        tree = ast.parse(data.decode("utf-8"), filename=where)
        _check_tree(tree, shown, where)
    except (SyntaxError, UnicodeDecodeError, ValueError, RecursionError, MemoryError):
        raise UnsafeModel(f"{shown}: its code {where} cannot be read to check it; refused unread") from None


def _check_pickle(data: bytes, shown: str, where: str) -> None:
    """One pickle (the module's objects and constants, which torch's own unpickler reads): the custom classes it
    builds must be of torch's numeric namespaces."""
    from polystack.formats.pickle_guard import pickle_globals

    try:
        names = pickle_globals(data)
    except Exception:
        raise UnsafeModel(f"{shown}: its {where} cannot be read to check it; refused unread") from None
    for name in names:
        _check_name(name.split("."), shown, where)


def _check_tree(tree: ast.AST, shown: str, where: str) -> None:
    parents = {child: node for node in ast.walk(tree) for child in ast.iter_child_nodes(node)}
    for node in ast.walk(tree):
        parent = parents.get(node)
        at = f"{where}, line {getattr(node, 'lineno', '?')}"
        if isinstance(node, ast.Name) and node.id in _ROOTS:
            if not (isinstance(parent, ast.Attribute) and parent.value is node):
                raise UnsafeModel(
                    f"{shown} uses {node.id!r} itself ({at}), not an operator of it by name: polystack reads "
                    "TorchScript whose operators are named in full (torch.add); save the module with torch.jit.save"
                )
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in _REFLECTION:
            if node.args and _root(node.args[0]) in (*_ROOTS, "__torch__"):
                raise UnsafeModel(
                    f"{shown} looks up an operator by {node.func.id} ({at}); polystack reads TorchScript whose "
                    "operators are named in full (torch.add): save the module with torch.jit.save"
                )
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and "classes." in node.value:
            for named in _CLASS_NAMES.findall(node.value):  # a class named in a string annotation
                _check_name(["torch", "classes", named], shown, at)
        elif isinstance(node, ast.Attribute) and not (isinstance(parent, ast.Attribute) and parent.value is node):
            parts = _dotted(node)  # the whole dotted name
            _check_name(parts, shown, at)
            called = isinstance(parent, ast.Call) and parent.func is node
            if parts[0] in _ROOTS and not called and _is_namespace(parts):
                raise UnsafeModel(
                    f"{shown} uses {'.'.join(parts)} as a value ({at}), a namespace of operators; polystack reads "
                    "TorchScript whose operators are named in full (torch.add): save the module with torch.jit.save"
                )


def _root(node: ast.expr) -> str:
    while isinstance(node, ast.Attribute):
        node = node.value
    return node.id if isinstance(node, ast.Name) else ""


def _dotted(node: ast.Attribute) -> list[str]:
    parts: list[str] = []
    current: ast.expr = node
    while isinstance(current, ast.Attribute):
        parts.append(current.attr)
        current = current.value
    parts.append(current.id if isinstance(current, ast.Name) else "")
    return parts[::-1]


def _check_name(parts: list[str], shown: str, at: str) -> None:
    """One dotted name: ``torch.<op>``, ``ops.<namespace>.<op>``, ``torch.classes.<namespace>...``."""
    if parts[:1] == ["ops"]:
        namespace = parts[1:2]
    elif parts[:2] in (["torch", "ops"], ["torch", "classes"]):
        namespace = parts[2:3]
    elif parts[:3] == ["__torch__", "torch", "classes"]:
        namespace = parts[3:4]
    else:
        namespace = []
    if namespace and namespace[0] not in NAMESPACES:
        raise UnsafeModel(
            f"{shown} calls {'.'.join(parts)} ({at}), outside torch's own operators (namespace {namespace[0]!r}); "
            "polystack runs TorchScript on torch's numeric operators only: save the module without it"
        )
    if parts[0] in _ROOTS and any(p in DENIED for p in parts[1:]):
        raise UnsafeModel(
            f"{shown} calls {'.'.join(parts)} ({at}), which reaches the server's files; a served model may not: save "
            "the module without it"
        )


def _is_namespace(parts: list[str]) -> bool:
    """Whether a dotted name rooted at torch, ops or math names a namespace of operators (a module, torch.ops,
    one of its namespaces, torch.classes...), resolved on the Python objects of those names (no model code)."""
    import torch

    value: Any = {"torch": torch, "ops": torch.ops, "math": math}[parts[0]]
    kinds: tuple[type, ...] = (types.ModuleType, type(torch.ops), type(torch.ops.aten), type(torch.classes))
    for part in parts[1:]:
        if isinstance(value, types.ModuleType):
            if part not in vars(value):  # not imported (a module's __getattr__ would import it): taken for one
                return True
            value = vars(value)[part]
        else:
            try:
                value = getattr(value, part)  # torch.ops' and torch.classes' namespaces: made on the spot
            except Exception:
                return False  # no such Python object: an operator TorchScript resolves by name (torch.linear)
    return isinstance(value, kinds)


def check_ops(module: Any, shown: str) -> None:
    """Refuse a loaded ScriptModule any of whose methods, inlined, runs an operator outside torch's numeric
    namespaces or one that reaches files."""
    import torch

    for sub in module.modules():
        methods: list[str] = getattr(getattr(sub, "_c", None), "_method_names", list)()
        for name in methods:
            graph = sub._c._get_method(name).graph.copy()
            torch._C._jit_pass_inline(graph)
            _check_graph(graph, shown, name)


def _check_graph(graph: Any, shown: str, method: str) -> None:
    for node in graph.nodes():
        kind = node.kind()
        namespace, _, op = kind.partition("::")
        if namespace not in NAMESPACES or op in DENIED:
            raise UnsafeModel(
                f"{shown}'s {method} runs {kind}, "
                + ("which reaches the server's files" if op in DENIED else "outside torch's own numeric operators")
                + "; a served model may not: save the module without it"
            )
        for block in node.blocks():
            _check_graph(block, shown, method)
        if node.hasAttribute("Subgraph"):
            _check_graph(node.g("Subgraph"), shown, method)
