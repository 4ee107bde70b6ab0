"""tritonserver's model control flags taken by `polystack serve`: ``--model-control-mode none|poll|explicit`` and
``--load-model``, so that a launch script written for Triton starts polystack as it started Triton: a real
server process, the real tritonclient."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tritonclient.http as httpclient
from servekit import cli_server, free_port, refused_at_start, until
from tritonclient.utils import InferenceServerException

from polystack.examples import mlp_onnx
from polystack.store import Store

PIPE = (
    'platform: "ensemble"\nmax_batch_size: 4\ninput [ { name: "IN", data_type: TYPE_FP32, dims: [ 16 ] } ]\n'
    'output [ { name: "OUT", data_type: TYPE_FP32, dims: [ 4 ] } ]\nensemble_scheduling { step [ { model_name: '
    '"inner", model_version: -1, input_map { key: "x" value: "IN" }, output_map { key: "y" value: "OUT" } } ] }\n'
)


def _repository(root: Path) -> Path:
    """``a`` and ``b`` (an MLP each, version 1), ``inner`` (the model the ensemble ``pipe`` runs), ``pipe``."""
    for name in ("a", "b", "inner"):
        (root / name / "1").mkdir(parents=True)
        mlp_onnx(root / name / "1" / "model.onnx")
    (root / "pipe" / "1").mkdir(parents=True)
    (root / "pipe" / "config.pbtxt").write_text(PIPE)
    return root


def _registered(home: Path) -> list[str]:
    store = Store.at(home)
    try:
        return sorted({r.name for r in store.models.list()})
    finally:
        store.close()


def _ready(client: httpclient.InferenceServerClient) -> list[str]:
    return sorted(m["name"] for m in client.get_model_repository_index() if m.get("state") == "READY")


def _serve(tmp_path: Path, args: list[str], log: str = "serve.log") -> tuple[httpclient.InferenceServerClient, Any]:
    port = free_port()
    server = cli_server(tmp_path / "home", ["--grpc-port", "-1", *args], port, tmp_path / log)
    return httpclient.InferenceServerClient(f"127.0.0.1:{port}"), server


def test_explicit_mode_serves_at_start_only_what_load_model_names(tmp_path: Path) -> None:
    """Triton's explicit mode loads the --load-model models alone (an ensemble's with the models it runs), the
    other folders listed by name and loaded by a load; polystack served every folder, and took neither flag."""
    repo = _repository(tmp_path / "models")
    client, server = _serve(tmp_path, ["--model-repository", str(repo), "--model-control-mode=EXPLICIT",
                                       "--load-model", "a", "--load-model=pipe"])  # fmt: skip
    with server:
        assert _ready(client) == ["a", "inner", "pipe"]
        index = client.get_model_repository_index()
        assert {"name": "b"} in index, index  # by its name alone: Triton's index of a model never loaded
        i = httpclient.InferInput("IN", [1, 16], "FP32")
        i.set_data_from_numpy(np.ones((1, 16), np.float32))
        assert client.infer("pipe", [i]).as_numpy("OUT").shape == (1, 4)
        assert _registered(tmp_path / "home") == ["a", "inner"]  # b's folder is read when a load names it
        client.load_model("b")  # explicit: loads and unloads allowed
        assert client.is_model_ready("b", "1") and _registered(tmp_path / "home") == ["a", "b", "inner"]
        client.unload_model("a")
        assert not client.is_model_ready("a")
        client.close()
    log = (tmp_path / "serve.log").read_text()
    [serving] = [json.loads(line) for line in log.splitlines() if '"serving"' in line]
    assert serving["models"] == ["a:1", "inner:1"] and serving["ensembles"] == ["pipe:1"], serving


def test_explicit_mode_without_load_model_starts_with_no_model_and_star_serves_all(tmp_path: Path) -> None:
    home, repo = tmp_path / "home", _repository(tmp_path / "models")
    client, server = _serve(tmp_path, ["--model-repository", str(repo), "--model-control-mode", "explicit"])
    with server:
        assert client.is_server_ready() and _ready(client) == []
        assert client.get_model_repository_index() == [{"name": n} for n in ("a", "b", "inner", "pipe")]
        client.load_model("pipe")  # an ensemble's load loads the models it runs, as Triton's does
        assert _ready(client) == ["inner", "pipe"]
        client.close()
    client, server = _serve(tmp_path, ["--model-repository", str(repo), "--model-control-mode", "explicit",
                                       "--load-model", "*"], "serve2.log")  # fmt: skip
    with server:
        assert _ready(client) == ["a", "b", "inner", "pipe"]
        client.close()
    # without a repository the store is the repository: none served at start, --load-model names what is
    other = mlp_onnx(tmp_path / "other.onnx", seed=3)
    subprocess.run([sys.executable, "-m", "polystack", "--home", str(home), "register", str(other), "--name", "solo"],
                   check=True, capture_output=True)  # fmt: skip
    client, server = _serve(tmp_path, ["--model-control-mode", "explicit"], "serve3.log")
    with server:
        assert _ready(client) == [] and {"name": "solo"} in client.get_model_repository_index()
        client.load_model("solo")
        assert client.is_model_ready("solo")
        client.close()
    client, server = _serve(tmp_path, ["--model-control-mode", "explicit", "--load-model", "solo"], "serve4.log")
    with server:
        assert _ready(client) == ["solo"]
        client.close()
    line = refused_at_start(tmp_path, ["--model-control-mode", "explicit", "--load-model", "nope", "--grpc-port", "-1"])
    assert "no model named 'nope'" in line, line


def test_poll_and_none_modes_are_polystacks_polling_and_default(tmp_path: Path) -> None:
    repo = _repository(tmp_path / "models")
    args = ["--model-repository", str(repo), "--model-control-mode", "poll", "--repository-poll-secs", "0.2"]
    client, server = _serve(tmp_path, args)
    with server:
        assert _ready(client) == ["a", "b", "inner", "pipe"]
        (repo / "c" / "1").mkdir(parents=True)
        mlp_onnx(repo / "c" / "1" / "model.onnx")
        assert until(lambda: client.is_model_ready("c", "1"))
        # a folder gone and a version gone: said in the repository's words, not the store's (helper-259: "it is
        # registered, version 1 the latest, but not loaded; load it first", a load refused in poll mode, and "b
        # has no version 1; it has versions [2]" with b/1 on disk)
        (repo / "b" / "2").mkdir()
        mlp_onnx(repo / "b" / "2" / "model.onnx")
        (repo / "b" / "config.pbtxt").write_text("version_policy: { specific: { versions: [2] } }\n")
        shutil.rmtree(repo / "c")
        assert until(lambda: not client.is_model_ready("c") and not client.is_model_ready("b", "1"))
        x = httpclient.InferInput("x", [1, 16], "FP32")
        x.set_data_from_numpy(np.ones((1, 16), np.float32))
        for name, version, said in [
            ("c", "", "'c' has no available versions (none is loaded now: unloaded, or its folder left the"),
            ("b", "1", "'b' version 1 is not at ready state; the versions served are 2"),
            ("c", "1", "'c' version 1 is not at ready state (none is loaded now: unloaded, or its folder left"),
        ]:
            with pytest.raises(InferenceServerException, match=re.escape(said)):
                client.infer(name, [x], model_version=version)
        client.close()
    # none: what the start names, no loads; a poll interval outside poll mode ignored, as Triton ignores it
    args = ["--model-repository", str(repo), "--model-control-mode", "none", "--repository-poll-secs", "0.2"]
    client, server = _serve(tmp_path, args, "serve2.log")
    with server:
        assert _ready(client) == ["a", "b", "inner", "pipe"]  # c's folder went above
        (repo / "d" / "1").mkdir(parents=True)
        mlp_onnx(repo / "d" / "1" / "model.onnx")
        with pytest.raises(InferenceServerException, match="not allowed"):
            client.load_model("d")
        client.close()
    assert (
        "polls the repository only in --model-control-mode poll, not none: ignored"
        in (tmp_path / "serve2.log").read_text()
    )


def test_model_control_flags_that_cannot_work_exit_2_in_tritons_words(tmp_path: Path) -> None:
    repo = _repository(tmp_path / "models")
    for args, words in (
        (["--load-model", "a"], "Use of '--load-model' requires setting '--model-control-mode=explicit' as well"),
        (["--model-control-mode", "poll", "--load-model", "a"], "requires setting '--model-control-mode=explicit'"),
        (["--model-control-mode", "sometimes"], "invalid argument for --model-control-mode: 'sometimes'; give none"),
        (["--model-control-mode", "poll"], "polls the --model-repository folders: give one"),
        (["--model-control-mode", "none", "--allow-model-control"], "is --model-control-mode explicit, not none"),
        (["--model-control-mode", "explicit", "--load-model", ""], "takes a model name (or * for all)"),
        (["--model-control-mode", "explicit", "--load-model", "*", "--load-model", "a"],
         "Wildcard model name '*' must be the ONLY startup model if specified at all"),
        (["--model-control-mode", "explicit", "--engine", "ray"], "--model-control-mode explicit would load"),
        (["--model-repository", str(repo), "--model-control-mode", "explicit", "--load-model", "a", "a"],
         "model 'a' is in --model-repository"),
    ):  # fmt: skip
        assert words in refused_at_start(tmp_path, args), args


def test_explicit_mode_over_a_repository_reads_its_folders_alone_as_triton_does(tmp_path: Path) -> None:
    """helper-101: explicit mode fell back to the store (a model registered another way, a folder's earlier
    versions), serving what the repository does not hold; and refused a folder in two repositories that no
    one named, and a repository given twice."""
    home, repo = tmp_path / "home", _repository(tmp_path / "models")
    other = mlp_onnx(tmp_path / "other.onnx", seed=3)
    subprocess.run([sys.executable, "-m", "polystack", "--home", str(home), "register", str(other), "--name", "solo"],
                   check=True, capture_output=True)  # fmt: skip
    second = tmp_path / "second"
    (second / "b" / "1").mkdir(parents=True)  # b in both repositories: refused only where it is read
    mlp_onnx(second / "b" / "1" / "model.onnx")
    args = ["--model-repository", str(repo), "--model-repository", str(repo), "--model-repository", str(second),
            "--model-control-mode", "explicit", "--load-model", "a"]  # fmt: skip
    client, server = _serve(tmp_path, args)
    with server:
        assert _ready(client) == ["a"]
        index = client.get_model_repository_index()
        assert "solo" not in {m["name"] for m in index}, index  # the store's: not the repository's
        for name in ("solo", "a:1"):
            with pytest.raises(InferenceServerException, match="failed to poll from model repository") as e:
                client.load_model(name)
            assert e.value.status() == "500"  # Triton's code for a load it cannot poll (tritonserver 2.51)
        with pytest.raises(
            InferenceServerException, match=r"model appears in two or more repositories: 'b' is in .* keep it in one"
        ) as e:
            client.load_model("b")
        assert e.value.status() == "500" and "failed to poll from model repository" in e.value.message()
        client.load_model("inner")
        assert _ready(client) == ["a", "inner"]
        client.close()
    for name, words in (("solo", "model not found in any model repository"), ("a:1", "a version is not a name"),
                        ("b", "keep it in one")):  # fmt: skip
        line = refused_at_start(tmp_path, [*args[:-1], name, "--grpc-port", "-1"])
        assert words in line, line
    # --exit-on-error false: logged, and the others served
    client, server = _serve(tmp_path, [*args, "--load-model", "solo", "--exit-on-error=false"], "serve2.log")
    with server:
        assert _ready(client) == ["a"]
        client.close()
    assert "model not found in any model repository" in (tmp_path / "serve2.log").read_text()


def test_loads_triton_cannot_poll_are_500_and_an_unknown_load_parameter_is_refused(tmp_path: Path) -> None:
    """tritonserver 2.51 (helper-107, -108): a load whose model it cannot read answers INTERNAL, 500, in its words,
    where polystack answered 400; and a load parameter it does not know is refused, where polystack loaded the
    folder's config (a misspelt config= went unnoticed)."""
    import urllib.error
    import urllib.request

    import grpc as grpclib

    from polystack.protocol.grpc_gen import inference_pb2 as pb
    from polystack.protocol.grpc_gen import inference_pb2_grpc as pb_grpc

    repo = _repository(tmp_path / "models")
    (repo / "bad" / "1").mkdir(parents=True)
    (repo / "bad" / "config.pbtxt").write_text("max_batch_size: [[[")
    port, gport = free_port(), free_port()
    args = ["--model-repository", str(repo), "--model-control-mode", "explicit", "--grpc-port", str(gport)]
    client = httpclient.InferenceServerClient(f"127.0.0.1:{port}")
    with cli_server(tmp_path / "home", args, port, tmp_path / "serve.log"):
        for name, config in (("ghost", None), ("bad", None), ("a", "{not json")):
            with pytest.raises(InferenceServerException) as e:
                client.load_model(name, config=config)
            assert e.value.status() == "500", e.value
            assert e.value.message().startswith(f"failed to load '{name}', failed to poll from model repository")
        load = urllib.request.Request(f"http://127.0.0.1:{port}/v2/repository/models/a/load", method="POST",
                                      data=json.dumps({"parameters": {"confg": "{}"}}).encode())  # fmt: skip
        with pytest.raises(urllib.error.HTTPError) as h:
            urllib.request.urlopen(load)
        assert h.value.code == 400
        assert json.loads(h.value.read())["error"].startswith("unrecognized load parameter 'confg'.")
        assert _ready(client) == []  # refused before anything loaded
        for action in ("load", "unload"):  # answered with an empty body, as Triton answers (helper-108)
            done = urllib.request.Request(f"http://127.0.0.1:{port}/v2/repository/models/a/{action}", method="POST",
                                          data=b"{}")  # fmt: skip
            with urllib.request.urlopen(done) as answer:
                assert (answer.status, answer.read(), answer.headers["content-length"]) == (200, b"", "0")
        with grpclib.insecure_channel(f"127.0.0.1:{gport}") as channel:
            stub = pb_grpc.GRPCInferenceServiceStub(channel)
            request = pb.RepositoryModelLoadRequest(model_name="a")
            request.parameters["confg"].string_param = "{}"
            with pytest.raises(grpclib.RpcError) as r:
                stub.RepositoryModelLoad(request)
            assert r.value.code() == grpclib.StatusCode.INVALID_ARGUMENT
            assert "unrecognized load parameter 'confg'" in (r.value.details() or "")
            with pytest.raises(grpclib.RpcError) as r:
                stub.RepositoryModelLoad(pb.RepositoryModelLoadRequest(model_name="ghost"))
            assert r.value.code() == grpclib.StatusCode.INTERNAL
        assert client.is_server_live()
        client.close()


def test_explicit_mode_loads_an_ensemble_again_once_its_model_is_loaded_again(tmp_path: Path) -> None:
    """tritonserver 2.51 (helper-108): the unload of an ensemble's model unloads the ensemble, and a load of that
    model brings it back; polystack left it unloaded until loaded by name. One unloaded by name stays unloaded."""
    repo = _repository(tmp_path / "models")
    client, server = _serve(tmp_path, ["--model-repository", str(repo), "--model-control-mode", "explicit",
                                       "--load-model", "pipe"])  # fmt: skip
    i = httpclient.InferInput("IN", [1, 16], "FP32")
    i.set_data_from_numpy(np.ones((1, 16), np.float32))
    with server:
        assert _ready(client) == ["inner", "pipe"]
        client.unload_model("inner")
        assert _ready(client) == []
        client.load_model("a")  # another model: pipe still waits for inner
        assert _ready(client) == ["a"]
        client.load_model("inner")
        assert _ready(client) == ["a", "inner", "pipe"]
        assert client.infer("pipe", [i]).as_numpy("OUT").shape == (1, 4)
        client.unload_model("inner")
        client.unload_model("pipe")  # by name: it no longer waits for inner
        client.load_model("inner")
        assert _ready(client) == ["a", "inner"]
        # the config of the ensemble's last load comes back with it, as that load's config stays in force
        pipe = {"platform": "ensemble", "max_batch_size": 2,
                "input": [{"name": "IN", "data_type": "TYPE_FP32", "dims": [16]}],
                "output": [{"name": "OUT", "data_type": "TYPE_FP32", "dims": [4]}],
                "ensemble_scheduling": {"step": [{"model_name": "inner", "model_version": -1,
                                                  "input_map": {"x": "IN"}, "output_map": {"y": "OUT"}}]}}  # fmt: skip
        client.load_model("pipe", config=json.dumps(pipe))
        client.unload_model("inner")
        client.load_model("inner")
        assert client.get_model_config("pipe")["max_batch_size"] == 2
        client.close()


def test_a_load_without_a_config_keeps_the_last_loads_config_while_the_folder_is_unchanged(tmp_path: Path) -> None:
    """tritonserver 2.51 (helper-108): a load without a config, after one with a config, finds the folder unmodified
    since and does nothing, the config in force; polystack read the folder's config again. A folder changed since
    is read again, its config with it."""
    root = tmp_path / "models"
    for v in (1, 2):
        (root / "vall" / str(v)).mkdir(parents=True)
        mlp_onnx(root / "vall" / str(v) / "model.onnx", seed=v)
    (root / "vall" / "config.pbtxt").write_text("version_policy: { all: {} }\n")
    client, server = _serve(tmp_path, ["--model-repository", str(root), "--model-control-mode", "explicit",
                                       "--load-model", "vall"])  # fmt: skip

    def versions() -> list[str]:
        return sorted(m["version"] for m in client.get_model_repository_index() if m.get("state") == "READY")

    with server:
        assert versions() == ["1", "2"]
        client.load_model("vall", config=json.dumps({"version_policy": {"specific": {"versions": [1]}}}))
        assert versions() == ["1"]
        client.load_model("vall")
        assert versions() == ["1"]  # the folder is as it was: the config stays in force
        (root / "vall" / "3").mkdir()
        mlp_onnx(root / "vall" / "3" / "model.onnx", seed=3)
        client.load_model("vall")
        assert versions() == ["1", "2", "3"]  # changed since: read again, its own policy
        client.load_model("vall", config=json.dumps({"version_policy": {"specific": {"versions": [2]}}}))
        client.unload_model("vall")
        client.load_model("vall")  # an unload ends the config's hold
        assert versions() == ["1", "2", "3"]
        # so does a load of files (helper-110's review: the files' model stayed after a load without a config)
        client.load_model("vall", config=json.dumps({"version_policy": {"specific": {"versions": [1]}}}))
        other = mlp_onnx(tmp_path / "other.onnx", seed=99)
        client.load_model("vall", config=json.dumps({"max_batch_size": 0}), files={"file:1/model.onnx": other.read_bytes()})
        client.load_model("vall")
        assert versions() == ["1", "2", "3"]
        client.close()


def test_an_ensemble_whose_step_no_folder_holds_fails_its_load_as_tritons_400(tmp_path: Path) -> None:
    """helper-109: the 500 of loads Triton cannot poll took in an ensemble whose step no folder holds; tritonserver
    2.51 reads that ensemble and answers 400, "load failed for model ..."; and the index said a config that is not
    JSON failed in other words than the load's answer."""
    repo = _repository(tmp_path / "models")
    (repo / "pipeghost" / "1").mkdir(parents=True)
    (repo / "pipeghost" / "config.pbtxt").write_text(PIPE.replace('"inner"', '"ghost"'))
    client, server = _serve(tmp_path, ["--model-repository", str(repo), "--model-control-mode", "explicit"])
    with server:
        with pytest.raises(InferenceServerException, match="ghost") as e:
            client.load_model("pipeghost")
        assert e.value.status() == "400" and e.value.message().startswith("load failed for model 'pipeghost': ")
        with pytest.raises(InferenceServerException) as e:
            client.load_model("a", config="{not json")
        assert e.value.status() == "500"
        [listed] = [m for m in client.get_model_repository_index() if m["name"] == "a"]
        assert listed["reason"] == e.value.message(), listed
        client.close()


def test_a_load_of_one_ensemble_brings_back_another_waiting_for_the_same_model(tmp_path: Path) -> None:
    """helper-112: only a load of the model itself brought back the ensembles waiting for it; a load of another
    ensemble that loaded it too left them unloaded."""
    repo = _repository(tmp_path / "models")
    (repo / "pipe2" / "1").mkdir(parents=True)
    (repo / "pipe2" / "config.pbtxt").write_text(PIPE)
    client, server = _serve(tmp_path, ["--model-repository", str(repo), "--model-control-mode", "explicit",
                                       "--load-model", "pipe", "--load-model", "pipe2"])  # fmt: skip
    with server:
        client.unload_model("inner")
        assert _ready(client) == []
        client.load_model("pipe")  # loads inner too
        assert _ready(client) == ["inner", "pipe", "pipe2"]
        client.close()


def test_an_unload_queued_behind_a_failing_load_leaves_no_failure_behind(tmp_path: Path) -> None:
    """helper-112: a failed load's failure was recorded on the event loop after the loader had run an unload queued
    behind it, so the index kept it and strict readiness stayed false until a load succeeded."""
    import threading

    root = tmp_path / "models"
    (root / "good" / "1").mkdir(parents=True)
    mlp_onnx(root / "good" / "1" / "model.onnx")
    (root / "bad" / "1").mkdir(parents=True)
    mlp_onnx(root / "bad" / "1" / "model.onnx", sizes=(16, 4096, 4096, 4))  # slow to load: the unload queues
    (root / "bad" / "2").mkdir(parents=True)
    (root / "bad" / "2" / "model.onnx").write_bytes(b"\x08\x01garbage" * 50)
    (root / "bad" / "config.pbtxt").write_text('platform: "onnxruntime_onnx"\nversion_policy: { all: {} }\n')
    port = free_port()
    args = ["--model-repository", str(root), "--model-control-mode", "explicit", "--load-model", "good",
            "--grpc-port", "-1"]  # fmt: skip
    with cli_server(tmp_path / "home", args, port, tmp_path / "serve.log"):
        client = httpclient.InferenceServerClient(f"127.0.0.1:{port}")
        for _ in range(3):
            failed: list[str] = []

            def load(failed: list[str] = failed) -> None:
                try:
                    httpclient.InferenceServerClient(f"127.0.0.1:{port}").load_model("bad")
                except InferenceServerException as e:
                    failed.append(e.message())

            loading = threading.Thread(target=load)
            loading.start()
            time.sleep(0.1)  # the load under way (its first version takes a while)
            client.unload_model("bad")  # queued behind the load on the loader
            loading.join()
            assert failed, "the load was to fail"
            assert [m for m in client.get_model_repository_index() if m["name"] == "bad"] == [{"name": "bad"}]
            assert client.is_server_ready()
        client.close()


SLOW_PY = '''
import time
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args):
        time.sleep(2.0)

    def execute(self, requests):
        x = pb_utils.get_input_tensor_by_name
        return [pb_utils.InferenceResponse([pb_utils.Tensor("y", x(r, "x").as_numpy())]) for r in requests]
'''


def test_a_request_while_its_model_loads_is_told_the_load_is_under_way(tmp_path: Path) -> None:
    """It was told that the store holds a model this server has not loaded, or to load it first (helper-259's
    messages in a repository server's words)."""
    repo = tmp_path / "models"
    (repo / "slow" / "1").mkdir(parents=True)
    (repo / "slow" / "1" / "model.py").write_text(SLOW_PY)
    (repo / "slow" / "config.pbtxt").write_text(
        'backend: "python"\ninput [ { name: "x", data_type: TYPE_FP32, dims: [ 1 ] } ]\n'
        'output [ { name: "y", data_type: TYPE_FP32, dims: [ 1 ] } ]\n'
    )
    args = ["--model-repository", str(repo), "--allow-python-models", "--model-control-mode", "explicit"]
    port = free_port()
    server = cli_server(tmp_path / "home", ["--grpc-port", "-1", *args], port, tmp_path / "serve.log")
    client = httpclient.InferenceServerClient(f"127.0.0.1:{port}")
    x = httpclient.InferInput("x", [1], "FP32")
    x.set_data_from_numpy(np.ones(1, np.float32))

    def load() -> None:  # plain HTTP: a tritonclient made on this thread would be collected on another
        asked = urllib.request.Request(f"http://127.0.0.1:{port}/v2/repository/models/slow/load", method="POST")
        with urllib.request.urlopen(asked, timeout=30) as answer:
            assert answer.status == 200

    with server:
        for said in ("'slow' is not found; its first load is under way",
                     "'slow' has no available versions (it was unloaded; its load is under way)"):  # fmt: skip
            loading = threading.Thread(target=load)
            loading.start()
            try:
                assert until(lambda: client.get_model_repository_index()[0].get("state") == "LOADING", 5)
                with pytest.raises(InferenceServerException, match=re.escape(said)):
                    client.infer("slow", [x])
            finally:
                loading.join(30)
            assert client.infer("slow", [x]).as_numpy("y").tolist() == [1.0]
            client.unload_model("slow")
        client.close()
