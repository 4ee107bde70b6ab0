"""tritonserver's ``--exit-on-error`` and ``--strict-readiness`` taken by `polystack serve`: a start that serves
on without the models that failed to load, and a server that is not ready while a model a load left is not, as
Triton's; a real server process, the real tritonclient."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from servekit import cli_server, free_port, refused_at_start
from tritonclient.utils import InferenceServerException

from polystack.examples import mlp_onnx


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
        client.unload_model("bad")
        assert not client.is_server_ready()
        client.unload_model("torch")  # unloaded, as Triton's index then says: ready again
        assert client.is_server_ready() and grpc.is_server_ready()
        # a load that fails while serving: not ready until it loads or is unloaded
        with pytest.raises(InferenceServerException, match="failed to load 'bad'"):
            client.load_model("bad")
        assert not client.is_server_ready()
        (repo / "bad" / "1" / "model.onnx").unlink()
        mlp_onnx(repo / "bad" / "1" / "model.onnx")
        client.load_model("bad")
        assert client.is_server_ready() and client.is_model_ready("bad", "1")
        # a reload that fails at a version not served: not ready; what served serves on
        (repo / "a" / "2").mkdir()
        (repo / "a" / "2" / "model.onnx").write_bytes(b"not onnx")
        with pytest.raises(InferenceServerException, match="failed to load 'a'"):
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
    # Triton's default: the start stops at the model that failed, naming it
    line = refused_at_start(tmp_path, ["--model-repository", str(repo), "--grpc-port", "-1"])
    assert "model 'bad'" in line, line
    assert "--exit-on-error takes 1 or 0" in refused_at_start(tmp_path, ["--exit-on-error", "maybe"])
