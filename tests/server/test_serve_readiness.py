"""tritonserver's ``--exit-on-error`` and ``--strict-readiness`` taken by `polystack serve`: a start that serves
on without the models that failed to load, and a server that is not ready while a model a load left is not, as
Triton's; a real server process, the real tritonclient."""

from __future__ import annotations

import json
import subprocess
import sys
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from servekit import cli_server, free_port, refused_after_loads, refused_at_start, register_like, start
from tritonclient.utils import InferenceServerException

from polystack.examples import mlp_onnx
from polystack.store import ModelRecord, Store


def _repository(root: Path) -> Path:
    """``a`` (an MLP), ``bad`` (a model.onnx that is not ONNX) and ``torch`` (a model.pt polystack does not
    serve)."""
    (root / "a" / "1").mkdir(parents=True)
    mlp_onnx(root / "a" / "1" / "model.onnx")
    (root / "bad" / "1").mkdir(parents=True)
    (root / "bad" / "1" / "model.onnx").write_bytes(b"not onnx")
    (root / "torch" / "1").mkdir(parents=True)
    (root / "torch" / "1" / "model.pt").write_bytes(b"not torch either")
    return root


def _ensemble(folder: Path, step: str) -> None:
    """An ensemble's repository folder whose one step runs model ``step`` (x [16] -> y [4])."""
    (folder / "1").mkdir(parents=True)
    (folder / "config.pbtxt").write_text(
        'platform: "ensemble"\nmax_batch_size: 4\ninput [ { name: "IN", data_type: TYPE_FP32, dims: [ 16 ] } ]\n'
        'output [ { name: "OUT", data_type: TYPE_FP32, dims: [ 4 ] } ]\nensemble_scheduling { step [ { model_name: '
        f'"{step}", model_version: -1, input_map {{ key: "x" value: "IN" }}, output_map {{ key: "y" value: "OUT" }} }} ] }}\n'
    )


def _live(port: int) -> bool:
    try:
        return bool(httpclient.InferenceServerClient(f"127.0.0.1:{port}").is_server_live())
    except (InferenceServerException, OSError):  # not listening yet
        return False


def _started(cmd: list[str], port: int, log: Path) -> subprocess.Popen[bytes]:
    """``polystack serve`` up (live: not ready, when strict readiness says so)."""
    with log.open("w") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 60
    while not _live(port):
        assert proc.poll() is None and time.monotonic() < deadline, log.read_text()
        time.sleep(0.1)
    return proc


def test_exit_on_error_false_serves_the_models_that_loaded_and_strict_readiness_says_so(tmp_path: Path) -> None:
    """The start exited 2 at the first model that failed; Triton's --exit-on-error false serves the rest, the
    index says why the others are not, and its strict readiness (the default) reports the server not ready
    until they are unloaded."""
    repo = _repository(tmp_path / "models")
    port, grpc_port = free_port(), free_port()
    cmd = [sys.executable, "-m", "polystack", "--home", str(tmp_path / "home"), "serve", "--model-repository",
           str(repo), "--exit-on-error=false", "--model-control-mode", "explicit", "--load-model", "*",
           "--http-port", str(port), "--grpc-port", str(grpc_port)]  # fmt: skip
    proc = _started(cmd, port, tmp_path / "serve.log")
    try:
        client = httpclient.InferenceServerClient(f"127.0.0.1:{port}")
        grpc = grpcclient.InferenceServerClient(f"127.0.0.1:{grpc_port}")
        assert client.is_model_ready("a", "1")
        index = {m["name"]: m for m in client.get_model_repository_index()}
        assert index["a"]["state"] == "READY"
        for name in ("bad", "torch"):
            assert index[name]["state"] == "UNAVAILABLE" and index[name]["reason"].startswith(f"failed to load '{name}'")
        assert "model.pt" in index["torch"]["reason"], index
        assert not client.is_server_ready() and not grpc.is_server_ready()  # strict readiness: Triton's default
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/v2/models") as listed:  # KServe's V2 list
            assert "a" in json.loads(listed.read())["models"]
        with pytest.raises(urllib.error.HTTPError) as unready:  # Triton's 400, and words for KServe's client
            urllib.request.urlopen(f"http://127.0.0.1:{port}/v2/health/ready")
        said = json.loads(unready.value.read())
        assert unready.value.code == 400 and said["ready"] is False, said
        assert said["error"].startswith("model(s) 'bad', 'torch' are not ready (--strict-readiness counts them)")
        client.unload_model("bad")
        assert not client.is_server_ready()
        client.unload_model("torch")  # unloaded, as Triton's index then says: ready again
        assert client.is_server_ready() and grpc.is_server_ready()
        # a load that fails while serving: not ready until it loads or is unloaded
        with pytest.raises(InferenceServerException, match="load failed for model 'bad'"):
            client.load_model("bad")
        assert not client.is_server_ready()
        (repo / "bad" / "1" / "model.onnx").unlink()
        mlp_onnx(repo / "bad" / "1" / "model.onnx")
        client.load_model("bad")
        assert client.is_server_ready() and client.is_model_ready("bad", "1")
        # a reload that fails at a version not served: not ready; what served serves on
        (repo / "a" / "2").mkdir()
        (repo / "a" / "2" / "model.onnx").write_bytes(b"not onnx")
        with pytest.raises(InferenceServerException, match="load failed for model 'a'"):
            client.load_model("a")
        assert not client.is_server_ready() and client.is_model_ready("a", "1")
        client.close()
        grpc.close()
    finally:
        proc.kill()
        proc.wait()
    text = (tmp_path / "serve.log").read_text()
    assert text.count("failed to load a model at start; serving the others (--exit-on-error false)") == 2, text


def test_strict_readiness_false_is_ready_whatever_failed_and_exit_on_error_true_stops_the_start(
    tmp_path: Path,
) -> None:
    repo = _repository(tmp_path / "models")
    port = free_port()
    args = ["--model-repository", str(repo), "--exit-on-error", "0", "--strict-readiness", "false", "--grpc-port", "-1"]
    with cli_server(tmp_path / "home", args, port, tmp_path / "serve.log"):  # waits for ready: it is
        client = httpclient.InferenceServerClient(f"127.0.0.1:{port}")
        assert client.is_model_ready("a") and not client.is_model_ready("bad")
        client.close()
    # a name nothing has is logged and left out, not listed (Triton does not track it): ready
    with cli_server(tmp_path / "home", ["a", "nope", "--exit-on-error=false", "--grpc-port", "-1"], port,
                    tmp_path / "serve2.log"):  # fmt: skip
        client = httpclient.InferenceServerClient(f"127.0.0.1:{port}")
        assert client.is_server_ready() and client.is_model_ready("a")
        client.close()
    assert "no model named 'nope'" in (tmp_path / "serve2.log").read_text()
    # Triton's default: the start fails, naming the models that failed, once it tried them all
    line = refused_after_loads(tmp_path, ["--model-repository", str(repo)])
    assert "model 'bad'" in line, line
    assert "--exit-on-error takes 1 or 0" in refused_at_start(tmp_path, ["--exit-on-error", "maybe"])


def test_a_start_that_fails_tries_every_model_and_names_each_failure(tmp_path: Path) -> None:
    """helper-227: the start stopped at the first model that failed, so a user fixing a repository (a tutorial's
    KIND_GPU groups) saw one failure a restart; Triton's start tries every model and names each that failed."""
    repo = _repository(tmp_path / "models")  # bad and torch fail as their folders are read
    for name in ("gpu1", "gpu2"):  # these as they load (each version of gpu2: helper-229 saw the first alone)
        for version in ("1", "2") if name == "gpu2" else ("1",):
            (repo / name / version).mkdir(parents=True)
            mlp_onnx(repo / name / version / "model.onnx")
        (repo / name / "config.pbtxt").write_text("instance_group [ { kind: KIND_GPU } ]\nversion_policy { all { } }\n")
    line = refused_after_loads(tmp_path, ["--model-repository", str(repo)])
    assert line.startswith("error: --model-repository"), line
    for says in ("model 'bad'", "model 'torch'", "failed to load 'gpu1:1'", "failed to load 'gpu2:1'",
                 "failed to load 'gpu2:2'", "KIND_GPU"):  # fmt: skip
        assert says in line, line
    assert line.index("'bad'") < line.index("'torch'") < line.index("'gpu1:1'") < line.index("'gpu2:1'"), line
    # a name no repository holds is one of them (helper-229: it stopped the start at once, naming it alone)
    explicit = ["--model-control-mode", "explicit", "--load-model", "a", "--load-model", "bad", "--load-model", "nope"]
    line = refused_after_loads(tmp_path, ["--model-repository", str(repo), *explicit])
    assert "--load-model nope: failed to poll model 'nope'" in line and "model 'bad'" in line, line
    # under Ray Serve, the folders' failures are said before Ray starts (its replicas would load the rest)
    line = refused_at_start(tmp_path, ["--model-repository", str(repo), "--engine", "ray", "--http-port", "8123"])
    assert line.startswith("error: --model-repository") and "model 'bad'" in line and "model 'torch'" in line, line


def test_a_reload_keeps_the_server_ready_and_a_first_load_does_not(
    model_store: tuple[Store, dict[str, ModelRecord]],
) -> None:
    """helper-102: every reload of a served model (a new config, a poll) turned readiness false for its whole
    load and warm-up, where Triton's versions serve on, ready; a model's first load is not ready, as Triton's
    LOADING state is not."""
    store, records = model_store
    register_like(store, records["mlp"], "slow100", tags={"delay_ms": "100"})
    register_like(store, records["mlp"], "slowfirst", tags={"delay_ms": "100"})
    warm = json.dumps({"max_batch_size": 4, "model_warmup": [{"name": "w", "batch_size": 1, "count": 6, "inputs": {
        "x": {"data_type": "TYPE_FP32", "dims": [16], "zero_data": True}}}]})  # fmt: skip
    st = start(store, models=["slow100"], allow_model_control=True, strict_readiness=True)
    try:
        client = httpclient.InferenceServerClient(st.http_url)
        loader = grpcclient.InferenceServerClient(st.grpc_url)  # from another thread (tritonclient's HTTP one is gevent's)
        for name, ready in (("slow100", True), ("slowfirst", False)):  # a reload; a first load
            seen: list[bool] = []
            with ThreadPoolExecutor(1) as pool:
                loading = pool.submit(loader.load_model, name, config=warm)  # 600 ms of warm-up
                time.sleep(0.2)
                while not loading.done() and len(seen) < 200:
                    seen.append(client.is_server_ready())
                    time.sleep(0.02)
                loading.result()
            # a reload: ready all along; a first load: not ready from its start (ready once it ends, which a
            # look can see before the load's answer is read)
            assert seen and (set(seen) == {True} if ready else seen[0] is False), (name, seen)
            assert client.is_server_ready()
        client.close()
        loader.close()
    finally:
        st.stop()


def test_a_load_whose_config_cannot_be_read_leaves_the_server_ready_as_tritons_poll_failure_does(
    tmp_path: Path,
) -> None:
    repo = _repository(tmp_path / "models")
    (repo / "garbled" / "1").mkdir(parents=True)
    mlp_onnx(repo / "garbled" / "1" / "model.onnx")
    (repo / "garbled" / "config.pbtxt").write_text("max_batch_size: [[[")
    port = free_port()
    args = ["--model-repository", str(repo), "--model-control-mode", "explicit", "--load-model", "a", "--grpc-port",
            "-1", "--log-file", str(tmp_path / "triton.log")]  # fmt: skip
    with cli_server(tmp_path / "home", args, port, tmp_path / "serve.log"):
        client = httpclient.InferenceServerClient(f"127.0.0.1:{port}")
        with pytest.raises(InferenceServerException, match="failed to load 'garbled'"):
            client.load_model("garbled")
        [garbled] = [m for m in client.get_model_repository_index() if m["name"] == "garbled"]
        assert garbled["state"] == "UNAVAILABLE", garbled  # listed with why
        assert client.is_server_ready()  # not counted: Triton's poll of it failed, the model untracked
        with pytest.raises(InferenceServerException, match="load failed for model 'bad'"):
            client.load_model("bad")  # its model file: counted, as Triton's
        assert not client.is_server_ready()
        client.close()
    # a start that fails says why in the log file too, where --log-file sends the log
    log = tmp_path / "triton2.log"
    refused = refused_at_start(tmp_path, ["--model-repository", str(repo), "--log-file", str(log)])
    lines = [json.loads(ln) for ln in log.read_text().splitlines()]
    assert lines[-1]["msg"] == "the server did not start" and lines[-1]["error"] in refused, (lines[-1], refused)


def test_a_store_model_that_failed_at_start_is_in_the_index_with_why(
    model_store: tuple[Store, dict[str, ModelRecord]], tmp_path: Path
) -> None:
    store, _ = model_store
    (tmp_path / "mlp.pbtxt").write_text('input [ { name: "x", data_type: TYPE_FP32, dims: [ 8 ] } ]')
    port = free_port()
    args = ["mlp", "ident64", "--model-config", f"mlp={tmp_path / 'mlp.pbtxt'}", "--exit-on-error=false",
            "--strict-readiness=false", "--grpc-port", "-1"]  # fmt: skip
    with cli_server(store.settings.home, args, port, tmp_path / "serve.log"):
        client = httpclient.InferenceServerClient(f"127.0.0.1:{port}")
        index = {m["name"]: m for m in client.get_model_repository_index()}
        assert index["mlp"]["state"] == "UNAVAILABLE" and "failed to load 'mlp'" in index["mlp"]["reason"], index
        assert index["ident64"]["state"] == "READY", index
        client.close()


def test_a_start_failure_before_the_model_is_read_leaves_the_server_ready_and_requests_say_why(
    tmp_path: Path,
) -> None:
    """helper-103: with --exit-on-error false, a folder in two repositories (Triton's poll of it fails, the model
    untracked) left the server not ready; and requests to a model that failed at start said it was unknown,
    where Triton says it has no available versions."""
    repo, twin = _repository(tmp_path / "models"), tmp_path / "twin"
    (twin / "a" / "1").mkdir(parents=True)
    mlp_onnx(twin / "a" / "1" / "model.onnx")
    port = free_port()
    args = ["--model-repository", str(repo), "--model-repository", str(twin), "--exit-on-error=false",
            "--grpc-port", "-1"]  # fmt: skip
    proc = _started([sys.executable, "-m", "polystack", "--home", str(tmp_path / "home"), "serve", *args,
                     "--http-port", str(port)], port, tmp_path / "serve.log")  # fmt: skip
    try:
        client = httpclient.InferenceServerClient(f"127.0.0.1:{port}")
        index = {m["name"]: m for m in client.get_model_repository_index()}
        assert index["a"]["reason"] == "model appears in two or more repositories", index  # Triton's, exactly
        assert not client.is_server_ready()  # bad and torch: their model files failed, counted as Triton's
        # a model Triton tracks (its load failed) has no available versions; one it never read is not found
        for name, words in (("a", "is not found"), ("bad", "has no available versions")):
            x = httpclient.InferInput("x", [1, 16], "FP32")
            x.set_data_from_numpy(np.ones((1, 16), np.float32))
            with pytest.raises(InferenceServerException, match=f"'{name}' {words}; its last load failed"):
                client.infer(name, [x])
        # the version whose load failed is not at ready state (503, which a client may retry), as Triton's (helper-283:
        # polystack said 404); a version the failed load did not have, or one of a model never read, is not found
        for name, version, code, words in (
            ("bad", "1", "503", "'bad' version 1 is not at ready state; its last load failed"),
            ("bad", "2", "404", "'bad' has no available versions; its last load failed"),
            ("a", "1", "404", "'a' is not found; its last load failed"),
        ):
            with pytest.raises(InferenceServerException, match=words) as e:
                client.infer(name, [x], model_version=version)
            assert e.value.status() == code, (name, version, e.value)
        client.close()
    finally:
        proc.kill()
        proc.wait()
    twin_only = tmp_path / "twin_only"
    (twin_only / "a" / "1").mkdir(parents=True)
    mlp_onnx(twin_only / "a" / "1" / "model.onnx")
    solo = tmp_path / "solo"
    (solo / "a" / "1").mkdir(parents=True)
    mlp_onnx(solo / "a" / "1" / "model.onnx")
    args = ["--model-repository", str(solo), "--model-repository", str(twin_only), "--exit-on-error=false",
            "--grpc-port", "-1"]  # fmt: skip
    with cli_server(tmp_path / "home2", args, port, tmp_path / "serve2.log"):  # only the duplicate failed: ready
        assert httpclient.InferenceServerClient(f"127.0.0.1:{port}").is_server_ready()


def test_an_ensemble_that_failed_at_start_for_its_model_loads_once_a_poll_loads_the_model(tmp_path: Path) -> None:
    """helper-104: with --exit-on-error false, an ensemble whose model failed at start never loaded again once a
    poll loaded the model fixed, and strict readiness stayed false until a restart."""
    repo = tmp_path / "models"
    (repo / "inner" / "1").mkdir(parents=True)
    (repo / "inner" / "1" / "model.onnx").write_bytes(b"not onnx")
    _ensemble(repo / "pipe", "inner")
    port = free_port()
    cmd = [sys.executable, "-m", "polystack", "--home", str(tmp_path / "home"), "serve", "--model-repository",
           str(repo), "--exit-on-error=false", "--repository-poll-secs", "0.2", "--grpc-port", "-1", "--http-port",
           str(port)]  # fmt: skip
    proc = _started(cmd, port, tmp_path / "serve.log")
    try:
        client = httpclient.InferenceServerClient(f"127.0.0.1:{port}")
        assert not client.is_model_ready("pipe") and not client.is_server_ready()
        (repo / "inner" / "1" / "model.onnx").unlink()
        mlp_onnx(repo / "inner" / "1" / "model.onnx")
        deadline = time.monotonic() + 30
        while not client.is_model_ready("pipe") and time.monotonic() < deadline:
            time.sleep(0.1)
        assert client.is_model_ready("pipe") and client.is_server_ready()
        client.close()
    finally:
        proc.kill()
        proc.wait()


def test_an_ensemble_whose_step_has_no_folder_fails_its_load_and_leaves_the_server_ready(tmp_path: Path) -> None:
    """helper-102: Triton's poll of such an ensemble fails, the model untracked, the server ready."""
    repo = _repository(tmp_path / "models")
    _ensemble(repo / "lost", "nowhere")
    port = free_port()
    args = ["--model-repository", str(repo), "--model-control-mode", "explicit", "--load-model", "a", "--grpc-port",
            "-1"]  # fmt: skip
    with cli_server(tmp_path / "home", args, port, tmp_path / "serve.log"):
        client = httpclient.InferenceServerClient(f"127.0.0.1:{port}")
        words = "ensemble lost contains models that are not available or ambiguous: nowhere: the ensemble runs a model"
        with pytest.raises(InferenceServerException, match=words):  # Triton's words first (tritonserver 2.51's)
            client.load_model("lost")
        assert client.is_server_ready()
        client.close()


def test_a_model_whose_config_is_refused_at_start_is_listed_at_its_version(tmp_path: Path) -> None:
    """Triton's index lists a model that failed to load at start (--exit-on-error false) at the version that
    failed, with why; polystack listed one whose config was refused (here a warm-up sample over its
    max_batch_size) by its name alone (helper-280)."""
    (tmp_path / "models" / "w" / "1").mkdir(parents=True)
    mlp_onnx(tmp_path / "models" / "w" / "1" / "model.onnx")
    (tmp_path / "models" / "w" / "config.pbtxt").write_text(
        'max_batch_size: 4\nmodel_warmup [ { name: "b", batch_size: 9, inputs { key: "x" value: '
        '{ data_type: TYPE_FP32, dims: [ 16 ], zero_data: true } } } ]\n'
    )
    port = free_port()
    args = ["--model-repository", str(tmp_path / "models"), "--exit-on-error", "false", "--strict-readiness", "false",
            "--grpc-port", "-1"]  # fmt: skip
    with cli_server(tmp_path / "home", args, port, tmp_path / "serve.log"):
        client = httpclient.InferenceServerClient(f"127.0.0.1:{port}")
        (entry,) = [m for m in client.get_model_repository_index() if m["name"] == "w"]
        assert entry["version"] == "1" and entry["state"] == "UNAVAILABLE", entry
        assert "batch_size 9" in entry["reason"], entry
        client.close()
