"""Triton's priority levels in dynamic batching: a repository model whose config.pbtxt sets priority_levels
and a priority_queue_policy, served by a real server process to the real tritonclient (HTTP and gRPC), whose
``priority=`` picks the queue a request waits in; and GET config showing what was loaded."""

from __future__ import annotations

import json
import queue
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from onnx import TensorProto
from servekit import cli_server, free_port, single_op
from tritonclient.utils import InferenceServerException

# requests wait out a 1 s delay (no preferred size, a batch of 8 never fills); level 2 (the default) queues
# one request at most, for 500 ms; level 1 has the default queue's policy: no limit, no deadline
CONFIG = """
max_batch_size: 8
input [ { name: "x", data_type: TYPE_FP32, dims: [ 4 ] } ]
dynamic_batching {
  max_queue_delay_microseconds: 1000000
  priority_levels: 2
  default_priority_level: 2
  default_queue_policy { max_queue_size: 0 }
  priority_queue_policy {
    key: 2
    value: { max_queue_size: 1, default_timeout_microseconds: 500000 }
  }
}
"""


@contextmanager
def _served(tmp_path: Path, *flags: str) -> Iterator[tuple[int, int]]:
    (tmp_path / "models" / "neg" / "1").mkdir(parents=True)
    single_op(tmp_path / "models" / "neg" / "1" / "model.onnx", "Neg", TensorProto.FLOAT, 4, "x", [("y", "Neg")])
    (tmp_path / "models" / "neg" / "config.pbtxt").write_text(CONFIG)
    port, grpc_port = free_port(), free_port()
    args = ["--model-repository", str(tmp_path / "models"), "--grpc-port", str(grpc_port), *flags]
    with cli_server(tmp_path / "home", args, port, tmp_path / "serve.log"):
        yield port, grpc_port


def _x(client: Any, value: float) -> list[Any]:
    module = httpclient if isinstance(client, httpclient.InferenceServerClient) else grpcclient
    x = module.InferInput("x", [1, 4], "FP32")
    x.set_data_from_numpy(np.full((1, 4), value, np.float32))
    return [x]


def _sent_without_priority(client: Any) -> Callable[[], Any]:
    """Send a request without a priority (the default level, 2) in the background; what waits for its answer."""
    if isinstance(client, httpclient.InferenceServerClient):
        return client.async_infer("neg", _x(client, 1.0)).get_result  # type: ignore[no-any-return]
    answers: queue.Queue[tuple[Any, Any]] = queue.Queue()
    client.async_infer("neg", _x(client, 1.0), lambda result, error: answers.put((result, error)))

    def answer() -> Any:
        result, error = answers.get(timeout=10)
        if error is not None:
            raise error
        return result

    return answer


def test_each_priority_level_queues_apart_over_http_and_grpc(tmp_path: Path) -> None:
    with _served(tmp_path) as (port, grpc_port):
        h = httpclient.InferenceServerClient(f"127.0.0.1:{port}", concurrency=2)
        g = grpcclient.InferenceServerClient(f"127.0.0.1:{grpc_port}")
        try:
            for client, refused, late in (
                (h, "503", "503"),
                (g, "StatusCode.UNAVAILABLE", "StatusCode.UNAVAILABLE"),
            ):
                wait_low = _sent_without_priority(client)
                time.sleep(0.1)  # it waits in level 2's queue (the delay is 1 s, its deadline 500 ms)
                started = time.monotonic()
                with pytest.raises(InferenceServerException) as full:
                    client.infer("neg", _x(client, 2.0), priority=2)
                assert time.monotonic() - started < 0.4  # refused at once, not after the delay
                assert full.value.status() == refused and "priority level 2" in full.value.message()
                assert full.value.message().startswith("Exceeds maximum queue size")  # Triton's words
                # level 1 has its own queue, without a limit or a deadline: it runs once the delay is out
                urgent = client.infer("neg", _x(client, 3.0), priority=1)
                np.testing.assert_array_equal(urgent.as_numpy("y"), np.full((1, 4), -3.0, np.float32))
                with pytest.raises(InferenceServerException) as expired:  # level 2's 500 ms deadline passed
                    wait_low()
                assert expired.value.status() == late and "Request timeout expired" in str(expired.value)
                # a priority past the levels is the default level's: its deadline passes before the delay
                with pytest.raises(InferenceServerException) as past:
                    client.infer("neg", _x(client, 4.0), priority=7)
                assert past.value.status() == late, past.value
        finally:
            h.close()
            g.close()


def test_get_config_shows_the_priority_levels_and_a_load_of_it_keeps_them(tmp_path: Path) -> None:
    with _served(tmp_path, "--allow-model-control") as (port, grpc_port):
        h = httpclient.InferenceServerClient(f"127.0.0.1:{port}")
        g = grpcclient.InferenceServerClient(f"127.0.0.1:{grpc_port}")
        try:
            config = h.get_model_config("neg")
            batching = config["dynamic_batching"]
            assert batching["priority_levels"] == 2 and batching["default_priority_level"] == 2
            assert batching["priority_queue_policy"] == {
                "2": {"timeout_action": "REJECT", "default_timeout_microseconds": 500000, "allow_timeout_override": False,
                      "max_queue_size": 1}
            }
            assert batching["default_queue_policy"] == {
                "timeout_action": "REJECT", "default_timeout_microseconds": 0, "allow_timeout_override": False,
                "max_queue_size": 0,
            }  # fmt: skip
            over_grpc = g.get_model_config("neg").config.dynamic_batching
            assert over_grpc.priority_levels == 2 and over_grpc.priority_queue_policy[2].max_queue_size == 1
            g.load_model("neg", config=json.dumps(config))  # what GET config showed loads as the same config
            assert h.get_model_config("neg") == config
            delayed = {"2": {"timeout_action": "DELAY", "default_timeout_microseconds": 1000}}
            lower = {**config, "dynamic_batching": {**batching, "priority_queue_policy": delayed}}
            h.load_model("neg", config=json.dumps(lower))  # level 2's late requests now run after the others
            shown = h.get_model_config("neg")["dynamic_batching"]["priority_queue_policy"]
            assert shown == {"2": {**delayed["2"], "max_queue_size": 0, "allow_timeout_override": False}}
            late = h.infer("neg", _x(h, 5.0), priority=2)  # past its 1 ms in the 1 s delay: run all the same
            np.testing.assert_array_equal(late.as_numpy("y"), np.full((1, 4), -5.0, np.float32))
            with pytest.raises(InferenceServerException, match=r"default priority level must be in range \[1, 2\]"):
                h.load_model(
                    "neg", config=json.dumps({**config, "dynamic_batching": {**batching, "default_priority_level": 3}})
                )
            assert h.get_model_config("neg")["dynamic_batching"]["priority_queue_policy"] == shown  # as it was
        finally:
            h.close()
            g.close()
