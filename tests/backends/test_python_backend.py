"""Triton Python-backend models run by polystack's ``python`` backend: a real ``model.py`` packed as the store keeps
it (``formats/python_model.py``), imported, initialized, executed and finalized as Triton's stub runs one."""

from __future__ import annotations

import concurrent.futures
import json
import re
import sys
from pathlib import Path

import numpy as np
import pytest

from polystack.backends import hosting, registry
from polystack.errors import BackendError, InvalidModelFile, InvalidRequest, NotFound, Unavailable
from polystack.formats import detect, python_model
from polystack.types import DType

CONFIG = {
    "name": "upper",
    "backend": "python",
    "max_batch_size": 4,
    "input": [{"name": "TEXT", "data_type": "TYPE_STRING", "dims": [1]}, {"name": "x", "data_type": "TYPE_FP32",
                                                                         "dims": [2]}],
    "output": [{"name": "OUT", "data_type": "TYPE_STRING", "dims": [1]}, {"name": "y", "data_type": "TYPE_FP32",
                                                                        "dims": [2]}],
}  # fmt: skip

MODEL = '''
import json, os
import numpy as np
import triton_python_backend_utils as pb_utils
from words import shout

class TritonPythonModel:
    def initialize(self, args):
        self.args = args
        self.config = json.loads(args["model_config"])

    def execute(self, requests):
        responses = []
        for request in requests:
            text = pb_utils.get_input_tensor_by_name(request, "TEXT").as_numpy()
            x = pb_utils.get_input_tensor_by_name(request, "x").as_numpy()
            if text.ravel()[0] == b"fail":
                raise ValueError("asked to fail")
            if text.ravel()[0] == b"gone":
                error = pb_utils.TritonError("not here", pb_utils.TritonError.UNAVAILABLE)
                responses.append(pb_utils.InferenceResponse(error=error))
                continue
            if text.ravel()[0] == b"args":
                x += 1  # in place, as Triton's stub allows
                config = json.loads(self.args["model_config"])
                dims = config["input"][0]["dims"]
                out = np.array([json.dumps([dims, config["instance_group"][0]["count"]]).encode()], dtype=np.object_)
                extra = pb_utils.Tensor("undeclared", x)
                responses.append(pb_utils.InferenceResponse([pb_utils.Tensor("OUT", out.reshape(1, 1)), pb_utils.Tensor("y", x), extra]))
                continue
            if text.ravel()[0] == b"bad":
                error = pb_utils.TritonError("bad text", pb_utils.TritonError.INVALID_ARG)
                responses.append(pb_utils.InferenceResponse(error=error))
                continue
            if text.ravel()[0] == b"f64":
                responses.append(pb_utils.InferenceResponse([pb_utils.Tensor("OUT", text), pb_utils.Tensor("y", x.astype(np.float64))]))
                continue
            out = np.array([shout(t) for t in text.ravel()], dtype=np.object_).reshape(text.shape)
            y = pb_utils.Tensor.from_dlpack("y", (x + len(self.args["model_name"])).astype(np.float32))
            responses.append(pb_utils.InferenceResponse([pb_utils.Tensor("OUT", out), y]))
        return responses

    def finalize(self):
        with open(os.environ["FINALIZED"], "w") as f:
            f.write(self.args["model_instance_name"])
'''


def packed(tmp_path: Path, model: str = MODEL, config: dict | None = None) -> Path:
    folder = tmp_path / "upper"
    (folder / "1").mkdir(parents=True, exist_ok=True)
    (folder / "1" / "model.py").write_text(model)
    (folder / "1" / "words.py").write_text("def shout(t):\n    return t.upper() + b'!'\n")
    return python_model.pack(folder, 1, "upper", config or CONFIG, "model.py", tmp_path / "model.zip")


@pytest.fixture
def model(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):  # type: ignore[no-untyped-def]
    monkeypatch.setenv("FINALIZED", str(tmp_path / "finalized"))
    zipped = packed(tmp_path)
    loaded = registry.get("python").load(zipped, python_model.signature(CONFIG), registry.get("python").parse_options({}), "cpu")
    yield loaded
    loaded.close()


def _inputs(text: bytes, rows: int = 1) -> dict[str, np.ndarray]:
    return {"TEXT": np.full((rows, 1), text, dtype=np.object_), "x": np.ones((rows, 2), np.float32)}


def test_a_packed_folder_is_recognised_and_the_same_files_pack_to_the_same_bytes(tmp_path: Path) -> None:
    first = packed(tmp_path).read_bytes()
    again = packed(tmp_path).read_bytes()
    assert first == again and detect(tmp_path / "model.zip") == "python"
    sig = python_model.signature(CONFIG)
    assert [(t.name, t.shape) for t in sig.inputs] == [("TEXT", (-1, 1)), ("x", (-1, 2))]


def test_execute_answers_each_request_with_its_outputs_and_sibling_modules_import(model) -> None:  # type: ignore[no-untyped-def]
    out = model.infer(_inputs(b"hi", rows=3))
    assert out["OUT"].tolist() == [[b"HI!"]] * 3
    np.testing.assert_array_equal(out["y"], np.full((3, 2), 1 + len("upper"), np.float32))


def test_the_module_model_outside_a_python_models_code_says_whose_it_is(model) -> None:  # type: ignore[no-untyped-def]
    """``import model`` is each Python model's own file; read from code of no model, it says so."""
    import model as own  # type: ignore[import-not-found]

    with pytest.raises(AttributeError, match=r"the model\.py of the Python model whose code reads it, and none is running"):
        getattr(own, "TritonPythonModel")  # noqa: B009


def test_a_response_error_or_an_exception_fails_the_request_in_the_models_words_and_an_output_goes_as_given(model) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(InvalidRequest, match=r"^bad text$"):
        model.infer(_inputs(b"bad"))
    with pytest.raises(BackendError, match=r"Failed to process the request\(s\) for model 'upper_0', message: ValueError: asked to fail"):
        model.infer(_inputs(b"fail"))
    assert model.infer(_inputs(b"f64"))["y"].dtype == np.float64  # sent as it is, as Triton sends it (its config: FP32)
    with pytest.raises(Unavailable, match="not here"):  # Triton's code, Triton's status (503)
        model.infer(_inputs(b"gone"))
    assert model.infer(_inputs(b"ok"))["OUT"].tolist() == [[b"OK!"]]  # and it answers on


RETURNS = """
import numpy as np
import triton_python_backend_utils as pb_utils

class TritonPythonModel:
    def execute(self, requests):
        asked = pb_utils.get_input_tensor_by_name(requests[0], "TEXT").as_numpy().ravel()[0]
        out = [pb_utils.InferenceResponse([pb_utils.Tensor("OUT", np.array([[b"x"]], dtype=np.object_)),
                                           pb_utils.Tensor("y", np.zeros((1, 2), np.float32))]) for _ in requests]
        return {b"tuple": tuple(out), b"one": out[0], b"str": ["not a response"] * len(out), b"ok": out}[asked]
"""


@pytest.mark.parametrize(
    ("asked", "words"),
    [
        (b"tuple", "Expected a list in the execute return, found type '<class 'tuple'>'."),
        (b"one", "Expected a list in the execute return, found type "
                 "'<class 'polystack.backends.triton_python_utils.InferenceResponse'>'."),
        (b"str", "Expected an 'InferenceResponse' object in the execute function return list, found type "
                 "'<class 'str'>'."),
    ],
)  # fmt: skip
def test_what_execute_returns_that_is_no_list_of_responses_fails_in_tritons_words(
    tmp_path: Path, asked: bytes, words: str
) -> None:
    """helper-266: a list holding other than responses failed as "internal server error; the server log has the
    details", and a response alone as the number of responses (its size "InferenceResponse")."""
    python = registry.get("python")
    loaded = python.load(packed(tmp_path, RETURNS), python_model.signature(CONFIG), python.parse_options({}), "cpu")
    try:
        with pytest.raises(BackendError) as failed:
            loaded.infer(_inputs(asked))
        assert failed.value.message == f"Failed to process the request(s) for model 'upper_0', message: {words}"
        assert loaded.infer(_inputs(b"ok"))["OUT"].tolist() == [[b"x"]]  # and it answers on
    finally:
        loaded.close()


def test_a_model_without_execute_fails_each_request_showing_none_of_the_servers_frames(tmp_path: Path) -> None:
    """Its "At:" lines were the server's threads' (threading.py's run and _bootstrap), where the model has none
    (helper-266)."""
    python = registry.get("python")
    no_execute = "class TritonPythonModel:\n    def initialize(self, args):\n        pass\n"
    loaded = python.load(packed(tmp_path, no_execute), python_model.signature(CONFIG), python.parse_options({}), "cpu")
    try:
        with pytest.raises(BackendError) as failed:
            loaded.infer(_inputs(b"x"))
        assert failed.value.message == (
            "Failed to process the request(s) for model 'upper_0', message: AttributeError: 'TritonPythonModel' "
            "object has no attribute 'execute'"
        )
    finally:
        loaded.close()


def test_the_model_gets_triton_completed_config_writable_inputs_and_its_extra_outputs_are_dropped(model) -> None:  # type: ignore[no-untyped-def]
    inputs = _inputs(b"args")
    inputs["x"].flags.writeable = False  # as a request's binary data comes
    out = model.infer(inputs)
    assert json.loads(out["OUT"][0, 0]) == [[1], 1]  # numbers as numbers, Triton's default instance group
    np.testing.assert_array_equal(out["y"], np.full((1, 2), 2, np.float32))
    assert set(out) == {"OUT", "y"}


def test_two_models_with_a_module_of_one_name_each_import_their_own(tmp_path: Path) -> None:
    import sys

    backend, loaded = registry.get("python"), []
    for i, word in enumerate(("first", "second")):
        folder = tmp_path / str(i)
        (folder / "m" / "1").mkdir(parents=True)
        source = MODEL.replace("from words import shout", "from words import WORD")
        source = source.replace("[shout(t) for t in text.ravel()]", "[WORD.encode() for t in text.ravel()]")
        (folder / "m" / "1" / "model.py").write_text(source)
        (folder / "m" / "1" / "words.py").write_text(f"WORD = {word!r}\n")
        zipped = python_model.pack(folder / "m", 1, "upper", CONFIG, "model.py", folder / "m.zip")
        loaded.append(backend.load(zipped, python_model.signature(CONFIG), backend.parse_options({}), "cpu"))
    assert [m.infer(_inputs(b"x"))["OUT"].tolist() for m in loaded] == [[[b"first"]], [[b"second"]]]
    assert "words" not in sys.modules
    for m in loaded:
        m._instances[0].model.finalize = lambda: None  # no FINALIZED file here
        m.close()


def test_close_calls_finalize_and_forgets_the_module(model, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    import sys

    name = model._instances[0].module.__name__
    assert name in sys.modules
    model.close()
    assert (tmp_path / "finalized").read_text() == "upper_0"
    assert name not in sys.modules and not model._folder.exists()


@pytest.mark.parametrize(
    ("source", "words"),
    [
        ("class Other: pass\n", "defines no class TritonPythonModel"),
        ("raise ImportError('no such thing')\n", "failed in import: ImportError: no such thing"),
        ("class TritonPythonModel:\n    def initialize(self, args):\n        raise RuntimeError('no GPU')\n",
         "failed in initialize: RuntimeError: no GPU"),
        ("import triton_python_backend_utils as pb\nclass TritonPythonModel:\n    def initialize(self, args):\n"
         "        pb.InferenceRequest(model_name='m', inputs=[], requested_output_names=[]).exec()\n", "BLS is only supported during the 'execute' function"),
        # a name the utilities lack, in the words of Triton's (helper-245: python_backend's old custom_metrics)
        ("import triton_python_backend_utils as pb\nclass TritonPythonModel:\n    def initialize(self, args):\n"
         "        pb.COUNTER\n", "module 'triton_python_backend_utils' has no attribute 'COUNTER'"),
    ],
)  # fmt: skip
def test_a_model_that_cannot_start_fails_its_load_saying_why(tmp_path: Path, source: str, words: str) -> None:
    zipped = packed(tmp_path, source)
    backend = registry.get("python")
    with pytest.raises((InvalidRequest, BackendError), match=words.replace("(", r"\(").replace(")", r"\)")):
        backend.load(zipped, python_model.signature(CONFIG), backend.parse_options({}), "cpu")


def test_a_load_that_fails_in_the_model_s_code_says_where_as_triton_s_stub_does(tmp_path: Path) -> None:
    """helper-217 (Triton's L0_backend_python/lifecycle): a load failed by the model's initialize or
    auto_complete_config named the exception alone, where Triton's answer adds its ``At:`` lines."""
    from polystack.backends.python import auto_complete

    backend = registry.get("python")
    for hook in ("initialize(self, args)", "auto_complete_config(auto_complete_model_config)"):
        static = "    @staticmethod\n" if hook.startswith("auto") else ""
        source = f"class TritonPythonModel:\n{static}    def {hook}:\n        return missing_name\n"
        zipped = packed(tmp_path / hook[:4], source)
        with pytest.raises(InvalidRequest) as raised:
            if static:
                auto_complete(tmp_path / hook[:4] / "upper", 1, "model.py", CONFIG, "upper")
            else:
                backend.load(zipped, python_model.signature(CONFIG), backend.parse_options({}), "cpu")
        words, at = raised.value.message.split("\n\nAt:\n")
        assert words.endswith("NameError: name 'missing_name' is not defined"), words
        assert re.fullmatch(rf"  \S+/1/model\.py\({4 if static else 3}\): {hook.split('(')[0]}\n", at), at


def test_an_import_that_fails_says_where_in_model_py_and_not_in_pythons_import_machinery(tmp_path: Path) -> None:
    """An import failing in ``model.py`` (its module code) said the exception alone when auto-complete imported it,
    and, at the load, added Python's ``<frozen importlib...>`` frames after the model's line."""
    from polystack.backends.python import auto_complete

    backend = registry.get("python")
    source = "import json\n\nx = missing_name\n\nclass TritonPythonModel:\n    pass\n"
    zipped = packed(tmp_path / "m", source)
    for load in (lambda: auto_complete(tmp_path / "m" / "upper", 1, "model.py", CONFIG, "upper"),
                 lambda: backend.load(zipped, python_model.signature(CONFIG), backend.parse_options({}), "cpu")):
        with pytest.raises(InvalidRequest) as raised:
            load()
        words, at = raised.value.message.split("\n\nAt:\n")
        assert words.endswith("failed in import: NameError: name 'missing_name' is not defined"), words
        assert re.fullmatch(r"  \S+/1/model\.py\(3\): <module>\n", at), at
    # helper-223: a module model.py imports fails: its line, then model.py's (the walk skips the machinery between)
    (tmp_path / "m" / "upper" / "1" / "helper.py").write_text("\nraise ValueError('helper broke')\n")
    (tmp_path / "m" / "upper" / "1" / "model.py").write_text("import helper\n")
    with pytest.raises(InvalidRequest) as raised:
        auto_complete(tmp_path / "m" / "upper", 1, "model.py", CONFIG, "upper")
    at = raised.value.message.split("\n\nAt:\n")[1]
    assert re.fullmatch(r"  \S+/1/helper\.py\(2\): <module>\n  \S+/1/model\.py\(1\): <module>\n", at), at


def test_a_model_naming_an_execution_environment_loads_in_polystacks_saying_so(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Triton's stub runs a model whose config names ``EXECUTION_ENV_PATH`` (a conda-pack archive) in that
    environment; polystack runs its Python models in its own process, so it says at load that the environment is
    not used, and a module the model imports and polystack's environment lacks fails the load saying what to do."""
    monkeypatch.setenv("FINALIZED", str(tmp_path / "finalized"))
    env = "$$TRITON_MODEL_DIRECTORY/python_3_10_environment.tar.gz"
    config = {**CONFIG, "parameters": {"EXECUTION_ENV_PATH": {"string_value": env}}}
    backend = registry.get("python")
    with caplog.at_level("WARNING", logger="polystack.backends.python"):
        loaded = backend.load(packed(tmp_path, config=config), python_model.signature(config), backend.parse_options({}), "cpu")
    loaded.close()
    warned = [r for r in caplog.records if "execution environment is not used" in r.getMessage()]
    assert len(warned) == 1 and warned[0].execution_env_path == env  # type: ignore[attr-defined]
    missing = "import polystack_absent_package\n" + MODEL
    with pytest.raises(InvalidRequest, match=r"failed in import: ModuleNotFoundError: No module named "
                       r"'polystack_absent_package'; its config names the execution environment .*python_3_10_environment"
                       r".*which polystack does not use .* install what the model imports into polystack's environment"):
        backend.load(packed(tmp_path, missing, config), python_model.signature(config), backend.parse_options({}), "cpu")
    # as Triton's load reads the model's auto_complete_config first, so does polystack's start: it says the same
    from polystack.backends.python import auto_complete

    with pytest.raises(InvalidRequest, match=r"No module named 'polystack_absent_package'; its config names the "
                       r"execution environment .*python_3_10_environment"):
        auto_complete(tmp_path / "upper", 1, "model.py", config, "upper")
    # without the parameter, neither the warning nor the hint
    caplog.clear()
    with caplog.at_level("WARNING", logger="polystack.backends.python"), pytest.raises(InvalidRequest) as raised:
        backend.load(packed(tmp_path, missing), python_model.signature(CONFIG), backend.parse_options({}), "cpu")
    assert "EXECUTION_ENV_PATH" not in raised.value.message and not caplog.records


def test_a_config_without_its_tensors_or_a_folder_without_model_py_is_refused(tmp_path: Path) -> None:
    # no outputs: a model giving nothing, as tritonserver 2.51 loads one (helper-163)
    assert python_model.signature({"backend": "python", "input": CONFIG["input"]}).outputs == ()
    # batched, taking nothing: it loads (Triton's does), its requests refused (tests/server: helper-197)
    batched = python_model.signature({"backend": "python", "max_batch_size": 4, "output": CONFIG["output"]})
    assert batched.takes_nothing and batched.outputs[0].shape[0] == -1
    assert python_model.signature({"backend": "python", "output": CONFIG["output"]}).inputs == ()  # takes nothing
    # a tensor without its data_type, dims or name: Triton's words (ValidateIOShape) first (helper-195)
    for tensor, words in (
        ({"name": "x", "dims": [2]}, "model input 'x' must specify 'data_type' for m: the config's input"),
        ({"name": "x", "data_type": "TYPE_FP32"}, "model input 'x' must specify 'dims' for m: "),
        ({"data_type": "TYPE_FP32", "dims": [2]}, "model input must specify 'name' for m: "),
    ):
        with pytest.raises(InvalidModelFile, match=re.escape(words)):
            python_model.signature({"backend": "python", "name": "m", "input": [tensor], "output": CONFIG["output"]})
    (tmp_path / "m" / "1").mkdir(parents=True)
    with pytest.raises(InvalidModelFile, match=r"holds its model\.py"):
        python_model.pack(tmp_path / "m", 1, "m", CONFIG, "model.py", tmp_path / "m.zip")


FACTS = """
import asyncio, json
import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    async def execute(self, requests):
        await asyncio.sleep(0)  # an async def execute runs on an event loop of the model's own
        responses = []
        for r in requests:
            x = pb_utils.get_input_tensor_by_name(r, "x").as_numpy()
            seen = [r.request_id(), json.loads(r.parameters()), sorted(r.requested_output_names()), r.timeout(),
                    r.correlation_id(), r.flags()]
            out = np.array([[json.dumps(seen).encode()]] * len(x), dtype=np.object_)
            responses.append(pb_utils.InferenceResponse([pb_utils.Tensor("OUT", out), pb_utils.Tensor("y", x)]))
        return responses
"""


def test_the_model_sees_its_requests_facts_and_an_async_execute_runs(tmp_path: Path) -> None:
    backend = registry.get("python")
    loaded = backend.load(packed(tmp_path, FACTS), python_model.signature(CONFIG), backend.parse_options({}), "cpu")
    try:
        # Triton's own parameters apart, as Triton hands them (the transport's own, binary_data_output, not at all)
        parameters = {"a": 1, "f": 1.5, "timeout": 5, "priority": 1, "binary_data_output": True, "sequence_id": 42,
                      "sequence_start": True, "sequence_end": True}  # fmt: skip
        facts = hosting.RequestFacts("r-1", parameters, ("OUT",))
        out = hosting.run_as(facts, loaded.infer, _inputs(b"x"))
        assert json.loads(out["OUT"][0, 0]) == ["r-1", {"a": 1, "f": 1.5}, ["OUT"], 5, 42, 3]
        out = loaded.infer(_inputs(b"x", rows=2))  # no server: no facts, every output asked for
        assert json.loads(out["OUT"][1, 0]) == ["", {}, ["OUT", "y"], 0, 0, 0]
    finally:
        loaded.close()


CALLS = """
import json
import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):
        x = pb_utils.get_input_tensor_by_name(requests[0], "x")
        call = pb_utils.InferenceRequest(
            model_name="other", inputs=[x], requested_output_names=["z"], request_id="c-1", timeout=250,
            parameters={"k": "v"}, model_version=2,
        )
        answer = call.exec()
        if answer.has_error():
            words = f"{answer.error().code()}|{answer.error().message()}"
            return [pb_utils.InferenceResponse([pb_utils.Tensor("OUT", np.array([[words.encode()]], dtype=np.object_)),
                                                pb_utils.Tensor("y", x.as_numpy())])]
        z = pb_utils.get_output_tensor_by_name(answer, "z").as_numpy()
        return [pb_utils.InferenceResponse([pb_utils.Tensor("OUT", np.array([[b"ok"]], dtype=np.object_)),
                                            pb_utils.Tensor("y", z)])]
"""


class Host:
    """A server as the model sees it: answers each call with ``answer`` (outputs, or a polystack error)."""

    def __init__(self) -> None:
        self.calls: list[hosting.ModelCall] = []
        self.answer: dict[str, np.ndarray] | Exception = {}

    def call(self, call: hosting.ModelCall) -> concurrent.futures.Future[dict[str, np.ndarray]]:
        self.calls.append(call)
        future: concurrent.futures.Future[dict[str, np.ndarray]] = concurrent.futures.Future()
        if isinstance(self.answer, Exception):
            future.set_exception(self.answer)
        else:
            future.set_result(self.answer)
        return future


def test_a_call_goes_to_the_host_that_loaded_the_model_and_its_error_comes_back_in_triton_words(tmp_path: Path) -> None:
    backend, host = registry.get("python"), Host()
    with hosting.hosted_by(host):  # the server that loads it
        loaded = backend.load(packed(tmp_path, CALLS), python_model.signature(CONFIG), backend.parse_options({}), "cpu")
    try:
        host.answer = {"z": np.full((1, 2), 7, np.float32)}
        out = loaded.infer(_inputs(b"x"))
        assert out["OUT"].tolist() == [[b"ok"]] and out["y"].tolist() == [[7, 7]]
        call = host.calls[0]
        assert (call.model, call.outputs, call.version, call.request_id, call.caller) == ("other", ("z",), 2, "c-1", "upper")
        assert call.parameters == {"timeout": 250}  # Triton's timeout (microseconds), what schedules the call
        assert call.model_parameters == {"k": "v"}  # its own, as given
        np.testing.assert_array_equal(call.inputs["x"], np.ones((1, 2), np.float32))
        gone = "Failed for execute the inference request. Model 'other' is not ready. (no model)"  # Triton's words
        for error, why in ((NotFound("no model"), gone), (InvalidRequest("bad"), "bad")):
            host.answer = error  # each INTERNAL, as Triton's
            words = f"1|Model other - Error when running inference: {why}"
            assert loaded.infer(_inputs(b"x"))["OUT"].tolist() == [[words.encode()]]
        host.answer = BackendError("broke")  # a failure in the called model's run: its words, as 2.51 hands them
        assert loaded.infer(_inputs(b"x"))["OUT"].tolist() == [[b"1|broke"]]
    finally:
        loaded.close()


INSTANCES = """
import numpy as np
import triton_python_backend_utils as pb_utils

RUNNING = []  # this import's: each instance imports model.py for itself


class TritonPythonModel:
    def initialize(self, args):
        self.name = args["model_instance_name"]

    def execute(self, requests):
        RUNNING.append(self.name)
        pb_utils.BARRIER.wait()  # the test's: passed once every instance runs at once
        seen = f"{self.name}:{len(RUNNING)}".encode()
        return [pb_utils.InferenceResponse([pb_utils.Tensor("OUT", np.array([[seen]], dtype=np.object_)),
                                            pb_utils.Tensor("y", pb_utils.get_input_tensor_by_name(r, "x").as_numpy())])
                for r in requests]
"""


def test_a_configs_instance_count_runs_that_many_instances_at_once_each_its_own(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import threading

    from polystack.backends import triton_python_utils

    monkeypatch.setattr(triton_python_utils, "BARRIER", threading.Barrier(3, timeout=10), raising=False)
    config = {**CONFIG, "instance_group": [{"count": 2, "kind": "KIND_CPU"}, {"name": "extra", "count": 1}]}
    backend = registry.get("python")
    loaded = backend.load(packed(tmp_path, INSTANCES, config), python_model.signature(config), backend.parse_options({}), "cpu")
    try:
        with concurrent.futures.ThreadPoolExecutor(3) as pool:  # three calls at once: each instance runs one
            answers = list(pool.map(lambda _: loaded.infer(_inputs(b"x"))["OUT"][0, 0].decode(), range(3)))
        # Triton's instance names; each instance ran once, with a module of its own
        assert sorted(answers) == ["extra_0:1", "upper_0_0:1", "upper_0_1:1"]
    finally:
        loaded.close()


LOADER = """
import sys
from pathlib import Path
from polystack.backends import registry
from polystack.formats import python_model
import json
config = json.loads(Path(sys.argv[2]).read_text())
backend = registry.get("python")
loaded = backend.load(Path(sys.argv[1]), python_model.signature(config), backend.parse_options({}), "cpu")
print(loaded._folder, flush=True)
sys.stdin.read()  # loaded until its parent says
"""


def test_a_folder_a_killed_process_left_goes_at_the_next_load_and_a_live_processs_stays(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import os
    import subprocess
    import sys
    import tempfile
    import time

    from polystack import temp_folders

    temp = tmp_path / "tmp"
    temp.mkdir()
    monkeypatch.setenv("FINALIZED", str(tmp_path / "finalized"))
    (tmp_path / "config.json").write_text(json.dumps(CONFIG))
    zipped = packed(tmp_path)
    env = {**os.environ, "TMPDIR": str(temp)}
    loaders = [
        subprocess.Popen([sys.executable, "-c", LOADER, str(zipped), str(tmp_path / "config.json")], env=env,
                         stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        for _ in range(2)
    ]  # fmt: skip
    try:
        killed, live = (Path(p.stdout.readline().strip()) for p in loaders)  # type: ignore[union-attr]
        loaders[0].kill()  # its model is never closed: its folder stays behind
        loaders[0].wait()
        old = time.time() - 3600
        for folder in (killed, live):
            os.utime(folder, (old, old))  # past the minute a new folder is left alone for
        assert killed.is_dir() and live.is_dir()
        monkeypatch.setattr(tempfile, "tempdir", str(temp))
        monkeypatch.setattr(temp_folders, "_swept", {})
        model = registry.get("python").load(zipped, python_model.signature(CONFIG), registry.get("python").parse_options({}), "cpu")
        try:
            assert not killed.exists() and live.is_dir() and model._folder.is_dir()
            assert not temp_folders.lock_of(killed).exists() and temp_folders.lock_of(live).is_file()
            assert not any(p.name.endswith(temp_folders.LOCK) for p in model._folder.iterdir())  # out of its sight
        finally:
            model.close()
        assert not model._folder.exists() and not temp_folders.lock_of(model._folder).exists() and live.is_dir()
    finally:
        for p in loaders:
            p.kill()
            p.wait()


def test_a_temporary_folder_without_locks_still_loads_the_model(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import errno
    import fcntl
    import tempfile

    from polystack import temp_folders

    def refused(*args: object) -> None:  # as NFS mounted with nolock answers
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setenv("FINALIZED", str(tmp_path / "finalized"))
    monkeypatch.setattr(fcntl, "flock", refused)
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    backend = registry.get("python")
    model = backend.load(packed(tmp_path), python_model.signature(CONFIG), backend.parse_options({}), "cpu")
    try:
        assert model.infer(_inputs(b"a"))["OUT"][0, 0] == b"A!"
        assert not temp_folders.lock_of(model._folder).exists()  # no lock file: no sweep takes it for a dead one's
    finally:
        model.close()


def test_bytes_tensors_serialize_to_tritons_wire_form_and_back() -> None:
    from polystack.backends import triton_python_utils as pb_utils

    strings = np.array([[b"ab", b""], [b"xyz", "q"]], dtype=np.object_)
    wire = pb_utils.serialize_byte_tensor(strings)
    assert wire is not None and wire.dtype == np.uint8
    assert wire.tobytes() == b"\x02\x00\x00\x00ab\x00\x00\x00\x00\x03\x00\x00\x00xyz\x01\x00\x00\x00q"
    assert pb_utils.deserialize_bytes_tensor(wire).tolist() == [b"ab", b"", b"xyz", b"q"]
    assert pb_utils.serialize_byte_tensor(np.array([], dtype=np.object_)) is None
    with pytest.raises(pb_utils.TritonModelException, match="claims 9 bytes"):
        pb_utils.deserialize_bytes_tensor(b"\x09\x00\x00\x00ab")


def test_auto_complete_config_completes_what_the_file_leaves_out_and_refuses_what_contradicts_it() -> None:
    from polystack.backends import triton_python_utils as pb_utils

    given = {"name": "m", "max_batch_size": 8, "input": [{"name": "a", "data_type": "TYPE_FP32", "dims": []}],
             "output": [], "sequence_batching": {}}  # fmt: skip
    config = pb_utils.ModelConfig(json.dumps(given))
    config.add_input({"name": "a", "data_type": "TYPE_FP32", "dims": [4]})  # completes the file's
    config.add_output({"name": "y", "data_type": "TYPE_FP32", "dims": [4]})
    config.set_max_batch_size(16)
    config.set_model_transaction_policy({"decoupled": False})
    assert config.as_dict()["input"] == [{"name": "a", "data_type": "TYPE_FP32", "dims": [4]}]
    assert config.as_dict()["max_batch_size"] == 16 and not pb_utils.using_decoupled_model_transaction_policy(config.as_dict())
    for act, words in (
        (lambda: config.set_max_batch_size(2), "configuration specified max_batch_size 16"),
        (lambda: config.set_dynamic_batching(), "scheduling_choice as 'sequence_batching'"),
        (lambda: config.add_input({"name": "a", "data_type": "TYPE_INT8", "dims": [4]}), "expects datatype TYPE_FP32"),
        (lambda: config.add_input({"name": "a", "data_type": "TYPE_FP32", "dims": [5]}), "the model expects dims [5]"),
        (lambda: config.add_output({"name": "z", "dims": [1]}), "is missing 'data_type' property"),
        (lambda: config.add_output({"name": "z", "data_type": "TYPE_FP32", "dims": [1], "optional": True}),
         "contains property other than 'name', 'data_type' and 'dims'."),
        (lambda: config.set_model_transaction_policy({"decoupled": True}), "trying to change decoupled property"),
    ):
        with pytest.raises(ValueError, match=words.replace("[", r"\[").replace("]", r"\]")):
            act()
    assert pb_utils.triton_to_numpy_type(11) is np.float32 and pb_utils.numpy_to_triton_type(np.float32) == 11
    assert pb_utils.triton_to_numpy_type(13) is np.object_ and pb_utils.numpy_to_triton_type(np.object_) == 13


DECOUPLING = """
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    @staticmethod
    def auto_complete_config(config):
        config.set_model_transaction_policy(dict(decoupled=True))
        return config
"""


def test_auto_complete_config_may_not_make_decoupled_a_model_whose_config_says_it_is_not(tmp_path: Path) -> None:
    """Triton hands auto_complete_config the config with every field of a message it gives, so a config's
    ``model_transaction_policy { decoupled: false }`` (protobuf's JSON of it: ``{}``) is one the model may not
    change; polystack handed ``{}`` on, and the model loaded decoupled (helper-193's L0_model_config run)."""
    from polystack.backends.python import auto_complete
    from polystack.server.config_text import as_json

    (tmp_path / "m" / "1").mkdir(parents=True)
    (tmp_path / "m" / "1" / "model.py").write_text(DECOUPLING)
    for text in ("model_transaction_policy { decoupled: false }", "model_transaction_policy { }"):
        with pytest.raises(InvalidRequest, match="trying to change decoupled property in auto-complete-config for "
                           "model 'm', which is already set to 'False'"):
            auto_complete(tmp_path / "m", 1, "model.py", json.loads(as_json(text)), "m")
    completed = auto_complete(tmp_path / "m", 1, "model.py", json.loads(as_json('backend: "python"')), "m")
    assert completed["model_transaction_policy"] == {"decoupled": True}  # a config without the message: the model's


def test_an_auto_complete_config_that_returns_nothing_is_refused_in_tritons_words(tmp_path: Path) -> None:
    """As Triton's L0_model_config no_return case greps them (helper-193)."""
    from polystack.backends.python import auto_complete

    (tmp_path / "m" / "1").mkdir(parents=True)
    (tmp_path / "m" / "1" / "model.py").write_text(DECOUPLING.replace("return config", "pass"))
    with pytest.raises(InvalidRequest, match="^auto_complete_config function in model 'm' must return a valid "
                       r"pb\.ModelConfig object: it returned NoneType"):
        auto_complete(tmp_path / "m", 1, "model.py", {}, "m")


def test_a_batch_has_each_model_instance_waiting_as_often_as_its_most_waited_request_has_it() -> None:
    from polystack.backends.python import _waiting

    # one request sent by ma (one of its instances waits), one a client's: ma waits once, not twice
    assert _waiting([("ma:1",), ()]) == ("ma:1",)
    assert sorted(_waiting([("a:1", "b:1", "a:1"), ("a:1", "c:1")])) == ["a:1", "a:1", "b:1", "c:1"]


BF16 = """
import torch
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):
        responses = []
        for request in requests:
            x = pb_utils.get_input_tensor_by_name(request, "x")
            try:
                x.as_numpy()
            except pb_utils.TritonModelException as e:
                assert "tensor dtype is bf16 and cannot be converted to numpy" in str(e)
            else:
                raise AssertionError("as_numpy of a BF16 tensor")
            t = torch.utils.dlpack.from_dlpack(x.to_dlpack())
            assert t.dtype == torch.bfloat16
            y = pb_utils.Tensor.from_dlpack("y", torch.utils.dlpack.to_dlpack(t * 2))
            assert y.triton_dtype() == "BF16"
            responses.append(pb_utils.InferenceResponse([y, pb_utils.Tensor.from_dlpack("z", torch.utils.dlpack.to_dlpack(
                t.float()))]))
        return responses
"""


def test_bf16_tensors_reach_and_leave_a_model_through_dlpack_as_in_triton(tmp_path: Path) -> None:
    """Triton's identity_bf16 (helper-159: polystack answered 500): as_numpy refuses a BF16 tensor in Triton's words,
    its DLPack form is torch's bfloat16, and a DLPack capsule (torch.utils.dlpack.to_dlpack, Triton's examples'
    way) makes a tensor, of a float32 tensor too (it failed: a capsule has no __dlpack__)."""
    config = {
        "backend": "python",
        "input": [{"name": "x", "data_type": "TYPE_BF16", "dims": [3]}],
        "output": [{"name": "y", "data_type": "TYPE_BF16", "dims": [3]}, {"name": "z", "data_type": "TYPE_FP32", "dims": [3]}],
    }
    backend = registry.get("python")
    zipped = packed(tmp_path, BF16, config)
    loaded = backend.load(zipped, python_model.signature(config), backend.parse_options({}), "cpu")
    try:
        x = np.array([1.5, -2, 3], np.float32).astype(DType.BF16.numpy)
        out = loaded.infer({"x": x})
        assert out["y"].dtype == DType.BF16.numpy and out["y"].astype(np.float32).tolist() == [3, -4, 6]
        assert out["z"].dtype == np.float32 and out["z"].tolist() == [1.5, -2, 3]
    finally:
        loaded.close()


def test_an_instance_update_compares_configs_as_triton_normalizes_them() -> None:
    """Two configs that differ only where Triton's normalization (and GET config) fills defaults, in instance groups,
    version policy or polystack's own parameters, share instances; any other difference, a default's presence that
    chooses something (``dynamic_batching {}``, ``input_pinned_memory {}``) included, does not."""
    from polystack.backends.python import _but_groups

    base = {"name": "m", "max_batch_size": 4, "input": [{"name": "x", "data_type": "TYPE_FP32", "dims": ["2"]}],
            "output": [{"name": "y", "data_type": "TYPE_FP32", "dims": [2]}],
            "parameters": {"k": {"string_value": "v"}}}  # fmt: skip
    shown = {  # as GET config shows base served with three instances
        **base, "platform": "", "backend": "python", "default_model_filename": "model.py",
        "input": [{"name": "x", "data_type": "TYPE_FP32", "dims": [2], "format": "FORMAT_NONE", "optional": False}],
        "instance_group": [{"name": "m_0", "kind": "KIND_CPU", "count": 3, "gpus": [], "passive": False}],
        "parameters": {"polystack_device": {"string_value": "cpu"}, "k": {"string_value": "v"}},
        "optimization": {"priority": "PRIORITY_DEFAULT", "input_pinned_memory": {"enable": True},
                         "output_pinned_memory": {"enable": True}, "eager_batching": False},
        "response_cache": {"enable": False}, "model_warmup": [], "version_policy": {"latest": {"num_versions": 1}},
    }  # fmt: skip
    assert _but_groups(base) == _but_groups(shown)
    batching = {**base, "dynamic_batching": {}}
    shown_batching = {**shown, "dynamic_batching": {"preferred_batch_size": [4], "max_queue_delay_microseconds": 0,
                                                    "default_queue_policy": {"timeout_action": "REJECT"}}}  # fmt: skip
    assert _but_groups(batching) == _but_groups(shown_batching) != _but_groups(base)
    unpinned = {**base, "optimization": {"input_pinned_memory": {}}}
    assert _but_groups(unpinned) == _but_groups({**base, "optimization": {"input_pinned_memory": {"enable": False}}})
    assert _but_groups(unpinned) != _but_groups(base)
    assert _but_groups({**base, "parameters": {"k": {"string_value": "w"}}}) != _but_groups(base)
    assert _but_groups({**base, "runtime": "model.py"}) != _but_groups(base)  # a field tritonclient's proto lacks


def test_a_metric_whose_family_object_was_deleted_raises_tritons_error_on_each_use() -> None:
    """As Triton's stub (its QA ``test_metric_lifetime_error``): a model keeps the MetricFamily with its Metric."""
    from polystack.backends import triton_python_utils as pb_utils

    for kind in (pb_utils.MetricFamily.COUNTER, pb_utils.MetricFamily.GAUGE):
        family = pb_utils.MetricFamily(name=f"lifetime_{kind}", description="lifetime", kind=kind)
        metric = family.Metric(labels={"example": "label"})
        metric.increment(2)
        assert metric.value() == 2
        del family
        for use, given in ((metric.increment, (1,)), (metric.value, ()), (metric.set, (3,))):
            with pytest.raises(pb_utils.TritonModelException, match="corresponding 'MetricFamily' has been deleted"):
                use(*given)


@pytest.mark.parametrize("left_out", ["model_name", "inputs", "requested_output_names"])
def test_a_call_without_its_model_inputs_or_outputs_is_a_type_error_as_in_triton(left_out: str) -> None:
    """helper-182 (Triton's test_bls_incorrect_args): Triton's binding has no default for these three."""
    from polystack.backends import triton_python_utils as pb_utils

    given = {"model_name": "m", "inputs": [], "requested_output_names": []}
    del given[left_out]
    with pytest.raises(TypeError, match=left_out):
        pb_utils.InferenceRequest(**given)  # type: ignore[arg-type]


def test_arguments_triton_s_binding_refuses_are_refused_when_the_object_is_made() -> None:
    """helper-183 (Triton's argument_validation): None, or a list of None, raised nothing here, and a Tensor of None
    data reached the client as a 200 holding a BYTES scalar."""
    from polystack.backends import triton_python_utils as pb_utils

    x = pb_utils.Tensor("x", np.ones(2, np.float32))
    call = {"model_name": "m", "inputs": [x], "requested_output_names": ["y"]}
    for changed in ({"inputs": None}, {"inputs": [1]}, {"model_name": None}, {"requested_output_names": [None]},
                    {"requested_output_names": None}, {"request_id": None}, {"model_version": None}, {"flags": None},
                    {"correlation_id": None}, {"correleation_id": 1}):  # fmt: skip
        with pytest.raises(TypeError):
            pb_utils.InferenceRequest(**{**call, **changed})  # type: ignore[arg-type]
    # a None among the inputs is Triton's request's refusal, not its binding's (helper-188: tritonserver 2.51's words)
    with pytest.raises(pb_utils.TritonModelException) as raised:
        pb_utils.InferenceRequest(**{**call, "inputs": [None], "request_id": "r1"})  # type: ignore[arg-type]
    assert raised.value.message() == "Input tensor for request with id 'r1' and model name 'm' should not be empty."
    pb_utils.InferenceRequest(model_name="m", inputs=[], requested_output_names=[])  # empty lists are fine
    for name, data in ((None, np.ones(2)), ("y", None), ("", None)):
        with pytest.raises(TypeError):
            pb_utils.Tensor(name, data)  # type: ignore[arg-type]
    # helper-210 (tritonserver 2.51's stub): a None, or anything but a capsule or a tensor, is its words
    for source in (None, [1.0], np.float32):
        with pytest.raises(pb_utils.TritonModelException, match=r"^Provided tensor is not supported\. Tensor must be"):
            pb_utils.Tensor.from_dlpack("y", source)
    for made in (lambda: pb_utils.Tensor.from_dlpack("", None), lambda: pb_utils.Tensor("", np.ones(2))):
        with pytest.raises(pb_utils.TritonModelException, match=r"^Tensor name cannot be an empty string\.$"):
            made()
    with pytest.raises(pb_utils.TritonModelException, match="Output tensor for inference response should not be empty"):
        pb_utils.InferenceResponse(output_tensors=[None])  # type: ignore[list-item]
    with pytest.raises(TypeError):
        pb_utils.InferenceResponse(output_tensors=None)  # type: ignore[arg-type]
    # helper-216 (Triton's decoupled_bls model): an error that is a str was taken, then failed the response as it was
    # sent, and the client of the decoupled model waited for good
    with pytest.raises(TypeError, match=r"error must be a pb_utils\.TritonError, not str"):
        pb_utils.InferenceResponse(error="GPU BLS test failed.")  # type: ignore[arg-type]
    assert pb_utils.InferenceResponse([x]).output_tensors() == [x]


def test_logger_refuses_what_triton_s_binding_refuses() -> None:
    """helper-210 (Triton's argument_validation): a level that is not a LogLevel (None, a plain int) or a message that
    is not a str was logged, where tritonserver 2.51's binding raises TypeError."""
    from polystack.backends import triton_python_utils as pb_utils

    logger = pb_utils.Logger
    for call in (lambda: logger.log("m", None), lambda: logger.log("m", 1), lambda: logger.log(None),
                 lambda: logger.log_info(None), lambda: logger.log_warn(None), lambda: logger.log_error(None),
                 lambda: logger.log_verbose(None)):  # fmt: skip
        with pytest.raises(TypeError, match="incompatible function arguments"):
            call()  # type: ignore[no-untyped-call]
    logger.log("Level unspecified")
    logger.log("a warning", logger.WARNING)
    logger.log_info("info")


def test_dlpack_round_trips_and_refuses_strings_and_non_contiguous_tensors_in_tritons_words() -> None:
    """helper-182 (Triton's dlpack_test): a tensor made from a DLPack capsule exported again raised BufferError (the
    array numpy made of the capsule is read-only); a transposed tensor was taken where Triton refuses it."""
    import torch
    from torch.utils.dlpack import from_dlpack, to_dlpack

    from polystack.backends import triton_python_utils as pb_utils

    made = pb_utils.Tensor.from_dlpack("t", to_dlpack(torch.arange(4, dtype=torch.float32)))
    assert from_dlpack(made.to_dlpack()).tolist() == [0.0, 1.0, 2.0, 3.0]
    # a capsule holds its tensor while it lives, as Triton's (helper-216: its decoupled_bls model counts references)
    before = sys.getrefcount(made)
    capsule = made.to_dlpack()
    assert sys.getrefcount(made) == before + 1
    del capsule
    assert sys.getrefcount(made) == before
    with pytest.raises(pb_utils.TritonModelException, match="DLPack does not have support for string tensors"):
        pb_utils.Tensor("s", np.array([b"x"], dtype=np.object_)).to_dlpack()
    with pytest.raises(pb_utils.TritonModelException, match="DLPack tensor is not contiguous"):
        pb_utils.Tensor.from_dlpack("t", to_dlpack(torch.rand(3, 2).T))
