"""Triton's FIL backend's tree models (``formats/fil.py``), answered as FIL answers: Treelite's GTIL predicts
(the library FIL loads models with; float32 rows, NaN a missing value, categorical splits as trained), then
FIL's post-processing: a binary classifier's class is 1.0 where the positive class's probability is over the
threshold (strictly), else 0.0; a multi-class one's is the index of its highest probability (the lowest among
equals); probabilities of a binary classifier asked for two columns are [1 - p, p]. SHAP values, where the
config lists ``treeshap_output``, come from the framework's own TreeSHAP (XGBoost's ``pred_contribs``,
LightGBM's ``pred_contrib``: margin space, the bias last, as FIL gives them). On CPU only, as polystack has no
CUDA build of FIL.

GTIL is Treelite's reference predictor: fast for a few rows, slow for many (``bench/fil.py``). So, by default
(``engine: auto``), an XGBoost (JSON, UBJSON) or LightGBM model also gets its framework's own predictor, which
runs batches of ``NATIVE_FROM`` rows and more (XGBoost's from 64, LightGBM's every batch), once it has given
GTIL's values (within 1e-5) on test rows at load; where it does not, GTIL runs everything and a warning says
why. ``engine: treelite`` or ``native`` picks
one (the variants gate checks ``native`` against GTIL, the reference)."""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from polystack.backends.base import Backend, LoadedModel
from polystack.errors import BackendError, BackendUnavailable
from polystack.formats.fil import INPUT, OUTPUT, SHAP, classes, forest, unpack
from polystack.types import Signature

log = logging.getLogger("polystack.backends")

# from this many rows a call, the framework's own predictor: XGBoost's is slower than GTIL below (0.21 ms against
# 0.06 at 1 row), LightGBM's faster at every size (bench/fil.py)
NATIVE_FROM = {"xgboost_json": 64, "xgboost_ubj": 64, "lightgbm": 1}
_CHECK_ROWS = 256
Predict = Callable[[np.ndarray], np.ndarray]


class FilOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")

    nthread: int | None = Field(default=None, ge=1, description="threads per prediction (None: every core)")
    engine: Literal["auto", "treelite", "native"] = Field(
        default="auto", description="Treelite's GTIL, the framework's own predictor, or both by batch size"
    )


def _softmax(margin: np.ndarray) -> np.ndarray:
    e = np.exp(margin - margin.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


@dataclass(frozen=True)
class Native:
    """A FIL model's framework's own predictors: its values as GTIL gives them (FIL's softmax for probabilities
    of a multi-class model), and its SHAP values as FIL's ``treeshap_output`` gives them (TreeSHAP in margin
    space, a value per feature and the bias last, per class for a multi-class model)."""

    values: Predict
    shap: Predict


def native_predictor(settings: Any, data: bytes, nthread: int | None) -> Native | None:
    """The framework's own predictors of a FIL model's file, or None where it has none here (XGBoost's legacy
    binary, which XGBoost 3 cannot read; Treelite checkpoints)."""
    kind = settings.model_type
    features = settings.features
    if kind in ("xgboost_json", "xgboost_ubj"):  # formats/fil.py's NATIVE_TYPES
        import json

        import xgboost

        booster = xgboost.Booster()
        booster.load_model(bytearray(data))
        if nthread:
            booster.set_param({"nthread": nthread})
        objective = json.loads(booster.save_config())["learner"]["objective"]["name"]
        by_margin = objective in ("multi:softmax", "multi:softprob")  # FIL's softmax, whatever xgboost answers

        def xgb(x: np.ndarray) -> np.ndarray:
            if by_margin:
                return _softmax(np.asarray(booster.inplace_predict(x, predict_type="margin")).reshape(len(x), -1))
            return np.asarray(booster.inplace_predict(x)).reshape(len(x), -1)

        def xgb_shap(x: np.ndarray) -> np.ndarray:
            rows = xgboost.DMatrix(x, missing=np.nan, nthread=nthread or -1)
            return np.asarray(booster.predict(rows, pred_contribs=True)).reshape(len(x), -1, features + 1)

        return Native(xgb, xgb_shap)
    if kind == "lightgbm":
        import lightgbm

        text = data.decode("utf-8")
        lgb = lightgbm.Booster(model_str=text)
        kwargs: dict[str, Any] = {"num_threads": nthread} if nthread else {}
        head = next((line for line in text.splitlines()[:64] if line.startswith("objective=")), "")
        soft = "multiclassova" in head and settings.predict_proba  # FIL forces softmax on one-vs-all probabilities

        def lgbm(x: np.ndarray) -> np.ndarray:
            if soft:
                return _softmax(np.asarray(lgb.predict(x, raw_score=True, **kwargs)).reshape(len(x), -1))
            return np.asarray(lgb.predict(x, **kwargs)).reshape(len(x), -1)

        def lgbm_shap(x: np.ndarray) -> np.ndarray:
            return np.asarray(lgb.predict(x, pred_contrib=True, **kwargs)).reshape(len(x), -1, features + 1)

        return Native(lgbm, lgbm_shap)
    return None


class FilModel:
    """``native``'s values run batches of ``NATIVE_FROM`` rows and more (every batch with ``engine: native``;
    None: Treelite's GTIL runs every batch); ``shap`` gives ``treeshap_output`` where the config lists it."""

    def __init__(
        self, forest: Any, settings: Any, signature: Signature, options: FilOptions, native: Predict | None,
        shap: Predict | None = None,
    ) -> None:  # fmt: skip
        self.forest = forest
        self.settings = settings
        self.signature = signature
        self.nthread = options.nthread or -1
        self.classes = classes(forest)
        self.native = native
        self.native_from = 0 if options.engine == "native" else NATIVE_FROM.get(settings.model_type, 0)
        self.shap = shap
        from treelite import gtil  # imported at load, not on each call

        self._predict = gtil.predict

    def _gtil(self, x: np.ndarray) -> np.ndarray:
        try:
            raw = self._predict(self.forest, x, nthread=self.nthread)
        except Exception as e:  # TreeliteError and friends
            raise BackendError(f"Treelite failed: {str(e).strip().splitlines()[0][:300]}") from e
        return np.asarray(raw, dtype=np.float32).reshape(len(x), -1)

    def values(self, x: np.ndarray) -> np.ndarray:
        """The forest's values for rows ``x`` (float32), before FIL's classes and columns."""
        if self.native is not None and len(x) >= self.native_from:
            return self._framework(self.native, x)
        return self._gtil(x)

    @staticmethod
    def _framework(predict: Predict, x: np.ndarray) -> np.ndarray:
        try:
            return np.asarray(predict(x), dtype=np.float32)
        except Exception as e:
            raise BackendError(f"the framework's predictor failed: {str(e).strip().splitlines()[0][:300]}") from e

    def agrees(self, rows: int = _CHECK_ROWS) -> str:
        """Why the native predictor's values are not GTIL's on test rows (normal rows, one in ten values
        missing), or "" where they are, within 1e-5."""
        assert self.native is not None
        x = check_rows(self.settings.features, rows)
        try:
            native = np.asarray(self.native(x), dtype=np.float32)
        except Exception as e:
            return f"it failed ({type(e).__name__}: {str(e).strip()[:200]})"
        reference = self._gtil(x)
        if native.shape != reference.shape:
            return f"it gives values of shape {list(native.shape)}, Treelite {list(reference.shape)}"
        worst = float(np.max(np.abs(native - reference) / (1.0 + np.abs(reference))))
        return "" if worst <= 1e-5 else f"its values differ from Treelite's by up to {worst:.3g}"

    def infer(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        return self.infer_outputs(inputs, None)

    def infer_outputs(self, inputs: Mapping[str, np.ndarray], outputs: Sequence[str] | None) -> dict[str, np.ndarray]:
        """The outputs asked for (None: every one): SHAP values, the costly ones, only where asked."""
        if self.forest is None:
            raise BackendError("the FIL model was closed; load it again")
        x = np.ascontiguousarray(inputs[INPUT], dtype=np.float32)
        out = self.values(x)
        s = self.settings
        if s.is_classifier and self.classes == 1:
            if not s.predict_proba:
                out = (out > np.float32(s.threshold)).astype(np.float32)
            elif s.answer_dims == (2,):
                out = np.concatenate([1.0 - out, out], axis=1)
        elif s.is_classifier and not s.predict_proba:
            out = out.argmax(axis=1).astype(np.float32)
        answers = {OUTPUT: out.reshape((len(x), *s.answer_dims))}
        if self.shap is not None and (outputs is None or SHAP in outputs):
            answers[SHAP] = self._framework(self.shap, x).reshape((len(x), *s.shap_answer_dims))
        return answers

    def close(self) -> None:
        self.forest = None
        self.native = self.shap = None


def check_rows(features: int, rows: int) -> np.ndarray:
    """Rows the engines are checked on: normal values, twice as wide, one in ten missing."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((rows, features)).astype(np.float32) * 2
    x[rng.random(x.shape) < 0.1] = np.nan
    return x


class FilBackend(Backend):
    name = "fil"
    Options = FilOptions
    formats = frozenset({"fil"})
    requires = ("treelite",)
    distribution = "treelite"

    def load(self, artifact: Path, signature: Signature, options: BaseModel, device: str) -> LoadedModel:
        assert isinstance(options, FilOptions)
        if device != "cpu":
            raise BackendUnavailable(f"fil predicts on cpu only here (Treelite's GTIL), not {device!r}")
        settings, data = unpack(artifact)
        native = None
        if options.engine != "treelite" or settings.shap_dims is not None:
            try:
                native = native_predictor(settings, data, options.nthread)
            except ImportError as e:
                if options.engine == "native" or settings.shap_dims is not None:
                    raise BackendUnavailable(f"the framework's predictor needs {e.name}, which is not installed") from e
            if native is None and options.engine == "native":
                raise BackendUnavailable(
                    f"model_type {settings.model_type} has no native predictor here; use engine treelite"
                )
        values = native.values if native is not None and options.engine != "treelite" else None
        shap = native.shap if native is not None and settings.shap_dims is not None else None
        model = FilModel(forest(settings, data), settings, signature, options, values, shap)
        if values is not None and options.engine == "auto":
            why = model.agrees()
            if why:
                log.warning(
                    "the framework's own predictor does not give Treelite's values for this FIL model; Treelite "
                    "runs every batch",
                    extra={"why": why, "model_type": settings.model_type},
                )
                model.native = None
        return model
