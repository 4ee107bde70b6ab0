"""A model is freed at its unload after requests that failed: its error held no reference cycle that kept it
until Python's cycle collector ran (helper-238: a failed request's error, its traceback holding the frames
that held the model, was kept by a cycle through a frame naming the error, or the future or task keeping it;
under the gRPC server, by grpc's state of the last call). Each case's model says so in a file once freed."""

from __future__ import annotations

import json
import queue
import socket
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from servekit import cli_server, free_port, until
from test_serve_model_memory import CONFIG
from test_serve_python_models import python_folder
from tritonclient.utils import InferenceServerException

# a model that says so once freed: it answers x (after a while, for x[0] > 100), or calls "callee" with it
# (CALLS), or refuses with an error response (SAYS_NO), or raises (RAISES); a decoupled one sends its answer
MODEL = """
import json, os, time
import numpy as np
import triton_python_backend_utils as pb_utils

WHAT = %r


class TritonPythonModel:
    def initialize(self, args):
        self.weights = np.ones(1_000_000, np.float32)
        self.freed = os.environ["FREED_FILE"]
        self.decoupled = pb_utils.using_decoupled_model_transaction_policy(json.loads(args["model_config"]))
        if WHAT == "INIT_RAISES":
            raise pb_utils.TritonModelException("no")

    def execute(self, requests):
        if WHAT == "RAISES":
            raise pb_utils.TritonModelException("no")
        out = []
        for r in requests:
            x = pb_utils.get_input_tensor_by_name(r, "x").as_numpy()
            if WHAT == "SAYS_NO":
                out.append(pb_utils.InferenceResponse(error=pb_utils.TritonError("no")))
                continue
            if WHAT == "CALLS":
                called = pb_utils.InferenceRequest(
                    model_name="callee", requested_output_names=["y"], inputs=[pb_utils.Tensor("x", x)]
                ).exec()
                if called.has_error():
                    out.append(pb_utils.InferenceResponse(error=pb_utils.TritonError(called.error().message())))
                    continue
                x = pb_utils.get_output_tensor_by_name(called, "y").as_numpy()
            elif x.flatten()[0] > 100:
                time.sleep(1.5)
            out.append(pb_utils.InferenceResponse([pb_utils.Tensor("y", x)]))
        if self.decoupled:
            for r, response in zip(requests, out):
                r.get_response_sender().send(response, flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL)
            return None
        return out

    def __del__(self):
        with open(self.freed, "a") as f:
            f.write("freed\\n")
"""


def _x(module: Any, value: float = 1.0) -> list[Any]:
    x = module.InferInput("x", [1, 4], "FP32")
    x.set_data_from_numpy(np.full((1, 4), value, np.float32))
    return [x]


def _fails(call: Callable[[], object]) -> None:
    with pytest.raises(InferenceServerException):
        call()


# an ensemble of one step, the model "held"
ENSEMBLE = CONFIG.replace('backend: "python"', 'platform: "ensemble"') + (
    'ensemble_scheduling { step [ { model_name: "held" model_version: -1 input_map { key: "x" value: "x" } '
    'output_map { key: "y" value: "y" } } ] }\n'
)
DECOUPLED = "model_transaction_policy { decoupled: true }\n"


def _post(port: int, path: str, body: dict[str, Any]) -> int:
    """The status of a JSON POST to ``path``."""
    request = urllib.request.Request(f"http://127.0.0.1:{port}{path}", data=json.dumps(body).encode())
    try:
        with urllib.request.urlopen(request, timeout=30) as answer:
            return int(answer.status)
    except urllib.error.HTTPError as e:
        return e.code


def _streamed_fails(grpc_port: int, model: str) -> None:
    """A request of ``model`` over a gRPC stream, answered with an error."""
    answers: queue.Queue[Any] = queue.Queue()
    with grpcclient.InferenceServerClient(f"127.0.0.1:{grpc_port}") as stream:
        stream.start_stream(callback=lambda result, error: answers.put(error))
        stream.async_stream_infer(model, _x(grpcclient))
        assert answers.get(timeout=10) is not None
        stream.stop_stream()


def _gone_mid_request(port: int, model: str) -> None:
    """A request of ``model`` whose client closes its connection while it runs."""
    body = json.dumps({"inputs": [{"name": "x", "shape": [1, 4], "datatype": "FP32", "data": [200.0] * 4}]}).encode()
    head = f"POST /v2/models/{model}/infer HTTP/1.1\r\nHost: x\r\nContent-Length: {len(body)}\r\n\r\n".encode()
    with socket.create_connection(("127.0.0.1", port)) as s:
        s.sendall(head + body)
        time.sleep(0.5)  # it runs (1.5 s)


@pytest.mark.parametrize(
    "case",
    [
        "bls-callee-unloaded", "error-response-grpc", "batched-execute-raises", "batched-raises-in-time",
        "client-went-away", "sequence-execute-raises", "ensemble-step-raises", "decoupled-ensemble-step-fails",
        "generate-fails", "generate-refused-decoupled",
    ],
)  # fmt: skip
def test_a_model_is_freed_at_its_unload_after_requests_that_failed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, case: str
) -> None:
    freed = tmp_path / "freed"
    monkeypatch.setenv("FREED_FILE", str(freed))
    repo = tmp_path / "models"
    what = {"bls-callee-unloaded": "CALLS", "error-response-grpc": "SAYS_NO", "batched-execute-raises": "RAISES",
            "batched-raises-in-time": "RAISES", "sequence-execute-raises": "RAISES", "ensemble-step-raises": "RAISES",
            "decoupled-ensemble-step-fails": "SAYS_NO", "generate-fails": "SAYS_NO"}  # fmt: skip
    batching = "dynamic_batching { }\n" if "batched" in case else ""
    batching += "sequence_batching { }\n" if "sequence" in case else ""
    batching += DECOUPLED if "decoupled" in case else ""
    python_folder(repo, "held", MODEL % what.get(case, "ANSWERS"), CONFIG + batching)
    python_folder(repo, "callee", MODEL % "ANSWERS", CONFIG)
    (repo / "pipe" / "1").mkdir(parents=True)
    (repo / "pipe" / "config.pbtxt").write_text(ENSEMBLE)
    port, grpc_port = free_port(), free_port()
    args = ["--model-repository", str(repo), "--allow-python-models", "--grpc-port", str(grpc_port),
            "--model-control-mode", "explicit", "--load-model", "held", "--load-model", "callee"]  # fmt: skip
    args += ["--load-model", "pipe"] if "ensemble" in case else []
    with cli_server(tmp_path / "home", args, port, tmp_path / "log"), \
            httpclient.InferenceServerClient(f"127.0.0.1:{port}") as client, \
            grpcclient.InferenceServerClient(f"127.0.0.1:{grpc_port}") as grpc:  # fmt: skip

        def count() -> int:
            return freed.read_text().count("freed") if freed.exists() else 0

        if case == "bls-callee-unloaded":  # the caller's call fails: its callee is gone
            client.infer("held", _x(httpclient))
            client.unload_model("callee")
            assert until(lambda: count() == 1, within_s=10), count()
            _fails(lambda: client.infer("held", _x(httpclient)))
        elif case == "batched-raises-in-time":  # a request with a timeout waits otherwise (asyncio.wait_for)
            _fails(lambda: client.infer("held", _x(httpclient), timeout=10_000_000))
        elif case == "client-went-away":
            _gone_mid_request(port, "held")
            time.sleep(1.5)
        elif case == "sequence-execute-raises":
            _fails(lambda: client.infer("held", _x(httpclient), sequence_id=1, sequence_start=True))
        elif case == "ensemble-step-raises":
            _fails(lambda: client.infer("pipe", _x(httpclient)))
            _fails(lambda: grpc.infer("pipe", _x(grpcclient)))
        elif case == "decoupled-ensemble-step-fails":
            _streamed_fails(grpc_port, "pipe")
        elif case == "generate-fails":  # in its run: 400, as Triton's generate answers it
            assert _post(port, "/v2/models/held/generate", {"x": [1.0] * 4}) == 400
            assert _post(port, "/v2/models/held/generate_stream", {"x": [1.0] * 4}) == 400  # (its error an event)
        elif case == "generate-refused-decoupled":  # refused before its run: no input
            assert _post(port, "/v2/models/held/generate", {}) == 400
            assert _post(port, "/v2/models/held/generate_stream", {}) == 400
        else:
            _fails(lambda: client.infer("held", _x(httpclient)))
            _fails(lambda: grpc.infer("held", _x(grpcclient)))
        before = count()
        if "ensemble" in case:
            client.unload_model("pipe")
        client.unload_model("held")  # no request meanwhile (a gRPC one would free grpc's state of the last)
        assert until(lambda: count() == before + 1, within_s=10), count()


def test_a_model_whose_load_failed_in_a_poll_is_freed_at_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The instance a poll's load made before its initialize raised is freed with the failure (the poll named the
    error its frame raised, and the loader the list holding it: cycles through the error's traceback)."""
    freed = tmp_path / "freed"
    monkeypatch.setenv("FREED_FILE", str(freed))
    repo = tmp_path / "models"
    python_folder(repo, "callee", MODEL % "ANSWERS", CONFIG)
    port = free_port()
    args = ["--model-repository", str(repo), "--allow-python-models", "--grpc-port", str(free_port()),
            "--model-control-mode", "poll", "--repository-poll-secs", "1"]  # fmt: skip
    with cli_server(tmp_path / "home", args, port, tmp_path / "log"):
        python_folder(repo, "fails", MODEL % "INIT_RAISES", CONFIG)  # found by the next poll, whose load fails
        assert until(lambda: freed.exists() and freed.read_text().count("freed") == 1, within_s=10)
