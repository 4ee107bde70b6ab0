"""Decoupled Python models (``model_transaction_policy { decoupled: true }``): any number of responses to a request,
sent from ``execute`` or from the model's threads after it, streamed to tritonclient's gRPC stream and to HTTP's
generate_stream, refused by the endpoints that answer once, as tritonserver 2.51 serves them."""

from __future__ import annotations

import json
import queue
import re
import signal
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from servekit import cli_server, free_port
from tritonclient.utils import InferenceServerException

from tests.server.test_serve_python_models import python_folder

REPEAT = '''
import json
import threading
import time

import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args):
        self.threads = []

    def execute(self, requests):
        for request in requests:
            mode = json.loads(request.parameters()).get("mode", "")
            values = pb_utils.get_input_tensor_by_name(request, "IN").as_numpy()
            sender = request.get_response_sender()
            if mode == "raise":
                raise ValueError("no stream today")
            if mode == "send_nothing":  # raised in pb_utils' own code
                sender.send(None, flags=0)
            if mode == "thread":
                thread = threading.Thread(target=self.send_all, args=(sender, values, 0.05))
                thread.start()
                self.threads.append(thread)
                continue
            if mode == "until_cancelled":
                thread = threading.Thread(target=self.until_cancelled, args=(request, sender))
                thread.start()
                self.threads.append(thread)
                continue
            if mode == "error":
                sender.send(self.response(values[0], 0))
                error = pb_utils.TritonError("boom")
                sender.send(pb_utils.InferenceResponse(error=error), flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL)
                continue
            if mode == "code":  # an error response with the code the request names (INTERNAL where none)
                code = getattr(pb_utils.TritonError, json.loads(request.parameters()).get("code") or "INTERNAL")
                error = pb_utils.TritonError("refused with a code", code)
                sender.send(pb_utils.InferenceResponse(error=error), flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL)
                continue
            if mode == "after_final":
                sender.send(flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL)
                try:
                    sender.send(self.response(values[0], 0))
                except pb_utils.TritonModelException as e:
                    pb_utils.Logger.log_info(f"refused: {e}")
                continue
            if mode == "return_list":
                sender.send(flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL)
                return [pb_utils.InferenceResponse([])]
            self.send_all(sender, values, 0, final_on_last=mode == "final_on_last", late=mode == "late_final")
        return None

    def send_all(self, sender, values, delay, final_on_last=False, late=False):
        for i, value in enumerate(values):
            time.sleep(delay)
            last = final_on_last and i == len(values) - 1
            sender.send(self.response(value, i), flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL if last else 0)
        if not final_on_last or not len(values):
            time.sleep(0.5 if late else 0)  # late: the flag alone comes after what runs on the last response
            sender.send(flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL)

    def until_cancelled(self, request, sender):
        for i in range(500):
            if sender.is_cancelled():
                pb_utils.Logger.log_info(f"cancelled: {request.request_id()} {request.is_cancelled()} after {i}")
                return
            sender.send(self.response(i, i))
            time.sleep(0.01)
        sender.send(flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL)

    @staticmethod
    def response(value, i):
        return pb_utils.InferenceResponse([
            pb_utils.Tensor("OUT", np.array([value], dtype=np.int32)),
            pb_utils.Tensor("IDX", np.array([i], dtype=np.uint32)),
        ])

    def finalize(self):
        for thread in self.threads:
            thread.join()
'''

REPEAT_CONFIG = """backend: "python"
max_batch_size: 0
model_transaction_policy { decoupled: true }
input [ { name: "IN", data_type: TYPE_INT32, dims: [ -1 ] } ]
output [ { name: "OUT", data_type: TYPE_INT32, dims: [ 1 ] }, { name: "IDX", data_type: TYPE_UINT32, dims: [ 1 ] } ]
model_warmup [ { name: "three", batch_size: 1, inputs { key: "IN" value: { data_type: TYPE_INT32, dims: [ 3 ], zero_data: true } } } ]
"""


# a model that is not decoupled, calling repeat (Triton's business logic scripting): what its responses were
CALLER = '''
import asyncio
import json
import signal

import numpy as np
import triton_python_backend_utils as pb_utils


def show(answer):
    if answer.has_error():
        return "error: " + answer.error().message()
    if not answer.output_tensors():
        return "empty"
    return str(int(pb_utils.get_output_tensor_by_name(answer, "OUT").as_numpy()[0]))


async def later(call):
    return [show(answer) for answer in await call.async_exec(decoupled=True)]


class TritonPythonModel:
    def execute(self, requests):
        responses = []
        for request in requests:
            values = pb_utils.get_input_tensor_by_name(request, "IN").as_numpy()
            mode = json.loads(request.parameters()).get("mode", "")
            call = pb_utils.InferenceRequest(
                model_name="repeat", inputs=[pb_utils.Tensor("IN", values)], requested_output_names=["OUT"],
                parameters={"mode": mode} if mode not in ("", "async", "twice") else {},
            )
            if mode == "twice":  # read whole, then again from the first, as Triton's iterator gives them
                iterator = call.exec(decoupled=True)
                seen = [show(answer) for answer in iterator] + ["again"] + [show(answer) for answer in iterator]
            elif mode == "once":
                answer = call.exec()
                seen = [answer.error().message() if answer.has_error() else "data"]
            elif mode == "async":
                seen = asyncio.run(later(call))
            else:
                seen = [show(answer) for answer in call.exec(decoupled=True)]
            responses.append(pb_utils.InferenceResponse([pb_utils.Tensor("SEEN", np.array(seen, dtype=object))]))
        return responses
'''

# repeat's execute seeing a dynamic batch: each response says how many requests its execute had
BATCHED = REPEAT.replace(
    "    def execute(self, requests):\n", "    def execute(self, requests):\n        self.batch = len(requests)\n"
).replace(
    'pb_utils.Tensor("IDX", np.array([i], dtype=np.uint32)),',
    'pb_utils.Tensor("IDX", np.array([i], dtype=np.uint32)), pb_utils.Tensor("BATCH", np.array([self.batch], np.uint32)),',
).replace("def response(value, i)", "def response(self, value, i)").replace("    @staticmethod\n", "")

BATCHED_CONFIG = """backend: "python"
max_batch_size: 8
model_transaction_policy { decoupled: true }
dynamic_batching { max_queue_delay_microseconds: 300000 }
input [ { name: "IN", data_type: TYPE_INT32, dims: [ 1 ] } ]
output [ { name: "OUT", data_type: TYPE_INT32, dims: [ 1 ] }, { name: "IDX", data_type: TYPE_UINT32, dims: [ 1 ] },
         { name: "BATCH", data_type: TYPE_UINT32, dims: [ 1 ] } ]
"""

# a model that is not decoupled answering through its response sender, as Triton 2.51's may: once, then the final flag
ONCE = '''
import json
import signal
import threading

import numpy as np
import triton_python_backend_utils as pb_utils

FINAL = pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL


class TritonPythonModel:
    def execute(self, requests):
        returned = []
        for request in requests:
            mode = json.loads(request.parameters()).get("mode", "")
            values = pb_utils.get_input_tensor_by_name(request, "IN").as_numpy()
            sender = request.get_response_sender()
            response = pb_utils.InferenceResponse([pb_utils.Tensor("OUT", values * 2)])
            returned.append(None)
            if mode == "thread":
                threading.Timer(0.05, sender.send, args=(response, FINAL)).start()
            elif mode == "twice":
                sender.send(response)
                try:
                    sender.send(response, FINAL)
                except pb_utils.TritonModelException:
                    sender.send(flags=FINAL)
            elif mode == "final_first":
                try:
                    sender.send(flags=FINAL)
                except pb_utils.TritonModelException as e:
                    sender.send(pb_utils.InferenceResponse(error=pb_utils.TritonError(str(e))), FINAL)
            elif mode == "never":  # returns None and never sends: the request waits for an answer
                pass
            elif mode == "and_return":
                sender.send(response, FINAL)
                returned[-1] = response
            else:
                sender.send(response, FINAL)
        return returned
'''

ONCE_CONFIG = """backend: "python"
input [ { name: "IN", data_type: TYPE_INT32, dims: [ -1 ] } ]
output [ { name: "OUT", data_type: TYPE_INT32, dims: [ -1 ] } ]
"""

# one input X to one output Y = X * a + b (its config's parameters): an ensemble's steps around repeat; a request's
# pause_ms parameter holds its answer that long (a step slower than what a test waits for around it)
AFFINE = '''
import json
import signal
import time

import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args):
        parameters = json.loads(args["model_config"])["parameters"]
        self.a, self.b = (int(parameters[k]["string_value"]) for k in ("a", "b"))

    def execute(self, requests):
        time.sleep(max(json.loads(r.parameters()).get("pause_ms", 0) for r in requests) / 1000)
        return [
            pb_utils.InferenceResponse(
                [pb_utils.Tensor("Y", pb_utils.get_input_tensor_by_name(r, "X").as_numpy() * self.a + self.b)]
            )
            for r in requests
        ]
'''


def affine_config(a: int, b: int, dims: str) -> str:
    return (
        f'backend: "python"\ninput [ {{ name: "X", data_type: TYPE_INT32, dims: [ {dims} ] }} ]\n'
        f'output [ {{ name: "Y", data_type: TYPE_INT32, dims: [ {dims} ] }} ]\n'
        f'parameters [ {{ key: "a" value: {{ string_value: "{a}" }} }}, {{ key: "b" value: {{ string_value: "{b}" }} }} ]\n'
    )


# plus one, repeat (decoupled), times ten: an answer for each of repeat's responses
PIPE = """platform: "ensemble"
input [ { name: "IN", data_type: TYPE_INT32, dims: [ -1 ] } ]
output [ { name: "FINAL", data_type: TYPE_INT32, dims: [ 1 ] }, { name: "IDX", data_type: TYPE_UINT32, dims: [ 1 ] } ]
ensemble_scheduling { step [
  { model_name: "plus", model_version: -1, input_map { key: "X" value: "IN" }, output_map { key: "Y" value: "P" } },
  { model_name: "repeat", model_version: -1, input_map { key: "IN" value: "P" },
    output_map [ { key: "OUT" value: "R" }, { key: "IDX" value: "IDX" } ] },
  { model_name: "times", model_version: -1, input_map { key: "X" value: "R" }, output_map { key: "Y" value: "FINAL" } }
] }
"""

# pipe as a nested ensemble's step, then times ten again
OUTER = """platform: "ensemble"
input [ { name: "IN", data_type: TYPE_INT32, dims: [ -1 ] } ]
output [ { name: "OUT", data_type: TYPE_INT32, dims: [ 1 ] } ]
ensemble_scheduling { step [
  { model_name: "pipe", model_version: -1, input_map { key: "IN" value: "IN" }, output_map { key: "FINAL" value: "F" } },
  { model_name: "times", model_version: -1, input_map { key: "X" value: "F" }, output_map { key: "Y" value: "OUT" } }
] }
"""

# repeat under sequence batching (without its warm-up: a sequence model has none): its requests carry their
# sequence's id, as any sequence model's
SEQUENCE_CONFIG = REPEAT_CONFIG.split("model_warmup")[0] + "sequence_batching { }\n"

# a model that is not decoupled answering each request an error with the code it names (INTERNAL where none)
FAILING = """
import json

import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):
        codes = [getattr(pb_utils.TritonError, json.loads(r.parameters()).get("code") or "INTERNAL") for r in requests]
        return [pb_utils.InferenceResponse(error=pb_utils.TritonError("refused with a code", c)) for c in codes]
"""

FAILING_CONFIG = """backend: "python"
max_batch_size: 0
input [ { name: "IN", data_type: TYPE_INT32, dims: [ -1 ] } ]
output [ { name: "OUT", data_type: TYPE_INT32, dims: [ 1 ] } ]
"""

CALLER_CONFIG = """backend: "python"
input [ { name: "IN", data_type: TYPE_INT32, dims: [ -1 ] } ]
output [ { name: "SEEN", data_type: TYPE_STRING, dims: [ -1 ] } ]
"""


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Any:
    root = tmp_path_factory.mktemp("decoupled")
    python_folder(root / "models", "repeat", REPEAT, REPEAT_CONFIG)
    python_folder(root / "models", "caller", CALLER, CALLER_CONFIG)
    python_folder(root / "models", "once", ONCE, ONCE_CONFIG)
    python_folder(root / "models", "failing", FAILING, FAILING_CONFIG)
    python_folder(root / "models", "repeat_seq", REPEAT, SEQUENCE_CONFIG)
    python_folder(root / "models", "plus", AFFINE, affine_config(1, 1, "-1"))
    python_folder(root / "models", "times", AFFINE, affine_config(10, 0, "1"))
    (root / "models" / "pipe" / "1").mkdir(parents=True)
    (root / "models" / "pipe" / "config.pbtxt").write_text(PIPE)
    (root / "models" / "outer" / "1").mkdir(parents=True)
    (root / "models" / "outer" / "config.pbtxt").write_text(OUTER)
    python_folder(root / "models", "repeat_batched", BATCHED, BATCHED_CONFIG)
    port, grpc_port = free_port(), free_port()
    args = ["--model-repository", str(root / "models"), "--allow-python-models", "--grpc-port", str(grpc_port)]
    with cli_server(root / "home", args, port, root / "log") as proc:
        yield port, grpc_port, proc, root / "log"


def _stream(grpc_port: int, requests: list[tuple[list[int], dict[str, Any], str]], empty_final: bool = False,
            until: int | None = None) -> list[Any]:
    """What a tritonclient stream gets for ``requests`` (IN, parameters, id): (result or error) in order, until
    every request's final answer came (or ``until`` answers, and then any more within half a second)."""
    got: queue.Queue[Any] = queue.Queue()
    client = grpcclient.InferenceServerClient(f"127.0.0.1:{grpc_port}")
    client.start_stream(callback=lambda result, error: got.put(error if error is not None else result))
    try:
        for values, parameters, rid in requests:
            x = grpcclient.InferInput("IN", [len(values)], "INT32")
            x.set_data_from_numpy(np.array(values, dtype=np.int32))
            client.async_stream_infer(
                "repeat", [x], request_id=rid, parameters=parameters, enable_empty_final_response=empty_final
            )
        answers: list[Any] = []
        finals = 0
        deadline = time.monotonic() + 20
        while finals < len(requests) and (until is None or len(answers) < until):
            answer = got.get(timeout=max(0.1, deadline - time.monotonic()))
            answers.append(answer)
            if isinstance(answer, InferenceServerException):
                finals += 1  # an error ends its request here (each case's model sends nothing after it)
            elif answer.get_response().parameters["triton_final_response"].bool_param:
                finals += 1
        if until is not None:
            time.sleep(0.5)
            while not got.empty():
                answers.append(got.get())
        return answers
    finally:
        client.stop_stream()
        client.close()


def _values(answer: Any) -> tuple[int, int, bool]:
    final = answer.get_response().parameters["triton_final_response"].bool_param
    return int(answer.as_numpy("OUT")[0]), int(answer.as_numpy("IDX")[0]), final


def test_a_decoupled_model_streams_each_response_as_it_sends_it(server: Any) -> None:
    _, grpc_port, _, _ = server
    answers = _stream(grpc_port, [([4, 5, 6], {}, "r1")], empty_final=True)
    data, last = answers[:-1], answers[-1]
    assert [_values(a) for a in data] == [(4, 0, False), (5, 1, False), (6, 2, False)]
    assert all(a.get_response().id == "r1" and a.get_response().model_name == "repeat" for a in data)
    assert last.get_response().outputs == [] and last.get_response().parameters["triton_final_response"].bool_param


def test_the_final_flag_alone_is_sent_only_to_a_client_that_asks_for_it(server: Any) -> None:
    _, grpc_port, _, _ = server
    answers = _stream(grpc_port, [([4, 5], {}, "a"), ([], {}, "b")], until=2)
    by_id: dict[str, list[Any]] = {}
    for a in answers:
        by_id.setdefault(a.get_response().id, []).append(a)
    assert [_values(a) for a in by_id["a"]] == [(4, 0, False), (5, 1, False)]
    assert "b" not in by_id  # its one answer, the final flag alone, is not sent
    (last,) = _stream(grpc_port, [([], {}, "c")], empty_final=True)
    assert last.get_response().id == "c" and last.get_response().parameters["triton_final_response"].bool_param
    # as Triton's: the model's name and the request's id alone (no version, no outputs)
    assert (last.get_response().model_name, last.get_response().model_version) == ("repeat", "")


def test_a_response_on_the_final_flag_is_the_last(server: Any) -> None:
    _, grpc_port, _, _ = server
    answers = _stream(grpc_port, [([7, 8], {"mode": "final_on_last"}, "f")], empty_final=True)
    assert [_values(a) for a in answers] == [(7, 0, False), (8, 1, True)]


def test_responses_sent_from_the_model_s_thread_after_execute_returned_are_streamed(server: Any) -> None:
    _, grpc_port, _, _ = server
    answers = _stream(grpc_port, [([1, 2, 3], {"mode": "thread"}, "t"), ([9], {}, "u")], until=4)
    got = {(a.get_response().id, *_values(a)) for a in answers}
    assert got == {("t", 1, 0, False), ("t", 2, 1, False), ("t", 3, 2, False), ("u", 9, 0, False)}
    # the quick request's answer is not held up by the slow one's before it
    assert answers[0].get_response().id == "u"


def test_an_error_response_reaches_the_client_and_the_stream_goes_on(server: Any) -> None:
    _, grpc_port, _, _ = server
    answers = _stream(grpc_port, [([4], {"mode": "error"}, "e")], until=2)
    assert _values(answers[0]) == (4, 0, False)
    assert isinstance(answers[1], InferenceServerException) and answers[1].message() == "boom"
    (after,) = _stream(grpc_port, [([3], {"mode": "final_on_last"}, "g")])
    assert _values(after) == (3, 0, True)


def test_an_exception_in_execute_is_the_request_s_final_error_in_triton_s_words(server: Any) -> None:
    """Its frames name the model's files in the repository, as Triton's (which runs them there): helper-225 saw
    the copy polystack runs them from."""
    _, grpc_port, _, log = server
    model_py = re.escape(str(log.parent / "models" / "repeat" / "1" / "model.py"))
    answers = _stream(grpc_port, [([4], {"mode": "raise"}, "x"), ([5], {"mode": "final_on_last"}, "y")])
    errors = [a for a in answers if isinstance(a, InferenceServerException)]
    (error,) = [e.message() for e in errors]
    # Triton's words, with its stub's traceback: the frames from the innermost out to execute, none of polystack's
    words, at = error.split("\n\nAt:\n")
    assert words == "Failed to process the request(s) for model 'repeat_0', message: ValueError: no stream today"
    assert re.fullmatch(rf"  {model_py}\(\d+\): execute\n", at), at
    assert [_values(a) for a in answers if a not in errors] == [(5, 0, True)]
    # one raised in pb_utils' code (Triton's C++ there): the model's frames alone (helper-211: polystack's own file
    # and line were the innermost)
    (answer,) = _stream(grpc_port, [([4], {"mode": "send_nothing"}, "n")])
    assert isinstance(answer, InferenceServerException)
    words, at = answer.message().split("\n\nAt:\n")
    assert words.endswith("TritonModelException: Inference Response object must be provided when the response flags "
                          "is set to zero."), words  # fmt: skip
    assert re.fullmatch(rf"  {model_py}\(\d+\): execute\n", at), at


def test_endpoints_that_answer_once_refuse_a_decoupled_model_in_triton_s_words(server: Any) -> None:
    port, grpc_port, _, _ = server
    x = grpcclient.InferInput("IN", [1], "INT32")
    x.set_data_from_numpy(np.array([7], dtype=np.int32))
    with grpcclient.InferenceServerClient(f"127.0.0.1:{grpc_port}") as client, pytest.raises(InferenceServerException) as e:
        client.infer("repeat", [x])
    assert e.value.status() == "StatusCode.UNIMPLEMENTED"
    assert e.value.message().startswith("ModelInfer RPC doesn't support models with decoupled transaction policy")
    h = httpclient.InferInput("IN", [1], "INT32")
    h.set_data_from_numpy(np.array([7], dtype=np.int32))
    with httpclient.InferenceServerClient(f"127.0.0.1:{port}") as client:
        with pytest.raises(InferenceServerException) as e:
            client.infer("repeat", [h])
        assert e.value.message().startswith("HTTP end point doesn't support models with decoupled transaction policy")
        assert client.is_server_live()


def test_generate_stream_sends_each_response_as_an_event_as_it_comes(server: Any) -> None:
    port, _, _, _ = server
    with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=10) as client:
        with client.stream("POST", "/v2/models/repeat/generate_stream", json={"IN": [4, 5, 6], "mode": "thread"}) as r:
            assert r.status_code == 200
            assert r.headers["content-type"] == "text/event-stream; charset=utf-8"
            assert r.headers["transfer-encoding"] == "chunked"
            events = [json.loads(line[len("data: "):]) for line in r.iter_lines() if line]
        assert events == [
            {"model_name": "repeat", "model_version": "1", "OUT": v, "IDX": i} for i, v in enumerate([4, 5, 6])
        ]
        r = client.post("/v2/models/repeat/generate_stream", json={"IN": [4], "mode": "error"})
        assert r.status_code == 200
        assert r.text.split("\n\n")[:2] == [
            'data: {"model_name":"repeat","model_version":"1","OUT":4,"IDX":0}', 'data: {"error":"boom"}'
        ]
        r = client.post("/v2/models/repeat/generate_stream", json={"nothing": [4]})  # refused before it ran
        assert r.status_code == 400 and "error" in r.json()
        # the connection serves its next request after a stream
        r = client.post("/v2/models/repeat/generate", json={"IN": [7]})
        assert r.status_code == 200 and r.json() == {"model_name": "repeat", "model_version": "1", "OUT": 7, "IDX": 0}
        r = client.post("/v2/models/repeat/generate", json={"IN": [7, 8]})
        assert r.status_code == 400  # Triton answers 200, with the same error
        assert r.json()["error"] == (
            "generate expects model to produce exactly 1 response, use generate stream for model that generates "
            "various number of responses (model 'repeat' sent 2)"
        )
        r = client.post("/v2/models/repeat/generate", json={"IN": [7], "mode": "error"})  # a response, then an error
        assert r.status_code == 400 and "(model 'repeat' sent 2)" in r.json()["error"]
        r = client.post("/v2/models/repeat/generate", json={"IN": [7], "mode": "raise"})
        # the model's failure: 400, as Triton's generate answers it (its /infer: 500)
        assert r.status_code == 400 and r.json()["error"].startswith("Failed to process the request(s) for model")
        r = client.post("/v2/models/repeat/generate_stream", json={"IN": [7], "mode": "raise"})
        assert r.status_code == 400 and r.text.startswith('data: {"error":"Failed to process the request(s)')


def test_generate_answers_a_models_error_response_400_whatever_its_code_as_triton(server: Any) -> None:
    """tritonserver 2.51 answers a model's failure on generate and generate_stream 400 (the stream's as an event),
    whatever its error's code, decoupled model or not; polystack answered the code's /infer status (503 for
    UNAVAILABLE, 404 for NOT_FOUND), and generate_stream a JSON error, not an event (helper-194)."""
    port, _, _, _ = server
    with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=10) as client:
        for model, extra in (("failing", {}), ("repeat", {"mode": "code"})):
            for code in ("UNAVAILABLE", "NOT_FOUND", "INVALID_ARG", "UNKNOWN", "INTERNAL", ""):
                body = {"IN": [1], "code": code, **extra}
                r = client.post(f"/v2/models/{model}/generate", json=body)
                assert (r.status_code, r.json()) == (400, {"error": "refused with a code"}), (model, code)
                r = client.post(f"/v2/models/{model}/generate_stream", json=body)
                assert r.status_code == 400 and r.text == 'data: {"error":"refused with a code"}\n\n', (model, code)
        # infer keeps the status of the code, as Triton's does
        request = {"inputs": [{"name": "IN", "shape": [1], "datatype": "INT32", "data": [1]}]}
        r = client.post("/v2/models/failing/infer", json={**request, "parameters": {"code": "UNAVAILABLE"}})
        assert (r.status_code, r.json()["error"]) == (503, "refused with a code")


def _seen(port: int, values: list[int], mode: str = "") -> list[str]:
    x = httpclient.InferInput("IN", [len(values)], "INT32")
    x.set_data_from_numpy(np.array(values, dtype=np.int32))
    with httpclient.InferenceServerClient(f"127.0.0.1:{port}") as client:
        result = client.infer("caller", [x], parameters={"mode": mode} if mode else None)
    return [v.decode() for v in result.as_numpy("SEEN")]


def test_a_model_reads_a_decoupled_model_s_responses_as_they_come(server: Any) -> None:
    port, _, _, _ = server
    assert _seen(port, [4, 5, 6]) == ["4", "5", "6", "empty"]  # the final flag alone: an empty response, last
    assert _seen(port, [4, 5], "final_on_last") == ["4", "5"]
    assert _seen(port, [4], "error") == ["4", "error: boom"]  # its own error response, as it sent it
    assert _seen(port, [4], "thread") == ["4", "empty"]
    raised = _seen(port, [4], "raise")
    assert len(raised) == 1 and "no stream today" in raised[0]
    assert _seen(port, [4], "once") == [  # Triton's words, its stray quote included
        "Model repeat - Error when running inference: Model repeat is using the decoupled. The current BLS request "
        "call doesn't support models using the decoupled transaction policy. Please use 'decoupled=True' argument to "
        "the 'exec' or 'async_exec' calls for decoupled models.'"
    ]
    assert _seen(port, [4, 5], "async") == ["4", "5", "empty"]  # await async_exec(decoupled=True): the iterator
    # read to its end, the iterator gives its responses again (helper-182: Triton's test_response_iterator)
    assert _seen(port, [4, 5], "twice") == ["4", "5", "empty", "again", "4", "5", "empty"]


def test_a_decoupled_model_s_requests_are_batched_each_with_its_own_responses(server: Any) -> None:
    _, grpc_port, _, _ = server
    got: queue.Queue[Any] = queue.Queue()
    with grpcclient.InferenceServerClient(f"127.0.0.1:{grpc_port}") as client:
        client.start_stream(callback=lambda result, error: got.put(error if error is not None else result))
        for i in range(4):
            x = grpcclient.InferInput("IN", [1, 1], "INT32")
            x.set_data_from_numpy(np.array([[10 + i]], dtype=np.int32))
            client.async_stream_infer("repeat_batched", [x], request_id=str(i), parameters={"mode": "final_on_last"})
        answers = [got.get(timeout=10) for _ in range(4)]
        client.stop_stream()
    by_id = {a.get_response().id: a for a in answers}
    assert {i: int(a.as_numpy("OUT").ravel()[0]) for i, a in by_id.items()} == {str(i): 10 + i for i in range(4)}
    assert max(int(a.as_numpy("BATCH").ravel()[0]) for a in answers) > 1  # gathered into one execute
    assert all(a.get_response().parameters["triton_final_response"].bool_param for a in answers)


def test_a_client_that_cancels_its_stream_cancels_the_model_s_requests(server: Any) -> None:
    port, grpc_port, _, log = server

    def failed() -> int:
        stats = httpx.get(f"http://127.0.0.1:{port}/v2/models/repeat/stats").json()["model_stats"][0]
        return int(stats["inference_stats"]["fail"]["count"])

    failed_before = failed()
    got: queue.Queue[Any] = queue.Queue()
    client = grpcclient.InferenceServerClient(f"127.0.0.1:{grpc_port}")
    client.start_stream(callback=lambda result, error: got.put(error if error is not None else result))
    x = grpcclient.InferInput("IN", [1], "INT32")
    x.set_data_from_numpy(np.array([0], dtype=np.int32))
    client.async_stream_infer("repeat", [x], request_id="long", parameters={"mode": "until_cancelled"})
    for _ in range(3):
        got.get(timeout=10)
    client.stop_stream(cancel_requests=True)
    client.close()
    deadline = time.monotonic() + 10
    while "cancelled: long True" not in log.read_text() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert "cancelled: long True" in log.read_text()
    # and an HTTP client that goes away mid-stream
    body = {"IN": [0], "mode": "until_cancelled", "id": "gone"}
    with (
        httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=10) as http,
        http.stream("POST", "/v2/models/repeat/generate_stream", json=body) as r,
    ):
        assert next(r.iter_lines()).startswith("data: ")
    deadline = time.monotonic() + 10
    while "cancelled: gone True" not in log.read_text() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert "cancelled: gone True" in log.read_text()
    assert failed() == failed_before  # its run went on and succeeded, as Triton counts a cancelled request


def test_a_model_that_is_not_decoupled_may_answer_once_through_its_response_sender(server: Any) -> None:
    port, _, _, _ = server
    x = httpclient.InferInput("IN", [2], "INT32")
    x.set_data_from_numpy(np.array([3, 4], dtype=np.int32))
    with httpclient.InferenceServerClient(f"127.0.0.1:{port}") as client:
        for mode in ("", "thread", "twice"):  # sent in execute, from a thread after it, once then refused
            result = client.infer("once", [x], parameters={"mode": mode})
            assert result.as_numpy("OUT").tolist() == [6, 8]
        with pytest.raises(InferenceServerException) as e:
            client.infer("once", [x], parameters={"mode": "final_first"})
        assert e.value.message() == (
            "Unable to send response. Non-decoupled model cannot send complete final before sending a response."
        )
        # sent, then returned too: the client has the one sent, as tritonserver 2.51's (helper-161), the rest is logged
        assert client.infer("once", [x], parameters={"mode": "and_return"}).as_numpy("OUT").tolist() == [6, 8]
        assert client.infer("once", [x]).as_numpy("OUT").tolist() == [6, 8]


def test_its_config_says_it_is_decoupled_over_http_and_grpc(server: Any) -> None:
    port, grpc_port, _, _ = server
    with httpclient.InferenceServerClient(f"127.0.0.1:{port}") as client:
        assert client.get_model_config("repeat")["model_transaction_policy"] == {"decoupled": True}
        assert "model_transaction_policy" not in client.get_model_config("caller")  # as Triton shows one that is not
    with grpcclient.InferenceServerClient(f"127.0.0.1:{grpc_port}") as client:
        assert client.get_model_config("repeat").config.model_transaction_policy.decoupled


def test_an_ensemble_with_a_decoupled_step_answers_for_each_of_its_responses(server: Any) -> None:
    port, grpc_port, _, _ = server
    got: queue.Queue[Any] = queue.Queue()
    with grpcclient.InferenceServerClient(f"127.0.0.1:{grpc_port}") as client:
        client.start_stream(callback=lambda result, error: got.put(error if error is not None else result))
        x = grpcclient.InferInput("IN", [3], "INT32")
        x.set_data_from_numpy(np.array([1, 2, 3], dtype=np.int32))
        client.async_stream_infer("pipe", [x], request_id="p", enable_empty_final_response=True)
        answers = [got.get(timeout=10) for _ in range(3)]
        client.stop_stream()
        assert client.get_model_config("pipe").config.model_transaction_policy.decoupled  # as Triton shows it
    # plus one, then repeat's each, then times ten; repeat's final flag, sent alone at once, ends the last answer
    assert [(int(a.as_numpy("FINAL")[0]), int(a.as_numpy("IDX")[0])) for a in answers] == [(20, 0), (30, 1), (40, 2)]
    assert [a.get_response().parameters["triton_final_response"].bool_param for a in answers] == [False] * 2 + [True]
    assert all(a.get_response().model_name == "pipe" and a.get_response().id == "p" for a in answers)
    with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=10) as http:
        r = http.post("/v2/models/pipe/generate_stream", json={"IN": [5, 6]})
        assert [json.loads(e[len("data: "):])["FINAL"] for e in r.text.split("\n\n") if e] == [60, 70]
        r = http.post("/v2/models/pipe/infer", json={"inputs": [{"name": "IN", "shape": [1], "datatype": "INT32", "data": [1]}]})
        assert r.status_code == 501 and r.json()["error"].startswith("HTTP end point doesn't support models with decoupled")
        # an ensemble whose step is such an ensemble answers for each response too
        r = http.post("/v2/models/outer/generate_stream", json={"IN": [5, 6]})
        assert [json.loads(e[len("data: "):])["OUT"] for e in r.text.split("\n\n") if e] == [600, 700]
        # a step's failure fails the ensemble's request, in Triton's words with the step's
        r = http.post("/v2/models/pipe/generate_stream", json={"IN": [5], "mode": "raise"})
        assert "in ensemble 'pipe', " in r.text and "no stream today" in r.text and "[step 1 (repeat)]" in r.text



@pytest.mark.parametrize("model", ["pipe", "outer"])
def test_an_ensemble_sends_its_last_answer_final_where_its_decoupled_step_sent_its_last_response_final(
    server: Any, model: str
) -> None:
    """helper-164: a step that sends its last response with the final flag (as TensorRT-LLM's models end a stream)
    ends the ensemble's request with that answer, as tritonserver 2.51 sends it; polystack sent it not final, then
    the flag alone, which a client that did not ask for empty final responses never sees. Nested ensembles too."""
    _, grpc_port, _, _ = server
    got: queue.Queue[Any] = queue.Queue()
    with grpcclient.InferenceServerClient(f"127.0.0.1:{grpc_port}") as client:
        client.start_stream(callback=lambda result, error: got.put(error if error is not None else result))
        x = grpcclient.InferInput("IN", [2], "INT32")
        x.set_data_from_numpy(np.array([1, 2], dtype=np.int32))
        client.async_stream_infer(model, [x], request_id="f", parameters={"mode": "final_on_last"}, enable_empty_final_response=True)
        answers = [got.get(timeout=10) for _ in range(2)]
        # the flag alone, at once: it has come when the last answer goes, which it ends (helper-186: Triton marks the
        # answer that completes the request final; polystack sent the flag alone after, which clients not asking
        # for empty final responses never saw, so they waited for good). Its other steps pause 0.2 s (parameters reach
        # every step), so that the flag has come however busy the host: a clean clone's run, on two loaded cores,
        # once sent the last answer before repeat's thread sent the flag
        client.async_stream_infer(model, [x], request_id="g", parameters={"pause_ms": 200})
        alone = [got.get(timeout=10) for _ in range(2)]
        # the flag alone, 0.5 s after the last response: the last answer went before it, so it comes alone
        client.async_stream_infer(model, [x], request_id="h", parameters={"mode": "late_final"},
                                  enable_empty_final_response=True)  # fmt: skip
        later = [got.get(timeout=10) for _ in range(3)]
        client.stop_stream()
    assert [a.get_response().parameters["triton_final_response"].bool_param for a in answers] == [False, True]
    assert all(a.get_response().id == "f" for a in answers)  # nothing more for it: the next is the next request's
    assert [(a.get_response().id, a.get_response().parameters["triton_final_response"].bool_param) for a in alone] == [
        ("g", False), ("g", True)
    ]  # fmt: skip
    assert [a.get_response().id for a in later] == ["h"] * 3
    assert [a.get_response().parameters["triton_final_response"].bool_param for a in later] == [False, False, True]
    assert len(later[2].get_response().outputs) == 0

def test_sigterm_lets_a_decoupled_stream_send_its_last_response_before_the_exit(tmp_path: Path) -> None:
    python_folder(tmp_path / "models", "repeat", REPEAT, REPEAT_CONFIG)
    port, grpc_port = free_port(), free_port()
    args = ["--model-repository", str(tmp_path / "models"), "--allow-python-models", "--grpc-port", str(grpc_port),
            "--drain-timeout-s", "10"]  # fmt: skip
    with cli_server(tmp_path / "home", args, port, tmp_path / "log") as proc:
        got: queue.Queue[Any] = queue.Queue()
        client = grpcclient.InferenceServerClient(f"127.0.0.1:{grpc_port}")
        client.start_stream(callback=lambda result, error: got.put(error if error is not None else result))
        x = grpcclient.InferInput("IN", [8], "INT32")
        x.set_data_from_numpy(np.arange(8, dtype=np.int32))
        # a thread sends the 8 responses 50 ms apart, after execute returned
        client.async_stream_infer("repeat", [x], parameters={"mode": "thread"}, enable_empty_final_response=True)
        first = got.get(timeout=10)
        proc.send_signal(signal.SIGTERM)
        answers = [first] + [got.get(timeout=10) for _ in range(8)]
        client.stop_stream()
        assert [int(a.as_numpy("OUT")[0]) for a in answers[:8]] == list(range(8))
        assert answers[8].get_response().parameters["triton_final_response"].bool_param
        assert proc.wait(timeout=30) == 0


# sends each request's responses from a thread of its own, after execute returned (as vLLM's model does), which its
# finalize stops (as an engine's shutdown stops its generations): a response after it says so
GENERATE = '''
import threading
import time

import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args):
        self.finalized = False

    def execute(self, requests):
        for request in requests:
            n = int(pb_utils.get_input_tensor_by_name(request, "IN").as_numpy()[0])
            threading.Thread(target=self.generate, args=(request.get_response_sender(), n), daemon=True).start()
        return None

    def generate(self, sender, n):
        for i in range(n):
            time.sleep(0.05)
            if self.finalized:
                return  # stopped: no final response
            sender.send(pb_utils.InferenceResponse([pb_utils.Tensor("OUT", np.array([i], dtype=np.int32))]))
        sender.send(flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL)

    def finalize(self):
        self.finalized = True
'''
GENERATE_CONFIG = """backend: "python"
model_transaction_policy { decoupled: true }
input [ { name: "IN", data_type: TYPE_INT32, dims: [ 1 ] } ]
output [ { name: "OUT", data_type: TYPE_INT32, dims: [ 1 ] } ]
"""


def test_an_unload_closes_a_decoupled_model_once_its_requests_had_their_final_responses(tmp_path: Path) -> None:
    python_folder(tmp_path / "models", "generate", GENERATE, GENERATE_CONFIG)
    port, grpc_port = free_port(), free_port()
    args = ["--model-repository", str(tmp_path / "models"), "--allow-python-models", "--grpc-port", str(grpc_port),
            "--model-control-mode", "explicit", "--load-model", "generate"]  # fmt: skip
    with cli_server(tmp_path / "home", args, port, tmp_path / "log"):
        got: queue.Queue[Any] = queue.Queue()
        client = grpcclient.InferenceServerClient(f"127.0.0.1:{grpc_port}")
        client.start_stream(callback=lambda result, error: got.put(error if error is not None else result))
        x = grpcclient.InferInput("IN", [1], "INT32")
        x.set_data_from_numpy(np.array([10], dtype=np.int32))
        client.async_stream_infer("generate", [x], enable_empty_final_response=True)
        answers = [got.get(timeout=10)]  # generating, its execute long returned: the model is unloaded
        http = httpclient.InferenceServerClient(f"127.0.0.1:{port}")
        http.unload_model("generate")
        answers += [got.get(timeout=10) for _ in range(10)]  # the rest, and the final flag: it closes after them
        client.stop_stream()
        assert [int(a.as_numpy("OUT")[0]) for a in answers[:10]] == list(range(10))
        assert answers[10].get_response().parameters["triton_final_response"].bool_param
        deadline = time.monotonic() + 10
        while http.is_model_ready("generate") and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not http.is_model_ready("generate")


def test_an_exit_after_an_unload_waits_for_its_streams_no_longer_than_the_drain(tmp_path: Path) -> None:
    """A stream whose final response never comes holds its model's unload up to 30 s, but not the exit past
    --drain-timeout-s."""
    never = GENERATE.replace("        sender.send(flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL)\n", "")
    python_folder(tmp_path / "models", "generate", never, GENERATE_CONFIG)
    port, grpc_port = free_port(), free_port()
    args = ["--model-repository", str(tmp_path / "models"), "--allow-python-models", "--grpc-port", str(grpc_port),
            "--model-control-mode", "explicit", "--load-model", "generate", "--drain-timeout-s", "1"]  # fmt: skip
    with cli_server(tmp_path / "home", args, port, tmp_path / "log") as proc:
        got: queue.Queue[Any] = queue.Queue()
        client = grpcclient.InferenceServerClient(f"127.0.0.1:{grpc_port}")
        client.start_stream(callback=lambda result, error: got.put(error if error is not None else result))
        x = grpcclient.InferInput("IN", [1], "INT32")
        x.set_data_from_numpy(np.array([2], dtype=np.int32))
        client.async_stream_infer("generate", [x])
        got.get(timeout=10)
        httpclient.InferenceServerClient(f"127.0.0.1:{port}").unload_model("generate")  # waits for its final
        stopped = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
        assert time.monotonic() - stopped < 10  # the drain's second, and the close: not the unload's 30 s
        client.stop_stream()


# winds a request down after its client went away (as an engine stops a generation), then sends the final flag
WINDS_DOWN = '''
import threading
import time

import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):
        for request in requests:
            threading.Thread(target=self.run, args=(request.get_response_sender(),), daemon=True).start()
        return None

    def run(self, sender):
        for _ in range(1000):
            if sender.is_cancelled():
                break
            time.sleep(0.01)
        time.sleep(1.0)
        try:
            sender.send(flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL)
            pb_utils.Logger.log_info("final sent")
        except Exception as e:
            pb_utils.Logger.log_info(f"final refused: {e}")
'''


def test_the_exit_waits_for_the_final_response_of_a_request_whose_client_went_away(tmp_path: Path) -> None:
    """helper-203 (qa/L0_grpc_state_cleanup beside tritonserver 2.51): a client cancels its stream, the server is
    stopped while the model winds the request down; 2.51 exits once the model sent the final flag, polystack exited
    at once and the model's send failed ('Response sender has been closed')."""
    python_folder(tmp_path / "models", "winds", WINDS_DOWN, GENERATE_CONFIG)
    grpc_port, log = free_port(), tmp_path / "log"
    args = ["--model-repository", str(tmp_path / "models"), "--allow-python-models", "--grpc-port", str(grpc_port),
            "--drain-timeout-s", "20"]  # fmt: skip
    with cli_server(tmp_path / "home", args, free_port(), log) as proc:
        client = grpcclient.InferenceServerClient(f"127.0.0.1:{grpc_port}")
        client.start_stream(callback=lambda result, error: None)
        x = grpcclient.InferInput("IN", [1], "INT32")
        x.set_data_from_numpy(np.array([1], dtype=np.int32))
        client.async_stream_infer("winds", [x])
        time.sleep(0.5)
        client.stop_stream(cancel_requests=True)
        time.sleep(0.2)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
    text = log.read_text()
    assert "final sent" in text and "final refused" not in text, text[-2000:]
    assert "had no final response when its model was unloaded" not in text


def test_the_time_to_a_decoupled_request_s_first_response_is_a_histogram_on_metrics(server: Any) -> None:
    port, grpc_port, _, _ = server

    def firsts() -> float:
        text = httpx.get(f"http://127.0.0.1:{port}/metrics").text
        line = 'polystack_inference_first_response_duration_seconds_count{model="repeat",version="1"} '
        return sum(float(row[len(line):]) for row in text.splitlines() if row.startswith(line))

    before = firsts()
    _stream(grpc_port, [([1, 2, 3], {"mode": "final_on_last"}, "m")])
    assert firsts() == before + 1  # once per request, at its first response


def test_a_decoupled_sequence_model_streams_each_request_of_its_sequences(server: Any) -> None:
    _, grpc_port, _, _ = server
    got: queue.Queue[Any] = queue.Queue()
    with grpcclient.InferenceServerClient(f"127.0.0.1:{grpc_port}") as client:
        client.start_stream(callback=lambda result, error: got.put(error if error is not None else result))
        for values, start, end in (([1, 2], True, False), ([3], False, True)):
            x = grpcclient.InferInput("IN", [len(values)], "INT32")
            x.set_data_from_numpy(np.array(values, dtype=np.int32))
            client.async_stream_infer(
                "repeat_seq", [x], sequence_id=7, sequence_start=start, sequence_end=end,
                parameters={"mode": "final_on_last"},
            )  # fmt: skip
        answers = [got.get(timeout=10) for _ in range(3)]
        x = grpcclient.InferInput("IN", [1], "INT32")
        x.set_data_from_numpy(np.array([9], dtype=np.int32))
        client.async_stream_infer("repeat_seq", [x])  # no sequence: refused in Triton's words, in the stream
        refused = got.get(timeout=10)
        client.stop_stream()
    assert [int(a.as_numpy("OUT")[0]) for a in answers] == [1, 2, 3]
    assert isinstance(refused, InferenceServerException)
    assert "must specify a non-zero or non-empty correlation ID" in refused.message()


def test_a_request_its_model_never_answers_fails_at_the_exit_which_it_does_not_hold_up(tmp_path: Path) -> None:
    python_folder(tmp_path / "models", "once", ONCE, ONCE_CONFIG)
    port = free_port()
    args = ["--model-repository", str(tmp_path / "models"), "--allow-python-models", "--grpc-port", "-1",
            "--exit-timeout-secs", "3"]  # fmt: skip
    with cli_server(tmp_path / "home", args, port, tmp_path / "log") as proc:
        got: queue.Queue[Any] = queue.Queue()

        def ask() -> None:
            body = {"inputs": [{"name": "IN", "shape": [1], "datatype": "INT32", "data": [1]}], "parameters": {"mode": "never"}}
            try:
                got.put(httpx.post(f"http://127.0.0.1:{port}/v2/models/once/infer", json=body, timeout=1).status_code)
            except httpx.HTTPError as e:
                got.put(type(e).__name__)

        ask()  # the client gives up; its request still waits in the model's thread
        assert got.get() == "ReadTimeout"
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=20) == 0  # the waiting request fails, and its thread lets the exit go on


WAITS = '''
import asyncio

import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    async def execute(self, requests):
        for request in requests:
            wait = float(pb_utils.get_input_tensor_by_name(request, "IN").as_numpy()[0])
            await asyncio.sleep(abs(wait))
            if wait < 0:
                raise ValueError("negative wait")
            request.get_response_sender().send(pb_utils.InferenceResponse([pb_utils.Tensor("OUT", np.array([wait], np.float32))]),
                                               flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL)
        return None
'''


RELAY = '''
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    async def execute(self, requests):
        for request in requests:
            call = pb_utils.InferenceRequest(model_name="waits", inputs=[pb_utils.get_input_tensor_by_name(request, "IN")],
                                             requested_output_names=["OUT"])
            answers = [a for a in await call.async_exec(decoupled=True) if a.output_tensors()]
            request.get_response_sender().send(pb_utils.InferenceResponse(answers[0].output_tensors()),
                                               flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL)
'''


def test_a_decoupled_models_async_executes_overlap_on_its_one_instance_as_tritons_do(tmp_path: Path) -> None:
    """Triton's async execute (24.04, its L0_backend_python concurrency test; helper-159: polystack ran them one
    after another): the instance's next request starts while one awaits, so a short wait sent after a long one is
    answered first; an exception raised after the await is the request's final error, in Triton's words."""
    config = ('backend: "python"\nmax_batch_size: 0\nmodel_transaction_policy { decoupled: true }\n'
              'input [ { name: "IN", data_type: TYPE_FP32, dims: [ 1 ] } ]\n'
              'output [ { name: "OUT", data_type: TYPE_FP32, dims: [ 1 ] } ]\n')  # fmt: skip
    python_folder(tmp_path / "models", "waits", WAITS, config)
    python_folder(tmp_path / "models", "relay", RELAY, config)  # awaits async_exec(decoupled=True) of waits
    port, grpc_port = free_port(), free_port()
    args = ["--model-repository", str(tmp_path / "models"), "--allow-python-models", "--grpc-port", str(grpc_port)]
    with cli_server(tmp_path / "home", args, port, tmp_path / "log"):
        got: queue.Queue[Any] = queue.Queue()
        client = grpcclient.InferenceServerClient(f"127.0.0.1:{grpc_port}")
        client.start_stream(callback=lambda result, error: got.put(error if error is not None else result))
        try:
            for model, wait in (("waits", 1.0), ("waits", 0.1), ("waits", -0.2), ("relay", 1.0), ("relay", 0.1)):
                x = grpcclient.InferInput("IN", [1], "FP32")
                x.set_data_from_numpy(np.array([wait], np.float32))
                client.async_stream_infer(model, [x], request_id=f"{model} {wait}")
            answers = [got.get(timeout=20) for _ in range(5)]
        finally:
            client.stop_stream()
            client.close()
    ok = [a.get_response().id for a in answers if not isinstance(a, InferenceServerException)]
    for model in ("waits", "relay"):  # one after another, the 1 s wait would have come first
        assert [i for i in ok if i.startswith(model)] == [f"{model} 0.1", f"{model} 1.0"]
    (error,) = [a.message() for a in answers if isinstance(a, InferenceServerException)]
    assert error.startswith("Failed to process the request(s) for model 'waits_0', message: ValueError: negative wait")


RESHAPED = '''
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):
        for request in requests:
            x = pb_utils.get_input_tensor_by_name(request, "x").as_numpy()
            assert x.ndim == 1, x.shape  # [batch]: the reshape's, as Triton hands the backend the reshaped tensor
            request.get_response_sender().send(pb_utils.InferenceResponse([pb_utils.Tensor("y", x * 2)]),
                                               flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL)
'''


def test_responses_sent_by_a_model_whose_config_reshapes_reach_the_client_in_the_configs_dims(tmp_path: Path) -> None:
    """A response sent by the sender, decoupled or not, is reshaped back to the dims the config shows, as a returned
    one is (they reached the client in the model's shape, [2] for dims [1] of a batch of 2)."""
    reshaped = ('max_batch_size: 4\ninput [ { name: "x", data_type: TYPE_FP32, dims: [ 1 ] reshape: { shape: [ ] } } ]\n'
                'output [ { name: "y", data_type: TYPE_FP32, dims: [ 1 ] reshape: { shape: [ ] } } ]\n')  # fmt: skip
    python_folder(tmp_path / "models", "apart", RESHAPED, f'backend: "python"\n{reshaped}model_transaction_policy {{ decoupled: true }}\n')
    python_folder(tmp_path / "models", "once", RESHAPED, f'backend: "python"\n{reshaped}')
    port, grpc_port = free_port(), free_port()
    args = ["--model-repository", str(tmp_path / "models"), "--allow-python-models", "--grpc-port", str(grpc_port)]
    x = np.array([[1.0], [2.0]], np.float32)
    with cli_server(tmp_path / "home", args, port, tmp_path / "log"):
        got: queue.Queue[Any] = queue.Queue()
        client = grpcclient.InferenceServerClient(f"127.0.0.1:{grpc_port}")
        client.start_stream(callback=lambda result, error: got.put(error if error is not None else result))
        try:
            i = grpcclient.InferInput("x", [2, 1], "FP32")
            i.set_data_from_numpy(x)
            client.async_stream_infer("apart", [i])
            answer = got.get(timeout=20)
        finally:
            client.stop_stream()
            client.close()
        assert answer.as_numpy("y").tolist() == [[2.0], [4.0]]
        h = httpclient.InferInput("x", [2, 1], "FP32")
        h.set_data_from_numpy(x)
        assert httpclient.InferenceServerClient(f"127.0.0.1:{port}").infer("once", [h]).as_numpy("y").tolist() == [[2.0], [4.0]]


def test_a_decoupled_request_counts_one_success_in_its_statistics_once_its_responses_are_sent(server: Any) -> None:
    """A server's success counts once its answer is ready (helper-272's mend): a decoupled model's request, whose
    answer is its responses, counts too."""
    port, grpc_port, _, _ = server

    def successes() -> int:
        stats = httpx.get(f"http://127.0.0.1:{port}/v2/models/repeat/stats").json()["model_stats"][0]
        return int(stats["inference_stats"]["success"]["count"])

    before = successes()
    _stream(grpc_port, [([1, 2, 3], {"mode": "final_on_last"}, "a"), ([4], {"mode": "final_on_last"}, "b")])
    assert successes() == before + 2
