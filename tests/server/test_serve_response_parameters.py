"""A Python model's response parameters (``pb_utils.InferenceResponse(..., parameters={...})``) reach the client
with its outputs, as newer Tritons' Python backend sends them (Triton's L0_backend_python/parameters; helper-210:
polystack refused any but an empty dict): HTTP's ``parameters`` object, gRPC's typed map, each response of a
decoupled model's stream, a batch's requests each with their own, a sequence model's, and a call from another
model (``parameters()`` of the answer ``exec`` returns)."""

from __future__ import annotations

import json
import queue
from typing import Any

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from servekit import cli_server, free_port
from test_serve_python_models import python_folder

# each request's PARAMS (a JSON object) become its response's parameters; OUT echoes it
ECHO = """
import json
import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):
        responses = []
        for request in requests:
            text = pb_utils.get_input_tensor_by_name(request, "PARAMS").as_numpy().ravel()[0]
            out = pb_utils.Tensor("OUT", np.array([[text]], dtype=np.object_))
            responses.append(pb_utils.InferenceResponse([out], parameters=json.loads(text)))
        return responses
"""

# a response for each object of PARAMS (a JSON list), then the final flag alone
STREAM = """
import json
import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):
        for request in requests:
            sender = request.get_response_sender()
            text = pb_utils.get_input_tensor_by_name(request, "PARAMS").as_numpy().ravel()[0]
            for i, params in enumerate(json.loads(text)):
                out = pb_utils.Tensor("OUT", np.array([[str(i).encode()]], dtype=np.object_))
                sender.send(pb_utils.InferenceResponse([] if "bare" in params else [out], parameters=params))
            sender.send(flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL)
        return None
"""

# calls echo and stream with its own PARAMS and PARAMS_LIST; OUT: the parameters their answers carried, as JSON
CALLER = """
import json
import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):
        responses = []
        for request in requests:
            params = pb_utils.get_input_tensor_by_name(request, "PARAMS").as_numpy()
            listed = pb_utils.get_input_tensor_by_name(request, "PARAMS_LIST").as_numpy()
            one = pb_utils.InferenceRequest(model_name="echo", inputs=[pb_utils.Tensor("PARAMS", params)],
                                            requested_output_names=["OUT"]).exec()
            many = pb_utils.InferenceRequest(model_name="stream", inputs=[pb_utils.Tensor("PARAMS", listed)],
                                             requested_output_names=["OUT"]).exec(decoupled=True)
            seen = {"one": json.loads(one.parameters()),
                    "many": [json.loads(r.parameters()) for r in many if r.output_tensors() or r.parameters() != "{}"]}
            out = pb_utils.Tensor("OUT", np.array([[json.dumps(seen).encode()]], dtype=np.object_))
            responses.append(pb_utils.InferenceResponse([out]))
        return responses
"""

IO = (
    'input [ { name: "PARAMS", data_type: TYPE_STRING, dims: [ 1 ] } ]\n'
    'output [ { name: "OUT", data_type: TYPE_STRING, dims: [ 1 ] } ]\n'
)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Any:
    tmp = tmp_path_factory.mktemp("response_parameters")
    repo = tmp / "models"
    # a dynamic batcher that waits for the concurrent requests below to run as one execute
    python_folder(repo, "echo", ECHO, f'backend: "python"\nmax_batch_size: 8\n{IO}dynamic_batching '
                  "{ preferred_batch_size: [ 4 ], max_queue_delay_microseconds: 500000 }\n")  # fmt: skip
    python_folder(repo, "stream", STREAM, f'backend: "python"\nmax_batch_size: 8\n{IO}'
                  "model_transaction_policy { decoupled: true }\n")  # fmt: skip
    # the same, its output reshaped for clients (the model returns [batch], clients get [batch, 1]), and cached
    python_folder(repo, "reshaped", ECHO.replace("np.array([[text]]", "np.array([text]"), 'backend: "python"\n'
        'max_batch_size: 8\ninput [ { name: "PARAMS", data_type: TYPE_STRING, dims: [ 1 ] } ]\n'
        'output [ { name: "OUT", data_type: TYPE_STRING, dims: [ 1 ], reshape { shape: [ ] } } ]\n')  # fmt: skip
    python_folder(repo, "cached", ECHO, f'backend: "python"\nmax_batch_size: 8\n{IO}'
                  "response_cache { enable: true }\n")  # fmt: skip
    python_folder(repo, "sequence", ECHO, f'backend: "python"\nmax_batch_size: 8\n{IO}sequence_batching {{ }}\n')
    python_folder(repo, "caller", CALLER, 'backend: "python"\nmax_batch_size: 8\n'
        'input [ { name: "PARAMS", data_type: TYPE_STRING, dims: [ 1 ] },'
        ' { name: "PARAMS_LIST", data_type: TYPE_STRING, dims: [ 1 ] } ]\n'
        'output [ { name: "OUT", data_type: TYPE_STRING, dims: [ 1 ] } ]\n')  # fmt: skip
    port, grpc_port = free_port(), free_port()
    args = ["--model-repository", str(repo), "--allow-python-models", "--grpc-port", str(grpc_port),
            "--cache-config", "local,size=1048576"]
    with cli_server(tmp / "home", args, port, tmp / "log"):
        yield port, grpc_port


def _params(module: Any, value: Any, name: str = "PARAMS") -> Any:
    tensor = module.InferInput(name, [1, 1], "BYTES")
    tensor.set_data_from_numpy(np.array([[json.dumps(value).encode()]], dtype=np.object_))
    return tensor


def _grpc_parameters(response: Any) -> dict[str, Any]:
    """A gRPC answer's parameters, each read from the field its type sets."""
    return {key: getattr(value, value.WhichOneof("parameter_choice")) for key, value in response.parameters.items()}


GIVEN = {"bool": True, "str": "Hello World!", "int": 1024, "empty": "", "false": False}


def test_http_answers_carry_the_response_s_parameters(server: tuple[int, int]) -> None:
    client = httpclient.InferenceServerClient(f"127.0.0.1:{server[0]}")
    result = client.infer("echo", [_params(httpclient, GIVEN)])
    assert result.get_response()["parameters"] == GIVEN
    assert json.loads(result.as_numpy("OUT")[0][0]) == GIVEN
    assert "parameters" not in client.infer("echo", [_params(httpclient, {})]).get_response()  # none: none sent


def test_grpc_answers_carry_them_typed(server: tuple[int, int]) -> None:
    client = grpcclient.InferenceServerClient(f"127.0.0.1:{server[1]}")
    response = client.infer("echo", [_params(grpcclient, GIVEN)]).get_response()
    assert _grpc_parameters(response) == GIVEN
    kinds = {key: value.WhichOneof("parameter_choice") for key, value in response.parameters.items()}
    assert kinds == {"bool": "bool_param", "str": "string_param", "int": "int64_param", "empty": "string_param",
                     "false": "bool_param"}  # fmt: skip


def test_a_decoupled_model_s_streamed_responses_each_carry_their_own(server: tuple[int, int]) -> None:
    sent = [{"bool": False, "int": 2048}, {"str": "Hello World!"}]
    answers: queue.Queue[Any] = queue.Queue()
    client = grpcclient.InferenceServerClient(f"127.0.0.1:{server[1]}")
    client.start_stream(callback=lambda result, error: answers.put(error or result))
    try:
        client.async_stream_infer("stream", [_params(grpcclient, sent)])
        got = [answers.get(timeout=30) for _ in sent]
    finally:
        client.stop_stream()
    # Triton's stream adds its triton_final_response (false: the final flag came alone, after them)
    assert [_grpc_parameters(a.get_response()) for a in got] == [{**p, "triton_final_response": False} for p in sent]


def test_a_batch_s_requests_each_get_their_own(server: tuple[int, int]) -> None:
    client = httpclient.InferenceServerClient(f"127.0.0.1:{server[0]}", concurrency=4)
    before = client.get_inference_statistics("echo")["model_stats"][0]["execution_count"]
    sent = [client.async_infer("echo", [_params(httpclient, {"i": i})]) for i in range(4)]
    answers = [s.get_result(timeout=30) for s in sent]
    assert [a.get_response()["parameters"] for a in answers] == [{"i": i} for i in range(4)]
    executions = client.get_inference_statistics("echo")["model_stats"][0]["execution_count"] - before
    assert executions < 4  # some of them ran together, in one execute


def test_a_sequence_model_s_answers_carry_them(server: tuple[int, int]) -> None:
    client = httpclient.InferenceServerClient(f"127.0.0.1:{server[0]}")
    first = client.infer("sequence", [_params(httpclient, {"step": 1})], sequence_id=7, sequence_start=True)
    last = client.infer("sequence", [_params(httpclient, {"step": 2})], sequence_id=7, sequence_end=True)
    assert [first.get_response()["parameters"], last.get_response()["parameters"]] == [{"step": 1}, {"step": 2}]


def test_reshaped_and_cached_answers_keep_them(server: tuple[int, int]) -> None:
    """helper-214: an output reshape and a cache hit answered without them."""
    client = httpclient.InferenceServerClient(f"127.0.0.1:{server[0]}")
    reshaped = client.infer("reshaped", [_params(httpclient, GIVEN)])
    assert reshaped.get_response()["parameters"] == GIVEN and reshaped.as_numpy("OUT").shape == (1, 1)
    for _ in range(2):  # a miss, then a hit
        assert client.infer("cached", [_params(httpclient, {"a": 1})]).get_response()["parameters"] == {"a": 1}
    assert client.get_inference_statistics("cached")["model_stats"][0]["inference_stats"]["cache_hit"]["count"] == 1


def test_a_call_s_answer_gives_the_called_model_s_parameters(server: tuple[int, int]) -> None:
    # helper-214: a streamed response of no outputs came to the caller without its parameters
    listed = [{}, {"bool": True, "int": 10000}, {"str": "?"}, {"bare": True}]
    client = httpclient.InferenceServerClient(f"127.0.0.1:{server[0]}")
    result = client.infer("caller", [_params(httpclient, GIVEN), _params(httpclient, listed, "PARAMS_LIST")])
    assert json.loads(result.as_numpy("OUT")[0][0]) == {"one": GIVEN, "many": listed}


def test_parameters_of_the_wrong_kind_are_refused_in_triton_s_words() -> None:
    from polystack.backends import triton_python_utils as pb_utils

    assert json.loads(pb_utils.InferenceResponse([], parameters={"a": 1, "b": "x"}).parameters()) == {"a": 1, "b": "x"}
    assert pb_utils.InferenceResponse([]).parameters() == "{}"
    for given, words in (
        ([], "Expect parameters to be a dict, got <class 'list'>"),
        ({1: "int key"}, "Expect parameters keys to have type str, found type <class 'int'>"),
        ({"float": 0.5}, "Expect parameters values to have type bool/int/str, found type <class 'float'>"),
        ({"null": None}, "Expect parameters values to have type bool/int/str, found type <class 'NoneType'>"),
        ({"list": ["x"]}, "Expect parameters values to have type bool/int/str, found type <class 'list'>"),
        # helper-214: what no wire form holds (the server's encoders failed on it: a 500)
        ({"big": 1 << 63}, "parameter 'big': 9223372036854775808 is out of the range of a parameter's integer, int64"),
        ({"s": "\udc80"}, "parameter 's': its value is not text UTF-8 can hold (a lone surrogate)"),
    ):
        with pytest.raises(pb_utils.TritonModelException) as raised:
            pb_utils.InferenceResponse([], parameters=given)
        assert raised.value.message().startswith(words)
    lowest = pb_utils.InferenceResponse([], parameters={"low": -(1 << 63)})
    assert lowest.parameters() == '{"low": -9223372036854775808}'


def test_generate_answers_carry_them_beside_the_outputs(server: tuple[int, int]) -> None:
    """As Triton's generate writes a response's parameters: each a field of the answer's JSON."""
    import httpx

    text = json.dumps({"tokens": 3, "done": True})
    r = httpx.post(f"http://127.0.0.1:{server[0]}/v2/models/echo/generate", json={"PARAMS": [text]}, timeout=30)
    assert r.status_code == 200, r.text
    assert r.json() == {"model_name": "echo", "model_version": "1", "tokens": 3, "done": True, "OUT": text}
