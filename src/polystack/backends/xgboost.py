"""XGBoost, native: ``Booster.inplace_predict`` on CPU or, where XGBoost was built with CUDA, a GPU.

XGBoost has no device enumeration of its own: ``cuda:N`` is offered when XGBoost was built with
CUDA and the NVIDIA driver lists GPU N (``/proc/driver/nvidia/gpus``); the booster is then told
``device=cuda:N`` and XGBoost does the rest.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from pathlib import Path

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from polystack.backends import _tabular
from polystack.backends.base import Backend, LoadedModel, nvidia_gpus
from polystack.errors import BackendError, BackendUnavailable
from polystack.types import Signature


class XGBoostOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")

    nthread: int | None = Field(default=None, ge=1, description="threads per prediction")


class XGBoostModel:
    def __init__(self, booster: object, signature: Signature, objective: str) -> None:
        self.booster = booster
        self.signature = signature
        self.objective = objective
        self._lock = threading.Lock()

    def infer(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        x = _tabular.features(self.signature, inputs)
        try:
            with self._lock:
                if self.objective == "multi:softmax":  # predicts labels: take margins and softmax them
                    margin = np.asarray(self.booster.inplace_predict(x, predict_type="margin"))  # type: ignore[attr-defined]
                    e = np.exp(margin - margin.max(axis=1, keepdims=True))
                    raw = e / e.sum(axis=1, keepdims=True)
                else:
                    raw = np.asarray(self.booster.inplace_predict(x))  # type: ignore[attr-defined]
        except Exception as e:
            raise BackendError(f"XGBoost failed: {str(e).splitlines()[0][:300]}") from e
        return _tabular.outputs(self.signature, raw)

    def close(self) -> None:
        self.booster = None


class XGBoostBackend(Backend):
    name = "xgboost"
    Options = XGBoostOptions
    formats = frozenset({"xgboost"})
    requires = ("xgboost",)
    distribution = "xgboost"

    def devices(self) -> list[str]:
        import xgboost

        found = ["cpu"]
        if xgboost.build_info().get("USE_CUDA"):
            found += [f"cuda:{i}" for i in range(nvidia_gpus())]
        return found

    def load(self, artifact: Path, signature: Signature, options: BaseModel, device: str) -> LoadedModel:
        from polystack.formats.xgboost import load_booster, objective

        assert isinstance(options, XGBoostOptions)
        if device not in self.devices():
            raise BackendUnavailable(f"xgboost cannot use device {device!r} here; it offers {self.devices()}")
        booster = load_booster(artifact.read_bytes())
        params: dict[str, object] = {"device": device}
        if options.nthread:
            params["nthread"] = options.nthread
        booster.set_param(params)
        return XGBoostModel(booster, signature, objective(booster)[0])
