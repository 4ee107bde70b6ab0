"""Ragged batching (a Triton config's ``allow_ragged_batch``, ``batch_input``, ``batch_output``): requests whose
ragged input differs in length batch together as one call of a model that takes their elements concatenated, with
the batch inputs the server fills, served by a real server process to tritonclient; the configs Triton refuses,
refused; and the batch inputs' values, as Triton's backends compute them."""

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
from servekit import cli_server, free_port, same_config_both_ways, test_spec_for
from tritonclient.utils import InferenceServerException

from polystack.backends import ragged
from polystack.errors import InvalidRequest
from polystack.examples import mlp_onnx
from polystack.formats import import_model
from polystack.server import model_config
from polystack.store import Store
from polystack.types import DType

CONFIG = {
    "max_batch_size": 8,
    "input": [{"name": "INPUT", "data_type": "TYPE_FP32", "dims": [-1], "allow_ragged_batch": True}],
    "batch_input": [
        {"kind": "BATCH_ELEMENT_COUNT", "target_name": ["COUNT"], "data_type": "TYPE_INT32", "source_input": ["INPUT"]},
        {
            "kind": "BATCH_ACCUMULATED_ELEMENT_COUNT", "target_name": ["ENDS"], "data_type": "TYPE_INT32",
            "source_input": ["INPUT"],
        },
    ],
    "output": [
        {"name": "DOUBLE", "data_type": "TYPE_FP32", "dims": [-1]},
        {"name": "N", "data_type": "TYPE_FP32", "dims": [1]},
        {"name": "LAST", "data_type": "TYPE_FP32", "dims": [1]},
    ],
    "batch_output": [{"kind": "BATCH_SCATTER_WITH_INPUT_SHAPE", "target_name": ["DOUBLE"], "source_input": ["INPUT"]}],
    "dynamic_batching": {"max_queue_delay_microseconds": 300000},
}


def ragged_model(path: Path) -> Path:
    """INPUT: every request's elements one after another; COUNT: each request's element count; ENDS: their
    running total. DOUBLE: INPUT x 2 (scattered back by INPUT's shapes); N: each request's count; LAST: each
    request's last element (INPUT at ENDS - 1): one row per request."""
    two = helper.make_tensor("two", TensorProto.FLOAT, [], [2.0])
    axes = helper.make_tensor("axes", TensorProto.INT64, [1], [1])
    one = helper.make_tensor("one", TensorProto.INT64, [], [1])
    nodes = [
        helper.make_node("Mul", ["INPUT", "two"], ["DOUBLE"]),
        helper.make_node("Cast", ["COUNT"], ["counted"], to=TensorProto.FLOAT),
        helper.make_node("Unsqueeze", ["counted", "axes"], ["N"]),
        helper.make_node("Cast", ["ENDS"], ["ends"], to=TensorProto.INT64),
        helper.make_node("Sub", ["ends", "one"], ["lasts"]),
        helper.make_node("Gather", ["INPUT", "lasts"], ["picked"], axis=0),
        helper.make_node("Unsqueeze", ["picked", "axes"], ["LAST"]),
    ]
    graph = helper.make_graph(
        nodes,
        "ragged",
        [
            helper.make_tensor_value_info("INPUT", TensorProto.FLOAT, ["elements"]),
            helper.make_tensor_value_info("COUNT", TensorProto.INT32, ["requests"]),
            helper.make_tensor_value_info("ENDS", TensorProto.INT32, ["requests"]),
        ],
        [
            helper.make_tensor_value_info("DOUBLE", TensorProto.FLOAT, ["elements"]),
            helper.make_tensor_value_info("N", TensorProto.FLOAT, ["requests", 1]),
            helper.make_tensor_value_info("LAST", TensorProto.FLOAT, ["requests", 1]),
        ],
        initializer=[two, axes, one],
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return path


@pytest.fixture(scope="module")
def clients(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[httpclient.InferenceServerClient, grpcclient.InferenceServerClient]]:
    root = tmp_path_factory.mktemp("ragged")
    ragged_model(root / "models" / "ragged" / "1" / "model.onnx")
    (root / "models" / "ragged" / "config.pbtxt").write_text(json.dumps(CONFIG))
    port, grpc_port = free_port(), free_port()
    args = ["--model-repository", str(root / "models"), "--allow-model-control", "--grpc-port", str(grpc_port)]
    with cli_server(root / "home", args, port, root / "serve.log"):
        yield (
            httpclient.InferenceServerClient(f"127.0.0.1:{port}", concurrency=4),
            grpcclient.InferenceServerClient(f"127.0.0.1:{grpc_port}"),
        )


def infer(client: httpclient.InferenceServerClient | grpcclient.InferenceServerClient, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    module = httpclient if isinstance(client, httpclient.InferenceServerClient) else grpcclient
    i = module.InferInput("INPUT", list(x.shape), "FP32")
    i.set_data_from_numpy(x)
    answer = client.infer("ragged", [i])
    return answer.as_numpy("DOUBLE"), answer.as_numpy("N")


def executions(client: httpclient.InferenceServerClient) -> tuple[int, int]:
    [s] = client.get_inference_statistics("ragged")["model_stats"]
    return s["inference_count"], s["execution_count"]


def test_requests_of_different_lengths_batch_as_one_call_and_each_gets_its_own_answer(clients) -> None:
    http, _ = clients
    lengths = [3, 1, 5, 2]
    before = executions(http)
    xs = [np.arange(n, dtype=np.float32).reshape(1, n) + 10 * k for k, n in enumerate(lengths)]
    sent = []
    for x in xs:  # all four wait in the queue (300 ms) and leave as one batch
        i = httpclient.InferInput("INPUT", list(x.shape), "FP32")
        i.set_data_from_numpy(x)
        sent.append(http.async_infer("ragged", [i]))
    answers = [(r.as_numpy("DOUBLE"), r.as_numpy("N"), r.as_numpy("LAST")) for r in (s.get_result() for s in sent)]
    for x, (double, n, last) in zip(xs, answers, strict=True):
        np.testing.assert_array_equal(double, 2 * x)  # scattered back in the request's own shape
        np.testing.assert_array_equal(n, [[x.size]])  # its own element count, from the batch input
        np.testing.assert_array_equal(last, [[x[0, -1]]])  # where its elements end, from the running total
    inferences, calls = executions(http)
    assert inferences - before[0] == 4 and calls - before[1] == 1, (before, inferences, calls)  # one call


@pytest.mark.parametrize("transport", ["http", "grpc"])
def test_a_ragged_request_alone_runs_with_its_batch_inputs(clients, transport: str) -> None:
    client = clients[0] if transport == "http" else clients[1]
    x = np.arange(7, dtype=np.float32).reshape(1, 7)
    double, n = infer(client, x)
    np.testing.assert_array_equal(double, 2 * x)
    np.testing.assert_array_equal(n, [[7]])


def test_metadata_and_config_show_the_ragged_input_without_the_batch_input(clients) -> None:
    http, grpc = clients
    meta = http.get_model_metadata("ragged")
    assert meta["inputs"] == [{"name": "INPUT", "datatype": "FP32", "shape": [-1, -1]}]
    shown = same_config_both_ways(http, grpc, "ragged")
    assert [(t["name"], t["dims"], t["allow_ragged_batch"]) for t in shown["input"]] == [("INPUT", [-1], True)]
    assert shown["batch_input"] == CONFIG["batch_input"] and shown["batch_output"] == CONFIG["batch_output"]
    http.load_model("ragged", config=json.dumps(shown))  # what GET config shows loads back
    x = np.ones((1, 2), np.float32)
    np.testing.assert_array_equal(infer(http, x)[0], 2 * x)


def test_a_request_giving_a_batch_input_is_refused(clients) -> None:
    http, _ = clients
    i = httpclient.InferInput("INPUT", [1, 2], "FP32")
    i.set_data_from_numpy(np.ones((1, 2), np.float32))
    count = httpclient.InferInput("COUNT", [1], "INT32")
    count.set_data_from_numpy(np.array([2], np.int32))
    with pytest.raises(InferenceServerException, match="unexpected inference input 'COUNT' for model 'ragged'") as e:
        http.infer("ragged", [i, count])
    assert e.value.status() == "400"


@pytest.mark.parametrize(
    ("edit", "words"),
    [
        ({"max_batch_size": 0, "dynamic_batching": None}, "serves without batching"),
        (
            {"batch_input": [{**CONFIG["batch_input"][0], "target_name": ["INPUT"]}]},
            "fills 'INPUT', which must be an input of 'ragged' the config does not list",
        ),
        ({"batch_input": [{**CONFIG["batch_input"][0], "data_type": "TYPE_FP32"}]}, "the model's input 'COUNT' is TYPE_INT32"),
        ({"batch_input": [{**CONFIG["batch_input"][0], "kind": "BATCH_ITEM_SHAPE"}]}, "fills a tensor of rank 2"),
        ({"batch_output": [{**CONFIG["batch_output"][0], "target_name": ["OTHER"]}]},
         "unknown target output name 'OTHER' for ragged: the config's outputs are DOUBLE, LAST, N"),  # Triton's words
        # Triton's ValidateBatchIO, in its words with the model's name (helper-195): polystack's alone before
        ({"batch_input": [{**CONFIG["batch_input"][0], "source_input": []}]},
         "batch input kind 'BATCH_ELEMENT_COUNT' expects 1 source input, got 0 for ragged"),
        ({"batch_input": [{**CONFIG["batch_input"][1], "source_input": ["INPUT", "INPUT"]}]},
         "batch input kind 'BATCH_ACCUMULATED_ELEMENT_COUNT' expects 1 source input, got 2 for ragged"),
        ({"batch_input": [{**CONFIG["batch_input"][0], "source_input": ["NOPE"]}]},
         "unknown source input name 'NOPE' for ragged: the config's inputs are INPUT"),
        ({"batch_input": [{**CONFIG["batch_input"][0], "data_type": "TYPE_INT64"}]},
         "batch input data type must be TYPE_INT32 or TYPE_FP32 for ragged"),
        ({"batch_output": [{**CONFIG["batch_output"][0], "source_input": []}]},
         "batch output kind 'BATCH_SCATTER_WITH_INPUT_SHAPE' expects 1 source input, got 0 for ragged"),
        ({"batch_output": [{**CONFIG["batch_output"][0], "target_name": ["DOUBLE", "DOUBLE"]}]},
         "target output name 'DOUBLE' can only be specified once for ragged"),
        ({"input": [{**CONFIG["input"][0], "optional": True}]}, "optional input 'INPUT' is not supported for models that"),
    ],
)
def test_ragged_configs_that_cannot_serve_are_refused(clients, edit: dict, words: str) -> None:
    http, _ = clients
    config = {k: v for k, v in {**CONFIG, **edit}.items() if v is not None}
    with pytest.raises(InferenceServerException, match=words) as e:
        http.load_model("ragged", config=json.dumps(config))
    assert e.value.status() == "400"
    np.testing.assert_array_equal(infer(http, np.ones((1, 3), np.float32))[1], [[3]])  # served as it was


def test_a_model_input_of_more_than_one_dimension_cannot_be_ragged(tmp_path: Path) -> None:
    store = Store.at(tmp_path / "home")
    try:
        imported = import_model(mlp_onnx(tmp_path / "mlp.onnx"), tmp_path / "import")
        record, _ = store.register(imported.artifact, name="mlp", format=imported.format, signature=imported.signature)
        config = {"max_batch_size": 4, "input": [{"name": "x", "data_type": "TYPE_FP32", "dims": [-1], "allow_ragged_batch": True}]}
        words = "configuration expects model provides input with shape \\[-1\\] for ragged input 'x', model provides \\[-1, 16\\]"
        with pytest.raises(InvalidRequest, match=words):
            model_config.read(json.dumps(config), record, test_spec_for(store, record, "realtime"), None)
    finally:
        store.close()


def test_batch_inputs_hold_what_tritons_backends_compute() -> None:
    """The proto's own examples: requests of 2 and 4 elements (accumulated: 2 then 6); a batch-2 input of shape
    [3, 1] beside a batch-1 one of [2, 2] (item shapes [[3, 1], [3, 1], [2, 2]])."""
    counts = [{"x": np.zeros((1, 2))}, {"x": np.zeros((1, 4))}]
    fill = lambda kind, reqs: ragged._fill(ragged.BatchInput(kind, "t", DType.INT32, "x"), reqs)  # noqa: E731
    assert fill(ragged.ELEMENT_COUNT, counts).tolist() == [2, 4]
    assert fill(ragged.ACCUMULATED, counts).tolist() == [2, 6]
    assert fill(ragged.ACCUMULATED_WITH_ZERO, counts).tolist() == [0, 2, 6]
    assert fill(ragged.MAX_AS_SHAPE, counts).shape == (4,)
    items = [{"x": np.zeros((2, 3, 1))}, {"x": np.zeros((1, 2, 2))}]
    assert fill(ragged.ITEM_SHAPE, items).tolist() == [[3, 1], [3, 1], [2, 2]]
    assert fill(ragged.ITEM_SHAPE_FLATTEN, items).tolist() == [3, 1, 3, 1, 2, 2]
    assert fill(ragged.ELEMENT_COUNT, counts).dtype == np.int32
