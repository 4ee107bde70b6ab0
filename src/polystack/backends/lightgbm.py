"""LightGBM, native: ``Booster.predict`` (LightGBM predicts on CPU only)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from polystack.backends import _tabular
from polystack.backends.base import Backend, LoadedModel
from polystack.errors import BackendError, BackendUnavailable
from polystack.types import Signature


class LightGBMOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")

    num_threads: int | None = Field(default=None, ge=1, description="threads per prediction")


class LightGBMModel:
    def __init__(self, booster: Any, signature: Signature, num_threads: int | None) -> None:
        self.booster = booster
        self.signature = signature
        self.kwargs: dict[str, Any] = {"num_threads": num_threads} if num_threads else {}

    def infer(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        x = _tabular.features(self.signature, inputs)
        try:
            raw = self.booster.predict(x, **self.kwargs)
        except Exception as e:
            raise BackendError(f"LightGBM failed: {str(e).splitlines()[0][:300]}") from e
        return _tabular.outputs(self.signature, raw)

    def close(self) -> None:
        self.booster = None


class LightGBMBackend(Backend):
    name = "lightgbm"
    Options = LightGBMOptions
    formats = frozenset({"lightgbm"})
    requires = ("lightgbm",)
    distribution = "lightgbm"

    def load(self, artifact: Path, signature: Signature, options: BaseModel, device: str) -> LoadedModel:
        from polystack.formats.lightgbm import load_booster

        assert isinstance(options, LightGBMOptions)
        if device != "cpu":
            raise BackendUnavailable(f"lightgbm predicts on cpu only, not {device!r}")
        return LightGBMModel(load_booster(artifact.read_text()), signature, options.num_threads)
