"""The torch_aoti backend (``backends/torch_aoti.py``): an AOTInductor package answers as the module it was
compiled from, a batch's outputs a row per row, answers that do not fit the config refused in the words of Triton's
PyTorch backend, a model's instances run at once as the loader's runners."""

from __future__ import annotations

import concurrent.futures
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from polystack.backends import registry
from polystack.errors import InvalidRequest, RuntimeRefused
from polystack.formats.torch_aoti import pack, signature


def _loaded(package: Path, tmp_path: Path, config: dict[str, Any], **options: Any) -> Any:
    config = {"name": "m", "platform": "torch_aoti", **config}
    packed = pack(package, config, "m", tmp_path / f"m{len(list(tmp_path.iterdir()))}.zip")
    backend = registry.get("torch_aoti")
    return backend.load(packed, signature(config), backend.parse_options(options), "cpu")


def _tensors(items: list[tuple[str, str, list[int]]]) -> list[dict[str, Any]]:
    return [{"name": n, "data_type": t, "dims": d} for n, t, d in items]


MLP = {"max_batch_size": 64, "input": _tensors([("INPUT__0", "TYPE_FP32", [4])]), "output": _tensors([("OUTPUT__0", "TYPE_FP32", [3])])}  # fmt: skip


def test_a_package_answers_as_its_module_for_any_batch_it_takes(aoti: Any, tmp_path: Path) -> None:
    model = _loaded(aoti.mlp, tmp_path, MLP)
    for rows in (1, 2, 5, 64):
        x = np.random.default_rng(rows).standard_normal((rows, 4)).astype(np.float32)
        want = aoti.mlp_module(torch.from_numpy(x)).detach().numpy()
        np.testing.assert_allclose(model.infer({"INPUT__0": x})["OUTPUT__0"], want, rtol=1e-5, atol=1e-6)


def test_nested_arguments_a_keyword_and_a_returned_dict_meet_the_configs_names(aoti: Any, tmp_path: Path) -> None:
    config = {"max_batch_size": 8,
              "input": _tensors([("ARGS[0]", "TYPE_FP32", [4]), ("ARGS[1][0]", "TYPE_FP32", [4]), ("ARGS[1][1]", "TYPE_FP32", [2]), ("KWARGS[c]", "TYPE_FP32", [4])]),
              "output": _tensors([("RESULT[sum]", "TYPE_FP32", [4]), ("RESULT[parts][1]", "TYPE_INT64", [4])])}  # fmt: skip
    model = _loaded(aoti.structured, tmp_path, config)
    rng = np.random.default_rng(0)
    a, p0, p1, c = (rng.standard_normal((3, n)).astype(np.float32) for n in (4, 4, 2, 4))
    out = model.infer({"ARGS[0]": a, "ARGS[1][0]": p0, "ARGS[1][1]": p1, "KWARGS[c]": c})
    want = aoti.structured_module(
        torch.from_numpy(a), (torch.from_numpy(p0), torch.from_numpy(p1)), c=torch.from_numpy(c)
    )
    np.testing.assert_allclose(out["RESULT[sum]"], want["sum"].detach().numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(out["RESULT[parts][1]"], want["parts"][1].numpy())


def test_answers_that_do_not_fit_the_config_are_refused_in_tritons_words(aoti: Any, tmp_path: Path) -> None:
    wrong = {**MLP, "output": _tensors([("OUTPUT__0", "TYPE_INT32", [3])])}
    with pytest.raises(
        RuntimeRefused,
        match='output tensor "OUTPUT__0" has datatype TYPE_FP32 but model configuration expects TYPE_INT32',
    ):
        _loaded(aoti.mlp, tmp_path, wrong).infer({"INPUT__0": np.ones((2, 4), np.float32)})
    unbatched = _loaded(
        aoti.mlp, tmp_path, {**MLP, "max_batch_size": 0, "input": _tensors([("INPUT__0", "TYPE_FP32", [-1, 4])])}
    )
    with pytest.raises(
        InvalidRequest, match=r"has shape \[65, 4\], but the AOTInductor package was compiled for \[2..64, 4\]"
    ):
        unbatched.infer({"INPUT__0": np.ones((65, 4), np.float32)})  # AOTInductor checks nothing: it would run
    with pytest.raises(InvalidRequest, match=r"has shape \[1, 4\]"):  # no batch to pad: 2 means 2, as compiled
        unbatched.infer({"INPUT__0": np.ones((1, 4), np.float32)})
    static = {"max_batch_size": 0, "input": _tensors([("INPUT__0", "TYPE_FP32", [2, 4])]), "output": _tensors([("OUTPUT__0", "TYPE_FP32", [2, 3])])}  # fmt: skip
    assert _loaded(aoti.static, tmp_path, static).infer({"INPUT__0": np.ones((2, 4), np.float32)})[
        "OUTPUT__0"
    ].shape == (2, 3)


def test_a_models_instances_run_at_once_as_the_loaders_runners(aoti: Any, tmp_path: Path) -> None:
    model = _loaded(aoti.mlp, tmp_path, MLP, runners=2)
    xs = [np.full((i % 7 + 1, 4), i, np.float32) for i in range(64)]
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        answers = list(pool.map(lambda x: model.infer({"INPUT__0": x})["OUTPUT__0"], xs))
    for x, got in zip(xs, answers, strict=True):
        np.testing.assert_allclose(got, aoti.mlp_module(torch.from_numpy(x)).detach().numpy(), rtol=1e-5, atol=1e-5)


def test_a_package_runs_without_holding_pythons_gil(aoti: Any, tmp_path: Path) -> None:
    """torch's loader held the GIL for each call: the server's event loop, its health probes and every other model
    waited for as long as a package ran. Python runs in another thread while a call runs."""
    config = {"max_batch_size": 0, "input": _tensors([("INPUT__0", "TYPE_FP32", [-1, 256])]),
              "output": _tensors([("OUTPUT__0", "TYPE_FP32", [-1, 256])])}  # fmt: skip
    model = _loaded(aoti.heavy, tmp_path, config)
    x = np.ones((1024, 256), np.float32)
    model.infer({"INPUT__0": x})
    calls = 0
    for _ in range(5):  # a few calls, so that the other thread sees one running whatever the scheduling
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            running = pool.submit(model.infer, {"INPUT__0": x})
            time.sleep(0.002)
            while not running.done():
                calls += 1  # Python, in this thread, while the call runs in the other
                time.sleep(0)
            running.result()
    assert calls > 100, calls
