"""Headers forwarded as request parameters (``--http-header-forward-pattern``, ``--grpc-header-forward-pattern``):
a Python model reads them in ``request.parameters()``, as on Triton (helper-153: Triton's grpc_client_plugin_test
passed on tritonserver 2.51 and failed here, the flags taken and ignored)."""

from __future__ import annotations

import http.client
import json
import queue
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from servekit import cli_server, free_port, refused_at_start
from test_serve_python_models import python_folder
from tritonclient.utils import InferenceServerException

PARAMETERS = """
import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):
        return [pb_utils.InferenceResponse([pb_utils.Tensor("seen", np.array([r.parameters().encode()], dtype=np.object_))])
                for r in requests]
"""

HEADERS = {"my_header_1": "my_value_1", "my_header_2": 'a "quoted" value\\ ', "header_3": "value_3"}


def _seen(result: Any) -> dict[str, Any]:
    return dict(json.loads(result.as_numpy("seen")[0]))


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Any:
    tmp = tmp_path_factory.mktemp("forward")
    repo = tmp / "models"
    python_folder(repo, "parameter", PARAMETERS,
        'backend: "python"\nmax_batch_size: 0\ninput [ { name: "x", data_type: TYPE_FP32, dims: [ 1 ] } ]\n'
        'output [ { name: "seen", data_type: TYPE_STRING, dims: [ 1 ] } ]\n'
    )  # fmt: skip
    port, grpc_port = free_port(), free_port()
    args = ["--model-repository", str(repo), "--allow-python-models", "--grpc-port", str(grpc_port),
            "--http-header-forward-pattern", "MY_HEADER.*|timeout|(?-i:X-Up)",  # case ignored, as in Triton
            "--grpc-header-forward-pattern", "(?-i)my_header_1"]  # fmt: skip
    with cli_server(tmp / "home", args, port, tmp / "log"):
        yield port, grpc_port


def _x(module: Any) -> Any:
    x = module.InferInput("x", [1], "FP32")
    x.set_data_from_numpy(np.ones(1, np.float32))
    return x


def test_http_headers_the_pattern_matches_reach_the_model_as_parameters(server: tuple[int, int]) -> None:
    client = httpclient.InferenceServerClient(f"127.0.0.1:{server[0]}")
    seen = _seen(client.infer("parameter", [_x(httpclient)], headers=dict(HEADERS), parameters={"key1": "value1"}))
    assert seen == {"key1": "value1", "my_header_1": "my_value_1", "my_header_2": 'a "quoted" value\\ '}


def test_http_header_names_are_forwarded_as_the_client_wrote_them(server: tuple[int, int]) -> None:
    # helper-156: names reached the model lower-cased, and a case-sensitive pattern (?-i:X-Up) matched no header
    conn = http.client.HTTPConnection("127.0.0.1", server[0], timeout=10)
    body = json.dumps({"inputs": [{"name": "x", "datatype": "FP32", "shape": [1], "data": [1.0]}]})
    conn.request("POST", "/v2/models/parameter/infer", body, {"X-Up": "a", "X-Down": "b", "My_Header_1": "c"})
    answer = json.loads(conn.getresponse().read())
    conn.close()
    assert json.loads(answer["outputs"][0]["data"][0]) == {"X-Up": "a", "My_Header_1": "c"}


def test_grpc_metadata_the_pattern_matches_reach_the_model_case_and_all(server: tuple[int, int]) -> None:
    client = grpcclient.InferenceServerClient(f"127.0.0.1:{server[1]}")
    assert _seen(client.infer("parameter", [_x(grpcclient)], headers=dict(HEADERS))) == {"my_header_1": "my_value_1"}
    # a stream's metadata reaches each of its requests
    answers: queue.Queue[Any] = queue.Queue()
    client.start_stream(callback=lambda result, error: answers.put(error or result), headers=dict(HEADERS))
    try:
        for _ in range(2):
            client.async_stream_infer("parameter", [_x(grpcclient)])
            assert _seen(answers.get(timeout=30)) == {"my_header_1": "my_value_1"}
    finally:
        client.stop_stream()


def test_a_header_named_as_a_parameter_triton_reserves_is_refused(server: tuple[int, int]) -> None:
    client = httpclient.InferenceServerClient(f"127.0.0.1:{server[0]}")
    with pytest.raises(InferenceServerException, match="reserved for Triton usage") as caught:
        client.infer("parameter", [_x(httpclient)], headers={"timeout": "5"})
    assert caught.value.status() == "400"
    assert _seen(client.infer("parameter", [_x(httpclient)])) == {}  # and the server goes on


def test_a_pattern_that_is_no_regular_expression_exits_2_naming_the_flag(tmp_path: Path) -> None:
    line = refused_at_start(tmp_path, ["--grpc-header-forward-pattern", "(unclosed"])
    assert "--grpc-header-forward-pattern '(unclosed' is not a regular expression" in line


def test_a_grpc_double_parameter_reaches_the_model_as_a_number(server: tuple[int, int]) -> None:
    """tritonclient 2.51 sends a float parameter as double_param, which tritonserver 2.51 takes (helper-160: refused)."""
    import grpc

    from polystack.protocol.grpc_gen import inference_pb2 as pb
    from polystack.protocol.grpc_gen import inference_pb2_grpc as pb_grpc

    stub = pb_grpc.GRPCInferenceServiceStub(grpc.insecure_channel(f"127.0.0.1:{server[1]}"))
    r = pb.ModelInferRequest(model_name="parameter", raw_input_contents=[np.ones(1, np.float32).tobytes()])
    r.inputs.add(name="x", datatype="FP32", shape=[1])
    r.parameters["threshold"].double_param = 0.25
    answer = stub.ModelInfer(r, timeout=10)
    (raw,) = answer.raw_output_contents
    assert json.loads(raw[4:]) == {"threshold": 0.25}
