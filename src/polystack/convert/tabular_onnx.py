"""scikit-learn / XGBoost / LightGBM -> ONNX-ML (skl2onnx, onnxmltools), ``zipmap`` off.

The ONNX model answers with the same output names as the native model (``label`` +
``probabilities`` or ``variable``); a conversion that does not is refused.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from polystack.convert import ConversionError, ConvertContext, quiet
from polystack.formats import tabular


def _initial_types(ctx: ConvertContext, tensor_type: Any) -> list[tuple[str, Any]]:
    spec = ctx.signature.inputs[0]
    return [(spec.name, tensor_type([None, spec.shape[1]]))]


def _skops(src: Path, ctx: ConvertContext) -> Any:
    from skl2onnx import convert_sklearn
    from skl2onnx.common.data_types import FloatTensorType

    from polystack.formats.skops import load_estimator

    found = ctx.settings.get("trusted_types") or []
    trusted = [str(t) for t in found] if isinstance(found, list) else []
    estimator = load_estimator(src, trusted)
    options = {"zipmap": False} if tabular.is_classifier(ctx.signature) else None
    return convert_sklearn(estimator, initial_types=_initial_types(ctx, FloatTensorType), options=options)


def _xgboost(src: Path, ctx: ConvertContext) -> Any:
    from onnxmltools import convert_xgboost
    from onnxmltools.convert.common.data_types import FloatTensorType

    from polystack.formats.xgboost import load_booster

    return convert_xgboost(load_booster(src.read_bytes()), initial_types=_initial_types(ctx, FloatTensorType))


def _lightgbm(src: Path, ctx: ConvertContext) -> Any:
    from onnxmltools import convert_lightgbm
    from onnxmltools.convert.common.data_types import FloatTensorType

    from polystack.formats.lightgbm import load_booster

    return convert_lightgbm(
        load_booster(src.read_text()), initial_types=_initial_types(ctx, FloatTensorType), zipmap=False
    )


_CONVERTERS = {"skops": _skops, "xgboost": _xgboost, "lightgbm": _lightgbm}


def convert(src: Path, ctx: ConvertContext) -> Path:
    import onnx

    with quiet() as log:
        try:
            model = _CONVERTERS[ctx.source_format](src, ctx)
        except Exception as e:
            raise ConversionError(
                f"{ctx.source_format} -> ONNX failed: {type(e).__name__}: {str(e)[:400]} {log.getvalue()[-300:]}"
            ) from e
    names = [o.name for o in model.graph.output]
    if names != ctx.signature.output_names:
        raise ConversionError(
            f"the ONNX conversion returns {names}, not {ctx.signature.output_names}; it cannot stand in for the model"
        )
    out = ctx.workdir / "model.onnx"
    onnx.save_model(model, str(out))
    return out


def is_onnx_ml(path: Path) -> bool:
    """True when the ONNX model uses the ai.onnx.ml domain (tree ensembles, scalers, ...)."""
    import onnx

    model = onnx.load_model(str(path), load_external_data=False)
    return any(o.domain == "ai.onnx.ml" for o in model.opset_import)
