"""Converters between formats: each step takes one artifact file and writes another.

Steps, by name (a variant's ``recipe`` is the chain of steps from its source, joined by ``+``):

- ``onnx``: the source to ONNX (torch.export via the dynamo exporter, TorchScript via the TorchScript one;
  scikit-learn, XGBoost and LightGBM to ONNX-ML via skl2onnx / onnxmltools, ``zipmap`` off)
- ``openvino-ir``: ONNX to OpenVINO IR (one uncompressed tar of model.xml + model.bin)
- ``int8-dynamic``: ONNX to int8 ONNX by ONNX Runtime's dynamic quantization
- ``int8-static``: ONNX to int8 ONNX by static (QDQ) quantization calibrated on the model's samples

A step raises ``ConversionError`` (or anything else) on failure; the caller records why and
carries on with the other variants.
"""

from __future__ import annotations

import contextlib
import io
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from polystack.errors import PolystackError
from polystack.types import Signature


class ConversionError(PolystackError):
    """A converter could not produce its artifact (the message says why)."""


@dataclass(frozen=True)
class ConvertContext:
    source_format: str
    signature: Signature
    samples: Mapping[str, np.ndarray]
    workdir: Path
    settings: Mapping[str, object]


Step = Callable[[Path, ConvertContext], Path]


@contextlib.contextmanager
def quiet() -> Iterator[io.StringIO]:
    """Swallow what converters print (progress bars, banners); keep it for error messages."""
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf), contextlib.redirect_stderr(buf):
        yield buf


def _to_onnx(src: Path, ctx: ConvertContext) -> Path:
    if ctx.source_format == "torch.export":
        from polystack.convert.torch_onnx import convert

        return convert(src, ctx)
    if ctx.source_format == "torchscript":
        from polystack.convert.torchscript_onnx import convert

        return convert(src, ctx)
    if ctx.source_format in ("skops", "xgboost", "lightgbm"):
        from polystack.convert.tabular_onnx import convert

        return convert(src, ctx)
    if ctx.source_format == "onnx":
        return src
    raise ConversionError(f"no converter from {ctx.source_format} to ONNX")


def _openvino_ir(src: Path, ctx: ConvertContext) -> Path:
    from polystack.convert.openvino_ir import convert

    return convert(src, ctx)


def _int8_dynamic(src: Path, ctx: ConvertContext) -> Path:
    from polystack.convert.quantize import dynamic

    return dynamic(src, ctx)


def _int8_static(src: Path, ctx: ConvertContext) -> Path:
    from polystack.convert.quantize import static

    return static(src, ctx)


STEPS: dict[str, Step] = {
    "onnx": _to_onnx,
    "openvino-ir": _openvino_ir,
    "int8-dynamic": _int8_dynamic,
    "int8-static": _int8_static,
}
TO_ONNX = frozenset({"torch.export", "torchscript", "skops", "xgboost", "lightgbm"})


def step(name: str) -> Step:
    try:
        return STEPS[name]
    except KeyError:
        raise ConversionError(f"unknown conversion step {name!r}; known: {', '.join(STEPS)}") from None
