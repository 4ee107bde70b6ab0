"""Triton's rate limiter (``serve --rate-limit execution_count``): model instances whose config's instance_group
names a ``rate_limiter`` wait for its resources before they run, across models; a batch grows while its
instance waits; a model that needs more than ``--rate-limit-resource`` gives does not load, in Triton's words;
GET config shows each group's ``rate_limiter``. Real servers on 127.0.0.1, the real tritonclient."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from onnx import TensorProto
from servekit import (
    cli_server,
    free_port,
    mlp_ones,
    refused_after_loads,
    refused_at_start,
    register_like,
    same_config_both_ways,
    single_op,
    start,
)
from tritonclient.utils import InferenceServerException

from polystack.server.model_config import ConfigFile
from polystack.store import ModelRecord, Store

DELAY_MS = 400  # each call of the slow models (the null backend: zeros after a sleep)


def _group(resources: str, priority: int = 0, count: int = 1) -> str:
    return (
        f'"instance_group": [{{"count": {count}, "rate_limiter": {{"resources": [{resources}], '
        f'"priority": {priority}}}}}]'
    )


R1 = '{"name": "R", "count": 1}'
R2 = '{"name": "R", "count": 2}'


@pytest.fixture(scope="module")
def slow_models(model_store: tuple[Store, dict[str, ModelRecord]]) -> Iterator[Store]:
    store, records = model_store
    for name in ("rl_a", "rl_b", "rl_batch"):
        register_like(store, records["mlp"], f"slow{name}", tags={"delay_ms": str(DELAY_MS if name != "rl_batch" else 50)})
    yield store


def _queue_s(client: Any, model: str) -> float:
    stats = client.get_inference_statistics(model)["model_stats"][0]
    return float(stats["inference_stats"]["queue"]["ns"]) / 1e9


def test_instances_that_need_the_same_resource_take_turns_across_models(slow_models: Store) -> None:
    """Two models, one instance each, both needing R (1 of it there): one request to each at once runs one after
    the other, the second's wait for R counted as its queue time, as Triton counts it."""
    config = ConfigFile(f'{{"max_batch_size": 0, {_group(R1)}}}')
    st = start(slow_models, models=["slowrl_a", "slowrl_b"], model_configs={"slowrl_a": config, "slowrl_b": config},
               inline_max_ms=0.0, rate_limit={})  # fmt: skip
    try:
        client = httpclient.InferenceServerClient(st.http_url, concurrency=2)
        sent = [client.async_infer(m, [mlp_ones()]) for m in ("slowrl_a", "slowrl_b")]
        for s in sent:
            s.get_result()
        waited = sorted(_queue_s(client, m) for m in ("slowrl_a", "slowrl_b"))
        assert waited[1] >= 0.75 * DELAY_MS / 1000, waited  # the one that went second waited out the other's call
    finally:
        st.stop()


def test_without_the_rate_limiter_the_same_configs_run_at_once(slow_models: Store) -> None:
    config = ConfigFile(f'{{"max_batch_size": 0, {_group(R1)}}}')
    st = start(slow_models, models=["slowrl_a", "slowrl_b"], model_configs={"slowrl_a": config, "slowrl_b": config},
               inline_max_ms=0.0)  # fmt: skip
    try:
        client = httpclient.InferenceServerClient(st.http_url, concurrency=2)
        sent = [client.async_infer(m, [mlp_ones()]) for m in ("slowrl_a", "slowrl_b")]
        for s in sent:
            s.get_result()
        waited = [_queue_s(client, m) for m in ("slowrl_a", "slowrl_b")]
        assert max(waited) < 0.75 * DELAY_MS / 1000, waited
    finally:
        st.stop()


def test_a_batch_grows_while_its_instance_waits_for_resources(slow_models: Store) -> None:
    """As Triton's dynamic batcher grows the batch its instance waits to run: the requests that come meanwhile
    run with it, in one execution."""
    holder = ConfigFile(f'{{"max_batch_size": 0, {_group(R1)}}}')
    batched = ConfigFile(
        f'{{"max_batch_size": 8, "dynamic_batching": {{"max_queue_delay_microseconds": 0}}, {_group(R1)}}}'
    )
    st = start(slow_models, models=["slowrl_a", "slowrl_batch"], inline_max_ms=0.0, rate_limit={},
               model_configs={"slowrl_a": holder, "slowrl_batch": batched})  # fmt: skip
    try:
        client = httpclient.InferenceServerClient(st.http_url, concurrency=8)
        held = client.async_infer("slowrl_a", [mlp_ones()])
        time.sleep(0.1)  # it holds R for 400 ms
        sent = [client.async_infer("slowrl_batch", [mlp_ones()]) for _ in range(6)]
        for s in [held, *sent]:
            s.get_result()
        stats = client.get_inference_statistics("slowrl_batch")["model_stats"][0]
        assert (stats["inference_count"], stats["execution_count"]) == (6, 1), stats
    finally:
        st.stop()


def _repository(tmp_path: Path, needs: dict[str, int]) -> Path:
    """A repository of one ONNX model per name, each instance needing that much of R."""
    root = tmp_path / "models"
    for name, count in needs.items():
        (root / name / "1").mkdir(parents=True)
        single_op(root / name / "1" / "model.onnx", "Neg", TensorProto.FLOAT, 4, "x", [("y", "Neg")])
        (root / name / "config.pbtxt").write_text(
            'max_batch_size: 0\ninstance_group [ { count: 1 kind: KIND_CPU rate_limiter { resources [ { name: "R" '
            f"count: {count} }} ] priority: 2 }} }} ]\n"
        )
    return root


def _limited(count: int, need: int) -> str:  # tritonserver 2.51's words
    return (
        'version 1 is at UNAVAILABLE state: Invalid argument: Resource count for "R" is limited to '
        f"{count} which will prevent scheduling of one or more model instances, the minimum required count is {need};"
    )


def test_a_model_that_needs_more_than_given_stops_the_start_in_tritons_words(tmp_path: Path) -> None:
    root = _repository(tmp_path, {"big": 2})
    line = refused_after_loads(
        tmp_path, ["--model-repository", str(root), "--rate-limit", "execution_count", "--rate-limit-resource", "R:1"]
    )
    assert line.startswith(f"error: failed to load 'big:1': {_limited(1, 2)} give the server more of it"), line


def test_a_load_that_needs_more_than_given_fails_and_the_server_serves_on(tmp_path: Path) -> None:
    root = _repository(tmp_path, {"big": 2, "small": 1})
    port, grpc_port = free_port(), free_port()
    args = ["--model-repository", str(root), "--model-control-mode", "explicit", "--load-model", "small",
            "--rate-limit", "execution_count", "--rate-limit-resource", "R:1:0", "--grpc-port", str(grpc_port)]  # fmt: skip
    with cli_server(tmp_path / "home", args, port, tmp_path / "serve.log"):
        client = httpclient.InferenceServerClient(f"127.0.0.1:{port}")
        with pytest.raises(InferenceServerException) as refused:
            client.load_model("big")
        assert str(refused.value).startswith(f"[400] load failed for model 'big': {_limited(1, 2)}"), refused.value
        assert client.is_model_ready("small") and not client.is_model_ready("big")
        x = httpclient.InferInput("x", [1, 4], "FP32")
        x.set_data_from_numpy(-np.arange(4, dtype=np.float32).reshape(1, 4))
        assert client.infer("small", [x]).as_numpy("y").tolist() == [[0.0, 1.0, 2.0, 3.0]]
        grpc = grpcclient.InferenceServerClient(f"127.0.0.1:{grpc_port}")
        group = same_config_both_ways(client, grpc, "small")["instance_group"][0]  # gRPC's lacked it
        assert group["rate_limiter"] == {"resources": [{"name": "R", "global": False, "count": 1}], "priority": 2}
    lines = [json.loads(ln) for ln in (tmp_path / "serve.log").read_text().splitlines() if ln.startswith("{")]
    [said] = [ln for ln in lines if ln["msg"] == "rate limiter on (execution_count)"]  # as Triton's start table
    assert said["given"] == [{"name": "R", "count": 1, "device": 0}]


def test_the_rate_limiter_flags_are_checked(tmp_path: Path) -> None:
    line = refused_at_start(tmp_path, ["--rate-limit", "sometimes"])
    assert line == "error: invalid argument for --rate-limit: 'sometimes'; give off or execution_count", line
    line = refused_at_start(tmp_path, ["--rate-limit", "execution_count", "--engine", "ray"])
    assert "--rate-limit execution_count limits the model instances of one server process" in line, line


def test_given_resources_with_the_rate_limiter_off_are_said_to_change_nothing(tmp_path: Path) -> None:
    root = _repository(tmp_path, {"small": 1})
    port = free_port()
    args = ["--model-repository", str(root), "--rate-limit-resource", "R:1", "--grpc-port", "-1"]
    with cli_server(tmp_path / "home", args, port, tmp_path / "serve.log"):
        assert httpclient.InferenceServerClient(f"127.0.0.1:{port}").is_model_ready("small")
    said = [json.loads(ln)["msg"] for ln in (tmp_path / "serve.log").read_text().splitlines() if ln.startswith("{")]
    assert any(m.startswith("--rate-limit-resource changes nothing while the rate limiter is off") for m in said)


def test_unloading_a_model_with_requests_still_queued_holds_back_no_other(slow_models: Store) -> None:
    """helper-130: a model unloaded with requests queued on its threads forgot its needs once its running call
    ended; its next call then waited for resources no longer there, first in line, holding back every other
    model's instances and the server's stop."""
    big = ConfigFile(f'{{"max_batch_size": 0, {_group(R2)}}}')
    small = ConfigFile(f'{{"max_batch_size": 0, {_group(R1)}}}')
    st = start(slow_models, models=["slowrl_a", "slowrl_batch"], inline_max_ms=0.0, rate_limit={},
               model_configs={"slowrl_a": big, "slowrl_batch": small}, allow_model_control=True)  # fmt: skip
    stopped = False
    try:
        client = httpclient.InferenceServerClient(st.http_url, concurrency=4, network_timeout=60)
        for _ in range(3):  # the small one has run more than the big one's instance
            client.infer("slowrl_batch", [mlp_ones()])
        sent = [client.async_infer("slowrl_a", [mlp_ones()]) for _ in range(3)]  # one runs, two queue
        time.sleep(0.1)
        client.unload_model("slowrl_a")
        quick = httpclient.InferenceServerClient(st.http_url, network_timeout=10)
        t0 = time.monotonic()
        quick.infer("slowrl_batch", [mlp_ones()])  # behind at most the big one's queued calls
        assert time.monotonic() - t0 < 5
        for s in sent:
            s.get_result()
        stopping = threading.Thread(target=st.stop, daemon=True)
        stopping.start()
        stopping.join(20)
        stopped = not stopping.is_alive()
        assert stopped, "the server's stop hangs"
    finally:
        if not stopped:
            st.stop()
