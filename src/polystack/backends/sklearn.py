"""scikit-learn, native: estimators and pipelines loaded with skops (CPU).

skops refuses any type it does not trust unless ``trusted`` names it; registration records the
types the user trusted (``--trust``) and the variant carries them here.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from polystack.backends import _tabular
from polystack.backends.base import Backend, LoadedModel
from polystack.errors import BackendError, BackendUnavailable
from polystack.formats import tabular
from polystack.types import DType, Signature


class SklearnOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")

    trusted: list[str] = Field(default_factory=list, description="types skops may load beyond its defaults")


class SklearnModel:
    def __init__(self, estimator: Any, signature: Signature) -> None:
        self.estimator = estimator
        self.signature = signature

    def infer(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        x = _tabular.features(self.signature, inputs)
        try:
            if tabular.is_classifier(self.signature):
                proba = np.asarray(self.estimator.predict_proba(x), dtype=np.float32)
                label = np.asarray(self.estimator.predict(x))
                return {"label": self._labels(label), "probabilities": proba}
            prediction = np.asarray(self.estimator.predict(x))
        except Exception as e:
            raise BackendError(f"scikit-learn failed: {type(e).__name__}: {e}") from e
        if self.signature.outputs[0].name == "label":
            return {"label": self._labels(prediction)}
        return _tabular.outputs(self.signature, prediction)

    def _labels(self, label: np.ndarray) -> np.ndarray:
        if self.signature.outputs[0].dtype is DType.BYTES:
            return np.array([str(v).encode() for v in label], dtype=object)
        return label.astype(np.int64)

    def close(self) -> None:
        self.estimator = None


class SklearnBackend(Backend):
    name = "sklearn"
    Options = SklearnOptions
    formats = frozenset({"skops"})
    requires = ("sklearn", "skops")
    distribution = "scikit-learn"

    def load(self, artifact: Path, signature: Signature, options: BaseModel, device: str) -> LoadedModel:
        from polystack.formats.skops import load_estimator

        assert isinstance(options, SklearnOptions)
        if device != "cpu":
            raise BackendUnavailable(f"scikit-learn runs on cpu only, not {device!r}")
        return SklearnModel(load_estimator(artifact, options.trusted), signature)
