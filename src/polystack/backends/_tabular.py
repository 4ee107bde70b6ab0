"""Outputs shared by the native tree/tabular backends (sklearn, xgboost, lightgbm).

They answer in the shape of the ONNX-ML conversion (see ``polystack.formats.tabular``):
classifiers ``label`` + ``probabilities``; regressors ``variable`` with shape [n, targets].
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from polystack.formats import tabular
from polystack.types import Signature


def features(signature: Signature, inputs: Mapping[str, np.ndarray]) -> np.ndarray:
    return np.ascontiguousarray(inputs[signature.inputs[0].name], dtype=np.float32)


def outputs(signature: Signature, raw: np.ndarray) -> dict[str, np.ndarray]:
    """From a runtime's prediction (probabilities, P(class 1), or values) to the signature's outputs."""
    raw = np.asarray(raw)
    if tabular.is_classifier(signature):
        n_classes = signature.outputs[1].shape[1]
        proba = raw.reshape(len(raw), -1)
        if proba.shape[1] == 1 and n_classes == 2:
            proba = np.concatenate([1.0 - proba, proba], axis=1)
        proba = proba.astype(np.float32)
        return {"label": proba.argmax(axis=1).astype(np.int64), "probabilities": proba}
    spec = signature.outputs[0]
    return {spec.name: raw.reshape(len(raw), -1).astype(spec.dtype.numpy)}
