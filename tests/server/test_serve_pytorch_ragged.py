"""Ragged batching of models for Triton's PyTorch backend (``platform: "pytorch_libtorch"``, a TorchScript
``model.pt``), as that backend serves it: requests of different lengths batch as one call of forward, which takes a
ragged input flattened over the whole batch and each ``batch_input`` (placed among its arguments by the config's
naming convention: forward's argument names, ``<name>__<index>``, the config's order, a dict); each request gets its
own answer, a ``batch_output`` scattered back in its shape. Configs whose batch inputs do not fit forward are
refused. A real server process and tritonclient (HTTP and gRPC)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from servekit import cli_server, free_port, same_config_both_ways
from tritonclient.utils import InferenceServerException

from polystack.server import config_text


class Identity(torch.nn.Module):  # Triton's qa/L0_batch_input test_ragged_output, libtorch
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


# Triton's qa/L0_batch_input/batch_input_test.py test_ragged_output, its libtorch model
IDENTITY = """
platform: "pytorch_libtorch"
max_batch_size: 4
input [ { name: "INPUT__0" data_type: TYPE_FP32 dims: [ -1 ] allow_ragged_batch: true } ]
output [ { name: "OUTPUT__0" data_type: TYPE_FP32 dims: [ -1 ] } ]
batch_output [ { target_name: "OUTPUT__0" kind: BATCH_SCATTER_WITH_INPUT_SHAPE source_input: "INPUT__0" } ]
dynamic_batching { max_queue_delay_microseconds: 100000 }
"""


class Seen(torch.nn.Module):
    """Gives back what forward was handed: SEEN__0, for every batch item the same row (the ragged input's rank and
    element count, then each batch input's values, the max element count's shape); TWICE__1, the elements x 2."""

    def forward(
        self,
        x: torch.Tensor,
        count: torch.Tensor,
        ends: torch.Tensor,
        starts: torch.Tensor,
        largest: torch.Tensor,
        shapes: torch.Tensor,
        flat: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        head = torch.tensor([float(x.dim()), float(x.numel()), float(shapes.dim()), float(largest.size(0))])
        parts = [head, count.float(), ends.float(), starts.float(), shapes.float().flatten(), flat.float()]
        row = torch.cat(parts)
        return row.unsqueeze(0).repeat(shapes.size(0), 1), x * 2


def _fill(kind: str, target: str, dtype: str = "TYPE_INT32", source: str = "INPUT__0") -> str:
    return f'{{ kind: {kind} target_name: "{target}" data_type: {dtype} source_input: "{source}" }}'


SEEN = f"""
platform: "pytorch_libtorch"
max_batch_size: 8
input [ {{ name: "INPUT__0" data_type: TYPE_FP32 dims: [ -1, -1 ] allow_ragged_batch: true }} ]
batch_input [
  {_fill("BATCH_ELEMENT_COUNT", "COUNT__1")},
  {_fill("BATCH_ACCUMULATED_ELEMENT_COUNT", "ENDS__2")},
  {_fill("BATCH_ACCUMULATED_ELEMENT_COUNT_WITH_ZERO", "STARTS__3", "TYPE_FP32")},
  {_fill("BATCH_MAX_ELEMENT_COUNT_AS_SHAPE", "LARGEST__4")},
  {_fill("BATCH_ITEM_SHAPE", "SHAPES__5")},
  {_fill("BATCH_ITEM_SHAPE_FLATTEN", "FLAT__6")}
]
output [ {{ name: "SEEN__0" data_type: TYPE_FP32 dims: [ -1 ] }}, {{ name: "TWICE__1" data_type: TYPE_FP32 dims: [ -1, -1 ] }} ]
batch_output [ {{ target_name: "TWICE__1" kind: BATCH_SCATTER_WITH_INPUT_SHAPE source_input: "INPUT__0" }} ]
dynamic_batching {{ max_queue_delay_microseconds: 300000 }}
"""


class Counted(torch.nn.Module):
    """Each request's element count (a row per request) and the elements + 1, by forward's argument names."""

    def forward(self, counts: torch.Tensor, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return counts.float().unsqueeze(1), x + 1


class Spans(torch.nn.Module):
    """Each request's first element's index and its count, from its running total and count: the config's order."""

    def forward(self, data: torch.Tensor, ends: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        return torch.stack([(ends - lengths).float(), lengths.float()], 1) + data.sum() * 0


class Keyed(torch.nn.Module):
    def forward(self, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        return inputs["n"].float().unsqueeze(1) + inputs["x"].sum() * 0


def _config(inputs: str, fills: list[str], outputs: str, scattered: str = "") -> str:
    config = f"""
platform: "pytorch_libtorch"
max_batch_size: 8
input [ {inputs} ]
batch_input [ {", ".join(fills)} ]
output [ {outputs} ]
"""
    if scattered:
        config += f'batch_output [ {{ target_name: "{scattered}" kind: BATCH_SCATTER_WITH_INPUT_SHAPE source_input: "{inputs.split(chr(34))[1]}" }} ]\n'
    return config + "dynamic_batching { max_queue_delay_microseconds: 300000 }\n"


RAGGED = 'name: "{}" data_type: TYPE_FP32 dims: [ -1 ] allow_ragged_batch: true'
BY_NAME = _config(  # FORWARD_ARGUMENT
    "{ " + RAGGED.format("x") + " }",
    [_fill("BATCH_ELEMENT_COUNT", "counts", source="x")],
    '{ name: "n" data_type: TYPE_FP32 dims: [ 1 ] }, { name: "plus" data_type: TYPE_FP32 dims: [ -1 ] }',
    scattered="plus",
)
BY_INDEX = _config(  # NAMED_INDEX
    "{ " + RAGGED.format("INPUT__1") + " }",
    [_fill("BATCH_ELEMENT_COUNT", "COUNT__0", source="INPUT__1")],
    '{ name: "N__0" data_type: TYPE_FP32 dims: [ 1 ] }, { name: "PLUS__1" data_type: TYPE_FP32 dims: [ -1 ] }',
    scattered="PLUS__1",
)
BY_ORDER = _config(  # STRICT_CONFIG_ORDERING: the config's inputs, then the batch inputs in their order
    "{ " + RAGGED.format("data") + " }",
    [_fill("BATCH_ACCUMULATED_ELEMENT_COUNT", "ends", source="data"), _fill("BATCH_ELEMENT_COUNT", "lengths", source="data")],
    '{ name: "span" data_type: TYPE_FP32 dims: [ 2 ] }',
)
BY_KEY = _config(  # a Dict[str, Tensor]: every input by name, the batch inputs' too
    "{ " + RAGGED.format("x") + " }",
    [_fill("BATCH_ELEMENT_COUNT", "n", source="x")],
    '{ name: "OUTPUT__0" data_type: TYPE_FP32 dims: [ 1 ] }',
)


def _folder(root: Path, name: str, module: torch.nn.Module, config: str) -> Path:
    (root / name / "1").mkdir(parents=True)
    (root / name / "config.pbtxt").write_text(config)
    torch.jit.save(torch.jit.script(module.eval()), str(root / name / "1" / "model.pt"))
    return root / name / "1" / "model.pt"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[httpclient.InferenceServerClient, grpcclient.InferenceServerClient, Path]]:
    root = tmp_path_factory.mktemp("pytorch_ragged")
    models = root / "models"
    _folder(models, "identity", Identity(), IDENTITY)
    _folder(models, "seen", Seen(), SEEN)
    _folder(models, "by_name", Counted(), BY_NAME)
    _folder(models, "by_index", Counted(), BY_INDEX)
    _folder(models, "by_order", Spans(), BY_ORDER)
    _folder(models, "by_key", Keyed(), BY_KEY)
    port, grpc_port = free_port(), free_port()
    args = ["--model-repository", str(models), "--grpc-port", str(grpc_port), "--allow-torchscript-models",
            "--allow-model-control"]  # fmt: skip
    with cli_server(root / "home", args, port, root / "serve.log"):
        yield (
            httpclient.InferenceServerClient(f"127.0.0.1:{port}", concurrency=8),
            grpcclient.InferenceServerClient(f"127.0.0.1:{grpc_port}"),
            models,
        )


def _input(name: str, value: np.ndarray, client: object = httpclient) -> object:
    made = client.InferInput(name, list(value.shape), "FP32")  # type: ignore[attr-defined]
    made.set_data_from_numpy(value)
    return made


def _executions(http: httpclient.InferenceServerClient, model: str) -> tuple[int, int]:
    [s] = http.get_inference_statistics(model)["model_stats"]
    return int(s["inference_count"]), int(s["execution_count"])


def _together(http: httpclient.InferenceServerClient, model: str, name: str, xs: list[np.ndarray]) -> list[object]:
    """``xs`` sent at once (they wait in the queue together), each one's answer, and the model run once for all."""
    before = _executions(http, model)
    sent = [http.async_infer(model, [_input(name, x)]) for x in xs]
    answers = [s.get_result() for s in sent]
    inferences, calls = _executions(http, model)
    rows = sum(x.shape[0] for x in xs)
    assert (inferences - before[0], calls - before[1]) == (rows, 1), (before, inferences, calls)  # one call of forward
    return answers


def test_ragged_requests_of_different_lengths_run_as_one_call_and_each_gets_its_own_answer(server) -> None:
    """Triton's qa/L0_batch_input test_ragged_output with its libtorch model: an identity of INPUT__0 (flattened
    over the batch), scattered back by each request's shape."""
    http, grpc, _ = server
    xs = [np.arange(n, dtype=np.float32).reshape(1, n) + 10 * k for k, n in enumerate([2, 4, 1, 3])]
    for x, answer in zip(xs, _together(http, "identity", "INPUT__0", xs), strict=True):
        np.testing.assert_array_equal(answer.as_numpy("OUTPUT__0"), x)  # type: ignore[attr-defined]
    x = np.arange(5, dtype=np.float32).reshape(1, 5)
    alone = grpc.infer("identity", [_input("INPUT__0", x, grpcclient)])
    np.testing.assert_array_equal(alone.as_numpy("OUTPUT__0"), x)
    assert http.get_model_metadata("identity")["inputs"] == [{"name": "INPUT__0", "datatype": "FP32", "shape": [-1, -1]}]
    shown = same_config_both_ways(http, grpc, "identity")
    assert [(t["name"], t["dims"], t["allow_ragged_batch"]) for t in shown["input"]] == [("INPUT__0", [-1], True)]
    shown = same_config_both_ways(http, grpc, "seen")  # the batch inputs are no request's inputs
    assert [t["name"] for t in shown["input"]] == ["INPUT__0"] and len(shown["batch_input"]) == 6
    assert http.get_model_metadata("seen")["inputs"] == [{"name": "INPUT__0", "datatype": "FP32", "shape": [-1, -1, -1]}]
    http.load_model("seen", config=json.dumps(shown))  # what GET config shows loads back
    x = np.ones((1, 2, 2), np.float32)
    np.testing.assert_array_equal(http.infer("seen", [_input("INPUT__0", x)]).as_numpy("TWICE__1"), 2 * x)


def test_each_batch_input_reaches_forward_with_tritons_values(server) -> None:
    """Requests of [1, 2, 3], [2, 1, 3] (two batch items) and [1, 4, 2] as one call: forward takes INPUT__0 as one
    dimension of their 20 elements, and the batch inputs as Triton's backends compute them (BackendInputCollector)."""
    http, _, _ = server
    xs = [np.full(shape, k + 1, np.float32) for k, shape in enumerate([(1, 2, 3), (2, 1, 3), (1, 4, 2)])]
    answers = _together(http, "seen", "INPUT__0", xs)
    head = [1, 20, 2, 8]  # x's rank and elements, the item shapes' rank, the largest element count (its shape)
    counts, ends, starts = [6, 6, 8], [6, 12, 20], [0, 6, 12, 20]  # their running total, with a leading 0
    items = [2, 3, 1, 3, 1, 3, 4, 2]  # each batch item's shape (BATCH_ITEM_SHAPE, then flattened)
    want = [*head, *counts, *ends, *starts, *items, *items]
    for x, answer in zip(xs, answers, strict=True):
        seen = answer.as_numpy("SEEN__0")  # type: ignore[attr-defined]
        assert seen.shape == (x.shape[0], len(want))  # a row per batch item of the request
        assert seen.tolist() == [want] * x.shape[0]
        np.testing.assert_array_equal(answer.as_numpy("TWICE__1"), 2 * x)  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("model", "ragged", "outputs"),
    [("by_name", "x", ("n", "plus")), ("by_index", "INPUT__1", ("N__0", "PLUS__1"))],
    ids=["forward-argument", "named-index"],
)
def test_batch_inputs_go_by_the_configs_naming_convention(server, model: str, ragged: str, outputs: tuple[str, str]) -> None:
    http, _, _ = server
    xs = [np.arange(n, dtype=np.float32).reshape(1, n) for n in (3, 1, 5)]
    for x, answer in zip(xs, _together(http, model, ragged, xs), strict=True):
        assert answer.as_numpy(outputs[0]).tolist() == [[x.size]]  # type: ignore[attr-defined]
        np.testing.assert_array_equal(answer.as_numpy(outputs[1]), x + 1)  # type: ignore[attr-defined]


def test_batch_inputs_follow_the_configs_inputs_in_its_order_or_go_into_a_dict_by_name(server) -> None:
    http, _, _ = server
    xs = [np.ones((1, n), np.float32) for n in (3, 1, 5)]
    spans = [a.as_numpy("span").tolist() for a in _together(http, "by_order", "data", xs)]  # type: ignore[attr-defined]
    assert spans == [[[0, 3]], [[3, 1]], [[4, 5]]]  # STRICT_CONFIG_ORDERING: (data, ends, lengths)
    counts = [a.as_numpy("OUTPUT__0").tolist() for a in _together(http, "by_key", "x", xs)]  # type: ignore[attr-defined]
    assert counts == [[[3]], [[1]], [[5]]]


@pytest.mark.parametrize(
    ("module", "config", "words"),
    [
        (Counted(), BY_NAME.replace('"counts"', '"lengths"'), "batch input 'lengths' is not an argument of forward (counts, x)"),
        (Counted(), BY_INDEX.replace('"COUNT__0"', '"COUNT"'), "input 'COUNT' does not follow <name>__<index> naming convention."),
        (Counted(), BY_INDEX.replace('"COUNT__0"', '"COUNT__1"'), "names forward's argument 1, which 'INPUT__1' names too"),
        (Identity(), BY_NAME.replace('"counts"', '"x2"'), "configuration expects 2 inputs, model provides 1"),
        (Counted(), BY_NAME.replace("TYPE_INT32", "TYPE_INT64"), "a batch input is TYPE_INT32 or TYPE_FP32"),
        (Counted(), BY_NAME.replace("max_batch_size: 8", "max_batch_size: 0").replace("dynamic_batching", "# "),
         "allows a ragged batch, but the model serves without batching"),
    ],
    ids=["not-an-argument", "not-indexed", "index-twice", "count", "type", "unbatched"],
)  # fmt: skip
def test_ragged_configs_that_do_not_fit_forward_are_refused(server, module: torch.nn.Module, config: str, words: str, tmp_path: Path) -> None:
    http, _, _ = server
    module_file = _folder(tmp_path, "m", module, config)
    files = {"file:1/model.pt": module_file.read_bytes()}
    with pytest.raises(InferenceServerException, match=words.replace("(", r"\(").replace(")", r"\)")) as e:
        http.load_model("refused", config=config_text.as_json(config), files=files)
    assert e.value.status() == "400"
