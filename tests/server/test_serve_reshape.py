"""Triton's reshape: a config's input or output `dims` are what clients send and get, and its `reshape` the
shape the model takes or gives (a model of a batch of scalars served as [batch, 1]). A real server process
serving repository folders, the real tritonclient; and the configs refused, each saying what is wrong."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from onnx import TensorProto, helper
from servekit import cli_server, free_port, same_config_both_ways
from tritonclient.utils import InferenceServerException

from polystack.server import config_text, model_config

# the model: x FP32 [batch] -> y FP32 [batch, 2, 3] (y[i] = x[i] everywhere)
SCALARS = """
max_batch_size: 4
input [ { name: "x", data_type: TYPE_FP32, dims: [ 1 ], reshape: { shape: [ ] } } ]
output [ { name: "y", data_type: TYPE_FP32, dims: [ 6 ], reshape: { shape: [ 2, 3 ] } } ]
dynamic_batching { }
"""


def scalar_model(path: Path) -> Path:
    import onnx

    shape = helper.make_tensor("shape", TensorProto.INT64, [3], [-1, 1, 1])
    ones = helper.make_tensor("ones", TensorProto.FLOAT, [1, 2, 3], [1.0] * 6)
    nodes = [
        helper.make_node("Reshape", ["x", "shape"], ["x3"]),
        helper.make_node("Mul", ["x3", "ones"], ["y"]),
    ]
    graph = helper.make_graph(
        nodes,
        "scalars",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch"])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 2, 3])],
        [shape, ones],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save_model(model, str(path))
    return path


@contextmanager
def _served(tmp_path: Path, config: str = SCALARS, *flags: str) -> Iterator[tuple[int, int]]:
    (tmp_path / "models" / "sc" / "1").mkdir(parents=True)
    scalar_model(tmp_path / "models" / "sc" / "1" / "model.onnx")
    (tmp_path / "models" / "sc" / "config.pbtxt").write_text(config)
    port, grpc_port = free_port(), free_port()
    args = ["--model-repository", str(tmp_path / "models"), "--grpc-port", str(grpc_port), *flags]
    with cli_server(tmp_path / "home", args, port, tmp_path / "serve.log"):
        yield port, grpc_port


def _x(module: Any, values: list[float]) -> list[Any]:
    x = module.InferInput("x", [len(values), 1], "FP32")
    x.set_data_from_numpy(np.array(values, np.float32).reshape(-1, 1))
    return [x]


def test_clients_send_and_get_the_configs_dims_and_the_model_its_own(tmp_path: Path) -> None:
    with _served(tmp_path, SCALARS, "--allow-model-control") as (port, grpc_port):
        h = httpclient.InferenceServerClient(f"127.0.0.1:{port}", concurrency=4)
        g = grpcclient.InferenceServerClient(f"127.0.0.1:{grpc_port}")
        try:
            meta = h.get_model_metadata("sc")
            assert meta["inputs"][0]["shape"] == [-1, 1] and meta["outputs"][0]["shape"] == [-1, 6]
            config = same_config_both_ways(h, g, "sc")  # over gRPC too (its proto lacked reshape)
            assert config["input"][0]["dims"] == [1] and config["input"][0]["reshape"] == {"shape": []}
            assert config["output"][0]["dims"] == [6] and config["output"][0]["reshape"] == {"shape": [2, 3]}
            for client, module in ((h, httpclient), (g, grpcclient)):
                y = client.infer("sc", _x(module, [1.0, 2.0])).as_numpy("y")
                np.testing.assert_array_equal(y, np.repeat(np.array([[1.0], [2.0]], np.float32), 6, axis=1))
                with pytest.raises(InferenceServerException, match=r"unexpected shape for input 'x' for model 'sc'. Expected \[-1,1\], got \[2\]"):
                    x = module.InferInput("x", [2], "FP32")  # the model's own shape: not what the config shows
                    x.set_data_from_numpy(np.ones(2, np.float32))
                    client.infer("sc", [x])
            # requests batched together are reshaped as one batch, each answer its own rows
            pending = [h.async_infer("sc", _x(httpclient, [float(i)])) for i in range(4)]
            for i, p in enumerate(pending):
                np.testing.assert_array_equal(p.get_result().as_numpy("y"), np.full((1, 6), float(i), np.float32))
            g.load_model("sc", config=json.dumps(config))  # what GET config shows loads back unchanged
            assert h.get_model_config("sc") == config
        finally:
            h.close()
            g.close()


@pytest.mark.parametrize(
    ("change", "says"),
    [
        # Triton's words (ValidateIOShape), with the model's name as its log says them, then polystack's detail
        ({"input": [{"name": "x", "dims": [2], "reshape": {"shape": []}}]},
         "model input 'x' has different size for dims and reshape for sc: input[0] dims [2] and "
         "reshape [] hold 2 and 0 elements"),
        ({"input": [{"name": "x", "dims": [3], "reshape": {"shape": [3]}}]}, "the model's are []"),
        ({"input": [{"name": "x", "reshape": {"shape": []}}]}, "reshape needs the dims"),
        ({"output": [{"name": "y", "dims": [5], "reshape": {"shape": [2, 3]}}]},
         "model output 'y' has different size for dims and reshape for sc: output[0] dims [5] and "
         "reshape [2, 3] hold 5 and 6 elements"),
        ({"output": [{"name": "y", "dims": [-1, 2], "reshape": {"shape": [2, 3]}}]},
         "model output 'y' has different size for dims and reshape for sc: output[0] has dims [-1, 2] and reshape "
         "[2, 3]: a -1 (any size) in one needs one in the other"),
        ({"output": [{"name": "y", "dims": [-1, 2], "reshape": {"shape": [-1, 3]}}]},
         "has different size for dims and reshape for sc: output[0] dims [-1, 2] and reshape [-1, 3] hold [1, 2] and "
         "[1, 3] elements around their -1s"),
        ({"output": [{"name": "y", "dims": [-1, 6], "reshape": {"shape": [-1, 2, -1]}}]},
         "model output 'y' has different number of variable-size dimensions for dims and reshape for sc"),
        ({"input": [{"name": "x", "dims": [1], "reshape": {"shape": [0]}}]},
         "model input 'x' reshape dimensions must be integer >= 1, or -1 to indicate a variable-size dimension for "
         "sc: input[0].reshape is [0]"),  # polystack compared it with the model first (helper-195)
        ({"max_batch_size": 0, "input": [{"name": "x", "dims": [1], "reshape": {"shape": []}}]},
         "model input 'x' cannot have empty reshape for non-batching model as scalar tensors are not supported for "
         "sc"),  # Triton's words (helper-53's review; its whole sentence: helper-195)
        ({"input": [{"name": "x", "dims": [], "reshape": {"shape": []}}]}, "must specify 'dims'"),  # (helper-54)
    ],
)  # fmt: skip
def test_a_reshape_that_does_not_fit_is_refused(tmp_path: Path, change: dict[str, Any], says: str) -> None:
    from polystack.engine import LoadSpec
    from polystack.errors import InvalidRequest
    from polystack.server import model_config
    from polystack.store import ModelRecord
    from polystack.types import DType, Signature, TensorSpec

    sig = Signature(inputs=(TensorSpec("x", DType.FP32, (-1,)),), outputs=(TensorSpec("y", DType.FP32, (-1, 2, 3)),))
    record = ModelRecord(
        id=1, name="sc", version=1, format="onnx", signature=sig, digest="0" * 64, size_bytes=1, created_at=0.0
    )
    spec = LoadSpec(artifact=Path("m.onnx"), format="onnx", backend="onnxruntime")
    with pytest.raises(InvalidRequest, match=re.escape(says)):
        model_config.read(json.dumps({"max_batch_size": 4, **change}), record, spec, None)


def test_reshapes_with_several_dynamic_dims_load_and_run_even_on_empty_batches() -> None:
    """Triton's rule: as many -1s, the sizes between them matching (helper-53's review: the config GET config
    shows once a batcher stopped merging has two -1s and was refused; a batch of 0 rows failed with a 500,
    numpy inferring a -1 of an empty array)."""
    from polystack.backends.reshaped import Reshape, Reshaped
    from polystack.engine import LoadSpec
    from polystack.errors import BackendError, InvalidRequest
    from polystack.store import ModelRecord
    from polystack.types import DType, Signature, TensorSpec

    sig = Signature(
        inputs=(TensorSpec("x", DType.FP32, (-1, -1, 2)),), outputs=(TensorSpec("y", DType.FP32, (-1, -1, 2)),)
    )
    flat = Signature(
        inputs=(TensorSpec("x", DType.FP32, (-1, -1, 2, 2)),), outputs=(TensorSpec("y", DType.FP32, (-1, -1, 2, 2)),)
    )
    record = ModelRecord(
        id=1, name="dyn", version=1, format="onnx", signature=sig, digest="0" * 64, size_bytes=1, created_at=0.0
    )
    spec = LoadSpec(artifact=Path("m.onnx"), format="onnx", backend="onnxruntime")
    unbatched = {"max_batch_size": 0, "input": [{"name": "x", "dims": [-1, -1, 2], "reshape": {"shape": [-1, -1, 2]}}]}
    chosen = model_config.read(json.dumps(unbatched), record, spec, None)
    assert chosen.additions.reshape == (Reshape("x", False, (-1, -1, 2), (-1, -1, 2)),)
    swapped = {"max_batch_size": 4, "input": [{"name": "x", "dims": [2, -1], "reshape": {"shape": [-1, 2]}}]}
    with pytest.raises(InvalidRequest, match=r"hold \[2, 1\] and \[1, 2\] elements around their -1s; they must hold"):
        model_config.read(json.dumps(swapped), record, spec, None)

    class Flat:  # the model takes [batch, n, 2, 2] and gives it back
        signature = flat

        def infer(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
            return {"y": inputs["x"]}

        def close(self) -> None:
            pass

    model = Reshaped(Flat(), (Reshape("x", True, (-1, 4), (-1, 2, 2)), Reshape("y", True, (-1, 4), (-1, 2, 2))))
    assert model.signature.inputs[0].shape == (-1, -1, 4)
    for rows in (0, 3):
        x = np.arange(rows * 5 * 4, dtype=np.float32).reshape(rows, 5, 4)
        y = model.infer({"x": x})["y"]
        assert y.shape == (rows, 5, 4)
        np.testing.assert_array_equal(y, x)
    # a model giving another shape than its config's reshape says: a clear error, not numpy's (helper-54)
    fixed = Reshaped(Flat(), (Reshape("y", True, (12,), (3, 2, 2)),))
    with pytest.raises(BackendError, match=r"output 'y' has shape \[1, 5, 2, 2\], which its config's reshape do not"):
        fixed.infer({"x": np.zeros((1, 5, 2, 2), np.float32)})


def test_the_engine_ray_check_compares_ensembles_with_the_reshaped_shapes(tmp_path: Path) -> None:
    """--engine ray checks ensembles against their models before Ray starts: against the shapes clients of a
    reshaped model see, as a local server does (helper-53's review: a valid ensemble was refused)."""
    from polystack.config import StoreSettings
    from polystack.formats import import_model
    from polystack.server import ensemble
    from polystack.server.app import ServeConfig
    from polystack.server.model_config import ConfigFile
    from polystack.server.ray_serve import check_before_ray
    from polystack.store import Store

    store = Store(StoreSettings(home=tmp_path / "home"))
    imported = import_model(scalar_model(tmp_path / "sc.onnx"), tmp_path / "imported")
    store.register(imported.artifact, name="sc", format=imported.format, signature=imported.signature)
    pipe = {
        "platform": "ensemble", "max_batch_size": 4,
        "input": [{"name": "X", "data_type": "TYPE_FP32", "dims": [1]}],
        "output": [{"name": "Y", "data_type": "TYPE_FP32", "dims": [6]}],
        "ensemble_scheduling": {"step": [{"model_name": "sc", "input_map": {"x": "X"}, "output_map": {"y": "Y"}}]},
    }  # fmt: skip
    config = ServeConfig(
        http_port=18999, grpc_port=None, models=["sc"], model_configs={"sc": ConfigFile(config_text.as_json(SCALARS))},
        ensembles={"pipe": ensemble.read(json.dumps(pipe), "pipe", 1)},
    )  # fmt: skip
    check_before_ray(store, config, ray_address="10.9.9.9:6379")  # no Ray started: the address is never dialled
    store.close()
