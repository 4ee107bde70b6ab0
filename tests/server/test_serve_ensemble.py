"""Triton's ensembles: a repository folder whose config.pbtxt declares a pipeline of served models, served by
a real server process to the real tritonclient (HTTP and gRPC); and the ensemble configs refused, each
with what is wrong."""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import json
import re
import time
import urllib.request
from collections.abc import Iterator, Mapping
from pathlib import Path

import httpx
import numpy as np
import onnx
import onnxruntime as ort
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from servekit import (
    ACC,
    CONCAT_IO,
    cli_server,
    concat_inputs,
    concat_onnx,
    free_port,
    refused_after_loads,
    refused_at_start,
    same_config_both_ways,
    single_op,
    start,
    until,
)
from tritonclient.utils import InferenceServerException

from polystack.errors import InvalidRequest, ModelClosed, Unavailable
from polystack.examples import accumulator_onnx, mlp_onnx
from polystack.server import config_text, ensemble
from polystack.store import ModelRecord, Store

# mlp: x FP32[16] -> y FP32[4]; head: h FP32[4] -> z FP32[3]; pipe runs mlp, then head and neg at once
PIPE = """
name: "pipe"
platform: "ensemble"
max_batch_size: 8
input [ { name: "IN", data_type: TYPE_FP32, dims: [ 16 ] } ]
output [
  { name: "OUT", data_type: TYPE_FP32, dims: [ 3 ] },
  { name: "NEG", data_type: TYPE_FP32, dims: [ 4 ] }
]
ensemble_scheduling {
  step [
    { model_name: "mlp", model_version: -1, input_map { key: "x" value: "IN" }, output_map { key: "y" value: "MID" } },
    { model_name: "head", model_version: -1, input_map { key: "h" value: "MID" }, output_map { key: "z" value: "OUT" } },
    { model_name: "neg", model_version: 1, input_map { key: "a" value: "MID" }, output_map { key: "b" value: "NEG" } }
  ]
}
"""


def _neg_onnx(path: Path) -> Path:
    """a FP32[batch, 4] -> b = -a."""
    from onnx import TensorProto

    return single_op(path, "Neg", TensorProto.FLOAT, 4, "a", [("b", "Neg")])


def pipeline_repository(root: Path) -> Path:
    """mlp (batched by its config), head and neg (configs that list no inputs: batched as Triton's auto-complete
    batches them, up to the ensemble's 8), and the ensemble pipe with an empty version folder."""
    for name, make in (
        ("mlp", lambda p: mlp_onnx(p, sizes=(16, 32, 4), seed=1)),
        ("head", lambda p: mlp_onnx(p, sizes=(4, 3), seed=2, input_name="h", output_name="z")),
        ("neg", _neg_onnx),
    ):
        (root / name / "1").mkdir(parents=True)
        make(root / name / "1" / "model.onnx")
    (root / "mlp" / "config.pbtxt").write_text(
        'max_batch_size: 8\ninput [ { name: "x", data_type: TYPE_FP32, dims: [ 16 ] } ]\n'
        "dynamic_batching { max_queue_delay_microseconds: 2000 }\n"
    )
    (root / "head" / "config.pbtxt").write_text('max_batch_size: 8\noutput [ { name: "z", label_filename: "labels.txt" } ]\n')
    (root / "neg" / "config.pbtxt").write_text("max_batch_size: 8\n")
    (root / "head" / "labels.txt").write_text("cat\ndog\nbird\n")
    (root / "pipe" / "1").mkdir(parents=True)
    (root / "pipe" / "config.pbtxt").write_text(PIPE)
    return root


def _run(model: Path, x: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    return np.asarray(session.run(None, {session.get_inputs()[0].name: x})[0])


def _expected(repo: Path, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """pipe's OUT and NEG for ``x``, from its models run straight with ONNX Runtime."""
    mid = _run(repo / "mlp" / "1" / "model.onnx", x)
    return _run(repo / "head" / "1" / "model.onnx", mid), -mid


@contextlib.contextmanager
def _served(tmp_path: Path, *flags: str) -> Iterator[tuple[Path, int, int]]:
    repo, port, grpc_port = pipeline_repository(tmp_path / "models"), free_port(), free_port()
    args = ["--model-repository", str(repo), "--grpc-port", str(grpc_port), *flags]
    with cli_server(tmp_path / "home", args, port, tmp_path / "serve.log"):
        yield repo, port, grpc_port


@pytest.mark.parametrize("change", ["unload", "reload"])
def test_requests_in_flight_finish_on_the_models_they_started_with(tmp_path: Path, change: str) -> None:
    """As Triton's ensembles hold their models' handles for a request's life (helper-75: requests still in step 1
    failed when a later step's model was unloaded, and ran the later steps on a reloaded one)."""
    repo = pipeline_repository(tmp_path / "models")
    # step 1 waits up to 1 s for a fuller batch: the requests are in it, their later steps not run yet
    (repo / "mlp" / "config.pbtxt").write_text(
        'max_batch_size: 8\ninput [ { name: "x", data_type: TYPE_FP32, dims: [ 16 ] } ]\n'
        "dynamic_batching { max_queue_delay_microseconds: 1000000 }\n"
    )
    x = np.random.default_rng(3).standard_normal((1, 16)).astype(np.float32)
    port, grpc_port = free_port(), free_port()
    args = ["--model-repository", str(repo), "--grpc-port", str(grpc_port), "--allow-model-control"]
    with cli_server(tmp_path / "home", args, port, tmp_path / "serve.log"):
        out, neg = _expected(repo, x)
        http = httpclient.InferenceServerClient(f"127.0.0.1:{port}", concurrency=4)
        i = httpclient.InferInput("IN", [1, 16], "FP32")
        i.set_data_from_numpy(x)
        pending = [http.async_infer("pipe", [i]) for _ in range(3)]
        time.sleep(0.3)
        if change == "unload":
            http.unload_model("head")  # the ensemble goes with it, as in Triton, once its requests are done
        else:  # head's new version: a model with other weights, loaded in its place
            (repo / "head" / "2").mkdir()
            mlp_onnx(repo / "head" / "2" / "model.onnx", sizes=(4, 3), seed=9, input_name="h", output_name="z")
            http.load_model("head")
            assert not http.is_model_ready("head", "1")
        for answer in pending:
            result = answer.get_result(timeout=30)
            np.testing.assert_allclose(result.as_numpy("OUT"), out, rtol=1e-5, atol=1e-6)
            np.testing.assert_allclose(result.as_numpy("NEG"), neg, rtol=1e-5, atol=1e-6)
        if change == "unload":
            assert not http.is_model_ready("pipe")
        else:  # a request now runs the new version
            new = _run(repo / "head" / "2" / "model.onnx", _run(repo / "mlp" / "1" / "model.onnx", x))
            np.testing.assert_allclose(http.infer("pipe", [i]).as_numpy("OUT"), new, rtol=1e-5, atol=1e-6)




def _ensemble_folder(root: Path, name: str, steps: list[tuple[str, str, str, str]]) -> None:
    """An ensemble IN -> OUT (FP32 [1], batched to 4) of steps (model, its input, its output, what it gives)."""
    (root / name / "1").mkdir(parents=True)
    config = {"platform": "ensemble", "max_batch_size": 4, "input": [{"name": "IN", "data_type": "TYPE_FP32", "dims": [1]}],
              "output": [{"name": "OUT", "data_type": "TYPE_FP32", "dims": [1]}],
              "ensemble_scheduling": {"step": [{"model_name": m, "model_version": -1, "input_map": {i: src},
                                                "output_map": {o: out}}
                                               for (m, i, o, out), src in zip(steps, ["IN", *(s[3] for s in steps[:-1])], strict=True)]}}  # fmt: skip
    (root / name / "config.pbtxt").write_text(json.dumps(config))


def test_a_nested_ensemble_runs_a_sequence_model_it_holds_after_an_unload(tmp_path: Path) -> None:
    """helper-77: the nested ensemble looked for its sequence models among those served now, not those its request
    holds, and refused the request's sequence parameters once the sequence model was unloaded."""
    from onnx import TensorProto, helper

    repo = tmp_path / "models"
    (repo / "acc" / "1").mkdir(parents=True)
    accumulator_onnx(repo / "acc" / "1" / "model.onnx", TensorProto.UINT64)
    (repo / "acc" / "config.pbtxt").write_text(ACC % {"idle": 5_000_000})
    (repo / "slowid" / "1").mkdir(parents=True)
    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "slowid",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["b", 1])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["b", 1])])  # fmt: skip
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(repo / "slowid" / "1" / "model.onnx"))
    # its batcher waits up to 1 s for company: a request stays in step 1 meanwhile
    (repo / "slowid" / "config.pbtxt").write_text("max_batch_size: 4\ndynamic_batching { max_queue_delay_microseconds: 1000000 }\n")
    _ensemble_folder(repo, "inner", [("acc", "INPUT", "OUTPUT", "OUT")])
    _ensemble_folder(repo, "outer", [("slowid", "x", "y", "MID"), ("inner", "IN", "OUT", "OUT")])
    port = free_port()
    args = ["--model-repository", str(repo), "--grpc-port", "-1", "--allow-model-control"]
    with cli_server(tmp_path / "home", args, port, tmp_path / "serve.log"):
        client = httpclient.InferenceServerClient(f"127.0.0.1:{port}", network_timeout=60)
        body = {"inputs": [{"name": "IN", "shape": [1, 1], "datatype": "FP32", "data": [[3.0]]}],
                "parameters": {"sequence_id": 12, "sequence_start": True}}  # fmt: skip
        # sent from a thread: tritonclient's async_infer sends only once this thread yields to gevent (the unload's
        # call), so its request could reach the server after the unload (cc102)
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            pending = pool.submit(httpx.post, f"http://127.0.0.1:{port}/v2/models/outer/infer", json=body, timeout=30)

            def in_step_1() -> bool:  # its batcher waiting for company (a fixed 0.3 s was not enough once: cc163)
                text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text
                m = re.search(r'^polystack_inference_queue_depth\{model="slowid",version="1"\} (\S+)$', text, re.M)
                return m is not None and float(m.group(1)) == 1

            assert until(in_step_1, 10), "the request never reached step 1"
            client.unload_model("acc")
            answer = pending.result()
        assert answer.status_code == 200, answer.text
        assert answer.json()["outputs"][0]["data"] == [3.0]
        assert not client.is_model_ready("outer")
    # the start's log names the ensembles it serves beside the models (helper-95: it named the models alone)
    [serving] = [json.loads(line) for line in (tmp_path / "serve.log").read_text().splitlines() if '"serving"' in line]
    assert serving["ensembles"] == ["inner:1", "outer:1"] and "acc:1" in serving["models"], serving


def test_a_request_that_cannot_hold_every_model_of_its_ensemble_holds_none(
    model_store: tuple[Store, dict[str, ModelRecord]],
) -> None:
    """helper-77: a step's version registered but not loaded (not at ready state) left the models held before it
    held, so their next unload waited 30 s for a request that had ended."""
    st = start(model_store[0], models=["mlp"])
    try:
        plane = st.server.plane
        steps = [_step("mlp", {"x": "IN"}, {"y": "MID"}), _step("ident64", {"a": "MID"}, {"b": "OUT"}, version=1)]
        pipeline = ensemble.read(_config(steps), "e", 1)
        with pytest.raises(Unavailable, match=r"'ident64' version 1 is not at ready state.*the ensemble cannot run without it"):
            plane.ensemble_requests.pin(pipeline)
        assert plane.served_versions[("mlp", 1)].pins == 0
    finally:
        st.stop()


def _stats(client: httpclient.InferenceServerClient, model: str) -> dict[str, int]:
    [s] = client.get_inference_statistics(model)["model_stats"]
    return {"inference_count": s["inference_count"], "execution_count": s["execution_count"],
            "success": s["inference_stats"]["success"]["count"], "fail": s["inference_stats"]["fail"]["count"],
            "compute_infer_ns": s["inference_stats"]["compute_infer"]["ns"]}  # fmt: skip


def test_an_ensemble_runs_its_steps_for_tritonclient_over_http_and_grpc(tmp_path: Path) -> None:
    x = np.random.default_rng(0).standard_normal((3, 16)).astype(np.float32)
    with _served(tmp_path, "--allow-model-control") as (repo, port, grpc_port):
        out, neg = _expected(repo, x)
        http = httpclient.InferenceServerClient(f"127.0.0.1:{port}")
        grpc = grpcclient.InferenceServerClient(f"127.0.0.1:{grpc_port}")
        assert http.is_model_ready("pipe") and http.is_model_ready("pipe", "1") and not http.is_model_ready("pipe", "2")
        for client in (httpclient, grpcclient):
            i = client.InferInput("IN", [3, 16], "FP32")
            i.set_data_from_numpy(x)
            answer = (http if client is httpclient else grpc).infer("pipe", [i])
            np.testing.assert_allclose(answer.as_numpy("OUT"), out, rtol=1e-5, atol=1e-6)
            np.testing.assert_allclose(answer.as_numpy("NEG"), neg, rtol=1e-5, atol=1e-6)
            response = answer.get_response()
            assert (response["model_name"] if client is httpclient else response.model_name) == "pipe"
        # metadata and config as Triton shows an ensemble's
        meta = http.get_model_metadata("pipe")
        assert meta["platform"] == "ensemble" and meta["versions"] == ["1"]
        assert meta["inputs"] == [{"name": "IN", "datatype": "FP32", "shape": [-1, 16]}]
        config = grpc.get_model_config("pipe", as_json=True)["config"]
        assert config["platform"] == "ensemble" and config["max_batch_size"] == 8
        for name in ("pipe", "mlp", "head", "neg"):  # gRPC shows every field HTTP shows
            same_config_both_ways(http, grpc, name)
        shown = http.get_model_config("pipe")
        assert shown["version_policy"] == {"latest": {"num_versions": 1}}  # as Triton shows one (none was shown)
        # Triton's fields at their defaults, which tritonserver 2.51 shows for an ensemble too (helper-108)
        assert (shown["instance_group"], shown["parameters"], shown["model_warmup"], shown["metric_tags"]) == ([], {}, [], {})
        assert all(i["optional"] is False and i["is_shape_tensor"] is False for i in shown["input"])
        assert all(o["label_filename"] == "" for o in shown["output"])
        http.load_model("pipe", config=json.dumps(shown))  # loads back as served
        assert http.get_model_config("pipe") == shown and http.is_model_ready("pipe", "1")
        steps = config["ensemble_scheduling"]["step"]
        assert [(s["model_name"], s["model_version"]) for s in steps] == [("mlp", "-1"), ("head", "-1"), ("neg", "1")]
        assert steps[1]["input_map"] == {"h": "MID"} and steps[1]["output_map"] == {"z": "OUT"}
        # the ensemble counts its requests, the models count their steps
        listed = [(m["name"], m["version"]) for m in http.get_inference_statistics()["model_stats"]]
        assert listed == sorted(listed) and ("pipe", "1") in listed  # among the models, as Triton lists it
        pipe, head, mlp = _stats(http, "pipe"), _stats(http, "head"), _stats(http, "mlp")
        assert (pipe["success"], pipe["inference_count"], pipe["execution_count"]) == (2, 6, 2)
        assert pipe["compute_infer_ns"] > 0 and head["success"] == 2 and mlp["inference_count"] == 6
        # asked for NEG only: the step that gives OUT alone does not run
        i = httpclient.InferInput("IN", [3, 16], "FP32")
        i.set_data_from_numpy(x)
        answer = http.infer("pipe", [i], outputs=[httpclient.InferRequestedOutput("NEG", binary_data=False)])
        assert answer.as_numpy("OUT") is None
        np.testing.assert_allclose(answer.as_numpy("NEG"), neg, rtol=1e-5, atol=1e-6)
        assert _stats(http, "head")["success"] == 2 and _stats(http, "neg")["success"] == 3
        # its outputs' classes carry the labels of the model output that gives them
        top = http.infer("pipe", [i], outputs=[httpclient.InferRequestedOutput("OUT", class_count=1)]).as_numpy("OUT")
        best = int(np.argmax(out[0]))
        assert top[0][0].decode().endswith(f":{best}:{['cat', 'dog', 'bird'][best]}")
        metrics = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
        assert re.search(r'polystack_inference_compute_duration_seconds_count\{model="pipe",version="1"\} 4', metrics)
        # what the ensemble refuses is the client's fault, answered while it serves on
        for inputs, outputs, words in (
            ({"IN": np.ones((3, 16), np.int32)}, None, "inference input 'IN' data-type is 'INT32', but model 'pipe' expects 'FP32'"),
            ({"IN": np.ones((9, 16), np.float32)}, None, "inference request batch-size must be <= 8 for 'pipe', not 9"),
            ({"IN": np.ones((3, 15), np.float32)}, None, "unexpected shape for input 'IN' for model 'pipe'. Expected [-1,16], got [3,15]"),
            ({"IN": np.ones((3, 16), np.float32), "MID": np.ones((3, 4), np.float32)}, None, "unexpected inference input 'MID' for model 'pipe'"),
            ({"IN": np.ones((3, 16), np.float32)}, "MID", "unexpected inference output 'MID' for model 'pipe'"),
        ):
            tensors = []
            for name, value in inputs.items():
                tensors.append(
                    httpclient.InferInput(name, list(value.shape), "FP32" if value.dtype == np.float32 else "INT32")
                )
                tensors[-1].set_data_from_numpy(value)
            asked = [httpclient.InferRequestedOutput(outputs)] if outputs else None
            with pytest.raises(InferenceServerException, match=re.escape(words)) as e:
                http.infer("pipe", tensors, outputs=asked)
            assert e.value.status() == "400"
        with pytest.raises(InferenceServerException) as e:
            http.infer("pipe", [i], model_version="2")
        assert e.value.status() == "404"
        assert _stats(http, "pipe")["fail"] == 5  # the one for a version it does not have is not its own
        # the index lists it; unloading a model it runs unloads it, as in Triton; loading it loads that model
        index = {m["name"]: m for m in http.get_model_repository_index()}
        assert index["pipe"]["state"] == "READY" and index["pipe"]["version"] == "1"
        http.unload_model("head")
        assert not http.is_model_ready("pipe")
        for ask in (lambda: http.infer("pipe", [i]), lambda: http.get_model_metadata("pipe")):  # Triton's words
            with pytest.raises(InferenceServerException, match=r"'pipe' has no available versions \(it was unloaded\)"):
                ask()
        http.load_model("pipe")
        assert http.is_model_ready("pipe") and http.is_model_ready("head")
        np.testing.assert_allclose(http.infer("pipe", [i]).as_numpy("OUT"), out, rtol=1e-5, atol=1e-6)
        # its folder's config changed: a load reads it again; one that no longer fits is refused, the old serves on
        (repo / "pipe" / "config.pbtxt").write_text(PIPE.replace('model_name: "neg"', 'model_name: "nope"'))
        with pytest.raises(InferenceServerException, match=r"load failed for model 'pipe'.*'nope'"):
            http.load_model("pipe")
        assert http.is_model_ready("pipe")
        http.unload_model("pipe")
        assert not http.is_model_ready("pipe") and http.is_model_ready("mlp")
        http.unload_model("pipe")  # not loaded: left as it is, as a model is
        # unload_dependents: the models it runs go too (those no other ensemble runs)
        (repo / "pipe" / "config.pbtxt").write_text(PIPE)
        http.load_model("pipe")
        http.unload_model("pipe", unload_dependents=True)
        assert not any(http.is_model_ready(m) for m in ("pipe", "mlp", "head", "neg"))
        http.load_model("pipe")  # loads them again
        assert all(http.is_model_ready(m) for m in ("pipe", "mlp", "head", "neg"))
        # a model's folder that holds an ensemble now, and back: a load serves what the folder holds, and the
        # ensembles that run it (outer) are checked against what it is now
        (repo / "sw" / "1").mkdir(parents=True)
        mlp_onnx(repo / "sw" / "1" / "model.onnx", sizes=(16, 4))
        http.load_model("sw")
        assert http.get_model_metadata("sw")["platform"] == "onnxruntime_onnx"
        (repo / "outer" / "1").mkdir(parents=True)
        (repo / "outer" / "config.pbtxt").write_text(_one_step("sw", "x", "y", "A", "B"))
        http.load_model("outer")
        sw_model = (repo / "sw" / "1" / "model.onnx").read_bytes()
        (repo / "sw" / "1" / "model.onnx").unlink()
        (repo / "sw" / "1").rmdir()
        (repo / "sw" / "2").mkdir()
        (repo / "sw" / "config.pbtxt").write_text(_one_step("mlp", "x", "y", "x", "y"))  # the model's tensors
        http.load_model("sw")
        assert http.get_model_metadata("sw")["platform"] == "ensemble" and http.is_model_ready("outer")
        a = httpclient.InferInput("A", [1, 16], "FP32")
        a.set_data_from_numpy(np.ones((1, 16), np.float32))
        assert http.infer("outer", [a]).as_numpy("B").shape == (1, 4)
        (repo / "sw" / "config.pbtxt").unlink()
        (repo / "sw" / "2" / "model.onnx").write_bytes(sw_model)  # a model again: outer still fits
        http.load_model("sw")
        assert http.get_model_metadata("sw")["platform"] == "onnxruntime_onnx" and http.is_model_ready("outer")
        (repo / "sw" / "2" / "model.onnx").unlink()
        (repo / "sw" / "config.pbtxt").write_text(_one_step("mlp", "x", "y", "IN", "OUT"))
        http.load_model("sw")  # an ensemble of other tensors: outer no longer fits it, and goes
        assert http.get_model_metadata("sw") == {
            "name": "sw", "versions": ["2"], "platform": "ensemble",
            "inputs": [{"name": "IN", "datatype": "FP32", "shape": [-1, 16]}],
            "outputs": [{"name": "OUT", "datatype": "FP32", "shape": [-1, 4]}],
        }  # fmt: skip
        assert not http.is_model_ready("outer")
        index = http.get_model_repository_index()
        assert [m["name"] for m in index] == sorted(m["name"] for m in index)
        # the model's version 1 was unloaded when its folder changed: Triton's index lists it so
        assert [(m.get("version"), m["state"]) for m in index if m["name"] == "sw"] == [
            ("1", "UNAVAILABLE"), ("2", "READY")
        ]  # fmt: skip
        assert {"name": "outer", "version": "1", "state": "UNAVAILABLE", "reason": "unloaded"} in index
    log = (tmp_path / "serve.log").read_text()
    assert '"ensemble"' in log and "Traceback" not in log


def test_an_ensembles_answer_carries_the_requests_sequence_parameters_as_tritons_do(tmp_path: Path) -> None:
    """Triton's QA test_ensemble_sequence_flags (qa/L0_simple_ensemble) reads each gRPC stream answer's
    sequence_start and sequence_end; tritonserver 2.51's ensemble answers carry them, with sequence_id (0 and false
    where the request sent none: bench/triton_parity.py), polystack's carried none."""
    x = np.ones((1, 16), np.float32)
    with _served(tmp_path) as (_, port, grpc_port):
        body = {"inputs": [{"name": "IN", "datatype": "FP32", "shape": [1, 16], "data": x.ravel().tolist()}]}
        answer = httpx.post(f"http://127.0.0.1:{port}/v2/models/pipe/infer", json=body).json()
        assert answer["parameters"] == {"sequence_id": 0, "sequence_start": False, "sequence_end": False}
        body["parameters"] = {"sequence_id": "s-1", "sequence_start": True}
        answer = httpx.post(f"http://127.0.0.1:{port}/v2/models/pipe/infer", json=body).json()
        assert answer["parameters"] == {"sequence_id": "s-1", "sequence_start": True, "sequence_end": False}
        mlp = httpx.post(f"http://127.0.0.1:{port}/v2/models/mlp/infer", json={**body, "inputs": [
            {**body["inputs"][0], "name": "x"}]}).json()  # fmt: skip
        assert "parameters" not in mlp  # a model's answer carries none, as Triton's
        generate = f"http://127.0.0.1:{port}/v2/models/pipe/generate"
        generated = httpx.post(generate, json={"IN": x.ravel().tolist()}).json()
        assert {k: generated[k] for k in ("sequence_id", "sequence_start", "sequence_end")} == {
            "sequence_id": 0, "sequence_start": False, "sequence_end": False}  # fmt: skip
        got: list[grpcclient.InferResult] = []
        client = grpcclient.InferenceServerClient(f"127.0.0.1:{grpc_port}")
        client.start_stream(callback=lambda result, error: got.append(result))
        i = grpcclient.InferInput("IN", [1, 16], "FP32")
        i.set_data_from_numpy(x)
        for start, end in ((True, False), (False, False), (False, True)):
            client.async_stream_infer("pipe", [i], sequence_id=42, sequence_start=start, sequence_end=end)
        deadline = time.monotonic() + 10
        while len(got) < 3 and time.monotonic() < deadline:
            time.sleep(0.01)
        client.stop_stream()
        flags = [
            (p["sequence_id"].int64_param, p["sequence_start"].bool_param, p["sequence_end"].bool_param)
            for p in (r.get_response().parameters for r in got)
        ]
        assert flags == [(42, True, False), (42, False, False), (42, False, True)]
        # -1: the ID 2**64 - 1 (Triton reads an int64_param so), answered as the int64_param it came as
        unary = client.infer("pipe", [i], sequence_id=-1).get_response().parameters
        assert unary["sequence_id"].int64_param == -1


def test_a_polled_repository_serves_an_ensemble_added_and_takes_it_away(tmp_path: Path) -> None:
    with _served(tmp_path, "--repository-poll-secs", "0.2") as (repo, port, _):
        http = httpclient.InferenceServerClient(f"127.0.0.1:{port}")
        assert http.is_model_ready("pipe")
        (repo / "chain" / "1").mkdir(parents=True)  # an ensemble that runs the ensemble pipe
        (repo / "chain" / "config.pbtxt").write_text(_one_step("pipe", "IN", "OUT", "A", "B", dims=3))
        assert until(lambda: http.is_model_ready("chain"))
        x = np.ones((2, 16), np.float32)
        i = httpclient.InferInput("A", [2, 16], "FP32")
        i.set_data_from_numpy(x)
        np.testing.assert_allclose(http.infer("chain", [i]).as_numpy("B"), _expected(repo, x)[0], rtol=1e-5, atol=1e-6)
        top = http.infer("chain", [i], outputs=[httpclient.InferRequestedOutput("B", class_count=1)]).as_numpy("B")
        assert top[0][0].decode().split(":")[-1] in ("cat", "dog", "bird")  # head's labels, through pipe
        # a new config that does not fit yet: the old one serves on, and loads once the models it runs fit it
        (repo / "pipe" / "config.pbtxt").write_text(PIPE.replace("model_version: 1", "model_version: 2"))
        time.sleep(1.0)  # polls that read it and refuse it
        assert http.get_model_config("pipe")["ensemble_scheduling"]["step"][2]["model_version"] == 1
        (repo / "neg" / "2").mkdir()
        _neg_onnx(repo / "neg" / "2" / "model.onnx")
        assert until(lambda: http.get_model_config("pipe")["ensemble_scheduling"]["step"][2]["model_version"] == 2)
        assert until(lambda: http.is_model_ready("chain"))
        # a broken ensemble folder that becomes a model: served as one, and polling goes on
        (repo / "bad" / "1").mkdir(parents=True)
        (repo / "bad" / "config.pbtxt").write_text(_one_step("mlp", "xx", "y", "IN", "OUT"))
        time.sleep(1.0)
        assert not http.is_model_ready("bad")
        (repo / "bad" / "config.pbtxt").unlink()
        mlp_onnx(repo / "bad" / "1" / "model.onnx")
        (repo / "mlp" / "1" / "touched").write_text("")  # a model changes in the same poll: ensembles are retried
        assert until(lambda: http.is_model_ready("bad"))
        (repo / "later" / "1").mkdir(parents=True)
        mlp_onnx(repo / "later" / "1" / "model.onnx")
        assert until(lambda: http.is_model_ready("later"))
        # a model it runs goes: the ensembles go; it comes back: they come back, as Triton's poll reloads them
        (repo / "head").rename(tmp_path / "head")
        assert until(lambda: not http.is_model_ready("pipe") and not http.is_model_ready("chain"))
        (tmp_path / "head").rename(repo / "head")
        assert until(lambda: http.is_model_ready("chain") and http.is_model_ready("pipe"))
        np.testing.assert_allclose(http.infer("chain", [i]).as_numpy("B"), _expected(repo, x)[0], rtol=1e-5, atol=1e-6)
        for name in ("chain", "pipe"):
            (repo / name / "config.pbtxt").unlink()
            (repo / name / "1").rmdir()
            (repo / name).rmdir()
        assert until(lambda: not http.is_model_ready("chain") and not http.is_model_ready("pipe"))
        assert http.is_model_ready("mlp")


def _one_step(
    model: str, takes: str, gives: str, inp: str, out: str, version: int = -1, dims: int = 4, in_dims: int = 16
) -> str:
    """An ensemble's config.pbtxt: ``inp`` [in_dims] -> ``model`` (``takes`` -> ``gives``) -> ``out`` [dims]."""
    return (
        f'platform: "ensemble"\nmax_batch_size: 4\ninput [ {{ name: "{inp}", data_type: TYPE_FP32, dims: [ {in_dims} ] }} ]\n'
        f'output [ {{ name: "{out}", data_type: TYPE_FP32, dims: [ {dims} ] }} ]\nensemble_scheduling {{ step [ {{\n'
        f'  model_name: "{model}", model_version: {version}, input_map {{ key: "{takes}" value: "{inp}" }},\n'
        f'  output_map {{ key: "{gives}" value: "{out}" }} }} ] }}\n'
    )


def test_a_batching_ensemble_runs_a_step_model_without_batching_as_triton_does(tmp_path: Path) -> None:
    """As Triton's ensembles: a step model with max_batch_size 0 may serve an ensemble that batches when its
    shapes match the ensemble's with the batch dimension (one_row, [1, 4]) or without it (vec, [4]: a batch of 1
    goes in without its batch dimension and the answer gets it back, Triton's ReshapeTensorDims); a request of
    more rows fails in that step, saying why, and the server serves on."""
    import onnx
    from onnx import TensorProto, helper

    repo = tmp_path / "models"
    for name, shape in (("one_row", [1, 4]), ("vec", [4])):
        (repo / name / "1").mkdir(parents=True)
        io = [helper.make_tensor_value_info(n, TensorProto.FLOAT, shape) for n in ("a", "b")]
        graph = helper.make_graph([helper.make_node("Neg", ["a"], ["b"])], name, io[:1], io[1:])
        onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), repo / name / "1" / "model.onnx")
        (repo / f"pipe_{name}" / "1").mkdir(parents=True)
        (repo / f"pipe_{name}" / "config.pbtxt").write_text(_one_step(name, "a", "b", "IN", "OUT", in_dims=4))
    port = free_port()
    with cli_server(tmp_path / "home", ["--model-repository", str(repo), "--grpc-port", "-1"], port, tmp_path / "log"):
        http = httpclient.InferenceServerClient(f"127.0.0.1:{port}")
        x = np.arange(8, dtype=np.float32).reshape(2, 4)
        for name, step_shape in (("one_row", [1, 4]), ("vec", [4])):
            assert http.get_model_config(f"pipe_{name}")["max_batch_size"] == 4
            assert http.get_model_config(name)["max_batch_size"] == 0
            for rows, fails in ((1, False), (2, True), (1, False)):
                i = httpclient.InferInput("IN", [rows, 4], "FP32")
                i.set_data_from_numpy(x[:rows])
                if fails:
                    words = rf"unexpected shape for input 'a' for model '{name}'. Expected {re.escape(str(step_shape).replace(' ', ''))}, got \[2,4\]"
                    with pytest.raises(InferenceServerException, match=words):
                        http.infer(f"pipe_{name}", [i])
                else:
                    np.testing.assert_array_equal(http.infer(f"pipe_{name}", [i]).as_numpy("OUT"), -x[:rows])


def test_an_ensembles_inputs_and_outputs_reshaped_reach_its_steps_in_the_reshapes_shape_as_triton_does(
    tmp_path: Path,
) -> None:
    """helper-204 (qa/L0_infer_reshape): tritonserver 2.51 serves an ensemble whose config gives an input or output a
    reshape, passing the steps the reshape's shape and clients the dims; polystack refused the load (the step's
    [-1,16] against the ensemble's [-1,4,4]), so 15 of the suite's 18 reshape ensembles, and a repository holding
    one, did not start. Batching or not; GET config shows the reshape as Triton's does."""
    import onnx
    from onnx import TensorProto, helper

    repo = tmp_path / "models"
    for name, shape in (("neg16", [None, 16]), ("neg16_nobatch", [16])):
        (repo / name / "1").mkdir(parents=True)
        io = [helper.make_tensor_value_info(n, TensorProto.FLOAT, shape) for n in ("a", "b")]
        graph = helper.make_graph([helper.make_node("Neg", ["a"], ["b"])], name, io[:1], io[1:])
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
        onnx.save(model, repo / name / "1" / "model.onnx")
    tensors = (
        'input [ { name: "IN", data_type: TYPE_FP32, dims: [ 4, 4 ], reshape: { shape: [ 16 ] } } ]\n'
        'output [ { name: "OUT", data_type: TYPE_FP32, dims: [ 2, 8 ], reshape: { shape: [ 16 ] } } ]\n'
    )
    for name, step, batch in (("pipe", "neg16", 4), ("pipe_nobatch", "neg16_nobatch", 0)):
        (repo / name / "1").mkdir(parents=True)
        (repo / name / "config.pbtxt").write_text(
            f'platform: "ensemble"\nmax_batch_size: {batch}\n{tensors}ensemble_scheduling {{ step [ {{\n'
            f'  model_name: "{step}", model_version: -1, input_map {{ key: "a" value: "IN" }},\n'
            '  output_map { key: "b" value: "OUT" } } ] }\n'
        )
    port, grpc_port = free_port(), free_port()
    args = ["--model-repository", str(repo), "--grpc-port", str(grpc_port)]
    with cli_server(tmp_path / "home", args, port, tmp_path / "log"):
        http = httpclient.InferenceServerClient(f"127.0.0.1:{port}")
        grpc = grpcclient.InferenceServerClient(f"127.0.0.1:{grpc_port}")
        x = np.arange(32, dtype=np.float32).reshape(2, 4, 4)
        for name, given, answer in (("pipe", x, -x.reshape(2, 2, 8)), ("pipe_nobatch", x[0], -x[0].reshape(2, 8))):
            config = http.get_model_config(name)
            assert config["input"][0]["dims"] == [4, 4] and config["input"][0]["reshape"] == {"shape": [16]}, name
            assert config["output"][0]["dims"] == [2, 8] and config["output"][0]["reshape"] == {"shape": [16]}, name
            batch_dim = [-1] if "nobatch" not in name else []
            assert http.get_model_metadata(name)["inputs"][0]["shape"] == [*batch_dim, 4, 4], name
            for client, module in ((http, httpclient), (grpc, grpcclient)):
                i = module.InferInput("IN", list(given.shape), "FP32")
                i.set_data_from_numpy(given)
                np.testing.assert_array_equal(client.infer(name, [i]).as_numpy("OUT"), answer)
        i = httpclient.InferInput("IN", [1, 16], "FP32")  # the reshape's shape is the steps', not the clients'
        i.set_data_from_numpy(np.zeros((1, 16), np.float32))
        with pytest.raises(InferenceServerException, match=r"unexpected shape for input 'IN' for model 'pipe'"):
            http.infer("pipe", [i])
    bad = tensors.replace("dims: [ 2, 8 ]", "dims: [ 2, 9 ]")
    with pytest.raises(InvalidRequest, match=r"^model output 'OUT' has different size for dims and reshape for e: "):
        ensemble.read(config_text.as_json(f'platform: "ensemble"\nmax_batch_size: 4\n{bad}{_ONE_STEP}'), "e", 1)


_ONE_STEP = (
    'ensemble_scheduling { step [ { model_name: "m", input_map { key: "a" value: "IN" }, '
    'output_map { key: "b" value: "OUT" } } ] }\n'
)


def test_an_ensemble_whose_model_is_not_served_stops_the_start(tmp_path: Path) -> None:
    repo = pipeline_repository(tmp_path / "models")
    (repo / "pipe" / "config.pbtxt").write_text(PIPE.replace('value: "IN"', 'value: "IN2"'))
    line = refused_after_loads(tmp_path, ["--model-repository", str(repo)])  # once the other models were tried
    assert "model 'pipe': ensemble input 'IN' for ensemble pipe' is not used: ensemble input 'IN' is taken" in line
    (repo / "pipe" / "config.pbtxt").write_text(PIPE.replace('key: "h"', 'key: "hh"'))
    last = refused_after_loads(tmp_path, ["--model-repository", str(repo)])  # once the models it runs loaded
    assert (
        last
        == "error: failed to load 'pipe': step 1 (head): its input_map names 'hh', which is not an input of 'head'; its inputs are h"
    )
    # with --engine ray, before Ray starts (a bogus --ray-address keeps one from starting should it get through)
    ray = ["--model-repository", str(repo), "--engine", "ray", "--http-port", "8123", "--ray-address", "127.0.0.1:1"]
    line = refused_at_start(tmp_path, ray)
    assert line == (
        "error: failed to load 'pipe': step 1 (head): its input_map names 'hh', which is not an input of 'head'; its "
        "inputs are h"
    )
    (repo / "pipe" / "config.pbtxt").write_text(PIPE.replace("max_batch_size: 8", "max_batch_size: 16"))
    (repo / "mlp" / "config.pbtxt").write_text("max_batch_size: 4\ndynamic_batching { }\n")
    line = refused_at_start(tmp_path, ray)
    # tritonserver 2.51's words first (helper-118), then the step
    assert "ensemble pipe allows maximum batch size 16, but it contains model mlp which only allows maximum batch size to be 4 (step 0 (mlp))" in line, line
    (repo / "pipe" / "config.pbtxt").write_text(PIPE)
    (repo / "mlp" / "config.pbtxt").write_text("max_batch_size: 8\n")
    (repo / "chain" / "1").mkdir(parents=True)  # runs pipe:3, which is version 1
    (repo / "chain" / "config.pbtxt").write_text(_one_step("pipe", "IN", "OUT", "A", "B", version=3, dims=3))
    assert refused_at_start(tmp_path, ray).endswith("step 0 (pipe:3): ensemble 'pipe' has version 1, not 3")
    # two ensembles that run each other: said as such, at a local start too
    (repo / "chain" / "config.pbtxt").write_text(_one_step("loop", "A", "B", "A", "B", dims=3))
    (repo / "loop" / "1").mkdir(parents=True)
    (repo / "loop" / "config.pbtxt").write_text(_one_step("chain", "A", "B", "A", "B", dims=3))
    cycle = (  # Triton's words first (tritonserver 2.51: its first and last ensembles, "..." between), then the way
        "error: failed to load 'loop': circular dependency between ensembles: loop -> ... -> chain -> loop: loop -> "
        "chain -> loop"
    )
    assert refused_at_start(tmp_path, ray) == cycle
    # a local start tries the other ensemble of the circle too, and names both, as Triton's start fails both
    both = f"{cycle}; failed to load 'chain': circular dependency between ensembles: chain -> ... -> loop -> chain: "
    assert refused_after_loads(tmp_path, ["--model-repository", str(repo)]) == f"{both}chain -> loop -> chain"


def _config(steps: list[dict[str, object]], **top: object) -> str:
    doc = {
        "name": "e",
        "platform": "ensemble",
        "max_batch_size": 4,
        "input": [{"name": "IN", "data_type": "TYPE_FP32", "dims": [16]}],
        "output": [{"name": "OUT", "data_type": "TYPE_FP32", "dims": [4]}],
        "ensemble_scheduling": {"step": steps},
        **top,
    }
    return json.dumps(doc)


def _tensor(name: str) -> dict[str, object]:
    return {"name": name, "data_type": "TYPE_FP32", "dims": [4]}


def _step(model: str, inputs: Mapping[str, str], outputs: Mapping[str, str], version: int = -1) -> dict[str, object]:
    return {"model_name": model, "model_version": version, "input_map": dict(inputs), "output_map": dict(outputs)}


@pytest.mark.parametrize(
    ("text", "words"),
    [
        (_config([]), "must specify 'step' for ensemble 'e': ensemble_scheduling must list one or more steps"),
        (json.dumps({**json.loads(_config([])), "ensemble_scheduling": None}),
         "ensemble scheduling must be set for ensemble e whose platform is ensemble: its config has no"),
        (  # Triton's words first (helper-195)
            _config([_step("m", {"x": "IN"}, {"y": "OUT"})], platform="onnxruntime_onnx"),
            "ensemble scheduling cannot be set for model 'e' whose platform is not ensemble: its config sets "
            "ensemble_scheduling and platform 'onnxruntime_onnx'",
        ),
        (
            _config([_step("m", {"x": "IN"}, {"y": "OUT"})], backend="python"),
            "Ensemble model 'e' must have platform type 'ensemble' and empty backend type: its config sets backend",
        ),
        (
            _config([_step("m", {"x": "IN"}, {"y": "OUT"})], instance_group=[{"kind": "KIND_CPU"}]),
            "instance group should not be specified for ensemble 'e': an ensemble runs its steps' models",
        ),
        (
            _config([_step("m", {"x": "IN"}, {"y": "OUT"})], optimization={}),
            "optimization should not be specified for ensemble 'e'",
        ),
        (
            _config([_step("m", {"x": "IN"}, {"y": "OUT"})], model_warmup=[{"name": "w", "batch_size": 1}]),
            "model_warmup can not be specified for ensemble 'e'",
        ),
        (
            _config([_step("m", {"x": "IN"}, {"y": "OUT"}), _step("n", {"x": "IN"}, {"y": "OUT"})]),
            "ensemble tensor 'OUT' can appear in an output map only once for ensemble 'e' step 1: ensemble tensor "
            "'OUT' is given by step 1 (n) and by step 0 (m)",
        ),
        (_config([_step("m", {"x": "IN"}, {"y": "IN"})]), "'IN' is given by step 0 (m) and by the request"),
        # Triton's words (ValidateEnsembleSchedulingConfig) first, then polystack's (helper-195)
        (_config([_step("m", {"x": "MID"}, {"y": "OUT"})]),
         "ensemble input 'IN' for ensemble e' is not used: ensemble input 'IN' is taken by no step"),
        (_config([_step("m", {"x": "IN"}, {"y": "OUT"}), _step("n", {"x": "OUT"}, {"y": "OTHER"})]),
         "ensemble tensor 'OTHER' is unused in ensemble 'e': ensemble tensor 'OTHER', given by step 1 (n), is taken by "
         "no step"),
        (_config([_step("m", {"x": "IN"}, {"y": "OUT", "z": "OUT"})]),
         "ensemble tensor 'OUT' can appear in an output map only once for ensemble 'e' step 0: ensemble tensor "
         "'OUT' is given by step 0 (m) and by step 0 (m)"),
        (
            _config([_step("m", {"x": "IN"}, {"y": "B"})], output=[_tensor("OUT"), _tensor("B")]),
            "ensemble output 'OUT' for ensemble e' is not used: ensemble output 'OUT' is given by no step",
        ),
        (
            _config([_step("m", {"x": "IN", "z": "B"}, {"y": "A"}), _step("n", {"x": "A"}, {"y": "B", "w": "OUT"})]),
            "output 'OUT' for ensemble 'e' is not written: at least one of its depending tensors, 'B', is not "
            "connected: the steps step 0 (m), step 1 (n) wait on one another's tensors (a cycle)",
        ),
        # a tensor never given that no output waits on: Triton's unused tensor (helper-195's redundant_tensor_as_input)
        (_config([_step("m", {"x": "IN"}, {"y": "OUT"}), _step("n", {"x": "IN", "z": "C"}, {"y": "D"}),
                  _step("k", {"x": "D"}, {"y": "E"})]),
         "ensemble tensor 'C' is unused in ensemble 'e': step 1 (n) takes 'C', which no step gives"),
        (_config([_step("m", {"x": "IN", "z": "C"}, {"y": "OUT"})]),
         "output 'OUT' for ensemble 'e' is not written: at least one of its depending tensors, 'C', is not connected: "
         "step 0 (m) takes 'C', which no step gives"),
        (_config([_step("m", {"x": "IN"}, {"y": "OUT"}, version=0)]), "model_version 0"),
        (_config([_step("", {"x": "IN"}, {"y": "OUT"})]),
         "must specify 'model_name' in step 0 of ensemble 'e': ensemble_scheduling.step[0] has no model_name"),
        (_config([_step("m", {}, {"y": "OUT"})]), "must specify 'input_map' in step 0 of ensemble 'e': "),
        (_config([_step("m", {"x": "IN"}, {})]), "must specify 'output_map' in step 0 of ensemble 'e': "),
        (
            _config([_step("m", {"x": "IN"}, {"y": "OUT"})], dynamic_batching={"max_queue_delay_microseconds": 100}),
            "polystack does not read",
        ),
        (
            _config([_step("m", {"x": "IN"}, {"y": "OUT"})], input=[{"name": "IN", "data_type": "TYPE_FP32"}]),
            "has no dims",
        ),
        (
            _config(
                [_step("m", {"x": "IN"}, {"y": "OUT"})], input=[{"name": "IN", "data_type": "TYPE_BOGUS", "dims": [1]}]
            ),
            "not a type polystack serves",
        ),
        (
            _config([_step("m", {"x": "IN"}, {"y": "OUT"})], input=[{**_tensor("IN"), "dims": [0]}]),
            "model input 'IN' dimension must be integer >= 1, or -1 to indicate a variable-size dimension for e",
        ),
        (_config([_step("m", {"x": "IN"}, {"y": "OUT"})], name="other"), "names model 'other'"),
    ],
)
def test_an_ensemble_config_that_cannot_run_is_refused_saying_what_is_wrong(text: str, words: str) -> None:
    with pytest.raises(InvalidRequest, match=re.escape(words)):
        ensemble.read(text, "e", 1)


def test_an_ensemble_config_from_config_pbtxt_reads_as_json_does() -> None:
    read = ensemble.read(config_text.as_json(PIPE), "pipe", 1)
    assert [s.model for s in read.steps] == ["mlp", "head", "neg"] and read.steps[2].version == 1
    assert ensemble.order(read) == [[0], [1, 2]]
    assert ensemble.needed(read, ["NEG"]) == [0, 2]
    assert ensemble.read(json.dumps(ensemble.render(read)), "pipe", 1) == read  # what GET config shows loads back
    # response_cache shows where the config gives it alone, as tritonserver 2.51 shows it (helper-193)
    assert "response_cache" not in ensemble.render(read)
    assert ensemble.render(read)["model_transaction_policy"] == {"decoupled": False}  # shown for every ensemble
    off = ensemble.read(config_text.as_json(PIPE + "\nresponse_cache { enable: false }"), "pipe", 1)
    assert ensemble.render(off)["response_cache"] == {"enable": False}
    assert ensemble.read(json.dumps(ensemble.render(off)), "pipe", 1) == off


def test_ensembles_load_after_the_ensembles_they_run() -> None:
    def one(name: str, runs: str) -> ensemble.Ensemble:
        return ensemble.read(_config([_step(runs, {"x": "IN"}, {"y": "OUT"})], name=name), name, 1)

    pipelines = {"a": one("a", "c"), "b": one("b", "m"), "c": one("c", "b")}
    assert ensemble.load_order(pipelines) == ["b", "c", "a"]


def test_a_failing_step_fails_the_request_and_stops_the_others() -> None:
    read = ensemble.read(config_text.as_json(PIPE), "pipe", 1)
    cancelled: list[int] = []

    async def step_run(
        index: int, step: ensemble.Step, given: dict[str, np.ndarray], givers: dict[str, bool]
    ) -> tuple[dict[str, np.ndarray], bool]:
        if index == 0:
            return {"y": given["x"][:, :4]}, True
        if index == 1:
            raise ModelClosed("model head:1 was unloaded")
        try:
            await asyncio.sleep(10)
        except asyncio.CancelledError:
            cancelled.append(index)
            raise
        return {}, True

    async def main() -> None:
        with pytest.raises(ModelClosed, match=r"in ensemble 'pipe', model head:1 was unloaded.* \[step 1 \(head\)\]"):
            await ensemble.run(read, {"IN": np.ones((1, 16), np.float32)}, ["OUT", "NEG"], step_run)
        await asyncio.sleep(0)

    asyncio.run(main())
    assert cancelled == [2]


def test_an_ensemble_answers_from_the_response_cache_until_a_model_it_runs_is_loaded_again(tmp_path: Path) -> None:
    repo, port = pipeline_repository(tmp_path / "models"), free_port()
    (repo / "pipe" / "config.pbtxt").write_text(PIPE + "response_cache { enable: true }\n")
    for name, config in (  # outer (cached) runs inner (not cached), which runs mlp
        ("inner", _one_step("mlp", "x", "y", "A", "B")),
        ("outer", _one_step("inner", "A", "B", "C", "D") + "response_cache { enable: true }\n"),
    ):
        (repo / name / "1").mkdir(parents=True)
        (repo / name / "config.pbtxt").write_text(config)
    args = ["--model-repository", str(repo), "--grpc-port", "-1", "--allow-model-control"]
    with cli_server(tmp_path / "home", [*args, "--cache-config", "local,size=1048576"], port, tmp_path / "serve.log"):
        http = httpclient.InferenceServerClient(f"127.0.0.1:{port}")
        assert http.get_model_config("pipe")["response_cache"] == {"enable": True}
        x = np.random.default_rng(1).standard_normal((2, 16)).astype(np.float32)
        i = httpclient.InferInput("IN", [2, 16], "FP32")
        i.set_data_from_numpy(x)

        def cache() -> tuple[int, int, int]:
            [s] = http.get_inference_statistics("pipe")["model_stats"]
            [head] = http.get_inference_statistics("head")["model_stats"]
            stats = s["inference_stats"]
            return (
                stats["cache_hit"]["count"],
                stats["cache_miss"]["count"],
                head["inference_stats"]["success"]["count"],
            )

        first = http.infer("pipe", [i]).as_numpy("OUT")
        assert cache() == (0, 1, 1)
        np.testing.assert_array_equal(http.infer("pipe", [i]).as_numpy("OUT"), first)
        assert cache() == (1, 1, 1)  # answered from the cache: head did not run
        http.load_model("head", config=json.dumps({"max_batch_size": 8}))  # loaded again: the answers may change
        np.testing.assert_allclose(http.infer("pipe", [i]).as_numpy("OUT"), first, rtol=1e-6)
        assert cache() == (1, 2, 1)  # a miss, and the new head ran it
        c = httpclient.InferInput("C", [2, 16], "FP32")
        c.set_data_from_numpy(x)
        before = http.infer("outer", [c]).as_numpy("D")
        np.testing.assert_array_equal(http.infer("outer", [c]).as_numpy("D"), before)
        (repo / "mlp" / "2").mkdir()
        mlp_onnx(repo / "mlp" / "2" / "model.onnx", sizes=(16, 32, 4), seed=9)
        http.load_model("mlp")  # new weights: outer's kept answers go, though inner between them keeps none
        after = http.infer("outer", [c]).as_numpy("D")
        np.testing.assert_allclose(after, _run(repo / "mlp" / "2" / "model.onnx", x), rtol=1e-5, atol=1e-6)
        [o] = http.get_inference_statistics("outer")["model_stats"]
        assert (o["inference_stats"]["cache_hit"]["count"], o["inference_stats"]["cache_miss"]["count"]) == (1, 2)
        metrics = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
        assert re.search(r'polystack_cache_hits_total\{model="pipe",version="1"\} 1\.0', metrics), metrics


def test_the_engine_ray_check_takes_a_step_model_queued_without_batching_as_a_local_server_does(
    model_store: tuple[Store, dict[str, ModelRecord]],
) -> None:
    """A step model whose config gives max_batch_size 0 with dynamic_batching (each request alone, through its
    queue) has no row limit: --engine ray's check read its policy's 1 as one, and refused an ensemble of 4 rows
    that a local server serves (helper-70's review)."""
    from polystack.server.app import ServeConfig
    from polystack.server.model_config import ConfigFile
    from polystack.server.ray_serve import check_before_ray

    store, _ = model_store
    pipe = {
        "platform": "ensemble", "max_batch_size": 4,
        "input": [{"name": "X", "data_type": "TYPE_FP32", "dims": [16]}],
        "output": [{"name": "Y", "data_type": "TYPE_FP32", "dims": [4]}],
        "ensemble_scheduling": {"step": [{"model_name": "mlp", "input_map": {"x": "X"}, "output_map": {"y": "Y"}}]},
    }  # fmt: skip
    config = ServeConfig(
        http_port=18998, grpc_port=None, models=["mlp"],
        model_configs={"mlp": ConfigFile('{"max_batch_size": 0, "dynamic_batching": {}}')},
        ensembles={"pipe": ensemble.read(json.dumps(pipe), "pipe", 1)},
    )  # fmt: skip
    check_before_ray(store, config, ray_address="10.9.9.9:6379")  # no Ray started: the address is never dialled


def test_fit_passes_a_batch_of_one_between_batching_and_non_batching_shapes_as_triton_does() -> None:
    from polystack.types import DType, TensorSpec

    one = np.zeros((1, 4), np.float32)
    vec = TensorSpec("a", DType.FP32, (4,))
    assert ensemble.fit(one, vec, True, False).shape == (4,)  # into a model without a batch
    assert ensemble.fit(one[0], TensorSpec("a", DType.FP32, (-1, 4)), False, True).shape == (1, 4)  # back into one
    two = np.zeros((2, 4), np.float32)
    assert ensemble.fit(two, vec, True, False) is two  # left for the model to refuse
    assert ensemble.fit(one, vec, True, True) is one  # both batch: nothing to pass between (helper-73)


def test_shapes_may_differ_by_a_batch_dimension_only_where_one_side_batches() -> None:
    """As Triton's ValidateTensorConsistency: dims, or dims with the batch dimension (helper-73: [2, 3] was taken
    for a batching step of [3], and a batch of 1 ran as 2 rows)."""
    from polystack.types import DType, Signature, TensorSpec

    config = json.loads(_config([_step("m", {"x": "IN"}, {"y": "OUT"})]))
    config["input"][0]["dims"], config["output"][0]["dims"] = [2, 3], [3]
    pipe = ensemble.read(json.dumps(config), "e", 1)
    step = Signature((TensorSpec("x", DType.FP32, (-1, 3)),), (TensorSpec("y", DType.FP32, (-1, 3)),))
    with pytest.raises(InvalidRequest, match=r"has shape \[-1, 2, 3\] as the ensemble's input"):
        ensemble.check(pipe, lambda _: ensemble.Served(step, 8))  # both batch
    unbatched = Signature((TensorSpec("x", DType.FP32, (2, 3)),), (TensorSpec("y", DType.FP32, (3,)),))
    ensemble.check(pipe, lambda _: ensemble.Served(unbatched, 0))  # the step takes none: [2, 3] is a batch of 1


def test_an_ensembles_input_may_give_its_layout_as_a_models_may() -> None:
    """tritonserver 2.51 loads an ensemble whose input says FORMAT_NCHW (image ensembles do; five of Triton's own
    L0_model_config ensembles carry one), where polystack refused it (helper-195); GET config shows it, and an input
    of other than 3 dims with one is refused, as a model's."""
    config = json.loads(_config([_step("m", {"x": "IN"}, {"y": "OUT"})]))
    config["input"][0].update(format="FORMAT_NCHW", dims=[3, 4, 4])
    pipe = ensemble.read(json.dumps(config), "e", 1)
    assert ensemble.render(pipe)["input"][0]["format"] == "FORMAT_NCHW"
    assert ensemble.read(json.dumps(ensemble.render(pipe)), "e", 1) == pipe  # loads back as shown
    config["input"][0]["dims"] = [4]
    with pytest.raises(InvalidRequest, match=re.escape("has format FORMAT_NCHW, which needs 3 dims besides the batch")):
        ensemble.read(json.dumps(config), "e", 1)


def test_an_ensemble_that_does_not_fit_its_steps_is_refused_in_tritons_words_first() -> None:
    """As Triton's L0_model_config greps them (helper-193: polystack's own words alone)."""
    from polystack.types import DType, Signature, TensorSpec

    pipe = ensemble.read(_config([_step("m", {"x": "IN"}, {"y": "OUT"})]), "e", 1)
    ints = Signature((TensorSpec("x", DType.INT32, (-1, 4)),), (TensorSpec("y", DType.FP32, (-1, 4)),))
    with pytest.raises(InvalidRequest) as refused:
        ensemble.check(pipe, lambda _: ensemble.Served(ints, 8))
    assert refused.value.message.startswith(
        "in ensemble e, ensemble tensor IN: inconsistent data type: TYPE_FP32 is inferred from model e while "
        "TYPE_INT32 is inferred from model m: step 0 (m): ensemble tensor 'IN' is FP32 as the ensemble's input"
    )
    x, z, y = (TensorSpec(name, DType.FP32, (-1, 4)) for name in "xzy")
    two = Signature((x, z), (y,))
    with pytest.raises(InvalidRequest) as refused:
        ensemble.check(pipe, lambda _: ensemble.Served(two, 8))
    assert refused.value.message.startswith(
        "in ensemble e, input z in model m is not mapped to any ensemble tensors: step 0 (m): the model's input 'z'"
    )


def test_an_ensembles_own_label_file_names_its_outputs_classes_before_the_steps(tmp_path: Path) -> None:
    """As tritonserver 2.51 reads an ensemble's config (polystack refused the load): an output's label_filename, in
    the ensemble's folder, names the classes of that output, over the labels of the step model that gives it."""
    repo = pipeline_repository(tmp_path / "models")
    labelled = PIPE.replace('{ name: "OUT", data_type: TYPE_FP32, dims: [ 3 ] }',
                            '{ name: "OUT", data_type: TYPE_FP32, dims: [ 3 ], label_filename: "es.txt" }')  # fmt: skip
    (repo / "pipe" / "config.pbtxt").write_text(labelled)
    (repo / "pipe" / "es.txt").write_text("gato\nperro\npájaro\n")
    port = free_port()
    args = ["--model-repository", str(repo), "--grpc-port", "-1", "--allow-model-control"]
    with cli_server(tmp_path / "home", args, port, tmp_path / "serve.log"):
        http = httpclient.InferenceServerClient(f"127.0.0.1:{port}")
        x = np.random.default_rng(3).standard_normal((2, 16)).astype(np.float32)
        out, _ = _expected(repo, x)
        i = httpclient.InferInput("IN", [2, 16], "FP32")
        i.set_data_from_numpy(x)
        top = http.infer("pipe", [i], outputs=[httpclient.InferRequestedOutput("OUT", class_count=1)]).as_numpy("OUT")
        best = int(np.argmax(out[1]))
        assert top[1][0].decode().endswith(f":{best}:{['gato', 'perro', 'pájaro'][best]}")
        outputs = {o["name"]: o["label_filename"] for o in http.get_model_config("pipe")["output"]}
        assert outputs == {"OUT": "es.txt", "NEG": ""}
        (repo / "pipe" / "es.txt").unlink()  # gone from its folder: the load fails, saying which file, and where
        with pytest.raises(InferenceServerException, match=r"names label file 'es\.txt', which is not in"):
            http.load_model("pipe")
        # two labels for three classes: loaded, as Triton loads it (helper-157), the third class without a label
        (repo / "pipe" / "es.txt").write_text("gato\nperro\n")
        http.load_model("pipe")
        top = http.infer("pipe", [i], outputs=[httpclient.InferRequestedOutput("OUT", class_count=3)]).as_numpy("OUT")
        assert sorted(c.decode().count(":") for c in top[1]) == [1, 2, 2]


def test_an_ensemble_without_batching_passes_inputs_whose_first_dims_differ_as_triton_does(tmp_path: Path) -> None:
    """With max_batch_size 0 an ensemble has no batch dimension: A [1] and B [2] go to its step as they are, as
    tritonserver 2.51 passes them (helper-164, Triton's L0_decoupled simple_repeat); polystack refused them as a
    batch-size mismatch before the step ran."""
    repo = tmp_path / "models"
    concat_onnx(repo / "concat" / "1" / "model.onnx")
    (repo / "concat" / "config.pbtxt").write_text('platform: "onnxruntime_onnx"\n' + CONCAT_IO)
    (repo / "ens" / "1").mkdir(parents=True)
    (repo / "ens" / "config.pbtxt").write_text(
        'platform: "ensemble"\n' + CONCAT_IO + 'ensemble_scheduling { step [ { model_name: "concat" model_version: -1 '
        'input_map { key: "A" value: "A" } input_map { key: "B" value: "B" } output_map { key: "C" value: "C" } } ] }\n'
    )
    port = free_port()
    with cli_server(tmp_path / "home", ["--model-repository", str(repo), "--grpc-port", "-1"], port, tmp_path / "log"):
        http = httpclient.InferenceServerClient(f"127.0.0.1:{port}")
        for model in ("concat", "ens"):
            np.testing.assert_array_equal(http.infer(model, concat_inputs()).as_numpy("C"), [1, 2, 3])


OPTIONAL_IDENTITY = '''
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):  # as Triton's QA optional_identity: the outputs of the inputs given, alone
        responses = []
        for request in requests:
            outputs = []
            for i in ("0", "1"):
                given = pb_utils.get_input_tensor_by_name(request, "INPUT" + i)
                if given is not None:
                    outputs.append(pb_utils.Tensor("OUTPUT" + i, given.as_numpy()))
            responses.append(pb_utils.InferenceResponse(outputs))
        return responses
'''


def test_a_steps_output_left_out_is_an_absent_input_of_the_next_step_where_that_takes_it_optional(tmp_path: Path) -> None:
    """helper-170 (Triton's L0_optional_input test_ensemble_optional_connecting_tensor, passing on tritonserver
    2.51): step 0 gives OUTPUT1 only when it got INPUT1; step 1 takes it as an optional input. polystack failed the
    request ("returned no output 'OUTPUT1', which the request asks for"). An output the client asks for that no step
    gave is left out of the answer, the others in it, as Triton answers (helper-186, L0_simple_ensemble's
    test_ensemble_partial_add_sub: polystack failed the request)."""
    from tests.server.test_serve_python_models import python_folder

    io = (
        'max_batch_size: 0\ninput [ { name: "INPUT0" data_type: TYPE_FP32 dims: [ 1 ] optional: true }, '
        '{ name: "INPUT1" data_type: TYPE_FP32 dims: [ 1 ] optional: true } ]\n'
        'output [ { name: "OUTPUT0" data_type: TYPE_FP32 dims: [ 1 ] }, { name: "OUTPUT1" data_type: TYPE_FP32 dims: [ 1 ] } ]\n'
    )
    repo = tmp_path / "models"
    python_folder(repo, "ident", OPTIONAL_IDENTITY, 'backend: "python"\n' + io)
    (repo / "chain" / "1").mkdir(parents=True)
    (repo / "chain" / "config.pbtxt").write_text(
        'platform: "ensemble"\n' + io + "ensemble_scheduling { step [\n"
        '{ model_name: "ident" model_version: -1 input_map { key: "INPUT0" value: "INPUT0" } '
        'input_map { key: "INPUT1" value: "INPUT1" } output_map { key: "OUTPUT0" value: "mid0" } '
        'output_map { key: "OUTPUT1" value: "mid1" } },\n'
        '{ model_name: "ident" model_version: -1 input_map { key: "INPUT0" value: "mid0" } '
        'input_map { key: "INPUT1" value: "mid1" } output_map { key: "OUTPUT0" value: "OUTPUT0" } '
        'output_map { key: "OUTPUT1" value: "OUTPUT1" } } ] }\n'
    )
    port = free_port()
    args = ["--model-repository", str(repo), "--allow-python-models", "--grpc-port", "-1"]
    with cli_server(tmp_path / "home", args, port, tmp_path / "log"):
        http = httpclient.InferenceServerClient(f"127.0.0.1:{port}")
        x = httpclient.InferInput("INPUT0", [1], "FP32")
        x.set_data_from_numpy(np.array([5.0], np.float32))
        answer = http.infer("chain", [x], outputs=[httpclient.InferRequestedOutput("OUTPUT0")])
        assert answer.as_numpy("OUTPUT0").tolist() == [5.0]
        asked = [httpclient.InferRequestedOutput("OUTPUT0"), httpclient.InferRequestedOutput("OUTPUT1")]
        partial = http.infer("chain", [x], outputs=asked)
        assert partial.as_numpy("OUTPUT0").tolist() == [5.0] and partial.as_numpy("OUTPUT1") is None
        assert until(lambda: "Composing models did not output tensor OUTPUT1" in (tmp_path / "log").read_text(), 5)
        y = httpclient.InferInput("INPUT1", [1], "FP32")
        y.set_data_from_numpy(np.array([7.0], np.float32))
        both = http.infer("chain", [x, y])
        assert both.as_numpy("OUTPUT0").tolist() == [5.0] and both.as_numpy("OUTPUT1").tolist() == [7.0]


def test_an_ensemble_serves_each_version_its_version_policy_picks_as_triton_does(tmp_path: Path) -> None:
    """Triton's QA ensembles (``simple_*``) have version folders 1 and 3 and ``version_policy { specific { versions:
    [1, 3] } }``: tritonserver 2.51 serves both, each running the config's steps and counted apart (helper-191:
    polystack refused the ensemble, failing five L0_lifecycle cases)."""
    repo = pipeline_repository(tmp_path / "models")
    (repo / "pipe" / "3").mkdir()
    (repo / "pipe" / "config.pbtxt").write_text(PIPE + "version_policy { specific { versions: [ 1, 3 ] } }\n")
    x = np.random.default_rng(0).standard_normal((2, 16)).astype(np.float32)
    out, neg = _expected(repo, x)
    port, grpc_port = free_port(), free_port()
    args = ["--model-repository", str(repo), "--grpc-port", str(grpc_port), "--model-control-mode", "explicit",
            "--load-model", "pipe", "--triton-metrics"]  # fmt: skip
    with cli_server(tmp_path / "home", args, port, tmp_path / "serve.log"):
        http = httpclient.InferenceServerClient(f"127.0.0.1:{port}")
        grpc = grpcclient.InferenceServerClient(f"127.0.0.1:{grpc_port}")
        for client, module in ((http, httpclient), (grpc, grpcclient)):
            assert client.is_model_ready("pipe", "1") and client.is_model_ready("pipe", "3")
            assert not client.is_model_ready("pipe", "2")
            for version, times in (("1", 2), ("3", 1), ("", 1)):  # no version: the latest
                i = module.InferInput("IN", [2, 16], "FP32")
                i.set_data_from_numpy(x)
                for _ in range(times):
                    result = client.infer("pipe", [i], model_version=version)
                np.testing.assert_allclose(result.as_numpy("OUT"), out, rtol=1e-5, atol=1e-6)
                np.testing.assert_allclose(result.as_numpy("NEG"), neg, rtol=1e-5, atol=1e-6)
                answered = result.get_response()
                shown = answered["model_version"] if module is httpclient else answered.model_version
                assert shown == (version or "3")
        assert http.get_model_metadata("pipe")["versions"] == ["1", "3"]
        assert http.get_model_config("pipe")["version_policy"] == {"specific": {"versions": [1, 3]}}
        stats = {s["version"]: s["inference_count"] for s in http.get_inference_statistics("pipe")["model_stats"]}
        assert stats == {"1": 8, "3": 8}, stats  # rows: per version 2 requests of 2 rows, over HTTP and gRPC each
        [v1] = http.get_inference_statistics("pipe", "1")["model_stats"]
        assert v1["version"] == "1" and v1["execution_count"] == 4
        with pytest.raises(InferenceServerException, match="version 2 is not found; the ensemble serves versions 1, 3"):
            http.infer("pipe", [httpclient.InferInput("IN", [1, 16], "FP32").set_data_from_numpy(x[:1])], "2")
        index = {(m["name"], m.get("version")): m["state"] for m in http.get_model_repository_index()}
        assert index[("pipe", "1")] == index[("pipe", "3")] == "READY", index
        metrics = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics").read().decode()
        assert re.search(r'nv_inference_count\{model="pipe",version="1"\} 8', metrics), metrics
        assert re.search(r'nv_inference_count\{model="pipe",version="3"\} 8', metrics), metrics
        shown = http.get_model_config("pipe")  # a load whose config picks version 3 alone: version 1 stops
        http.load_model("pipe", config=json.dumps({**shown, "version_policy": {"specific": {"versions": [3]}}}))
        assert not http.is_model_ready("pipe", "1") and http.is_model_ready("pipe", "3")
        assert http.get_model_config("pipe")["version_policy"] == {"specific": {"versions": [3]}}
        index = {(m["name"], m.get("version")): (m["state"], m.get("reason"))
                 for m in http.get_model_repository_index()}
        assert index[("pipe", "1")] == ("UNAVAILABLE", "unloaded") and index[("pipe", "3")][0] == "READY", index
        http.unload_model("pipe")  # (a load without a config would keep that one: the folder is unchanged)
        assert not http.is_model_ready("pipe", "1") and not http.is_model_ready("pipe", "3")
        index = {(m["name"], m.get("version")): (m["state"], m.get("reason"))
                 for m in http.get_model_repository_index()}
        assert index[("pipe", "1")] == index[("pipe", "3")] == ("UNAVAILABLE", "unloaded"), index
        http.load_model("pipe")
        assert http.is_model_ready("pipe", "1") and http.is_model_ready("pipe", "3")
        http.close()
        grpc.close()
