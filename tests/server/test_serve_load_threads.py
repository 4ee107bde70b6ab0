"""Loads of different models build at once, as Triton's (``--model-load-thread-count``, 4 by default): at start, for
explicit loads sent together and in a poll, while loads and unloads of one model keep their order. A real server
process, the real tritonclient, Python models whose ``initialize`` waits for another model's to have started."""

from __future__ import annotations

import threading
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

import numpy as np
import tritonclient.http as httpclient
from servekit import cli_server, free_port, refused_at_start, until

from polystack.examples import mlp_onnx

# starts, then waits (up to wait_s) for the model named by its "other" parameter to have started: two such models
# both load only when their loads run at once; each imports its own helper.py, which names it
MEETS = '''
import json
import os
import time

import helper
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args):
        name = args["model_name"]
        if helper.NAME != name:
            raise pb_utils.TritonModelException(f"{name} imported the helper.py of {helper.NAME}")
        params = {k: v["string_value"] for k, v in json.loads(args["model_config"])["parameters"].items()}
        open(os.path.join(params["meet_in"], name), "w").close()
        deadline = time.monotonic() + float(params["wait_s"])
        while not os.path.exists(os.path.join(params["meet_in"], params["other"])):
            if time.monotonic() > deadline:
                raise pb_utils.TritonModelException(f"{name} started, and {params['other']} did not meanwhile")
            time.sleep(0.02)

    def execute(self, requests):
        x = pb_utils.get_input_tensor_by_name
        return [pb_utils.InferenceResponse([pb_utils.Tensor("y", x(r, "x").as_numpy())]) for r in requests]
'''

CONFIG = """
backend: "python"
input [ { name: "x", data_type: TYPE_FP32, dims: [ 1 ] } ]
output [ { name: "y", data_type: TYPE_FP32, dims: [ 1 ] } ]
parameters [
  { key: "meet_in", value: { string_value: "%(meet_in)s" } },
  { key: "other", value: { string_value: "%(other)s" } },
  { key: "wait_s", value: { string_value: "%(wait_s)s" } }
]
"""


def _meeting(root: Path, wait_s: float, pairs: dict[str, str]) -> Path:
    """A repository of ``MEETS`` models, each waiting for the one ``pairs`` names."""
    meet_in = root.parent / "met"
    meet_in.mkdir()
    for name, other in pairs.items():
        (root / name / "1").mkdir(parents=True)
        (root / name / "1" / "model.py").write_text(MEETS)
        (root / name / "1" / "helper.py").write_text(f"NAME = {name!r}\n")
        (root / name / "config.pbtxt").write_text(CONFIG % {"meet_in": meet_in, "other": other, "wait_s": wait_s})
    return root


def _serve(tmp_path: Path, repo: Path, *args: str) -> tuple[str, AbstractContextManager[Any]]:
    """The server's address, and the server (started by ``with``)."""
    port = free_port()
    cmd = ["--model-repository", str(repo), "--allow-python-models", "--grpc-port", "-1", *args]
    return f"127.0.0.1:{port}", cli_server(tmp_path / "home", cmd, port, tmp_path / "serve.log")


def _client(url: str) -> httpclient.InferenceServerClient:
    return httpclient.InferenceServerClient(url, network_timeout=120)


def _calling(url: str, call: str, name: str, failures: list[Exception]) -> threading.Thread:
    """A thread sending ``call`` (load_model, unload_model) of ``name``, what it raises kept in ``failures``; with a
    client of its own, made on its thread (tritonclient's HTTP client is gevent's, bound to one thread)."""

    def send() -> None:
        try:
            getattr(_client(url), call)(name)
        except Exception as e:  # said on the test's thread
            failures.append(e)

    return threading.Thread(target=send)


def test_a_repositorys_models_build_at_once_at_start(tmp_path: Path) -> None:
    repo = _meeting(tmp_path / "models", 60, {"a": "b", "b": "a"})
    url, server = _serve(tmp_path, repo)
    with server:
        client = _client(url)
        assert client.is_model_ready("a") and client.is_model_ready("b")
        client.close()


def test_one_load_thread_builds_one_model_at_a_time(tmp_path: Path) -> None:
    """``--model-load-thread-count 1``: the first model waits for the other in vain, which then finds it started."""
    repo = _meeting(tmp_path / "models", 1, {"a": "b", "b": "a"})
    url, server = _serve(
        tmp_path, repo, "--model-load-thread-count", "1", "--exit-on-error=false", "--strict-readiness=false"
    )
    with server:
        client = _client(url)
        ready = [m for m in ("a", "b") if client.is_model_ready(m)]
        assert len(ready) == 1, ready
        [failed] = [m for m in client.get_model_repository_index() if m["name"] not in ready]
        assert "did not meanwhile" in failed["reason"], failed
        client.close()
    line = refused_at_start(tmp_path, ["--model-load-thread-count", "-1"])
    assert line == "error: --model-load-thread-count takes a whole number of 0 or more, not '-1'", line
    line = refused_at_start(tmp_path, ["--model-load-thread-count", "four"])
    assert line == "error: --model-load-thread-count takes a whole number, not 'four'", line


def test_explicit_loads_of_different_models_build_at_once(tmp_path: Path) -> None:
    repo = _meeting(tmp_path / "models", 60, {"a": "b", "b": "a"})
    url, server = _serve(tmp_path, repo, "--model-control-mode", "explicit")
    with server:
        client = _client(url)
        failures: list[Exception] = []
        threads = [_calling(url, "load_model", m, failures) for m in ("a", "b")]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
        assert not failures and client.is_model_ready("a") and client.is_model_ready("b"), failures
        client.close()


def test_a_poll_loads_the_folders_it_finds_at_once(tmp_path: Path) -> None:
    """Two model folders added together: the next poll loads both at once, as Triton's poll does."""
    repo = tmp_path / "models"
    (repo / "quick" / "1").mkdir(parents=True)
    mlp_onnx(repo / "quick" / "1" / "model.onnx")
    staged = _meeting(tmp_path / "staged", 60, {"a": "b", "b": "a"})
    url, server = _serve(tmp_path, repo, "--model-control-mode", "poll", "--repository-poll-secs", "0.2")
    with server:
        client = _client(url)
        for name in ("a", "b"):
            (staged / name).rename(repo / name)
        assert until(lambda: client.is_model_ready("a") and client.is_model_ready("b"), 90)
        client.close()


def test_a_model_loading_holds_back_its_own_unload_but_no_other_load(tmp_path: Path) -> None:
    """A load of ``slow`` waits in its ``initialize`` for a file the test writes last: meanwhile a load of another
    model is answered, and an unload of ``slow`` sent after its load waits for it, as Triton orders them."""
    repo = _meeting(tmp_path / "models", 60, {"slow": "go"})
    (repo / "quick" / "1").mkdir(parents=True)
    mlp_onnx(repo / "quick" / "1" / "model.onnx")
    met = tmp_path / "met"
    url, server = _serve(tmp_path, repo, "--model-control-mode", "explicit")
    with server:
        client, failures = _client(url), []
        calls = [_calling(url, "load_model", "slow", failures), _calling(url, "unload_model", "slow", failures)]
        calls[0].start()
        assert until(lambda: (met / "slow").exists(), 60)  # its initialize runs
        calls[1].start()
        client.load_model("quick")  # answered while slow still loads
        assert client.is_model_ready("quick") and not (met / "go").exists()
        assert calls[1].is_alive()  # the unload waits for the load
        (met / "go").touch()
        for t in calls:
            t.join(120)
        assert not failures and not client.is_model_ready("slow") and client.is_model_ready("quick"), failures
        client.close()


IDENTITY = '''
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):
        x = pb_utils.get_input_tensor_by_name
        return [pb_utils.InferenceResponse([pb_utils.Tensor("y", x(r, "x").as_numpy())]) for r in requests]
'''

PIPE = (
    'platform: "ensemble"\nmax_batch_size: 4\ninput [ { name: "IN", data_type: TYPE_FP32, dims: [ 16 ] } ]\n'
    'output [ { name: "OUT", data_type: TYPE_FP32, dims: [ 4 ] } ]\nensemble_scheduling { step [ { model_name: '
    '"a", model_version: -1, input_map { key: "x" value: "IN" }, output_map { key: "y" value: "OUT" } } ] }\n'
)


def test_loads_and_unloads_sent_at_once_leave_the_server_consistent(tmp_path: Path) -> None:
    """Four clients loading and unloading two models, an ensemble of one and a Python model, at random (bounded):
    every call is answered, none waits for another for good, and the index says what readiness says."""
    import random

    repo = tmp_path / "models"
    for name in ("a", "b"):
        (repo / name / "1").mkdir(parents=True)
        mlp_onnx(repo / name / "1" / "model.onnx")
    (repo / "pipe" / "1").mkdir(parents=True)
    (repo / "pipe" / "config.pbtxt").write_text(PIPE)
    (repo / "p" / "1").mkdir(parents=True)
    (repo / "p" / "1" / "model.py").write_text(IDENTITY)
    (repo / "p" / "config.pbtxt").write_text(
        'backend: "python"\ninput [ { name: "x", data_type: TYPE_FP32, dims: [ 1 ] } ]\n'
        'output [ { name: "y", data_type: TYPE_FP32, dims: [ 1 ] } ]\n'
    )
    names = ["a", "b", "pipe", "p"]
    url, server = _serve(tmp_path, repo, "--model-control-mode", "explicit")
    with server:
        failures: list[Exception] = []

        def churn(seed: int) -> None:
            client, rng = _client(url), random.Random(seed)
            try:
                for _ in range(12):
                    name = rng.choice(names)
                    client.load_model(name) if rng.random() < 0.6 else client.unload_model(name)
            except Exception as e:  # said on the test's thread
                failures.append(e)

        threads = [threading.Thread(target=churn, args=(seed,)) for seed in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
        assert not any(t.is_alive() for t in threads) and not failures, failures
        client = _client(url)
        index = {m["name"]: m.get("state") for m in client.get_model_repository_index()}
        assert {n for n in names if client.is_model_ready(n)} == {n for n, s in index.items() if s == "READY"}, index
        for name in names:
            client.load_model(name)
        assert all(client.is_model_ready(n) for n in names)
        x = httpclient.InferInput("IN", [1, 16], "FP32")
        x.set_data_from_numpy(np.ones((1, 16), np.float32))
        assert client.infer("pipe", [x]).as_numpy("OUT").shape == (1, 4)
        client.close()
