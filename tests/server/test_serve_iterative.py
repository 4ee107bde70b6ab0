"""Triton's iterative sequences (``sequence_batching { iterative_sequence: true }``): a Python model asks to run a
request again in a later batch (``request.set_release_flags(TRITONSERVER_REQUEST_RELEASE_RESCHEDULE)``), as Triton's
iterative-scheduling models generate one step per execute; a request without a correlation ID is a sequence of its
own. Served by the real CLI, called by the real tritonclient."""

from __future__ import annotations

import queue
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from servekit import cli_server, free_port, refused_at_start
from tritonclient.utils import InferenceServerException

from polystack.examples import mlp_onnx

# counts down from its input, one response per execute, running the request again until it reaches 0
COUNTDOWN = '''
import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args):
        self.left = {}

    def execute(self, requests):
        for request in requests:
            key = request.request_id()
            start = int(pb_utils.get_input_tensor_by_name(request, "IN").as_numpy().ravel()[0])
            self.left[key] = self.left.get(key, start) - 1
            sender = request.get_response_sender()
            response = pb_utils.InferenceResponse([pb_utils.Tensor("OUT", np.array([[self.left[key]]], np.int32))])
            if self.left[key] <= 0:
                del self.left[key]
                sender.send(response, flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL)
            else:
                request.set_release_flags(pb_utils.TRITONSERVER_REQUEST_RELEASE_RESCHEDULE)
                sender.send(response)
        return None
'''
# adds its inputs; the first request it sees runs again (None in its place), as Triton's QA model does;
# "returns" answers a rescheduled request all the same, which Triton refuses
ADDS = '''
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args):
        self.seen = 0

    def execute(self, requests):
        responses = []
        for request in requests:
            x = pb_utils.get_input_tensor_by_name(request, "x").as_numpy()
            response = pb_utils.InferenceResponse([pb_utils.Tensor("y", x + 1)])
            if self.seen == 0:
                request.set_release_flags(pb_utils.TRITONSERVER_REQUEST_RELEASE_RESCHEDULE)
                responses.append(response if RETURNS else None)
            else:
                responses.append(response)
            self.seen += 1
        return responses
'''
IO = 'input [ { name: "x", data_type: TYPE_FP32, dims: [ 2 ] } ]\noutput [ { name: "y", data_type: TYPE_FP32, dims: [ 2 ] } ]\n'
ITERATIVE = "sequence_batching { iterative_sequence: true }\n"


def _folder(repo: Path, name: str, source: str, config: str) -> None:
    (repo / name / "1").mkdir(parents=True)
    (repo / name / "1" / "model.py").write_text(source)
    (repo / name / "config.pbtxt").write_text('backend: "python"\n' + config)


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    tmp = tmp_path_factory.mktemp("iterative")
    repo = tmp / "models"
    _folder(repo, "countdown", COUNTDOWN,
        'max_batch_size: 4\nmodel_transaction_policy { decoupled: true }\n'
        'input [ { name: "IN", data_type: TYPE_INT32, dims: [ 1 ] } ]\n'
        'output [ { name: "OUT", data_type: TYPE_INT32, dims: [ 1 ] } ]\n' + ITERATIVE)  # fmt: skip
    by_id = COUNTDOWN.replace("request.request_id()", "request.correlation_id()").replace(
        'pb_utils.Tensor("OUT", np.array([[self.left[key]]], np.int32))',
        'pb_utils.Tensor("OUT", np.array([[self.left[key]]], np.int32)), '
        'pb_utils.Tensor("ID", np.array([[key]], np.int64))',
    )
    _folder(repo, "by_id", by_id,
        'max_batch_size: 4\nmodel_transaction_policy { decoupled: true }\n'
        'input [ { name: "IN", data_type: TYPE_INT32, dims: [ 1 ] } ]\n'
        'output [ { name: "OUT", data_type: TYPE_INT32, dims: [ 1 ] },'
        ' { name: "ID", data_type: TYPE_INT64, dims: [ 1 ] } ]\n'
        + ITERATIVE)  # fmt: skip
    _folder(repo, "adds", ADDS.replace("RETURNS", "False"), IO + ITERATIVE)
    _folder(repo, "returns", ADDS.replace("RETURNS", "True"), IO + ITERATIVE)
    _folder(repo, "plain", ADDS.replace("RETURNS", "False"), IO)  # not iterative: may not run a request again
    port, grpc_port = free_port(), free_port()
    args = ["--model-repository", str(repo), "--allow-python-models", "--grpc-port", str(grpc_port)]
    with cli_server(tmp / "home", args, port, tmp / "log"):
        yield port, grpc_port


def _x(client: object = httpclient) -> object:
    x = client.InferInput("x", [2], "FP32")  # type: ignore[attr-defined]
    x.set_data_from_numpy(np.array([1.0, 2.0], np.float32))
    return x


def test_a_decoupled_models_requests_run_again_until_done_each_answering_as_it_goes(served) -> None:  # type: ignore[no-untyped-def]
    _, grpc_port = served
    answers: queue.Queue[object] = queue.Queue()
    with grpcclient.InferenceServerClient(f"127.0.0.1:{grpc_port}") as client:
        client.start_stream(callback=lambda result, error: answers.put(error or result))
        for start, rid in ((3, "a"), (2, "b")):  # two requests without a correlation ID: a sequence each
            x = grpcclient.InferInput("IN", [1, 1], "INT32")
            x.set_data_from_numpy(np.array([[start]], np.int32))
            client.async_stream_infer("countdown", [x], request_id=rid)
        got: dict[str, list[int]] = {"a": [], "b": []}
        for _ in range(5):
            answer = answers.get(timeout=30)
            assert not isinstance(answer, Exception), answer
            got[answer.get_response().id].append(int(answer.as_numpy("OUT")[0, 0]))  # type: ignore[attr-defined]
        client.stop_stream()
    assert got == {"a": [2, 1, 0], "b": [1, 0]}


def test_a_sequence_without_a_correlation_id_has_its_own_for_the_model(served) -> None:  # type: ignore[no-untyped-def]
    """Triton's scheduler gives each such sequence an ID of its own, which its model reads as the request's
    ``correlation_id()`` (tritonserver 2.51: 1, 2, 3); polystack gave them all 0, so a model keeping state by
    correlation ID (Triton's iterative_sequence backend does) mixed sequences sent together (helper-199)."""
    _, grpc_port = served
    answers: queue.Queue[object] = queue.Queue()
    with grpcclient.InferenceServerClient(f"127.0.0.1:{grpc_port}") as client:
        client.start_stream(callback=lambda result, error: answers.put(error or result))
        for start in (3, 2):
            x = grpcclient.InferInput("IN", [1, 1], "INT32")
            x.set_data_from_numpy(np.array([[start]], np.int32))
            client.async_stream_infer("by_id", [x])
        got: dict[int, list[int]] = {}
        for _ in range(5):
            answer = answers.get(timeout=30)
            assert not isinstance(answer, Exception), answer
            key = int(answer.as_numpy("ID")[0, 0])  # type: ignore[attr-defined]
            got.setdefault(key, []).append(int(answer.as_numpy("OUT")[0, 0]))  # type: ignore[attr-defined]
        client.stop_stream()
    assert sorted(got.values()) == [[1, 0], [2, 1, 0]] and all(key > 0 for key in got), got


def test_a_rescheduled_request_of_a_model_that_is_not_decoupled_is_answered_by_its_later_run(served) -> None:  # type: ignore[no-untyped-def]
    port, _ = served
    with httpclient.InferenceServerClient(f"127.0.0.1:{port}") as client:
        assert client.infer("adds", [_x()]).as_numpy("y").tolist() == [2.0, 3.0]
        stats = client.get_inference_statistics("adds")["model_stats"][0]
        assert (stats["inference_stats"]["success"]["count"], stats["execution_count"]) == (1, 2)  # run twice
        assert client.get_model_config("adds")["sequence_batching"]["iterative_sequence"] is True


def test_running_a_request_again_wrongly_fails_in_tritons_words(served, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    port, _ = served
    with httpclient.InferenceServerClient(f"127.0.0.1:{port}") as client:
        with pytest.raises(InferenceServerException, match="Expected a None object in the execute function return "
                           "list for reschduled request") as returned:  # fmt: skip
            client.infer("returns", [_x()])
        assert returned.value.status() == "500"
        words = (  # Triton core's sentence (helper-199's L0_iterative_sequence run looks for it)
            "Request is released with TRITONSERVER_REQUEST_RELEASE_RESCHEDULE, while the model is not configured to "
            "handle such a flag: set sequence_batching"
        )
        with pytest.raises(InferenceServerException, match=words) as plain:
            client.infer("plain", [_x()])
        assert plain.value.status() == "400"
    # only a Python model runs a request again: an ONNX model's iterative sequence is refused at its load
    repo = tmp_path / "models"
    (repo / "mlp" / "1").mkdir(parents=True)
    mlp_onnx(repo / "mlp" / "1" / "model.onnx")
    (repo / "mlp" / "config.pbtxt").write_text('platform: "onnxruntime_onnx"\nmax_batch_size: 8\n' + ITERATIVE)
    assert "is not a Python model" in refused_at_start(tmp_path, ["--model-repository", str(repo), "--grpc-port", "-1"])
