"""Dynamic batching through the server: merged batches, a full queue (503 / UNAVAILABLE), deadlines (503 /
UNAVAILABLE, Triton's "Request timeout expired")."""

from __future__ import annotations

import asyncio
import json
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from conftest import Raw
from prometheus_client.parser import text_string_to_metric_families
from servekit import caught_logs, cli_server, free_port, refused_at_start, register_like, start
from tritonclient.utils import InferenceServerException

from polystack.batching import BatchOverrides, BatchPolicy
from polystack.examples import mlp_onnx
from polystack.protocol.wire import InferRequest
from polystack.server.app import ServerThread
from polystack.stats import Outcome
from polystack.store import ModelRecord, Store
from polystack.types import DType, Signature, TensorSpec

POLICY = BatchPolicy(max_batch_size=4, max_queue_delay_ms=20, max_queue_size=2)


@pytest.fixture(scope="module")
def batching(model_store: tuple[Store, dict[str, ModelRecord]]) -> Iterator[ServerThread]:
    store, _ = model_store
    st = start(store, models=["slow", "mlp"], policy_for=lambda *_: POLICY)
    yield st
    st.stop()


def slow_input(n: int = 1, client: Any = httpclient) -> Any:
    i = client.InferInput("x", [n, 16], "FP32")
    i.set_data_from_numpy(np.ones((n, 16), np.float32))
    return i


def test_config_shows_dynamic_batching(batching: ServerThread) -> None:
    config = httpclient.InferenceServerClient(batching.http_url).get_model_config("slow")
    assert config["max_batch_size"] == 4
    assert config["dynamic_batching"] == {  # every field, as Triton shows them: clients index them
        "preferred_batch_size": [4],  # Triton shows max_batch_size where none is given
        "max_queue_delay_microseconds": 20000,
        "preserve_ordering": False,
        "priority_levels": 0,
        "default_priority_level": 0,
        "default_queue_policy": {  # every field, as tritonserver 2.51 prints it (helper-114)
            "timeout_action": "REJECT", "default_timeout_microseconds": 0, "allow_timeout_override": True,
            "max_queue_size": 2,
        },
        "priority_queue_policy": {},
    }


def test_concurrent_requests_are_merged(batching: ServerThread) -> None:
    client = httpclient.InferenceServerClient(batching.http_url, concurrency=4)
    # fill a batch: 1 running + up to 2 queued; send 3 at once and read the batch statistics
    before = client.get_inference_statistics("mlp")["model_stats"][0]["execution_count"]
    x = np.ones((1, 16), np.float32)
    i = httpclient.InferInput("x", [1, 16], "FP32")
    i.set_data_from_numpy(x)
    pending = [client.async_infer("mlp", [i]) for _ in range(2)]
    results = [p.get_result() for p in pending]
    assert all(r.as_numpy("y").shape == (1, 4) for r in results)
    stats = client.get_inference_statistics("mlp")["model_stats"][0]
    assert stats["execution_count"] - before <= 2
    assert stats["inference_stats"]["queue"]["count"] >= 2


def test_full_queue_is_503_at_once_and_server_keeps_serving(batching: ServerThread) -> None:
    raw = Raw(batching.http_port)
    body = json.dumps({"inputs": [{"name": "x", "datatype": "FP32", "shape": [4, 16], "data": [0.0] * 64}]})

    def one(_: int) -> tuple[int, str]:
        status, _, data = raw.request("POST", "/v2/models/slow/infer", body, {"Content-Type": "application/json"})
        return status, data.decode()

    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(one, range(8)))
    statuses = sorted(s for s, _ in answers)
    assert 200 in statuses and 503 in statuses, answers
    assert all("queued" in d for s, d in answers if s == 503)
    assert one(0)[0] == 200
    metrics = raw.request("GET", "/metrics")[2].decode()
    assert 'polystack_inference_request_failure_total{model="slow",reason="QueueFull",version="1"}' in metrics
    assert "polystack_inference_batch_size_bucket" in metrics


def test_full_queue_is_unavailable_over_grpc(batching: ServerThread) -> None:
    client = grpcclient.InferenceServerClient(batching.grpc_url)
    i = grpcclient.InferInput("x", [4, 16], "FP32")
    i.set_data_from_numpy(np.zeros((4, 16), np.float32))
    codes: list[str] = []
    lock = threading.Lock()

    def one(_: int) -> None:
        try:
            client.infer("slow", [i])
            code = "OK"
        except InferenceServerException as e:
            code = str(e.status())
        with lock:
            codes.append(code)

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(one, range(8)))
    assert "OK" in codes and any("UNAVAILABLE" in c for c in codes), codes
    client.infer("slow", [i])


def _watch_depth(
    port: int, model: str, requests: int, rows: int = 1, meanwhile: Any = None
) -> tuple[list[int], list[float]]:
    """Send ``requests`` JSON requests of ``rows`` rows to ``model`` at once, reading its queue depth gauge until
    they are answered (``meanwhile(depth)`` called once the depth reaches 3, if given): their statuses, the
    depths seen."""
    body = json.dumps({"inputs": [{"name": "x", "datatype": "FP32", "shape": [rows, 16], "data": [0.0] * 16 * rows}]})

    def one(_: int) -> int:
        return Raw(port).request("POST", f"/v2/models/{model}/infer", body, {"Content-Type": "application/json"})[0]

    seen: list[float] = []
    with ThreadPoolExecutor(requests) as pool:
        answers = [pool.submit(one, i) for i in range(requests)]
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and not all(a.done() for a in answers):
            seen.append(_metric(port, "polystack_inference_queue_depth", model=model, version="1"))
            if meanwhile is not None and seen[-1] >= 3:
                meanwhile(seen)
                meanwhile = None
        return [a.result() for a in answers], seen


def test_queue_depth_shows_the_requests_waiting(batching: ServerThread) -> None:
    port = batching.http_port
    statuses, seen = _watch_depth(port, "slow", 3, rows=4)  # one runs while the others wait: 50 ms a call
    # the queue holds 2: when all three arrive before the first runs, the third finds it full
    assert statuses.count(200) >= 2 and set(statuses) <= {200, 503}, statuses
    assert max(seen) >= 1, seen
    assert _metric(port, "polystack_inference_queue_depth", model="slow", version="1") == 0


def test_queue_depth_shows_unbatched_requests_waiting_for_an_instance(
    model_store: tuple[Store, dict[str, ModelRecord]],
) -> None:
    """Without batching (Triton's default scheduler: one request per instance at a time), the requests handed
    over that no instance started wait, as Triton's pending request count shows them."""
    from polystack.server.model_config import ConfigFile

    store, _ = model_store
    config = ConfigFile('{"max_batch_size": 0, "instance_group": [{"count": 1}]}')
    st = start(store, models=["slow"], model_configs={"slow": config}, inline_max_ms=0.0)
    try:
        port = st.http_port
        statuses, seen = _watch_depth(port, "slow", 4)  # one runs while the others wait: 50 ms a call
        assert statuses == [200] * 4
        # 3 when all four came before the first was done; 4 when they came before its instance's thread took it up
        # (a loaded machine: the full suite beside a helper's servers)
        assert 1 <= max(seen) <= 4, seen
        assert _metric(port, "polystack_inference_queue_depth", model="slow", version="1") == 0
    finally:
        st.stop()


def test_queue_depth_still_counts_the_requests_waiting_on_an_instance_a_reload_replaced(
    model_store: tuple[Store, dict[str, ModelRecord]],
) -> None:
    """A reload routes new requests to the new instance; those already waiting on the old one run there, and the
    gauge goes on counting them (helper-71: it showed the new instance's 0 at once)."""
    from polystack.server.model_config import ConfigFile

    store, records = model_store
    if "slow200" not in {r.name for r in store.models.list()}:
        register_like(store, records["mlp"], "slow200", tags={"delay_ms": "200"})
    text = '{"max_batch_size": 0, "instance_group": [{"count": 1}]}'
    st = start(store, models=["slow200"], model_configs={"slow200": ConfigFile(text)}, inline_max_ms=0.0,
               allow_model_control=True)  # fmt: skip
    try:
        port = st.http_port
        after: list[float] = []

        def reload(_: list[float]) -> None:  # a new instance, with requests waiting on the old one
            httpclient.InferenceServerClient(st.http_url).load_model("slow200", config=text)
            after.append(_metric(port, "polystack_inference_queue_depth", model="slow200", version="1"))

        statuses, _ = _watch_depth(port, "slow200", 6, meanwhile=reload)  # one runs, the others wait: 200 ms a call
        assert statuses == [200] * 6
        assert after and after[0] >= 1, after  # still waiting on the old one
        assert _metric(port, "polystack_inference_queue_depth", model="slow200", version="1") == 0
    finally:
        st.stop()


def test_request_past_its_deadline_is_unavailable_in_tritons_words(batching: ServerThread) -> None:
    """Triton answers a request whose queue timeout passed UNAVAILABLE, "Request timeout expired" (its QA
    checks both): clients' retry logic keys on it."""
    client = httpclient.InferenceServerClient(batching.http_url, concurrency=2)
    g = grpcclient.InferenceServerClient(batching.grpc_url)
    try:
        for c, unavailable in ((client, "503"), (g, "StatusCode.UNAVAILABLE")):
            blocker = client.async_infer("slow", [slow_input(4)])
            time.sleep(0.01)
            x = slow_input(4) if c is client else slow_input(4, grpcclient)
            with pytest.raises(InferenceServerException) as e:
                c.infer("slow", [x], timeout=5_000)  # 5 ms, in microseconds as Triton takes it
            assert e.value.status() == unavailable, e.value
            assert e.value.message().startswith("Request timeout expired"), e.value
            blocker.get_result()
        client.infer("slow", [slow_input(1)])
    finally:
        client.close()
        g.close()


def _metric(port: int, name: str, **labels: str) -> float:
    text = Raw(port).request("GET", "/metrics")[2].decode()
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                return sample.value
    return 0.0


def test_client_leaving_during_inference_does_not_hurt(batching: ServerThread) -> None:
    port = batching.http_port
    cancelled = {"model": "slow", "version": "1", "reason": "Cancelled"}
    before = _metric(port, "polystack_inference_request_failure_total", **cancelled)
    body = json.dumps({"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 16], "data": [0.0] * 16}]}).encode()
    for _ in range(POLICY.max_queue_size):  # as many as the queue holds: each is accepted, then abandoned
        with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
            sock.sendall(
                f"POST /v2/models/slow/infer HTTP/1.1\r\nHost: x\r\nContent-Length: {len(body)}\r\n\r\n".encode() + body
            )
    # the server notices each client that left (bounded wait: it learns of a closed socket asynchronously)
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        if _metric(port, "polystack_inference_request_failure_total", **cancelled) >= before + POLICY.max_queue_size:
            break
        time.sleep(0.01)
    assert _metric(port, "polystack_inference_request_failure_total", **cancelled) == before + POLICY.max_queue_size
    # their places in the queue are free again, so the next request is served
    assert _metric(port, "polystack_inference_queue_depth", model="slow", version="1") == 0
    client = httpclient.InferenceServerClient(batching.http_url)
    try:
        assert client.infer("slow", [slow_input(2)]).as_numpy("y").shape == (2, 4)
    finally:
        client.close()  # on this thread: gevent's pool refuses a close from the collector's


def _reducing_onnx(path: Path, keepdims: int) -> Path:
    """ReduceSum over the batch: to a scalar (keepdims 0), or to one row, shape [1, 3] (keepdims 1)."""
    import onnx
    from onnx import TensorProto, helper

    axes = helper.make_tensor("axes", TensorProto.INT64, [1], [0]) if keepdims else None
    node = helper.make_node("ReduceSum", ["x", "axes"] if axes else ["x"], ["s"], keepdims=keepdims)
    graph = helper.make_graph(
        [node], path.stem, [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 3])],
        [helper.make_tensor_value_info("s", TensorProto.FLOAT, [1, 3] if keepdims else [])],
        initializer=[axes] if axes else [],
    )  # fmt: skip
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save_model(model, str(path))
    return path


def test_models_whose_outputs_do_not_follow_the_batch_answer_every_request_alone(tmp_path: Path) -> None:
    from polystack.formats import import_model

    store = Store.at(tmp_path / "home")
    for name, keepdims in (("rsum", 0), ("rsum0", 1)):
        imported = import_model(_reducing_onnx(tmp_path / f"{name}.onnx", keepdims), tmp_path / f"import-{name}")
        store.register(imported.artifact, name=name, format=imported.format, signature=imported.signature)
    policy = BatchPolicy(max_batch_size=8, max_queue_delay_ms=200, idle_gap_ms=0)  # the four requests merge
    st = start(store, models=["rsum", "rsum0"], policy_for=lambda *_: policy)
    try:
        client = httpclient.InferenceServerClient(st.http_url, concurrency=4)
        # rsum0 declares its output [1, 3]: no batch there, so it is served unbatched, and says so
        assert client.get_model_config("rsum0")["max_batch_size"] == 0
        for name in ("rsum", "rsum0"):
            inputs = []
            for k in range(4):
                i = httpclient.InferInput("x", [1, 3], "FP32")
                i.set_data_from_numpy(np.full((1, 3), k + 1, np.float32))
                inputs.append(i)
            pending = [client.async_infer(name, [i]) for i in inputs]  # sent together, as a batch would form
            for k, p in enumerate(pending):
                got = p.get_result(timeout=10).as_numpy("s")
                x = np.full((1, 3), k + 1, np.float32)
                want = x.sum(axis=0, keepdims=True) if name == "rsum0" else x.sum()
                np.testing.assert_array_equal(got, want)
        assert client.is_model_ready("rsum") and client.is_server_live()  # and the model still answers
        config = client.get_model_config("rsum")  # no longer merged: a config Triton would accept for that
        assert config["max_batch_size"] == 0 and "dynamic_batching" not in config
        assert config["input"][0]["dims"] == [-1, 3]
    finally:
        st.stop()
        store.close()


@pytest.mark.parametrize("instances", [1, 2])
def test_instances_bound_an_unbatched_models_requests_as_triton_instance_count_does(
    model_store: tuple[Store, dict[str, ModelRecord]], instances: int
) -> None:
    # --instances applied only to batched models: an unbatched one shared the server's inference threads,
    # and the setting was logged as not applying
    store, _ = model_store
    with caught_logs("polystack.server") as logged:
        st = start(
            store, models=["slow"], batch_overrides=BatchOverrides(instances=instances), workers=4, allow_model_control=True
        )
    try:
        client = httpclient.InferenceServerClient(st.http_url)
        config = client.get_model_config("slow")
        assert config["instance_group"][0]["count"] == instances and "dynamic_batching" not in config
        started = time.perf_counter()
        with ThreadPoolExecutor(4) as pool:
            clients = [httpclient.InferenceServerClient(st.http_url) for _ in range(4)]
            futures = [pool.submit(c.infer, "slow", [slow_input()]) for c in clients]
            assert all(f.result(timeout=30).as_numpy("y").shape == (1, 4) for f in futures)
        took = time.perf_counter() - started
        assert 4 / instances * 0.05 * 0.9 <= took, took  # 50 ms each, `instances` at a time
        # a config that leaves the count out keeps polystack's choice; one that gives it decides
        client.load_model("slow", config="{}")
        assert client.get_model_config("slow")["instance_group"][0]["count"] == instances
        client.load_model("slow", config=json.dumps({"instance_group": [{"count": 3}]}))
        assert client.get_model_config("slow")["instance_group"][0]["count"] == 3
        client.load_model("slow")
        assert client.get_model_config("slow")["instance_group"][0]["count"] == instances
    finally:
        st.stop()
    assert not [r for r in logged if "do not apply" in r.getMessage()]


def test_batch_settings_other_than_instances_still_say_they_do_not_apply_to_an_unbatched_model(
    model_store: tuple[Store, dict[str, ModelRecord]],
) -> None:
    store, _ = model_store
    with caught_logs("polystack.server") as logged:
        st = start(store, models=["slow"], batch_overrides=BatchOverrides(max_batch_size=8, instances=2))
    st.stop()
    [warning] = [r for r in logged if "do not apply" in r.getMessage()]
    assert warning.settings == {"max_batch_size": 8}  # type: ignore[attr-defined]


def test_no_batching_takes_instances_but_refuses_the_other_batching_flags(tmp_path: Path) -> None:
    assert "contradict --no-batching" in refused_at_start(tmp_path, ["--no-batching", "--max-batch-size", "8"])
    assert "--instances must be from 1 to 256" in refused_at_start(tmp_path, ["--no-batching", "--instances", "257"])
    home, port = tmp_path / "home", free_port()
    model = mlp_onnx(tmp_path / "m.onnx")
    subprocess.run([sys.executable, "-m", "polystack", "--home", str(home), "register", str(model), "--name", "m"],
                   check=True, capture_output=True)  # fmt: skip
    args = ["m", "--no-batching", "--instances", "2", "--grpc-port", "-1"]
    with cli_server(home, args, port, tmp_path / "serve.log"):
        config = httpclient.InferenceServerClient(f"127.0.0.1:{port}").get_model_config("m")
        assert config["instance_group"][0]["count"] == 2 and "dynamic_batching" not in config


def test_instances_apply_to_a_model_without_a_batch_dimension_whatever_batches(
    model_store: tuple[Store, dict[str, ModelRecord]],
) -> None:
    # under --batching such a model ran unbatched on the shared threads, and --instances did nothing, unsaid
    store, records = model_store
    fixed = Signature(inputs=(TensorSpec("x", DType.FP32, (2, 16)),), outputs=(TensorSpec("y", DType.FP32, (2, 4)),))
    store.register(store.artifact_path(records["mlp"]), name="fixedrows", format=records["mlp"].format, signature=fixed)
    st = start(store, models=["fixedrows"], batching=BatchPolicy(), batch_overrides=BatchOverrides(instances=3), workers=2)
    try:
        config = httpclient.InferenceServerClient(st.http_url).get_model_config("fixedrows")
        assert config["instance_group"][0]["count"] == 3 and "dynamic_batching" not in config
    finally:
        st.stop()


def test_a_request_reaching_a_models_own_threads_as_a_reload_closes_them_runs_on_the_new_ones(
    model_store: tuple[Store, dict[str, ModelRecord]],
) -> None:
    # it was a 500 (the threads' RuntimeError): only a closed batcher or runtime sent a request on to the
    # instance that replaced it. The interleaving is made here: resolve, reload, then run.
    store, _ = model_store
    st = start(store, models=["mlp"], no_batching=True, batch_overrides=BatchOverrides(instances=2))
    try:
        plane = st.server.plane
        plane.inline_max_s = 0  # never run on the loop, as under load

        async def resolve_reload_run() -> np.ndarray:
            served = plane.served_model("mlp", None)
            await plane.control(lambda n: plane.model_loads.load_only(n, json.dumps({"max_batch_size": 8})), "mlp")
            assert plane.model_loads.wait_retired(10)  # the threads the request resolved are shut down
            request = InferRequest(inputs={"x": np.ones((1, 16), np.float32)})
            result, _ = await plane._run(served, request, "mlp", None, None, None, Outcome(served.entry.stats))
            return result["y"]

        assert st._loop is not None
        answer = asyncio.run_coroutine_threadsafe(resolve_reload_run(), st._loop).result(30)
        assert answer.shape == (1, 4)
    finally:
        st.stop()
