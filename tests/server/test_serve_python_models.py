"""Triton Python-backend models in a model repository (``serve --allow-python-models``): served as tritonserver 2.51
serves them to tritonclient, alone and as an ensemble's step, refused without the flag however they come."""

from __future__ import annotations

import concurrent.futures
import contextlib
import json
import os
import re
import shutil
import signal
import socket
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc as grpc_module
import numpy as np
import onnxruntime as ort
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from servekit import cli_server, free_port, refused_after_loads, refused_at_start, until
from tritonclient.utils import InferenceServerException

from polystack.examples import mlp_onnx
from polystack.formats import python_model
from polystack.protocol.grpc_gen import inference_pb2 as pb
from polystack.protocol.grpc_gen import inference_pb2_grpc as pb_grpc

SCALE = '''
import json
import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        self.factor = float(config["parameters"]["factor"]["string_value"])

    def execute(self, requests):
        responses = []
        for request in requests:
            x = pb_utils.get_input_tensor_by_name(request, "x").as_numpy()
            if np.isnan(x).any():
                error = pb_utils.TritonError("x holds NaN", pb_utils.TritonError.INVALID_ARG)
                responses.append(pb_utils.InferenceResponse(error=error))
            elif (x < -100).any():
                raise ValueError("x is too small")
            else:
                responses.append(pb_utils.InferenceResponse([pb_utils.Tensor("y", (x * self.factor).astype(np.float32))]))
        return responses

    def finalize(self):
        pb_utils.Logger.log_info("scale finalized")
'''

PIPE = """
platform: "ensemble"
max_batch_size: 8
input [ { name: "IN", data_type: TYPE_FP32, dims: [ 16 ] } ]
output [ { name: "OUT", data_type: TYPE_FP32, dims: [ 4 ] } ]
ensemble_scheduling {
  step [
    { model_name: "scale", model_version: -1, input_map { key: "x" value: "IN" }, output_map { key: "y" value: "MID" } },
    { model_name: "mlp", model_version: -1, input_map { key: "x" value: "MID" }, output_map { key: "y" value: "OUT" } }
  ]
}
"""


def python_folder(repo: Path, name: str, source: str, config: str) -> None:
    """A Python model's folder in ``repo``: ``1/model.py`` holding ``source``, and its ``config``."""
    (repo / name / "1").mkdir(parents=True)
    (repo / name / "1" / "model.py").write_text(source)
    (repo / name / "config.pbtxt").write_text(config)


@contextlib.contextmanager
def served(
    tmp_path: Path, repo: Path, *flags: str, **client_options: Any
) -> Iterator[httpclient.InferenceServerClient]:
    """``polystack serve`` of the Python models of ``repo`` with ``flags`` (HTTP alone, its store in tmp_path /
    "home", its log in tmp_path / "log"), as a user runs it, and a client of it (``client_options``: tritonclient's,
    ``concurrency=2`` say)."""
    port = free_port()
    args = ["--model-repository", str(repo), "--allow-python-models", "--grpc-port", "-1", *flags]
    client = httpclient.InferenceServerClient(f"127.0.0.1:{port}", **client_options)
    with cli_server(tmp_path / "home", args, port, tmp_path / "log"), client:
        yield client


def repository(root: Path) -> Path:
    """scale (a Python model: x times its config's factor), mlp (ONNX) and pipe (scale, then mlp)."""
    python_folder(root, "scale", SCALE,
        'backend: "python"\nmax_batch_size: 8\ninput [ { name: "x", data_type: TYPE_FP32, dims: [ 16 ] } ]\n'
        'output [ { name: "y", data_type: TYPE_FP32, dims: [ 16 ] } ]\ndynamic_batching { }\n'
        'parameters { key: "factor" value: { string_value: "2" } }\n'
    )
    (root / "mlp" / "1").mkdir(parents=True)
    mlp_onnx(root / "mlp" / "1" / "model.onnx")
    (root / "mlp" / "config.pbtxt").write_text("max_batch_size: 8\n")
    (root / "pipe" / "1").mkdir(parents=True)
    (root / "pipe" / "config.pbtxt").write_text(PIPE)
    return root


def _mlp(repo: Path, x: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(str(repo / "mlp" / "1" / "model.onnx"), providers=["CPUExecutionProvider"])
    return np.asarray(session.run(["y"], {"x": x})[0])


def test_a_python_model_serves_alone_and_in_an_ensemble_as_triton_serves_it(tmp_path: Path) -> None:
    repo, port, grpc_port = repository(tmp_path / "models"), free_port(), free_port()
    args = ["--model-repository", str(repo), "--allow-python-models", "--grpc-port", str(grpc_port)]
    with cli_server(tmp_path / "home", args, port, tmp_path / "log") as proc:
        http = httpclient.InferenceServerClient(f"127.0.0.1:{port}")
        x = np.linspace(-1, 1, 32, dtype=np.float32).reshape(2, 16)
        i = httpclient.InferInput("x", [2, 16], "FP32")
        i.set_data_from_numpy(x)
        np.testing.assert_array_equal(http.infer("scale", [i]).as_numpy("y"), x * 2)
        i = httpclient.InferInput("IN", [2, 16], "FP32")
        i.set_data_from_numpy(x)
        np.testing.assert_allclose(http.infer("pipe", [i]).as_numpy("OUT"), _mlp(repo, x * 2), rtol=1e-5)
        grpc = grpcclient.InferenceServerClient(f"127.0.0.1:{grpc_port}")
        g = grpcclient.InferInput("x", [1, 16], "FP32")
        g.set_data_from_numpy(x[:1])
        np.testing.assert_array_equal(grpc.infer("scale", [g]).as_numpy("y"), x[:1] * 2)
        # its metadata and config as tritonserver 2.51 shows a Python model's
        assert http.get_model_metadata("scale")["platform"] == "python"
        config = http.get_model_config("scale")
        assert (config["platform"], config["backend"], config["default_model_filename"]) == ("", "python", "model.py")
        assert config["instance_group"][0]["count"] == 1
        # the model's own refusals, in its words; the server serves on
        bad = httpclient.InferInput("x", [1, 16], "FP32")
        bad.set_data_from_numpy(np.full((1, 16), np.nan, np.float32))
        with pytest.raises(InferenceServerException) as caught:
            http.infer("scale", [bad])
        assert (caught.value.status(), caught.value.message()) == ("400", "x holds NaN")  # its words as they are
        bad.set_data_from_numpy(np.full((1, 16), -1000, np.float32))
        with pytest.raises(InferenceServerException, match=r"Failed to process the request\(s\) for model .scale_0., message: ValueError: x is too small") as caught:
            http.infer("scale", [bad])
        assert caught.value.status() == "500"
        ok = httpclient.InferInput("x", [1, 16], "FP32")
        ok.set_data_from_numpy(x[:1])
        np.testing.assert_array_equal(http.infer("scale", [ok]).as_numpy("y"), x[:1] * 2)
        # in a gRPC stream, an answer that failed in the model's run (an error answered, or execute raised: the
        # batcher may run both in one execute, which fails both) names the model beside the request's id, as
        # tritonserver 2.51's do (helper-284; one its checks refuse carries the id alone: test_serve_grpc)
        sent = []
        for rid, value in (("nan", np.nan), ("small", -1000.0)):
            data = np.full((1, 16), value, np.float32).tobytes()
            r = pb.ModelInferRequest(model_name="scale", id=rid, raw_input_contents=[data])
            r.inputs.add(name="x", datatype="FP32", shape=[1, 16])
            sent.append(r)
        with grpc_module.insecure_channel(f"127.0.0.1:{grpc_port}") as channel:
            answers = list(pb_grpc.GRPCInferenceServiceStub(channel).ModelStreamInfer(iter(sent), timeout=30))
        assert [(a.infer_response.id, a.infer_response.model_name, bool(a.error_message)) for a in answers] == [
            ("nan", "scale", True), ("small", "scale", True)
        ]
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
    assert '"msg":"scale finalized"' in (tmp_path / "log").read_text()  # finalize ran at the stop


FINALIZED = """
import os
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args):
        self.folder = args["model_repository"]

    def execute(self, requests):
        return []

    def finalize(self):
        open(os.path.join(self.folder, "finalized"), "w").close()
"""


RAISES = """
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):
        raise ValueError("no")
"""


def test_an_instance_kept_by_a_reload_names_the_repository_s_files_in_its_at_lines(tmp_path: Path) -> None:
    """helper-229: a reload that changes only the instance count keeps the model's instance, which runs the copy
    the earlier load unpacked: its At: lines named that copy, the new instance's the repository's file."""
    repo = tmp_path / "models"
    config = ('backend: "python"\ninput [ { name: "x", data_type: TYPE_FP32, dims: [ 1 ] } ]\n'
              'output [ { name: "y", data_type: TYPE_FP32, dims: [ 1 ] } ]\n'
              "instance_group [ { count: N } ]\n")  # fmt: skip
    python_folder(repo, "r", RAISES, config.replace("N", "1"))
    x = httpclient.InferInput("x", [1], "FP32")
    x.set_data_from_numpy(np.ones(1, np.float32))
    with served(tmp_path, repo, "--model-control-mode", "explicit", "--load-model", "r") as client:
        (repo / "r" / "config.pbtxt").write_text(config.replace("N", "2"))
        client.load_model("r")
        seen = set()
        for _ in range(8):  # both instances, the kept one and the new one
            with pytest.raises(InferenceServerException) as caught:
                client.infer("r", [x])
            seen.add(caught.value.message().split("\n\nAt:\n")[1])
    assert seen == {f"  {repo / 'r' / '1' / 'model.py'}(7): execute\n"}, seen


def test_a_start_that_fails_finalizes_the_models_it_loaded(tmp_path: Path) -> None:
    """helper-229: a start that failed once every model was tried left the models it loaded unclosed (a Python
    model's finalize never ran, its unpacked copy stayed), where Triton's failed start unloads them."""
    repo = tmp_path / "models"
    python_folder(repo, "p", FINALIZED, 'backend: "python"\ninput [ { name: "x", data_type: TYPE_FP32, dims: [ 1 ] } ]'
                  '\noutput [ { name: "y", data_type: TYPE_FP32, dims: [ 1 ] } ]\n')  # fmt: skip
    (repo / "z_bad" / "1").mkdir(parents=True)
    (repo / "z_bad" / "1" / "model.onnx").write_bytes(b"not onnx")
    line = refused_after_loads(tmp_path, ["--model-repository", str(repo), "--allow-python-models"])
    assert "model 'z_bad'" in line, line
    assert (repo / "p" / "finalized").exists()


def test_without_the_flag_a_python_model_is_refused_however_it_comes(tmp_path: Path) -> None:
    repo = repository(tmp_path / "models")
    line = refused_after_loads(tmp_path, ["--model-repository", str(repo)])  # once the others were tried
    assert line.startswith("error: --model-repository"), line  # the cause first, then the ensemble that runs it
    assert "it is a model for Triton's Python backend" in line and "--allow-python-models" in line
    # a load's files packed as the store packs a Python model: refused too, never run
    (tmp_path / "empty").mkdir()
    port = free_port()
    args = ["--model-repository", str(tmp_path / "empty"), "--model-control-mode", "explicit", "--grpc-port", "-1"]
    with cli_server(tmp_path / "home2", args, port, tmp_path / "log2"):
        config = {"max_batch_size": 0, "input": [{"name": "x", "data_type": "TYPE_FP32", "dims": [16]}],
                  "output": [{"name": "y", "data_type": "TYPE_FP32", "dims": [16]}]}  # fmt: skip
        zipped = python_model.pack(repo / "scale", 1, "evil", config, "model.py", tmp_path / "z")
        client = httpclient.InferenceServerClient(f"127.0.0.1:{port}")
        with pytest.raises(InferenceServerException) as caught:
            client.load_model("evil", config=json.dumps(config), files={"file:1/model.onnx": zipped.read_bytes()})
        assert "model 'evil' is a Python model" in caught.value.message()
        assert "start the server with --allow-python-models" in caught.value.message()
        assert not client.is_model_ready("evil")
        # its own files (model.py) are refused before they are even unpacked
        python = json.dumps({**config, "backend": "python"})
        with pytest.raises(InferenceServerException, match=r"model 'evil' is a Python model.*--allow-python-models"):
            client.load_model("evil", config=python, files={"file:1/model.py": (repo / "scale" / "1" / "model.py").read_bytes()})
        with pytest.raises(InferenceServerException, match=r"model 'evil' is a Python model.*--allow-python-models"):
            # a config naming no backend: its model.py makes it one, as Triton's auto-complete finds it
            client.load_model("evil", config=json.dumps(config), files={"file:1/model.py": b"raise SystemExit"})


APART = '''
import json
import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):
        responses = []
        for request in requests:
            x = pb_utils.get_input_tensor_by_name(request, "x").as_numpy()
            if request.request_id() == "bad":
                responses.append(pb_utils.InferenceResponse(error=pb_utils.TritonError("bad one", pb_utils.TritonError.INVALID_ARG)))
                continue
            seen = json.dumps([request.request_id(), json.loads(request.parameters()), len(requests)])
            responses.append(pb_utils.InferenceResponse([
                pb_utils.Tensor("y", x * float(json.loads(request.parameters())["k"])),
                pb_utils.Tensor("seen", np.array([[seen.encode()]] * len(x), dtype=np.object_)),
            ]))
        return responses
'''


def test_a_batch_of_a_python_model_reaches_execute_as_its_requests_each_with_its_facts(tmp_path: Path) -> None:
    repo = tmp_path / "models"
    python_folder(repo, "apart", APART,
        'backend: "python"\nmax_batch_size: 8\ninput [ { name: "x", data_type: TYPE_FP32, dims: [ 2 ] } ]\n'
        'output [ { name: "y", data_type: TYPE_FP32, dims: [ 2 ] }, { name: "seen", data_type: TYPE_STRING, '
        "dims: [ 1 ] } ]\ndynamic_batching { max_queue_delay_microseconds: 300000 }\n"
    )
    port = free_port()
    args = ["--model-repository", str(repo), "--allow-python-models", "--grpc-port", "-1"]
    with cli_server(tmp_path / "home", args, port, tmp_path / "log"):
        client = httpclient.InferenceServerClient(f"127.0.0.1:{port}", concurrency=4)
        pending = []
        for i in range(4):  # sent together: one batch, within the model's 300 ms queue delay
            x = httpclient.InferInput("x", [1 + i % 2, 2], "FP32")
            x.set_data_from_numpy(np.full((1 + i % 2, 2), i, np.float32))
            rid = "bad" if i == 2 else f"r{i}"
            pending.append(client.async_infer("apart", [x], request_id=rid, parameters={"k": i + 1}))
        answers = []
        for i, p in enumerate(pending):
            if i == 2:  # its error response fails it alone, with its code's status
                with pytest.raises(InferenceServerException) as caught:
                    p.get_result()
                assert (caught.value.status(), caught.value.message()) == ("400", "bad one")
                continue
            result = p.get_result()
            np.testing.assert_array_equal(result.as_numpy("y"), np.full((1 + i % 2, 2), i * (i + 1), np.float32))
            answers.append(json.loads(result.as_numpy("seen")[0, 0]))
        assert [a[:2] for a in answers] == [["r0", {"k": 1}], ["r1", {"k": 2}], ["r3", {"k": 4}]]
        assert max(a[2] for a in answers) > 1  # execute got the batch's requests apart, not one merged request
        stats = client.get_inference_statistics("apart")["model_stats"][0]
        assert stats["inference_stats"]["success"]["count"] == 3 and stats["inference_stats"]["fail"]["count"] == 1
        assert stats["execution_count"] < 4


RAGGED = """
import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):
        return [pb_utils.InferenceResponse([pb_utils.Tensor("y", pb_utils.get_input_tensor_by_name(r, "x").as_numpy())])
                for r in requests]
"""


def test_a_python_models_ragged_input_batches_requests_of_any_length_there(tmp_path: Path) -> None:
    """Triton's dynamic batcher batches requests whose ragged input (allow_ragged_batch) differs in shape, and its
    Python backend hands execute each as sent: tritonserver 2.51 ran two of 16 and 8 elements as one batch of 2
    at once, where polystack batched them by shape, and the second waited out the queue delay alone (helper-192's
    L0_batcher run)."""
    repo = tmp_path / "models"
    python_folder(repo, "ragged", RAGGED,
        'backend: "python"\nmax_batch_size: 8\ninput [ { name: "x", data_type: TYPE_FP32, dims: [ -1 ], '
        'allow_ragged_batch: true } ]\noutput [ { name: "y", data_type: TYPE_FP32, dims: [ -1 ] } ]\n'
        "dynamic_batching { preferred_batch_size: [ 2 ], max_queue_delay_microseconds: 20000000 }\n"
    )
    port = free_port()
    args = ["--model-repository", str(repo), "--allow-python-models", "--grpc-port", "-1"]
    with cli_server(tmp_path / "home", args, port, tmp_path / "log"):
        client = httpclient.InferenceServerClient(f"127.0.0.1:{port}", concurrency=2)
        assert client.get_model_config("ragged")["input"][0]["allow_ragged_batch"] is True  # shown as given
        sent = time.monotonic()
        pending = []
        for n in (16, 8):  # sent together: one batch of 2, which leaves at once (its preferred size)
            x = httpclient.InferInput("x", [1, n], "FP32")
            x.set_data_from_numpy(np.arange(n, dtype=np.float32).reshape(1, n))
            pending.append(client.async_infer("ragged", [x]))
        for n, p in zip((16, 8), pending, strict=True):
            np.testing.assert_array_equal(p.get_result().as_numpy("y"), np.arange(n, dtype=np.float32).reshape(1, n))
        assert time.monotonic() - sent < 15  # not the 20 s queue delay
        stats = client.get_inference_statistics("ragged")["model_stats"][0]
        assert stats["execution_count"] == 1
        assert [(b["batch_size"], b["compute_infer"]["count"]) for b in stats["batch_stats"]] == [(2, 1)]


NAMES = """
import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):
        out = []
        for r in requests:
            names = ",".join(t.name() for t in r.inputs()).encode()
            x = pb_utils.get_input_tensor_by_name(r, "x").as_numpy()
            out.append(pb_utils.InferenceResponse([pb_utils.Tensor("y", x[:, :1]),
                                                   pb_utils.Tensor("names", np.array([[names]], np.object_))]))
        return out
"""


def test_a_python_models_batch_inputs_and_outputs_load_and_are_shown_but_not_applied(tmp_path: Path) -> None:
    """Triton's Python backend computes no batch input and scatters no batch output: tritonserver 2.51 loads a
    Python model whose config has them, hands execute each request as sent (no batch input among its tensors) and
    answers what execute returns; GET config shows both as given. polystack refused the load (helper-195)."""
    repo = tmp_path / "models"
    batch_io = (
        'batch_input [ { kind: BATCH_ELEMENT_COUNT, target_name: "COUNT", data_type: TYPE_INT32, source_input: "x" },'
        ' { kind: BATCH_ITEM_SHAPE, target_name: [ "S1", "S2" ], data_type: TYPE_FP32, source_input: "x" } ]\n'
        'batch_output [ { kind: BATCH_SCATTER_WITH_INPUT_SHAPE, target_name: "y", source_input: "x" } ]\n'
    )
    python_folder(repo, "bio", NAMES,
        'backend: "python"\nmax_batch_size: 8\ninput [ { name: "x", data_type: TYPE_FP32, dims: [ -1 ], '
        'allow_ragged_batch: true } ]\noutput [ { name: "y", data_type: TYPE_FP32, dims: [ -1 ] },'
        ' { name: "names", data_type: TYPE_STRING, dims: [ 1 ] } ]\n' + batch_io
    )
    port = free_port()
    args = ["--model-repository", str(repo), "--allow-python-models", "--grpc-port", "-1"]
    with cli_server(tmp_path / "home", args, port, tmp_path / "log"):
        client = httpclient.InferenceServerClient(f"127.0.0.1:{port}")
        config = client.get_model_config("bio")
        assert config["batch_input"] == [
            {"kind": "BATCH_ELEMENT_COUNT", "target_name": ["COUNT"], "data_type": "TYPE_INT32", "source_input": ["x"]},
            {"kind": "BATCH_ITEM_SHAPE", "target_name": ["S1", "S2"], "data_type": "TYPE_FP32", "source_input": ["x"]},
        ]
        assert config["batch_output"] == [
            {"target_name": ["y"], "kind": "BATCH_SCATTER_WITH_INPUT_SHAPE", "source_input": ["x"]}
        ]
        assert [i["name"] for i in client.get_model_metadata("bio")["inputs"]] == ["x"]
        x = httpclient.InferInput("x", [1, 3], "FP32")
        x.set_data_from_numpy(np.array([[5, 6, 7]], np.float32))
        answer = client.infer("bio", [x])
        assert answer.as_numpy("names").tolist() == [[b"x"]]  # no batch input reaches execute
        np.testing.assert_array_equal(answer.as_numpy("y"), [[5]])  # as execute gave it, not scattered to [1, 3]


def test_an_output_the_model_lacks_is_refused_before_it_runs_and_before_the_inputs_are_checked(tmp_path: Path) -> None:
    """As tritonserver 2.51 checks a request's outputs (helper-199's L0_output_name run and probes): a Python model's
    request asking for an output it lacks is refused 400 before execute runs (polystack ran it, then answered 500),
    and an output and an input that are both wrong are refused for the output (polystack named the input)."""
    repo = tmp_path / "models"
    config = (
        'backend: "python"\nmax_batch_size: 8\ninput [ { name: "x", data_type: TYPE_FP32, dims: [ -1 ] } ]\n'
        'output [ { name: "y", data_type: TYPE_FP32, dims: [ -1 ] }, { name: "names", data_type: TYPE_STRING, '
        "dims: [ 1 ] } ]\n"
    )
    python_folder(repo, "alone", NAMES, config)
    python_folder(repo, "batched", NAMES, config + "dynamic_batching { }\n")
    (repo / "mlp" / "1").mkdir(parents=True)
    mlp_onnx(repo / "mlp" / "1" / "model.onnx")
    with served(tmp_path, repo) as client:
        for model in ("alone", "batched"):
            x = httpclient.InferInput("x", [1, 2], "FP32")
            x.set_data_from_numpy(np.ones((1, 2), np.float32))
            dummy = [httpclient.InferRequestedOutput("DUMMY")]
            words = f"unexpected inference output 'DUMMY' for model '{model}'"
            with pytest.raises(InferenceServerException, match=words) as e:
                client.infer(model, [x], outputs=dummy)
            assert e.value.status() == "400"
            assert client.get_inference_statistics(model)["model_stats"][0]["execution_count"] == 0  # never ran
            wrong = httpclient.InferInput("BOGUS", [1, 2], "FP32")
            wrong.set_data_from_numpy(np.ones((1, 2), np.float32))
            with pytest.raises(InferenceServerException, match="unexpected inference output 'DUMMY'"):
                client.infer(model, [wrong], outputs=dummy)
        wrong = httpclient.InferInput("BOGUS", [1, 16], "FP32")
        wrong.set_data_from_numpy(np.ones((1, 16), np.float32))
        with pytest.raises(InferenceServerException, match="unexpected inference output 'DUMMY' for model 'mlp'"):
            client.infer("mlp", [wrong], outputs=[httpclient.InferRequestedOutput("DUMMY")])


TOGETHER = '''
import os, time
import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args):
        self.name = args["model_instance_name"]

    def execute(self, requests):
        folder = os.environ["RENDEZVOUS"]
        open(os.path.join(folder, self.name), "w").close()
        deadline = time.monotonic() + 10
        while len(os.listdir(folder)) < 2 and time.monotonic() < deadline:  # until both instances run
            time.sleep(0.01)
        together = np.array([[float(len(os.listdir(folder)))]], dtype=np.float32)
        return [pb_utils.InferenceResponse([pb_utils.Tensor("y", together)]) for _ in requests]
'''


def test_a_python_models_instances_serve_requests_at_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    repo = tmp_path / "models"
    python_folder(repo, "together", TOGETHER,
        'backend: "python"\ninput [ { name: "x", data_type: TYPE_FP32, dims: [ 1 ] } ]\n'
        'output [ { name: "y", data_type: TYPE_FP32, dims: [ 1, 1 ] } ]\n'
        "instance_group [ { count: 2, kind: KIND_CPU } ]\n"
    )
    (tmp_path / "rendezvous").mkdir()
    monkeypatch.setenv("RENDEZVOUS", str(tmp_path / "rendezvous"))
    port = free_port()
    args = ["--model-repository", str(repo), "--allow-python-models", "--grpc-port", "-1"]
    with cli_server(tmp_path / "home", args, port, tmp_path / "log"):
        client = httpclient.InferenceServerClient(f"127.0.0.1:{port}", concurrency=2)
        x = httpclient.InferInput("x", [1], "FP32")
        x.set_data_from_numpy(np.ones(1, np.float32))
        pending = [client.async_infer("together", [x]) for _ in range(2)]
        assert [float(p.get_result().as_numpy("y")[0, 0]) for p in pending] == [2.0, 2.0]  # both ran at once
    assert sorted(p.name for p in (tmp_path / "rendezvous").iterdir()) == ["together_0_0", "together_0_1"]


WHO = '''
import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args):
        self.name = args["model_instance_name"]

    def execute(self, requests):
        return [pb_utils.InferenceResponse([pb_utils.Tensor("who", np.array([[self.name]], dtype=object))])
                for _ in requests]
'''


@pytest.mark.parametrize("batching", ["", "dynamic_batching { }\n"])
def test_under_the_rate_limiter_a_python_model_runs_on_the_instance_it_charged(tmp_path: Path, batching: str) -> None:
    """Triton's rate limiter runs the instance that weighs least (its runs times its group's priority): here the
    first group's (priority 1) over the second's (priority 10), request after request. Its resources and
    priority are that instance's, so the call runs there, not on whichever instance was idle longest (polystack
    alternated light and heavy before). tritonserver 2.51, 12 requests: with dynamic batching all on light; without,
    the second on heavy (light was still being given back), the others on light."""
    repo = tmp_path / "models"
    python_folder(repo, "who", WHO,
        'backend: "python"\nmax_batch_size: 4\ninput [ { name: "x", data_type: TYPE_FP32, dims: [ 1 ] } ]\n'
        'output [ { name: "who", data_type: TYPE_STRING, dims: [ 1 ] } ]\n' + batching +
        'instance_group [ { name: "light", count: 1, kind: KIND_CPU, rate_limiter { priority: 1 } },\n'
        '  { name: "heavy", count: 1, kind: KIND_CPU, rate_limiter { priority: 10 } } ]\n'
    )  # fmt: skip
    port = free_port()
    args = ["--model-repository", str(repo), "--allow-python-models", "--grpc-port", "-1", "--rate-limit",
            "execution_count"]  # fmt: skip
    with cli_server(tmp_path / "home", args, port, tmp_path / "log"):
        client = httpclient.InferenceServerClient(f"127.0.0.1:{port}")
        x = httpclient.InferInput("x", [1, 1], "FP32")
        x.set_data_from_numpy(np.ones((1, 1), np.float32))
        ran = [client.infer("who", [x]).as_numpy("who")[0, 0].decode() for _ in range(6)]
    assert ran == ["light_0"] * 6


def test_a_loads_config_is_the_one_initialize_sees(tmp_path: Path) -> None:
    repo, port = repository(tmp_path / "models"), free_port()
    args = ["--model-repository", str(repo), "--allow-python-models", "--grpc-port", "-1", "--model-control-mode",
            "explicit", "--load-model", "scale"]  # fmt: skip
    with cli_server(tmp_path / "home", args, port, tmp_path / "log"):
        client = httpclient.InferenceServerClient(f"127.0.0.1:{port}")
        x = np.linspace(-1, 1, 16, dtype=np.float32).reshape(1, 16)

        def scaled() -> np.ndarray:
            i = httpclient.InferInput("x", [1, 16], "FP32")
            i.set_data_from_numpy(x)
            return client.infer("scale", [i]).as_numpy("y")

        np.testing.assert_array_equal(scaled(), x * 2)  # the folder's factor
        config = {"backend": "python", "max_batch_size": 8, "input": [{"name": "x", "data_type": "TYPE_FP32",
                  "dims": [16]}], "output": [{"name": "y", "data_type": "TYPE_FP32", "dims": [16]}],
                  "parameters": {"factor": {"string_value": "3"}}}  # fmt: skip
        client.load_model("scale", config=json.dumps(config))
        np.testing.assert_array_equal(scaled(), x * 3)  # the load's, as Triton hands it to initialize
        assert client.get_model_config("scale")["parameters"]["factor"]["string_value"] == "3"



def test_a_load_config_whose_fields_hold_the_wrong_kind_of_value_is_a_400_and_the_model_serves_on(
    tmp_path: Path,
) -> None:
    """helper-282: a load's config for a Python model with a tensor that is not an object, a data_type that is a
    list, dims that are not numbers, or parameters that are a list was a 500 and a traceback in the log."""
    repo, port = repository(tmp_path / "models"), free_port()
    args = ["--model-repository", str(repo), "--allow-python-models", "--grpc-port", "-1", "--model-control-mode",
            "explicit", "--load-model", "scale"]  # fmt: skip
    with cli_server(tmp_path / "home", args, port, tmp_path / "log"):
        client = httpclient.InferenceServerClient(f"127.0.0.1:{port}")
        good = {"name": "x", "data_type": "TYPE_FP32", "dims": [16]}
        for config, says in (
            ({"input": [5]}, "is not a tensor"),
            ({"input": [{**good, "data_type": ["TYPE_FP32"]}]}, "needs a name, a data_type"),
            ({"input": [{**good, "dims": [{}]}]}, "is not a whole number"),
            ({"max_batch_size": [1]}, "is not a whole number"),
            ({"parameters": [1]}, "parameters"),
        ):
            with pytest.raises(InferenceServerException) as refused:
                client.load_model("scale", config=json.dumps({"backend": "python", **config}))
            assert "400" in str(refused.value.status()) and says in refused.value.message(), refused.value.message()
        i = httpclient.InferInput("x", [1, 16], "FP32")
        i.set_data_from_numpy(np.ones((1, 16), np.float32))
        assert client.infer("scale", [i]).as_numpy("y").shape == (1, 16)
    assert "Traceback" not in (tmp_path / "log").read_text()


AUTO = '''
import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    @staticmethod
    def auto_complete_config(auto_complete_model_config):
        for name in ("INPUT0", "INPUT1"):  # one the config lists already must agree with it
            auto_complete_model_config.add_input({"name": name, "data_type": "TYPE_FP32", "dims": [4]})
        auto_complete_model_config.add_output({"name": "OUTPUT0", "data_type": "TYPE_FP32", "dims": [4]})
        auto_complete_model_config.set_max_batch_size(4)
        auto_complete_model_config.set_dynamic_batching()
        return auto_complete_model_config

    def execute(self, requests):
        return [pb_utils.InferenceResponse([pb_utils.Tensor("OUTPUT0",
                pb_utils.get_input_tensor_by_name(r, "INPUT0").as_numpy() + pb_utils.get_input_tensor_by_name(r, "INPUT1").as_numpy())])
                for r in requests]
'''


def test_a_python_models_auto_complete_config_completes_its_config_or_is_its_config(tmp_path: Path) -> None:
    repo = tmp_path / "models"
    for name in ("bare", "clash"):
        (repo / name / "1").mkdir(parents=True)
        (repo / name / "1" / "model.py").write_text(AUTO)  # "bare": no config at all, as Triton's example
    (repo / "clash" / "config.pbtxt").write_text(
        'backend: "python"\ninput [ { name: "INPUT0", data_type: TYPE_INT32, dims: [ 4 ] } ]\n'
    )
    port = free_port()
    args = ["--model-repository", str(repo), "--allow-python-models", "--grpc-port", "-1", "--model-control-mode",
            "explicit", "--load-model", "bare"]  # fmt: skip
    with cli_server(tmp_path / "home", args, port, tmp_path / "log"):
        client = httpclient.InferenceServerClient(f"127.0.0.1:{port}")
        config = client.get_model_config("bare")
        assert config["max_batch_size"] == 4 and "dynamic_batching" in config
        assert [(t["name"], t["dims"]) for t in config["input"]] == [("INPUT0", [4]), ("INPUT1", [4])]
        inputs = []
        for name in ("INPUT0", "INPUT1"):
            i = httpclient.InferInput(name, [2, 4], "FP32")
            i.set_data_from_numpy(np.ones((2, 4), np.float32))
            inputs.append(i)
        np.testing.assert_array_equal(client.infer("bare", inputs).as_numpy("OUTPUT0"), np.full((2, 4), 2, np.float32))
        with pytest.raises(InferenceServerException) as caught:  # the folder's config and the model disagree
            client.load_model("clash")
        assert "configuration expects datatype TYPE_INT32 for input 'INPUT0', model provides TYPE_FP32" in str(caught.value)


COMPLETING = '''
import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    @staticmethod
    def auto_complete_config(config):
        with open(COUNT, "a") as f:  # each call, as a model with side effects there sees them
            f.write("called\\n")
        config.add_input({"name": "x", "data_type": "TYPE_FP32", "dims": [4]})
        config.add_output({"name": "y", "data_type": "TYPE_FP32", "dims": [4]})
        return config

    def execute(self, requests):
        return [pb_utils.InferenceResponse([pb_utils.Tensor("y", pb_utils.get_input_tensor_by_name(r, "x").as_numpy())])
                for r in requests]
'''


def test_a_python_models_auto_complete_config_runs_once_for_each_load(tmp_path: Path) -> None:
    """As tritonserver 2.51 calls it (run here beside polystack): once at the start, once for a load with a config,
    once for a load with files; polystack called it twice for each (as the files were registered, as they loaded)."""
    count = tmp_path / "count"
    source = COMPLETING.replace("COUNT", repr(str(count)))
    repo = tmp_path / "models"
    python_folder(repo, "m", source, 'backend: "python"\nmax_batch_size: 4\n')
    port = free_port()
    args = ["--model-repository", str(repo), "--allow-python-models", "--grpc-port", "-1", "--model-control-mode",
            "explicit", "--load-model", "m"]  # fmt: skip

    def calls() -> int:
        return len(count.read_text().split())

    with cli_server(tmp_path / "home", args, port, tmp_path / "log"):
        client = httpclient.InferenceServerClient(f"127.0.0.1:{port}")
        assert calls() == 1
        client.load_model("m", config=json.dumps({"backend": "python", "max_batch_size": 2}))
        assert calls() == 2 and client.get_model_config("m")["max_batch_size"] == 2
        assert [i["name"] for i in client.get_model_config("m")["input"]] == ["x"]  # completed, as before
        files = {"file:1/model.py": source.encode()}
        client.load_model("f", config=json.dumps({"backend": "python", "max_batch_size": 2}), files=files)
        assert calls() == 3
        x = httpclient.InferInput("x", [1, 4], "FP32")
        x.set_data_from_numpy(np.ones((1, 4), np.float32))
        np.testing.assert_array_equal(client.infer("f", [x]).as_numpy("y"), np.ones((1, 4), np.float32))


def test_a_model_py_whose_config_names_no_backend_is_a_python_model_as_tritons_auto_complete_finds(
    tmp_path: Path,
) -> None:
    # helper-152: Triton's model-control examples load such a model with a config of max_batch_size alone, and a
    # folder's config without backend was taken for an ONNX model's ("holds model.py, which polystack does not serve")
    repo = tmp_path / "models"
    (repo / "simple" / "1").mkdir(parents=True)
    (repo / "simple" / "1" / "model.py").write_text(AUTO)
    (repo / "simple" / "config.pbtxt").write_text('name: "simple"\nmax_batch_size: 4\n')
    port = free_port()
    args = ["--model-repository", str(repo), "--allow-python-models", "--grpc-port", "-1", "--model-control-mode",
            "explicit", "--load-model", "simple"]  # fmt: skip
    with cli_server(tmp_path / "home", args, port, tmp_path / "log"):
        client = httpclient.InferenceServerClient(f"127.0.0.1:{port}")
        config = client.get_model_config("simple")
        assert config["backend"] == "python" and [t["name"] for t in config["input"]] == ["INPUT0", "INPUT1"]
        client.load_model("simple", config=json.dumps({"max_batch_size": 4, "parameters": {"k": {"string_value": "v"}}}))
        config = client.get_model_config("simple")
        assert config["backend"] == "python" and config["parameters"]["k"]["string_value"] == "v"
        inputs = []
        for name in ("INPUT0", "INPUT1"):
            i = httpclient.InferInput(name, [1, 4], "FP32")
            i.set_data_from_numpy(np.ones((1, 4), np.float32))
            inputs.append(i)
        np.testing.assert_array_equal(client.infer("simple", inputs).as_numpy("OUTPUT0"), np.full((1, 4), 2, np.float32))
        client.load_model("given", config=json.dumps({"max_batch_size": 4}), files={"file:1/model.py": AUTO.encode()})
        assert client.get_model_config("given")["backend"] == "python"
        np.testing.assert_array_equal(client.infer("given", inputs).as_numpy("OUTPUT0"), np.full((1, 4), 2, np.float32))


LINGERING = '''
import threading
import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args):
        self.stop = threading.Event()
        threading.Thread(target=self.stop.wait, name="model-own").start()  # not a daemon, never stopped

    def execute(self, requests):
        return [pb_utils.InferenceResponse([pb_utils.Tensor("y", pb_utils.get_input_tensor_by_name(r, "x").as_numpy())])
                for r in requests]
'''

WARM_LOAD = '''
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):
        pb_utils.load_model("lingering")  # in its warm-up: run beside the load it is part of
        return [pb_utils.InferenceResponse([pb_utils.Tensor("y", pb_utils.get_input_tensor_by_name(r, "x").as_numpy())])
                for r in requests]
'''


def test_a_model_that_loads_from_its_warm_up_loads_and_a_thread_it_leaves_does_not_hold_the_exit(
    tmp_path: Path,
) -> None:
    repo = tmp_path / "models"
    for name, source in (("lingering", LINGERING), ("warmload", WARM_LOAD)):
        python_folder(repo, name, source,
            'backend: "python"\ninput [ { name: "x", data_type: TYPE_FP32, dims: [ 2 ] } ]\n'
            'output [ { name: "y", data_type: TYPE_FP32, dims: [ 2 ] } ]\n'
        )
    with (repo / "warmload" / "config.pbtxt").open("a") as f:
        f.write('model_warmup [ { name: "w", batch_size: 1, inputs { key: "x" value: { data_type: TYPE_FP32, '
                "dims: [ 2 ], zero_data: true } } } ]\n")  # fmt: skip
    port = free_port()
    args = ["--model-repository", str(repo), "--allow-python-models", "--grpc-port", "-1", "--model-control-mode",
            "explicit", "--load-model", "lingering"]  # fmt: skip
    with cli_server(tmp_path / "home", args, port, tmp_path / "log") as proc:
        client = httpclient.InferenceServerClient(f"127.0.0.1:{port}", network_timeout=60)
        client.unload_model("lingering")
        client.load_model("warmload")  # its warm-up's load of lingering runs beside it (polystack refused it once)
        assert client.is_model_ready("warmload") and client.is_model_ready("lingering")
        client.unload_model("lingering")
        client.load_model("lingering")  # the loader is free: later loads run
        assert client.is_model_ready("lingering")
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0  # the model's own thread, never stopped, does not keep the process
    assert "exiting with threads still running that no model stopped" in (tmp_path / "log").read_text()


WARMED = '''
import json
import os

import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args):
        self.path = os.path.join(json.loads(args["model_config"])["parameters"]["dir"]["string_value"],
                                 "execute-" + args["model_instance_name"])

    def execute(self, requests):
        shapes = [list(pb_utils.get_input_tensor_by_name(r, "x").shape()) for r in requests]
        with open(self.path, "a") as f:
            f.write(json.dumps(shapes) + "\\n")
        return [pb_utils.InferenceResponse([pb_utils.Tensor("y", pb_utils.get_input_tensor_by_name(r, "x").as_numpy())])
                for r in requests]
'''


def test_a_warm_up_sample_reaches_each_instance_as_batch_size_requests_of_one_row(tmp_path: Path) -> None:
    """helper-173 (Triton's L0_warmup): tritonserver 2.51 warms each instance of a Python model, handing its execute
    batch_size requests of one row each; polystack ran the sample once, on one instance, as one request of
    batch_size rows, so the other instance's first request ran cold."""
    seen = tmp_path / "seen"
    seen.mkdir()
    repo = tmp_path / "models"
    python_folder(repo, "w", WARMED,
        'backend: "python"\nmax_batch_size: 4\ninput [ { name: "x", data_type: TYPE_FP32, dims: [ 3 ] } ]\n'
        'output [ { name: "y", data_type: TYPE_FP32, dims: [ 3 ] } ]\ninstance_group [ { kind: KIND_CPU, count: 2 } ]\n'
        f'parameters [ {{ key: "dir" value: {{ string_value: "{seen}" }} }} ]\n'
        'model_warmup [ { name: "s", batch_size: 2, count: 2, inputs { key: "x" value: { data_type: TYPE_FP32, '
        "dims: [ 3 ], zero_data: true } } } ]\n"
    )  # fmt: skip
    with served(tmp_path, repo) as client:
        assert client.is_model_ready("w")
        executes = {p.name: p.read_text().splitlines() for p in seen.iterdir()}
        assert executes == {f"execute-w_0_{i}": ["[[1, 3], [1, 3]]"] * 2 for i in range(2)}
        assert client.get_inference_statistics("w")["model_stats"][0]["execution_count"] == 0  # not requests


SAMPLED = """
import json

import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args):
        self.seen = json.loads(args["model_config"])["parameters"]["seen"]["string_value"]

    def execute(self, requests):
        with open(self.seen, "a") as f:
            for request in requests:
                f.write(json.dumps({t.name(): list(t.as_numpy().shape) for t in request.inputs()}) + "\\n")
        return [pb_utils.InferenceResponse([pb_utils.Tensor("OUTPUT0", np.array([7], np.float32))]) for _ in requests]
"""


def test_a_python_models_warmup_sample_may_hold_inputs_its_config_does_not_declare(tmp_path: Path) -> None:
    """helper-182 (L0_backend_python bls's "BLS warmup"): tritonserver 2.51 loads a Python model with no inputs whose
    warm-up sample gives INPUT0, handing its execute the sample as it is; polystack refused the load (400)."""
    repo, seen = tmp_path / "models", tmp_path / "seen.jsonl"
    python_folder(repo, "warm", SAMPLED,
        'backend: "python"\noutput [ { name: "OUTPUT0", data_type: TYPE_FP32, dims: [ 1 ] } ]\n'
        f'parameters [ {{ key: "seen" value: {{ string_value: "{seen}" }} }} ]\n'
        'model_warmup [ { name: "regular sample" batch_size: 1 inputs { key: "INPUT0" value: { data_type: TYPE_FP32 '
        'dims: 4 zero_data: false } } } ]\n')  # fmt: skip
    with served(tmp_path, repo) as client:
        assert client.is_model_ready("warm")
        assert [json.loads(line) for line in seen.read_text().splitlines()] == [{"INPUT0": [4]}]
        assert client.infer("warm", []).as_numpy("OUTPUT0").tolist() == [7.0]  # and its requests hold none


QUITS = '''
import sys

import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args):
        if args["model_name"] == "quits_at_start":
            sys.exit(5)

    EXECUTE

'''


def test_a_model_calling_sys_exit_fails_its_request_or_load_and_the_server_serves_on(tmp_path: Path) -> None:
    """helper-177: tritonserver 2.51 answers a model's sys.exit in execute with a 500 (SystemExit: 3) and serves on;
    it ended polystack's process (SystemExit passed every handler), so every later request was refused."""
    repo = tmp_path / "models"
    config = ('backend: "python"\ninput [ { name: "x", data_type: TYPE_FP32, dims: [ 1 ] } ]\n'
              'output [ { name: "y", data_type: TYPE_FP32, dims: [ 1 ] } ]\n')  # fmt: skip
    sync = QUITS.replace("EXECUTE", "def execute(self, requests):\n        sys.exit(3)")
    python_folder(repo, "quits", sync, config)
    python_folder(repo, "aquits", QUITS.replace("EXECUTE", "async def execute(self, requests):\n        sys.exit(4)"), config)
    python_folder(repo, "quits_at_start", sync, config)
    with served(tmp_path, repo, "--model-control-mode", "explicit", "--load-model", "quits", "--load-model", "aquits") as client:
        x = httpclient.InferInput("x", [1], "FP32")
        x.set_data_from_numpy(np.zeros(1, np.float32))
        for model, code in (("quits", 3), ("aquits", 4), ("quits", 3)):
            with pytest.raises(InferenceServerException, match=f"SystemExit: {code}"):
                client.infer(model, [x])
        with pytest.raises(InferenceServerException, match="failed in initialize: SystemExit: 5"):
            client.load_model("quits_at_start")
        assert client.is_server_live() and client.is_model_ready("quits") and client.is_model_ready("aquits")


HALVED = '''
import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):
        return [pb_utils.InferenceResponse([pb_utils.Tensor("y", pb_utils.get_input_tensor_by_name(r, "x").as_numpy()
                .astype(np.float16))]) for r in requests]
'''


def test_an_output_of_another_data_type_than_its_config_says_goes_to_the_client_as_the_model_gave_it(tmp_path: Path) -> None:
    """helper-177: tritonserver 2.51 sends a Python model's FP16 output its config calls FP32 as FP16 (its core
    takes a response's output by name alone); polystack failed the request (500)."""
    repo = tmp_path / "models"
    python_folder(repo, "halved", HALVED,
        'backend: "python"\nmax_batch_size: 4\ninput [ { name: "x", data_type: TYPE_FP32, dims: [ 2 ] } ]\n'
        'output [ { name: "y", data_type: TYPE_FP32, dims: [ 2 ] } ]\ndynamic_batching { }\n')  # fmt: skip
    port, grpc_port = free_port(), free_port()
    args = ["--model-repository", str(repo), "--allow-python-models", "--grpc-port", str(grpc_port)]
    x = np.array([[1.5, -2.25]], np.float32)
    with cli_server(tmp_path / "home", args, port, tmp_path / "log"):
        for client, binary in ((httpclient, True), (httpclient, False), (grpcclient, True)):
            with client.InferenceServerClient(f"127.0.0.1:{grpc_port if client is grpcclient else port}") as c:
                i = client.InferInput("x", [1, 2], "FP32")
                i.set_data_from_numpy(x, **({"binary_data": binary} if client is httpclient else {}))
                asked = [client.InferRequestedOutput("y", **({"binary_data": binary} if client is httpclient else {}))]
                y = c.infer("halved", [i], outputs=asked).as_numpy("y")
                assert y.dtype == np.float16 and y.tolist() == [[1.5, -2.25]]


READS_ITS_FILE = '''
import os
import threading

import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args):
        with open(os.path.join(pb_utils.get_model_dir(), "factor.txt")) as f:
            self.factor = float(f.read())
        seen = []
        worker = threading.Thread(target=lambda: seen.append(pb_utils.get_model_dir()))
        worker.start()
        worker.join()
        assert seen == [pb_utils.get_model_dir()]
        assert os.path.dirname(pb_utils.get_model_dir()) == args["model_repository"]

    def execute(self, requests):
        return [pb_utils.InferenceResponse([pb_utils.Tensor("y", pb_utils.get_input_tensor_by_name(r, "x").as_numpy()
                * self.factor)]) for r in requests]
'''


def test_a_model_reads_its_files_from_its_version_folder_as_get_model_dir_gives_it(tmp_path: Path) -> None:
    """helper-184: Triton's pb_utils.get_model_dir() (the version folder, where vLLM's model reads its model.json)
    was missing, so such a model failed its load."""
    repo = tmp_path / "models"
    python_folder(repo, "reads", READS_ITS_FILE,
        'backend: "python"\ninput [ { name: "x", data_type: TYPE_FP32, dims: [ 1 ] } ]\n'
        'output [ { name: "y", data_type: TYPE_FP32, dims: [ 1 ] } ]\n')  # fmt: skip
    (repo / "reads" / "1" / "factor.txt").write_text("2.5")
    with served(tmp_path, repo) as client:
        x = httpclient.InferInput("x", [1], "FP32")
        x.set_data_from_numpy(np.array([2.0], np.float32))
        assert client.infer("reads", [x]).as_numpy("y").tolist() == [5.0]


BACKEND_MODEL = """
import json
import os

import triton_python_backend_utils as pb_utils
from helpers.arith import add_sub


class TritonPythonModel:
    @staticmethod
    def auto_complete_config(config):  # as Triton's QA add_sub backend: its tensors where the config has none
        given = config.as_dict()
        for name in ("INPUT0", "INPUT1"):
            if name not in [t["name"] for t in given["input"]]:
                config.add_input({"name": name, "data_type": "TYPE_FP32", "dims": [4]})
        for name in ("OUTPUT0", "OUTPUT1"):
            if name not in [t["name"] for t in given["output"]]:
                config.add_output({"name": name, "data_type": "TYPE_FP32", "dims": [4]})
        return config

    def initialize(self, args):
        with open(os.path.join(pb_utils.get_model_dir(), "model.json")) as f:
            self.offset = json.load(f)["offset"]
        config = json.loads(args["model_config"])
        assert config["backend"] == "add_sub"  # its config, as Triton hands it
        assert pb_utils.get_output_config_by_name(config, "OUTPUT1")["dims"] == [4]  # completed, as Triton's is

    def execute(self, requests):
        responses = []
        for request in requests:
            a, b = (pb_utils.get_input_tensor_by_name(request, n).as_numpy() for n in ("INPUT0", "INPUT1"))
            added, subtracted = add_sub(a, b)
            responses.append(pb_utils.InferenceResponse([pb_utils.Tensor("OUTPUT0", added + self.offset),
                                                         pb_utils.Tensor("OUTPUT1", subtracted)]))
        return responses
"""


def test_a_model_of_a_python_based_backend_runs_its_backends_model_py_on_its_own_files(tmp_path: Path) -> None:
    """helper-184 (L0_backend_python python_based_backends): a config naming a backend whose folder in
    --backend-directory holds a model.py runs it, as Triton runs its vLLM backend, on the model's version folder
    (get_model_dir); polystack refused the backend's name, and so the whole start."""
    backends, repo = tmp_path / "backends", tmp_path / "models"
    (backends / "add_sub" / "helpers").mkdir(parents=True)
    (backends / "add_sub" / "model.py").write_text(BACKEND_MODEL)
    (backends / "add_sub" / "helpers" / "arith.py").write_text("def add_sub(a, b):\n    return a + b, a - b\n")
    config = ('backend: "add_sub"\ninput [ { name: "INPUT0", data_type: TYPE_FP32, dims: [ 4 ] }, '
              '{ name: "INPUT1", data_type: TYPE_FP32, dims: [ 4 ] } ]\noutput [ { name: "OUTPUT0", data_type: '
              'TYPE_FP32, dims: [ 4 ] }, { name: "OUTPUT1", data_type: TYPE_FP32, dims: [ 4 ] } ]\n')  # fmt: skip
    for name, offset in (("plus_ten", 10), ("plus_one", 1)):  # two models of the one backend, each its own files
        (repo / name / "1").mkdir(parents=True)
        (repo / name / "1" / "model.json").write_text(json.dumps({"offset": offset}))
        (repo / name / "config.pbtxt").write_text(config)
    args = ["--model-repository", str(repo), "--grpc-port", "-1", "--backend-directory", str(backends)]
    assert "--allow-python-models" in refused_at_start(tmp_path, args)  # it runs Python code, as a Python model does
    port = free_port()
    flags = [*args, "--allow-python-models", "--model-control-mode", "explicit", "--load-model", "*"]
    with cli_server(tmp_path / "home", flags, port, tmp_path / "log"), httpclient.InferenceServerClient(f"127.0.0.1:{port}") as client:
        inputs = [httpclient.InferInput(f"INPUT{i}", [4], "FP32") for i in (0, 1)]
        for tensor in inputs:
            tensor.set_data_from_numpy(np.ones(4, np.float32))
        for name, offset in (("plus_ten", 10), ("plus_one", 1)):
            answer = client.infer(name, inputs)
            assert answer.as_numpy("OUTPUT0").tolist() == [2.0 + offset] * 4
            assert answer.as_numpy("OUTPUT1").tolist() == [0.0] * 4
        assert client.get_model_config("plus_ten")["backend"] == "python"  # what runs it here (README)
        # a load whose config names the backend, as Triton's QA test loads its model (helper-188): refused before
        (repo / "plus_ten" / "2").mkdir()
        (repo / "plus_ten" / "2" / "model.json").write_text(json.dumps({"offset": 20}))
        # and with no tensors: the model's auto_complete_config completes the load's config, as Triton's load does
        given = {"backend": "add_sub", "version_policy": {"latest": {"num_versions": 2}}}
        client.load_model("plus_ten", config=json.dumps(given))
        for version, offset in (("1", 10), ("2", 20)):
            assert client.infer("plus_ten", inputs, model_version=version).as_numpy("OUTPUT0").tolist() == [2.0 + offset] * 4
        with pytest.raises(InferenceServerException, match="backend 'other'"):  # another backend's name: refused
            client.load_model("plus_one", config=json.dumps({**given, "backend": "other"}))
        assert client.infer("plus_one", inputs).as_numpy("OUTPUT0").tolist() == [3.0] * 4  # served on as it was
    without = refused_at_start(tmp_path, ["--model-repository", str(repo), "--grpc-port", "-1", "--allow-python-models"])
    assert "asks for 'add_sub', which polystack does not run" in without  # no such backend where Triton looks


SELF_TESTING = '''
import threading
import unittest

import numpy as np
import triton_python_backend_utils as pb_utils

VERDICT = VERDICT_VALUE


class Checks(unittest.TestCase):
    def test_its_own_verdict(self):
        self.assertTrue(VERDICT)


class TritonPythonModel:
    def execute(self, requests):
        results = []
        # the QA models' way: the tests of its own file, by the name model, in execute and in a thread it starts
        results.append(unittest.main("model", exit=False).result)
        worker = threading.Thread(target=lambda: results.append(unittest.main("model", exit=False).result))
        worker.start()
        worker.join()
        ran = np.array([r.testsRun for r in results], np.int32)
        passed = np.array([r.wasSuccessful() for r in results])
        return [pb_utils.InferenceResponse([pb_utils.Tensor("ran", ran), pb_utils.Tensor("passed", passed)])
                for _ in requests]
'''


def test_a_python_model_runs_the_tests_of_its_own_file_by_the_name_model(tmp_path: Path) -> None:
    """Triton's QA models run ``unittest.main("model", exit=False)`` in ``execute``: the stub imports the model's
    file as ``model`` in a process of its own, with no server flags in ``sys.argv``. Each model here finds its own
    tests (one passes them, one fails them); argparse refused polystack's flags and ``model`` was no module."""
    repo = tmp_path / "models"
    config = ('backend: "python"\ninput [ { name: "x", data_type: TYPE_FP32, dims: [ 1 ] } ]\n'
              'output [ { name: "ran", data_type: TYPE_INT32, dims: [ 2 ] }, '
              '{ name: "passed", data_type: TYPE_BOOL, dims: [ 2 ] } ]\n')  # fmt: skip
    for name, verdict in (("passes", "True"), ("fails", "False")):
        python_folder(repo, name, SELF_TESTING.replace("VERDICT_VALUE", verdict), config)
    with served(tmp_path, repo) as client:
        x = httpclient.InferInput("x", [1], "FP32")
        x.set_data_from_numpy(np.zeros(1, np.float32))
        for model, passed in (("passes", True), ("fails", False), ("passes", True)):
            answer = client.infer(model, [x])
            assert answer.as_numpy("ran").tolist() == [1, 1]
            assert answer.as_numpy("passed").tolist() == [passed, passed]


STUCK = """
import time

import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):
        time.sleep(60)  # stuck, as far as the test goes
        return [pb_utils.InferenceResponse([]) for _ in requests]
"""


def test_sigterm_ends_the_server_whose_model_is_stuck_in_an_execute_its_client_left(tmp_path: Path) -> None:
    """helper-182: the client gave up on a request whose execute never returned; on SIGTERM polystack drained (no
    request in flight), then waited for the execute for good, where tritonserver exits once its exit timeout passed."""
    repo = tmp_path / "models"
    python_folder(repo, "stuck", STUCK,
        'backend: "python"\ninput [ { name: "x", data_type: TYPE_FP32, dims: [ 1 ] } ]\n'
        'output [ { name: "y", data_type: TYPE_FP32, dims: [ 1 ] } ]\n')  # fmt: skip
    port = free_port()
    args = ["--model-repository", str(repo), "--allow-python-models", "--grpc-port", "-1", "--drain-timeout-s", "1"]
    with cli_server(tmp_path / "home", args, port, tmp_path / "log") as proc:
        x = httpclient.InferInput("x", [1], "FP32")
        x.set_data_from_numpy(np.zeros(1, np.float32))
        with httpclient.InferenceServerClient(f"127.0.0.1:{port}", network_timeout=1.0) as client, pytest.raises(Exception):  # noqa: B017
            client.infer("stuck", [x])  # the client gives up; the execute runs on
        proc.send_signal(signal.SIGTERM)
        started = time.monotonic()
        assert proc.wait(30) == 1  # past the timeout, as tritonserver exits with its model still live
        assert time.monotonic() - started < 15
    said = (tmp_path / "log").read_text()
    assert "exiting past the drain timeout (exit 1): closing the models took it, a model's call" in said


FORKS = """
import multiprocessing

import numpy as np
import triton_python_backend_utils as pb_utils


def call(x):
    answer = pb_utils.InferenceRequest(model_name="mlp", inputs=[pb_utils.Tensor("x", x)],
                                       requested_output_names=["y"]).exec()
    return answer.error().message() if answer.has_error() else "answered"


class TritonPythonModel:
    def execute(self, requests):
        x = pb_utils.get_input_tensor_by_name(requests[0], "x").as_numpy()
        with multiprocessing.get_context("fork").Pool(1) as pool:
            said = pool.apply_async(call, (x,)).get(timeout=20)
        return [pb_utils.InferenceResponse([pb_utils.Tensor("said", np.array([said.encode()], dtype=np.object_))])]
"""


def test_a_call_from_a_process_the_model_forked_fails_at_once_saying_why(tmp_path: Path) -> None:
    """helper-182 (Triton's bls test_multiprocess): a multiprocessing worker forked from the server's process calls
    another model; its copy of the server's loop runs in no thread, so the call waited for good."""
    repo = repository(tmp_path / "models")
    python_folder(repo, "forks", FORKS,
        'backend: "python"\ninput [ { name: "x", data_type: TYPE_FP32, dims: [ 1, 16 ] } ]\n'
        'output [ { name: "said", data_type: TYPE_STRING, dims: [ 1 ] } ]\n')  # fmt: skip
    port = free_port()
    args = ["--model-repository", str(repo), "--allow-python-models", "--grpc-port", "-1"]
    with cli_server(tmp_path / "home", args, port, tmp_path / "log"), httpclient.InferenceServerClient(f"127.0.0.1:{port}", network_timeout=60) as client:
        x = httpclient.InferInput("x", [1, 16], "FP32")
        x.set_data_from_numpy(np.ones((1, 16), np.float32))
        said = client.infer("forks", [x]).as_numpy("said")[0].decode()
        assert "from a process the model forked" in said, said


# runs a function of its own, which calls one of a module beside it, in a pool of processes started by START (spawn or
# forkserver: new interpreters, which import the model's modules by name), from initialize to finalize
STARTS = """
import multiprocessing

import numpy as np
import triton_python_backend_utils as pb_utils

from helper import times


def double(x):
    call = pb_utils.InferenceRequest(model_name="mlp", inputs=[pb_utils.Tensor("x", x)], requested_output_names=["y"])
    try:
        call.exec()
    except pb_utils.TritonModelException as e:
        return times(x, 2.0), pb_utils.get_model_dir(), e.message()
    return times(x, 2.0), pb_utils.get_model_dir(), "called"


class TritonPythonModel:
    def initialize(self, args):
        self.pool = multiprocessing.get_context("START").Pool(1)

    def execute(self, requests):
        x = pb_utils.get_input_tensor_by_name(requests[0], "x").as_numpy()
        y, folder, called = self.pool.apply_async(double, (x,)).get(timeout=30)
        said = np.array([folder.encode(), called.encode()], dtype=np.object_)
        return [pb_utils.InferenceResponse([pb_utils.Tensor("y", y), pb_utils.Tensor("said", said)])]

    def finalize(self):
        self.pool.terminate()
"""


@pytest.mark.parametrize("start", ["spawn", "forkserver"])
def test_a_pool_of_new_interpreters_runs_the_models_own_functions(tmp_path: Path, start: str) -> None:
    """A process started anew (not forked) unpickles a model's function by its module's name: polystack imports
    ``model.py`` under a package of its own, which such a process could not import, so its worker failed to read
    the task and the request waited for good (forkserver is Python 3.14's default). The package and
    ``triton_python_backend_utils`` are importable in it, with the model's folder on its path, as in Triton's stub;
    a call to another model from it fails saying why."""
    repo = repository(tmp_path / "models")
    python_folder(repo, "starts", STARTS.replace("START", start),
        'backend: "python"\ninput [ { name: "x", data_type: TYPE_FP32, dims: [ 1, 4 ] } ]\n'
        'output [ { name: "y", data_type: TYPE_FP32, dims: [ 1, 4 ] }, { name: "said", data_type: TYPE_STRING, '
        'dims: [ 2 ] } ]\n')  # fmt: skip
    (repo / "starts" / "1" / "helper.py").write_text("def times(x, k):\n    return x * k\n")
    with served(tmp_path, repo) as client:
        x = httpclient.InferInput("x", [1, 4], "FP32")
        x.set_data_from_numpy(np.arange(4, dtype=np.float32).reshape(1, 4))
        result = client.infer("starts", [x])
        np.testing.assert_array_equal(result.as_numpy("y"), np.arange(4, dtype=np.float32).reshape(1, 4) * 2)
        folder, called = (said.decode() for said in result.as_numpy("said"))
        assert (Path(folder) / "helper.py").read_text().startswith("def times")
        assert "in a process it started anew" in called, called  # a call to another model: none, saying why


# forks a child that is sent SIGTERM (as a multiprocessing pool's terminate() sends its workers) and says how it ended
TERMINATES = """
import os
import signal
import time

import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):
        pid = os.fork()
        if pid == 0:
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(5)
            os._exit(3)
        _, status = os.waitpid(pid, 0)
        said = "SIGTERM ended it" if os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGTERM else str(status)
        return [pb_utils.InferenceResponse([pb_utils.Tensor("said", np.array([said.encode()], dtype=np.object_))])]
"""


def test_a_process_the_model_forked_ends_at_sigterm_and_the_server_serves_on(tmp_path: Path) -> None:
    """A forked child inherited the server's SIGTERM handling: the signal did not end it (a pool's terminate() left
    its worker running) and reached the server's event loop through the wakeup socket they shared (CPython issue
    94454), so the server drained as if it had been stopped. Children start with Python's own handling now."""
    repo = repository(tmp_path / "models")
    python_folder(repo, "terminates", TERMINATES,
        'backend: "python"\ninput [ { name: "x", data_type: TYPE_FP32, dims: [ 1, 16 ] } ]\n'
        'output [ { name: "said", data_type: TYPE_STRING, dims: [ 1 ] } ]\n')  # fmt: skip
    with served(tmp_path, repo) as client:
        x = httpclient.InferInput("x", [1, 16], "FP32")
        x.set_data_from_numpy(np.ones((1, 16), np.float32))
        for _ in range(2):
            assert client.infer("terminates", [x]).as_numpy("said")[0] == b"SIGTERM ended it"
            time.sleep(0.2)  # for a signal the loop was handed to be handled
            assert client.is_server_ready()


# keeps a pool of one forked worker from initialize to finalize; each request runs 1.5 s on it
POOLED = """
import multiprocessing
import time

import numpy as np
import triton_python_backend_utils as pb_utils


def slow(x):
    time.sleep(1.5)
    return x * 2


class TritonPythonModel:
    def initialize(self, args):
        self.pool = multiprocessing.get_context("fork").Pool(1)

    def execute(self, requests):
        x = pb_utils.get_input_tensor_by_name(requests[0], "x").as_numpy()
        return [pb_utils.InferenceResponse([pb_utils.Tensor("y", self.pool.apply(slow, (x,)))])]

    def finalize(self):
        self.pool.terminate()
"""


def test_ctrl_c_to_the_servers_process_group_lets_a_pool_worker_finish_the_request_it_runs(tmp_path: Path) -> None:
    """A terminal's Ctrl-C reaches every process of the server's group, its models' forked workers too (helper-247):
    ended by it, a worker lost the request it ran, which the drain then waited for until its timeout."""
    repo = repository(tmp_path / "models")
    python_folder(repo, "pooled", POOLED,
        'backend: "python"\ninput [ { name: "x", data_type: TYPE_FP32, dims: [ 2 ] } ]\n'
        'output [ { name: "y", data_type: TYPE_FP32, dims: [ 2 ] } ]\n')  # fmt: skip
    port = free_port()
    args = ["--model-repository", str(repo), "--allow-python-models", "--grpc-port", "-1", "--drain-timeout-s", "20"]
    with cli_server(tmp_path / "home", args, port, tmp_path / "log", own_group=True) as proc:
        client = httpclient.InferenceServerClient(f"127.0.0.1:{port}", network_timeout=60)
        x = httpclient.InferInput("x", [2], "FP32")
        x.set_data_from_numpy(np.ones(2, np.float32))
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            answer = pool.submit(client.infer, "pooled", [x])
            time.sleep(0.7)  # its worker runs it
            os.killpg(proc.pid, signal.SIGINT)
            assert answer.result(30).as_numpy("y").tolist() == [2.0, 2.0]
        assert proc.wait(30) == 0
    assert '"drained":true' in (tmp_path / "log").read_text()


# starts a process that is not a daemon and never stops it
LEAVES_A_PROCESS = """
import multiprocessing
import os
import time

import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args):
        child = multiprocessing.get_context("fork").Process(target=time.sleep, args=(120,))
        child.start()
        daemon = multiprocessing.get_context("fork").Process(target=time.sleep, args=(120,), daemon=True)
        daemon.start()
        with open(os.environ["CHILD_PID_FILE"], "w") as f:
            f.write(f"{child.pid} {daemon.pid}")

    def execute(self, requests):
        return [pb_utils.InferenceResponse([pb_utils.get_input_tensor_by_name(r, "x")]) for r in requests]
"""


def test_a_process_a_model_started_and_left_running_does_not_hold_the_servers_exit(tmp_path: Path) -> None:
    """multiprocessing waits at the interpreter's exit for every process that is not a daemon: one a model never
    stopped held a drained server for good (helper-247). It is left running, as Triton's stub leaves its own; a
    daemon process ends, as at any exit of Python's."""
    repo = repository(tmp_path / "models")
    python_folder(repo, "leaves", LEAVES_A_PROCESS,
        'backend: "python"\ninput [ { name: "x", data_type: TYPE_FP32, dims: [ 2 ] } ]\n'
        'output [ { name: "x", data_type: TYPE_FP32, dims: [ 2 ] } ]\n')  # fmt: skip
    pid_file = tmp_path / "child.pid"
    port = free_port()
    args = ["--model-repository", str(repo), "--allow-python-models", "--grpc-port", "-1"]
    try:
        with cli_server(tmp_path / "home", args, port, tmp_path / "log", env={"CHILD_PID_FILE": str(pid_file)}) as proc:
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(30) == 0
        assert "exiting with processes still running that a model started" in (tmp_path / "log").read_text()
        child, daemon = (int(pid) for pid in pid_file.read_text().split())
        os.kill(child, 0)  # still there
        assert until(lambda: not _running(daemon), 10), "the model's daemon process outlived the server"
    finally:
        for pid in pid_file.read_text().split() if pid_file.exists() else ():
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(pid), signal.SIGKILL)


def _running(pid: int) -> bool:
    """Whether process ``pid`` runs (a zombie, ended but not yet reaped, does not)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (FileNotFoundError, ProcessLookupError):
        return False


# forks a child in execute that outlives the server (a minute at most) and says its pid
OUTLIVES = """
import os
import time

import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):
        pid = os.fork()
        if pid == 0:
            time.sleep(60)
            os._exit(0)
        return [pb_utils.InferenceResponse([pb_utils.Tensor("pid", np.array([pid], dtype=np.int64))])]
"""


def test_a_process_forked_after_the_ports_opened_does_not_keep_them_when_it_outlives_the_server(
    tmp_path: Path,
) -> None:
    """A fork copies every descriptor: a model's child kept the server's listening port (and its clients'
    connections) after the server exited, so a server started again failed "address already in use" (helper-247)."""
    repo = repository(tmp_path / "models")
    python_folder(repo, "outlives", OUTLIVES,
        'backend: "python"\ninput [ { name: "x", data_type: TYPE_FP32, dims: [ 1 ] } ]\n'
        'output [ { name: "pid", data_type: TYPE_INT64, dims: [ 1 ] } ]\n')  # fmt: skip
    port, child = free_port(), 0
    args = ["--model-repository", str(repo), "--allow-python-models", "--grpc-port", "-1"]
    try:
        with cli_server(tmp_path / "home", args, port, tmp_path / "log") as proc:
            client = httpclient.InferenceServerClient(f"127.0.0.1:{port}", network_timeout=60)
            x = httpclient.InferInput("x", [1], "FP32")
            x.set_data_from_numpy(np.ones(1, np.float32))
            child = int(client.infer("outlives", [x]).as_numpy("pid")[0])
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(30) == 0
        assert _running(child)
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(("127.0.0.1", port), timeout=5).close()
    finally:
        with contextlib.suppress(ProcessLookupError):
            if child:
                os.kill(child, signal.SIGKILL)


DOUBLES = """
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):
        return [pb_utils.InferenceResponse([pb_utils.Tensor("OUTPUT", pb_utils.get_input_tensor_by_name(r, "INPUT")
                .as_numpy() * 2)]) for r in requests]
"""


def test_a_python_model_takes_a_ragged_input_as_each_request_sends_it(tmp_path: Path) -> None:
    """helper-186 (L0_dyna_sequence_batcher's ragged case): tritonserver 2.51 serves a Python model whose input
    allows a ragged batch, handing execute each request's tensor as sent; polystack checked it as ONNX Runtime's
    backend checks a ragged input ([-1]) and refused the load, and so the whole start."""
    repo = tmp_path / "models"
    python_folder(repo, "rag", DOUBLES,
        'backend: "python"\nmax_batch_size: 8\ndynamic_batching { max_queue_delay_microseconds: 100000 }\n'
        'input [ { name: "INPUT" data_type: TYPE_INT32 dims: [ -1 ] allow_ragged_batch: true } ]\n'
        'output [ { name: "OUTPUT" data_type: TYPE_INT32 dims: [ -1 ] } ]\n')  # fmt: skip
    port = free_port()
    args = ["--model-repository", str(repo), "--allow-python-models", "--grpc-port", "-1"]
    with cli_server(tmp_path / "home", args, port, tmp_path / "log"), httpclient.InferenceServerClient(f"127.0.0.1:{port}", concurrency=2) as client:
        sent = []
        for n in (3, 5):
            x = httpclient.InferInput("INPUT", [1, n], "INT32")
            x.set_data_from_numpy(np.arange(n, dtype=np.int32).reshape(1, n))
            sent.append(client.async_infer("rag", [x]))
        assert [a.get_result().as_numpy("OUTPUT").tolist() for a in sent] == [[[0, 2, 4]], [[0, 2, 4, 6, 8]]]


def test_a_python_model_loads_from_a_loads_files_its_modules_beside_it(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    port = free_port()
    args = ["--model-repository", str(tmp_path / "empty"), "--allow-python-models", "--grpc-port", "-1",
            "--model-control-mode", "explicit"]  # fmt: skip
    source = SCALE.replace("import json\n", "import json\nfrom helpers.factor import twice\n").replace(
        "(x * self.factor)", "twice(x * self.factor)"
    )
    files = {"file:3/model.py": source.encode(), "file:3/helpers/factor.py": b"def twice(x):\n    return x * 2\n",
             "file:3/helpers/__init__.py": b""}  # fmt: skip
    config = {"backend": "python", "max_batch_size": 8, "input": [{"name": "x", "data_type": "TYPE_FP32", "dims": [16]}],
              "output": [{"name": "y", "data_type": "TYPE_FP32", "dims": [16]}],
              "parameters": {"factor": {"string_value": "1.5"}}}  # fmt: skip
    with cli_server(tmp_path / "home", args, port, tmp_path / "log"):
        client = httpclient.InferenceServerClient(f"127.0.0.1:{port}")
        client.load_model("uploaded", config=json.dumps(config), files=files)
        x = np.ones((1, 16), np.float32)
        i = httpclient.InferInput("x", [1, 16], "FP32")
        i.set_data_from_numpy(x)
        np.testing.assert_array_equal(client.infer("uploaded", [i]).as_numpy("y"), x * 3)
        assert client.get_model_metadata("uploaded")["versions"] == ["3"]
        with pytest.raises(InferenceServerException, match="carries the files of one version directory"):
            client.load_model("uploaded", config=json.dumps(config), files={**files, "file:4/model.py": b""})
        # current Triton's model names (its QA ModelIDValidationTest, helper-188): files at "/1/...", and a name
        # holding what its Python backend refuses (its stub starts through a shell) refused in its words
        given = {"file:/1/model.py": files["file:3/model.py"], "file:/1/helpers/factor.py": files["file:3/helpers/factor.py"]}
        client.load_model("model-with-hyphens", config=json.dumps(config), files=given)
        np.testing.assert_array_equal(client.infer("model-with-hyphens", [i]).as_numpy("y"), x * 3)
        broken = {**given, "file:/1/model.py": b"name = 'model'test''\n"}  # checked before its file is read
        for name in ("model;test", "model$test", "model(test)", "model*test", "model!test", "model'test'"):
            for files_given in (given, broken):
                with pytest.raises(InferenceServerException, match="Invalid stub name: contains invalid characters") as e:
                    client.load_model(name, config=json.dumps(config), files=files_given)
                assert e.value.status() == "400" and not client.is_model_ready(name)
        assert client.is_model_ready("uploaded") and client.is_model_ready("model-with-hyphens")


SEQUENCE = '''
import json
import numpy as np
import triton_python_backend_utils as pb_utils

class TritonPythonModel:
    def initialize(self, args):
        self.totals = {}
    def execute(self, requests):
        out = []
        for r in requests:
            x = pb_utils.get_input_tensor_by_name(r, "x").as_numpy()
            start = pb_utils.get_input_tensor_by_name(r, "START")
            cid = r.correlation_id()
            s = start.as_numpy() if start is not None else None
            if s is not None and s.ravel()[0]:
                self.totals[cid] = 0.0
            self.totals[cid] = self.totals.get(cid, 0.0) + float(x.sum())
            facts = json.dumps([cid, r.flags(), None if s is None else int(s.ravel()[0])])
            out.append(pb_utils.InferenceResponse([pb_utils.Tensor("y", np.array([self.totals[cid]], dtype=np.float32)), pb_utils.Tensor("facts", np.array([facts.encode()], dtype=np.object_))]))
        return out
'''


def test_a_python_sequence_model_gets_its_control_inputs_and_each_requests_correlation_id_and_flags(
    tmp_path: Path,
) -> None:
    repo = tmp_path / "models"
    python_folder(repo, "acc", SEQUENCE,
        'backend: "python"\nmax_batch_size: 0\ninput [ { name: "x", data_type: TYPE_FP32, dims: [ 1 ] } ]\n'
        'output [ { name: "y", data_type: TYPE_FP32, dims: [ 1 ] }, { name: "facts", data_type: TYPE_STRING, '
        "dims: [ 1 ] } ]\nsequence_batching { control_input [ { name: \"START\", control [ { kind: "
        "CONTROL_SEQUENCE_START, int32_false_true: [ 0, 1 ] } ] } ] }\n"
    )
    port = free_port()
    args = ["--model-repository", str(repo), "--allow-python-models", "--grpc-port", "-1"]
    with cli_server(tmp_path / "home", args, port, tmp_path / "log"):
        client = httpclient.InferenceServerClient(f"127.0.0.1:{port}")

        def step(sequence: int, value: float, start: bool = False, end: bool = False) -> tuple[float, list]:
            x = httpclient.InferInput("x", [1], "FP32")
            x.set_data_from_numpy(np.array([value], np.float32))
            result = client.infer("acc", [x], sequence_id=sequence, sequence_start=start, sequence_end=end)
            return float(result.as_numpy("y")[0]), json.loads(result.as_numpy("facts")[0])

        assert step(7, 1, start=True) == (1.0, [7, 1, 1])  # correlation_id, flags (START), its START control
        assert step(7, 2) == (3.0, [7, 0, 0])
        assert step(7, 3, end=True) == (6.0, [7, 2, 0])  # END
        assert step(8, 10, start=True) == (10.0, [8, 1, 1])
        assert [t["name"] for t in client.get_model_metadata("acc")["inputs"]] == ["x"]  # its control is the server's


PINNED = '''
import numpy as np
import triton_python_backend_utils as pb_utils

class TritonPythonModel:
    def initialize(self, args):
        self.totals, self.me = {}, args["model_instance_name"]
    def execute(self, requests):
        out = []
        for r in requests:
            x = pb_utils.get_input_tensor_by_name(r, "x").as_numpy()
            if pb_utils.get_input_tensor_by_name(r, "START").as_numpy().ravel()[0]:
                self.totals[r.correlation_id()] = 0.0
            self.totals[r.correlation_id()] += float(x.sum())
            y = np.full(x.shape, self.totals[r.correlation_id()], np.float32)
            out.append(pb_utils.InferenceResponse([pb_utils.Tensor("y", y),
                pb_utils.Tensor("facts", np.full(x.shape, self.me.encode(), np.object_))]))
        return out
'''


def test_each_sequence_of_a_python_model_with_several_instances_runs_on_one_of_them_as_in_triton(
    tmp_path: Path,
) -> None:
    """Each instance keeps its own sequences' totals: a sequence whose requests ran on both would add up wrong."""
    repo = tmp_path / "models"
    python_folder(repo, "acc", PINNED,
        'backend: "python"\nmax_batch_size: 2\ninput [ { name: "x", data_type: TYPE_FP32, dims: [ 1 ] } ]\n'
        'output [ { name: "y", data_type: TYPE_FP32, dims: [ 1 ] }, { name: "facts", data_type: TYPE_STRING, '
        "dims: [ 1 ] } ]\nsequence_batching { control_input [ { name: \"START\", control [ { kind: "
        "CONTROL_SEQUENCE_START, int32_false_true: [ 0, 1 ] } ] } ] }\n"
        "instance_group [ { count: 2, kind: KIND_CPU } ]\n"
    )
    port = free_port()
    args = ["--model-repository", str(repo), "--allow-python-models", "--grpc-port", "-1"]
    with cli_server(tmp_path / "home", args, port, tmp_path / "log"):
        seen: dict[int, list[tuple[float, str]]] = {}

        def sequence(sid: int) -> None:  # 4 sequences at once, 2 slots on each instance: all hold one
            client = httpclient.InferenceServerClient(f"127.0.0.1:{port}")
            for step in range(12):
                x = httpclient.InferInput("x", [1, 1], "FP32")
                x.set_data_from_numpy(np.array([[sid]], np.float32))
                result = client.infer("acc", [x], sequence_id=sid, sequence_start=step == 0, sequence_end=step == 11)
                seen.setdefault(sid, []).append((float(result.as_numpy("y")[0, 0]), result.as_numpy("facts")[0, 0]))

        threads = [threading.Thread(target=sequence, args=(sid,)) for sid in (1, 2, 3, 4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        for sid in (1, 2, 3, 4):
            assert [total for total, _ in seen[sid]] == [sid * (k + 1) for k in range(12)]  # one instance's count
            assert len({me for _, me in seen[sid]}) == 1  # every request on the same instance
        assert len({seen[sid][0][1] for sid in seen}) == 2  # the slots on both instances


OPTIONAL = '''
import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):
        responses = []
        for request in requests:
            x = pb_utils.get_input_tensor_by_name(request, "x").as_numpy()
            bias = pb_utils.get_input_tensor_by_name(request, "bias")  # None where the request left it out
            y = x + (bias.as_numpy() if bias is not None else 0)
            outputs = [pb_utils.Tensor("y", y.astype(np.float32))]
            if bias is not None:  # "had" only when there was a bias: a declared output a response may leave out
                outputs.append(pb_utils.Tensor("had", np.ones_like(y, dtype=np.bool_)))
            responses.append(pb_utils.InferenceResponse(outputs))
        return responses
'''


@pytest.mark.parametrize("batching", ["max_batch_size: 0", "max_batch_size: 4\ndynamic_batching { }"])
def test_a_python_model_s_optional_input_may_be_left_out_and_a_declared_output_too(tmp_path: Path, batching: str) -> None:
    repo = tmp_path / "models"
    python_folder(repo, "opt", OPTIONAL,
        f'backend: "python"\n{batching}\n'
        'input [ { name: "x", data_type: TYPE_FP32, dims: [ 2 ] }, '
        '{ name: "bias", data_type: TYPE_FP32, dims: [ 2 ], optional: true } ]\n'
        'output [ { name: "y", data_type: TYPE_FP32, dims: [ 2 ] }, { name: "had", data_type: TYPE_BOOL, dims: [ 2 ] } ]\n'
    )
    batched = "dynamic_batching" in batching
    shape = [1, 2] if batched else [2]
    with served(tmp_path, repo) as client:
        x = httpclient.InferInput("x", shape, "FP32")
        x.set_data_from_numpy(np.ones(shape, np.float32))
        bias = httpclient.InferInput("bias", shape, "FP32")
        bias.set_data_from_numpy(np.full(shape, 2, np.float32))
        with_bias = client.infer("opt", [x, bias])
        assert with_bias.as_numpy("y").ravel().tolist() == [3, 3] and with_bias.as_numpy("had").all()
        without = client.infer("opt", [x])  # the optional input left out, and the model's "had" with it
        assert without.as_numpy("y").ravel().tolist() == [1, 1] and without.as_numpy("had") is None
        config = client.get_model_config("opt")
        assert [i.get("optional") for i in config["input"]] == [False, True]
        with pytest.raises(InferenceServerException, match="returned no output 'had', which the request asks for"):
            client.infer("opt", [x], outputs=[httpclient.InferRequestedOutput("had")])


ALL_OPTIONAL = '''
import numpy as np
import triton_python_backend_utils as pb_utils

class TritonPythonModel:
    def execute(self, requests):
        responses = []
        for request in requests:
            given = [pb_utils.get_input_tensor_by_name(request, n) for n in ("a", "b")]
            arrays = [t.as_numpy() for t in given if t is not None]
            responses.append(pb_utils.InferenceResponse([pb_utils.Tensor("n", np.full((len(arrays[0]), 1), len(arrays), np.int32))]))
        return responses
'''


def test_a_batching_python_model_whose_inputs_are_all_optional_loads_and_checks_their_batch(tmp_path: Path) -> None:
    """As tritonserver 2.51 serves Triton's L0_optional_input models (helper-165): every input optional, with
    batching. polystack took such a model for one without a batch dimension and refused its max_batch_size; the
    inputs a request gives carry one batch size, as Triton checks it."""
    repo = tmp_path / "models"
    python_folder(repo, "opt", ALL_OPTIONAL,
        'backend: "python"\nmax_batch_size: 4\ndynamic_batching { }\n'
        'input [ { name: "a", data_type: TYPE_FP32, dims: [ 2 ], optional: true }, '
        '{ name: "b", data_type: TYPE_FP32, dims: [ 2 ], optional: true } ]\n'
        'output [ { name: "n", data_type: TYPE_INT32, dims: [ 1 ] } ]\n'
    )  # fmt: skip
    with served(tmp_path, repo) as client:
        def given(name: str, rows: int) -> httpclient.InferInput:
            t = httpclient.InferInput(name, [rows, 2], "FP32")
            t.set_data_from_numpy(np.ones((rows, 2), np.float32))
            return t

        assert client.infer("opt", [given("a", 2)]).as_numpy("n").tolist() == [[1], [1]]
        assert client.infer("opt", [given("b", 1)]).as_numpy("n").tolist() == [[1]]
        assert client.infer("opt", [given("a", 3), given("b", 3)]).as_numpy("n").tolist() == [[2]] * 3
        with pytest.raises(InferenceServerException, match="input 'b' batch size does not match other inputs"):
            client.infer("opt", [given("a", 2), given("b", 1)])
        with pytest.raises(InferenceServerException, match="batch-size must be <= 4"):
            client.infer("opt", [given("a", 5)])
        assert [i.get("optional") for i in client.get_model_config("opt")["input"]] == [True, True]
        # none given: Triton counts a request's batch from its first input, so refuses it (tritonserver 2.51: 400 /
        # INVALID_ARGUMENT in these words; polystack ran it as a batch of nothing, helper-197's probe)
        with pytest.raises(InferenceServerException, match="out of bounds index 0: request has 0 inputs") as e:
            client.infer("opt", [])
        assert e.value.status() == "400"

RAW_BYTES = '''
import numpy as np
import triton_python_backend_utils as pb_utils

class TritonPythonModel:
    def execute(self, requests):
        return [pb_utils.InferenceResponse([pb_utils.Tensor("s", np.array([b"ok", b"\\xfa\\xff"], dtype=np.object_))])
                for _ in requests]
'''


def test_text_output_bytes_that_are_not_utf8_are_refused_in_json_and_sent_in_binary(tmp_path: Path) -> None:
    """helper-165 (Triton's L0_string_io): asked for in JSON, a BYTES output that is not UTF-8 text got U+FFFD in
    its place and a 200; now a 400 saying to ask for binary data (tritonclient raises either way, as from
    tritonserver), the bytes as they are in binary, and the server serves on."""
    repo = tmp_path / "models"
    python_folder(repo, "raw", RAW_BYTES,
        'backend: "python"\nmax_batch_size: 0\ninput [ { name: "x", data_type: TYPE_FP32, dims: [ 1 ] } ]\n'
        'output [ { name: "s", data_type: TYPE_STRING, dims: [ 2 ] } ]\n'
    )  # fmt: skip
    with served(tmp_path, repo) as client:
        x = httpclient.InferInput("x", [1], "FP32")
        x.set_data_from_numpy(np.ones(1, np.float32))
        with pytest.raises(InferenceServerException, match=r"\[400\] output 's' holds bytes that are not UTF-8 text"):
            client.infer("raw", [x], outputs=[httpclient.InferRequestedOutput("s", binary_data=False)])
        answer = client.infer("raw", [x], outputs=[httpclient.InferRequestedOutput("s", binary_data=True)])
        assert answer.as_numpy("s").tolist() == [b"ok", b"\xfa\xff"]



def test_a_passive_instance_group_takes_no_requests_and_its_config_shows_it(tmp_path: Path) -> None:
    """helper-167 (Triton's L0_passive_instance, on tritonserver 2.51 too): requests run on the other group's
    instances alone, the passive ones initialized all the same; polystack refused the config ("passive, which
    polystack does not read")."""
    seen = tmp_path / "seen"
    seen.mkdir()
    repo = tmp_path / "models"
    python_folder(repo, "who", COUNTED, counted_config(seen, "{ kind: KIND_CPU }, { kind: KIND_CPU, count: 2, passive: true }"))
    with served(tmp_path, repo) as client:
        x = httpclient.InferInput("x", [1], "FP32")
        x.set_data_from_numpy(np.zeros(1, np.float32))  # no wait in execute
        assert {client.infer("who", [x]).as_numpy("who")[0] for _ in range(8)} == {b"who_0_0"}
        groups = client.get_model_config("who")["instance_group"]
        assert [(g["name"], g["count"], g["passive"]) for g in groups] == [("who_0", 1, False), ("who_1", 2, True)]
        assert sorted(p.name for p in seen.iterdir()) == ["initialize-who_0_0", "initialize-who_1_0", "initialize-who_1_1"]
    # a passive group first stays first, as Triton keeps the config's order (helper-269: it moved to the end)
    python_folder(tmp_path / "first", "who", COUNTED,
                  counted_config(seen, "{ kind: KIND_CPU, passive: true }, { kind: KIND_CPU }"))  # fmt: skip
    (tmp_path / "second").mkdir()
    with served(tmp_path / "second", tmp_path / "first") as client:
        groups = client.get_model_config("who")["instance_group"]
        assert [(g["name"], g["passive"]) for g in groups] == [("who_0", True), ("who_1", False)]

SHAPES = '''
import numpy as np
import triton_python_backend_utils as pb_utils

class TritonPythonModel:
    def execute(self, requests):
        out = []
        for r in requests:
            x = pb_utils.get_input_tensor_by_name(r, "x").as_numpy()
            shape = pb_utils.Tensor("shape", np.tile(np.array(x.shape, dtype=np.int64), (len(x), 1)))  # a row each
            out.append(pb_utils.InferenceResponse([pb_utils.Tensor("y", x * 2), shape]))
        return out
'''


def test_a_python_models_input_reaches_execute_in_its_reshape(tmp_path: Path) -> None:
    """As Triton hands a backend the reshaped tensor: dims [1] reshaped to [] reach execute as [batch], and its
    answer, in the reshape's shape, reaches the client in the dims [batch, 1]."""
    config = """
backend: "python"
max_batch_size: 4
input [ { name: "x", data_type: TYPE_FP32, dims: [ 1 ] reshape: { shape: [ ] } } ]
output [
  { name: "y", data_type: TYPE_FP32, dims: [ 1 ] reshape: { shape: [ ] } },
  { name: "shape", data_type: TYPE_INT64, dims: [ 1 ] }
]
"""
    python_folder(tmp_path / "models", "shapes", SHAPES, config)
    port = free_port()
    args = ["--model-repository", str(tmp_path / "models"), "--allow-python-models", "--grpc-port", "-1"]
    with cli_server(tmp_path / "home", args, port, tmp_path / "log"):
        client = httpclient.InferenceServerClient(f"127.0.0.1:{port}")
        i = httpclient.InferInput("x", [2, 1], "FP32")
        i.set_data_from_numpy(np.array([[1.0], [2.0]], np.float32))
        result = client.infer("shapes", [i])
        np.testing.assert_array_equal(result.as_numpy("y"), [[2.0], [4.0]])
        assert result.as_numpy("shape").tolist() == [[2], [2]]  # execute saw x as [2], not [2, 1]


KIND = '''
import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args):
        self.kind = args["model_instance_kind"]

    def execute(self, requests):
        return [pb_utils.InferenceResponse([pb_utils.Tensor("kind", np.array([self.kind.encode()], dtype=np.object_))])
                for r in requests]
'''


def test_a_python_model_placing_itself_kind_model_serves_as_triton_serves_it(tmp_path: Path) -> None:
    # helper-153: Triton's own generate test model (mock_llm) asks for KIND_MODEL, and polystack exited 2 at start
    repo = tmp_path / "models"
    python_folder(repo, "placed", KIND,
        'backend: "python"\nmax_batch_size: 0\ninput [ { name: "x", data_type: TYPE_FP32, dims: [ 1 ] } ]\n'
        'output [ { name: "kind", data_type: TYPE_STRING, dims: [ 1 ] } ]\n'
        'instance_group [ { count: 2, kind: KIND_MODEL } ]\n'
    )  # fmt: skip
    port = free_port()
    args = ["--model-repository", str(repo), "--allow-python-models", "--grpc-port", "-1"]
    with cli_server(tmp_path / "home", args, port, tmp_path / "log"):
        client = httpclient.InferenceServerClient(f"127.0.0.1:{port}")
        [group] = client.get_model_config("placed")["instance_group"]
        assert (group["kind"], group["count"], group["name"]) == ("KIND_MODEL", 2, "placed_0")
        x = httpclient.InferInput("x", [1], "FP32")
        x.set_data_from_numpy(np.ones(1, np.float32))
        assert client.infer("placed", [x]).as_numpy("kind").tolist() == [b"MODEL"]  # Triton's args say so


FOLDER = """
import os

import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args):
        here = args["model_repository"]
        self.seen = sorted(os.path.relpath(os.path.join(d, f), here) for d, _, fs in os.walk(here) for f in fs
                           if f.endswith((".txt", ".py", ".pbtxt", ".json")) and "polystack" not in f)
        self.labels = open(os.path.join(here, "labels.txt")).read().split()
        self.here = here

    def execute(self, requests):
        return [pb_utils.InferenceResponse([pb_utils.Tensor("seen", np.array([" ".join([self.here] + self.labels
                + self.seen)], dtype=np.object_))]) for r in requests]
"""


def test_a_python_models_folder_holds_the_files_beside_its_config_as_triton_hands_it(tmp_path: Path) -> None:
    """``args["model_repository"]`` holds the model folder's own files (labels, a tokenizer folder, its config.pbtxt)
    (helper-159: Triton's test_init_args, and a model reading labels.txt there failed to load); it is the model's
    folder in the repository, as Triton names it (helper-219: test_init_args compares it, and polystack named the
    copy it runs from), and, for a load's uploaded files (no folder of the repository's), that copy: the version
    loaded alone."""
    repo = tmp_path / "models"
    python_folder(repo, "folder", FOLDER,
        'backend: "python"\nmax_batch_size: 0\ninput [ { name: "x", data_type: TYPE_FP32, dims: [ 1 ] } ]\n'
        'output [ { name: "seen", data_type: TYPE_STRING, dims: [ 1 ] } ]\n'
        'version_policy: { specific: { versions: [ 1 ] } }\n'
    )  # fmt: skip
    (repo / "folder" / "labels.txt").write_text("cat\ndog\n")
    (repo / "folder" / "tokenizer").mkdir()
    (repo / "folder" / "tokenizer" / "vocab.json").write_text("{}")
    (repo / "folder" / "2").mkdir()  # another version, not served
    (repo / "folder" / "2" / "model.py").write_text("raise SystemExit('not this one')\n")
    port = free_port()
    args = ["--model-repository", str(repo), "--allow-python-models", "--grpc-port", "-1", "--model-control-mode",
            "explicit", "--load-model", "folder"]  # fmt: skip
    with cli_server(tmp_path / "home", args, port, tmp_path / "log"):
        client = httpclient.InferenceServerClient(f"127.0.0.1:{port}")
        x = httpclient.InferInput("x", [1], "FP32")
        x.set_data_from_numpy(np.ones(1, np.float32))
        seen = client.infer("folder", [x]).as_numpy("seen")[0].decode().split()
        assert seen == [str(repo / "folder"), "cat", "dog", "1/model.py", "2/model.py", "config.pbtxt", "labels.txt",
                        "tokenizer/vocab.json"]  # fmt: skip
        # a load of uploaded files for a name the repository has a folder of: the copy, not that folder
        shutil.copytree(repo / "folder", repo / "uploaded")
        uploaded = FOLDER.replace('open(os.path.join(here, "labels.txt")).read().split()', "['up']")
        client.load_model("uploaded", config=json.dumps({"backend": "python", "max_batch_size": 0,
                          "input": [{"name": "x", "data_type": "TYPE_FP32", "dims": [1]}],
                          "output": [{"name": "seen", "data_type": "TYPE_STRING", "dims": [1]}]}),
                          files={"file:1/model.py": uploaded.encode()})  # fmt: skip
        here, *seen = client.infer("uploaded", [x]).as_numpy("seen")[0].decode().split()
        assert here != str(repo / "uploaded") and seen == ["up", "1/model.py"], (here, seen)
        client.load_model("uploaded")  # the folder's own files again: its folder
        assert client.infer("uploaded", [x]).as_numpy("seen")[0].decode().split()[0] == str(repo / "uploaded")


NO_INPUTS = """
import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):
        return [pb_utils.InferenceResponse([pb_utils.Tensor("n", np.array([len(r.inputs())], np.int32))])
                for r in requests]
"""


def test_a_python_model_taking_no_inputs_serves_as_tritons_python_backend_serves_it(tmp_path: Path) -> None:
    """helper-159: Triton's argument_validation model lists no inputs, and polystack exited 2 at start."""
    repo = tmp_path / "models"
    output = 'output [ { name: "n", data_type: TYPE_INT32, dims: [ 1 ] } ]\n'
    python_folder(repo, "nothing", NO_INPUTS, f'backend: "python"\nmax_batch_size: 0\n{output}')
    port, grpc_port = free_port(), free_port()
    args = ["--model-repository", str(repo), "--allow-python-models", "--grpc-port", str(grpc_port)]
    with cli_server(tmp_path / "home", args, port, tmp_path / "log"):
        http = httpclient.InferenceServerClient(f"127.0.0.1:{port}")
        assert http.get_model_metadata("nothing")["inputs"] == []
        assert http.infer("nothing", []).as_numpy("n").tolist() == [0]
        grpc = grpcclient.InferenceServerClient(f"127.0.0.1:{grpc_port}")
        assert grpc.infer("nothing", []).as_numpy("n").tolist() == [0]



def test_a_batched_python_model_taking_no_inputs_loads_and_refuses_every_request_as_triton_does(
    tmp_path: Path,
) -> None:
    """helper-197's L0_grpc model: tritonserver 2.51 (checked here) loads it, shows its max_batch_size, and answers
    every request 400 / INVALID_ARGUMENT 'out of bounds index 0: request has 0 inputs' (its batch counted from a first
    input there is none of); polystack refused the load, so a repository holding it did not start. Strict config and
    a dynamic batcher alike."""
    output = 'output [ { name: "n", data_type: TYPE_INT32, dims: [ 1 ] } ]\n'
    for tag, extra, flags in (("plain", "", []), ("batcher", "dynamic_batching { }\n", []),
                              ("strict", "", ["--disable-auto-complete-config"])):  # fmt: skip
        repo = tmp_path / tag / "models"
        python_folder(repo, "nothing", NO_INPUTS, f'backend: "python"\nmax_batch_size: 4\n{output}{extra}')
        port, grpc_port = free_port(), free_port()
        args = ["--model-repository", str(repo), "--allow-python-models", "--grpc-port", str(grpc_port), *flags]
        with cli_server(tmp_path / tag / "home", args, port, tmp_path / tag / "log"):
            http = httpclient.InferenceServerClient(f"127.0.0.1:{port}")
            assert http.get_model_config("nothing")["max_batch_size"] == 4, tag
            assert http.get_model_metadata("nothing")["outputs"][0]["shape"] == [-1, 1], tag
            with pytest.raises(InferenceServerException, match=r"^\[400\] out of bounds index 0: request has 0 ") as e:
                http.infer("nothing", [])
            assert "with max_batch_size 0" in str(e.value), tag
            grpc = grpcclient.InferenceServerClient(f"127.0.0.1:{grpc_port}")
            with pytest.raises(InferenceServerException, match="out of bounds index 0: request has 0 inputs") as e:
                grpc.infer("nothing", [])
            assert e.value.status() == "StatusCode.INVALID_ARGUMENT", tag
            x = httpclient.InferInput("x", [1, 1], "INT32")
            x.set_data_from_numpy(np.zeros((1, 1), np.int32))
            with pytest.raises(InferenceServerException, match=r"unexpected inference input 'x' .*expects no inputs"):
                http.infer("nothing", [x])
            assert http.is_server_live()


CODES = """
import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args):
        logger = pb_utils.Logger
        for level in ("INFO", "WARNING", "ERROR", "VERBOSE"):
            logger.log(f"said at {level}", getattr(logger, level))

    def execute(self, requests):
        out = []
        for request in requests:
            code = pb_utils.get_input_tensor_by_name(request, "code").as_numpy()[0].decode()
            error = pb_utils.TritonError("code " + code, getattr(pb_utils.TritonError, code))
            out.append(pb_utils.InferenceResponse(error=error))
        return out
"""


def test_a_models_error_codes_and_log_levels_are_tritons(tmp_path: Path) -> None:
    """helper-161: Triton's lifecycle test_error_code (UNKNOWN reached gRPC clients as INTERNAL) and its logging
    model (Logger.INFO and its kin were missing: the load failed)."""
    repo = tmp_path / "models"
    python_folder(repo, "codes", CODES,
        'backend: "python"\nmax_batch_size: 0\ninput [ { name: "code", data_type: TYPE_STRING, dims: [ 1 ] } ]\n'
        'output [ { name: "out", data_type: TYPE_STRING, dims: [ 1 ] } ]\n'
    )  # fmt: skip
    port, grpc_port = free_port(), free_port()
    args = ["--model-repository", str(repo), "--allow-python-models", "--grpc-port", str(grpc_port), "--log-verbose", "1"]
    # (UNKNOWN: tritonserver 2.51's HTTP 400, helper-194)
    expected = {"UNKNOWN": ("400", "StatusCode.UNKNOWN"), "INTERNAL": ("500", "StatusCode.INTERNAL"),
                "NOT_FOUND": ("404", "StatusCode.NOT_FOUND"), "INVALID_ARG": ("400", "StatusCode.INVALID_ARGUMENT"),
                "UNAVAILABLE": ("503", "StatusCode.UNAVAILABLE"), "UNSUPPORTED": ("501", "StatusCode.UNIMPLEMENTED"),
                "ALREADY_EXISTS": ("400", "StatusCode.ALREADY_EXISTS"), "CANCELLED": ("400", "StatusCode.CANCELLED")}  # fmt: skip
    with cli_server(tmp_path / "home", args, port, tmp_path / "log"):
        http = httpclient.InferenceServerClient(f"127.0.0.1:{port}")
        grpc = grpcclient.InferenceServerClient(f"127.0.0.1:{grpc_port}")
        for code, statuses in expected.items():
            got = []
            for mod, client in ((httpclient, http), (grpcclient, grpc)):
                x = mod.InferInput("code", [1], "BYTES")
                x.set_data_from_numpy(np.array([code.encode()], dtype=object))
                with pytest.raises(InferenceServerException) as e:
                    client.infer("codes", [x])
                assert e.value.message() == f"code {code}"
                got.append(str(e.value.status()))
            assert tuple(got) == statuses, code
    logged = {(d.get("level"), d.get("msg")) for d in map(json.loads, (tmp_path / "log").read_text().splitlines())
              if str(d.get("msg", "")).startswith("said at")}  # fmt: skip
    assert logged == {("info", "said at INFO"), ("warning", "said at WARNING"), ("error", "said at ERROR"),
                      ("debug", "said at VERBOSE")}  # fmt: skip


RELATIVE = """
import numpy as np
import triton_python_backend_utils as pb_utils

import file1
from . import file2
from .sub.file3 import NAME as THIRD


class TritonPythonModel:
    def execute(self, requests):
        from . import file2 as again  # later, inside execute, too
        names = " ".join([file1.NAME, file2.NAME, THIRD, again.NAME])
        return [pb_utils.InferenceResponse([pb_utils.Tensor("seen", np.array([names.encode()], dtype=np.object_))])
                for r in requests]
"""


def test_a_model_py_imports_the_modules_beside_it_relatively_as_in_triton(tmp_path: Path) -> None:
    """Triton imports model.py as a module of its version folder's package (its multi_file check; helper-161: a
    relative import failed the load)."""
    repo = tmp_path / "models"
    for name in ("one", "two"):  # each its own file2, of the same name
        python_folder(repo, name, RELATIVE,
            'backend: "python"\nmax_batch_size: 0\ninput [ { name: "x", data_type: TYPE_FP32, dims: [ 1 ] } ]\n'
            'output [ { name: "seen", data_type: TYPE_STRING, dims: [ 1 ] } ]\n'
        )  # fmt: skip
        (repo / name / "1" / "file1.py").write_text(f"NAME = '{name}-1'\n")
        (repo / name / "1" / "file2.py").write_text(f"NAME = '{name}-2'\n")
        (repo / name / "1" / "sub").mkdir()
        (repo / name / "1" / "sub" / "file3.py").write_text(f"NAME = '{name}-3'\n")
    port = free_port()
    args = ["--model-repository", str(repo), "--allow-python-models", "--grpc-port", "-1"]
    with cli_server(tmp_path / "home", args, port, tmp_path / "log"):
        client = httpclient.InferenceServerClient(f"127.0.0.1:{port}")
        x = httpclient.InferInput("x", [1], "FP32")
        x.set_data_from_numpy(np.ones(1, np.float32))
        for name in ("one", "two"):
            assert client.infer(name, [x]).as_numpy("seen")[0].decode() == f"{name}-1 {name}-2 {name}-3 {name}-2"


FINALIZE_FAILS = """
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):
        return [pb_utils.InferenceResponse([pb_utils.get_input_tensor_by_name(r, "x")]) for r in requests]

    def finalize(self):
        undefined_variable
"""


def test_a_finalize_that_raises_is_logged_and_the_stop_exits_0_as_tritons(tmp_path: Path) -> None:
    """helper-161: Triton's lifecycle and bls test.sh stop a server whose model's finalize raises, and wait for exit 0;
    polystack exited 2."""
    import signal

    repo = tmp_path / "models"
    config = ('backend: "python"\nmax_batch_size: 0\ninput [ { name: "x", data_type: TYPE_FP32, dims: [ 1 ] } ]\n'
              'output [ { name: "x", data_type: TYPE_FP32, dims: [ 1 ] } ]\n')  # fmt: skip
    python_folder(repo, "fini_error", FINALIZE_FAILS, config)
    python_folder(repo, "fine", FINALIZE_FAILS.replace("undefined_variable", "pass"), config)
    args = ["--model-repository", str(repo), "--allow-python-models", "--grpc-port", "-1"]
    with cli_server(tmp_path / "home", args, free_port(), tmp_path / "log") as proc:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0
    failed = [d for d in map(json.loads, (tmp_path / "log").read_text().splitlines()) if d["msg"] == "model failed to close"]
    assert [(d["model"], "NameError" in d["error"]) for d in failed] == [("fini_error", True)]


SENT_THEN_MORE = """
import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):
        returned = []
        for request in requests:
            mode = int(pb_utils.get_input_tensor_by_name(request, "mode").as_numpy()[0])
            sender = request.get_response_sender()
            one = pb_utils.InferenceResponse([pb_utils.Tensor("out", np.array([1], np.int32))])
            if mode == 0:  # sent, then a second send, which raises here
                sender.send(one)
                sender.send(one)
            sender.send(one, flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL)  # mode 1: then returned too
            returned.append(pb_utils.InferenceResponse([pb_utils.Tensor("out", np.array([0], np.int32))]))
        return returned
"""


def test_a_response_sent_by_the_sender_reaches_the_client_whatever_the_model_does_after(tmp_path: Path) -> None:
    """Triton's response_sender_test (test_non_decoupled_two_response_pre_return, ..._one_response_pre_and_on_return;
    helper-161): a model that is not decoupled sends its response, then fails (a second send) or returns another:
    the client gets the response sent, as Triton's, where it got only the error."""
    repo = tmp_path / "models"
    python_folder(repo, "sent", SENT_THEN_MORE,
        'backend: "python"\nmax_batch_size: 0\ninput [ { name: "mode", data_type: TYPE_INT32, dims: [ 1 ] } ]\n'
        'output [ { name: "out", data_type: TYPE_INT32, dims: [ 1 ] } ]\n'
    )  # fmt: skip
    port = free_port()
    args = ["--model-repository", str(repo), "--allow-python-models", "--grpc-port", "-1"]
    with cli_server(tmp_path / "home", args, port, tmp_path / "log"):
        client = httpclient.InferenceServerClient(f"127.0.0.1:{port}")
        for mode in (0, 1):
            x = httpclient.InferInput("mode", [1], "INT32")
            x.set_data_from_numpy(np.array([mode], np.int32))
            assert client.infer("sent", [x]).as_numpy("out").tolist() == [1], mode


CANCEL_AWARE = """
import time

import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):
        out = []
        for request in requests:
            deadline = time.monotonic() + 10
            while not request.is_cancelled() and time.monotonic() < deadline:
                time.sleep(0.02)
            pb_utils.Logger.log_info(f"cancelled {request.request_id()}: {request.is_cancelled()}")
            out.append(None if request.is_cancelled() else pb_utils.InferenceResponse([pb_utils.Tensor("y", np.ones(1, np.float32))]))
        return out
"""


def test_a_client_that_goes_away_cancels_the_request_its_python_model_runs(tmp_path: Path) -> None:
    """Triton's lifecycle test_execute_cancel (helper-161: is_cancelled() stayed False and the model ran on): a gRPC
    call cancelled, or an HTTP client that closes its connection, turns the request's is_cancelled() True; a model
    that then leaves it unanswered holds nothing, and the next request runs."""
    import socket
    import time

    repo = tmp_path / "models"
    python_folder(repo, "waits", CANCEL_AWARE,
        'backend: "python"\nmax_batch_size: 0\ninput [ { name: "x", data_type: TYPE_FP32, dims: [ 1 ] } ]\n'
        'output [ { name: "y", data_type: TYPE_FP32, dims: [ 1 ] } ]\n'
    )  # fmt: skip
    port, grpc_port = free_port(), free_port()
    args = ["--model-repository", str(repo), "--allow-python-models", "--grpc-port", str(grpc_port)]
    log = tmp_path / "log"

    def seen(rid: str) -> bool:
        deadline = time.monotonic() + 10
        while f"cancelled {rid}: True" not in log.read_text() and time.monotonic() < deadline:
            time.sleep(0.05)
        return f"cancelled {rid}: True" in log.read_text()

    with cli_server(tmp_path / "home", args, port, log):
        with grpcclient.InferenceServerClient(f"127.0.0.1:{grpc_port}") as client:
            x = grpcclient.InferInput("x", [1], "FP32")
            x.set_data_from_numpy(np.ones(1, np.float32))
            call = client.async_infer("waits", [x], lambda result, error: None, request_id="g1")
            time.sleep(0.5)
            call.cancel()
            assert seen("g1")
        body = json.dumps({"id": "h1", "inputs": [{"name": "x", "datatype": "FP32", "shape": [1], "data": [1.0]}]})
        with socket.create_connection(("127.0.0.1", port)) as s:
            s.sendall(f"POST /v2/models/waits/infer HTTP/1.1\r\nHost: x\r\nContent-Length: {len(body)}\r\n\r\n{body}".encode())
            time.sleep(0.5)
        assert seen("h1")
        with grpcclient.InferenceServerClient(f"127.0.0.1:{grpc_port}") as client:  # the model's one thread is free
            call = client.async_infer("waits", [x], lambda result, error: None, request_id="g2")
            time.sleep(0.5)
            call.cancel()
            assert seen("g2")


LATER = """
import asyncio
import json
import threading

import numpy as np
import triton_python_backend_utils as pb_utils

FINAL = pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL


def answer(sender, value):
    sender.send(pb_utils.InferenceResponse([pb_utils.Tensor("y", np.array([[value]], np.float32))]), flags=FINAL)


class TritonPythonModel:
    def initialize(self, args):
        self.tasks = set()

    %(kind)s execute(self, requests):
        for request in requests:
            mode = json.loads(request.parameters()).get("mode", "")
            value = float(pb_utils.get_input_tensor_by_name(request, "x").as_numpy().reshape(-1)[0])
            sender = request.get_response_sender()
            if mode == "thread":
                threading.Timer(0.2, answer, args=(sender, value)).start()
            elif mode == "task":  # answered by a task of the model's event loop, after execute returned
                async def later(sender=sender, value=value):
                    await asyncio.sleep(0.2)
                    answer(sender, value)
                task = asyncio.get_running_loop().create_task(later())
                self.tasks.add(task)
                task.add_done_callback(self.tasks.discard)
            elif mode != "never":
                answer(sender, value)
        return None
"""


@pytest.mark.parametrize("kind", ["def", "async def"])
def test_a_request_answered_after_execute_returned_holds_no_instance_as_in_triton(tmp_path: Path, kind: str) -> None:
    """Triton's response_sender tests (helper-161): a model that is not decoupled returns None and answers later, from a
    thread or from a task of its event loop: its instance takes the next request meanwhile, a request it never answers
    holds nothing (they waited behind it for good), and the task's answer comes (it never came: the loop ran only
    inside an execute)."""
    repo = tmp_path / "models"
    python_folder(repo, "later", LATER % {"kind": kind},
        'backend: "python"\nmax_batch_size: 4\ndynamic_batching { }\n'
        'input [ { name: "x", data_type: TYPE_FP32, dims: [ 1 ] } ]\noutput [ { name: "y", data_type: TYPE_FP32, dims: [ 1 ] } ]\n'
    )  # fmt: skip
    port = free_port()
    args = ["--model-repository", str(repo), "--allow-python-models", "--grpc-port", "-1"]
    with cli_server(tmp_path / "home", args, port, tmp_path / "log"):
        client = httpclient.InferenceServerClient(f"127.0.0.1:{port}", concurrency=4, network_timeout=5)

        def x(value: float) -> Any:
            i = httpclient.InferInput("x", [1, 1], "FP32")
            i.set_data_from_numpy(np.array([[value]], np.float32))
            return i

        never = client.async_infer("later", [x(0)], parameters={"mode": "never"})
        modes = ["thread", "task"] if kind == "async def" else ["thread"]
        for mode in modes:
            assert client.infer("later", [x(1)], parameters={"mode": mode}).as_numpy("y").tolist() == [[1.0]]
        assert client.infer("later", [x(2)]).as_numpy("y").tolist() == [[2.0]]
        del never  # left unanswered: the server ends it at its exit


def test_a_request_a_model_never_answers_fails_at_its_unload(tmp_path: Path) -> None:
    import concurrent.futures
    import time

    import httpx

    repo = tmp_path / "models"
    python_folder(repo, "later", LATER % {"kind": "def"},
        'backend: "python"\nmax_batch_size: 0\n'
        'input [ { name: "x", data_type: TYPE_FP32, dims: [ 1 ] } ]\noutput [ { name: "y", data_type: TYPE_FP32, dims: [ 1 ] } ]\n'
    )  # fmt: skip
    port = free_port()
    args = ["--model-repository", str(repo), "--allow-python-models", "--grpc-port", "-1", "--allow-model-control"]
    body = {"inputs": [{"name": "x", "shape": [1], "datatype": "FP32", "data": [1.0]}], "parameters": {"mode": "never"}}
    with cli_server(tmp_path / "home", args, port, tmp_path / "log"), concurrent.futures.ThreadPoolExecutor(1) as pool:
        never = pool.submit(httpx.post, f"http://127.0.0.1:{port}/v2/models/later/infer", json=body, timeout=20)
        time.sleep(0.5)  # it reached the model, which will never answer it
        started = time.monotonic()
        httpclient.InferenceServerClient(f"127.0.0.1:{port}").unload_model("later")
        answer = never.result()
        assert answer.status_code == 503 and "was unloaded before it answered this request" in answer.json()["error"]
        assert time.monotonic() - started < 10  # not the unload's 30 s wait for it


SLOW = '''
import time

import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):
        time.sleep(1.0)
        return [pb_utils.InferenceResponse([pb_utils.Tensor("y", pb_utils.get_input_tensor_by_name(r, "x").as_numpy())])
                for r in requests]
'''


@pytest.mark.parametrize("batching", ["max_batch_size: 0\n", "max_batch_size: 4\ndynamic_batching { }\n"])
@pytest.mark.parametrize("change", ["unload", "reload"])
def test_a_request_running_when_its_model_is_unloaded_or_reloaded_gets_its_answer(
    tmp_path: Path, batching: str, change: str
) -> None:
    """helper-167 (Triton's L0_instance_update test_update_while_inferencing, passing on tritonserver 2.51): the
    request whose execute was running got 'Response sender has been closed' (its stream was failed at the unload)
    where README promises what the old model holds runs on it before it closes."""
    import concurrent.futures
    import time

    import httpx

    repo = tmp_path / "models"
    config = 'backend: "python"\n' + batching + (
        'input [ { name: "x", data_type: TYPE_FP32, dims: [ 1 ] } ]\noutput [ { name: "y", data_type: TYPE_FP32, dims: [ 1 ] } ]\n'
    )
    python_folder(repo, "slow", SLOW, config)
    port = free_port()
    args = ["--model-repository", str(repo), "--allow-python-models", "--grpc-port", "-1", "--allow-model-control"]
    shape = [1] if batching.startswith("max_batch_size: 0") else [1, 1]
    body = {"inputs": [{"name": "x", "shape": shape, "datatype": "FP32", "data": [3.0]}]}
    with cli_server(tmp_path / "home", args, port, tmp_path / "log"), concurrent.futures.ThreadPoolExecutor(1) as pool:
        running = pool.submit(httpx.post, f"http://127.0.0.1:{port}/v2/models/slow/infer", json=body, timeout=20)
        time.sleep(0.4)  # its execute runs
        client = httpclient.InferenceServerClient(f"127.0.0.1:{port}")
        if change == "unload":
            client.unload_model("slow")
        else:  # a config of two instances: the model is replaced
            client.load_model("slow", config=json.dumps({**client.get_model_config("slow"), "instance_group": [{"count": 2}]}))
        answer = running.result()
        assert answer.status_code == 200, answer.text
        assert answer.json()["outputs"][0]["data"] == [3.0]


NOTHING_LISTED = '''
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):
        return [pb_utils.InferenceResponse([]) for _ in requests]
'''


def test_a_python_model_whose_config_lists_no_tensors_loads_as_in_triton(tmp_path: Path) -> None:
    """helper-163 (Triton's L0_lifecycle test_concurrent_model_instance_load_speedup, passing on tritonserver 2.51):
    its model.py, without a config.pbtxt, loads with a config of its instance_group alone; polystack refused a
    config listing no outputs."""
    (tmp_path / "models" / "pyid" / "1").mkdir(parents=True)
    (tmp_path / "models" / "pyid" / "1" / "model.py").write_text(NOTHING_LISTED)
    with served(tmp_path, tmp_path / "models", "--model-control-mode", "explicit") as client:
        client.load_model("pyid", config=json.dumps({"instance_group": [{"kind": "KIND_CPU", "count": 2}]}))
        assert client.is_model_ready("pyid")
        shown = client.get_model_config("pyid")
        assert shown["input"] == [] and shown["output"] == [] and shown["instance_group"][0]["count"] == 2
        assert client.infer("pyid", []).get_response()["outputs"] == []


LOCKED_COUNT = '''
import fcntl
import json
import os
import time

import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args):  # as Triton's QA model_init_del counts its instances: a file under a process lock
        path = json.loads(args["model_config"])["parameters"]["count"]["string_value"]
        with open(path, "a+") as f:
            fcntl.lockf(f, fcntl.LOCK_EX)
            f.seek(0)
            count = int(f.read() or 0)
            time.sleep(0.05)
            f.seek(0)
            f.truncate()
            f.write(str(count + 1))
            fcntl.lockf(f, fcntl.LOCK_UN)

    def execute(self, requests):
        return [pb_utils.InferenceResponse([]) for _ in requests]
'''


def test_a_python_models_instances_initialize_one_after_another_as_they_share_a_process(tmp_path: Path) -> None:
    """Triton initializes instances at once, each a process; here they are threads of one process, where a model's
    file lock excludes nothing: initialized at once, Triton's QA model_init_del counted wrong and failed its load
    (helper-170), so polystack initializes them one after another."""
    count = tmp_path / "count"
    repo = tmp_path / "models"
    python_folder(repo, "locked", LOCKED_COUNT,
        'backend: "python"\nmax_batch_size: 0\ninput [ { name: "x", data_type: TYPE_FP32, dims: [ 1 ] } ]\n'
        'output [ { name: "y", data_type: TYPE_FP32, dims: [ 1 ] } ]\ninstance_group [ { kind: KIND_CPU, count: 4 } ]\n'
        f'parameters [ {{ key: "count" value: {{ string_value: "{count}" }} }} ]\n'
    )  # fmt: skip
    with served(tmp_path, repo) as client:
        assert client.is_model_ready("locked")
    assert count.read_text() == "4"

COUNTED = '''
import json
import os
import time

import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args):
        self.folder = json.loads(args["model_config"])["parameters"]["dir"]["string_value"]
        self.name = args["model_instance_name"]
        if self.name.startswith("bad"):
            raise ValueError("a group named bad fails its initialize")
        open(os.path.join(self.folder, "initialize-" + self.name), "a").write("x")

    def execute(self, requests):
        for request in requests:
            time.sleep(float(pb_utils.get_input_tensor_by_name(request, "x").as_numpy()[0]))
        return [pb_utils.InferenceResponse([pb_utils.Tensor("who", np.array([self.name.encode()], dtype=np.object_))])
                for _ in requests]

    def finalize(self):
        open(os.path.join(self.folder, "finalize-" + self.name), "a").write("x")
'''


def counted_config(seen: Path, groups: str, delay: int = 0) -> str:
    """COUNTED's config.pbtxt: its instance ``groups``, counting into ``seen``; ``delay`` a parameter it ignores (a
    change of the config beside its groups)."""
    return (
        'backend: "python"\nmax_batch_size: 0\ninput [ { name: "x", data_type: TYPE_FP32, dims: [ 1 ] } ]\n'
        'output [ { name: "who", data_type: TYPE_STRING, dims: [ 1 ] } ]\n'
        f'instance_group [ {groups} ]\nparameters [ {{ key: "dir" value: {{ string_value: "{seen}" }} }}, '
        f'{{ key: "delay" value: {{ string_value: "{delay}" }} }} ]\n'
    )

def counted(seen: Path) -> dict[str, int]:
    """What COUNTED wrote into ``seen``: each ``initialize-<instance>`` / ``finalize-<instance>`` file, and how often."""
    return {p.name: len(p.read_text()) for p in sorted(seen.iterdir())}


def test_a_reload_changing_only_the_instance_count_keeps_the_instances_it_still_has(tmp_path: Path) -> None:
    """As Triton 23.x on updates instances in place (helpers 163 and 167: Triton's L0_model_update and
    L0_instance_update): only the instances added initialize, only those removed finalize; polystack started them
    all anew, and finalized them all. A change of anything else starts them anew, as before."""
    import concurrent.futures
    import time

    import httpx

    seen = tmp_path / "seen"
    seen.mkdir()
    repo = tmp_path / "models"

    def config(count: int, delay: int = 0) -> str:
        return counted_config(seen, f"{{ kind: KIND_CPU, count: {count} }}", delay)

    python_folder(repo, "m", COUNTED, config(1))
    port = free_port()
    args = ["--model-repository", str(repo), "--allow-python-models", "--grpc-port", "-1",
            "--model-control-mode", "explicit", "--load-model", "m"]  # fmt: skip
    with cli_server(tmp_path / "home", args, port, tmp_path / "log"), httpclient.InferenceServerClient(f"127.0.0.1:{port}") as client:
        x = httpclient.InferInput("x", [1], "FP32")
        x.set_data_from_numpy(np.zeros(1, np.float32))
        assert counted(seen) == {"initialize-m_0_0": 1}
        (repo / "m" / "config.pbtxt").write_text(config(3))
        client.load_model("m")
        assert until(lambda: counted(seen) == {"initialize-m_0_0": 1, "initialize-m_0_1": 1, "initialize-m_0_2": 1})
        assert {client.infer("m", [x]).as_numpy("who")[0] for _ in range(12)} <= {b"m_0_0", b"m_0_1", b"m_0_2"}
        body = {"inputs": [{"name": "x", "shape": [1], "datatype": "FP32", "data": [0.5]}]}
        with concurrent.futures.ThreadPoolExecutor(3) as pool:  # each instance runs one for 0.5 s during the reload
            running = [pool.submit(httpx.post, f"http://127.0.0.1:{port}/v2/models/m/infer", json=body, timeout=20)
                       for _ in range(3)]  # fmt: skip
            time.sleep(0.2)
            (repo / "m" / "config.pbtxt").write_text(config(1))
            client.load_model("m")  # answered once the instances it removed are finalized, as Triton's update
            assert all(r.result().status_code == 200 for r in running)
        assert counted(seen) == {"initialize-m_0_0": 1, "initialize-m_0_1": 1, "initialize-m_0_2": 1,
                            "finalize-m_0_1": 1, "finalize-m_0_2": 1}  # fmt: skip
        assert {client.infer("m", [x]).as_numpy("who")[0] for _ in range(4)} == {b"m_0_0"}
        (repo / "m" / "config.pbtxt").write_text(config(1, delay=5))  # another change: a new instance
        client.load_model("m")
        assert until(lambda: counted(seen).get("finalize-m_0_0") == 1 and counted(seen)["initialize-m_0_0"] == 2)
        client.unload_model("m")
        assert until(lambda: counted(seen).get("finalize-m_0_0") == 2)
    assert counted(seen) == {"initialize-m_0_0": 2, "initialize-m_0_1": 1, "initialize-m_0_2": 1,
                        "finalize-m_0_0": 2, "finalize-m_0_1": 1, "finalize-m_0_2": 1}  # fmt: skip


def test_an_instance_update_keeps_instances_by_their_signature_not_their_groups_name(tmp_path: Path) -> None:
    """helper-171 (Triton's L0_model_update test_instance_name_update and test_instance_resource_increase): Triton
    keeps an instance whose group's kind, placement and rate limiter a new one has, whatever the group is named, and
    starts anew one whose rate limiter changed; polystack matched them by name."""
    seen = tmp_path / "seen"
    seen.mkdir()
    repo = tmp_path / "models"

    def config(groups: str) -> str:
        return counted_config(seen, groups)

    def started() -> tuple[int, int]:
        texts = counted(seen)
        return (sum(n for k, n in texts.items() if k.startswith("initialize")),
                sum(n for k, n in texts.items() if k.startswith("finalize")))  # fmt: skip

    limited = 'rate_limiter { resources [ { name: "R1" count: %d } ] }'
    python_folder(repo, "m", COUNTED, config('{ name: "old_1" kind: KIND_CPU }, { name: "old_2" count: 2 }'))
    with served(tmp_path, repo, "--model-control-mode", "explicit", "--load-model", "m") as client:
        assert started() == (3, 0)
        (repo / "m" / "config.pbtxt").write_text(config('{ name: "new_1" count: 3 kind: KIND_CPU }'))
        client.load_model("m")
        assert started() == (3, 0)  # renamed and regrouped: the same three instances
        (repo / "m" / "config.pbtxt").write_text(config("{ count: 3 %s }" % (limited % 2)))
        client.load_model("m")
        assert until(lambda: started() == (6, 3)), started()  # another rate limiter: other instances (the old ones
        # finalize once retired, after the load's answer)
        (repo / "m" / "config.pbtxt").write_text(config("{ count: 3 %s }" % (limited % 8)))
        client.load_model("m")
        assert until(lambda: started() == (9, 6)), started()


def test_an_instance_update_that_fails_leaves_the_old_models_instances_to_the_next_update(tmp_path: Path) -> None:
    """A reload whose added instance fails its initialize fails, and the model it would replace serves on with its
    instances; the next update keeps them, as if the failed one had not been. They stayed marked as given to the
    failed reload, so the next one started every instance anew."""
    seen = tmp_path / "seen"
    seen.mkdir()
    repo = tmp_path / "models"

    def config(groups: str) -> str:
        return counted_config(seen, groups)

    python_folder(repo, "m", COUNTED, config("{ kind: KIND_CPU, count: 2 }"))
    with served(tmp_path, repo, "--model-control-mode", "explicit", "--load-model", "m") as client:
        x = httpclient.InferInput("x", [1], "FP32")
        x.set_data_from_numpy(np.zeros(1, np.float32))
        (repo / "m" / "config.pbtxt").write_text(config('{ kind: KIND_CPU, count: 2 }, { name: "bad" kind: KIND_CPU }'))
        with pytest.raises(InferenceServerException, match="a group named bad fails its initialize"):
            client.load_model("m")
        assert {client.infer("m", [x]).as_numpy("who")[0] for _ in range(8)} <= {b"m_0_0", b"m_0_1"}
        (repo / "m" / "config.pbtxt").write_text(config("{ kind: KIND_CPU, count: 3 }"))
        client.load_model("m")
        assert counted(seen) == {"initialize-m_0_0": 1, "initialize-m_0_1": 1, "initialize-m_0_2": 1}
        client.unload_model("m")
        assert until(lambda: len(counted(seen)) == 6)
    assert counted(seen) == {"initialize-m_0_0": 1, "initialize-m_0_1": 1, "initialize-m_0_2": 1,
                        "finalize-m_0_0": 1, "finalize-m_0_1": 1, "finalize-m_0_2": 1}  # fmt: skip


def test_an_instance_update_failing_before_it_placed_a_kept_instance_leaves_it_to_be_finalized(tmp_path: Path) -> None:
    """An update takes the instances it keeps by name first; one whose new instance then fails to import gave them
    back only once placed, so one taken but not placed stayed held and was never finalized."""
    seen = tmp_path / "seen"
    seen.mkdir()
    repo = tmp_path / "models"
    marker = tmp_path / "fail-imports"
    failing = COUNTED.replace(  # once the marker is there, an import takes one of the imports it says are left
        "import numpy as np",
        f"""import numpy as np
if os.path.exists({str(marker)!r}):
    left = int(open({str(marker)!r}).read())
    if left == 0:
        raise ImportError("marked")
    open({str(marker)!r}, "w").write(str(left - 1))""",
        1,
    )
    python_folder(repo, "m", failing, counted_config(seen, "{ kind: KIND_CPU }"))
    with served(tmp_path, repo, "--model-control-mode", "explicit", "--load-model", "m") as client:
        # m_0_0 is taken by name first; first_0, of another kind, is new and fails to import
        (repo / "m" / "config.pbtxt").write_text(
            counted_config(seen, '{ name: "first" kind: KIND_MODEL }, { name: "m_0" kind: KIND_CPU }')
        )
        marker.write_text("1")  # the load's own import (its auto_complete_config's) passes, first_0's fails
        with pytest.raises(InferenceServerException, match="marked"):
            client.load_model("m")
        marker.unlink()
        assert client.is_model_ready("m")
        client.unload_model("m")
        assert until(lambda: (seen / "finalize-m_0_0").exists())
    assert sorted(p.name for p in seen.iterdir()) == ["finalize-m_0_0", "initialize-m_0_0"]


def test_a_config_read_back_from_get_config_with_another_count_updates_the_instances_in_place(tmp_path: Path) -> None:
    """Triton's L0_model_update test_load_api_with_config: the config GET config returns, its count raised, loaded
    back keeps the instance it has, as Triton compares configs once both are normalized; polystack compared them as
    given (the folder's against GET config's, which shows every default), and started them anew. A change of
    anything else in it still starts them anew."""
    seen = tmp_path / "seen"
    seen.mkdir()
    repo = tmp_path / "models"
    groups = "{ kind: KIND_CPU }"
    batched = counted_config(seen, groups).replace("max_batch_size: 0", "max_batch_size: 4\ndynamic_batching { }")
    sequence = counted_config(seen, groups).replace(  # an FP32 control, which read back was taken as INT32 and refused
        "max_batch_size: 0",
        'max_batch_size: 4\nsequence_batching { oldest { max_candidate_sequences: 4 } control_input [ { name: "START" '
        "control [ { kind: CONTROL_SEQUENCE_START fp32_false_true: [ 0, 1 ] } ] } ] }",
    )
    models = {"m": counted_config(seen, groups), "b": batched, "s": sequence}
    for model, config in models.items():
        python_folder(repo, model, COUNTED, config)
    with served(tmp_path, repo, "--model-control-mode", "explicit", "--load-model", "m", "--load-model", "b", "--load-model", "s") as client:
        for model in models:
            config = client.get_model_config(model)
            config["instance_group"][0]["count"] += 1
            client.load_model(model, config=json.dumps(config))
            config = client.get_model_config(model)
            assert config["instance_group"][0]["count"] == 2
            config["parameters"]["delay"]["string_value"] = "5"
            client.load_model(model, config=json.dumps(config))  # another change: other instances
        expected = sorted(
            f"{what}-{model}_0_{i}" for model in models for what, i in
            [("initialize", 0), ("initialize", 1), ("finalize", 0), ("finalize", 1)]
        )  # fmt: skip
        # the instances a load replaced finalize once it has answered (their requests run first): waited for
        assert until(lambda: sorted(p.name for p in seen.iterdir()) == expected, 30), sorted(seen.iterdir())
        assert {n for name, n in counted(seen).items() if name.startswith("initialize")} == {2}


def test_an_instance_update_that_only_adds_instances_answers_while_a_request_runs(tmp_path: Path) -> None:
    """Triton's L0_model_update test_update_while_inferencing: adding an instance while a request runs on the old one
    answers the load at once (nothing is finalized), and the request its answer; only a removal waits for the
    instances it removes."""
    import concurrent.futures
    import time

    import httpx

    seen = tmp_path / "seen"
    seen.mkdir()
    repo = tmp_path / "models"

    def config(count: int) -> str:
        return counted_config(seen, f"{{ kind: KIND_CPU, count: {count} }}")

    python_folder(repo, "m", COUNTED, config(1))
    port = free_port()
    args = ["--model-repository", str(repo), "--allow-python-models", "--grpc-port", "-1",
            "--model-control-mode", "explicit", "--load-model", "m"]  # fmt: skip
    body = {"inputs": [{"name": "x", "shape": [1], "datatype": "FP32", "data": [3.0]}]}
    with cli_server(tmp_path / "home", args, port, tmp_path / "log"), httpclient.InferenceServerClient(f"127.0.0.1:{port}") as client:
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            running = pool.submit(httpx.post, f"http://127.0.0.1:{port}/v2/models/m/infer", json=body, timeout=20)
            time.sleep(0.3)  # it runs on m_0_0 for 3 s
            (repo / "m" / "config.pbtxt").write_text(config(2))
            started = time.monotonic()
            client.load_model("m")
            assert time.monotonic() - started < 2.0  # not held by the request (Triton's test allows under 5 s of 10)
            assert running.result().status_code == 200
        assert sorted(p.name for p in seen.iterdir()) == ["initialize-m_0_0", "initialize-m_0_1"]


UNTIL_CANCELLED = '''
import time

import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):
        request = requests[0]
        ignore = bool(pb_utils.get_input_tensor_by_name(request, "IGNORE").as_numpy()[0])
        sender = request.get_response_sender()
        for n in range(30):
            if not ignore and request.is_cancelled():
                error = pb_utils.TritonError("stopped as asked", pb_utils.TritonError.CANCELLED)
                sender.send(pb_utils.InferenceResponse(error=error), flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL)
                return None
            sender.send(pb_utils.InferenceResponse([pb_utils.Tensor("OUT", np.array([n], np.int32))]),
                        flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL if n == 29 else 0)
            time.sleep(0.01)
        return None
'''

CANCELLING = '''
import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):
        responses = []
        for request in requests:
            ignore = pb_utils.get_input_tensor_by_name(request, "IGNORE")
            call = pb_utils.InferenceRequest(model_name="until_cancelled", inputs=[ignore], requested_output_names=["OUT"])
            stream = call.exec(decoupled=True)
            seen = []
            for answer in stream:
                if answer.has_error():
                    seen.append(f"error {answer.error().code() == pb_utils.TritonError.CANCELLED}")
                elif answer.output_tensors():
                    seen.append("out")
                if len(seen) == 3:
                    stream.cancel()
            stream.cancel()  # after its end: nothing
            responses.append(pb_utils.InferenceResponse([pb_utils.Tensor("SEEN", np.array(seen, dtype=object))]))
        return responses
'''


def test_a_bls_stream_cancelled_asks_its_model_to_cancel_and_hands_on_what_it_sends(tmp_path: Path) -> None:
    """helper-187 (Triton's L0_backend_python_pytest decoupled, its BLS cancel cases): ``cancel()`` on the iterator
    of ``exec(decoupled=True)`` cancels the called request, whose model sees ``is_cancelled()``; the caller reads
    on, getting its CANCELLED error where it honours the cancel, its later responses where it does not. polystack
    stopped reading, handing the caller one empty response and dropping the rest."""
    repo = tmp_path / "models"
    python_folder(repo, "until_cancelled", UNTIL_CANCELLED,
        'backend: "python"\nmodel_transaction_policy { decoupled: true }\n'
        'input [ { name: "IGNORE", data_type: TYPE_BOOL, dims: [ 1 ] } ]\n'
        'output [ { name: "OUT", data_type: TYPE_INT32, dims: [ 1 ] } ]\n')  # fmt: skip
    python_folder(repo, "cancelling", CANCELLING,
        'backend: "python"\ninput [ { name: "IGNORE", data_type: TYPE_BOOL, dims: [ 1 ] } ]\n'
        'output [ { name: "SEEN", data_type: TYPE_STRING, dims: [ -1 ] } ]\n')  # fmt: skip
    with served(tmp_path, repo) as client:
        flag = httpclient.InferInput("IGNORE", [1], "BOOL")
        flag.set_data_from_numpy(np.array([False]))
        seen = [s.decode() for s in client.infer("cancelling", [flag]).as_numpy("SEEN")]
        # (a response or two the model sent before it looked come first, as in Triton)
        assert seen[-1] == "error True" and set(seen[:-1]) == {"out"} and 3 <= len(seen) - 1 < 10, seen
        flag.set_data_from_numpy(np.array([True]))  # a model that goes on: all its responses come
        assert [s.decode() for s in client.infer("cancelling", [flag]).as_numpy("SEEN")] == ["out"] * 30


READINESS = '''
import asyncio
import json
import time

import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args):
        parameters = json.loads(args["model_config"])["parameters"]
        self.answer = parameters["ANSWER"]["string_value"]
        self.delay = float(parameters["DELAY"]["string_value"])

    def execute(self, requests):
        return [pb_utils.InferenceResponse([pb_utils.Tensor("y", pb_utils.get_input_tensor_by_name(r, "x").as_numpy())])
                for r in requests]

    def is_ready(self):
        time.sleep(self.delay)
        if self.answer == "raise":
            raise RuntimeError("the database is gone")
        return {"true": True, "false": False, "text": "ready"}[self.answer]
'''

ASYNC_READINESS = READINESS.replace("    def is_ready(self):\n        time.sleep", "    async def is_ready(self):\n        await asyncio.sleep")
assert ASYNC_READINESS != READINESS


def test_a_python_models_own_is_ready_answers_its_readiness_queries(tmp_path: Path) -> None:
    """helper-187 (Triton's L0_backend_python_pytest model_readiness, Triton's user-defined readiness, newer than
    2.51): a model's ``is_ready()`` (plain or async) is asked at each readiness query over HTTP and gRPC; False, an
    exception, another value or no answer within the wait is not ready, while its requests run as before; a check
    still running is waited for by the next query, not started again. polystack never asked it."""
    repo = tmp_path / "models"
    for name, source, answer, delay in (("yes", READINESS, "true", "0"), ("no", READINESS, "false", "0"),
                                        ("fails", READINESS, "raise", "0"), ("text", READINESS, "text", "0"),
                                        ("slow", READINESS, "true", "7"), ("async_yes", ASYNC_READINESS, "true", "0.1"),
                                        ("async_no", ASYNC_READINESS, "false", "0.1")):  # fmt: skip
        python_folder(repo, name, source,
            'backend: "python"\ninput [ { name: "x", data_type: TYPE_FP32, dims: [ 1 ] } ]\n'
            'output [ { name: "y", data_type: TYPE_FP32, dims: [ 1 ] } ]\n'
            f'parameters [ {{ key: "ANSWER", value: {{ string_value: "{answer}" }} }}, '
            f'{{ key: "DELAY", value: {{ string_value: "{delay}" }} }} ]\n')  # fmt: skip
    port, grpc_port = free_port(), free_port()
    args = ["--model-repository", str(repo), "--allow-python-models", "--grpc-port", str(grpc_port)]
    with cli_server(tmp_path / "home", args, port, tmp_path / "log"), httpclient.InferenceServerClient(f"127.0.0.1:{port}") as client, grpcclient.InferenceServerClient(f"127.0.0.1:{grpc_port}") as rpc:
        x = httpclient.InferInput("x", [1], "FP32")
        x.set_data_from_numpy(np.array([1.5], np.float32))
        for name, ready in (("yes", True), ("no", False), ("fails", False), ("text", False), ("async_yes", True),
                            ("async_no", False)):  # fmt: skip
            assert client.is_model_ready(name) is ready and rpc.is_model_ready(name) is ready, name
            assert client.infer(name, [x]).as_numpy("y").tolist() == [1.5]  # its requests run all the same
        assert client.is_server_ready()
        started = time.monotonic()
        assert not client.is_model_ready("slow")  # no answer within the wait (5 s)
        assert 4.5 < time.monotonic() - started < 6.5
        assert client.infer("slow", [x]).as_numpy("y").tolist() == [1.5]
        assert rpc.is_model_ready("slow")  # the same check, answering at 7 s: waited for, not started again
        assert time.monotonic() - started < 9.5
    logged = (tmp_path / "log").read_text()
    assert "the database is gone" in logged and "returned str, not a bool" in logged


NAMED_READINESS = READINESS.replace("def is_ready(self)", "def is_model_ready(self)")
assert NAMED_READINESS != READINESS


def test_a_python_models_is_model_ready_is_its_readiness_as_in_tritons_newest_python_backend(tmp_path: Path) -> None:
    """Triton's newest QA (L0_backend_python/model_readiness: ``is_model_ready_fn_returns_true`` and its kin) names
    the user-defined readiness ``is_model_ready()``, where its pytest suite's models (and polystack) named it
    ``is_ready()``: polystack asked only ``is_ready()``, so a model saying False there was ready. Both are asked."""
    repo = tmp_path / "models"
    for name, source, answer in (("yes", NAMED_READINESS, "true"), ("no", NAMED_READINESS, "false"),
                                 ("fails", NAMED_READINESS, "raise"),
                                 ("async_no", NAMED_READINESS.replace("    def is_model", "    async def is_model"),
                                  "false")):  # fmt: skip
        python_folder(repo, name, source,
            'backend: "python"\ninput [ { name: "x", data_type: TYPE_FP32, dims: [ 1 ] } ]\n'
            'output [ { name: "y", data_type: TYPE_FP32, dims: [ 1 ] } ]\n'
            f'parameters [ {{ key: "ANSWER", value: {{ string_value: "{answer}" }} }}, '
            '{ key: "DELAY", value: { string_value: "0" } } ]\n')  # fmt: skip
    port, grpc_port = free_port(), free_port()
    args = ["--model-repository", str(repo), "--allow-python-models", "--grpc-port", str(grpc_port)]
    with (
        cli_server(tmp_path / "home", args, port, tmp_path / "log"),
        httpclient.InferenceServerClient(f"127.0.0.1:{port}") as client,
        grpcclient.InferenceServerClient(f"127.0.0.1:{grpc_port}") as rpc,
    ):
        x = httpclient.InferInput("x", [1], "FP32")
        x.set_data_from_numpy(np.array([1.5], np.float32))
        for name, ready in (("yes", True), ("no", False), ("fails", False), ("async_no", False)):
            assert client.is_model_ready(name) is ready and rpc.is_model_ready(name) is ready, name
            assert client.infer(name, [x]).as_numpy("y").tolist() == [1.5]
    logged = (tmp_path / "log").read_text()
    assert "failed in is_model_ready: RuntimeError: the database is gone" in logged


def test_a_load_failed_by_auto_complete_config_or_the_import_lists_its_version_in_the_index(tmp_path: Path) -> None:
    """helper-217 (L0_backend_python/model_control): a model whose auto_complete_config (or model.py's import, which
    auto-complete runs) fails is listed by Triton's index at the version it failed at ("1"); polystack's entry had no
    version, as for a folder it could not read."""
    repo = tmp_path / "models"
    config = ('backend: "python"\ninput [ { name: "x", data_type: TYPE_FP32, dims: [ 1 ] } ]\n'
              'output [ { name: "y", data_type: TYPE_FP32, dims: [ 1 ] } ]\n')  # fmt: skip
    python_folder(repo, "completes", "class TritonPythonModel:\n    @staticmethod\n    def auto_complete_config(c):\n"
                  "        return undefined_variable\n", config)  # fmt: skip
    python_folder(repo, "imports", "import no_such_module_here\n", config)
    port = free_port()
    args = ["--model-repository", str(repo), "--allow-python-models", "--grpc-port", "-1", "--model-control-mode",
            "explicit"]  # fmt: skip
    with cli_server(tmp_path / "home", args, port, tmp_path / "log"):
        client = httpclient.InferenceServerClient(f"127.0.0.1:{port}")
        for name, line in (("completes", "model.py(4): auto_complete_config"), ("imports", "model.py(1): <module>")):
            with pytest.raises(InferenceServerException, match=f"load failed for model '{name}'"):
                client.load_model(name)
            (entry,) = [m for m in client.get_model_repository_index() if m["name"] == name]
            assert entry["version"] == "1" and entry["state"] == "UNAVAILABLE", entry
            assert entry["reason"].endswith(line + "\n"), entry


IDENTITY = '''
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):
        return [pb_utils.InferenceResponse([pb_utils.Tensor("y", pb_utils.get_input_tensor_by_name(r, "x").as_numpy())])
                for r in requests]
'''


def test_a_model_failing_in_initialize_at_start_is_listed_at_its_version_as_tritons_index_lists_it(
    tmp_path: Path,
) -> None:
    """helper-220: with --exit-on-error false, a model whose initialize fails at start is listed by Triton's index
    with "version": "1"; polystack's entry had none (a client reading m["version"] got a KeyError)."""
    repo = tmp_path / "models"
    python_folder(repo, "fails", "class TritonPythonModel:\n    def initialize(self, args):\n"
                  "        raise RuntimeError('on purpose')\n",
                  'backend: "python"\ninput [ { name: "x", data_type: TYPE_FP32, dims: [ 1 ] } ]\n'
                  'output [ { name: "y", data_type: TYPE_FP32, dims: [ 1 ] } ]\n')  # fmt: skip
    python_folder(repo, "works", IDENTITY,
                  'backend: "python"\ninput [ { name: "x", data_type: TYPE_FP32, dims: [ 1 ] } ]\n'
                  'output [ { name: "y", data_type: TYPE_FP32, dims: [ 1 ] } ]\n')  # fmt: skip
    port = free_port()
    args = ["--model-repository", str(repo), "--allow-python-models", "--grpc-port", "-1", "--exit-on-error", "false",
            "--strict-readiness", "false"]  # fmt: skip
    with cli_server(tmp_path / "home", args, port, tmp_path / "log"):
        index = httpclient.InferenceServerClient(f"127.0.0.1:{port}").get_model_repository_index()
    (failed,) = [m for m in index if m["name"] == "fails"]
    assert failed["version"] == "1" and failed["state"] == "UNAVAILABLE" and "on purpose" in failed["reason"], index

LOADS_IN_INITIALIZE = '''
import concurrent.futures
import json
import time

import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args):
        self.said = []
        parameters = json.loads(args["model_config"])["parameters"]
        target = parameters["TARGET"]["string_value"]
        time.sleep(float(parameters.get("PAUSE", {}).get("string_value", "0")))  # (both of two loads under way)
        if "THREAD" in parameters:  # from a thread of its own, which has none of the model's context
            with concurrent.futures.ThreadPoolExecutor(1) as pool:
                pool.submit(self.ask, target).result()
        else:
            self.ask(target)
        pb_utils.Logger.log_info(f"{args['model_name']} said: " + "; ".join(self.said))

    def ask(self, target):
        self.said.append(f"ready_before={pb_utils.is_model_ready(target)}")
        try:
            pb_utils.load_model(target)
            self.said.append(f"ready_after_load={pb_utils.is_model_ready(target)}")
            pb_utils.unload_model(target)
            self.said.append(f"ready_after_unload={pb_utils.is_model_ready(target)}")
        except pb_utils.TritonModelException as e:
            self.said.append(f"raised: {e.message()}")

    def execute(self, requests):
        said = np.array(["; ".join(self.said).encode()], dtype=np.object_)
        return [pb_utils.InferenceResponse([pb_utils.Tensor("said", said)]) for _ in requests]
'''


def test_a_python_models_initialize_loads_and_unloads_other_models_as_tritons_bls_model_loading(
    tmp_path: Path,
) -> None:
    """helper-215 (L0_backend_python/bls, ``bls_model_loading``): Triton's Python backend takes ``load_model`` and
    ``unload_model`` from ``initialize`` too; polystack refused them there (its loads ran one at a time). They run
    beside the load that asked, one loader thread enough; a model asking for its own load (or for one of the model
    whose load asked for it) is refused in words, where the load would wait for itself."""
    repo = tmp_path / "models"
    config = ('backend: "python"\ninput [ { name: "x", data_type: TYPE_FP32, dims: [ 1 ] } ]\n'
              'output [ { name: "said", data_type: TYPE_STRING, dims: [ 1 ] } ]\n')  # fmt: skip
    python_folder(repo, "target", IDENTITY,
                  'backend: "python"\ninput [ { name: "x", data_type: TYPE_FP32, dims: [ 1 ] } ]\n'
                  'output [ { name: "y", data_type: TYPE_FP32, dims: [ 1 ] } ]\n')  # fmt: skip
    for name, target in (("loader", "target"), ("selfish", "selfish"), ("first", "second"), ("second", "first"),
                         ("ping", "pong"), ("pong", "ping"), ("threaded", "target")):  # fmt: skip
        more = ', { key: "THREAD", value: { string_value: "yes" } }' if name == "threaded" else ""
        more += ', { key: "PAUSE", value: { string_value: "1" } }' if name in ("ping", "pong") else ""
        python_folder(repo, name, LOADS_IN_INITIALIZE,
                      config + f'parameters [ {{ key: "TARGET", value: {{ string_value: "{target}" }} }}{more} ]\n')
    port = free_port()
    args = ["--model-repository", str(repo), "--allow-python-models", "--grpc-port", "-1", "--model-control-mode",
            "explicit", "--model-load-thread-count", "1"]  # fmt: skip
    with cli_server(tmp_path / "home", args, port, tmp_path / "log"):
        client = httpclient.InferenceServerClient(f"127.0.0.1:{port}")
        x = httpclient.InferInput("x", [1], "FP32")
        x.set_data_from_numpy(np.array([1.5], np.float32))

        def said(name: str) -> str:
            with httpclient.InferenceServerClient(f"127.0.0.1:{port}", network_timeout=60) as own:  # one a thread
                own.load_model(name)
                return own.infer(name, [x]).as_numpy("said")[0].decode()

        assert said("loader") == "ready_before=False; ready_after_load=True; ready_after_unload=False"
        assert not client.is_model_ready("target")
        selfish = said("selfish")
        assert selfish.startswith("ready_before=False; raised: ") and "would wait for itself" in selfish, selfish
        # first's initialize loads second, whose initialize asks for first's load: refused there
        assert said("first") == "ready_before=False; ready_after_load=True; ready_after_unload=False"
        # second on its own loads first (served, not loading now) and unloads it
        assert said("second") == "ready_before=True; ready_after_load=True; ready_after_unload=False"
        assert not client.is_model_ready("first")
        # from a thread the model's initialize started (one loader thread, which its load holds)
        assert said("threaded") == "ready_before=False; ready_after_load=True; ready_after_unload=False"
    logged = [json.loads(line)["msg"] for line in (tmp_path / "log").read_text().splitlines() if " said: " in line]
    assert len(logged) == 6 and logged[2].startswith("second said: ready_before=False; raised: "), logged
    assert "model 'first' is loading, and its load waits for this one" in logged[2], logged
    # helper-223: ping and pong loaded at once (two loader threads), each one's initialize asking for the other's load
    # while both are under way: one is refused there (where both waited for good), and both load
    port = free_port()
    with (
        cli_server(tmp_path / "home2", [*args[:-1], "2"], port, tmp_path / "log2"),
        concurrent.futures.ThreadPoolExecutor(2) as pool,
    ):
        answers = sorted(pool.map(said, ["ping", "pong"], timeout=60))
    assert len([a for a in answers if "raised: " in a and "would wait for itself" in a]) == 1, answers


SCALAR_OF_ONE = '''
import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):
        counts = [int(pb_utils.get_input_tensor_by_name(r, "n").as_numpy()[0]) for r in requests]  # an array of one
        return [pb_utils.InferenceResponse([pb_utils.Tensor("twice", np.array([[2 * n]], np.int32))]) for n in counts]
'''


def test_a_python_model_may_take_an_array_of_one_element_as_a_number_as_tritons_numpy_lets_it(tmp_path: Path) -> None:
    """helper-218 (L0_backend_python/model_readiness's decoupled model, ``int(in_tensor.as_numpy()[0])`` of a [1, 1]
    input): NumPy 2.4 refuses a 1-d array of one element as a Python number (a TypeError), which the NumPy Triton's
    Python backend runs with (1.26 in tritonserver 2.51's) takes, with a DeprecationWarning; polystack's NumPy, the
    one its models run with, failed every such request. constraints.txt keeps NumPy below 2.4."""
    repo = tmp_path / "models"
    python_folder(repo, "count", SCALAR_OF_ONE,
                  'backend: "python"\ninput [ { name: "n", data_type: TYPE_INT32, dims: [ 1, 1 ] } ]\n'
                  'output [ { name: "twice", data_type: TYPE_INT32, dims: [ 1, 1 ] } ]\n')  # fmt: skip
    with served(tmp_path, repo) as client:
        n = httpclient.InferInput("n", [1, 1], "INT32")
        n.set_data_from_numpy(np.array([[21]], np.int32))
        assert client.infer("count", [n]).as_numpy("twice").tolist() == [[42]]


RELOADS_ITSELF = '''
import json
import time

import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args):
        self.config = json.loads(args["model_config"])
        if "SLOW" in self.config.get("parameters", {}):
            time.sleep(2)

    def execute(self, requests):
        config = {key: self.config[key] for key in ("backend", "input", "output", "instance_group")}
        config["parameters"] = {"SLOW": {"string_value": str(time.time())}}  # a new config: a load afresh
        try:
            pb_utils.load_model("selfie", config=json.dumps(config))
            said = "reloaded"
        except pb_utils.TritonModelException as e:
            said = "raised: " + e.message()
        return [pb_utils.InferenceResponse([pb_utils.Tensor("said", np.array([said.encode()], np.object_))])
                for _ in requests]
'''


def test_two_requests_of_a_served_model_reloading_itself_at_once_both_reload_one_after_the_other(
    tmp_path: Path,
) -> None:
    """helper-224: a served model's execute asking for its own load while another load of it ran was refused as a
    circle (the asking load was taken to be the one holding its name's claim), where it only had to wait for that
    load to end. Only a model's build asking counts as its load asking."""
    repo = tmp_path / "models"
    python_folder(repo, "selfie", RELOADS_ITSELF,
                  'backend: "python"\ninstance_group [ { kind: KIND_CPU, count: 2 } ]\n'
                  'input [ { name: "x", data_type: TYPE_FP32, dims: [ 1 ] } ]\n'
                  'output [ { name: "said", data_type: TYPE_STRING, dims: [ 1 ] } ]\n')  # fmt: skip
    port = free_port()
    args = ["--model-repository", str(repo), "--allow-python-models", "--grpc-port", "-1", "--model-control-mode",
            "explicit", "--load-model", "selfie"]  # fmt: skip

    def said(delay: float) -> str:
        time.sleep(delay)
        with httpclient.InferenceServerClient(f"127.0.0.1:{port}", network_timeout=60) as client:
            x = httpclient.InferInput("x", [1], "FP32")
            x.set_data_from_numpy(np.array([1.0], np.float32))
            return client.infer("selfie", [x]).as_numpy("said")[0].decode()

    with (
        cli_server(tmp_path / "home", args, port, tmp_path / "log"),
        concurrent.futures.ThreadPoolExecutor(2) as pool,
    ):
        assert list(pool.map(said, [0.0, 0.7], timeout=60)) == ["reloaded", "reloaded"]


INITIALIZED = '''
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args):
        with open(COUNT, "a") as f:
            f.write("initialize\\n")

    def execute(self, requests):
        return [pb_utils.InferenceResponse([pb_utils.Tensor("y", pb_utils.get_input_tensor_by_name(r, "x").as_numpy())])
                for r in requests]
'''


def test_a_load_after_the_models_files_were_touched_loads_it_afresh_as_triton_compares_their_times(
    tmp_path: Path,
) -> None:
    """helper-191 (L0_lifecycle): Triton reloads a model whose files' modification times changed since its last load
    (a file touched, its content the same: a common way to make it read what it reads at initialize again); polystack
    compared contents and kept it. A load without changes still changes nothing (tritonserver 2.51 reloads its Python
    models there too, but only because its stub writes __pycache__ into the version folder at each load)."""
    count = tmp_path / "count"
    repo = tmp_path / "models"
    python_folder(repo, "m", INITIALIZED.replace("COUNT", repr(str(count))),
                  'backend: "python"\ninput [ { name: "x", data_type: TYPE_FP32, dims: [ 1 ] } ]\n'
                  'output [ { name: "y", data_type: TYPE_FP32, dims: [ 1 ] } ]\n')  # fmt: skip
    port = free_port()
    args = ["--model-repository", str(repo), "--allow-python-models", "--grpc-port", "-1", "--model-control-mode",
            "explicit", "--load-model", "m"]  # fmt: skip

    def initialized() -> int:
        return len(count.read_text().split())

    with cli_server(tmp_path / "home", args, port, tmp_path / "log"):
        client = httpclient.InferenceServerClient(f"127.0.0.1:{port}")
        assert initialized() == 1
        client.load_model("m")
        assert initialized() == 1  # nothing changed
        later = time.time() + 5
        os.utime(repo / "m" / "1" / "model.py", (later, later))
        client.load_model("m")
        assert initialized() == 2 and client.is_model_ready("m")
        client.load_model("m")
        assert initialized() == 2


def test_a_touched_versions_folder_reloads_that_version_and_a_file_beside_them_every_version(tmp_path: Path) -> None:
    """helper-191's rerun (the newest L0_lifecycle ``test_load_new_model_version``): current Triton reloads only the
    versions whose files changed, and every version when a file beside the version folders did (a module they
    import); polystack reloaded every version for any change."""
    count = tmp_path / "count"
    repo = tmp_path / "models"
    source = INITIALIZED.replace("COUNT", repr(str(count))).replace('"initialize\\n"', 'args["model_version"] + "\\n"')
    python_folder(repo, "m", source,
                  'backend: "python"\ninput [ { name: "x", data_type: TYPE_FP32, dims: [ 1 ] } ]\n'
                  'output [ { name: "y", data_type: TYPE_FP32, dims: [ 1 ] } ]\n'
                  "version_policy: { all { } }\n")  # fmt: skip
    shutil.copytree(repo / "m" / "1", repo / "m" / "2")
    (repo / "m" / "helper.py").write_text("VALUE = 1\n")
    port = free_port()
    args = ["--model-repository", str(repo), "--allow-python-models", "--grpc-port", "-1", "--model-control-mode",
            "explicit", "--load-model", "m"]  # fmt: skip

    def initialized() -> list[str]:
        return sorted(count.read_text().split())

    with cli_server(tmp_path / "home", args, port, tmp_path / "log"):
        client = httpclient.InferenceServerClient(f"127.0.0.1:{port}")
        assert initialized() == ["1", "2"]
        later = time.time() + 5
        os.utime(repo / "m" / "2" / "model.py", (later, later))
        client.load_model("m")
        assert initialized() == ["1", "2", "2"]  # version 2 alone
        os.utime(repo / "m" / "helper.py", (later + 5, later + 5))
        client.load_model("m")
        assert initialized() == ["1", "1", "2", "2", "2"]  # both
        assert client.is_model_ready("m", "1") and client.is_model_ready("m", "2")


def test_a_python_models_implicit_state_is_refused_saying_why(tmp_path: Path) -> None:
    """helper-207 (Triton's L0_implicit_state): the refusal named the state's input as one the model lacks, and once
    listed among its inputs, as one listed twice; tritonserver 2.51 loads such a model and never keeps its state."""
    python_folder(tmp_path / "models", "stateful", SCALE,
        'backend: "python"\nmax_batch_size: 8\ninput [ { name: "x", data_type: TYPE_FP32, dims: [ 16 ] } ]\n'
        'output [ { name: "y", data_type: TYPE_FP32, dims: [ 16 ] } ]\n'
        'sequence_batching { state [ { input_name: "INPUT_STATE", output_name: "OUTPUT_STATE", data_type: TYPE_INT32,'
        " dims: [ 1 ] } ] }\n")  # fmt: skip
    line = refused_at_start(tmp_path, ["--model-repository", str(tmp_path / "models"), "--allow-python-models"])
    assert "sequence_batching.state: 'stateful' is a Python model, whose implicit state polystack does not keep" in line


def test_a_start_failed_by_a_model_s_initialize_says_where_on_one_line(tmp_path: Path) -> None:
    """helper-217: the load's failure now carries Triton's ``At:`` lines; the CLI still says it on one line."""
    python_folder(tmp_path / "models", "bad", "class TritonPythonModel:\n    def initialize(self, args):\n"
                  "        return missing_name\n",
                  'backend: "python"\nmax_batch_size: 0\ninput [ { name: "x", data_type: TYPE_FP32, dims: [ 1 ] } ]\n'
                  'output [ { name: "y", data_type: TYPE_FP32, dims: [ 1 ] } ]\n')  # fmt: skip
    line = refused_at_start(tmp_path, ["--model-repository", str(tmp_path / "models"), "--allow-python-models"])
    assert re.search(r"failed in initialize: NameError: name 'missing_name' is not defined At: \S+/1/model\.py\(3\): "
                     r"initialize$", line), line  # fmt: skip


WEIGHTS_AT_IMPORT = """
import numpy as np
import triton_python_backend_utils as pb_utils

WEIGHTS = np.ones(160 * 2**20 // 8)  # read as the file is imported, as many model files read their weights


class TritonPythonModel:
    def execute(self, requests):
        return [pb_utils.InferenceResponse([pb_utils.get_input_tensor_by_name(r, "x")]) for r in requests]
"""


def test_an_unloaded_python_models_module_level_memory_is_given_back(tmp_path: Path) -> None:
    """helper-273: a module and its functions hold each other, so what a model file made at import was freed only
    when the cycle collector ran, never in an idle server, and never for a model loaded at the start (its objects
    frozen with the start's): 100 MB more after each unload, 1.2 GB after a dozen reloads."""
    repo = tmp_path / "repo"
    python_folder(repo, "big", WEIGHTS_AT_IMPORT,
                  'backend: "python"\ninput [ { name: "x", data_type: TYPE_FP32, dims: [ 2 ] } ]\n'
                  'output [ { name: "x", data_type: TYPE_FP32, dims: [ 2 ] } ]\n')  # fmt: skip
    port = free_port()
    args = ["--model-repository", str(repo), "--allow-python-models", "--grpc-port", "-1",
            "--model-control-mode", "explicit", "--load-model", "big"]  # fmt: skip
    with cli_server(tmp_path / "home", args, port, tmp_path / "log") as proc:
        client = httpclient.InferenceServerClient(f"127.0.0.1:{port}")

        def rss_mb() -> float:
            status = Path(f"/proc/{proc.pid}/status").read_text()
            return int(re.search(r"VmRSS:\s+(\d+)", status).group(1)) / 1024  # type: ignore[union-attr]

        loaded = rss_mb()
        for _ in range(2):  # loaded at the start, then loaded by the API
            client.unload_model("big")
            assert until(lambda: rss_mb() < loaded - 120, within_s=15), (loaded, rss_mb())
            client.load_model("big")
            assert client.is_model_ready("big")
            assert rss_mb() < loaded + 40  # one copy, as before: the load's auto-complete import let go too


RAISES_ON_NEGATIVE = '''
import numpy as np
import triton_python_backend_utils as pb_utils

class TritonPythonModel:
    def execute(self, requests):
        out = []
        for r in requests:
            x = pb_utils.get_input_tensor_by_name(r, "x").as_numpy()
            if (x < -5).any():
                raise pb_utils.TritonError("very negative input", pb_utils.TritonError.INVALID_ARG)
            if (x < 0).any():
                raise ValueError("negative input")
            out.append(pb_utils.InferenceResponse([pb_utils.Tensor("y", x * 2)]))
        return out
'''


def test_an_execute_that_raises_is_an_execution_and_no_inference_as_triton_counts_it(tmp_path: Path) -> None:
    """helper-275: a model whose execute raised counted no execution (Triton's backends report every execute: its
    execution count and batch statistics count it, its inference count does not), unbatched, dynamically batched or
    under a sequence batcher; a request refused before the model runs is no execution."""
    repo = tmp_path / "models"
    io = (
        'backend: "python"\nmax_batch_size: 4\ninput [ { name: "x", data_type: TYPE_FP32, dims: [ 1 ] } ]\n'
        'output [ { name: "y", data_type: TYPE_FP32, dims: [ 1 ] } ]\n'
    )
    python_folder(repo, "alone", RAISES_ON_NEGATIVE, io)
    python_folder(repo, "batched", RAISES_ON_NEGATIVE, io + "dynamic_batching { }\n")
    python_folder(repo, "seq", RAISES_ON_NEGATIVE, io + "sequence_batching { }\n")
    with served(tmp_path, repo) as client:
        for model in ("alone", "batched", "seq"):
            sequence = {"sequence_id": 5, "sequence_start": True, "sequence_end": True} if model == "seq" else {}

            def run(value: float, model: str = model, sequence: dict[str, Any] = sequence) -> None:
                x = httpclient.InferInput("x", [1, 1], "FP32")
                x.set_data_from_numpy(np.full((1, 1), value, np.float32))
                client.infer(model, [x], **sequence)

            def counts(model: str = model) -> tuple[int, ...]:
                s = client.get_inference_statistics(model)["model_stats"][0]
                return (s["execution_count"], s["inference_count"], s["inference_stats"]["fail"]["count"],
                        sum(b["compute_infer"]["count"] for b in s["batch_stats"]))  # fmt: skip

            with pytest.raises(InferenceServerException, match="negative input"):
                run(-1.0)
            assert counts() == (1, 0, 1, 1), model  # (executions, inferences, failures, batch executions)
            run(1.0)
            assert counts() == (2, 1, 1, 2), model
            with pytest.raises(InferenceServerException, match="very negative input"):
                run(-10.0)  # its own error, of a code that is the client's fault: it ran all the same
            assert counts() == (3, 1, 2, 3), model
            with pytest.raises(InferenceServerException, match="unexpected shape"):
                client.infer(model, [httpclient.InferInput("x", [1, 3], "FP32").set_data_from_numpy(
                    np.ones((1, 3), np.float32))], **sequence)  # fmt: skip
            assert counts() == (3, 1, 3, 3), model  # refused before it ran: no execution


def test_a_config_changed_in_its_instance_groups_alone_keeps_the_versions_statistics_as_tritons(
    tmp_path: Path,
) -> None:
    """helper-283: tritonserver 2.51 updates a model in place when its config changes in its instance groups alone
    (or in comments, or its version policy): its statistics count on, where polystack's started again at 0. A
    change to its files reloads it, and its statistics start again on both; Triton's metrics count on throughout."""
    repo, port = repository(tmp_path / "models"), free_port()
    args = ["--model-repository", str(repo), "--allow-python-models", "--grpc-port", "-1", "--model-control-mode",
            "explicit", "--load-model", "scale", "--triton-metrics"]  # fmt: skip
    x = httpclient.InferInput("x", [1, 16], "FP32")
    x.set_data_from_numpy(np.ones((1, 16), np.float32))

    def counts() -> tuple[int, float]:
        [stats] = client.get_inference_statistics("scale")["model_stats"]
        metrics = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics").read().decode()
        shown = re.search(r'^nv_inference_count\{model="scale",version="1"\} (\S+)$', metrics, re.M)
        assert shown is not None, metrics
        return stats["inference_count"], float(shown.group(1))

    with cli_server(tmp_path / "home", args, port, tmp_path / "log"):
        client = httpclient.InferenceServerClient(f"127.0.0.1:{port}")
        for _ in range(3):
            client.infer("scale", [x])
        assert counts() == (3, 3)
        config = repo / "scale" / "config.pbtxt"
        groups = "instance_group [ { count: 2, kind: KIND_CPU } ]\n"
        config.write_text("# two instances now\n" + config.read_text() + groups)
        client.load_model("scale")
        assert client.get_model_config("scale")["instance_group"][0]["count"] == 2
        client.infer("scale", [x])
        assert counts() == (4, 4)  # counting on: updated in place
        config.write_text(config.read_text() + "version_policy: { latest: { num_versions: 2 } }\n")
        client.load_model("scale")
        client.infer("scale", [x])
        assert counts() == (5, 5)  # a version policy that keeps the version: the same
        source = repo / "scale" / "1" / "model.py"
        source.write_text(source.read_text() + "\n# changed\n")
        time.sleep(0.01)  # a later modification time than its last load's
        client.load_model("scale")
        client.infer("scale", [x])
        assert counts() == (1, 6)  # reloaded: its statistics start again, Triton's metric counts on
        client.close()
