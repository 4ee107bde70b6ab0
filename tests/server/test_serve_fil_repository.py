"""`polystack serve --model-repository DIR` with models for Triton's FIL backend (``backend: "fil"``): XGBoost,
LightGBM and Treelite files answered as FIL answers (classes by threshold, probabilities, argmax, dims of 1 left
out), checked against the frameworks' own predictions; a real server process and tritonclient (HTTP and gRPC)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from servekit import cli_server, free_port, refused_at_start
from tritonclient.utils import InferenceServerException

FEATURES = 5


def _config(model_type: str, classifier: bool, dims: int, proba: bool = False, extra: str = "") -> str:
    return f"""
backend: "fil"
max_batch_size: 1024
input [ {{ name: "input__0", data_type: TYPE_FP32, dims: [ {FEATURES} ] }} ]
output [ {{ name: "output__0", data_type: TYPE_FP32, dims: [ {dims} ] }} ]
instance_group [ {{ kind: KIND_CPU }} ]
parameters [
  {{ key: "model_type", value: {{ string_value: "{model_type}" }} }},
  {{ key: "is_classifier", value: {{ string_value: "{str(classifier).lower()}" }} }},
  {{ key: "predict_proba", value: {{ string_value: "{str(proba).lower()}" }} }}{extra}
]
dynamic_batching {{ }}
"""


def _data(rows: int = 300, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((rows, FEATURES)).astype(np.float32)
    binary = (x[:, 0] + 0.5 * x[:, 1] > 0).astype(int)
    three = binary + (x[:, 2] > 0.3).astype(int)
    return x, binary, three


def _folder(root: Path, name: str, config: str) -> Path:
    (root / name / "1").mkdir(parents=True)
    (root / name / "config.pbtxt").write_text(config)
    return root / name / "1"


def _repository(root: Path) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """FIL model folders of each kind, and what FIL answers for the test rows (the frameworks' predictions,
    post-processed as FIL post-processes them)."""
    import lightgbm as lgb
    import treelite
    import xgboost as xgb
    from sklearn.ensemble import RandomForestClassifier

    x, binary, three = _data()
    test = _data(rows=100, seed=1)[0]  # from 64 rows the frameworks' own predictors run (backends/fil.py)
    test[3, 2] = np.nan  # a missing value: each split's default direction
    clf = xgb.XGBClassifier(n_estimators=8, max_depth=3).fit(x, binary)
    clf.save_model(_folder(root, "xgb_class", _config("xgboost_json", True, 1, extra=_THRESHOLD)) / "xgboost.json")
    clf.save_model(_folder(root, "xgb_proba2", _config("xgboost_json", True, 2, proba=True)) / "xgboost.json")
    clf.save_model(_folder(root, "xgb_proba1", _config("xgboost_json", True, 1, proba=True)) / "xgboost.json")
    reg = xgb.XGBRegressor(n_estimators=8, max_depth=3).fit(x, x[:, 0] * 2 + x[:, 3])
    reg.save_model(_folder(root, "xgb_reg", _config("xgboost_ubj", False, 1)) / "xgboost.ubj")
    booster = lgb.LGBMClassifier(n_estimators=8, num_leaves=7, verbose=-1).fit(x, three).booster_
    booster.save_model(str(_folder(root, "lgb_class", _config("lightgbm", True, 1)) / "model.txt"))
    booster.save_model(str(_folder(root, "lgb_proba", _config("lightgbm", True, 3, proba=True)) / "model.txt"))
    forest = RandomForestClassifier(n_estimators=5, max_depth=4, random_state=0).fit(x, binary)
    checkpoint = _folder(root, "rf", _config("treelite_checkpoint", True, 2, proba=True)) / "checkpoint.tl"
    treelite.sklearn.import_model(forest).serialize(str(checkpoint))
    p = clf.predict_proba(test)
    lgb_p = booster.predict(test)
    expected = {
        "xgb_class": (p[:, 1] > 0.3).astype(np.float32),  # strictly over the threshold: 1
        "xgb_proba2": p.astype(np.float32),
        "xgb_proba1": p[:, 1].astype(np.float32),  # the positive class's alone, dims [1] left out
        "xgb_reg": reg.predict(test).astype(np.float32),
        "lgb_class": lgb_p.argmax(axis=1).astype(np.float32),
        "lgb_proba": lgb_p.astype(np.float32),
        "rf": forest.predict_proba(test).astype(np.float32),
    }
    return expected, test


_THRESHOLD = ',\n  { key: "threshold", value: { string_value: "0.3" } }'


def test_fil_models_answer_as_tritons_fil_backend_does_over_http_and_grpc(tmp_path: Path) -> None:
    expected, test = _repository(tmp_path / "models")
    port, grpc_port = free_port(), free_port()
    args = ["--model-repository", str(tmp_path / "models"), "--grpc-port", str(grpc_port), "--allow-model-control"]
    with cli_server(tmp_path / "home", args, port, tmp_path / "log"):
        http = httpclient.InferenceServerClient(f"127.0.0.1:{port}")
        grpc = grpcclient.InferenceServerClient(f"127.0.0.1:{grpc_port}")
        for name, want in expected.items():
            i = httpclient.InferInput("input__0", list(test.shape), "FP32")
            i.set_data_from_numpy(test)
            got = http.infer(name, [i]).as_numpy("output__0")
            assert got.shape == want.shape and got.dtype == np.float32, (name, got.shape, want.shape)
            if name == "rf":  # scikit-learn sends a missing value its own way (not the default direction)
                got, want = np.delete(got, 3, axis=0), np.delete(want, 3, axis=0)
            np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5, err_msg=name)
            g = grpcclient.InferInput("input__0", [1, FEATURES], "FP32")
            g.set_data_from_numpy(test[:1])
            np.testing.assert_allclose(grpc.infer(name, [g]).as_numpy("output__0"), want[:1], rtol=1e-5, atol=1e-5)
        meta = http.get_model_metadata("xgb_class")
        assert meta["platform"] == "fil" and meta["outputs"][0]["shape"] == [-1, 1]  # the config's, as Triton's
        assert list(grpc.get_model_metadata("xgb_class").outputs[0].shape) == [-1, 1]
        config = http.get_model_config("xgb_class")
        assert config["backend"] == "fil" and config["output"][0]["dims"] == [1]  # as written; answers are [batch]
        assert config["parameters"]["threshold"] == {"string_value": "0.3"}
        # a load's config that changes what the model answers is refused; its threads are taken
        with pytest.raises(InferenceServerException, match="change predict_proba"):
            http.load_model("xgb_class", config=_json_config(config, predict_proba="true"))
        http.load_model("xgb_class", config=_json_config(config, cpu_nthread="1"))
        i = httpclient.InferInput("input__0", [2, FEATURES], "FP32")
        i.set_data_from_numpy(test[:2])
        np.testing.assert_allclose(http.infer("xgb_class", [i]).as_numpy("output__0"), expected["xgb_class"][:2])
        with pytest.raises(
            InferenceServerException, match=r"unexpected shape for input .input__0.*Expected \[-1,5\], got \[2,4\]"
        ):  # 4 features
            wrong = httpclient.InferInput("input__0", [2, 4], "FP32")
            wrong.set_data_from_numpy(test[:2, :4].copy())
            http.infer("xgb_class", [wrong])


def _json_config(config: dict[str, object], **changes: str) -> str:
    import json

    parameters = dict(config["parameters"])  # type: ignore[call-overload]
    parameters.update({k: {"string_value": v} for k, v in changes.items()})
    return json.dumps({**config, "parameters": parameters})


@pytest.mark.parametrize(
    ("config", "words"),
    [
        (_config("xgboost_json", True, 1).replace('"true"', '"True"', 1), "Expected 'true' or 'false' for parameter 'is_classifier', got: 'True'"),
        (_config("xgboost_json", True, 1).replace("is_classifier", "other_flag"), "Required parameter is_classifier not found in config"),
        (_config("xgb_json", True, 1), "xgb_json not recognized as a valid serialization format."),
        (_config("xgboost_json", True, 1, extra=',\n { key: "threshold", value: { string_value: "high" } }'), "Bad input for parameter threshold"),
        (_config("xgboost_json", True, 3, proba=True), "a binary classifier's probabilities: [1] (the positive class) or [2]"),
        (_config("xgboost_json", True, 1).replace(f"dims: [ {FEATURES} ]", "dims: [ 7 ]"), "the model reads 5 features"),
        (_config("xgboost_ubj", True, 1), "it is XGBoost JSON: set model_type xgboost_json"),
        (_config("lightgbm", True, 1), "Triton's FIL backend reads model.txt for model_type lightgbm"),
        (
            _config("xgboost_json", True, 1).replace(
                "output [", 'output [ { name: "treeshap_output", data_type: TYPE_FP32, dims: [ 7 ] },'
            ),
            "the model's SHAP values are [6] (a value per feature and the bias)",
        ),
        (_config("xgboost_json", True, 1).replace("max_batch_size: 1024", "max_batch_size: 0"), "set max_batch_size 1 or more"),
        (_config("xgboost_json", True, 1, extra=',\n { key: "cpu_nthread", value: { } }'), "'cpu_nthread' has no string_value"),
    ],
    ids=[
        "switch-case", "no-classifier", "model-type", "threshold", "proba-width", "features", "wrong-kind", "no-file",
        "shap", "no-batch", "no-string",
    ],
)  # fmt: skip
def test_fil_configs_that_cannot_answer_right_exit_2_in_fils_words(tmp_path: Path, config: str, words: str) -> None:
    import xgboost as xgb

    x, binary, _ = _data()
    folder = _folder(tmp_path / "models", "m", config)
    xgb.XGBClassifier(n_estimators=2, max_depth=2).fit(x, binary).save_model(folder / "xgboost.json")
    if "ubj" in config:
        (folder / "xgboost.json").rename(folder / "xgboost.ubj")
    line = refused_at_start(tmp_path, ["--model-repository", str(tmp_path / "models")])
    assert "'m'" in line and words in line, line


def test_xgboosts_legacy_binary_format_is_fils_default_model_type(tmp_path: Path) -> None:
    import shutil

    fixture = Path(__file__).parent / "fil_legacy"  # written by XGBoost 1.7.6: its README says how
    config = _config("xgboost", True, 1, proba=True).replace(
        '  { key: "model_type", value: { string_value: "xgboost" } },\n', ""
    )
    shutil.copy(fixture / "xgboost.model", _folder(tmp_path / "models", "legacy", config) / "xgboost.model")
    expected = np.load(fixture / "expected.npz")
    port = free_port()
    args = ["--model-repository", str(tmp_path / "models"), "--grpc-port", "-1"]
    with cli_server(tmp_path / "home", args, port, tmp_path / "log"):
        client = httpclient.InferenceServerClient(f"127.0.0.1:{port}")
        i = httpclient.InferInput("input__0", list(expected["rows"].shape), "FP32")
        i.set_data_from_numpy(expected["rows"])
        got = client.infer("legacy", [i]).as_numpy("output__0")
        np.testing.assert_allclose(got, expected["probability"], rtol=1e-5, atol=1e-6)


ENSEMBLE = """
platform: "ensemble"
max_batch_size: 1024
input [ { name: "ROWS", data_type: TYPE_FP32, dims: [ 5 ] } ]
output [ { name: "PRED", data_type: TYPE_FP32, dims: [ 1 ] } ]
ensemble_scheduling { step [
  { model_name: "reg", model_version: -1, input_map { key: "input__0" value: "ROWS" } output_map { key: "output__0" value: "PRED" } }
] }
"""


def test_a_fil_model_whose_output_dims_are_1_serves_in_an_ensemble_as_triton_checks_it(tmp_path: Path) -> None:
    import xgboost as xgb

    x, _, _ = _data()
    reg = xgb.XGBRegressor(n_estimators=4, max_depth=3).fit(x, x[:, 0] - x[:, 1])
    reg.save_model(_folder(tmp_path / "models", "reg", _config("xgboost_json", False, 1)) / "xgboost.json")
    _folder(tmp_path / "models", "ens", ENSEMBLE)
    port = free_port()
    args = ["--model-repository", str(tmp_path / "models"), "--grpc-port", "-1"]
    with cli_server(tmp_path / "home", args, port, tmp_path / "log"):
        client = httpclient.InferenceServerClient(f"127.0.0.1:{port}")
        i = httpclient.InferInput("ROWS", [3, FEATURES], "FP32")
        i.set_data_from_numpy(x[:3])
        got = client.infer("ens", [i]).as_numpy("PRED")  # the ensemble's dims [1] as FIL's config's: [batch] back
        np.testing.assert_allclose(got, reg.predict(x[:3]), rtol=1e-5, atol=1e-6)


def test_a_load_with_files_takes_a_fil_models_file_with_its_config(tmp_path: Path) -> None:
    import json

    import xgboost as xgb

    x, binary, _ = _data()
    clf = xgb.XGBClassifier(n_estimators=4, max_depth=3).fit(x, binary)
    clf.save_model(tmp_path / "xgboost.json")
    config = {
        "backend": "fil", "max_batch_size": 64,
        "input": [{"name": "input__0", "data_type": "TYPE_FP32", "dims": [FEATURES]}],
        "output": [{"name": "output__0", "data_type": "TYPE_FP32", "dims": [2]}],
        "parameters": {k: {"string_value": v} for k, v in
                       {"model_type": "xgboost_json", "is_classifier": "true", "predict_proba": "true"}.items()},
    }  # fmt: skip
    (tmp_path / "empty").mkdir()
    port = free_port()
    args = ["--model-repository", str(tmp_path / "empty"), "--model-control-mode", "explicit", "--grpc-port", "-1"]
    with cli_server(tmp_path / "home", args, port, tmp_path / "log"):
        client = httpclient.InferenceServerClient(f"127.0.0.1:{port}")
        files = {"file:1/xgboost.json": (tmp_path / "xgboost.json").read_bytes()}
        client.load_model("fil", config=json.dumps(config), files=files)
        i = httpclient.InferInput("input__0", [4, FEATURES], "FP32")
        i.set_data_from_numpy(x[:4])
        np.testing.assert_allclose(client.infer("fil", [i]).as_numpy("output__0"), clf.predict_proba(x[:4]), rtol=1e-5)
        assert client.get_model_config("fil")["platform"] == ""  # as Triton shows a backend's model


def test_an_xgboost_json_treelite_cannot_read_says_why_without_a_wrong_hint(tmp_path: Path) -> None:
    folder = _folder(tmp_path / "models", "m", _config("xgboost_json", True, 1))
    (folder / "xgboost.json").write_text('{"learner": {"attributes": {}, "feature_names": []')  # cut short
    line = refused_at_start(tmp_path, ["--model-repository", str(tmp_path / "models")])
    assert "Treelite cannot read it as model_type xgboost_json" in line and "set model_type" not in line, line


def test_fil_numbers_without_a_number_take_their_default_as_fil_does(tmp_path: Path) -> None:
    from polystack.server import fil_config

    answers, threads = fil_config.read({"is_classifier": "false", "cpu_nthread": "all", "chunk_size": "auto"})
    assert threads is None and answers["threshold"] == 0.5  # FIL's defaults: every core, and a regressor's 0.5
    answers, threads = fil_config.read({"is_classifier": "true", "threshold": "0.3abc", "cpu_nthread": "2 cores"})
    assert answers["threshold"] == 0.3 and threads == 2  # a C++ stream's leading number


def _shap_config(model_type: str, classes: int, dims: str) -> str:
    """A classifier's config (a binary one's class, a multi-class one's probabilities) listing FIL's SHAP output."""
    return _config(model_type, True, classes if classes > 1 else 1, proba=classes > 1).replace(
        "output [", f'output [ {{ name: "treeshap_output", data_type: TYPE_FP32, dims: [ {dims} ] }},'
    )


def test_fils_shap_values_are_treeshap_in_margin_space_with_the_bias_last(tmp_path: Path) -> None:
    import lightgbm as lgb
    import xgboost as xgb

    x, binary, three = _data()
    root = tmp_path / "models"
    clf = xgb.XGBClassifier(n_estimators=6, max_depth=3).fit(x, binary)
    clf.save_model(_folder(root, "xgb", _shap_config("xgboost_json", 1, str(FEATURES + 1))) / "xgboost.json")
    multi = xgb.XGBClassifier(n_estimators=6, max_depth=3).fit(x, three)
    multi.save_model(_folder(root, "xgb3", _shap_config("xgboost_json", 3, f"3, {FEATURES + 1}")) / "xgboost.json")
    booster = lgb.LGBMClassifier(n_estimators=6, num_leaves=7, verbose=-1).fit(x, three).booster_
    booster.save_model(str(_folder(root, "lgb3", _shap_config("lightgbm", 3, f"3, {FEATURES + 1}")) / "model.txt"))
    rows = _data(rows=20, seed=3)[0]
    margins = {
        "xgb": clf.get_booster().predict(xgb.DMatrix(rows), output_margin=True),
        "xgb3": multi.get_booster().predict(xgb.DMatrix(rows), output_margin=True),
        "lgb3": booster.predict(rows, raw_score=True),
    }
    port = free_port()
    with cli_server(tmp_path / "home", ["--model-repository", str(root), "--grpc-port", "-1"], port, tmp_path / "log"):
        client = httpclient.InferenceServerClient(f"127.0.0.1:{port}")
        for name, margin in margins.items():
            i = httpclient.InferInput("input__0", list(rows.shape), "FP32")
            i.set_data_from_numpy(rows)
            answer = client.infer(name, [i])
            shap = answer.as_numpy("treeshap_output")
            width = () if name == "xgb" else (3,)
            assert shap.shape == (len(rows), *width, FEATURES + 1), (name, shap.shape)
            # each row's (and class's) values and bias add up to its margin, as FIL's tests check them
            np.testing.assert_allclose(shap.sum(axis=-1), margin, rtol=1e-4, atol=1e-4, err_msg=name)
            assert answer.as_numpy("output__0").shape[0] == len(rows)
        config = client.get_model_config("xgb3")
        assert [o["dims"] for o in config["output"] if o["name"] == "treeshap_output"] == [[3, FEATURES + 1]]
