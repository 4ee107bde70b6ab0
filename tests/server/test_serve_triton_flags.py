"""A launch line written for tritonserver, with its flags for what polystack does not have, starts
`polystack serve` (``polystack.cli.triton_flags``): a real server process, the real tritonclient."""

from __future__ import annotations

import json
from pathlib import Path

import tritonclient.http as httpclient
from servekit import cli_server, free_port, refused_at_start

from polystack.examples import mlp_onnx


def test_a_triton_launch_line_starts_polystack_and_says_what_it_ignores(tmp_path: Path) -> None:
    (tmp_path / "models" / "m" / "1").mkdir(parents=True)
    mlp_onnx(tmp_path / "models" / "m" / "1" / "model.onnx")
    port = free_port()
    args = ["--model-store=" + str(tmp_path / "models"), "--grpc-port", "-1", "--pinned-memory-pool-byte-size=0",
            "--cuda-memory-pool-byte-size=0:0", "--backend-directory=/opt/tritonserver/backends",
            "--model-load-thread-count=4", "--allow-gpu-metrics=false", "--http-max-input-size=1000000",
            "--model-namespacing=true", "--backend-config=onnxruntime,enable-global-threadpool=1",
            "--backend-config=python,shm-default-byte-size=8388608"]  # fmt: skip
    with cli_server(tmp_path / "home", args, port, tmp_path / "serve.log"):
        assert httpclient.InferenceServerClient(f"127.0.0.1:{port}").is_model_ready("m")
    lines = [json.loads(ln) for ln in (tmp_path / "serve.log").read_text().splitlines() if ln.startswith("{")]
    [said] = [ln for ln in lines if ln["msg"] == "tritonserver flags taken that change nothing here"]
    assert [f.split(" (")[0] for f in said["flags"]] == [
        "--pinned-memory-pool-byte-size", "--cuda-memory-pool-byte-size",
        "--backend-config onnxruntime,enable-global-threadpool=1",
        "--backend-config python,shm-default-byte-size=8388608",
    ]  # fmt: skip (followed: --model-load-thread-count, test_serve_load_threads; --model-namespacing, its own test)
    # a value Triton's Python backend refuses (tritonserver 2.51 exits 1), in its words (helper-226)
    args = ["--backend-config", "python,shm-default-byte-size=1024", "--allow-python-models"]
    line = refused_at_start(tmp_path, args)
    assert line == (
        "error: --backend-config python,shm-default-byte-size=1024: shm-default-byte-size can't be smaller than 1 "
        "MiB; give 1048576 or more"
    )
    # a resource without its count, as tritonserver 2.51 refuses it (helper-119: it was taken)
    line = refused_at_start(tmp_path, ["--rate-limit-resource", "R1:x"])  # Triton's words (helper-128)
    assert line == "error: --rate-limit-resource R1:x: Invalid option value. Got x; give a whole number of 0 or more"
    for value in ("R1", ":2", "R1:2:3:4"):
        line = refused_at_start(tmp_path, ["--rate-limit-resource", value])
        assert f"--rate-limit-resource option format is '<resource_name>:<count>:<device>' or '<resource_name>:<count>'. Got {value}" in line, line


def test_an_unambiguous_prefix_stands_for_its_option_as_tritonservers_parser_reads_it(tmp_path: Path) -> None:
    """helper-103: Triton's own L0_logging script starts the server with --log-warn=false (getopt_long takes
    prefixes); polystack said there was no such option."""
    (tmp_path / "models" / "m" / "1").mkdir(parents=True)
    mlp_onnx(tmp_path / "models" / "m" / "1" / "model.onnx")
    port = free_port()
    args = ["--model-repos", str(tmp_path / "models"), "--log-warn=false", "--grpc-po", "-1"]
    with cli_server(tmp_path / "home", args, port, tmp_path / "serve.log"):
        client = httpclient.InferenceServerClient(f"127.0.0.1:{port}")
        assert client.is_model_ready("m") and client.get_log_settings()["log_warning"] is False
    assert "--log-warning takes 1 or 0" in refused_at_start(tmp_path, ["--log-warn=maybe"])


def test_a_prefix_is_read_only_where_an_option_stands_and_an_ambiguous_one_says_which_it_could_be(
    tmp_path: Path,
) -> None:
    """helper-104: a value starting with -- was read as an option's prefix (--server-name --log-v), and an
    ambiguous prefix said there was no such option."""
    import subprocess
    import sys

    cmd = [sys.executable, "-m", "polystack", "--home", str(tmp_path / "home"), "serve"]
    out = subprocess.run([*cmd, "--log", "1"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 2 and "option --log is ambiguous" in out.stderr, out.stderr
    port = free_port()
    with cli_server(tmp_path / "home", ["--server-name", "--log-v", "--grpc-port", "-1"], port, tmp_path / "s.log"):
        assert httpclient.InferenceServerClient(f"127.0.0.1:{port}").get_server_metadata()["name"] == "--log-v"
