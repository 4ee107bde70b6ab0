"""tritonserver's listener flags taken by `polystack serve`: each listener's address (``--http-address``,
``--grpc-address``, ``--metrics-address``), the switches (``--allow-http``, ``--allow-grpc``,
``--allow-metrics``, ``--allow-cpu-metrics``, ``--allow-gpu-metrics``) and the aliases ``--id`` and
``--model-store``, so that a launch script written for Triton starts polystack; a real server process, the
real tritonclient."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from servekit import cli_server, free_port, mlp_ones, refused_at_start
from tritonclient.utils import InferenceServerException

from polystack.examples import mlp_onnx
from polystack.store import ModelRecord, Store


def _get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=10) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def _refused(host: str, port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(5)
        return s.connect_ex((host, port)) != 0


def test_grpc_alone_with_allow_http_false_and_metrics_on_their_own_address(
    model_store: tuple[Store, dict[str, ModelRecord]], tmp_path: Path
) -> None:
    """--allow-http false serves gRPC alone (the metrics port beside it), each on the address its flag gives:
    a gRPC-only Triton deployment's flags."""
    store, _ = model_store
    http_port, grpc_port, metrics_port = free_port(), free_port(), free_port()
    cmd = [sys.executable, "-m", "polystack", "--home", str(store.settings.home), "serve", "mlp",
           # a disabled listener's port is not read, as Triton's L0_socket starts it (helper-200: polystack exited 2)
           "--allow-http=false", "--http-port", "-47", "--grpc-address", "127.0.0.2",
           "--grpc-port", str(grpc_port), "--metrics-address", "127.0.0.3", "--metrics-port", str(metrics_port),
           "--id", "triton"]  # fmt: skip
    log = tmp_path / "serve.log"
    with log.open("w") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT)
    try:
        client = grpcclient.InferenceServerClient(f"127.0.0.2:{grpc_port}")
        deadline = time.monotonic() + 60
        while not _ready(client):
            assert proc.poll() is None and time.monotonic() < deadline, log.read_text()
            time.sleep(0.1)
        x = grpcclient.InferInput("x", [1, 16], "FP32")
        x.set_data_from_numpy(np.ones((1, 16), np.float32))
        assert client.infer("mlp", [x]).as_numpy("y").shape == (1, 4)
        assert client.get_server_metadata().name == "triton"  # --id: tritonserver's name for --server-name
        status, text = _get(f"http://127.0.0.3:{metrics_port}/metrics")
        assert status == 200 and "polystack_inference_request_success" in text
        assert _refused("127.0.0.1", http_port)  # no HTTP listener
        assert _refused("127.0.0.1", grpc_port) and _refused("127.0.0.1", metrics_port)  # their own addresses
        client.close()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    [serving] = [json.loads(ln) for ln in log.read_text().splitlines() if '"serving"' in ln]
    assert serving["http_port"] is None and serving["grpc_host"] == "127.0.0.2", serving
    assert serving["metrics_host"] == "127.0.0.3", serving


def _ready(client: grpcclient.InferenceServerClient) -> bool:
    try:
        return bool(client.is_server_ready())
    except (InferenceServerException, OSError):  # not listening yet
        return False


def test_allow_grpc_metrics_and_cpu_metrics_false_leave_them_out(
    model_store: tuple[Store, dict[str, ModelRecord]], tmp_path: Path
) -> None:
    store, _ = model_store
    port = free_port()
    args = ["mlp", "--allow-grpc", "false", "--triton-metrics", "--allow-cpu-metrics=0", "--allow-gpu-metrics=false"]
    with cli_server(store.settings.home, args, port, tmp_path / "serve.log"):
        status, text = _get(f"http://127.0.0.1:{port}/metrics")
        assert status == 200 and "nv_inference_count" in text and "nv_cpu_" not in text
        httpclient.InferenceServerClient(f"127.0.0.1:{port}").infer("mlp", [mlp_ones()])
    [serving] = [json.loads(ln) for ln in (tmp_path / "serve.log").read_text().splitlines() if '"serving"' in ln]
    assert serving["grpc_port"] is None, serving
    with cli_server(store.settings.home, ["mlp", "--grpc-port", "-1", "--allow-metrics", "false"], port,
                    tmp_path / "serve2.log"):  # fmt: skip
        status, text = _get(f"http://127.0.0.1:{port}/metrics")
        assert status == 404 and "error" in json.loads(text), text
    with cli_server(store.settings.home, ["mlp", "--grpc-port", "-1", "--triton-metrics"], port, tmp_path / "s4.log"):
        assert "nv_cpu_utilization" in _get(f"http://127.0.0.1:{port}/metrics")[1]  # on by default, as in Triton


def test_model_store_is_model_repository(tmp_path: Path) -> None:
    (tmp_path / "models" / "m" / "1").mkdir(parents=True)
    mlp_onnx(tmp_path / "models" / "m" / "1" / "model.onnx")
    port = free_port()
    with cli_server(tmp_path / "home", ["--model-store", str(tmp_path / "models"), "--grpc-port", "-1"], port,
                    tmp_path / "serve.log"):  # fmt: skip
        assert httpclient.InferenceServerClient(f"127.0.0.1:{port}").is_model_ready("m", "1")


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["--allow-http", "false", "--grpc-port", "-1"], "--allow-http false leaves gRPC alone to serve"),
        (["--allow-http", "false", "--allow-grpc", "0"], "--allow-http false leaves gRPC alone to serve"),
        (["--http-port", "9003", "--grpc-port", "9003"], "--http-port and --grpc-port are both 9003"),
        (["--allow-http", "maybe"], "--allow-http takes 1 or 0 (true or false), not 'maybe'"),
        (["--http-address", " "], "--http-address takes an address to listen on"),
        (["--grpc-address", "127.0.0.2", "--engine", "ray"], "--engine ray serves HTTP only"),
    ],
)
def test_listener_flags_that_cannot_work_exit_2(tmp_path: Path, args: list[str], words: str) -> None:
    assert words in refused_at_start(tmp_path, args)


def test_a_listener_turned_off_leaves_its_port_and_address_unread_and_addresses_may_share_a_port(
    model_store: tuple[Store, dict[str, ModelRecord]], tmp_path: Path
) -> None:
    """helper-102: Triton ignores a listener's port and address once it is off, and compares ports only on one
    address; polystack refused such launch lines."""
    store, _ = model_store
    port, metrics = free_port(), free_port()
    args = ["mlp", "--allow-grpc=false", "--grpc-port", str(port), "--grpc-address", "127.0.0.9",
            "--allow-metrics", "off", "--metrics-port", str(metrics), "--metrics-address", "127.0.0.8"]  # fmt: skip
    with cli_server(store.settings.home, args, port, tmp_path / "serve.log"):  # gRPC's port is HTTP's: unread
        assert _get(f"http://127.0.0.1:{port}/metrics")[0] == 404
        assert _refused("127.0.0.8", metrics) and _refused("127.0.0.9", port)
    grpc_port = port  # gRPC on another address, on HTTP's port
    args = ["mlp", "--grpc-address", "127.0.0.2", "--grpc-port", str(grpc_port)]
    with cli_server(store.settings.home, args, port, tmp_path / "serve2.log"):
        client = grpcclient.InferenceServerClient(f"127.0.0.2:{grpc_port}")
        assert client.is_server_ready()
        client.close()


def test_reuse_port_flags_let_two_servers_share_their_ports(
    model_store: tuple[Store, dict[str, ModelRecord]], tmp_path: Path
) -> None:
    """tritonserver's --reuse-http-port and --reuse-grpc-port (SO_REUSEPORT): a second server binds the same
    ports, and the kernel spreads connections over both; without them the second start says the port is taken."""
    store, _ = model_store
    port, grpc_port = free_port(), free_port()
    args = ["mlp", "--grpc-port", str(grpc_port), "--reuse-http-port=true", "--reuse-grpc-port", "1"]
    with cli_server(store.settings.home, args, port, tmp_path / "one.log"), cli_server(
        store.settings.home, args, port, tmp_path / "two.log"
    ):
        for _ in range(4):
            assert httpclient.InferenceServerClient(f"127.0.0.1:{port}").is_server_ready()
            assert grpcclient.InferenceServerClient(f"127.0.0.1:{grpc_port}").is_server_ready()
        cmd = [sys.executable, "-m", "polystack", "--home", str(store.settings.home), "serve", "mlp", "--http-port",
               str(port), "--grpc-port", "-1"]  # fmt: skip
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
        assert out.returncode == 2 and "--http-port" in out.stderr.splitlines()[-1], out.stderr


def _free(port: int) -> bool:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as a server binds: a closed one's TIME_WAIT is free
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def test_tritons_default_ports_serve_the_metrics_on_8002_as_tritons_do(
    model_store: tuple[Store, dict[str, ModelRecord]], tmp_path: Path
) -> None:
    """python_backend's custom_metrics example reads http://localhost:8002/metrics (helper-225): a server on
    Triton's default ports (HTTP 8000, gRPC 8001) serves its metrics on 8002 too, as Triton's does; -1 turns that
    port off, and other HTTP ports keep /metrics on the HTTP port alone."""
    if not all(_free(p) for p in (8000, 8001, 8002)):
        pytest.skip("Triton's default ports (8000-8002) are taken on this machine")
    home = model_store[0].settings.home
    with cli_server(home, ["mlp"], 8000, tmp_path / "serve.log"):
        status, text = _get("http://127.0.0.1:8002/metrics")
        assert status == 200 and "polystack_models_loaded 1.0" in text
        with grpcclient.InferenceServerClient("127.0.0.1:8001") as client:
            assert client.is_model_ready("mlp")
    with cli_server(home, ["mlp", "--metrics-port", "-1"], 8000, tmp_path / "serve2.log"):
        assert _refused("127.0.0.1", 8002) and _get("http://127.0.0.1:8000/metrics")[0] == 200
    port = free_port()
    with cli_server(home, ["mlp", "--grpc-port", "0"], port, tmp_path / "serve3.log"):
        assert _refused("127.0.0.1", 8002)
    # servers sharing Triton's ports (helper-229: a second one found 8002 taken)
    with cli_server(home, ["mlp", "--reuse-http-port", "true"], 8000, tmp_path / "serve4.log"):
        assert _refused("127.0.0.1", 8002)
