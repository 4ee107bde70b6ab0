"""Python models that call the other models the server serves (Triton's business logic scripting:
``pb_utils.InferenceRequest(...).exec()`` and ``await ...async_exec()``) and read their request's facts, served to
tritonclient by ``serve --allow-python-models``."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from servekit import cli_server, free_port
from test_serve_python_models import _mlp, repository
from tritonclient.utils import InferenceServerException

# calls the models its request's parameters name ("models", comma-separated), with its input x (as "input", else "x"), asking for
# their "output" (else y); its y is theirs side by side, its facts what it saw of its request
CALLER = '''
import asyncio, json
import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):
        responses = []
        for request in requests:
            asked = json.loads(request.parameters())
            x = pb_utils.get_input_tensor_by_name(request, "x").as_numpy()
            calls = [
                pb_utils.InferenceRequest(
                    model_name=model, inputs=[pb_utils.Tensor(asked.get("input", "x"), x)],
                    requested_output_names=[asked.get("output", "y")], model_version=asked.get("version", -1),
                    request_id=request.request_id(), parameters={"from": "caller"},
                )
                for model in asked["models"].split(",")
            ]
            answers = CALL
            failed = [a.error() for a in answers if a.has_error()]
            if failed:
                raise pb_utils.TritonModelException(f"{failed[0].code()}: {failed[0].message()}")
            ys = [pb_utils.get_output_tensor_by_name(a, asked.get("output", "y")).as_numpy() for a in answers]
            facts = {"id": request.request_id(), "parameters": asked, "outputs": sorted(request.requested_output_names()),
                     "answers": [[t.name() for t in a.output_tensors()] for a in answers]}
            responses.append(pb_utils.InferenceResponse([
                pb_utils.Tensor("y", np.concatenate(ys, axis=-1)),
                pb_utils.Tensor("facts", np.array([json.dumps(facts).encode()], dtype=np.object_)),
            ]))
        return responses
'''
SYNC = CALLER.replace("CALL", "[call.exec() for call in calls]")
ASYNC = CALLER.replace("    def execute", "    async def execute").replace(
    "CALL", "await asyncio.gather(*(call.async_exec() for call in calls))"
)
CONFIG = """backend: "python"
input [ { name: "x", data_type: TYPE_FP32, dims: [ -1, 16 ] } ]
output [ { name: "y", data_type: TYPE_FP32, dims: [ -1, -1 ] }, { name: "facts", data_type: TYPE_STRING, dims: [ 1 ] } ]
"""


def callers(root: Path) -> Path:
    """The Python model tests' repository (scale, mlp, pipe) with a caller that calls as it goes (``caller``), and
    one that sends its calls together (``gatherer``, an ``async def execute``)."""
    repository(root)
    for name, source in (("caller", SYNC), ("gatherer", ASYNC)):
        (root / name / "1").mkdir(parents=True)
        (root / name / "1" / "model.py").write_text(source)
        (root / name / "config.pbtxt").write_text(CONFIG)
    return root


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, int, int]]:
    tmp = tmp_path_factory.mktemp("calls")
    repo, port, grpc_port = callers(tmp / "models"), free_port(), free_port()
    args = ["--model-repository", str(repo), "--allow-python-models", "--grpc-port", str(grpc_port)]
    with cli_server(tmp / "home", args, port, tmp / "log"):
        yield repo, port, grpc_port


X = np.linspace(-1, 1, 32, dtype=np.float32).reshape(2, 16)


def _call(port: int, model: str, parameters: dict, request_id: str = "") -> httpclient.InferResult:
    client = httpclient.InferenceServerClient(f"127.0.0.1:{port}")
    x = httpclient.InferInput("x", [2, 16], "FP32")
    x.set_data_from_numpy(X)
    return client.infer(model, [x], parameters=parameters, request_id=request_id)


@pytest.mark.parametrize("model", ["caller", "gatherer"])
def test_a_python_model_calls_python_onnx_and_ensemble_models_and_gets_their_outputs(served, model: str) -> None:  # type: ignore[no-untyped-def]
    repo, port, _ = served
    result = _call(port, model, {"models": "scale,mlp,mlp"}, request_id="r-7")
    mlp = _mlp(repo, X)
    np.testing.assert_allclose(result.as_numpy("y"), np.concatenate([X * 2, mlp, mlp], axis=-1), rtol=1e-5)
    facts = json.loads(result.as_numpy("facts")[0])
    assert facts["id"] == "r-7" and facts["parameters"] == {"models": "scale,mlp,mlp"}
    assert facts["answers"] == [["y"], ["y"], ["y"]]  # what each call asked for
    assert facts["outputs"] == ["facts", "y"]  # the request asked for none: all of them
    result = _call(port, model, {"models": "pipe", "input": "IN", "output": "OUT"})  # an ensemble
    np.testing.assert_allclose(result.as_numpy("y"), _mlp(repo, X * 2), rtol=1e-5)


def test_the_request_facts_reach_the_model_over_grpc_too(served) -> None:  # type: ignore[no-untyped-def]
    _, _, grpc_port = served
    client = grpcclient.InferenceServerClient(f"127.0.0.1:{grpc_port}")
    x = grpcclient.InferInput("x", [2, 16], "FP32")
    x.set_data_from_numpy(X)
    wanted = [grpcclient.InferRequestedOutput("facts")]
    result = client.infer("caller", [x], parameters={"models": "mlp"}, request_id="g-1", outputs=wanted)
    facts = json.loads(result.as_numpy("facts")[0])
    assert (facts["id"], facts["outputs"], facts["parameters"]) == ("g-1", ["facts"], {"models": "mlp"})


def test_calls_count_in_the_called_models_statistics(served) -> None:  # type: ignore[no-untyped-def]
    _, port, _ = served
    client = httpclient.InferenceServerClient(f"127.0.0.1:{port}")

    def successes(model: str) -> int:
        return int(client.get_inference_statistics(model)["model_stats"][0]["inference_stats"]["success"]["count"])

    before = successes("mlp")
    _call(port, "caller", {"models": "mlp,mlp"})
    assert successes("mlp") == before + 2


@pytest.mark.parametrize(
    ("parameters", "words"),
    [
        ({"models": "nope"}, "Request for unknown model: 'nope' is not found"),
        ({"models": "mlp", "version": 7}, "Request for unknown model: 'mlp' version 7 is not found"),
        ({"models": "mlp", "input": "z"}, "unexpected inference input 'z' for model 'mlp'"),
        ({"models": "caller"}, "model 'caller' called itself: its one instance would wait for itself"),
    ],
)
def test_a_call_that_fails_answers_the_caller_with_its_error_in_triton_words_and_the_server_serves_on(  # type: ignore[no-untyped-def]
    served, parameters: dict, words: str
) -> None:
    _, port, _ = served
    with pytest.raises(InferenceServerException) as caught:
        _call(port, "caller", parameters)
    assert caught.value.status() == "500"  # the calling model raised: its request fails as the model's error
    model = parameters["models"]
    # Triton's words for a call that failed, with the code it gives them all (INTERNAL: 1)
    assert f"1: Model {model} - Error when running inference: {words}" in caught.value.message()
    assert _call(port, "caller", {"models": "mlp"}).as_numpy("y").shape == (2, 4)
