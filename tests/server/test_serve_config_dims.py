"""A config's dims may fix a dimension the model leaves dynamic (-1), as Triton's ONNX Runtime backend allows:
clients then see, and requests are checked against, the config's dims. A real server process serving
repository folders, the real tritonclient."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from onnx import TensorProto
from servekit import cli_server, free_port, single_op
from tritonclient.utils import InferenceServerException

BATCHED = """
max_batch_size: 4
input [ { name: "x", data_type: TYPE_FP32, dims: [ 3 ] } ]
output [ { name: "y", data_type: TYPE_FP32, dims: [ 3 ] } ]
dynamic_batching { }
"""
UNBATCHED = """
max_batch_size: 0
input [ { name: "x", data_type: TYPE_FP32, dims: [ 2, 3 ] } ]
output [ { name: "y", data_type: TYPE_FP32, dims: [ -1, 3 ] } ]
"""  # outputs listed too: else Triton's auto-complete would batch the model (max_batch_size 4)


@contextmanager
def _served(tmp_path: Path) -> Iterator[tuple[int, int]]:
    for name, config in (("dyn", BATCHED), ("dyn0", UNBATCHED)):
        (tmp_path / "models" / name / "1").mkdir(parents=True)
        single_op(tmp_path / "models" / name / "1" / "model.onnx", "Neg", TensorProto.FLOAT, "w", "x", [("y", "Neg")])  # type: ignore[arg-type]
        (tmp_path / "models" / name / "config.pbtxt").write_text(config)
    port, grpc_port = free_port(), free_port()
    args = ["--model-repository", str(tmp_path / "models"), "--grpc-port", str(grpc_port)]
    with cli_server(tmp_path / "home", args, port, tmp_path / "serve.log"):
        yield port, grpc_port


def _x(module: object, shape: list[int]) -> list[object]:
    x = module.InferInput("x", shape, "FP32")  # type: ignore[attr-defined]
    x.set_data_from_numpy(np.ones(shape, np.float32))
    return [x]


def test_config_dims_narrow_what_clients_see_and_send(tmp_path: Path) -> None:
    with _served(tmp_path) as (port, grpc_port):
        h = httpclient.InferenceServerClient(f"127.0.0.1:{port}")
        g = grpcclient.InferenceServerClient(f"127.0.0.1:{grpc_port}")
        try:
            meta = h.get_model_metadata("dyn")
            assert meta["inputs"][0]["shape"] == [-1, 3] and meta["outputs"][0]["shape"] == [-1, 3]
            assert h.get_model_config("dyn")["input"][0]["dims"] == [3]
            assert h.get_model_metadata("dyn0")["inputs"][0]["shape"] == [2, 3]
            assert h.get_model_config("dyn0")["input"][0]["dims"] == [2, 3]
            for client, module in ((h, httpclient), (g, grpcclient)):
                answer = client.infer("dyn", _x(module, [2, 3]))
                np.testing.assert_array_equal(answer.as_numpy("y"), -np.ones((2, 3), np.float32))
                np.testing.assert_array_equal(client.infer("dyn0", _x(module, [2, 3])).as_numpy("y"), -np.ones((2, 3)))
                for model, shape in (("dyn", [2, 5]), ("dyn0", [2, 5]), ("dyn0", [1, 3])):
                    with pytest.raises(InferenceServerException) as e:  # the model would take it; the config not
                        client.infer(model, _x(module, shape))
                    assert "INVALID_ARGUMENT" in str(e.value.status()) or e.value.status() == "400", e.value
                    assert f"got [{shape[0]},{shape[1]}]" in e.value.message(), e.value
            assert h.is_server_live()
        finally:
            h.close()
            g.close()
