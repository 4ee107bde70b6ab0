"""The Signature shared by tabular models (scikit-learn, XGBoost, LightGBM) and their ONNX-ML form.

Names follow what skl2onnx and onnxmltools produce with ``zipmap=False``, so the native model and
its ONNX conversion answer with the same outputs: one input ``input`` (FP32 ``[-1, n_features]``);
classifiers return ``label`` (``[-1]``) and ``probabilities`` (``[-1, n_classes]``); regressors
return ``variable`` (``[-1, 1]``).
"""

from __future__ import annotations

from polystack.types import DType, Signature, TensorSpec

INPUT = "input"


def classifier(n_features: int, n_classes: int, label_dtype: DType = DType.INT64) -> Signature:
    return Signature(
        inputs=(TensorSpec(INPUT, DType.FP32, (-1, n_features)),),
        outputs=(
            TensorSpec("label", label_dtype, (-1,)),
            TensorSpec("probabilities", DType.FP32, (-1, n_classes)),
        ),
    )


def regressor(n_features: int, n_targets: int = 1) -> Signature:
    return Signature(
        inputs=(TensorSpec(INPUT, DType.FP32, (-1, n_features)),),
        outputs=(TensorSpec("variable", DType.FP32, (-1, n_targets)),),
    )


def is_classifier(signature: Signature) -> bool:
    return [o.name for o in signature.outputs] == ["label", "probabilities"]
