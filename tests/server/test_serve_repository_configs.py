"""tritonserver's flags for how repository folders' configs are read, taken by `polystack serve`:
``--model-config-name`` (configs/<name>.pbtxt) and ``--disable-auto-complete-config`` (with its deprecated
``--strict-model-config``); a real server process, the real tritonclient."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import tritonclient.http as httpclient
from servekit import cli_server, free_port, refused_at_start

from polystack.examples import mlp_onnx

IO = (
    'input [ { name: "x", data_type: TYPE_FP32, dims: [ 16 ] } ]\n'
    'output [ { name: "y", data_type: TYPE_FP32, dims: [ 4 ] } ]\n'
)


def _folder(root: Path, name: str, config: str | None = None, **named: str) -> Path:
    (root / name / "1").mkdir(parents=True)
    mlp_onnx(root / name / "1" / "model.onnx")
    if config is not None:
        (root / name / "config.pbtxt").write_text(config)
    for config_name, text in named.items():
        (root / name / "configs").mkdir(exist_ok=True)
        (root / name / "configs" / f"{config_name}.pbtxt").write_text(text)
    return root


def test_model_config_name_reads_the_folders_named_config_where_it_has_one(tmp_path: Path) -> None:
    repo = _folder(tmp_path / "models", "a", "max_batch_size: 8\n" + IO, h100="max_batch_size: 2\n" + IO)
    _folder(repo, "b", "max_batch_size: 4\n" + IO)  # no configs/h100.pbtxt: its config.pbtxt
    port = free_port()
    args = ["--model-repository", str(repo), "--model-config-name", "h100", "--grpc-port", "-1"]
    with cli_server(tmp_path / "home", args, port, tmp_path / "serve.log"):
        client = httpclient.InferenceServerClient(f"127.0.0.1:{port}")
        assert client.get_model_config("a")["max_batch_size"] == 2
        assert client.get_model_config("b")["max_batch_size"] == 4
        client.close()
    for bad in ("", "../x", "a/b"):
        assert "--model-config-name takes the name of a file" in refused_at_start(tmp_path, ["--model-config-name", bad])
    # a named config's typo names that file, not the folder's config.pbtxt (helper-269)
    typo = _folder(tmp_path / "typo", "c", "max_batch_size: 8\n" + IO, prod="instance_group [ { kind: KIND_CPUU } ]")
    line = refused_at_start(tmp_path, ["--model-repository", str(typo), "--model-config-name", "prod"])
    assert "configs/prod.pbtxt: not a Triton config.pbtxt (protobuf text format): line 1" in line, line


def test_disable_auto_complete_config_needs_configs_listing_the_tensors(tmp_path: Path) -> None:
    """Triton's strict model config: no config is completed from the model; one without max_batch_size is 0."""
    repo = _folder(tmp_path / "models", "a", IO.replace("dims: [ 16 ]", "dims: [ -1, 16 ]").replace(
        "dims: [ 4 ]", "dims: [ -1, 4 ]"))  # fmt: skip
    port = free_port()
    for flags in (["--disable-auto-complete-config"], ["--strict-model-config=true"]):
        args = ["--model-repository", str(repo), "--grpc-port", "-1", *flags]
        with cli_server(tmp_path / "home", args, port, tmp_path / "serve.log"):
            client = httpclient.InferenceServerClient(f"127.0.0.1:{port}")
            config = client.get_model_config("a")
            assert config.get("max_batch_size", 0) == 0 and "dynamic_batching" not in config, config
            x = httpclient.InferInput("x", [1, 16], "FP32")
            x.set_data_from_numpy(np.ones((1, 16), np.float32))
            assert client.infer("a", [x]).as_numpy("y").shape == (1, 4)
            client.close()
    assert "'--strict-model-config' has been deprecated" in (tmp_path / "serve.log").read_text()
    # without the flag, Triton's auto-complete batches the same folder without a config (4, dynamic batching)
    bare = _folder(tmp_path / "bare", "a")
    with cli_server(tmp_path / "home2", ["--model-repository", str(bare), "--grpc-port", "-1"], port,
                    tmp_path / "serve2.log"):  # fmt: skip
        assert httpclient.InferenceServerClient(f"127.0.0.1:{port}").get_model_config("a")["max_batch_size"] == 4
    for folder, words in (
        (bare, "it has no config.pbtxt, which --disable-auto-complete-config (Triton's strict model config) needs"),
        (_folder(tmp_path / "no_inputs", "a", 'output [ { name: "y", data_type: TYPE_FP32, dims: [ -1, 4 ] } ]'),
         "unable to load model 'a', configuration expects 0 inputs, model provides 1"),
        (_folder(tmp_path / "no_outputs", "a", 'input [ { name: "x", data_type: TYPE_FP32, dims: [ -1, 16 ] } ]'),
         "lists no outputs, which --disable-auto-complete-config leaves to it"),
        (_folder(tmp_path / "untyped", "a", IO.replace("data_type: TYPE_FP32, dims: [ 16 ]", "dims: [ 16 ]")),
         "model input 'x' must specify 'data_type' for a"),  # Triton's words (helper-195); polystack filled it in
    ):  # fmt: skip
        line = refused_at_start(tmp_path, ["--model-repository", str(folder), "--disable-auto-complete-config"])
        assert words in line, line
    assert "--strict-model-config takes 1 or 0" in refused_at_start(tmp_path, ["--strict-model-config", "yes"])


def test_get_config_shows_the_version_policy_as_the_folders_config_writes_it(tmp_path: Path) -> None:
    """helper-103 (Triton's L0_custom_model_config): GET config rebuilt the policy from the versions served,
    specific [3] showing as latest 1 and all as latest 2; Triton shows it as written."""
    repo = tmp_path / "models"
    for name, policy in (("spec", "specific { versions: [ 3 ] }"), ("every", "all { }")):
        for version in (1, 3):
            (repo / name / str(version)).mkdir(parents=True)
            mlp_onnx(repo / name / str(version) / "model.onnx")
        (repo / name / "config.pbtxt").write_text(f"max_batch_size: 8\nversion_policy: {{ {policy} }}\n" + IO)
    port = free_port()
    with cli_server(tmp_path / "home", ["--model-repository", str(repo), "--grpc-port", "-1"], port,
                    tmp_path / "serve.log"):  # fmt: skip
        client = httpclient.InferenceServerClient(f"127.0.0.1:{port}")
        assert client.get_model_config("spec")["version_policy"] == {"specific": {"versions": [3]}}
        assert client.get_model_config("every")["version_policy"] == {"all": {}}
        client.close()
