"""`polystack serve --model-repository DIR`: a Triton model repository served as it is, by a real server
process and tritonclient; and the repositories it cannot serve, refused at start with one line."""

from __future__ import annotations

import concurrent.futures
import contextlib
import json
import logging
import re
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from servekit import batch_of_scalars, caught_logs, cli_server, free_port, refused_at_start, start, until
from tritonclient.utils import InferenceServerException

from polystack.errors import InvalidRequest
from polystack.examples import mlp_onnx
from polystack.server import model_repository
from polystack.store import Store

MLP_CONFIG = """
name: "mlp"
platform: "onnxruntime_onnx"
max_batch_size: 8
version_policy: { all { } }
input [ { name: "x", data_type: TYPE_FP32, dims: [ 16 ] } ]
output [ { name: "y", data_type: TYPE_FP32, dims: [ 4 ], label_filename: "labels.txt" } ]
dynamic_batching { max_queue_delay_microseconds: 100 }
"""


def repository(root: Path) -> Path:
    """A Triton repository: ``mlp`` (config.pbtxt, labels, versions 1 and 3, all served, beside folders
    Triton ignores) and ``plain`` (no config; versions 2 and 5, the latest served)."""
    mlp = root / "mlp"
    for version, seed in ((1, 1), (3, 3)):
        (mlp / str(version)).mkdir(parents=True)
        mlp_onnx(mlp / str(version) / "model.onnx", seed=seed)
    (mlp / "0").mkdir()  # a leading zero: not a version
    (mlp / "notes").mkdir()
    (mlp / "config.pbtxt").write_text(MLP_CONFIG)
    (mlp / "labels.txt").write_text("north\neast\nsouth\nwest\n")
    for version, seed in ((2, 2), (5, 5)):
        (root / "plain" / str(version)).mkdir(parents=True)
        mlp_onnx(root / "plain" / str(version) / "model.onnx", seed=seed)
    return root


def expected(model: Path, x: np.ndarray) -> np.ndarray:
    return ort.InferenceSession(str(model), providers=["CPUExecutionProvider"]).run(["y"], {"x": x})[0]


def test_a_triton_repository_is_served_as_it_is(tmp_path: Path) -> None:
    repo = repository(tmp_path / "models")
    home, port = tmp_path / "home", free_port()
    x = np.random.default_rng(0).standard_normal((2, 16)).astype(np.float32)
    args = ["--model-repository", str(repo), "--grpc-port", "-1", "--allow-model-control"]
    with cli_server(home, args, port, tmp_path / "serve.log"):
        client = httpclient.InferenceServerClient(f"127.0.0.1:{port}")
        # the versions each policy picked, by the numbers of their folders
        assert client.is_model_ready("mlp", "1") and client.is_model_ready("mlp", "3")
        assert client.is_model_ready("plain", "5") and not client.is_model_ready("plain", "2")
        assert not client.is_model_ready("mlp", "0")
        for version in ("1", "3"):
            i = httpclient.InferInput("x", [2, 16], "FP32")
            i.set_data_from_numpy(x)
            got = client.infer("mlp", [i], model_version=version).as_numpy("y")
            np.testing.assert_allclose(got, expected(repo / "mlp" / version / "model.onnx", x), rtol=1e-5, atol=1e-6)
        i = httpclient.InferInput("x", [2, 16], "FP32")
        i.set_data_from_numpy(x)
        got = client.infer("plain", [i]).as_numpy("y")
        np.testing.assert_allclose(got, expected(repo / "plain" / "5" / "model.onnx", x), rtol=1e-5, atol=1e-6)
        with pytest.raises(InferenceServerException) as unknown:  # told where the names served are, not the store
            client.infer("plane", [i])
        assert unknown.value.message() == (
            "Request for unknown model: 'plane' is not found; the statistics (GET /v2/models/stats; gRPC "
            "ModelStatistics) list the models served from the model repository"
        )
        # the folder's config.pbtxt is the model's config: batching, and labels from the model folder
        config = client.get_model_config("mlp", "3")
        assert config["max_batch_size"] == 8 and config["dynamic_batching"]["max_queue_delay_microseconds"] == 100
        assert config["output"][0]["label_filename"] == "labels.txt"
        out = httpclient.InferRequestedOutput("y", class_count=1)
        top = client.infer("mlp", [i], model_version="1", outputs=[out]).as_numpy("y")
        best = int(np.argmax(expected(repo / "mlp" / "1" / "model.onnx", x)[0]))
        assert top[0][0].decode().endswith(":" + ["north", "east", "south", "west"][best])
        # a load by name loads what the folder's version policy picked, as Triton reloads it
        client.unload_model("mlp")
        assert not client.is_model_ready("mlp", "1")
        client.load_model("mlp")
        assert client.is_model_ready("mlp", "1") and client.is_model_ready("mlp", "3")
        client.load_model("mlp")  # loaded as served: both stay
        assert client.is_model_ready("mlp", "1") and client.is_model_ready("mlp", "3")
    store = Store.at(home)
    try:
        assert [(r.name, r.version) for r in store.models.list()] == [("mlp", 1), ("mlp", 3), ("plain", 5)]
    finally:
        store.close()
    # served again from the same repository: the same bytes are not registered twice
    with cli_server(home, args, port, tmp_path / "serve2.log"):
        pass
    store = Store.at(home)
    try:
        assert len(store.models.list()) == 3
    finally:
        store.close()


def test_a_model_folder_named_as_tritons_qa_names_its_models_is_served_and_stepped_to(tmp_path: Path) -> None:
    """Triton serves any folder name; its own QA repositories have ``nop_TYPE_FP32_-1,-1`` (helper-180:
    ``L0_infer_zero``, whose ensembles step to them). polystack refused the name, and so the whole start."""
    repo, name = tmp_path / "models", "nop_TYPE_FP32_-1,+1"
    (repo / name / "1").mkdir(parents=True)
    mlp_onnx(repo / name / "1" / "model.onnx")
    (repo / "pipe" / "1").mkdir(parents=True)
    (repo / "pipe" / "config.pbtxt").write_text(
        'platform: "ensemble"\nmax_batch_size: 4\ninput [ { name: "x", data_type: TYPE_FP32, dims: [ 16 ] } ]\n'
        'output [ { name: "y", data_type: TYPE_FP32, dims: [ 4 ] } ]\nensemble_scheduling { step [ { model_name: '
        f'"{name}" model_version: -1 input_map {{ key: "x" value: "x" }} output_map {{ key: "y" value: "y" }} }} ] }}\n'
    )
    port, grpc_port = free_port(), free_port()
    x = np.random.default_rng(0).standard_normal((1, 16)).astype(np.float32)
    want = expected(repo / name / "1" / "model.onnx", x)
    with cli_server(tmp_path / "home", ["--model-repository", str(repo), "--grpc-port", str(grpc_port)], port,
                    tmp_path / "serve.log"):  # fmt: skip
        for client, url in ((httpclient, f"127.0.0.1:{port}"), (grpcclient, f"127.0.0.1:{grpc_port}")):
            with client.InferenceServerClient(url) as c:  # tritonclient's HTTP client sends the name as nop_..%2C..
                assert c.is_model_ready(name)
                for model in (name, "pipe"):
                    i = client.InferInput("x", [1, 16], "FP32")
                    i.set_data_from_numpy(x)
                    np.testing.assert_allclose(c.infer(model, [i]).as_numpy("y"), want, rtol=1e-5, atol=1e-6)


def test_a_model_an_ensemble_runs_loads_once_at_start(tmp_path: Path) -> None:
    """helper-227 (Triton's Data_Pipelines tutorial): a model read after an ensemble that runs it (a name sorted
    after the ensemble's) was read twice at start, and so loaded twice, each load logged."""
    repo = tmp_path / "models"
    (repo / "m" / "1").mkdir(parents=True)
    mlp_onnx(repo / "m" / "1" / "model.onnx")
    (repo / "a_pipe" / "1").mkdir(parents=True)
    (repo / "a_pipe" / "config.pbtxt").write_text(
        'platform: "ensemble"\nmax_batch_size: 4\ninput [ { name: "x", data_type: TYPE_FP32, dims: [ 16 ] } ]\n'
        'output [ { name: "y", data_type: TYPE_FP32, dims: [ 4 ] } ]\nensemble_scheduling { step [ { model_name: '
        '"m" model_version: -1 input_map { key: "x" value: "x" } output_map { key: "y" value: "y" } } ] }\n'
    )
    port = free_port()
    args = ["--model-repository", str(repo), "--grpc-port", "-1"]
    with cli_server(tmp_path / "home", args, port, tmp_path / "serve.log"), httpclient.InferenceServerClient(
        f"127.0.0.1:{port}"
    ) as c:
        assert c.is_model_ready("a_pipe") and c.is_model_ready("m")
    lines = (tmp_path / "serve.log").read_text().splitlines()
    loaded = [json.loads(line) for line in lines if '"model loaded"' in line]
    assert sorted(each["model"] for each in loaded) == ["a_pipe", "m"], loaded


def _versionless(root: Path, config: str) -> Path:
    """Model folder ``m`` holding ``config`` and no version folder."""
    (root / "m").mkdir(parents=True)
    (root / "m" / "config.pbtxt").write_text(config)
    return root


def _model(root: Path, name: str, version: str = "1", config: str | None = None, file: str = "model.onnx") -> Path:
    folder = root / name
    (folder / version).mkdir(parents=True, exist_ok=True)
    if file == "model.onnx":
        mlp_onnx(folder / version / file)
    else:
        (folder / version / file).write_bytes(b"not onnx")
    if config is not None:
        (folder / "config.pbtxt").write_text(config)
    return root


@pytest.mark.parametrize(
    ("make", "words"),
    [
        (lambda r: r / "missing", "not a folder"),
        (lambda r: (r / "m" / "v1").mkdir(parents=True) or r,  # Triton's words first (its L0_model_config no_version)
         "model 'm': Invalid model name: Could not determine backend for model 'm' with no backend in model "
         "configuration. Expected model name of the form 'model.<backend_name>'. it has no version folder"),
        (lambda r: _versionless(r, 'platform: "onnxruntime_onnx"'),
         "model 'm': it has no version folder"),  # a platform given: polystack's words alone
        (lambda r: _model(r, "m", file="model.pt"), "start the server with --allow-torchscript-models"),
        (lambda r: _model(r, "m", file="model.plan"), "model.plan (TensorRT), which polystack does not serve"),
        # a Python model whose config asks for another runtime: it is served, as the config is told to say
        (
            lambda r: _model(r, "m", config='platform: "onnxruntime_onnx"', file="model.py"),
            "holds model.py, a model for Triton's Python backend; to serve that, leave platform and backend out",
        ),
        (lambda r: _model(r, "m", config='platform: "ensemble"'),  # Triton's words first (ValidateModelConfig)
         "model 'm': ensemble scheduling must be set for ensemble m whose platform is ensemble"),
        (lambda r: _model(r, "m", config='platform: "tensorrt_plan"'), "asks for 'tensorrt_plan', which polystack does not run"),
        # whatever file the config names, and with an ONNX Runtime platform beside another backend (were served)
        (
            lambda r: _model(r, "m", config='platform: "tensorrt_plan" default_model_filename: "model.onnx"'),
            "asks for 'tensorrt_plan', which polystack does not run",
        ),
        (
            lambda r: _model(r, "m", config='platform: "onnxruntime_onnx" backend: "tensorflow"'),
            "asks for 'tensorflow', which polystack does not run",
        ),
        (
            lambda r: _model(r, "m", config='platform: "onnxruntime_onnx" backend: "pytorch"'),
            "platform 'onnxruntime_onnx' and backend 'pytorch' name different runtimes",
        ),
        (lambda r: _model(r, "m", config='{"platform": ["onnxruntime_onnx"]}'), "platform and backend must be strings"),
        (
            lambda r: _model(r, "m", config="version_policy: { specific { versions: [ 7 ] } }"),
            "asks for versions [7], but the model's versions are [1]",
        ),
        (
            lambda r: _model(r, "m", config='output [ { name: "y", label_filename: "labels.txt" } ]'),
            "names label file 'labels.txt', which is not in",
        ),
        (lambda r: _model(r, "m", config="max_batch_sise: 8"), "config.pbtxt: not a Triton config.pbtxt"),
        (lambda r: _model(r, "bad:name"), "model name 'bad:name' is not allowed"),
        (  # Triton's words first (helper-195's left-out refusal, checked here beside tritonserver 2.51)
            lambda r: _model(r, "m", config='name: "other"'),
            "unexpected directory name 'm' for model 'other', directory name must equal model name: its config.pbtxt "
            "names model 'other'",
        ),
        (
            lambda r: _model(r, "m", config='{"version_policy": {"latest": {"num_versions": 1e400}}}'),
            "num_versions must be whole numbers",
        ),
        (
            lambda r: _model(r, "m", config='{"version_policy": {"specific": {"versions": [1.5]}}}'),
            "specific versions must be whole numbers",
        ),
        (lambda r: (_model(r, "m"), (r / "m" / "config.pbtxt").mkdir())[0], "its config.pbtxt is not a file"),
        (
            lambda r: _model(r, "m", config='default_model_filename: "../m.onnx"'),
            "must name a file in the version folder",
        ),
    ],
    ids=[
        "not-a-folder", "no-version", "no-version-with-platform", "torchscript-unasked", "tensorrt",
        "python-other-platform", "ensemble", "other-platform",
        "other-platform-file",
        "other-backend", "torchscript-mixed", "platform-list", "policy-version",
        "labels-missing", "config-typo", "bad-name", "other-name", "huge-count", "fraction", "config-folder",
        "file-outside",
    ],
)
def test_a_repository_polystack_cannot_serve_is_refused_naming_the_model(
    tmp_path: Path, make: Callable[[Path], Path], words: str
) -> None:
    (tmp_path / "models").mkdir()
    root = make(tmp_path / "models")
    store = Store.at(tmp_path / "home")
    try:
        with pytest.raises(InvalidRequest) as e:
            model_repository.register(store, root, [])
        assert e.value.message.startswith(f"--model-repository {root}") and words in e.value.message, e.value.message
        assert store.models.list() == []  # refused before anything was registered
    finally:
        store.close()


def test_a_repository_that_cannot_be_served_exits_2_with_one_line(tmp_path: Path) -> None:
    root = _model(tmp_path / "models", "m", file="model.plan")
    line = refused_at_start(tmp_path, ["--model-repository", str(root)])
    assert f"--model-repository {root}: model 'm': " in line and "TensorRT" in line, line


def test_a_folder_config_the_model_does_not_fit_is_named_as_the_repository_file(tmp_path: Path) -> None:
    root = _model(tmp_path / "models", "m", config='input [ { name: "x", data_type: TYPE_FP32, dims: [ 8 ] } ]')
    line = refused_at_start(tmp_path, ["--model-repository", str(root)])
    assert line.startswith(f"error: failed to load 'm:1': the config from --model-repository {root}/m/config.pbtxt: "), line
    store = Store.at(tmp_path / "home")
    try:
        assert store.models.list() == []  # a start that failed takes back what it registered
    finally:
        store.close()


def test_a_config_listing_its_tensors_without_max_batch_size_is_not_batched_as_in_triton(tmp_path: Path) -> None:
    """Dims without the batch dimension need max_batch_size; left out, it is 0 (Triton does not auto-complete
    a config listing inputs and outputs), and the dims are refused as Triton refuses them: polystack had
    chosen a max_batch_size of its own and served the model batched."""
    config = (
        'input [ { name: "x", data_type: TYPE_FP32, dims: [ 16 ] } ]\n'
        'output [ { name: "y", data_type: TYPE_FP32, dims: [ 4 ] } ]\ndynamic_batching { }\n'
    )
    root = _model(tmp_path / "models", "m", config=config)
    line = refused_at_start(tmp_path, ["--model-repository", str(root)])
    assert "input[0] (x) has dims [16], but the model's are [-1, 16] with max_batch_size 0" in line, line


def test_an_output_the_config_leaves_out_stops_no_batch_as_in_tritons_onnx_runtime_backend(tmp_path: Path) -> None:
    """A model with an auxiliary output of fixed shape [1, 1] beside its batched one, whose config lists only the
    batched one with max_batch_size 8: Triton's ONNX Runtime backend checks the outputs the config lists and serves
    it batched; polystack refused it, "takes no batch dimension on every input" (helper-269)."""
    import onnx
    from onnx import TensorProto, helper

    folder = tmp_path / "models" / "m"
    (folder / "1").mkdir(parents=True)
    graph = helper.make_graph(
        [helper.make_node("Neg", ["X"], ["Y"]), helper.make_node("ReduceSum", ["X"], ["TOT"], keepdims=1)], "aux",
        [helper.make_tensor_value_info("X", TensorProto.FLOAT, ["b", 4])],
        [helper.make_tensor_value_info("Y", TensorProto.FLOAT, ["b", 4]),
         helper.make_tensor_value_info("TOT", TensorProto.FLOAT, [1, 1])],
    )  # fmt: skip
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(folder / "1" / "model.onnx"))
    (folder / "config.pbtxt").write_text(
        'backend: "onnxruntime"\nmax_batch_size: 8\ndynamic_batching { max_queue_delay_microseconds: 20000 }\n'
        'input [ { name: "X", data_type: TYPE_FP32, dims: [ 4 ] } ]\n'
        'output [ { name: "Y", data_type: TYPE_FP32, dims: [ 4 ] } ]\n'
    )
    port = free_port()
    with cli_server(tmp_path / "home", ["--model-repository", str(tmp_path / "models"), "--grpc-port", "-1"], port,
                    tmp_path / "serve.log"):  # fmt: skip
        def one(i: int) -> tuple[np.ndarray, list[str]]:
            with httpclient.InferenceServerClient(f"127.0.0.1:{port}") as client:
                x = httpclient.InferInput("X", [1, 4], "FP32")
                x.set_data_from_numpy(np.full((1, 4), i, np.float32))
                result = client.infer("m", [x])
                return result.as_numpy("Y"), [o["name"] for o in result.get_response()["outputs"]]

        with concurrent.futures.ThreadPoolExecutor(4) as pool:
            answers = list(pool.map(one, range(4)))
        for i, (y, names) in enumerate(answers):
            np.testing.assert_array_equal(y, np.full((1, 4), -i, np.float32))
            assert names == ["Y"]  # the output the config leaves out is never answered
        with httpclient.InferenceServerClient(f"127.0.0.1:{port}") as client:
            stats = client.get_inference_statistics("m")["model_stats"][0]
            assert stats["inference_count"] == 4 and stats["execution_count"] < 4  # batched together


def test_a_version_the_store_holds_with_other_bytes_is_refused_not_replaced(tmp_path: Path) -> None:
    home = tmp_path / "home"
    other = mlp_onnx(tmp_path / "other.onnx", seed=9)
    subprocess.run([sys.executable, "-m", "polystack", "--home", str(home), "register", str(other), "--name", "m"],
                   check=True, capture_output=True)  # fmt: skip
    root = _model(tmp_path / "models", "m", version="2", config="version_policy: { all { } }")
    _model(root, "m", version="1")
    line = refused_at_start(tmp_path, ["--model-repository", str(root)])
    assert "m:1 is already in the store with other bytes" in line and "polystack remove m:1" in line, line
    store = Store.at(home)
    try:
        assert [r.source_filename for r in store.models.list("m")] == ["other.onnx"]  # left as it was
    finally:
        store.close()


def test_a_repository_model_is_served_one_way(tmp_path: Path) -> None:
    root = _model(tmp_path / "models", "m")
    twin = _model(tmp_path / "more", "m")
    good = tmp_path / "good.json"
    good.write_text("{}")
    for args, words in (
        (["--model-repository", str(root), "--model-repository", str(twin)], "keep it in one"),
        (["m", "--model-repository", str(root)], "named on the command line too"),
        (["--model-repository", str(root), "--model-config", f"m={good}"], "drop --model-config m"),
    ):
        assert words in refused_at_start(tmp_path, args)


def test_the_folders_label_files_are_the_labels_even_for_bytes_registered_before(tmp_path: Path) -> None:
    root = repository(tmp_path / "models")
    store = Store.at(tmp_path / "home")
    try:
        model_repository.register(store, root, [])
        assert store.get("mlp:3").settings["labels"] == {"y": ["north", "east", "south", "west"]}
        (root / "mlp" / "config.pbtxt").write_text(MLP_CONFIG.replace(', label_filename: "labels.txt"', ""))
        model_repository.register(store, root, [])  # the same bytes, the label file no longer named
        assert not store.get("mlp:3").settings["labels"]
    finally:
        store.close()


def test_versions_onnx_external_data_and_policies_as_triton_reads_them(tmp_path: Path) -> None:
    import onnx

    root = tmp_path / "models"
    big = root / "big" / "1000000000000000000"  # 19 digits: still a version
    big.mkdir(parents=True)
    model = onnx.load(str(mlp_onnx(tmp_path / "m.onnx")))
    onnx.save_model(model, str(big / "model.onnx"), save_as_external_data=True, location="weights.bin", size_threshold=0)
    assert (big / "weights.bin").stat().st_size > 0
    _model(root, "some", version="1", config="version_policy: { specific { versions: [ 1, 2 ] } }")
    # Triton's folder form of an ONNX model: 1/model.onnx/ holding model.onnx and its external data (was
    # refused, "is a folder", and with it the whole start); without model.onnx in it, refused saying so
    (root / "folded" / "1" / "model.onnx").mkdir(parents=True)
    onnx.save_model(
        onnx.load(str(tmp_path / "m.onnx")), str(root / "folded" / "1" / "model.onnx" / "model.onnx"),
        save_as_external_data=True,
        location="weights.bin", size_threshold=0,
    )  # fmt: skip
    store = Store.at(tmp_path / "home")
    try:
        with caught_logs("polystack.server", logging.WARNING) as records:
            served = {m.name: m.versions for m in model_repository.register(store, root, [])}
        assert served == {"big": (10**18,), "folded": (1,), "some": (1,)}  # version 2 has no folder: the others are
        # and the warning names the model (helper-271: a repository's warnings could not be told apart)
        [warned] = [r for r in records if "names versions it does not have" in r.getMessage()]
        assert "'some'" in warned.getMessage() and warned.__dict__["missing"] == [2]
        assert store.get(f"big:{10**18}").format == "onnx" and store.get("folded:1").format == "onnx"
        assert store.get("folded:1").signature == store.get(f"big:{10**18}").signature
        (root / "folded" / "1" / "model.onnx" / "model.onnx").rename(root / "folded" / "1" / "model.onnx" / "m.onnx")
        with pytest.raises(InvalidRequest, match=r"without a model\.onnx file in it"):
            model_repository.register(store, root, [])
    finally:
        store.close()


@contextlib.contextmanager
def _served_repository(tmp_path: Path, *flags: str) -> Iterator[tuple[Path, httpclient.InferenceServerClient]]:
    """``polystack serve --model-repository`` of ``repository(tmp_path / "models")`` with ``flags``, as a user
    runs it (store in tmp_path / "home", log in tmp_path / "serve.log"); the repository and a client."""
    repo, port = repository(tmp_path / "models"), free_port()
    args = ["--model-repository", str(repo), "--grpc-port", "-1", *flags]
    with cli_server(tmp_path / "home", args, port, tmp_path / "serve.log"):
        yield repo, httpclient.InferenceServerClient(f"127.0.0.1:{port}")


def _ready(client: httpclient.InferenceServerClient, model: str, version: str = "") -> bool:
    return bool(client.is_model_ready(model, version))


def _infer(client: httpclient.InferenceServerClient, model: str, version: str = "") -> np.ndarray:
    i = httpclient.InferInput("x", [1, 16], "FP32")
    i.set_data_from_numpy(np.ones((1, 16), np.float32))
    return client.infer(model, [i], model_version=version).as_numpy("y")


def test_a_load_by_name_reads_the_models_folder_again_as_triton_explicit_control_does(tmp_path: Path) -> None:
    # the folder was read once, at start: a new version folder, a new config or a new model folder took a restart
    home = tmp_path / "home"
    with _served_repository(tmp_path, "--allow-model-control") as (repo, client):
        (repo / "mlp" / "4").mkdir()
        mlp_onnx(repo / "mlp" / "4" / "model.onnx", seed=4)
        (repo / "mlp" / "config.pbtxt").write_text(MLP_CONFIG.replace("max_batch_size: 8", "max_batch_size: 4"))
        assert not _ready(client, "mlp", "4")  # nothing changes until the load
        client.load_model("mlp")
        assert all(_ready(client, "mlp", v) for v in ("1", "3", "4"))
        np.testing.assert_allclose(
            _infer(client, "mlp", "4"), expected(repo / "mlp" / "4" / "model.onnx", np.ones((1, 16), np.float32)),
            rtol=1e-5, atol=1e-6,
        )  # fmt: skip
        assert client.get_model_config("mlp", "4")["max_batch_size"] == 4
        # a model folder that was not there at start: listed by the index, as Triton lists what it could load
        _model(repo, "fresh", version="2")
        index = client.get_model_repository_index()
        assert {"name": "fresh"} in index, index  # by its name alone, as Triton lists a model never loaded
        client.load_model("fresh")
        assert _ready(client, "fresh", "2") and _infer(client, "fresh").shape == (1, 4)
        # a version that cannot be served fails the load; what was served serves on, and the store takes it back
        (repo / "mlp" / "6").mkdir()
        (repo / "mlp" / "6" / "model.onnx").write_bytes(b"not onnx")
        with pytest.raises(InferenceServerException, match="load failed for model 'mlp'"):
            client.load_model("mlp")
        assert all(_ready(client, "mlp", v) for v in ("1", "3", "4")) and not _ready(client, "mlp", "6")
        # the index lists the version that failed with why, beside those serving on, as Triton's does
        index = {m.get("version"): m for m in client.get_model_repository_index() if m["name"] == "mlp"}
        assert index.keys() == {"1", "3", "4", "6"} and index["4"]["state"] == "READY", index
        assert index["6"]["state"] == "UNAVAILABLE" and index["6"]["reason"].startswith("load failed for model 'mlp': "), index
        # a folder whose first load failed: listed with why, as Triton lists it
        (repo / "broken" / "1").mkdir(parents=True)
        (repo / "broken" / "1" / "model.onnx").write_bytes(b"not onnx")
        with pytest.raises(InferenceServerException, match="load failed for model 'broken'"):
            client.load_model("broken")
        [broken] = [m for m in client.get_model_repository_index() if m["name"] == "broken"]
        assert broken["state"] == "UNAVAILABLE" and broken["reason"].startswith("load failed for model 'broken': "), broken
        assert broken["version"] == "1", broken  # the version that failed
        shutil.rmtree(repo / "broken")
        assert client.get_model_config("mlp", "4")["max_batch_size"] == 4
        # a folder gone: its load fails, saying so; what was served serves on until unloaded
        shutil.rmtree(repo / "fresh")
        with pytest.raises(InferenceServerException, match="has no folder"):
            client.load_model("fresh")
        assert _ready(client, "fresh", "2")
    store = Store.at(home)
    try:
        versions = [(r.name, r.version) for r in store.models.list()]
        assert versions == [("fresh", 2), ("mlp", 1), ("mlp", 3), ("mlp", 4), ("plain", 5)], versions
    finally:
        store.close()


def test_a_loads_version_policy_picks_the_versions_it_serves_as_tritons_does(tmp_path: Path) -> None:
    """A load's config is the model's config for that load, its version_policy too: once refused ("a load
    loads one version"). A config without one takes Triton's default, the latest version (helper-90: the
    folder's policy picked); a load without a config reads the folder's again."""
    with _served_repository(tmp_path, "--allow-model-control") as (_, client):
        assert _ready(client, "mlp", "1") and _ready(client, "mlp", "3")  # the folder's policy: all
        config = client.get_model_config("mlp", "3")
        client.load_model("mlp", config=json.dumps({**config, "version_policy": {"latest": {"num_versions": 1}}}))
        assert _ready(client, "mlp", "3") and not _ready(client, "mlp", "1")
        client.load_model("plain", config=json.dumps({"versionPolicy": {"all": {}}}))  # both spellings
        assert _ready(client, "plain", "2") and _ready(client, "plain", "5")
        assert client.get_model_config("plain")["version_policy"] == {"all": {}}  # as the load wrote it (helper-104)
        client.load_model("plain", config=json.dumps({"version_policy": {"latest": {"num_versions": 1.0}}}))
        assert not _ready(client, "plain", "2") and _ready(client, "plain", "5")
        client.load_model("plain", config=json.dumps({"version_policy": {}}))  # an empty one: Triton loads all
        assert _ready(client, "plain", "2") and _ready(client, "plain", "5")
        client.load_model("plain", config=json.dumps({"version_policy": {"specific": {"versions": [2]}}}))
        assert _ready(client, "plain", "2") and not _ready(client, "plain", "5")
        for bad, says in (
            ({"specific": {"versions": [9]}}, "asks for versions [9], but the model's versions are [2, 5]"),
            ({"newest": {}}, "is not latest, all or specific"),
            ({"latest": {"num_versions": 0}}, "num_versions from 1 to 4294967295, not 0"),
        ):
            with pytest.raises(InferenceServerException, match=re.escape(says)):
                client.load_model("plain", config=json.dumps({"version_policy": bad}))
        assert _ready(client, "plain", "2") and not _ready(client, "plain", "5")  # as it was
        assert config["version_policy"] == {"all": {}}  # the folder's, as its config writes it (Triton's)
        client.load_model("mlp", config=json.dumps(config))  # GET config loads back as it was
        assert _ready(client, "mlp", "1") and _ready(client, "mlp", "3")
        del config["version_policy"]
        client.load_model("mlp", config=json.dumps(config))  # a config replaces the folder's whole: the latest
        assert _ready(client, "mlp", "3") and not _ready(client, "mlp", "1")
        client.load_model("mlp")  # no config, the folder unchanged: the last config stays in force, as in Triton
        assert _ready(client, "mlp", "3") and not _ready(client, "mlp", "1")
        client.unload_model("mlp")
        client.load_model("mlp")  # no config after an unload: the folder's, all
        assert _ready(client, "mlp", "1") and _ready(client, "mlp", "3")


def test_a_polled_repository_loads_reloads_and_unloads_what_changed(tmp_path: Path) -> None:
    home, log = tmp_path / "home", tmp_path / "serve.log"
    with _served_repository(tmp_path, "--repository-poll-secs", "0.2") as (repo, client):
        # a new version of a model whose policy serves the latest: it replaces the one served
        (repo / "plain" / "7").mkdir()
        mlp_onnx(repo / "plain" / "7" / "model.onnx", seed=7)
        assert until(lambda: _ready(client, "plain", "7") and not _ready(client, "plain", "5"))
        # statistics of the version unloaded: Triton's words for a version, the model having one ready (helper-198's
        # L0_server_status run: polystack said the model is not available)
        with pytest.raises(InferenceServerException, match="requested model version is not available for model "
                           "'plain'") as refused:  # fmt: skip
            client.get_inference_statistics("plain", "5")
        assert refused.value.status() == "400"
        # a new model folder is loaded; one removed is unloaded
        _model(repo, "fresh")
        assert until(lambda: _ready(client, "fresh", "1"))
        shutil.rmtree(repo / "fresh")
        assert until(lambda: not _ready(client, "fresh"))
        # a change that cannot be served is logged; what was served serves on
        (repo / "plain" / "8").mkdir()
        (repo / "plain" / "8" / "model.onnx").write_bytes(b"not onnx")
        assert until(lambda: "failed to load 'plain' from the model repository" in log.read_text())
        assert _ready(client, "plain", "7") and _infer(client, "plain").shape == (1, 4)
        # a new folder that fails, then goes: polling goes on
        _model(repo, "broken", file="model.pt")
        assert until(lambda: "failed to load 'broken' from the model repository" in log.read_text())
        [broken] = [m for m in client.get_model_repository_index() if m["name"] == "broken"]
        assert broken["state"] == "UNAVAILABLE" and "model.pt" in broken["reason"], broken  # why, as Triton's says
        [plain8] = [m for m in client.get_model_repository_index() if m["name"] == "plain" and m.get("version") == "8"]
        assert plain8["state"] == "UNAVAILABLE" and "load failed for model 'plain'" in plain8["reason"], plain8
        shutil.rmtree(repo / "broken")
        _model(repo, "later")
        assert until(lambda: _ready(client, "later", "1"))
        # folders gone: the index says nothing of them, their unloads or failures (fresh stays in the store, which
        # no load serves from in poll mode: as Triton's index lists its repository)
        index = client.get_model_repository_index()
        assert not {"broken", "fresh"} & {m["name"] for m in index}, index
        assert "polling the model repository failed" not in log.read_text()  # each folder on its own
        # poll mode has the index but no model control, as in Triton
        assert {"name": "later", "version": "1", "state": "READY"} in client.get_model_repository_index()
        with pytest.raises(InferenceServerException, match="not allowed if polling is enabled") as refused:
            client.load_model("plain")
        assert refused.value.status() == "503"  # Triton's UNAVAILABLE
        with pytest.raises(InferenceServerException, match="not allowed if polling is enabled"):
            client.unload_model("plain")
        extensions = client.get_server_metadata()["extensions"]
        assert "model_repository" in extensions and "model_repository(unload_dependents)" in extensions
        assert _ready(client, "mlp", "1") and _ready(client, "mlp", "3")  # untouched all along
    store = Store.at(home)
    try:
        assert ("plain", 8) not in [(r.name, r.version) for r in store.models.list()]
    finally:
        store.close()


def test_repository_polling_flags_that_cannot_work_exit_2(tmp_path: Path) -> None:
    root = _model(tmp_path / "models", "m")
    for args, words in (
        (["--repository-poll-secs", "5"], "give one"),
        (["--model-repository", str(root), "--repository-poll-secs", "5", "--allow-model-control"], "choose one"),
        (["--model-repository", str(root), "--repository-poll-secs", "5", "--engine", "ray"], "--engine local"),
    ):
        assert words in refused_at_start(tmp_path, args)


def test_a_poll_interval_of_0_or_less_is_no_polling_as_triton_takes_it(tmp_path: Path) -> None:
    """helper-119: tritonserver 2.51 starts with --repository-poll-secs 0 (or -1), and does not poll; polystack
    refused it, so a launch script passing it to say "don't poll" failed."""
    root = _model(tmp_path / "models", "m")
    for value in ("0", "-1"):
        port = free_port()
        args = ["--model-repository", str(root), "--repository-poll-secs", value, "--grpc-port", "-1"]
        log = tmp_path / f"serve{value}.log"
        with cli_server(tmp_path / f"home{value}", args, port, log):
            assert httpclient.InferenceServerClient(f"127.0.0.1:{port}").is_model_ready("m")
        assert "the repository is not polled, as Triton takes it" in log.read_text()


def test_a_poll_that_cannot_read_a_repository_unloads_nothing_and_a_linked_root_follows_its_link(
    tmp_path: Path,
) -> None:
    # an unreadable root (renamed away, a network file system's hiccup) read as "every folder gone", and a root
    # given as a link was resolved at start, so switching the link (current -> releases/b) was never seen
    releases = tmp_path / "releases"
    repository(releases / "a")
    shutil.copytree(releases / "a", releases / "b")
    (releases / "b" / "plain" / "7").mkdir()
    mlp_onnx(releases / "b" / "plain" / "7" / "model.onnx", seed=7)
    current = tmp_path / "current"
    current.symlink_to(releases / "a", target_is_directory=True)
    home, port, log = tmp_path / "home", free_port(), tmp_path / "serve.log"
    args = ["--model-repository", str(current), "--grpc-port", "-1", "--repository-poll-secs", "0.2"]
    with cli_server(home, args, port, log):
        client = httpclient.InferenceServerClient(f"127.0.0.1:{port}")
        (releases / "a").rename(releases / "away")
        assert until(lambda: log.read_text().count("cannot read the model repository") >= 3)
        assert _ready(client, "mlp", "1") and _ready(client, "plain", "5")
        assert "model unloaded" not in log.read_text()
        (releases / "away").rename(releases / "a")
        switch = tmp_path / "switch"
        switch.symlink_to(releases / "b", target_is_directory=True)
        switch.replace(current)  # as a release switch does: the link moves at once
        assert until(lambda: _ready(client, "plain", "7") and not _ready(client, "plain", "5"))


def test_a_failed_reload_of_several_versions_serves_none_of_it(tmp_path: Path) -> None:
    # versions were reloaded one by one: when one failed, those before it served the new config, a new good
    # version stayed served, and the store kept the new labels of versions still serving the old ones
    home = tmp_path / "home"
    with _served_repository(tmp_path, "--allow-model-control") as (repo, client):
        (repo / "mlp" / "2").mkdir()
        mlp_onnx(repo / "mlp" / "2" / "model.onnx", seed=2)
        (repo / "mlp" / "6").mkdir()
        mlp_onnx(repo / "mlp" / "6" / "model.onnx", sizes=(17, 32, 4), seed=6)  # does not fit the config's dims
        (repo / "mlp" / "config.pbtxt").write_text(MLP_CONFIG.replace("max_batch_size: 8", "max_batch_size: 4"))
        (repo / "mlp" / "labels.txt").write_text("A\nB\nC\nD\n")
        with pytest.raises(InferenceServerException, match="load failed for model 'mlp'"):
            client.load_model("mlp")
        assert [_ready(client, "mlp", v) for v in ("1", "2", "3", "6")] == [True, False, True, False]
        assert client.get_model_config("mlp", "1")["max_batch_size"] == 8
    store = Store.at(home)
    try:
        assert [r.version for r in store.models.list("mlp")] == [1, 3]
        assert all(r.settings["labels"]["y"] == ["north", "east", "south", "west"] for r in store.models.list("mlp"))
    finally:
        store.close()


def test_a_folder_that_comes_with_a_config_is_served_as_its_config_says_not_as_the_flags_do(tmp_path: Path) -> None:
    # a model with a config.pbtxt at start is batched as it says; one that came later took the server's flags
    with _served_repository(tmp_path, "--repository-poll-secs", "0.2", "--batching", "--instances", "3") as (repo, client):
        shutil.copytree(repo / "mlp", repo / "fresh")
        (repo / "fresh" / "config.pbtxt").write_text(MLP_CONFIG.replace('name: "mlp"', 'name: "fresh"'))
        assert until(lambda: _ready(client, "fresh", "3"))
        group = client.get_model_config("fresh", "3")["instance_group"][0]["count"]
        # Triton's count where the config gives none: 2 for ONNX Runtime on CPU
        assert group == client.get_model_config("mlp", "3")["instance_group"][0]["count"] == 2
        assert client.get_model_config("plain")["instance_group"][0]["count"] == 3  # no config: the flags


def test_a_change_made_while_the_start_reads_the_repository_is_left_for_the_first_poll(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # the folders were fingerprinted after the start had read them: a change meanwhile (large models take
    # minutes to read) counted as seen, and was never loaded until the folder changed again
    from polystack.cli import serve as serve_cli
    from polystack.server.app import ServeConfig

    repo = repository(tmp_path / "models")
    monkeypatch.setenv("POLYSTACK_HOME", str(tmp_path / "home"))
    read = model_repository.register_folder

    def read_then_change(store: Store, folder: Path, done: list, **kw: Any) -> model_repository.RepositoryModel:
        model = read(store, folder, done, **kw)
        if folder.name == "plain":
            (repo / "plain" / "7").mkdir()  # lands after the start read the folder, before the server starts
        return model

    monkeypatch.setattr(model_repository, "register_folder", read_then_change)
    config = serve_cli._with_repositories(ServeConfig(repository_poll_s=1.0), [repo], [])
    assert config.repository_seen is not None
    assert config.repository_seen["plain"] != model_repository.fingerprint(repo / "plain")
    assert config.repository_seen["mlp"] == model_repository.fingerprint(repo / "mlp")


def test_a_reload_the_drain_stops_is_not_logged_as_a_failed_load(tmp_path: Path) -> None:
    # the warm-up's refusal (the server is shutting down) was logged as an error of the poll's reload
    root = tmp_path / "repo"
    (root / "slowm" / "1").mkdir(parents=True)  # slow*: the test runtime answers after 50 ms
    mlp_onnx(root / "slowm" / "1" / "model.onnx")
    store = Store.at(tmp_path / "home")
    seen = {f.name: model_repository.fingerprint(f) for f in model_repository.model_folders(root)}
    models = model_repository.register(store, root, [])
    st = start(store, models=[r for m in models for r in m.refs], model_repositories=[root],
               repository_models=["slowm"], repository_poll_s=0.2, repository_seen=seen, drain_timeout_s=5.0)  # fmt: skip
    try:
        with caught_logs("polystack") as logged:
            (root / "slowm" / "config.pbtxt").write_text(
                'max_batch_size: 8\nmodel_warmup [{ name: "w" batch_size: 1 count: 200 inputs { key: "x" value: { data_type: TYPE_FP32 '
                "dims: [16] zero_data: true } } }]\n"
            )  # 200 calls of 50 ms: the poll's reload is warming up when the server stops
            assert until(lambda: any(r.getMessage() == "warming up model" for r in logged), within_s=10)
            st.stop()
        assert not [(r.getMessage(), getattr(r, "error", "")) for r in logged if r.levelno >= logging.WARNING]
    finally:
        st.stop()
        store.close()


def _fixed_beside(path: Path) -> None:
    """x FP32[n] -> y (x + x), and w FP32[3] -> v: a model whose inputs do not all take a batch."""
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("Add", ["x", "x"], ["y"]), helper.make_node("Identity", ["w"], ["v"])],
        "mixed",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n"]), helper.make_tensor_value_info("w", TensorProto.FLOAT, [3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n"]), helper.make_tensor_value_info("v", TensorProto.FLOAT, [3])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    path.parent.mkdir(parents=True)
    onnx.save_model(model, str(path))


def test_a_batch_of_scalars_shows_as_triton_auto_completes_it(tmp_path: Path) -> None:
    """Triton's ONNX Runtime backend auto-completes a batched model's config where it lists no inputs (or no
    outputs): a tensor with no dims besides the batch shows dims [1], reshaped to the model's [] (its
    AutoCompleteIO), so that Triton's clients send and get [batch, 1]. A repository model showed [batch], and
    Triton clients' [batch, 1] requests were refused."""
    repo = tmp_path / "models"
    batch_of_scalars(repo / "auto" / "1" / "model.onnx")
    batch_of_scalars(repo / "inputs" / "1" / "model.onnx")  # its config lists its input as Triton needs it: outputs auto
    (repo / "inputs" / "config.pbtxt").write_text(
        'max_batch_size: 8\ninput [ { name: "x", data_type: TYPE_FP32, dims: [ 1 ], reshape: { shape: [ ] } } ]\n'
        "dynamic_batching { }\n"
    )
    batch_of_scalars(repo / "warm" / "1" / "model.onnx")  # warm-up samples in the shapes clients send
    (repo / "warm" / "config.pbtxt").write_text(
        "max_batch_size: 8\ndynamic_batching { }\nmodel_warmup [ { name: \"s\" batch_size: 2 inputs { key: \"x\" "
        "value: { data_type: TYPE_FP32 dims: [ 1 ] zero_data: true } } } ]\n"
    )
    _fixed_beside(repo / "mixed" / "1" / "model.onnx")  # a model Triton cannot batch keeps its dims
    grpc_port = free_port()
    args = ["--model-repository", str(repo), "--grpc-port", str(grpc_port), "--allow-model-control"]
    port = free_port()
    with cli_server(tmp_path / "home", args, port, tmp_path / "serve.log"):
        import tritonclient.grpc as grpcclient
        from servekit import same_config_both_ways

        h = httpclient.InferenceServerClient(f"127.0.0.1:{port}")
        g = grpcclient.InferenceServerClient(f"127.0.0.1:{grpc_port}")
        x = np.array([[1.0], [2.5], [-3.0]], np.float32)
        assert [t["shape"] for t in h.get_model_metadata("mixed")["inputs"]] == [[-1], [3]]
        for name in ("auto", "inputs", "warm"):  # auto: batched as Triton's auto-complete batches it
            meta = h.get_model_metadata(name)
            assert [t["shape"] for t in (*meta["inputs"], *meta["outputs"])] == [[-1, 1], [-1, 1], [-1, 2]]
            config = same_config_both_ways(h, g, name)
            scalar = ([1], {"shape": []}) if config["max_batch_size"] else ([-1, 1], {"shape": [-1]})
            assert (config["input"][0]["dims"], config["input"][0]["reshape"]) == scalar
            shown = {o["name"]: (o["dims"], o.get("reshape")) for o in config["output"]}
            assert shown == {"y": scalar, "z": ([2] if config["max_batch_size"] else [-1, 2], None)}
            for client, module in ((h, httpclient), (g, grpcclient)):
                i = module.InferInput("x", [3, 1], "FP32")
                i.set_data_from_numpy(x)
                answer = client.infer(name, [i])
                np.testing.assert_array_equal(answer.as_numpy("y"), x * 2)  # [3, 1], as from Triton
                np.testing.assert_array_equal(answer.as_numpy("z"), np.concatenate([x, x], axis=1))
            h.load_model(name, config=json.dumps(config))  # what GET config shows loads back unchanged
            assert h.get_model_config(name) == config
        assert h.get_model_config("inputs")["max_batch_size"] == 8 and h.get_model_config("auto")["max_batch_size"] == 4
        h.close()
        g.close()


def _batching(config: dict[str, Any]) -> tuple[int, int | None]:
    """A GET config's max_batch_size and dynamic batching's queue delay (None: not batched)."""
    dynamic = config.get("dynamic_batching")
    return config["max_batch_size"], dynamic["max_queue_delay_microseconds"] if dynamic else None


def test_an_empty_repository_serves_nothing_and_loads_what_comes_later(tmp_path: Path) -> None:
    """Triton starts on an empty repository, its models coming by a load or a poll: polystack exited 2. What
    else the store holds is not served (a repository's server serves its folders' models alone)."""
    home, repo = tmp_path / "home", tmp_path / "models"
    other = mlp_onnx(tmp_path / "other.onnx", seed=9)
    subprocess.run([sys.executable, "-m", "polystack", "--home", str(home), "register", str(other), "--name", "other"],
                   check=True, capture_output=True)  # fmt: skip
    repo.mkdir()
    port = free_port()
    args = ["--model-repository", str(repo), "--grpc-port", "-1", "--allow-model-control"]
    with cli_server(home, args, port, tmp_path / "serve.log"):
        client = httpclient.InferenceServerClient(f"127.0.0.1:{port}")
        assert client.is_server_ready() and not client.is_model_ready("other")
        assert client.get_model_repository_index() == [{"name": "other"}]  # loadable, from the store: not loaded
        _model(repo, "m")  # a model folder comes, and loads by name
        client.load_model("m")
        assert client.is_model_ready("m", "1")
        assert {"name": "m", "version": "1", "state": "READY"} in client.get_model_repository_index()
        client.close()
    assert (tmp_path / "serve.log").read_text().count("holds no model folders") == 1
    # under Ray Serve no model loads later (no model control, no polling): an empty repository is refused
    empty = tmp_path / "empty"
    empty.mkdir()
    line = refused_at_start(tmp_path, ["--engine", "ray", "--model-repository", str(empty)])
    assert "holds no model folders, and under --engine ray no model loads later" in line, line
    # a model named is served, the repository empty or not: the start goes on to the next check (the name
    # is none the store holds, refused before any Ray is reached)
    cmd = [sys.executable, "-m", "polystack", "--home", str(home), "serve", "nope", "--engine", "ray",
           "--model-repository", str(empty), "--ray-address", "127.0.0.1:1"]  # fmt: skip
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    *warned, line = out.stderr.strip().splitlines()
    assert out.returncode == 2 and line == "error: no model named 'nope'; `polystack models` lists the registered ones"
    assert [json.loads(w)["msg"] for w in warned] == [
        "the model repository holds no model folders; each model is a folder with its versions in numbered folders "
        "(mlp/1/model.onnx)"
    ]  # nothing loads later under Ray: the warning does not say how
    # without model control no load serves the store's other models: the index lists the repository alone
    with cli_server(home, args[:-1], port, tmp_path / "serve2.log"):
        client = httpclient.InferenceServerClient(f"127.0.0.1:{port}")
        assert client.get_model_repository_index() == [{"name": "m", "version": "1", "state": "READY"}]
        client.close()


def test_an_ensemble_whose_model_only_the_store_holds_serves_once_the_model_is_named(tmp_path: Path) -> None:
    """A repository's server serves its folders' models alone (it served every model of the store whenever
    the repository held no model folder, an ensemble's aside): the step model is named on the command line."""
    home, repo = tmp_path / "home", tmp_path / "models"
    subprocess.run([sys.executable, "-m", "polystack", "--home", str(home), "register",
                    str(mlp_onnx(tmp_path / "mlp.onnx")), "--name", "mlp"], check=True, capture_output=True)  # fmt: skip
    (repo / "pipe" / "1").mkdir(parents=True)
    (repo / "pipe" / "config.pbtxt").write_text(
        'platform: "ensemble"\nmax_batch_size: 4\ninput [ { name: "IN", data_type: TYPE_FP32, dims: [ 16 ] } ]\n'
        'output [ { name: "OUT", data_type: TYPE_FP32, dims: [ 4 ] } ]\nensemble_scheduling { step [ { model_name: '
        '"mlp", model_version: -1, input_map { key: "x" value: "IN" }, output_map { key: "y" value: "OUT" } } ] }\n'
    )
    line = refused_at_start(tmp_path, ["--model-repository", str(repo)])
    assert "the ensemble runs a model that is not served" in line and "name it on the command line" in line, line
    assert line.count("load it first") == 1, line
    port = free_port()
    with cli_server(home, ["mlp", "--model-repository", str(repo), "--grpc-port", "-1"], port, tmp_path / "serve.log"):
        client = httpclient.InferenceServerClient(f"127.0.0.1:{port}")
        i = httpclient.InferInput("IN", [1, 16], "FP32")
        i.set_data_from_numpy(np.ones((1, 16), np.float32))
        assert client.infer("pipe", [i]).as_numpy("OUT").shape == (1, 4)
        client.close()


def test_a_label_file_in_a_folder_of_the_models_is_read_and_one_outside_refused(tmp_path: Path) -> None:
    """Triton reads label_filename as a path in the model's folder: one in a subfolder was refused."""
    config = 'output [ { name: "y", data_type: TYPE_FP32, dims: [ 4 ], label_filename: "%s" } ]'
    root = _model(tmp_path / "models", "m", config=config % "labels/en.txt")
    (root / "m" / "labels").mkdir()
    (root / "m" / "labels" / "en.txt").write_text("north\neast\nsouth\nwest\n")
    (root / "m" / "labels" / "outside.txt").symlink_to(tmp_path / "secret.txt")
    (tmp_path / "secret.txt").write_text("a\nb\nc\nd\n")
    store = Store.at(tmp_path / "home")
    try:
        model_repository.register(store, root, [])
        assert store.get("m:1").settings["labels"] == {"y": ["north", "east", "south", "west"]}
        assert store.get("m:1").settings["label_files"] == {"y": "labels/en.txt"}  # as the config names it
        (root / "m" / "config.pbtxt").write_text(config % "./labels/en.txt")  # in the config's own words
        model_repository.register(store, root, [])
        assert store.get("m:1").settings["label_files"] == {"y": "./labels/en.txt"}
        for outside in ("../../secret.txt", "labels/outside.txt"):
            (root / "m" / "config.pbtxt").write_text(config % outside)
            with pytest.raises(InvalidRequest, match="which is not in"):
                model_repository.register(store, root, [])
    finally:
        store.close()
    (root / "m" / "config.pbtxt").write_text(config % "labels/en.txt")
    port = free_port()
    with cli_server(tmp_path / "home", ["--model-repository", str(root), "--grpc-port", "-1"], port, tmp_path / "s.log"):
        client = httpclient.InferenceServerClient(f"127.0.0.1:{port}")
        assert client.get_model_config("m")["output"][0]["label_filename"] == "labels/en.txt"
        i = httpclient.InferInput("x", [1, 16], "FP32")
        i.set_data_from_numpy(np.ones((1, 16), np.float32))
        top = client.infer("m", [i], outputs=[httpclient.InferRequestedOutput("y", class_count=1)]).as_numpy("y")
        assert top[0][0].decode().split(":")[2] in ("north", "east", "south", "west")
        client.close()


def _two_outputs(path: Path) -> Path:
    """A model of input a [-1, 4] and outputs p = a + a and q = a * a."""
    import onnx
    from onnx import TensorProto, helper

    io = [helper.make_tensor_value_info(n, TensorProto.FLOAT, ["batch", 4]) for n in ("a", "p", "q")]
    nodes = [helper.make_node("Add", ["a", "a"], ["p"]), helper.make_node("Mul", ["a", "a"], ["q"])]
    model = helper.make_model(helper.make_graph(nodes, "pq", io[:1], io[1:]), opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))
    return path


def test_a_config_listing_some_outputs_serves_those_alone_as_triton_does(tmp_path: Path) -> None:
    """Triton's metadata, config and answers hold the outputs its config lists; polystack showed and answered
    the model's every output, and took a request for one the config leaves out."""
    import tritonclient.grpc as grpcclient

    repo = tmp_path / "models"
    _two_outputs(repo / "m" / "1" / "model.onnx")
    (repo / "m" / "config.pbtxt").write_text(
        'max_batch_size: 8\ninput [ { name: "a", data_type: TYPE_FP32, dims: [ 4 ] } ]\n'
        'output [ { name: "q", data_type: TYPE_FP32, dims: [ 4 ] } ]\n'
    )
    a = np.arange(8, dtype=np.float32).reshape(2, 4)
    grpc_port, port = free_port(), free_port()
    args = ["--model-repository", str(repo), "--grpc-port", str(grpc_port)]
    with cli_server(tmp_path / "home", args, port, tmp_path / "serve.log"):
        h = httpclient.InferenceServerClient(f"127.0.0.1:{port}")
        g = grpcclient.InferenceServerClient(f"127.0.0.1:{grpc_port}")
        assert [o["name"] for o in h.get_model_metadata("m")["outputs"]] == ["q"]
        assert [o["name"] for o in h.get_model_config("m")["output"]] == ["q"]
        for client, module in ((h, httpclient), (g, grpcclient)):
            i = module.InferInput("a", [2, 4], "FP32")
            i.set_data_from_numpy(a)
            got = client.infer("m", [i])
            np.testing.assert_array_equal(got.as_numpy("q"), a * a)
            assert got.as_numpy("p") is None  # not the config's
            with pytest.raises(InferenceServerException, match="unexpected inference output 'p' for model 'm'"):
                client.infer("m", [i], outputs=[module.InferRequestedOutput("p")])
        assert h.is_server_live()
        h.close()
        g.close()


def test_a_model_without_a_config_is_batched_as_tritons_auto_complete_batches_it(tmp_path: Path) -> None:
    """Triton's ONNX Runtime backend completes a config that lists no inputs or no outputs: a model that can batch
    gets max_batch_size 4 (--backend-config default-max-batch-size) where the config gives none (or 0), and
    dynamic batching where it schedules nothing itself. Triton clients read max_batch_size to shape their
    requests: a repository model without a config showed 0 (and dims [-1, 16]), and took any batch."""
    import tritonclient.grpc as grpcclient
    from servekit import same_config_both_ways

    repo = tmp_path / "models"
    for name in ("plain", "inputs", "sized", "listed", "listed_dyn"):
        mlp_onnx(repo / name / "1" / "model.onnx")
    listed_input = 'input [ { name: "x", data_type: TYPE_FP32, dims: [ 16 ] } ]\n'
    (repo / "inputs" / "config.pbtxt").write_text(listed_input + "dynamic_batching { max_queue_delay_microseconds: 500 }\n")
    (repo / "sized" / "config.pbtxt").write_text("max_batch_size: 8\n")
    listed = (  # inputs and outputs listed: Triton completes nothing, and max_batch_size left out is 0
        'input [ { name: "x", data_type: TYPE_FP32, dims: [ -1, 16 ] } ]\n'
        'output [ { name: "y", data_type: TYPE_FP32, dims: [ -1, 4 ] } ]\n'
    )
    (repo / "listed" / "config.pbtxt").write_text(listed)
    # with dynamic batching too (polystack chose a max_batch_size of its own, and refused the config's dims)
    (repo / "listed_dyn" / "config.pbtxt").write_text(listed + "dynamic_batching { max_queue_delay_microseconds: 300 }\n")
    grpc_port, port = free_port(), free_port()
    # another backend's setting is not the ONNX Runtime backend's: ignored, as in Triton
    args = ["--model-repository", str(repo), "--grpc-port", str(grpc_port), "--allow-model-control",
            "--backend-config", "tensorflow,default-max-batch-size=16"]  # fmt: skip
    rows = np.random.default_rng(0).standard_normal((5, 16)).astype(np.float32)
    with cli_server(tmp_path / "home", args, port, tmp_path / "serve.log"):
        h = httpclient.InferenceServerClient(f"127.0.0.1:{port}")
        g = grpcclient.InferenceServerClient(f"127.0.0.1:{grpc_port}")
        shown = {name: same_config_both_ways(h, g, name) for name in ("plain", "inputs", "sized", "listed", "listed_dyn")}
        assert {name: _batching(c) for name, c in shown.items()} == {
            "plain": (4, 0), "inputs": (4, 500), "sized": (8, 0), "listed": (0, None), "listed_dyn": (0, 300),
        }  # fmt: skip
        assert [t["dims"] for t in (*shown["plain"]["input"], *shown["plain"]["output"])] == [[16], [4]]
        assert [t["dims"] for t in (*shown["listed"]["input"], *shown["listed"]["output"])] == [[-1, 16], [-1, 4]]
        for client, module in ((h, httpclient), (g, grpcclient)):
            i = module.InferInput("x", [4, 16], "FP32")
            i.set_data_from_numpy(rows[:4])
            got = client.infer("plain", [i]).as_numpy("y")
            np.testing.assert_allclose(got, expected(repo / "plain" / "1" / "model.onnx", rows[:4]), rtol=1e-5, atol=1e-6)
            i = module.InferInput("x", [5, 16], "FP32")
            i.set_data_from_numpy(rows)
            with pytest.raises(InferenceServerException, match="inference request batch-size must be <= 4 for 'plain', not 5"):
                client.infer("plain", [i])
        assert h.is_server_live() and g.is_server_live()  # the refusals left it serving
        h.load_model("plain", config=json.dumps(shown["plain"]))  # what GET config shows loads back unchanged
        assert h.get_model_config("plain") == shown["plain"]
        h.close()
        g.close()
    warned = [json.loads(line) for line in (tmp_path / "serve.log").read_text().splitlines() if "autofilled" in line]
    assert {(w["model"], w["max_batch_size"]) for w in warned} == {("plain", 4), ("inputs", 4)}


def test_the_default_max_batch_size_is_tritons_backend_config(tmp_path: Path) -> None:
    """--backend-config onnxruntime,default-max-batch-size=N (Triton's flag; the backend's own wins over every
    backend's): 0 serves such a model without batching, with its own dims (a batch of scalars: [-1]), as
    Triton's AutoCompleteIO gives them with max_batch_size 0."""
    repo = tmp_path / "models"
    mlp_onnx(repo / "plain" / "1" / "model.onnx")
    batch_of_scalars(repo / "scalars" / "1" / "model.onnx")
    args = ["--model-repository", str(repo), "--grpc-port", "-1", "--backend-config", "onnxruntime,default-max-batch-size=0",
            "--backend-config", "default-max-batch-size=16", "--instances", "3"]  # fmt: skip
    port = free_port()
    with cli_server(tmp_path / "home", args, port, tmp_path / "serve.log"):
        h = httpclient.InferenceServerClient(f"127.0.0.1:{port}")
        plain, scalars = h.get_model_config("plain"), h.get_model_config("scalars")
        assert _batching(plain) == (0, None) and plain["instance_group"][0]["count"] == 3
        assert [(t["dims"], "reshape" in t) for t in (*scalars["input"], *scalars["output"])] == [
            ([-1], False), ([-1], False), ([-1, 2], False),
        ]  # fmt: skip
        x = np.array([1.0, 2.5, -3.0], np.float32)
        i = httpclient.InferInput("x", [3], "FP32")
        i.set_data_from_numpy(x)
        np.testing.assert_array_equal(h.infer("scalars", [i]).as_numpy("y"), x * 2)
        h.close()
    args = ["--model-repository", str(repo), "--grpc-port", "-1", "--backend-config", "default-max-batch-size=16",
            "--instances", "2", "--max-queue-delay-ms", "0.5"]  # fmt: skip
    with cli_server(tmp_path / "home", args, port, tmp_path / "serve2.log"):
        h = httpclient.InferenceServerClient(f"127.0.0.1:{port}")
        plain = h.get_model_config("plain")
        # batched as auto-complete says, with the batch settings given on their own
        assert _batching(plain) == (16, 500) and plain["instance_group"][0]["count"] == 2
        h.close()
    assert "do not apply" not in (tmp_path / "serve2.log").read_text()


def test_no_batching_leaves_a_folders_config_to_tritons_auto_complete(tmp_path: Path) -> None:
    """--no-batching serves a folder without a config unbatched; one with a config is served as the config and
    Triton's auto-complete say, as the other batching flags leave it (an empty config, or one that asks for
    dynamic batching alone, gets max_batch_size 4: it was refused, 'dynamic_batching needs max_batch_size')."""
    repo = tmp_path / "models"
    for name in ("plain", "empty", "dyn"):
        mlp_onnx(repo / name / "1" / "model.onnx")
    (repo / "empty" / "config.pbtxt").write_text("")
    (repo / "dyn" / "config.pbtxt").write_text("dynamic_batching { }\n")
    port = free_port()
    args = ["--model-repository", str(repo), "--grpc-port", "-1", "--no-batching"]
    with cli_server(tmp_path / "home", args, port, tmp_path / "serve.log"):
        h = httpclient.InferenceServerClient(f"127.0.0.1:{port}")
        shown = {name: _batching(h.get_model_config(name)) for name in ("plain", "empty", "dyn")}
        assert shown == {"plain": (0, None), "empty": (4, 0), "dyn": (4, 0)}
        h.close()
    warned = [json.loads(line) for line in (tmp_path / "serve.log").read_text().splitlines() if "autofilled" in line]
    assert sorted(w["model"] for w in warned) == ["dyn", "empty"]


def test_a_backend_config_polystack_cannot_read_exits_2_with_one_line(tmp_path: Path) -> None:
    repo = _model(tmp_path / "models", "m")
    line = refused_at_start(tmp_path, ["--model-repository", str(repo), "--backend-config", "default-max-batch-size="])
    assert line == ("error: --backend-config option format is '<backend name>,<setting>=<value>'. Got "
                    "default-max-batch-size=; or '<setting>=<value>' for every backend, e.g. "
                    "onnxruntime,default-max-batch-size=8")  # fmt: skip
    line = refused_at_start(tmp_path, ["--model-repository", str(repo), "--backend-config", "default-max-batch-size=8", "--no-batching"])
    assert "drop one" in line


def _scaled(path: Path) -> Path:
    """x FP32[n, 4] and a scalar t FP32[] -> y = x * t FP32[n, 4] and the scalar s = sum(x) FP32[]."""
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("Mul", ["x", "t"], ["y"]), helper.make_node("ReduceSum", ["x"], ["s"], keepdims=0)],
        "scaled",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 4]), helper.make_tensor_value_info("t", TensorProto.FLOAT, [])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 4]), helper.make_tensor_value_info("s", TensorProto.FLOAT, [])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save_model(model, str(path))
    return path


def test_a_scalar_shows_as_dims_1_as_tritons_auto_complete_shows_it(tmp_path: Path) -> None:
    """Triton's ONNX Runtime backend shows a scalar tensor (the model's []) as dims [1], without a reshape (a model
    with one cannot batch), and takes and gives it as [1]; a config may list it with dims of 1s only. Triton
    clients sent [1] and were refused, and got [] back."""
    import tritonclient.grpc as grpcclient
    from servekit import same_config_both_ways

    repo = tmp_path / "models"
    _scaled(repo / "auto" / "1" / "model.onnx")
    _scaled(repo / "listed" / "1" / "model.onnx")
    (repo / "listed" / "config.pbtxt").write_text(
        'input [ { name: "x", data_type: TYPE_FP32, dims: [ -1, 4 ] }, { name: "t", data_type: TYPE_FP32, dims: [ 1, 1 ] } ]\n'
        'output [ { name: "y", data_type: TYPE_FP32, dims: [ -1, 4 ] }, { name: "s", data_type: TYPE_FP32, dims: [ 1 ] } ]\n'
    )
    grpc_port, port = free_port(), free_port()
    args = ["--model-repository", str(repo), "--grpc-port", str(grpc_port), "--allow-model-control"]
    x = np.arange(8, dtype=np.float32).reshape(2, 4)
    with cli_server(tmp_path / "home", args, port, tmp_path / "serve.log"):
        h = httpclient.InferenceServerClient(f"127.0.0.1:{port}")
        g = grpcclient.InferenceServerClient(f"127.0.0.1:{grpc_port}")
        config = same_config_both_ways(h, g, "auto")
        assert config["max_batch_size"] == 0 and "dynamic_batching" not in config  # a scalar: Triton cannot batch it
        shown = [(t["name"], t["dims"], "reshape" in t) for t in (*config["input"], *config["output"])]
        assert shown == [("x", [-1, 4], False), ("t", [1], False), ("y", [-1, 4], False), ("s", [1], False)]
        for name, t_shape in (("auto", [1]), ("listed", [1, 1])):
            meta = h.get_model_metadata(name)
            assert {t["name"]: t["shape"] for t in (*meta["inputs"], *meta["outputs"])}["t"] == t_shape
            for client, module in ((h, httpclient), (g, grpcclient)):
                xi, ti = module.InferInput("x", [2, 4], "FP32"), module.InferInput("t", t_shape, "FP32")
                xi.set_data_from_numpy(x)
                ti.set_data_from_numpy(np.full(t_shape, 0.5, np.float32))
                answer = client.infer(name, [xi, ti])
                np.testing.assert_array_equal(answer.as_numpy("y"), x * 0.5)
                np.testing.assert_array_equal(answer.as_numpy("s"), np.array([28.0], np.float32))  # [1], as Triton's
                ti = module.InferInput("t", [], "FP32")  # the model's own shape: not what the config says
                ti.set_data_from_numpy(np.array(0.5, np.float32))
                with pytest.raises(InferenceServerException, match="unexpected shape for input 't'"):
                    client.infer(name, [xi, ti])
        h.load_model("auto", config=json.dumps(config))  # what GET config shows loads back unchanged
        assert h.get_model_config("auto") == config
        bad = json.loads(json.dumps(config))
        bad["input"][1]["dims"] = [2]
        with pytest.raises(InferenceServerException, match="scalar tensor 't', should only provide 1 in the model configuration"):
            h.load_model("auto", config=json.dumps(bad))
        bad["input"][1]["dims"], bad["input"][1]["reshape"] = [1], {"shape": []}
        with pytest.raises(InferenceServerException, match="cannot have empty reshape for non-batching model"):
            h.load_model("auto", config=json.dumps(bad))
        assert h.get_model_config("auto") == config  # the refusals left it as it was
        h.close()
        g.close()


def _checksummed(md5: str, path: str = "1/model.onnx") -> str:
    agent = f'{{ name: "checksum", parameters {{ key: "MD5:{path}" value: "{md5}" }} }}'
    return f"model_repository_agents {{ agents [ {agent} ] }}\n"


def test_the_checksum_agent_a_config_names_checks_the_models_files_before_they_load(tmp_path: Path) -> None:
    """Triton's checksum repository agent (model_repository_agents): a folder whose files match the MD5s its
    config.pbtxt gives is served; one that does not is refused, at start, on a load by name and on a load that
    carries the files, leaving the store and what is served as they were. polystack refused the field whole."""
    import hashlib

    repo = tmp_path / "models"
    model = mlp_onnx(repo / "good" / "1" / "model.onnx")
    md5 = hashlib.md5(model.read_bytes()).hexdigest()
    (repo / "good" / "config.pbtxt").write_text(_checksummed(md5))
    port, grpc_port = free_port(), free_port()
    args = ["--model-repository", str(repo), "--grpc-port", str(grpc_port), "--allow-model-control"]
    with cli_server(tmp_path / "home", args, port, tmp_path / "serve.log"):
        import tritonclient.grpc as grpcclient
        from servekit import same_config_both_ways

        h = httpclient.InferenceServerClient(f"127.0.0.1:{port}")
        assert h.is_model_ready("good")
        # GET config shows them, as Triton's does, over HTTP and gRPC: a client that loads it back runs them again
        # (one that got none loaded the model unchecked)
        ran = {"agents": [{"name": "checksum", "parameters": {"MD5:1/model.onnx": md5}}]}
        shown = same_config_both_ways(h, grpcclient.InferenceServerClient(f"127.0.0.1:{grpc_port}"), "good")
        assert shown["model_repository_agents"] == ran
        h.load_model("good", config=json.dumps(shown))
        assert h.get_model_config("good")["model_repository_agents"] == ran
        with pytest.raises(InferenceServerException, match=r"Mismatched MD5 hash for file 1/model\.onnx"):
            h.load_model("good", config=json.dumps(_with_md5(shown, "e" * 32)))
        h.load_model("good", config=json.dumps({k: v for k, v in shown.items() if k != "model_repository_agents"}))
        assert "model_repository_agents" not in h.get_model_config("good")  # a load's config replaces the folder's
        h.unload_model("good")
        h.load_model("good")  # none, after an unload: the folder's config, its agents run and shown
        assert h.get_model_config("good")["model_repository_agents"] == ran
        (repo / "good" / "config.pbtxt").write_text(_checksummed("0" * 32))
        with pytest.raises(InferenceServerException, match=f"Mismatched MD5 hash for file 1/model.onnx, expect: {'0' * 32}, got: {md5}"):
            h.load_model("good")
        assert h.is_model_ready("good", "1")  # what was served serves on
        # a load that carries the files runs the agent on them
        data = model.read_bytes()
        config = {"model_repository_agents": {"agents": [{"name": "checksum", "parameters": {"MD5:1/model.onnx": md5}}]}}
        h.load_model("up", config=json.dumps(config), files={"file:1/model.onnx": data})
        assert h.is_model_ready("up")
        assert h.get_model_config("up")["model_repository_agents"] == ran
        config["model_repository_agents"]["agents"][0]["parameters"] = {"MD5:1/model.onnx": "f" * 32}
        with pytest.raises(InferenceServerException, match=r"Mismatched MD5 hash for file 1/model\.onnx"):
            h.load_model("other", config=json.dumps(config), files={"file:1/model.onnx": data})
        # a load's config runs its own agents on the folder, in place of the folder's config's
        config["model_repository_agents"]["agents"][0]["parameters"] = {"MD5:1/model.onnx": md5}
        h.load_model("good", config=json.dumps(config))
        assert h.is_model_ready("good")
        with pytest.raises(InferenceServerException, match="repository agents run on a model's files"):
            h.load_model("up", config=json.dumps(config))  # not a repository model: no files to check
        h.close()
    store = Store.at(tmp_path / "home")
    try:
        assert sorted({r.name for r in store.models.list()}) == ["good", "up"]  # the refused load registered nothing
    finally:
        store.close()
    line = refused_at_start(tmp_path, ["--model-repository", str(repo)])
    assert "model 'good'" in line and "Mismatched MD5 hash for file 1/model.onnx" in line
    # a config given another way names files polystack does not serve from: refused, not shown unrun
    line = refused_at_start(tmp_path, ["up", "--model-config", f"up={repo / 'good' / 'config.pbtxt'}"])
    assert "model_repository_agents" in line and "repository agents run on a model's files" in line, line


def test_get_config_shows_the_agents_that_ran_for_what_is_served_ensembles_too(tmp_path: Path) -> None:
    """A load's config replaces the folder's: the folder's agents neither run, nor are refused, nor show later
    (a load by version showed agents vouching for a file the served bytes no longer were). An ensemble's
    agents show too, so that its config read back runs them again."""
    import hashlib

    repo = tmp_path / "models"
    mlp_onnx(repo / "mlp" / "1" / "model.onnx")
    (repo / "pipe" / "1").mkdir(parents=True)
    (repo / "pipe" / "notes.txt").write_text("hello")
    md5 = hashlib.md5(b"hello").hexdigest()
    (repo / "pipe" / "config.pbtxt").write_text(
        'platform: "ensemble"\nmax_batch_size: 4\ninput [ { name: "IN", data_type: TYPE_FP32, dims: [ 16 ] } ]\n'
        'output [ { name: "OUT", data_type: TYPE_FP32, dims: [ 4 ] } ]\nensemble_scheduling { step [ { model_name: '
        '"mlp", model_version: -1, input_map { key: "x" value: "IN" }, output_map { key: "y" value: "OUT" } } ] }\n'
        + _checksummed(md5, "notes.txt")
    )
    port = free_port()
    args = ["--model-repository", str(repo), "--grpc-port", "-1", "--allow-model-control"]
    with cli_server(tmp_path / "home", args, port, tmp_path / "serve.log"):
        h = httpclient.InferenceServerClient(f"127.0.0.1:{port}")
        shown = h.get_model_config("pipe")
        assert shown["model_repository_agents"] == {
            "agents": [{"name": "checksum", "parameters": {"MD5:notes.txt": md5}}]
        }
        (repo / "pipe" / "notes.txt").write_text("changed")
        with pytest.raises(InferenceServerException, match=r"Mismatched MD5 hash for file notes\.txt"):
            h.load_model("pipe", config=json.dumps(shown))  # read back: they run again
        # a folder whose config names agents polystack cannot run, loaded with a config of the load's own
        mlp_onnx(repo / "later" / "1" / "model.onnx")
        for agent in ('{ name: "relocation" }', '{ name: "checksum", parameters { key: "SHA1:1/model.onnx" value: "x" } }'):
            (repo / "later" / "config.pbtxt").write_text(f"model_repository_agents {{ agents [ {agent} ] }}\n")
            h.load_model("later", config=json.dumps({"max_batch_size": 0}))
            assert h.is_model_ready("later")
        (repo / "later" / "config.pbtxt").write_text(_checksummed("0" * 32))
        h.load_model("later", config=json.dumps({"max_batch_size": 0}))
        assert "model_repository_agents" not in h.get_model_config("later")
        h.load_model("later:1")  # a load by version runs none: it shows none, not the folder's that never ran
        assert "model_repository_agents" not in h.get_model_config("later")


def _with_md5(config: dict[str, Any], md5: str) -> dict[str, Any]:
    agents = {"agents": [{"name": "checksum", "parameters": {"MD5:1/model.onnx": md5}}]}
    return {**config, "model_repository_agents": agents}


def _scalar_out(path: Path, sequence: bool = False) -> Path:
    """x FP32[n] -> y = x FP32[n] and s = sum(x) FP32[]; as a sequence model, x FP32[] and START INT32[1] -> y
    = x FP32[] (a scalar output)."""
    import onnx
    from onnx import TensorProto, helper

    if sequence:
        nodes = [helper.make_node("Identity", ["x"], ["y"])]
        inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, []),
                  helper.make_tensor_value_info("START", TensorProto.INT32, [1])]  # fmt: skip
        outputs = [helper.make_tensor_value_info("y", TensorProto.FLOAT, [])]
    else:
        nodes = [helper.make_node("Identity", ["x"], ["y"]), helper.make_node("ReduceSum", ["x"], ["s"], keepdims=0)]
        inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n"])]
        outputs = [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n"]),
                   helper.make_tensor_value_info("s", TensorProto.FLOAT, [])]  # fmt: skip
    model = helper.make_model(helper.make_graph(nodes, "g", inputs, outputs), opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save_model(model, str(path))
    return path


def test_a_scalar_output_shows_as_dims_1_whatever_batches_and_in_a_sequence_model(tmp_path: Path) -> None:
    """A model with a scalar output cannot batch in Triton, so --batching (or a profile that batches) leaves it
    unbatched, its scalar [1]; a sequence model's scalar output left to auto-complete shows and answers [1] too.
    Both answered [] (and the first showed max_batch_size 32 with dims [])."""
    repo = tmp_path / "models"
    _scalar_out(repo / "sumout" / "1" / "model.onnx")
    _scalar_out(repo / "seq" / "1" / "model.onnx", sequence=True)
    (repo / "seq" / "config.pbtxt").write_text(
        'max_batch_size: 0\ninput [ { name: "x", data_type: TYPE_FP32, dims: [ 1 ] } ]\n'
        "sequence_batching { control_input [ { name: \"START\", control [ { kind: CONTROL_SEQUENCE_START, "
        "int32_false_true: [ 0, 1 ] } ] } ] }\n"
    )
    port = free_port()
    args = ["--model-repository", str(repo), "--grpc-port", "-1", "--batching", "--allow-model-control"]
    with cli_server(tmp_path / "home", args, port, tmp_path / "serve.log"):
        h = httpclient.InferenceServerClient(f"127.0.0.1:{port}")
        config = h.get_model_config("sumout")
        assert config["max_batch_size"] == 0 and "dynamic_batching" not in config
        assert {t["name"]: t["dims"] for t in config["output"]} == {"y": [-1], "s": [1]}
        i = httpclient.InferInput("x", [3], "FP32")
        i.set_data_from_numpy(np.array([1.0, 2.0, 3.5], np.float32))
        np.testing.assert_array_equal(h.infer("sumout", [i]).as_numpy("s"), np.array([6.5], np.float32))
        config = h.get_model_config("seq")
        assert [(t["name"], t["dims"], "reshape" in t) for t in config["output"]] == [("y", [1], False)]
        i = httpclient.InferInput("x", [1], "FP32")
        i.set_data_from_numpy(np.array([2.5], np.float32))
        answer = h.infer("seq", [i], sequence_id=7, sequence_start=True, sequence_end=True)
        np.testing.assert_array_equal(answer.as_numpy("y"), np.array([2.5], np.float32))
        h.load_model("seq", config=json.dumps(config))  # what GET config shows loads back unchanged
        assert h.get_model_config("seq") == config
        h.close()


def _digests(home: Path, name: str) -> dict[int, str]:
    store = Store.at(home)
    try:
        return {r.version: r.digest for r in store.models.list(name)}
    finally:
        store.close()


def test_a_version_file_rewritten_in_place_is_served_anew_as_triton_reloads_it(tmp_path: Path) -> None:
    # new weights written over 1/model.onnx (the usual way to ship a retrained model under the same version)
    # were refused: "already in the store with other bytes", at a load, at a poll and at every later start
    home, ones = tmp_path / "home", np.ones((1, 16), np.float32)
    with _served_repository(tmp_path, "--allow-model-control") as (repo, client):
        before = _digests(home, "plain")
        mlp_onnx(repo / "plain" / "5" / "model.onnx", seed=55)
        client.load_model("plain")
        got = _infer(client, "plain", "5")
        np.testing.assert_allclose(got, expected(repo / "plain" / "5" / "model.onnx", ones), rtol=1e-5, atol=1e-6)
        after = _digests(home, "plain")
        assert list(after) == [5] and after[5] != before[5]
        # new bytes that cannot be served fail the load: the old ones serve on, and the store holds them again
        mlp_onnx(repo / "plain" / "5" / "model.onnx", sizes=(17, 32, 4), seed=56)
        (repo / "plain" / "config.pbtxt").write_text('input [ { name: "x", data_type: TYPE_FP32, dims: [ 16 ] } ]')
        with pytest.raises(InferenceServerException, match="load failed for model 'plain'"):
            client.load_model("plain")
        np.testing.assert_array_equal(_infer(client, "plain", "5"), got)
        assert _digests(home, "plain") == after
        (repo / "plain" / "config.pbtxt").unlink()
    # a start reads the folder as it is now
    mlp_onnx(tmp_path / "models" / "plain" / "5" / "model.onnx", seed=57)
    port = free_port()
    args = ["--model-repository", str(tmp_path / "models"), "--grpc-port", "-1"]
    with cli_server(home, args, port, tmp_path / "serve2.log"):
        client = httpclient.InferenceServerClient(f"127.0.0.1:{port}")
        want = expected(tmp_path / "models" / "plain" / "5" / "model.onnx", ones)
        np.testing.assert_allclose(_infer(client, "plain"), want, rtol=1e-5, atol=1e-6)
    store = Store.at(home)
    try:
        [record] = store.models.list("plain")
        # the bytes it replaced are gone from the store's blobs; the ones served are there
        assert store.blobs.has(record.digest) and not store.blobs.has(after[5]) and not store.blobs.has(before[5])
    finally:
        store.close()


def test_a_version_registered_another_way_first_is_not_replaced_by_a_rewritten_file(tmp_path: Path) -> None:
    # a repository serving the bytes `polystack register` had put there marked the row as its own, and a rewrite
    # then replaced the user's row (its tags, its samples, its bytes)
    home = tmp_path / "home"
    root = _model(tmp_path / "models", "m")
    subprocess.run([sys.executable, "-m", "polystack", "--home", str(home), "register", str(root / "m" / "1" / "model.onnx"),
                    "--name", "m", "--tag", "owner=alice"], check=True, capture_output=True)  # fmt: skip
    with cli_server(home, ["--model-repository", str(root), "--grpc-port", "-1"], free_port(), tmp_path / "serve.log"):
        pass  # the same bytes: served as the user's row
    mlp_onnx(root / "m" / "1" / "model.onnx", seed=5)
    line = refused_at_start(tmp_path, ["--model-repository", str(root)])
    assert "m:1 is already in the store with other bytes" in line, line
    store = Store.at(home)
    try:
        [record] = store.models.list("m")
        assert record.tags == {"owner": "alice"} and store.blobs.has(record.digest)
    finally:
        store.close()


def test_a_polled_version_file_rewritten_in_place_is_reloaded(tmp_path: Path) -> None:
    ones = np.ones((1, 16), np.float32)
    with _served_repository(tmp_path, "--repository-poll-secs", "0.2") as (repo, client):
        old = _infer(client, "mlp", "1")
        mlp_onnx(repo / "mlp" / "1" / "model.onnx", seed=11)
        want = expected(repo / "mlp" / "1" / "model.onnx", ones)
        assert until(lambda: np.allclose(_infer(client, "mlp", "1"), want, rtol=1e-5, atol=1e-6))
        assert not np.allclose(old, want)
        assert _ready(client, "mlp", "3")
    assert "failed to load" not in (tmp_path / "serve.log").read_text()


def test_a_polled_model_whose_folder_comes_into_a_second_repository_is_unloaded_until_it_is_in_one(
    tmp_path: Path,
) -> None:
    """helper-103 (Triton's test_multiple_model_repository_polling): a served model's folder copied into a
    second repository kept serving the first one's; Triton's poll unloads it, and loads it once one holds it."""
    first, second = _model(tmp_path / "first", "m"), tmp_path / "second"
    second.mkdir()
    port = free_port()
    args = ["--model-repository", str(first), "--model-repository", str(second), "--repository-poll-secs", "0.2",
            "--grpc-port", "-1", "--strict-readiness", "false"]  # fmt: skip
    log = tmp_path / "serve.log"
    with cli_server(tmp_path / "home", args, port, log):
        client = httpclient.InferenceServerClient(f"127.0.0.1:{port}")
        assert client.is_model_ready("m", "1")
        shutil.copytree(first / "m", second / "m")
        assert until(lambda: not client.is_model_ready("m"))
        [m] = [e for e in client.get_model_repository_index() if e["name"] == "m"]
        assert m["state"] == "UNAVAILABLE" and "model appears in two or more repositories" in m["reason"], m
        x = httpclient.InferInput("x", [1, 16], "FP32")
        x.set_data_from_numpy(np.ones((1, 16), np.float32))
        with pytest.raises(InferenceServerException, match="model appears in two or more repositories"):
            client.infer("m", [x])
        shutil.rmtree(first / "m")
        assert until(lambda: client.is_model_ready("m", "1"))  # the second one's, alone now
        client.close()
    assert log.read_text().count("model appears in two or more repositories") == 1


def test_a_shape_refused_by_a_model_that_batches_carries_tritons_note_whatever_serves_it(tmp_path: Path) -> None:
    """helper-112: the NOTE tritonserver 2.51 adds to a shape refused by a batching model was missing where a config
    fixed a dim the model leaves open and set no dynamic batching (the engine's check ran first); it stays out of a
    model that does not batch."""
    from onnx import TensorProto
    from servekit import single_op

    io = 'input [ { name: "x", data_type: TYPE_FP32, dims: [ 3 ] } ]\noutput [ { name: "y", data_type: TYPE_FP32, dims: [ 3 ] } ]\n'
    configs = {
        "dyn": f"max_batch_size: 4\n{io}dynamic_batching {{ }}\n",
        "nodyn": f"max_batch_size: 4\n{io}",
        "zero": 'max_batch_size: 0\ninput [ { name: "x", data_type: TYPE_FP32, dims: [ -1, 3 ] } ]\n'
        'output [ { name: "y", data_type: TYPE_FP32, dims: [ -1, 3 ] } ]\n',
    }
    for name, config in configs.items():
        (tmp_path / "models" / name / "1").mkdir(parents=True)
        single_op(tmp_path / "models" / name / "1" / "model.onnx", "Neg", TensorProto.FLOAT, "w", "x", [("y", "Neg")])  # type: ignore[arg-type]
        (tmp_path / "models" / name / "config.pbtxt").write_text(config)
    port = free_port()
    args = ["--model-repository", str(tmp_path / "models"), "--grpc-port", "-1"]
    with cli_server(tmp_path / "home", args, port, tmp_path / "serve.log"):
        client = httpclient.InferenceServerClient(f"127.0.0.1:{port}")
        for name in configs:
            x = httpclient.InferInput("x", [1, 5], "FP32")
            x.set_data_from_numpy(np.ones((1, 5), np.float32))
            with pytest.raises(InferenceServerException, match="unexpected shape for input 'x'") as e:
                client.infer(name, [x])
            assert ("NOTE: Setting a non-zero max_batch_size" in e.value.message()) is (name != "zero"), name
            if name == "zero":  # Triton's words end ". " there (bench/triton_parity.py), then polystack's hint
                assert "Expected [-1,3], got [1,5]. (-1: any size)" in e.value.message(), e.value.message()
        client.close()


def test_a_model_folder_without_a_config_holding_a_model_py_beside_its_onnx_file_is_that_onnx_model(tmp_path: Path) -> None:
    from polystack.examples import mlp_onnx
    from polystack.server import model_repository
    from polystack.store import Store

    (tmp_path / "repo" / "m" / "1").mkdir(parents=True)
    mlp_onnx(tmp_path / "repo" / "m" / "1" / "model.onnx")
    (tmp_path / "repo" / "m" / "1" / "model.py").write_text("raise SystemExit('never imported')\n")  # its export script
    [model] = model_repository.register(Store.at(tmp_path / "home"), tmp_path / "repo", [])
    assert model.name == "m" and model.versions == (1,)  # served as the ONNX model (model.py is not imported)


def test_a_model_an_earlier_run_left_in_the_store_is_unknown_to_a_server_of_another_repository(tmp_path: Path) -> None:
    """helper-191 (L0_lifecycle, run twice on one --home): a server of a repository without model x answered a
    request naming x's version 503 / UNAVAILABLE "registered but not loaded" (a client may retry that for good) and
    404 "has no available versions" without one, for the x an earlier run registered; tritonserver knows its
    repositories' models alone: 404 / NOT_FOUND "is not found", as for a fresh --home."""
    first, second = tmp_path / "first", tmp_path / "second"
    (first / "x" / "1").mkdir(parents=True)
    mlp_onnx(first / "x" / "1" / "model.onnx", sizes=(16, 4), seed=3)
    second.mkdir()
    home = tmp_path / "home"
    for repo in (first, second):
        port, grpc_port = free_port(), free_port()
        args = ["--model-repository", str(repo), "--grpc-port", str(grpc_port)]
        with cli_server(home, args, port, tmp_path / f"{repo.name}.log"):
            client = httpclient.InferenceServerClient(f"127.0.0.1:{port}")
            if repo is first:
                assert client.is_model_ready("x")
                continue
            x = httpclient.InferInput("x", [1, 16], "FP32")
            x.set_data_from_numpy(np.ones((1, 16), np.float32))
            for version in ("", "1"):
                with pytest.raises(InferenceServerException, match="Request for unknown model: 'x' is not found") as e:
                    client.infer("x", [x], model_version=version)
                assert e.value.status() == "404"
                g = grpcclient.InferenceServerClient(f"127.0.0.1:{grpc_port}")
                gx = grpcclient.InferInput("x", [1, 16], "FP32")
                gx.set_data_from_numpy(np.ones((1, 16), np.float32))
                with pytest.raises(InferenceServerException, match="is not found") as e:
                    g.infer("x", [gx], model_version=version)
                assert e.value.status() == "StatusCode.NOT_FOUND"


def test_an_onnx_model_of_bfloat16_inputs_and_outputs_answers_tritonclients_bf16_requests(tmp_path: Path) -> None:
    """helper-220 (Triton's L0_backend_onnxruntime bfloat16 test): an ONNX model whose inputs and outputs are
    bfloat16 was refused at load, where Triton's ONNX Runtime backend serves it; tritonclient sends and reads BF16
    from float32 arrays, over HTTP and gRPC."""
    import onnx
    from onnx import TensorProto, helper

    nodes = [
        helper.make_node("Cast", ["a"], ["f"], to=TensorProto.FLOAT),
        helper.make_node("Add", ["f", "f"], ["twice"]),
        helper.make_node("Cast", ["twice"], ["b"], to=TensorProto.BFLOAT16),
    ]
    graph = helper.make_graph(nodes, "bf16", [helper.make_tensor_value_info("a", TensorProto.BFLOAT16, ["n", 4])],
                              [helper.make_tensor_value_info("b", TensorProto.BFLOAT16, ["n", 4])])  # fmt: skip
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    (tmp_path / "models" / "bf16" / "1").mkdir(parents=True)
    onnx.save_model(model, str(tmp_path / "models" / "bf16" / "1" / "model.onnx"))
    (tmp_path / "models" / "bf16" / "config.pbtxt").write_text(
        'platform: "onnxruntime_onnx"\nmax_batch_size: 8\n'
        'input [ { name: "a", data_type: TYPE_BF16, dims: [ 4 ] } ]\n'
        'output [ { name: "b", data_type: TYPE_BF16, dims: [ 4 ] } ]\n'
    )
    x = np.array([[1.5, -2.0, 3.25, 0.0]], np.float32)
    port, grpc_port = free_port(), free_port()
    args = ["--model-repository", str(tmp_path / "models"), "--grpc-port", str(grpc_port)]
    with (
        cli_server(tmp_path / "home", args, port, tmp_path / "log"),
        httpclient.InferenceServerClient(f"127.0.0.1:{port}") as client,
        grpcclient.InferenceServerClient(f"127.0.0.1:{grpc_port}") as rpc,
    ):
        a = httpclient.InferInput("a", [1, 4], "BF16")
        a.set_data_from_numpy(x)  # (tritonclient sends BF16 over HTTP as binary data alone)
        assert client.infer("bf16", [a]).as_numpy("b").tolist() == [[3.0, -4.0, 6.5, 0.0]]
        g = grpcclient.InferInput("a", [1, 4], "BF16")
        g.set_data_from_numpy(x)
        assert rpc.infer("bf16", [g]).as_numpy("b").tolist() == [[3.0, -4.0, 6.5, 0.0]]
