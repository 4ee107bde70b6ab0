"""Optional inputs (a Triton config's ``optional: true``): a graph input an ONNX initializer gives a
default, which a request may feed or leave out, served as Triton's ONNX Runtime backend serves it (its
own test, ``initializer_as_input``: INPUT + INITIALIZER, the initializer all ones), by a real server
process, over HTTP and gRPC with tritonclient; and the configs Triton refuses, refused."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import onnx
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from onnx import TensorProto, helper
from servekit import cli_server, free_port, same_config_both_ways
from tritonclient.utils import InferenceServerException

from polystack.formats.onnx import overridable_inputs

CONFIG = {
    "max_batch_size": 0,
    "input": [
        {"name": "INPUT", "data_type": "TYPE_FP32", "dims": [5, 5]},
        {"name": "INITIALIZER", "data_type": "TYPE_FP32", "dims": [5, 5], "optional": True},
    ],
    "output": [{"name": "OUTPUT", "data_type": "TYPE_FP32", "dims": [5, 5]}],
}


def add_with_initializer(path: Path, ir_version: int = 8, rows: int = 5) -> Path:
    """OUTPUT = INPUT + INITIALIZER, where the graph input INITIALIZER has an initializer of ones; INPUT and
    OUTPUT have ``rows`` rows of 5, INITIALIZER 5 rows of 5, or with ``rows`` -1 (any number: a batch) 5
    values, added to each row."""
    ones = np.ones((5, 5) if rows == 5 else (5,), np.float32)
    tensor = helper.make_tensor("INITIALIZER", TensorProto.FLOAT, ones.shape, ones.flatten())
    io = [
        helper.make_tensor_value_info(n, TensorProto.FLOAT, list(ones.shape) if n == "INITIALIZER" else [rows, 5])
        for n in ("INPUT", "INITIALIZER", "OUTPUT")
    ]
    graph = helper.make_graph(
        [helper.make_node("Add", ["INPUT", "INITIALIZER"], ["OUTPUT"])], "add", io[:2], io[2:], initializer=[tensor]
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = ir_version
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))
    return path


def only_optional(path: Path) -> Path:
    """OUTPUT = W x 2, where the model's one input W has an initializer [1, 2, 3]: a request may give nothing."""
    w = helper.make_tensor("W", TensorProto.FLOAT, [3], [1.0, 2.0, 3.0])
    two = helper.make_tensor("two", TensorProto.FLOAT, [], [2.0])
    graph = helper.make_graph(
        [helper.make_node("Mul", ["W", "two"], ["OUTPUT"])],
        "scale",
        [helper.make_tensor_value_info("W", TensorProto.FLOAT, [3])],
        [helper.make_tensor_value_info("OUTPUT", TensorProto.FLOAT, [3])],
        initializer=[w, two],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))
    return path


@pytest.fixture(scope="module")
def clients(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[httpclient.InferenceServerClient, grpcclient.InferenceServerClient]]:
    root = tmp_path_factory.mktemp("optional")
    add_with_initializer(root / "models" / "add" / "1" / "model.onnx")
    add_with_initializer(root / "models" / "batched" / "1" / "model.onnx", rows=-1)
    only_optional(root / "models" / "scale" / "1" / "model.onnx")
    scale = {"max_batch_size": 0, "input": [{"name": "W", "data_type": "TYPE_FP32", "dims": [3], "optional": True}]}
    (root / "models" / "scale" / "config.pbtxt").write_text(json.dumps(scale))
    (root / "models" / "add" / "config.pbtxt").write_text(json.dumps(CONFIG))
    mappings = (("given", {"INPUT": "X", "INITIALIZER": "B"}), ("left_out", {"INPUT": "X"}), ("may", {"INPUT": "X", "INITIALIZER": "B"}))
    for name, mapped in mappings:
        (root / "models" / name / "1").mkdir(parents=True)
        inputs = [{"name": tensor, "data_type": "TYPE_FP32", "dims": [5, 5]} for tensor in mapped.values()]
        if name == "may":  # the ensemble's own input B is optional too
            inputs[1]["optional"] = True
        step = {"model_name": "add", "model_version": -1, "input_map": mapped, "output_map": {"OUTPUT": "Y"}}
        ensemble = {"platform": "ensemble", "max_batch_size": 0, "input": inputs,
                    "output": [{"name": "Y", "data_type": "TYPE_FP32", "dims": [5, 5]}],
                    "ensemble_scheduling": {"step": [step]}}  # fmt: skip
        (root / "models" / name / "config.pbtxt").write_text(json.dumps(ensemble))
    port, grpc_port = free_port(), free_port()
    args = ["--model-repository", str(root / "models"), "--allow-model-control", "--grpc-port", str(grpc_port)]
    with cli_server(root / "home", args, port, root / "serve.log"):
        yield (
            httpclient.InferenceServerClient(f"127.0.0.1:{port}"),
            grpcclient.InferenceServerClient(f"127.0.0.1:{grpc_port}"),
        )


def infer(
    client: httpclient.InferenceServerClient | grpcclient.InferenceServerClient,
    model: str = "add",
    **tensors: np.ndarray,
) -> np.ndarray:
    module = httpclient if isinstance(client, httpclient.InferenceServerClient) else grpcclient
    inputs = []
    for name, value in tensors.items():
        i = module.InferInput(name, list(value.shape), "FP32")
        i.set_data_from_numpy(value)
        inputs.append(i)
    return client.infer(model, inputs).as_numpy("Y" if model in ("given", "left_out", "may") else "OUTPUT")


@pytest.mark.parametrize("transport", ["http", "grpc"])
def test_an_optional_input_left_out_takes_its_initializer_and_given_replaces_it(clients, transport: str) -> None:
    client = clients[0] if transport == "http" else clients[1]
    x = np.arange(25, dtype=np.float32).reshape(5, 5)
    np.testing.assert_array_equal(infer(client, INPUT=x), x + 1)
    np.testing.assert_array_equal(infer(client, INPUT=x, INITIALIZER=x), x + x)


def test_an_ensemble_step_may_map_an_optional_input_or_leave_it_out(clients) -> None:
    http, _ = clients
    x = np.arange(25, dtype=np.float32).reshape(5, 5)
    np.testing.assert_array_equal(infer(http, "given", X=x, B=x), x + x)
    np.testing.assert_array_equal(infer(http, "left_out", X=x), x + 1)


def test_an_ensembles_optional_input_left_out_leaves_it_out_of_the_steps_that_take_it(clients) -> None:
    """As Triton's ensembles: a request may leave out an ensemble's optional input, and the step it feeds then runs
    without it (here the step model's own optional input, which takes its initializer's default)."""
    http, grpc = clients
    x = np.arange(25, dtype=np.float32).reshape(5, 5)
    np.testing.assert_array_equal(infer(http, "may", X=x, B=x), x + x)
    np.testing.assert_array_equal(infer(http, "may", X=x), x + 1)
    np.testing.assert_array_equal(infer(grpc, "may", X=x), x + 1)
    assert [t["name"] for t in http.get_model_metadata("may")["inputs"]] == ["X", "B"]
    shown = same_config_both_ways(http, grpc, "may")
    assert [(t["name"], t.get("optional", False)) for t in shown["input"]] == [("X", False), ("B", True)]
    with pytest.raises(InferenceServerException, match=r"missing required input\(s\) \['X'\]"):
        infer(http, "may", B=x)


@pytest.mark.parametrize("transport", ["http", "grpc"])
def test_a_model_whose_inputs_are_all_optional_takes_a_request_of_none(clients, transport: str) -> None:
    """As Triton's (its input_all_optional test): no inputs at all is a request such a model takes."""
    client = clients[0] if transport == "http" else clients[1]
    np.testing.assert_array_equal(client.infer("scale", []).as_numpy("OUTPUT"), [2.0, 4.0, 6.0])
    w = np.array([1.0, 1.0, 1.0], np.float32)
    np.testing.assert_array_equal(infer(client, "scale", W=w), 2 * w)
    with pytest.raises(InferenceServerException, match="expected number of inputs between 1 and 2 but got 0 inputs for model 'add'"):
        client.infer("add", [])  # a model with a required input: refused in Triton's words


def test_metadata_lists_an_optional_input_and_config_shows_it_optional(clients) -> None:
    http, grpc = clients
    assert [t["name"] for t in http.get_model_metadata("add")["inputs"]] == ["INPUT", "INITIALIZER"]
    assert [t.name for t in grpc.get_model_metadata("add").inputs] == ["INPUT", "INITIALIZER"]
    shown = same_config_both_ways(http, grpc, "add")
    assert [(t["name"], t["optional"]) for t in shown["input"]] == [("INPUT", False), ("INITIALIZER", True)]
    http.load_model("add", config=json.dumps(shown))  # what GET config shows loads back
    x = np.zeros((5, 5), np.float32)
    np.testing.assert_array_equal(infer(http, INPUT=x), x + 1)


def test_an_optional_input_of_the_wrong_shape_or_a_missing_required_one_is_refused(clients) -> None:
    http, _ = clients
    x = np.zeros((5, 5), np.float32)
    with pytest.raises(InferenceServerException, match=r"unexpected shape for input 'INITIALIZER' for model 'add'. Expected \[5,5\], got \[1,5\]") as e:
        infer(http, INPUT=x, INITIALIZER=np.zeros((1, 5), np.float32))
    assert e.value.status() == "400"
    with pytest.raises(
        InferenceServerException, match=r"missing required input\(s\) \['INPUT'\] for model 'add'. Please provide all required input\(s\). The model expects .*INITIALIZER: FP32\[5, 5\] \(optional\)"
    ):
        infer(http, INITIALIZER=x)
    np.testing.assert_array_equal(infer(http, INPUT=x), x + 1)  # still serving


@pytest.mark.parametrize(
    ("edit", "words"),
    [
        ({"input": [{**CONFIG["input"][0], "optional": True}, CONFIG["input"][1]]}, "needs it in every request"),
        ({"input": [CONFIG["input"][0], {**CONFIG["input"][1], "optional": False}]}, "set optional: true"),
        (
            {"input": [CONFIG["input"][0], {**CONFIG["input"][1], "name": "BIAS"}]},
            "nor one an initializer gives a default",
        ),
        ({"input": [CONFIG["input"][0], {**CONFIG["input"][1], "dims": [5, 4]}]}, r"has dims \[5, 4\]"),
    ],
)
def test_configs_triton_refuses_for_optional_inputs_are_refused(clients, edit: dict, words: str) -> None:
    http, _ = clients
    with pytest.raises(InferenceServerException, match=words) as e:
        http.load_model("add", config=json.dumps({**CONFIG, **edit}))
    assert e.value.status() == "400"
    x = np.zeros((5, 5), np.float32)
    np.testing.assert_array_equal(infer(http, INPUT=x, INITIALIZER=x), x)  # the version served is unchanged


def test_an_optional_input_of_a_model_that_batches_is_refused_as_triton_refuses_it(clients) -> None:
    http, _ = clients
    config = {**CONFIG, "input": [{**CONFIG["input"][0], "dims": [-1, 5]}, {**CONFIG["input"][1], "dims": [5]}]}
    config["output"] = [{**CONFIG["output"][0], "dims": [-1, 5]}]
    http.load_model("batched", config=json.dumps(config))  # without batching: served
    x = np.zeros((3, 5), np.float32)
    np.testing.assert_array_equal(infer(http, INPUT=x, model="batched"), x + 1)
    bias = np.arange(5, dtype=np.float32)
    np.testing.assert_array_equal(infer(http, INPUT=x, INITIALIZER=bias, model="batched"), x + bias)
    batched = {**config, "max_batch_size": 4, "input": [{**i, "dims": [5]} for i in config["input"]]}
    batched["output"] = [{**CONFIG["output"][0], "dims": [5]}]
    words = "optional input 'INITIALIZER' is not supported for models that support batching; set max_batch_size 0"
    with pytest.raises(InferenceServerException, match=words):
        http.load_model("batched", config=json.dumps(batched))
    batched["input"] = batched["input"][:1]
    http.load_model("batched", config=json.dumps(batched))  # the initializer's default alone: served batched
    np.testing.assert_array_equal(infer(http, INPUT=x, model="batched"), x + 1)


def test_without_a_config_an_initializer_input_is_not_a_request_input(clients) -> None:
    http, _ = clients
    try:
        http.load_model("add", config=json.dumps({"max_batch_size": 0}))  # auto-completed: its inputs alone
        assert [t["name"] for t in http.get_model_metadata("add")["inputs"]] == ["INPUT"]
        x = np.zeros((5, 5), np.float32)
        with pytest.raises(InferenceServerException, match="unexpected inference input 'INITIALIZER'"):
            infer(http, INPUT=x, INITIALIZER=x)
    finally:
        http.load_model("add", config=json.dumps(CONFIG))


def test_only_ir_4_and_later_initializers_are_overridable(tmp_path: Path) -> None:
    assert [t.name for t in overridable_inputs(add_with_initializer(tmp_path / "new.onnx"))] == ["INITIALIZER"]
    assert overridable_inputs(add_with_initializer(tmp_path / "old.onnx", ir_version=3)) == ()


def test_a_warmup_sample_may_give_an_optional_input(clients) -> None:
    http, _ = clients
    tensor = {"data_type": "TYPE_FP32", "dims": [5, 5], "zero_data": True}
    warm = {"name": "both", "batch_size": 1, "inputs": {"INPUT": tensor, "INITIALIZER": tensor}}
    try:
        http.load_model("add", config=json.dumps({**CONFIG, "model_warmup": [warm]}))
        [shown] = http.get_model_config("add")["model_warmup"]
        assert shown["inputs"].keys() == {"INPUT", "INITIALIZER"}
        unknown = {**warm, "inputs": {**warm["inputs"], "BIAS": tensor}}
        with pytest.raises(InferenceServerException, match=r"names input 'BIAS'.*its inputs are INPUT, INITIALIZER"):
            http.load_model("add", config=json.dumps({**CONFIG, "model_warmup": [unknown]}))
    finally:
        http.load_model("add", config=json.dumps(CONFIG))
