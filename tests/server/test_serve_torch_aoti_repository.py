"""`polystack serve --model-repository DIR --allow-torch-aoti-models` with AOTInductor packages for Triton's PyTorch
backend (``platform: "torch_aoti"``, ``1/model.pt2``): answers checked against the modules they were compiled from,
over HTTP and gRPC, batched requests each answered with their own rows; a folder with a model.pt2 and no platform
is one, as Triton's auto-complete finds it; a load's files take a package; without the flag, or with a library to
load, the server refuses. A real server process and tritonclient."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from servekit import cli_server, free_port, refused_at_start, same_config_both_ways
from tritonclient.utils import InferenceServerException

MLP = """
platform: "torch_aoti"
max_batch_size: 16
input [ { name: "INPUT__0", data_type: TYPE_FP32, dims: [ 4 ] } ]
output [ { name: "OUTPUT__0", data_type: TYPE_FP32, dims: [ 3 ] } ]
dynamic_batching { max_queue_delay_microseconds: 20000 }
"""
STRUCTURED = """
max_batch_size: 8
input [
  { name: "ARGS[0]", data_type: TYPE_FP32, dims: [ 4 ] }, { name: "ARGS[1][0]", data_type: TYPE_FP32, dims: [ 4 ] },
  { name: "ARGS[1][1]", data_type: TYPE_FP32, dims: [ 2 ] }, { name: "KWARGS[c]", data_type: TYPE_FP32, dims: [ 4 ] }
]
output [ { name: "RESULT[sum]", data_type: TYPE_FP32, dims: [ 4 ] }, { name: "RESULT[parts][1]", data_type: TYPE_INT64, dims: [ 4 ] } ]
"""


def _folder(root: Path, name: str, package: Path, config: str) -> Path:
    (root / name / "1").mkdir(parents=True)
    (root / name / "config.pbtxt").write_text(config)
    shutil.copy(package, root / name / "1" / "model.pt2")
    return root / name / "1" / "model.pt2"


def _input(client: object, name: str, value: np.ndarray) -> Any:
    module = grpcclient if isinstance(client, grpcclient.InferenceServerClient) else httpclient
    made = module.InferInput(name, list(value.shape), "FP32")
    made.set_data_from_numpy(value)
    return made


def test_aoti_packages_answer_as_their_modules_over_http_and_grpc(aoti: Any, tmp_path: Path) -> None:
    root = tmp_path / "models"
    _folder(root, "mlp", aoti.mlp, MLP)
    _folder(root, "structured", aoti.structured, STRUCTURED)  # no platform: a model.pt2 alone is a package
    (root / "exported" / "1").mkdir(parents=True)  # a torch.export program named model.pt2 is served as one
    torch.export.save(
        torch.export.export(aoti.mlp_module, (torch.randn(2, 4),)), str(root / "exported" / "1" / "model.pt2")
    )
    port, grpc_port = free_port(), free_port()
    args = ["--model-repository", str(root), "--grpc-port", str(grpc_port), "--allow-torch-aoti-models"]
    rng = np.random.default_rng(0)
    with cli_server(tmp_path / "home", args, port, tmp_path / "log"):
        http = httpclient.InferenceServerClient(f"127.0.0.1:{port}", concurrency=8)
        grpc = grpcclient.InferenceServerClient(f"127.0.0.1:{grpc_port}")
        for client in (http, grpc):
            a, p0, p1, c = (rng.standard_normal((3, n)).astype(np.float32) for n in (4, 4, 2, 4))
            names = ("ARGS[0]", "ARGS[1][0]", "ARGS[1][1]", "KWARGS[c]")
            out = client.infer("structured", [_input(client, n, v) for n, v in zip(names, (a, p0, p1, c), strict=True)])
            want = aoti.structured_module(
                torch.from_numpy(a), (torch.from_numpy(p0), torch.from_numpy(p1)), c=torch.from_numpy(c)
            )
            np.testing.assert_allclose(out.as_numpy("RESULT[sum]"), want["sum"].detach().numpy(), rtol=1e-5, atol=1e-6)
            np.testing.assert_array_equal(out.as_numpy("RESULT[parts][1]"), want["parts"][1].numpy())
        x2 = rng.standard_normal((2, 4)).astype(np.float32)
        exported = http.get_model_metadata("exported")
        assert exported["platform"] != "torch_aoti", exported
        out = http.infer("exported", [_input(http, exported["inputs"][0]["name"], x2)]).as_numpy(
            exported["outputs"][0]["name"]
        )
        np.testing.assert_allclose(out, aoti.mlp_module(torch.from_numpy(x2)).detach().numpy(), rtol=1e-5, atol=1e-6)
        # requests batched together each get their own rows (Triton's backend hands each the whole batch's)
        xs = [rng.standard_normal((i % 3 + 1, 4)).astype(np.float32) for i in range(24)]
        sent = [http.async_infer("mlp", [_input(http, "INPUT__0", x)]) for x in xs]  # 8 at once
        answers = [s.get_result().as_numpy("OUTPUT__0") for s in sent]
        for x, got in zip(xs, answers, strict=True):
            np.testing.assert_allclose(got, aoti.mlp_module(torch.from_numpy(x)).detach().numpy(), rtol=1e-5, atol=1e-6)
        stats = http.get_inference_statistics("mlp")["model_stats"][0]
        assert stats["inference_count"] == sum(len(x) for x in xs) and stats["execution_count"] < len(xs)

        assert http.get_model_metadata("mlp")["platform"] == "torch_aoti"
        for name in ("mlp", "structured"):
            config = same_config_both_ways(http, grpc, name)
            assert (config["platform"], config["backend"], config["default_model_filename"]) == (
                "torch_aoti",
                "pytorch",
                "model.pt2",
            )
        with pytest.raises(InferenceServerException, match="batch-size must be <= 16"):
            http.infer("mlp", [_input(http, "INPUT__0", np.ones((17, 4), np.float32))])  # over the config's 16


def test_without_the_flag_a_package_is_refused_before_torch_reads_it(tmp_path: Path) -> None:
    """A package's library runs as native code in the server: served only when told to, from a repository or a
    load's files alike. Its bytes are not even read: these are not a package."""
    root = tmp_path / "models"
    (root / "m" / "1").mkdir(parents=True)
    (root / "m" / "config.pbtxt").write_text(MLP)
    (root / "m" / "1" / "model.pt2").write_bytes(b"not read")
    line = refused_at_start(tmp_path, ["--model-repository", str(root)])
    assert "'m'" in line and "start the server with --allow-torch-aoti-models" in line, line
    (tmp_path / "empty").mkdir()
    port = free_port()
    args = ["--model-repository", str(tmp_path / "empty"), "--grpc-port", "-1", "--model-control-mode", "explicit"]
    with cli_server(tmp_path / "home2", args, port, tmp_path / "log"):
        http = httpclient.InferenceServerClient(f"127.0.0.1:{port}")
        config = json.dumps({"platform": "torch_aoti", "max_batch_size": 8,
                             "input": [{"name": "INPUT__0", "data_type": "TYPE_FP32", "dims": [4]}],
                             "output": [{"name": "OUTPUT__0", "data_type": "TYPE_FP32", "dims": [3]}]})  # fmt: skip
        with pytest.raises(InferenceServerException, match="--allow-torch-aoti-models"):
            http.load_model("uploaded", config=config, files={"file:1/model.pt2": b"not read"})


def test_a_loads_files_take_a_package_and_a_library_to_load_is_refused(aoti: Any, tmp_path: Path) -> None:
    _folder(tmp_path / "empty", "mlp", aoti.mlp, MLP)  # not loaded: model control is explicit
    port = free_port()
    args = ["--model-repository", str(tmp_path / "empty"), "--grpc-port", "-1", "--model-control-mode", "explicit",
            "--allow-torch-aoti-models"]  # fmt: skip
    config = {"max_batch_size": 8, "parameters": {"INFERENCE_MODE": {"string_value": "off"}},
              "input": [{"name": "INPUT__0", "data_type": "TYPE_FP32", "dims": [4]}],
              "output": [{"name": "OUTPUT__0", "data_type": "TYPE_FP32", "dims": [3]}]}  # fmt: skip
    with cli_server(tmp_path / "home", args, port, tmp_path / "log"):
        http = httpclient.InferenceServerClient(f"127.0.0.1:{port}")
        http.load_model("uploaded", config=json.dumps(config), files={"file:1/model.pt2": aoti.mlp.read_bytes()})
        x = np.ones((2, 4), np.float32)
        got = http.infer("uploaded", [_input(http, "INPUT__0", x)]).as_numpy("OUTPUT__0")
        np.testing.assert_allclose(got, aoti.mlp_module(torch.from_numpy(x)).detach().numpy(), rtol=1e-5, atol=1e-6)
        assert http.get_model_config("uploaded")["platform"] == "torch_aoti"
        with pytest.raises(InferenceServerException, match="compiled for at most 64 rows"):
            http.load_model("mlp", config=json.dumps({**config, "platform": "torch_aoti", "max_batch_size": 128}))
        # a load's config replaces the folder's whole, as in Triton: the package is bound to it again
        renamed = {**config, "platform": "torch_aoti", "input": [{**config["input"][0], "name": "ARGS[0]"}],
                   "output": [{**config["output"][0], "name": "RESULT"}]}  # fmt: skip
        http.load_model("mlp", config=json.dumps(renamed))
        got = http.infer("mlp", [_input(http, "ARGS[0]", x)]).as_numpy("RESULT")
        np.testing.assert_allclose(got, aoti.mlp_module(torch.from_numpy(x)).detach().numpy(), rtol=1e-5, atol=1e-6)
        library = {**config, "parameters": {"MODEL_INIT_LIBRARY": {"string_value": "/tmp/init.so"}}}
        with pytest.raises(InferenceServerException, match="parameter MODEL_INIT_LIBRARY names a library"):
            http.load_model("hooked", config=json.dumps(library), files={"file:1/model.pt2": aoti.mlp.read_bytes()})
        with pytest.raises(InferenceServerException, match="not an AOTInductor package"):
            http.load_model(
                "bad", config=json.dumps({**config, "platform": "torch_aoti"}), files={"file:1/model.pt2": b"junk"}
            )
        assert http.is_model_ready("uploaded")


def test_a_package_named_as_torchscripts_is_told_its_platform(aoti: Any, tmp_path: Path) -> None:
    """``backend: "pytorch"`` alone is TorchScript's, as in Triton, however the file is named."""
    root = tmp_path / "models"
    _folder(
        root,
        "m",
        aoti.mlp,
        MLP.replace('platform: "torch_aoti"', 'backend: "pytorch"\ndefault_model_filename: "model.pt2"'),
    )
    line = refused_at_start(tmp_path, ["--model-repository", str(root), "--allow-torch-aoti-models"])
    assert "is an AOTInductor package" in line and 'platform "torch_aoti"' in line, line
