"""The fil backend's engines: XGBoost's and LightGBM's own predictors give Treelite's values (FIL's) for each
objective, and run large batches; where one does not (a categorical LightGBM model's rows that are not category
codes), Treelite runs everything, with a warning."""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from polystack.backends.fil import NATIVE_FROM, FilBackend, FilModel, FilOptions
from polystack.errors import BackendUnavailable
from polystack.formats.fil import FilSettings, pack, signature_of

FEATURES = 4


def _rows(n: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, FEATURES)).astype(np.float32)
    x[rng.random(x.shape) < 0.05] = np.nan
    return x


def _labels(x: np.ndarray, classes: int) -> np.ndarray:
    z = np.nan_to_num(x[:, 0] + 0.5 * x[:, 1])
    return np.digitize(z, np.linspace(-1, 1, classes - 1)) if classes > 1 else z * 2 + np.nan_to_num(x[:, 2])


def _xgboost(objective: str, classes: int) -> Callable[[Path], Path]:
    def save(folder: Path) -> Path:
        import xgboost as xgb

        x = _rows(400)
        params: dict[str, Any] = {"objective": objective, "max_depth": 3}
        if objective.startswith("multi"):
            params["num_class"] = classes
        label = _labels(x, classes)
        if objective == "count:poisson":
            label = np.abs(label)
        xgb.train(params, xgb.DMatrix(x, label=label), num_boost_round=6).save_model(folder / "xgboost.json")
        return folder / "xgboost.json"

    return save


def _lightgbm(objective: str, classes: int) -> Callable[[Path], Path]:
    def save(folder: Path) -> Path:
        import lightgbm as lgb

        x = _rows(400)
        params: dict[str, Any] = {"objective": objective, "verbose": -1, "num_leaves": 7}
        if objective.startswith("multiclass"):
            params["num_class"] = classes
        lgb.train(params, lgb.Dataset(x, label=_labels(x, classes)), num_boost_round=6).save_model(
            str(folder / "model.txt")
        )
        return folder / "model.txt"

    return save


CASES = {
    # (file, model_type, is_classifier, classes the answers have, predict_proba)
    "xgb-binary": (_xgboost("binary:logistic", 2), "xgboost_json", True, 1, True),
    "xgb-logitraw": (_xgboost("binary:logitraw", 2), "xgboost_json", True, 1, False),
    "xgb-regression": (_xgboost("reg:squarederror", 1), "xgboost_json", False, 1, False),
    "xgb-poisson": (_xgboost("count:poisson", 1), "xgboost_json", False, 1, False),
    "xgb-softprob": (_xgboost("multi:softprob", 3), "xgboost_json", True, 3, True),
    "xgb-softmax": (_xgboost("multi:softmax", 3), "xgboost_json", True, 3, True),
    "xgb-softmax-class": (_xgboost("multi:softmax", 3), "xgboost_json", True, 1, False),
    "lgb-binary": (_lightgbm("binary", 2), "lightgbm", True, 1, False),
    "lgb-multiclass": (_lightgbm("multiclass", 3), "lightgbm", True, 3, True),
    "lgb-ova": (_lightgbm("multiclassova", 3), "lightgbm", True, 3, True),
    "lgb-ova-class": (_lightgbm("multiclassova", 3), "lightgbm", True, 1, False),
    "lgb-regression": (_lightgbm("regression", 1), "lightgbm", False, 1, False),
}


def _load(folder: Path, file: Path, settings: FilSettings, engine: str) -> FilModel:
    artifact = pack(file, settings, folder / f"model-{engine}.zip")
    model = FilBackend().load(artifact, signature_of(settings), FilOptions(engine=engine), "cpu")  # type: ignore[arg-type]
    assert isinstance(model, FilModel)
    return model


@pytest.mark.parametrize("case", list(CASES))
def test_the_frameworks_own_predictor_answers_large_batches_as_treelite_does(tmp_path: Path, case: str) -> None:
    save, model_type, classifier, width, proba = CASES[case]
    file = save(tmp_path)
    settings = FilSettings(model_type, classifier, FEATURES, (width,), predict_proba=proba)
    auto, treelite = _load(tmp_path, file, settings, "auto"), _load(tmp_path, file, settings, "treelite")
    assert auto.native is not None and treelite.native is None
    x = _rows(max(NATIVE_FROM.values()) * 3, seed=1)
    got, want = auto.infer({"input__0": x})["output__0"], treelite.infer({"input__0": x})["output__0"]
    assert got.shape == want.shape == (len(x), *settings.answer_dims)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    native = _load(tmp_path, file, settings, "native")  # every batch, one row too
    np.testing.assert_allclose(native.infer({"input__0": x[:1]})["output__0"], want[:1], rtol=1e-5, atol=1e-6)


def test_a_categorical_lightgbm_model_is_answered_by_treelite_alone_and_says_why(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    import lightgbm as lgb

    rng = np.random.default_rng(0)
    x = rng.standard_normal((500, FEATURES)).astype(np.float32)
    x[:, 0] = rng.integers(0, 6, len(x))
    label = ((x[:, 0] % 2 == 0) ^ (x[:, 1] > 0)).astype(int)
    params = {"objective": "binary", "verbose": -1, "min_data_per_group": 5, "cat_smooth": 1}
    booster = lgb.train(params, lgb.Dataset(x, label=label, categorical_feature=[0]), num_boost_round=10)
    booster.save_model(str(tmp_path / "model.txt"))
    settings = FilSettings("lightgbm", True, FEATURES, (1,), predict_proba=True)
    with caplog.at_level(logging.WARNING, logger="polystack.backends"):
        model = _load(tmp_path, tmp_path / "model.txt", settings, "auto")
    assert model.native is None  # LightGBM reads a negative or fractional code otherwise than FIL does
    assert any("Treelite runs every batch" in r.getMessage() for r in caplog.records)
    rows = _rows(max(NATIVE_FROM.values()) * 2, seed=2)
    want = _load(tmp_path, tmp_path / "model.txt", settings, "treelite").infer({"input__0": rows})["output__0"]
    np.testing.assert_array_equal(model.infer({"input__0": rows})["output__0"], want)


def test_the_native_engine_is_refused_where_the_file_has_no_native_predictor(tmp_path: Path) -> None:
    legacy = Path(__file__).parents[1] / "server" / "fil_legacy" / "xgboost.model"
    settings = FilSettings("xgboost", True, 5, (1,), predict_proba=True)
    with pytest.raises(BackendUnavailable, match="model_type xgboost has no native predictor here"):
        _load(tmp_path, legacy, settings, "native")
    assert _load(tmp_path, legacy, settings, "auto").native is None  # Treelite alone, without a word


def test_shap_values_are_refused_for_a_file_without_its_frameworks_treeshap(tmp_path: Path) -> None:
    import treelite
    from sklearn.ensemble import RandomForestClassifier

    from polystack.errors import InvalidModelFile
    from polystack.formats.fil import load as import_fil

    x = _rows(200)
    forest = RandomForestClassifier(n_estimators=3, max_depth=3, random_state=0).fit(np.nan_to_num(x), _labels(x, 2))
    treelite.sklearn.import_model(forest).serialize(str(tmp_path / "checkpoint.tl"))
    settings = FilSettings("treelite_checkpoint", True, FEATURES, (2,), predict_proba=True, shap_dims=(2, FEATURES + 1))
    with pytest.raises(InvalidModelFile, match="a treelite_checkpoint file has none of here"):
        import_fil(pack(tmp_path / "checkpoint.tl", settings, tmp_path / "m.zip"), tmp_path)


def test_shap_values_are_computed_only_for_calls_that_ask_for_them(tmp_path: Path) -> None:
    from polystack.backends.base import CheckedModel
    from polystack.formats.fil import SHAP

    settings = FilSettings("xgboost_json", True, FEATURES, (1,), predict_proba=True, shap_dims=(FEATURES + 1,))
    model = _load(tmp_path, _xgboost("binary:logistic", 2)(tmp_path), settings, "auto")
    assert model.shap is not None
    computed = []
    shap = model.shap
    model.shap = lambda x: computed.append(len(x)) or shap(x)  # counts the calls of XGBoost's own TreeSHAP
    checked = CheckedModel(model)
    x = _rows(5, seed=3)
    assert set(checked.infer({"input__0": x}, ["output__0"])) == {"output__0"} and computed == []
    both = checked.infer({"input__0": x})
    assert computed == [5] and both[SHAP].shape == (5, FEATURES + 1)
    np.testing.assert_allclose(checked.infer({"input__0": x}, [SHAP])[SHAP], both[SHAP])
