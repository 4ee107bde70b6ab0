"""`polystack serve --model-repository DIR` with models for Triton's PyTorch backend (``platform:
"pytorch_libtorch"``, ``1/model.pt``, a TorchScript module): inputs by index, by forward's argument names and in a
dict, strings in and out, a sequence with its state, each checked against the module run by torch; configs and
parameters Triton's backend refuses exit 2 in its words; a load's files take a module too. A real server process
and tritonclient (HTTP and gRPC)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from servekit import cli_server, free_port, refused_at_start, same_config_both_ways
from tritonclient.utils import InferenceServerException


class Named(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.linear = torch.nn.Linear(4, 3)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return torch.relu(self.linear(x)) + y, x > 0.5


class Masked(torch.nn.Module):  # Triton's pytorch_backend examples/gen_model.py, by its argument names
    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        weights = mask.to(x.dtype).unsqueeze(-1)
        return (x * weights).sum(1) / weights.sum(1).clamp(min=1)


class Words(torch.nn.Module):
    def forward(self, words: list[str]) -> tuple[list[str], torch.Tensor]:
        lengths = [len(w) for w in words]
        return [w.upper() for w in words], torch.tensor(lengths)


class Keyed(torch.nn.Module):
    def forward(self, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        return inputs["a"] * 2 + inputs["b"]


class Gather(torch.nn.Module):
    def forward(self, x: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
        return x[idx]


class Accumulator(torch.nn.Module):
    def forward(self, x: torch.Tensor, start: torch.Tensor, state: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        total = state * (1 - start.to(state.dtype)) + x
        return total, total


NAMED = """
platform: "pytorch_libtorch"
max_batch_size: 8
input [ { name: "INPUT__0", data_type: TYPE_FP32, dims: [ 4 ] }, { name: "INPUT__1", data_type: TYPE_FP32, dims: [ 3 ] } ]
output [ { name: "OUTPUT__1", data_type: TYPE_BOOL, dims: [ 4 ] }, { name: "OUTPUT__0", data_type: TYPE_FP32, dims: [ 3 ] } ]
dynamic_batching { }
"""
MASKED = """
backend: "pytorch"
max_batch_size: 4
input [ { name: "mask", data_type: TYPE_INT64, dims: [ -1 ] }, { name: "x", data_type: TYPE_FP32, dims: [ -1, 8 ] } ]
output [ { name: "out", data_type: TYPE_FP32, dims: [ 8 ] } ]
"""
WORDS = """
platform: "pytorch_libtorch"
max_batch_size: 8
input [ { name: "WORDS__0", data_type: TYPE_STRING, dims: [ 1 ] reshape: { shape: [ ] } } ]
output [
  { name: "UPPER__0", data_type: TYPE_STRING, dims: [ 1 ] reshape: { shape: [ ] } },
  { name: "LENGTH__1", data_type: TYPE_INT64, dims: [ 1 ] reshape: { shape: [ ] } }
]
"""
KEYED = """
platform: "pytorch_libtorch"
max_batch_size: 8
input [ { name: "a", data_type: TYPE_FP32, dims: [ 2 ] }, { name: "b", data_type: TYPE_FP32, dims: [ 2 ] } ]
output [ { name: "OUTPUT__0", data_type: TYPE_FP32, dims: [ 2 ] } ]
"""
GATHER = """
platform: "pytorch_libtorch"
max_batch_size: 0
input [ { name: "x", data_type: TYPE_FP32, dims: [ -1, 2 ] }, { name: "idx", data_type: TYPE_INT64, dims: [ -1 ] } ]
output [ { name: "y", data_type: TYPE_FP32, dims: [ -1, 2 ] } ]
"""
ACCUMULATOR = """
platform: "pytorch_libtorch"
max_batch_size: 4
input [ { name: "INPUT__0", data_type: TYPE_FP32, dims: [ 1 ] } ]
output [ { name: "OUTPUT__0", data_type: TYPE_FP32, dims: [ 1 ] } ]
sequence_batching {
  control_input [ { name: "START__1", control [ { kind: CONTROL_SEQUENCE_START, int32_false_true: [ 0, 1 ] } ] } ]
  state [ { input_name: "STATE__2", output_name: "STATE_OUT__1", data_type: TYPE_FP32, dims: [ 1 ] } ]
}
"""


def _folder(root: Path, name: str, module: torch.nn.Module, config: str | None) -> torch.jit.ScriptModule:
    (root / name / "1").mkdir(parents=True)
    if config is not None:
        (root / name / "config.pbtxt").write_text(config)
    scripted = torch.jit.script(module.eval())
    torch.jit.save(scripted, str(root / name / "1" / "model.pt"))
    return scripted


def _input(client: object, name: str, value: np.ndarray, kind: str) -> object:
    made = (grpcclient if isinstance(client, grpcclient.InferenceServerClient) else httpclient).InferInput(
        name, list(value.shape), kind
    )
    made.set_data_from_numpy(value)
    return made


def test_pytorch_models_answer_as_their_modules_do_over_http_and_grpc(tmp_path: Path) -> None:
    root = tmp_path / "models"
    torch.manual_seed(0)
    named = _folder(root, "named", Named(), NAMED)
    masked = _folder(root, "masked", Masked(), MASKED)
    _folder(root, "words", Words(), WORDS)
    _folder(root, "keyed", Keyed(), KEYED)
    _folder(root, "acc", Accumulator(), ACCUMULATOR)
    _folder(root, "gather", Gather(), GATHER)
    _folder(root, "gather_queued", Gather(), GATHER + "dynamic_batching { }\n")  # each request alone, queued
    port, grpc_port = free_port(), free_port()
    args = ["--model-repository", str(root), "--grpc-port", str(grpc_port), "--allow-torchscript-models"]
    rng = np.random.default_rng(0)
    with cli_server(tmp_path / "home", args, port, tmp_path / "log"):
        http = httpclient.InferenceServerClient(f"127.0.0.1:{port}")
        grpc = grpcclient.InferenceServerClient(f"127.0.0.1:{grpc_port}")
        for client in (http, grpc):
            x, y = rng.random((3, 4), np.float32), rng.random((3, 3), np.float32)
            result = client.infer("named", [_input(client, "INPUT__0", x, "FP32"), _input(client, "INPUT__1", y, "FP32")])
            want = named(torch.from_numpy(x), torch.from_numpy(y))
            np.testing.assert_allclose(result.as_numpy("OUTPUT__0"), want[0].detach().numpy(), rtol=1e-6)
            np.testing.assert_array_equal(result.as_numpy("OUTPUT__1"), want[1].numpy())

            xs = rng.random((2, 5, 8), np.float32)
            mask = np.array([[1, 1, 0, 0, 0], [1, 1, 1, 1, 1]], np.int64)
            out = client.infer("masked", [_input(client, "x", xs, "FP32"), _input(client, "mask", mask, "INT64")])
            want_masked = masked(torch.from_numpy(xs), torch.from_numpy(mask)).numpy()
            np.testing.assert_allclose(out.as_numpy("out"), want_masked, rtol=1e-6)

            words = np.array([[b"hello"], [b"Wo"]], dtype=object)
            out = client.infer("words", [_input(client, "WORDS__0", words, "BYTES")])
            assert out.as_numpy("UPPER__0").ravel().tolist() == [b"HELLO", b"WO"]
            assert out.as_numpy("LENGTH__1").tolist() == [[5], [2]]

            a, b = rng.random((2, 2), np.float32), rng.random((2, 2), np.float32)
            out = client.infer("keyed", [_input(client, "a", a, "FP32"), _input(client, "b", b, "FP32")])
            np.testing.assert_allclose(out.as_numpy("OUTPUT__0"), a * 2 + b, rtol=1e-6)

            # max_batch_size 0: no batch dimension, so dims of -1 need not agree (5 rows, 2 indexes)
            x5, idx = rng.random((5, 2), np.float32), np.array([4, 0], np.int64)
            for name in ("gather", "gather_queued"):
                out = client.infer(name, [_input(client, "x", x5, "FP32"), _input(client, "idx", idx, "INT64")])
                np.testing.assert_array_equal(out.as_numpy("y"), x5[idx])
        totals = {}
        for sequence in (1, 2):
            for step, value in enumerate([1.0, 2.0, 3.0]):
                given = np.array([[value * sequence]], np.float32)
                out = grpc.infer(
                    "acc", [_input(grpc, "INPUT__0", given, "FP32")], sequence_id=sequence,
                    sequence_start=step == 0, sequence_end=step == 2,
                )  # fmt: skip
                totals[sequence] = float(out.as_numpy("OUTPUT__0")[0, 0])
        assert totals == {1: 6.0, 2: 12.0}  # each sequence's state, kept by the server between its requests

        assert http.get_model_metadata("named")["platform"] == "pytorch_libtorch"
        config = same_config_both_ways(http, grpc, "named")
        assert (config["platform"], config["backend"], config["default_model_filename"]) == (
            "pytorch_libtorch", "pytorch", "model.pt",
        )  # fmt: skip
        for name in ("named", "masked"):  # one instance, as Triton's PyTorch backend runs (forward may keep state)
            assert [g["count"] for g in http.get_model_config(name)["instance_group"]] == [1], name
        with pytest.raises(InferenceServerException, match="holds bytes that are not UTF-8"):
            http.infer("words", [_input(http, "WORDS__0", np.array([[b"\xff"]], dtype=object), "BYTES")])


def _parameters(**values: str) -> str:
    return "parameters [ " + ", ".join(f'{{ key: "{k}", value: {{ string_value: "{v}" }} }}' for k, v in values.items()) + " ]"


@pytest.mark.parametrize(
    ("config", "words"),
    [
        (NAMED + _parameters(INFERENCE_MODE="maybe"), "failed to convert 'maybe' to boolean (parameter INFERENCE_MODE)"),
        (NAMED + _parameters(INTRA_OP_THREAD_COUNT="many"), "failed to convert 'many' to integral number"),
        (NAMED.replace(', { name: "INPUT__1", data_type: TYPE_FP32, dims: [ 3 ] }', ""), "configuration expects 1 inputs, model provides 2"),
        (NAMED.replace("INPUT__1", "INPUT__4"), "names forward's argument 4, which forward has not"),
        (None, "model configuration must contain at least one input, none were specified"),
    ],
    ids=["switch", "count", "inputs", "index", "no-config"],
)  # fmt: skip
def test_pytorch_configs_triton_refuses_exit_2_in_its_words(tmp_path: Path, config: str | None, words: str) -> None:
    _folder(tmp_path / "models", "m", Named(), config)
    line = refused_at_start(tmp_path, ["--model-repository", str(tmp_path / "models"), "--allow-torchscript-models"])
    assert "'m" in line and words in line, line


def test_switches_are_read_in_any_case_and_a_loads_files_take_a_module(tmp_path: Path) -> None:
    root = tmp_path / "models"
    named = _folder(root, "named", Named(), NAMED + _parameters(DISABLE_OPTIMIZED_EXECUTION="ON", INFERENCE_MODE="off"))
    module = root / "named" / "1" / "model.pt"
    port = free_port()
    args = ["--model-repository", str(root), "--grpc-port", "-1", "--allow-model-control", "--allow-torchscript-models"]
    with cli_server(tmp_path / "home", args, port, tmp_path / "log"):
        http = httpclient.InferenceServerClient(f"127.0.0.1:{port}")
        config = http.get_model_config("named")
        assert config["parameters"]["INFERENCE_MODE"] == {"string_value": "off"}
        renamed = {**config, "name": "uploaded", "input": [{**t, "name": t["name"].lower()} for t in config["input"]]}
        http.load_model("uploaded", config=json.dumps(renamed), files={"file:1/model.pt": module.read_bytes()})
        x, y = np.ones((1, 4), np.float32), np.zeros((1, 3), np.float32)
        out = http.infer("uploaded", [_input(http, "input__0", x, "FP32"), _input(http, "input__1", y, "FP32")])
        want = named(torch.from_numpy(x), torch.from_numpy(y))[0].detach().numpy()
        np.testing.assert_allclose(out.as_numpy("OUTPUT__0"), want, rtol=1e-6)
        with pytest.raises(InferenceServerException, match="configuration expects 1 inputs, model provides 2"):
            http.load_model("one", config=json.dumps({**renamed, "input": renamed["input"][:1]}),
                            files={"file:1/model.pt": module.read_bytes()})  # fmt: skip
        with pytest.raises(InferenceServerException, match=r"file:1/model\.pt is not a TorchScript archive"):
            http.load_model("bad", config=json.dumps(renamed), files={"file:1/model.pt": b"not a module"})
        assert http.is_model_ready("named")
        http.load_model("named", config=json.dumps({**renamed, "name": "named"}))  # replaces the folder's, whole
        out = http.infer("named", [_input(http, "input__0", x, "FP32"), _input(http, "input__1", y, "FP32")])
        np.testing.assert_allclose(out.as_numpy("OUTPUT__0"), want, rtol=1e-6)


def test_without_the_flag_a_torchscript_model_is_refused_before_torch_reads_it(tmp_path: Path) -> None:
    """TorchScript is code torch runs, some of whose operators reach past the model: the server serves it only when
    told to (--allow-torchscript-models), from a repository or a load's files alike."""
    _folder(tmp_path / "models", "m", Named(), NAMED)
    line = refused_at_start(tmp_path, ["--model-repository", str(tmp_path / "models")])
    assert "'m'" in line and "start the server with --allow-torchscript-models" in line, line
    (tmp_path / "empty").mkdir()
    port = free_port()
    args = ["--model-repository", str(tmp_path / "empty"), "--grpc-port", "-1", "--model-control-mode", "explicit"]
    with cli_server(tmp_path / "home2", args, port, tmp_path / "log"):
        http = httpclient.InferenceServerClient(f"127.0.0.1:{port}")
        config = json.dumps({"platform": "pytorch_libtorch", "max_batch_size": 8,
                             "input": [{"name": "INPUT__0", "data_type": "TYPE_FP32", "dims": [4]}],
                             "output": [{"name": "OUTPUT__0", "data_type": "TYPE_FP32", "dims": [3]}]})  # fmt: skip
        module = (tmp_path / "models" / "m" / "1" / "model.pt").read_bytes()
        with pytest.raises(InferenceServerException, match="--allow-torchscript-models"):
            http.load_model("uploaded", config=config, files={"file:1/model.pt": module})


class Calls(torch.nn.Module):
    """Counts its calls in an attribute, as a module keeping state does."""

    def __init__(self) -> None:
        super().__init__()
        self.calls = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        return torch.full_like(x, self.calls)


CALLS = """
platform: "pytorch_libtorch"
max_batch_size: 8
input [ { name: "INPUT__0", data_type: TYPE_FP32, dims: [ 1 ] } ]
output [ { name: "OUTPUT__0", data_type: TYPE_FP32, dims: [ 1 ] } ]
instance_group [ { count: 2, kind: KIND_CPU } ]
"""


@pytest.mark.parametrize("batching", ["", "dynamic_batching { }"], ids=["unbatched", "batching"])
def test_each_instance_of_a_pytorch_model_keeps_its_own_module(tmp_path: Path, batching: str) -> None:
    """As in Triton, a config's instances each load the module (what forward keeps in an attribute is its
    instance's); with ENABLE_WEIGHT_SHARING they share one."""
    root = tmp_path / "models"
    _folder(root, "own", Calls(), CALLS + batching)
    _folder(root, "shared", Calls(), CALLS + batching + _parameters(ENABLE_WEIGHT_SHARING="true"))
    port = free_port()
    with cli_server(tmp_path / "home", ["--model-repository", str(root), "--grpc-port", "-1",
                                        "--allow-torchscript-models"], port, tmp_path / "log"):  # fmt: skip
        http = httpclient.InferenceServerClient(f"127.0.0.1:{port}")
        x = np.zeros((1, 1), np.float32)

        def counts(model: str) -> list[int]:
            return [int(http.infer(model, [_input(http, "INPUT__0", x, "FP32")]).as_numpy("OUTPUT__0")[0, 0]) for _ in range(4)]

        assert counts("own") == [1, 1, 2, 2]
        assert counts("shared") == [1, 2, 3, 4]


def test_a_kind_model_group_is_served_and_shown_as_tritons_pytorch_backend_takes_it(tmp_path: Path) -> None:
    """Triton's PyTorch backend takes instance_group { kind: KIND_MODEL } (a module that places itself), on a host
    without GPUs too (its L0_libtorch_instance_group_kind_model); polystack refused it (helper-201)."""
    root = tmp_path / "models"
    _folder(root, "placed", Calls(), CALLS.replace("count: 2, kind: KIND_CPU", "count: 2, kind: KIND_MODEL"))
    port = free_port()
    with cli_server(tmp_path / "home", ["--model-repository", str(root), "--grpc-port", "-1",
                                        "--allow-torchscript-models"], port, tmp_path / "log"):  # fmt: skip
        http = httpclient.InferenceServerClient(f"127.0.0.1:{port}")
        x = np.zeros((1, 1), np.float32)
        answers = [int(http.infer("placed", [_input(http, "INPUT__0", x, "FP32")]).as_numpy("OUTPUT__0")[0, 0])
                   for _ in range(4)]  # fmt: skip
        assert answers == [1, 1, 2, 2]  # two instances, each its own module
        [group] = http.get_model_config("placed")["instance_group"]
        assert (group["kind"], group["count"], group["gpus"]) == ("KIND_MODEL", 2, [])
