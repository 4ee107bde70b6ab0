"""Triton's FIL backend's tree models (``formats/fil.py``), answered as FIL answers: Treelite's GTIL predicts
(the library FIL loads models with; float32 rows, NaN a missing value, categorical splits as trained), then
FIL's post-processing: a binary classifier's class is 1.0 where the positive class's probability is over the
threshold (strictly), else 0.0; a multi-class one's is the index of its highest probability (the lowest among
equals); probabilities of a binary classifier asked for two columns are [1 - p, p]. On CPU only, as polystack
has no CUDA build of FIL."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from polystack.backends.base import Backend, LoadedModel
from polystack.errors import BackendError, BackendUnavailable
from polystack.types import Signature


class FilOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")

    nthread: int | None = Field(default=None, ge=1, description="threads per prediction (None: every core)")


class FilModel:
    def __init__(self, forest: Any, settings: Any, signature: Signature, nthread: int | None) -> None:
        from polystack.formats.fil import classes

        self.forest = forest
        self.settings = settings
        self.signature = signature
        self.nthread = nthread or -1
        self.classes = classes(forest)

    def infer(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        from treelite import gtil

        from polystack.formats.fil import INPUT, OUTPUT

        if self.forest is None:
            raise BackendError("the FIL model was closed; load it again")
        x = np.ascontiguousarray(inputs[INPUT], dtype=np.float32)
        try:
            raw = gtil.predict(self.forest, x, nthread=self.nthread)
        except Exception as e:  # TreeliteError and friends
            raise BackendError(f"Treelite failed: {str(e).strip().splitlines()[0][:300]}") from e
        out = np.asarray(raw, dtype=np.float32).reshape(len(x), -1)
        s = self.settings
        if s.is_classifier and self.classes == 1:
            if not s.predict_proba:
                out = (out > np.float32(s.threshold)).astype(np.float32)
            elif s.answer_dims == (2,):
                out = np.concatenate([1.0 - out, out], axis=1)
        elif s.is_classifier and not s.predict_proba:
            out = out.argmax(axis=1).astype(np.float32)
        return {OUTPUT: out.reshape((len(x), *s.answer_dims))}

    def close(self) -> None:
        self.forest = None


class FilBackend(Backend):
    name = "fil"
    Options = FilOptions
    formats = frozenset({"fil"})
    requires = ("treelite",)
    distribution = "treelite"

    def load(self, artifact: Path, signature: Signature, options: BaseModel, device: str) -> LoadedModel:
        from polystack.formats.fil import forest, unpack

        assert isinstance(options, FilOptions)
        if device != "cpu":
            raise BackendUnavailable(f"fil predicts on cpu only here (Treelite's GTIL), not {device!r}")
        settings, data = unpack(artifact)
        return FilModel(forest(settings, data), settings, signature, options.nthread)
