"""The torchscript backend (``backends/torchscript.py``): forward's answers checked as Triton's PyTorch backend
checks them, in its words (types exactly, no scalars, indexes that exist), strings in and out, a dict taken by
output name, and a batch answered a row per row."""

from __future__ import annotations

import concurrent.futures
import logging
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from polystack.backends import registry
from polystack.errors import BackendError, InvalidRequest, RuntimeRefused, Unavailable
from polystack.formats.torchscript import pack, signature


def _loaded(tmp_path: Path, module: torch.nn.Module, config: dict[str, Any], **options: Any) -> Any:
    saved = tmp_path / "model.pt"
    torch.jit.save(torch.jit.script(module), str(saved))
    packed = pack(saved, {"name": "m", **config}, "m", tmp_path / "m.zip")
    backend = registry.get("torchscript")
    return backend.load(packed, signature(config), backend.parse_options(options), "cpu")


def _config(outputs: list[tuple[str, str, list[int]]], inputs: list[tuple[str, str, list[int]]] | None = None) -> dict[str, Any]:
    def tensors(items: list[tuple[str, str, list[int]]]) -> list[dict[str, Any]]:
        return [{"name": n, "data_type": t, "dims": d} for n, t, d in items]

    return {"max_batch_size": 8, "input": tensors(inputs or [("INPUT__0", "TYPE_FP32", [3])]), "output": tensors(outputs)}


class _Counts(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return x * 2, (x > 0).sum(1, keepdim=True)


X = np.array([[1.0, -2.0, 3.0], [0.5, 0.5, -1.0]], np.float32)


def test_each_output_takes_its_index_and_its_type(tmp_path: Path) -> None:
    model = _loaded(tmp_path, _Counts(), _config([("COUNT__1", "TYPE_INT64", [1]), ("TWICE__0", "TYPE_FP32", [3])]))
    out = model.infer({"INPUT__0": X})
    np.testing.assert_array_equal(out["TWICE__0"], X * 2)
    assert out["COUNT__1"].dtype == np.int64 and out["COUNT__1"].ravel().tolist() == [2, 2]


@pytest.mark.parametrize(
    ("outputs", "words"),
    [
        ([("COUNT__1", "TYPE_INT32", [1])], "configuration expects datatype TYPE_INT32 for output 'COUNT__1', model provides TYPE_INT64"),
        ([("OUT__2", "TYPE_FP32", [3])], "The output OUT__2 in the model configuration refers to an output index which doesn't exist. This model has 2 outputs"),
    ],
    ids=["type", "index"],
)  # fmt: skip
def test_answers_that_do_not_fit_the_config_fail_in_tritons_words(tmp_path: Path, outputs: Any, words: str) -> None:
    model = _loaded(tmp_path, _Counts(), _config(outputs))
    with pytest.raises(RuntimeRefused, match=words.replace("(", r"\(")):  # 400, as Triton's INVALID_ARG
        model.infer({"INPUT__0": X})


def test_a_scalar_and_a_batch_of_the_wrong_size_are_refused(tmp_path: Path) -> None:
    class Sum(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x.sum()

    class First(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x[:1]

    with pytest.raises(RuntimeRefused, match=r"output .OUTPUT__0. is a scalar which is not supported"):
        _loaded(tmp_path, Sum(), _config([("OUTPUT__0", "TYPE_FP32", [1])])).infer({"INPUT__0": X})
    with pytest.raises(RuntimeRefused, match="has 1 rows for a batch of 2"):
        _loaded(tmp_path, First(), _config([("OUTPUT__0", "TYPE_FP32", [3])])).infer({"INPUT__0": X})


def test_an_error_in_forward_is_a_pytorch_execute_failure(tmp_path: Path) -> None:
    class Fails(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            if bool(x.sum() > 100):
                raise ValueError("too large")
            return x

    model = _loaded(tmp_path, Fails(), _config([("OUTPUT__0", "TYPE_FP32", [3])]))
    with pytest.raises(BackendError, match=r"PyTorch execute failure: .*too large"):
        model.infer({"INPUT__0": X * 100})
    np.testing.assert_array_equal(model.infer({"INPUT__0": X})["OUTPUT__0"], X)  # and it runs on


def test_strings_go_in_as_a_list_and_come_back_as_bytes(tmp_path: Path) -> None:
    class Upper(torch.nn.Module):
        def forward(self, words: list[str]) -> list[str]:
            return [w.upper() for w in words]

    config = _config([("OUT__0", "TYPE_STRING", [1])], [("IN__0", "TYPE_STRING", [1])])
    for t in (*config["input"], *config["output"]):
        t["reshape"] = {"shape": []}
    model = _loaded(tmp_path, Upper(), config)
    words = np.array(["grüße".encode(), b"ok"], dtype=object)
    assert model.infer({"IN__0": words})["OUT__0"].tolist() == ["GRüßE".encode(), b"OK"]  # TorchScript: ASCII upper
    with pytest.raises(InvalidRequest, match="input 'IN__0' holds bytes that are not UTF-8 text"):
        model.infer({"IN__0": np.array([b"\xff\xfe"], dtype=object)})


def test_a_returned_dict_is_taken_by_output_name(tmp_path: Path) -> None:
    class Named(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
            return {"logits": x * 3, "embeddings": x[:, :2]}

    model = _loaded(tmp_path, Named(), _config([("embeddings", "TYPE_FP32", [2]), ("logits", "TYPE_FP32", [3])]))
    out = model.infer({"INPUT__0": X})
    np.testing.assert_array_equal(out["logits"], X * 3)
    np.testing.assert_array_equal(out["embeddings"], X[:, :2])
    missing = _loaded(tmp_path, Named(), _config([("scores", "TYPE_FP32", [3])]))
    with pytest.raises(RuntimeRefused, match="forward returned a dict without 'scores'"):
        missing.infer({"INPUT__0": X})


def test_the_configs_execution_switches_give_the_same_answers(tmp_path: Path) -> None:
    config = _config([("COUNT__1", "TYPE_INT64", [1]), ("TWICE__0", "TYPE_FP32", [3])])
    plain = _loaded(tmp_path, _Counts(), config).infer({"INPUT__0": X})
    switched = _loaded(tmp_path, _Counts(), config, inference_mode=False, optimized_execution=False)
    for name, value in switched.infer({"INPUT__0": X}).items():
        np.testing.assert_array_equal(value, plain[name])


def test_a_module_saved_in_training_mode_runs_so_with_a_warning(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="polystack.backends"):
        _loaded(tmp_path, _Counts().train(), _config([("TWICE__0", "TYPE_FP32", [3])]))
    assert any("saved in training mode" in r.getMessage() and r.__dict__.get("model") == "m" for r in caplog.records)


def test_without_a_batch_dimension_an_answer_has_the_length_it_has(tmp_path: Path) -> None:
    class Head(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x[:2]

    config = {**_config([("OUTPUT__0", "TYPE_FP32", [-1])], [("INPUT__0", "TYPE_FP32", [-1])]), "max_batch_size": 0}
    model = _loaded(tmp_path, Head(), config)
    np.testing.assert_array_equal(model.infer({"INPUT__0": X[0]})["OUTPUT__0"], X[0, :2])


def test_each_load_sets_torchs_thread_count_and_says_when_it_changes_anothers(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    before = torch.get_num_threads()
    config = _config([("TWICE__0", "TYPE_FP32", [3])])
    try:
        _loaded(tmp_path, _Counts(), config, intra_op_threads=1)
        assert torch.get_num_threads() == 1
        with caplog.at_level(logging.WARNING, logger="polystack.backends"):
            _loaded(tmp_path, _Counts(), config, intra_op_threads=2)  # a plan's count for a second model holds
        assert torch.get_num_threads() == 2
        assert any("intra-op thread count is the process's" in r.getMessage() for r in caplog.records)
    finally:
        torch.set_num_threads(before)


class _Calls(torch.nn.Module):
    """Counts its calls in an attribute, as a module keeping state does."""

    def __init__(self) -> None:
        super().__init__()
        self.calls = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        return torch.full_like(x[:, :1], self.calls)


@pytest.mark.parametrize(
    ("options", "counts"),
    [({}, [1, 2, 3, 4]), ({"instances": 2}, [1, 1, 2, 2]), ({"instances": 2, "weight_sharing": True}, [1, 2, 3, 4])],
    ids=["one-instance", "two-instances", "weight-sharing"],
)
def test_each_instance_runs_its_own_copy_of_the_module_unless_weights_are_shared(
    tmp_path: Path, options: dict[str, Any], counts: list[int]
) -> None:
    """Triton's instances each load the module (without ENABLE_WEIGHT_SHARING): what a forward keeps in an
    attribute is its instance's, and calls go to the instances in turn."""
    model = _loaded(tmp_path, _Calls(), _config([("OUTPUT__0", "TYPE_FP32", [1])]), **options)
    assert [int(model.infer({"INPUT__0": X})["OUTPUT__0"][0, 0]) for _ in counts] == counts


def test_a_warm_up_warms_each_copy(tmp_path: Path) -> None:
    """helper-173 (Triton's L0_warmup): Triton warms each instance; a sample run once warmed one copy, whose first
    request then ran cold (a profiling executor's first calls are its slow ones)."""
    from polystack.backends.base import CheckedModel
    from polystack.server import warmup
    from polystack.types import DType

    model = CheckedModel(_loaded(tmp_path, _Calls(), _config([("OUTPUT__0", "TYPE_FP32", [1])]), instances=3))
    assert model.instance_count == 3
    zeros = warmup.WarmupInput("INPUT__0", DType.FP32, (3,))
    warmup.run(model, (warmup.WarmupSample("w", 2, 0, (zeros,), True),), "m:1")
    assert [int(model.infer({"INPUT__0": X})["OUTPUT__0"][0, 0]) for _ in range(3)] == [2, 2, 2]  # each warmed once


def test_an_instance_runs_one_call_at_a_time(tmp_path: Path) -> None:
    """Calls from more threads than instances wait for a free one: every call sees its own count."""
    model = _loaded(tmp_path, _Calls(), _config([("OUTPUT__0", "TYPE_FP32", [1])]))
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        seen = list(pool.map(lambda _: int(model.infer({"INPUT__0": X})["OUTPUT__0"][0, 0]), range(200)))
    assert sorted(seen) == list(range(1, 201))
    model.close()
    with pytest.raises(Unavailable, match="unloaded"):
        model.infer({"INPUT__0": X})


class _AddsInPlace(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x.add_(1.0)
        return x * 2


def test_a_module_writing_into_its_input_leaves_a_read_only_request_as_it_came(tmp_path: Path) -> None:
    # a request's binary data (bytes) and a client's shared memory reach the runtime read-only: the module wrote
    # into them (a Python bytes object changed under its owner), and torch warned on stderr that it would
    model = _loaded(tmp_path, _AddsInPlace(), _config([("OUTPUT__0", "TYPE_FP32", [3])]))
    data = X.tobytes()
    x = np.frombuffer(data, np.float32).reshape(X.shape)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # "The given NumPy array is not writable"
        out = model.infer({"INPUT__0": x})
    assert data == X.tobytes()
    np.testing.assert_array_equal(out["OUTPUT__0"], (X + 1) * 2)
