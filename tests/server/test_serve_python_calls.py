"""Python models that call the other models the server serves (Triton's business logic scripting:
``pb_utils.InferenceRequest(...).exec()`` and ``await ...async_exec()``) and read their request's facts, served to
tritonclient by ``serve --allow-python-models``."""

from __future__ import annotations

import json
import shutil
import time
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
            text = str.encode if asked.get("as_bytes") else str  # names as bytes, as a BYTES tensor gives them
            calls = [
                pb_utils.InferenceRequest(
                    model_name=text(model), inputs=[pb_utils.Tensor(text(asked.get("input", "x")), x)],
                    requested_output_names=[text(asked.get("output", "y"))], model_version=asked.get("version", -1),
                    request_id=text(request.request_id()),
                    parameters={"from": "caller", **({"models": asked["next"]} if "next" in asked else {})},
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
# what a model does with the server beyond a call it waits for, by its request's "case"
TOOLS = '''
import concurrent.futures, json, time
import numpy as np
import triton_python_backend_utils as pb_utils


def call_mlp(x):
    return pb_utils.InferenceRequest(model_name="mlp", inputs=[pb_utils.Tensor("x", x)], requested_output_names=["y"]).exec()


class TritonPythonModel:
    def execute(self, requests):
        request = requests[0]
        case = json.loads(request.parameters())["case"]
        x = pb_utils.get_input_tensor_by_name(request, "x")
        facts = []
        if case == "dlpack":  # Triton's tensors give DLPack
            y = np.from_dlpack(x) * 3
        elif case == "thread":  # a thread of the model's own, without its context
            with concurrent.futures.ThreadPoolExecutor(2) as pool:
                answers = list(pool.map(call_mlp, [x.as_numpy(), x.as_numpy()]))
            facts = [a.has_error() for a in answers]
            y = np.concatenate([pb_utils.get_output_tensor_by_name(a, "y").as_numpy() for a in answers], axis=-1)
        elif case == "unawaited":  # async_exec sends at once, awaited or not
            call = pb_utils.InferenceRequest(model_name="mlp", inputs=[x], requested_output_names=["y"])
            async def send():
                call.async_exec()
            import asyncio
            asyncio.run(send())
            y = x.as_numpy()
        elif case == "reload":  # the model loading API
            facts.append(pb_utils.is_model_ready("mlp2"))
            pb_utils.unload_model("mlp2")
            facts.append(pb_utils.is_model_ready("mlp2"))
            pb_utils.load_model("mlp2")
            facts.append(pb_utils.is_model_ready("mlp2", "1"))
            try:
                pb_utils.load_model("nowhere")
            except pb_utils.TritonModelException as e:
                facts.append(str(e))
            y = x.as_numpy()
        elif case == "as_triton":  # what Triton's BLS takes as given, refuses, or names (helper-276)
            def told(**kw):
                answer = pb_utils.InferenceRequest(model_name="told", requested_output_names=["facts"], **kw).exec()
                if answer.has_error():
                    return answer.error().message()
                return json.loads(pb_utils.get_output_tensor_by_name(answer, "facts").as_numpy()[0])
            reserved = {"sequence_id": 9, "sequence_start": True, "priority": 1, "timeout": 30}
            facts.append(told(inputs=[x], parameters=reserved))
            facts.append(told(inputs=[x], parameters={"timeout": 5}, correlation_id=3, timeout=7))
            facts += [told(inputs=[x], model_version=v) for v in (0, -2)]
            facts.append(told(inputs=[x, x]))
            for kw in ({"correlation_id": -5}, {"correlation_id": 2**64}, {"timeout": -1}):
                try:
                    pb_utils.InferenceRequest(model_name="told", inputs=[x], requested_output_names=["y"], **kw)
                except (RuntimeError, TypeError) as e:
                    facts.append(type(e).__name__)
            facts.append(pb_utils.TritonError("gone", pb_utils.TritonError.NOT_FOUND).code().name)
            y = x.as_numpy()
        return [pb_utils.InferenceResponse([pb_utils.Tensor("y", y.astype(np.float32)),
                                            pb_utils.Tensor("facts", np.array([json.dumps(facts).encode()], dtype=np.object_))])]
'''
# calls itself while "depth" says so: each level holds one of its instances
RECUR = '''
import json
import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):
        request = requests[0]
        depth = json.loads(request.parameters()).get("depth", 0)
        x = pb_utils.get_input_tensor_by_name(request, "x")
        if depth:
            answer = pb_utils.InferenceRequest(model_name="recur", inputs=[x], requested_output_names=["y"],
                                               parameters={"depth": depth - 1}).exec()
            if answer.has_error():
                raise pb_utils.TritonModelException(answer.error().message())
            y = pb_utils.get_output_tensor_by_name(answer, "y").as_numpy() + 1
        else:
            y = x.as_numpy()
        return [pb_utils.InferenceResponse([pb_utils.Tensor("y", y), pb_utils.Tensor("facts", np.array([b"{}"], dtype=np.object_))])]
'''
# tells what it received: its parameters, correlation ID, flags and timeout
TOLD = '''
import json
import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):
        return [pb_utils.InferenceResponse([
            pb_utils.Tensor("y", pb_utils.get_input_tensor_by_name(r, "x").as_numpy()),
            pb_utils.Tensor("facts", np.array([json.dumps([json.loads(r.parameters()), r.correlation_id(), r.flags(),
                                                          r.timeout()]).encode()], dtype=np.object_)),
        ]) for r in requests]
'''
# answers an error response with the code its request's "models" parameter gives (what a caller's "next" names)
REFUSER = '''
import json
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):
        codes = [json.loads(request.parameters())["models"] for request in requests]
        if "raise" in codes:
            raise ValueError("raised in execute")
        return [pb_utils.InferenceResponse(error=pb_utils.TritonError(f"refused with code {c}", int(c))) for c in codes]
'''
CONFIG = """backend: "python"
input [ { name: "x", data_type: TYPE_FP32, dims: [ -1, 16 ] } ]
output [ { name: "y", data_type: TYPE_FP32, dims: [ -1, -1 ] }, { name: "facts", data_type: TYPE_STRING, dims: [ 1 ] } ]
"""


def callers(root: Path) -> Path:
    """The Python model tests' repository (scale, mlp, pipe) with a caller that calls as it goes (``caller``), and
    one that sends its calls together (``gatherer``, an ``async def execute``)."""
    repository(root)
    shutil.copytree(root / "mlp", root / "mlp2")
    for name, source in (("caller", SYNC), ("gatherer", ASYNC), ("tools", TOOLS), ("recur", RECUR),
                           ("refuser", REFUSER), ("told", TOLD)):
        (root / name / "1").mkdir(parents=True)
        (root / name / "1" / "model.py").write_text(source)
        (root / name / "config.pbtxt").write_text(CONFIG)
    with (root / "recur" / "config.pbtxt").open("a") as f:
        f.write("instance_group [ { count: 2, kind: KIND_CPU } ]\n")
    return root


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, int, int]]:
    tmp = tmp_path_factory.mktemp("calls")
    repo, port, grpc_port = callers(tmp / "models"), free_port(), free_port()
    args = ["--model-repository", str(repo), "--allow-python-models", "--grpc-port", str(grpc_port),
            "--model-control-mode", "explicit", "--load-model", "*"]  # fmt: skip
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


def test_a_call_may_name_its_model_tensors_and_id_in_bytes_as_tritons_bls_example_does(served) -> None:  # type: ignore[no-untyped-def]
    """python_backend's BLS example reads the model it calls from a BYTES input (helper-178): Triton's binding takes
    bytes as the same text; polystack looked for a model named "b'add_sub'"."""
    repo, port, _ = served
    result = _call(port, "caller", {"models": "scale,mlp", "as_bytes": True}, request_id="b-1")
    np.testing.assert_allclose(result.as_numpy("y"), np.concatenate([X * 2, _mlp(repo, X)], axis=-1), rtol=1e-5)
    assert json.loads(result.as_numpy("facts")[0])["answers"] == [["y"], ["y"]]


def test_the_request_facts_reach_the_model_over_grpc_too(served) -> None:  # type: ignore[no-untyped-def]
    _, _, grpc_port = served
    client = grpcclient.InferenceServerClient(f"127.0.0.1:{grpc_port}")
    x = grpcclient.InferInput("x", [2, 16], "FP32")
    x.set_data_from_numpy(X)
    wanted = [grpcclient.InferRequestedOutput("facts")]
    result = client.infer("caller", [x], parameters={"models": "mlp"}, request_id="g-1", outputs=wanted)
    facts = json.loads(result.as_numpy("facts")[0])
    assert (facts["id"], facts["outputs"], facts["parameters"]) == ("g-1", ["facts"], {"models": "mlp"})
    # the stream's own parameter is the server's on a plain call too, as Triton's gRPC front end takes it (helper-232)
    asked = {"models": "mlp", "triton_enable_empty_final_response": True}
    facts = json.loads(client.infer("caller", [x], parameters=asked).as_numpy("facts")[0])
    assert facts["parameters"] == {"models": "mlp"}


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
        ({"models": "nope"}, "Failed for execute the inference request. Model 'nope' is not ready. (Request for unknown "
         "model: 'nope' is not found"),
        ({"models": "mlp", "version": 7}, "Failed for execute the inference request. Model 'mlp' is not ready. (Request "
         "for unknown model: 'mlp' version 7 is not found"),
        ({"models": "mlp", "input": "z"}, "unexpected inference input 'z' for model 'mlp'"),
        ({"models": "caller"}, "model 'caller' called itself, and its 1 instance(s) all wait for answers already"),
        # caller -> gatherer -> caller: the gatherer's call would wait for the caller, which waits for it
        ({"models": "gatherer", "next": "caller"},
         "model 'gatherer' called model 'caller', whose 1 instance(s) all wait for its answer already"),
    ],
)
def test_a_call_that_fails_answers_the_caller_with_its_error_in_triton_words_and_the_server_serves_on(  # type: ignore[no-untyped-def]
    served, parameters: dict, words: str
) -> None:
    _, port, _ = served
    with pytest.raises(InferenceServerException) as caught:
        _call(port, "caller", parameters)
    assert caught.value.status() == "500"  # the calling model raised: its request fails as the model's error
    # Triton's words for a call refused, with the code it gives them all (INTERNAL: 1); the gatherer's failed execute
    # reaches the caller in its own words, its refused call's in those
    refused = "caller" if parameters.get("next") == "caller" else parameters["models"]
    assert f"1: Model {refused} - Error when running inference: " in caught.value.message()
    assert words in caught.value.message()
    assert _call(port, "caller", {"models": "mlp"}).as_numpy("y").shape == (2, 4)


@pytest.mark.parametrize("code", range(8))
def test_a_called_model_s_own_error_response_reaches_its_caller_with_its_words_and_code(served, code: int) -> None:  # type: ignore[no-untyped-def]
    """python_backend's bls_error_code example (helper-225): a called model's error response keeps its code (newer
    Tritons; 2.51 made each INTERNAL) and its words; polystack kept CANCELLED alone, led the words with its own, and
    told a NOT_FOUND as a model that is not ready."""
    _, port, _ = served
    with pytest.raises(InferenceServerException) as caught:
        _call(port, "caller", {"models": "refuser", "next": str(code)})
    assert f"message: TritonModelException: {code}: refused with code {code}\n" in caught.value.message()


def test_a_called_model_s_failure_in_its_run_reaches_its_caller_in_its_words(served) -> None:  # type: ignore[no-untyped-def]
    """tritonserver 2.51 hands a BLS caller the called model's failed execute in the model's words, code INTERNAL
    (helper-230: bls_undefined's NameError); polystack led them with Triton's words for a call refused."""
    _, port, _ = served
    with pytest.raises(InferenceServerException) as caught:
        _call(port, "caller", {"models": "refuser", "next": "raise"})
    message = caught.value.message()
    assert "TritonModelException: 1: Failed to process the request(s) for model 'refuser" in message, message
    assert "message: ValueError: raised in execute" in message and "Error when running inference" not in message


def test_a_model_uses_dlpack_threads_of_its_own_async_exec_and_the_model_loading_api(served) -> None:  # type: ignore[no-untyped-def]
    repo, port, _ = served
    result = _call(port, "tools", {"case": "dlpack"})
    np.testing.assert_array_equal(result.as_numpy("y"), X * 3)
    result = _call(port, "tools", {"case": "thread"})  # calls from the model's own threads reach the server
    assert json.loads(result.as_numpy("facts")[0]) == [False, False]
    mlp = _mlp(repo, X)
    np.testing.assert_allclose(result.as_numpy("y"), np.concatenate([mlp, mlp], axis=-1), rtol=1e-5)
    client = httpclient.InferenceServerClient(f"127.0.0.1:{port}")

    def successes() -> int:
        return int(client.get_inference_statistics("mlp")["model_stats"][0]["inference_stats"]["success"]["count"])

    before = successes()
    _call(port, "tools", {"case": "unawaited"})  # sent as async_exec returned, though nothing awaited it
    deadline = time.monotonic() + 10
    while successes() == before and time.monotonic() < deadline:
        time.sleep(0.05)
    assert successes() == before + 1
    facts = json.loads(_call(port, "tools", {"case": "reload"}).as_numpy("facts")[0])
    assert facts[:3] == [True, False, True]
    assert "nowhere" in facts[3]  # a load that fails raises in the model, in the server's words
    assert client.is_model_ready("mlp2")


def test_a_model_calls_itself_while_one_of_its_instances_is_free(served) -> None:  # type: ignore[no-untyped-def]
    _, port, _ = served
    np.testing.assert_array_equal(_call(port, "recur", {"depth": 1}).as_numpy("y"), X + 1)  # 2 instances: one free
    with pytest.raises(InferenceServerException) as caught:  # a third level would wait for good
        _call(port, "recur", {"depth": 2})
    assert "model 'recur' called itself, and its 2 instance(s) all wait for answers already" in caught.value.message()
    np.testing.assert_array_equal(_call(port, "recur", {"depth": 0}).as_numpy("y"), X)  # and it serves on


def test_a_call_hands_its_parameters_over_as_given_and_is_checked_as_tritons_bls_checks_it(served) -> None:  # type: ignore[no-untyped-def]
    """helper-276: a call's parameters named like Triton's own (sequence_id, timeout, ...) were read as its correlation
    ID, flags and deadline and kept from the called model; versions 0 and -2 ran the latest; an input given twice
    ran the last; a correlation ID or timeout Triton's binding cannot take reached the called model; an error's code
    had no name."""
    _, port, _ = served
    facts = json.loads(_call(port, "tools", {"case": "as_triton"}).as_numpy("facts")[0])
    reserved = {"sequence_id": 9, "sequence_start": True, "priority": 1, "timeout": 30}
    assert facts[0] == [reserved, 0, 0, 0]  # as given, and no sequence, priority or deadline
    assert facts[1] == [{"timeout": 5}, 3, 0, 7]  # its own timeout and correlation ID apart from its parameters
    for words, version in zip(facts[2:4], (0, -2), strict=True):
        assert words.startswith("Model told - Error when running inference: Failed for execute the inference request. "
                                "Model 'told' is not ready.") and f"has no version {version}" in words, words
    assert "input 'x' already exists in request" in facts[4]
    assert facts[5:] == ["RuntimeError", "RuntimeError", "TypeError", "NOT_FOUND"]
