"""ONNX -> int8 ONNX with ONNX Runtime's quantization tools.

``dynamic``: weights to int8 ahead of time, activations quantized per call (``quantize_dynamic``).
``static``: weights and activations to int8 in QDQ form, activation ranges calibrated (MinMax) on
every other row of the model's samples (``quantize_static``), so that the gate also judges it on rows it was not
calibrated on. Both keep weights to 7 bits (``reduce_range``), so that the variant keeps its accuracy on x86 CPUs
without VNNI, and run ONNX Runtime's pre-processing (shape inference and graph optimization) first when it succeeds.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from polystack.convert import ConversionError, ConvertContext, quiet
from polystack.samples import batches, every_other_row

CALIBRATION_BATCH = 8


def _preprocess(src: Path, ctx: ConvertContext) -> Path:
    from onnxruntime.quantization.shape_inference import quant_pre_process

    out = ctx.workdir / "model.pre.onnx"
    try:
        quant_pre_process(str(src), str(out), skip_symbolic_shape=True)
    except Exception:
        return src  # pre-processing is an optimisation; quantize the model as it is
    return out if out.is_file() else src


def dynamic(src: Path, ctx: ConvertContext) -> Path:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    out = ctx.workdir / "model.int8-dynamic.onnx"
    with quiet() as log:
        try:
            # weights in 7 bits: on x86 CPUs without VNNI ONNX Runtime multiplies u8 x s8 pairs into
            # saturating int16 sums, which cost a trained MLP's int8 its gate here (AMD EPYC, AVX2 only:
            # min row cosine 0.98, 0.999 with reduce_range); a variant may run on either kind of CPU
            quantize_dynamic(
                str(_preprocess(src, ctx)), str(out), weight_type=QuantType.QInt8, reduce_range=True
            )
        except Exception as e:
            raise ConversionError(
                f"quantize_dynamic failed: {type(e).__name__}: {str(e)[:400]} {log.getvalue()[-200:]}"
            ) from e
    return out


class _SamplesReader:
    """ONNX Runtime's CalibrationDataReader over every other row of the model's samples (not the first half: samples
    sorted by class or time would leave the rest out of the ranges): the gate, which runs them all, then judges the
    variant on rows its ranges were not calibrated on too (calibrated and judged on the same two rows, an MLP's
    int8 passed and agreed on 94% of fresh rows' top-1)."""

    def __init__(self, ctx: ConvertContext) -> None:
        self._batches = iter(batches(every_other_row(ctx.samples, ctx.signature), ctx.signature, CALIBRATION_BATCH))

    def get_next(self) -> dict[str, Any] | None:
        return next(self._batches, None)

    def rewind(self) -> None:  # pragma: no cover - ORT calls it only for some calibrators
        pass


def static(src: Path, ctx: ConvertContext) -> Path:
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    reader: Any = type("Reader", (_SamplesReader, CalibrationDataReader), {})(ctx)
    out = ctx.workdir / "model.int8-static.onnx"
    with quiet() as log:
        try:
            quantize_static(
                str(_preprocess(src, ctx)),
                str(out),
                reader,
                quant_format=QuantFormat.QDQ,
                activation_type=QuantType.QInt8,
                weight_type=QuantType.QInt8,
                per_channel=True,
                reduce_range=True,  # as in ``dynamic``: here 0.955 without it, 0.999 with it
            )
        except Exception as e:
            raise ConversionError(
                f"quantize_static failed: {type(e).__name__}: {str(e)[:400]} {log.getvalue()[-200:]}"
            ) from e
    return out
