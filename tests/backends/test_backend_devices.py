"""Backend specifics: device names from each runtime's own discovery, options that matter, trust."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from polystack import zoo
from polystack.backends import registry
from polystack.errors import UnsafeModel
from polystack.formats import import_model


def test_openvino_device_names_round_trip() -> None:
    from polystack.backends.openvino import from_ov_device, to_ov_device

    listed = ["CPU", "GPU.0", "GPU.1", "NPU"]
    for name in listed:
        assert to_ov_device(from_ov_device(name), listed) == name
    assert from_ov_device("GPU.1") == "gpu:1" and from_ov_device("CPU") == "cpu"


def test_openvino_devices_and_lower_precision_come_from_openvino() -> None:
    import openvino as ov

    backend = registry.get("openvino")
    assert len(backend.devices()) == len(ov.Core().available_devices)
    caps = ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")
    expected = "bf16" if "BF16" in caps else None
    assert backend.lower_precision("cpu") == expected  # type: ignore[attr-defined]


def test_torch_devices_are_the_ones_torch_offers() -> None:
    import torch

    devices = registry.get("torch").devices()
    assert devices[0] == "cpu"
    assert sum(d.startswith("cuda:") for d in devices) == (
        torch.cuda.device_count() if torch.cuda.is_available() else 0
    )


def test_jax_devices_are_the_ones_jax_lists() -> None:
    import jax

    devices = registry.get("jax").devices()
    assert "cpu" in devices
    assert len([d for d in devices if not d.startswith("cpu")]) == len(
        [d for d in jax.devices() if d.platform != "cpu"]
    )


def test_torch_bf16_option_runs_in_bf16_and_returns_fp32(tmp_path: Path) -> None:
    path = zoo.mlp_pt2(tmp_path / "m.pt2", sizes=(8, 16, 3))
    sig = import_model(path, tmp_path).signature
    backend = registry.get("torch")
    x = {"input": np.random.default_rng(0).standard_normal((4, 8)).astype(np.float32)}
    fp32 = backend.load(path, sig, backend.parse_options({}), "cpu").infer(x)["output_0"]
    bf16 = backend.load(path, sig, backend.parse_options({"dtype": "bf16"}), "cpu").infer(x)["output_0"]
    assert bf16.dtype == np.float32
    assert 0 < np.abs(fp32 - bf16).max() < 0.05


def test_a_torch_export_model_of_bfloat16_tensors_takes_and_gives_them(tmp_path: Path) -> None:
    """A model whose inputs and outputs are bfloat16 registered and loaded, then failed every request:
    torch.from_numpy and Tensor.numpy do not know ml_dtypes' bfloat16, the protocol's BF16."""
    import torch

    from polystack.types import DType
    from polystack.zoo import save_torch_export

    class Double(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x * 2

    path = save_torch_export(Double(), (torch.ones(2, 4, dtype=torch.bfloat16),), tmp_path / "bf16.pt2")
    sig = import_model(path, tmp_path).signature
    assert [t.dtype for t in (*sig.inputs, *sig.outputs)] == [DType.BF16, DType.BF16]
    backend = registry.get("torch")
    x = np.array([[1.5, -2.0, 3.25, 0.0]], np.float32).astype(DType.BF16.numpy)
    out = backend.load(path, sig, backend.parse_options({}), "cpu").infer({sig.inputs[0].name: x})
    [y] = out.values()
    assert y.dtype == DType.BF16.numpy and y.astype(np.float32).tolist() == [[3.0, -4.0, 6.5, 0.0]]


@pytest.mark.parametrize("weights", ["float64", "float16"])
@pytest.mark.parametrize("option", ["fp32", "fp16", "bf16"])
def test_a_torch_model_of_any_float_dtype_runs_under_every_dtype_option(tmp_path: Path, weights: str, option: str) -> None:
    """The dtype option converts the module's weights: its inputs go with them, whatever the signature's dtype,
    and each output comes back in the signature's (FP64 and FP16 models failed under an option, or without)."""
    import torch

    from polystack.zoo import save_torch_export

    torch.manual_seed(0)
    dtype = getattr(torch, weights)
    path = save_torch_export(torch.nn.Linear(4, 3).to(dtype), (torch.ones(2, 4, dtype=dtype),), tmp_path / "m.pt2")
    sig = import_model(path, tmp_path).signature
    backend = registry.get("torch")
    x = np.linspace(-1, 1, 8).reshape(2, 4).astype(sig.inputs[0].dtype.numpy)
    [y] = backend.load(path, sig, backend.parse_options({"dtype": option}), "cpu").infer({sig.inputs[0].name: x}).values()
    assert y.dtype == sig.outputs[0].dtype.numpy and y.shape == (2, 3) and np.isfinite(y.astype(np.float64)).all()


def test_the_sklearn_backend_trusts_only_what_it_is_told(tmp_path: Path) -> None:
    path = zoo.sklearn_forest_skops(tmp_path / "forest.skops")
    sig = import_model(path, tmp_path, trusted=["sklearn.tree._tree.Tree"]).signature
    backend = registry.get("sklearn")
    with pytest.raises(UnsafeModel, match="--trust"):
        backend.load(path, sig, backend.parse_options({}), "cpu")
    model = backend.load(path, sig, backend.parse_options({"trusted": ["sklearn.tree._tree.Tree"]}), "cpu")
    out = model.infer({"input": np.zeros((2, 6), np.float32)})
    assert out["probabilities"].shape == (2, 2) and out["label"].dtype == np.int64


def test_importing_backend_modules_imports_no_runtime() -> None:
    import subprocess

    code = (
        "import sys; import polystack.backends.torch, polystack.backends.jax, polystack.backends.openvino, "
        "polystack.backends.xgboost, polystack.backends.lightgbm, polystack.backends.sklearn, "
        "polystack.backends.litert, polystack.variants, polystack.verify, polystack.convert; "
        "print(','.join(m for m in ('torch','jax','openvino','xgboost','lightgbm','sklearn','ai_edge_litert') "
        "if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""


def test_onnxruntime_takes_and_gives_bfloat16_inputs_and_outputs(tmp_path: Path) -> None:
    """ONNX Runtime's numpy API neither takes nor gives bfloat16 tensors: polystack refused such a model at load
    (it had loaded and failed every request before), where Triton's ONNX Runtime backend serves it (helper-220: its
    L0_backend_onnxruntime bfloat16 test). They run through an IO binding, bfloat16 as its 16-bit patterns, beside
    the outputs of other types; a batch of none too. A model that keeps bfloat16 inside still runs as before."""
    import onnx
    from onnx import TensorProto, helper

    from polystack.errors import InvalidModelFile, RuntimeRefused
    from polystack.formats.onnx import signature_of
    from polystack.types import DType

    backend = registry.get("onnxruntime")

    def model(name: str, io: int, nodes: list[Any], extra: tuple[Any, ...] = ()) -> tuple[Path, Any]:
        graph = helper.make_graph(
            nodes,
            name,
            [helper.make_tensor_value_info("a", io, ["n", 2])],
            [helper.make_tensor_value_info("b", io, ["n", 2]), *extra],
        )
        m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
        m.ir_version = 8
        path = tmp_path / f"{name}.onnx"
        onnx.save_model(m, str(path))
        return path, signature_of(m)

    doubled = [
        helper.make_node("Cast", ["a"], ["f"], to=TensorProto.FLOAT),
        helper.make_node("Add", ["f", "f"], ["twice"]),
        helper.make_node("Cast", ["twice"], ["b"], to=TensorProto.BFLOAT16),
    ]
    path, sig = model("bf16", TensorProto.BFLOAT16, doubled, (helper.make_tensor_value_info("twice", 1, ["n", 2]),))
    assert [t.dtype for t in (*sig.inputs, *sig.outputs)] == [DType.BF16, DType.BF16, DType.FP32]
    loaded = backend.load(path, sig, backend.parse_options({}), "cpu")
    out = loaded.infer({"a": np.array([[1.5, -2.0], [3.25, 0.0]], np.float32).astype(DType.BF16.numpy)})
    assert out["b"].dtype == DType.BF16.numpy and out["b"].astype(np.float32).tolist() == [[3.0, -4.0], [6.5, 0.0]]
    assert out["twice"].dtype == np.float32 and out["twice"].tolist() == [[3.0, -4.0], [6.5, 0.0]]
    none = loaded.infer({"a": np.zeros((0, 2), DType.BF16.numpy)})
    assert none["b"].shape == (0, 2) and none["b"].dtype == DType.BF16.numpy
    with pytest.raises(RuntimeRefused, match="Got invalid dimensions"):  # helper-223: a bound run's refusal, 500
        loaded.infer({"a": np.zeros((1, 3), DType.BF16.numpy)})
    # helper-223: an IO binding takes no string input, so such a model beside bfloat16 would fail every request
    graph = helper.make_graph([*doubled, helper.make_node("Identity", ["t"], ["u"])], "text",
                              [helper.make_tensor_value_info("a", TensorProto.BFLOAT16, ["n", 2]),
                               helper.make_tensor_value_info("t", TensorProto.STRING, ["n"])],
                              [helper.make_tensor_value_info("b", TensorProto.BFLOAT16, ["n", 2]),
                               helper.make_tensor_value_info("u", TensorProto.STRING, ["n"])])  # fmt: skip
    text = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    text.ir_version = 8
    onnx.save_model(text, str(tmp_path / "text.onnx"))
    with pytest.raises(InvalidModelFile, match=r"'a', 'b' are bfloat16.*binds no string input \('t'\)"):
        backend.load(tmp_path / "text.onnx", signature_of(text), backend.parse_options({}), "cpu")
    inside = [
        helper.make_node("Cast", ["a"], ["h"], to=TensorProto.BFLOAT16),
        helper.make_node("Cast", ["h"], ["b"], to=TensorProto.FLOAT),
    ]
    path, sig = model("inside", TensorProto.FLOAT, inside)
    loaded = backend.load(path, sig, backend.parse_options({}), "cpu")
    out = loaded.infer({"a": np.array([[1.5, -2.0]], np.float32)})
    np.testing.assert_array_equal(out["b"], np.array([[1.5, -2.0]], np.float32))


def test_onnxruntime_session_options_from_a_triton_config_reach_the_session(tmp_path: Path) -> None:
    """The memory arena, memory pattern, a session entry and the graph level a Triton config sets are the
    session's own; answers do not change."""
    from polystack.examples import mlp_onnx
    from polystack.formats.onnx import signature_of

    backend = registry.get("onnxruntime")
    path = mlp_onnx(tmp_path / "mlp.onnx")
    import onnx

    sig = signature_of(onnx.load(str(path)))
    x = {sig.inputs[0].name: np.ones((2, *sig.inputs[0].shape[1:]), np.float32)}
    plain = backend.load(path, sig, backend.parse_options({}), "cpu")
    options = {
        "enable_cpu_mem_arena": False,
        "enable_mem_pattern": False,
        "session_config": {"session.use_device_allocator_for_initializers": "1"},
        "graph_optimization_level": "disable",
    }
    tuned = backend.load(path, sig, backend.parse_options(options), "cpu")
    so = tuned.session.get_session_options()  # type: ignore[attr-defined]
    assert not so.enable_cpu_mem_arena and not so.enable_mem_pattern
    assert so.get_session_config_entry("session.use_device_allocator_for_initializers") == "1"
    assert str(so.graph_optimization_level).endswith("ORT_DISABLE_ALL")
    defaults = plain.session.get_session_options()  # type: ignore[attr-defined]
    assert defaults.enable_cpu_mem_arena and defaults.enable_mem_pattern
    name = sig.outputs[0].name
    np.testing.assert_allclose(tuned.infer(x)[name], plain.infer(x)[name], rtol=1e-6)


def test_onnxruntime_accelerators_go_where_triton_puts_them_and_must_be_present(monkeypatch: pytest.MonkeyPatch) -> None:
    """An execution accelerator of a Triton config is required: this onnxruntime (no OpenVINO provider) refuses
    it, saying which build has it. As Triton appends them: TensorRT, the device's own (CUDA), OpenVINO, then
    the CPU; the model's device is each provider's device_id, whatever a config's options say. No GPU or
    OpenVINO provider here: the providers given to ONNX Runtime are checked against a list that claims them."""
    from polystack.errors import InvalidRequest

    backend = registry.get("onnxruntime")
    openvino = {
        "cpu_accelerators": ["OpenVINOExecutionProvider"],
        "provider_options": {"OpenVINOExecutionProvider": {"device_type": "CPU"}},
    }
    with pytest.raises(InvalidRequest, match=r"no OpenVINOExecutionProvider.*onnxruntime-openvino"):
        backend._providers_for("cpu", backend.parse_options(openvino))  # type: ignore[attr-defined]
    claimed = ["TensorrtExecutionProvider", "CUDAExecutionProvider", "OpenVINOExecutionProvider", "CPUExecutionProvider"]
    monkeypatch.setattr(type(backend), "providers", lambda self: claimed)
    assert backend._providers_for("cpu", backend.parse_options(openvino)) == [  # type: ignore[attr-defined]
        ("OpenVINOExecutionProvider", {"device_type": "CPU"}),
        "CPUExecutionProvider",
    ]
    gpu = backend.parse_options(
        {
            "accelerators": ["TensorrtExecutionProvider"],
            "cpu_accelerators": ["OpenVINOExecutionProvider"],
            "provider_options": {
                "TensorrtExecutionProvider": {"trt_fp16_enable": "1", "device_id": "3"},
                "CUDAExecutionProvider": {"cudnn_conv_algo_search": "HEURISTIC", "device_id": "3"},
                "OpenVINOExecutionProvider": {"device_type": "CPU"},
            },
        }
    )
    assert backend._providers_for("cuda:1", gpu) == [  # type: ignore[attr-defined]
        ("TensorrtExecutionProvider", {"device_id": 1, "trt_fp16_enable": "1"}),
        ("CUDAExecutionProvider", {"device_id": 1, "cudnn_conv_algo_search": "HEURISTIC"}),
        ("OpenVINOExecutionProvider", {"device_type": "CPU"}),
        "CPUExecutionProvider",
    ]
    # a TensorRT device: what TensorRT cannot run goes to CUDA on the same GPU
    assert backend._providers_for("tensorrt:0", backend.parse_options({})) == [  # type: ignore[attr-defined]
        ("TensorrtExecutionProvider", {"device_id": 0}),
        ("CUDAExecutionProvider", {"device_id": 0}),
        "CPUExecutionProvider",
    ]


def test_onnxruntime_run_options_from_a_triton_config_reach_every_run(tmp_path: Path) -> None:
    import onnx

    from polystack.examples import mlp_onnx
    from polystack.formats.onnx import signature_of

    backend = registry.get("onnxruntime")
    path = mlp_onnx(tmp_path / "mlp.onnx")
    sig = signature_of(onnx.load(str(path)))
    options = backend.parse_options({"run_config": {"memory.enable_memory_arena_shrinkage": "cpu:0"}})
    loaded = backend.load(path, sig, options, "cpu")
    assert loaded._run_options.get_run_config_entry("memory.enable_memory_arena_shrinkage") == "cpu:0"  # type: ignore[attr-defined]
    x = {sig.inputs[0].name: np.ones((2, *sig.inputs[0].shape[1:]), np.float32)}
    assert loaded.infer(x)[sig.outputs[0].name].shape[0] == 2
