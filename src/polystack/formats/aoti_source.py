"""What an AOTInductor package's inputs were compiled for, read from the C++ AOTInductor generated for it
(``<hash>.wrapper.cpp`` in the package): the call spec, and each input's type, its dims' sizes and ranges, and the
symbols its dims share with others. AOTInductor checks none of it when the model runs (unless an environment
variable asks, which also refuses a batch of 1), and a compiled kernel reads as many elements as it was compiled
for, so ``Compiled.check`` applies it to each batch: ranges, and sizes the compiled code takes to be one (it takes
such a size from the first input that has it and reads the others by it).

Written by hand: torch reads none of this back from a package; the generated code is regular (``check_input_<i>``
functions, ``assert_size_stride`` lines) and what is not recognised is refused, not guessed.
"""

from __future__ import annotations

import ast
import re
import zipfile
from dataclasses import dataclass
from typing import Any

from polystack.errors import InvalidModelFile, InvalidRequest
from polystack.types import DType

PACKAGE_MODEL = "model"  # the model's name inside the package, as Triton's backend loads it
_AOTI_DTYPES = {
    "bool": DType.BOOL, "uint8": DType.UINT8, "int8": DType.INT8, "int16": DType.INT16, "int32": DType.INT32,
    "int64": DType.INT64, "float16": DType.FP16, "float32": DType.FP32, "float64": DType.FP64,
    "bfloat16": DType.BF16,
}  # fmt: skip


@dataclass(frozen=True)
class Dim:
    """One dimension of a compiled input: exactly ``size``, or from ``low`` to ``high`` (None: no bound); ``size_of``,
    the size the compiled code takes it to be, where that is a symbol or an expression of symbols shared with other
    dims (``s0``, ``2*s0``): the first dim that is the symbol alone sets it, and the others must agree."""

    size: int | None = None
    low: int | None = None
    high: int | None = None
    size_of: str | None = None

    def holds(self, n: int) -> bool:
        """Whether the compiled code takes a size of ``n`` here. A dynamic dim exported with ``min=1`` is compiled
        with a check of ``>= 2`` (torch.export treats sizes 0 and 1 apart), as is one that needs two (``x[1]``);
        the source cannot tell them apart, so 2 means 2 (a batching model's batch is padded up to it instead:
        ``backends/torch_aoti.py``)."""
        if self.size is not None:
            return n == self.size
        return (self.low is None or n >= self.low) and (self.high is None or n <= self.high)

    def shown(self) -> str:
        if self.size is not None:
            return str(self.size)
        return f"{self.low if self.low is not None else 0}..{self.high if self.high is not None else 'any'}"


@dataclass(frozen=True)
class Compiled:
    """What each input (by its leaf's index) was compiled for: its type and dims (None: not known)."""

    dtypes: tuple[DType | None, ...]
    dims: tuple[tuple[Dim, ...] | None, ...]

    def to_json(self) -> dict[str, Any]:
        return {
            "dtypes": [d.value if d else None for d in self.dtypes],
            "dims": [None if ds is None else [[d.size, d.low, d.high, d.size_of] for d in ds] for ds in self.dims],
        }

    @classmethod
    def from_json(cls, doc: dict[str, Any]) -> Compiled:
        return cls(
            tuple(DType(d) if d else None for d in doc["dtypes"]),
            tuple(None if ds is None else tuple(Dim(*d) for d in ds) for ds in doc["dims"]),
        )

    def check(self, shapes: list[tuple[str, tuple[int, ...]]]) -> None:
        """Refuse inputs (name and shape, in the leaves' order) the package was not compiled for: a size outside
        a dim's range, or sizes its compiled code takes to be one (a shared symbol) that differ, which would have
        its kernels read past the smaller input."""
        bound: dict[str, tuple[int, str, int]] = {}  # symbol -> (size, input, dim) that set it
        for index, (name, shape) in enumerate(shapes):
            dims = self.dims[index] if index < len(self.dims) else None
            if dims is None:
                continue
            if len(shape) != len(dims) or not all(d.holds(n) for d, n in zip(dims, shape, strict=True)):
                raise InvalidRequest(
                    f"input {name!r} has shape {list(shape)}, but the AOTInductor package was compiled for "
                    f"[{', '.join(d.shown() for d in dims)}]; send that shape"
                )
            for axis, (d, n) in enumerate(zip(dims, shape, strict=True)):
                if d.size_of is not None and _SYMBOL.fullmatch(d.size_of) and d.size_of not in bound:
                    bound[d.size_of] = (n, name, axis)
        sizes = {symbol: size for symbol, (size, _, _) in bound.items()}
        for index, (name, shape) in enumerate(shapes):
            for axis, (d, n) in enumerate(zip(self.dims[index] or (), shape, strict=False)):
                if d.size_of is None or d.size is not None:
                    continue
                want = _evaluate(d.size_of, sizes)
                if want != n:
                    first = bound.get(_SYMBOLS.findall(d.size_of)[0], (want, "?", 0))
                    raise InvalidRequest(
                        f"input {name!r} has {n} at dim {axis}, but the AOTInductor package was compiled to take "
                        f"{want} there, as dim {first[2]} of input {first[1]!r} ({first[0]}): send inputs whose "
                        "sizes agree"
                    )


_SYMBOL = re.compile(r"[su]\d+")
_SYMBOLS = re.compile(r"\b[su]\d+\b")


def _evaluate(expression: str, sizes: dict[str, int]) -> int | None:
    """An integer expression of the compiled code's (``2*s0``, ``s0 + s1``, ``(s0 // 2)``) with ``sizes`` for its
    symbols: + - * // and parentheses only (``read_source`` refuses others); None where a symbol has no size."""
    try:
        tree = ast.parse(expression, mode="eval").body
    except SyntaxError:
        return None

    def value(node: ast.AST) -> int | None:
        if isinstance(node, ast.Constant) and isinstance(node.value, int):
            return node.value
        if isinstance(node, ast.Name):
            return sizes.get(node.id)
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub):
            inner = value(node.operand)
            return None if inner is None else -inner
        if isinstance(node, ast.BinOp) and isinstance(node.op, (ast.Add, ast.Sub, ast.Mult, ast.FloorDiv)):
            a, b = value(node.left), value(node.right)
            if a is None or b is None or (isinstance(node.op, ast.FloorDiv) and b == 0):
                return None
            return {ast.Add: a + b, ast.Sub: a - b, ast.Mult: a * b}.get(type(node.op), a // b if b else 0)
        return None

    return value(tree)


_CHECK = re.compile(r"static void check_input_(\d+)\(")
_DTYPE = re.compile(r"_expected_dtype = aoti_torch_dtype_(\w+)\(\)")
_LOW = re.compile(r"if \(\w+_size\[(\d+)\] < (-?\d+)\)")
_HIGH = re.compile(r"if \(\w+_size\[(\d+)\] > (-?\d+)\)")
_EXACT = re.compile(r"if \((-?\d+) != \w+_size\[(\d+)\]\)")
_RANK = re.compile(r"\w+_(?:size|stride)\[(\d+)\]")
_SPEC = re.compile(r'\b(in|out)_spec_ = R"\((.*?)\)";', re.S)
_CHECKS_END = "static bool _check_aoti_runtime_check_inputs_env"
_MOVED = re.compile(r"auto (\w+) = std::move\(inputs\[(\d+)\]\);")  # run_impl: each input's local name
_ASSERT = re.compile(r'assert_size_stride\((\w+), \{([^}]*)\}, \{([^}]*)\}, "input"\)')  # sizes, strides
_INT_SUFFIX = re.compile(r"\b(\d+)L\b")


def wrapper_source(zf: zipfile.ZipFile) -> str | None:
    """The package model's generated C++ (``<hash>.wrapper.cpp``), or None."""
    sources = [
        n for n in zf.namelist() if f"data/aotinductor/{PACKAGE_MODEL}/" in n and n.endswith(".wrapper.cpp")
    ] or [n for n in zf.namelist() if f"data/aotinductor/{PACKAGE_MODEL}/" in n and n.endswith(".cpp")]
    for name in sources:
        text = zf.read(name).decode("utf-8", "replace")
        if "in_spec_" in text:
            return text
    return None


def read_source(source: str, leaves: int, model: str) -> tuple[tuple[str, str] | None, Compiled | None]:
    """The call spec (in, out) and the compiled inputs a package's generated C++ holds (None where it has not
    them); ``leaves``: the inputs its call spec has (0: the spec alone is read). Refused: a package whose code takes
    another count of tensors (an argument that is not a tensor was compiled into it), or whose inputs' sizes relate
    in ways polystack cannot check."""
    specs = dict(_SPEC.findall(source))
    spec = (specs["in"], specs["out"]) if "in" in specs and "out" in specs else None
    starts = [(int(m.group(1)), m.start()) for m in _CHECK.finditer(source)]
    if leaves == 0 or not starts:
        return spec, None
    if len(starts) != leaves:
        raise InvalidModelFile(
            f"the AOTInductor package of model {model!r} takes {len(starts)} tensors, but its call spec has {leaves} "
            "arguments: an argument that is not a tensor (a number, None) was compiled into it, which no request can "
            "give; export the model with tensors only"
        )
    bodies: dict[int, str] = {}
    for k, (index, start) in enumerate(starts):
        end = starts[k + 1][1] if k + 1 < len(starts) else source.find(_CHECKS_END, start)
        bodies[index] = source[start : end if end > start else len(source)]
    if sorted(bodies) != list(range(leaves)):
        return spec, None
    names = {int(i): n for n, i in _MOVED.findall(source)}
    sizes = {n: [_INT_SUFFIX.sub(r"\1", e) for e in _top_level(given)] for n, given, _ in _ASSERT.findall(source)}
    strides = {n: [_INT_SUFFIX.sub(r"\1", e) for e in _top_level(laid)] for n, _, laid in _ASSERT.findall(source)}
    dtypes: list[DType | None] = []
    dims: list[tuple[Dim, ...] | None] = []
    for index in range(leaves):
        body = bodies[index]
        found = _DTYPE.search(body)
        dtypes.append(_AOTI_DTYPES.get(found.group(1)) if found else None)
        symbolic = sizes.get(names.get(index, ""))
        laid = strides.get(names.get(index, ""), [])
        if (
            symbolic is not None
            and all(map(_checkable, symbolic))
            and not (all(map(_checkable, laid)) and _contiguous(symbolic, laid))
        ):  # (sizes it cannot read are refused below, in their own words)
            raise InvalidModelFile(
                f"the AOTInductor package of model {model!r} was compiled for its input {index} laid out with strides "
                f"{strides[names[index]]} for sizes {symbolic}, not one row after another; polystack hands it contiguous "
                "tensors, which its kernels would read past: export it from contiguous example inputs"
            )
        ranked = [int(i) for i in _RANK.findall(body)]
        rank = len(symbolic) if symbolic is not None else max(ranked) + 1 if ranked else 0
        if not ranked and symbolic is None:
            dims.append(() if "_size" not in body else None)  # a scalar tensor has no size checks
            continue
        low = {int(i): int(v) for i, v in _LOW.findall(body)}
        high = {int(i): int(v) for i, v in _HIGH.findall(body)}
        exact = {int(i): int(v) for v, i in _EXACT.findall(body)}
        made = []
        for i in range(rank):
            size_of = symbolic[i] if symbolic is not None and i < len(symbolic) else None
            if size_of is not None and size_of.lstrip("-").isdigit():
                exact.setdefault(i, int(size_of))
                size_of = None
            if size_of is not None and not _checkable(size_of):
                raise InvalidModelFile(
                    f"the AOTInductor package of model {model!r} sizes its input {index}'s dim {i} as {size_of}, which "
                    "polystack cannot check requests against (AOTInductor checks none); export it with plain dynamic "
                    "dims (torch.export.Dim)"
                )
            made.append(Dim(size=exact[i]) if i in exact else Dim(low=low.get(i), high=high.get(i), size_of=size_of))
        dims.append(tuple(made))
    plain = {d.size_of for ds in dims for d in ds or () if d.size_of and _SYMBOL.fullmatch(d.size_of)}
    for ds in dims:
        for d in ds or ():
            if d.size_of and not set(_SYMBOLS.findall(d.size_of)) <= plain:
                raise InvalidModelFile(
                    f"the AOTInductor package of model {model!r} sizes an input dim as {d.size_of}, whose symbols no "
                    "input dim gives alone, so polystack cannot check requests against it (AOTInductor checks none); "
                    "export it with plain dynamic dims (torch.export.Dim)"
                )
    unrelated = sum(1 for ds in dims for d in ds or () if d.size is None and d.size_of is None)
    if unrelated > 1:
        raise InvalidModelFile(
            f"the AOTInductor package of model {model!r} has {unrelated} dynamic input dims whose compiled sizes its "
            "source does not say, so polystack cannot check that requests' sizes agree as its kernels assume "
            "(AOTInductor checks none); compile it with this torch"
        )
    return spec, Compiled(tuple(dtypes), tuple(dims))


def _contiguous(sizes: list[str], strides: list[str]) -> bool:
    """Whether strides compiled for ``sizes`` (integers or expressions of symbols) are a contiguous tensor's, for
    sizes of 2 and more in place of the symbols (distinct primes, so that unrelated ones do not agree by chance)."""
    symbols = sorted({symbol for size in (*sizes, *strides) for symbol in _SYMBOLS.findall(size)})
    primes = (3, 5, 7, 11, 13, 17, 19, 23, 29, 31, 37, 41, 43, 47)
    if len(strides) != len(sizes) or len(symbols) > len(primes):
        return False
    values = dict(zip(symbols, primes, strict=False))
    given = [_evaluate(e, values) for e in sizes]
    laid = [_evaluate(e, values) for e in strides]
    if any(v is None for v in (*given, *laid)):
        return False
    expected, step = [], 1
    for size in reversed(given):
        expected.append(step)
        step *= int(size or 0)
    return laid == expected[::-1]


def _top_level(text: str) -> list[str]:
    """``text``'s comma-separated parts, commas inside parentheses kept (``max(s0, 2), 4L``)."""
    parts, depth, part = [], 0, ""
    for c in text:
        depth += (c == "(") - (c == ")")
        if c == "," and depth == 0:
            parts.append(part.strip())
            part = ""
        else:
            part += c
    return [p for p in (*parts, part.strip()) if p]


def _checkable(expression: str) -> bool:
    """Whether a compiled size is an expression ``_evaluate`` reads: symbols and integers with + - * // ( )."""
    try:
        tree = ast.parse(expression, mode="eval")
    except SyntaxError:
        return False
    allowed = (ast.Expression, ast.BinOp, ast.UnaryOp, ast.Add, ast.Sub, ast.Mult, ast.FloorDiv, ast.USub, ast.Load)
    for node in ast.walk(tree):
        if isinstance(node, ast.Name) and _SYMBOL.fullmatch(node.id):
            continue
        if isinstance(node, ast.Constant) and isinstance(node.value, int):
            continue
        if not isinstance(node, allowed):
            return False
    return True
