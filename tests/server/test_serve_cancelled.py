"""A request whose caller goes away before its answer (an HTTP client that disconnects, a gRPC call
cancelled or past its deadline) counts once, as a failure, in the statistics and in /metrics alike,
whether it was still queued (then it never runs) or already running (its execution still counts)."""

from __future__ import annotations

import contextlib
import json
import re
import socket
import struct
import time
from collections.abc import Callable, Iterator

import grpc
import numpy as np
import pytest
import tritonclient.http as httpclient
from conftest import Raw
from servekit import register_like, start

from polystack.batching import BatchPolicy
from polystack.protocol.grpc_gen import inference_pb2 as pb
from polystack.protocol.grpc_gen import inference_pb2_grpc as pb_grpc
from polystack.server.app import ServerThread
from polystack.store import ModelRecord, Store

BODY = json.dumps({"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 16], "data": [0.0] * 16}]}).encode()


def counts(st: ServerThread, model: str) -> dict[str, float]:
    stats = httpclient.InferenceServerClient(st.http_url).get_inference_statistics(model)["model_stats"][0]
    text = Raw(st.http_port).request("GET", "/metrics")[2].decode()

    def metric(name: str, extra: str = "") -> float:
        m = re.search(rf'^{name}{{model="{model}",{extra}version="1"}} (\S+)$', text, re.M)
        return float(m.group(1)) if m else 0.0

    return {
        "success": stats["inference_stats"]["success"]["count"],
        "fail": stats["inference_stats"]["fail"]["count"],
        "executions": stats["execution_count"],
        "metric_success": metric("polystack_inference_request_success_total"),
        "metric_cancelled": metric("polystack_inference_request_failure_total", 'reason="Cancelled",'),
    }


def wait_for(check: Callable[[], bool], what: str, timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        assert time.monotonic() < deadline, what
        time.sleep(0.01)


def in_flight(st: ServerThread) -> float:
    text = Raw(st.http_port).request("GET", "/metrics")[2].decode()
    m = re.search(r"^polystack_requests_in_flight (\S+)$", text, re.M)
    return float(m.group(1)) if m else 0.0


def running(st: ServerThread) -> bool:
    """One request in flight and none waiting: the model has it (in flight alone can still be in the queue,
    where a client gone takes it out unrun: a loaded machine's batcher can take longer than its 1 ms delay)."""
    text = Raw(st.http_port).request("GET", "/metrics")[2].decode()
    m = re.search(r'^polystack_inference_queue_depth\{model="slowc",version="1"\} (\S+)$', text, re.M)
    assert m, "no queue depth for slowc in /metrics"
    return in_flight(st) == 1 and float(m.group(1)) == 0


@contextlib.contextmanager
def slow_server(
    model_store: tuple[Store, dict[str, ModelRecord]], policy: BatchPolicy | None
) -> Iterator[tuple[ServerThread, dict[str, float]]]:
    """A server of a 300 ms model (batched by ``policy``, else on threads), and its counts before the test."""
    store, records = model_store
    register_like(store, records["mlp"], "slowc", tags={"delay_ms": "300"})
    st = start(store, models=["slowc"], batching=policy, inline_max_ms=0.0)
    try:
        yield st, counts(st, "slowc")
    finally:
        st.stop()


def changed(st: ServerThread, before: dict[str, float]) -> dict[str, float]:
    after = counts(st, "slowc")
    return {k: after[k] - before[k] for k in after}


def send_and_reset(st: ServerThread) -> socket.socket:
    """An HTTP infer request whose connection is then reset (the client gone), once the caller says so."""
    sock = socket.create_connection(("127.0.0.1", st.http_port), timeout=5)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))  # RST on close
    sock.sendall(b"POST /v2/models/%s/infer HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % (b"slowc", len(BODY)))
    sock.sendall(BODY)
    return sock


@pytest.mark.parametrize("batching", [False, True], ids=["threads", "batcher"])
def test_a_client_gone_while_its_request_runs_is_one_failure_in_stats_and_metrics(
    model_store: tuple[Store, dict[str, ModelRecord]], batching: bool
) -> None:
    policy = BatchPolicy(max_batch_size=4, max_queue_delay_ms=1) if batching else None
    with slow_server(model_store, policy) as (st, before):
        sock = send_and_reset(st)
        wait_for(lambda: running(st), "the request never ran")
        sock.close()
        wait_for(lambda: in_flight(st) == 0, "the abandoned request never left")
        wait_for(lambda: counts(st, "slowc")["executions"] == before["executions"] + 1, "the model never ran it")
        time.sleep(0.1)  # the worker's own counting, after the run, would land now
        assert changed(st, before) == {
            "success": 0, "fail": 1, "executions": 1, "metric_success": 0, "metric_cancelled": 1
        }  # fmt: skip


def test_a_client_gone_while_its_request_waits_in_the_queue_is_never_run(
    model_store: tuple[Store, dict[str, ModelRecord]],
) -> None:
    with slow_server(model_store, BatchPolicy(max_batch_size=1, max_queue_delay_ms=0)) as (st, before):
        first = send_and_reset(st)  # runs; its client stays
        wait_for(lambda: in_flight(st) == 1, "the first request never showed as in flight")
        second = send_and_reset(st)  # waits behind it in the queue
        wait_for(lambda: in_flight(st) == 2, "the second request never showed as in flight")
        second.close()
        wait_for(lambda: in_flight(st) == 1, "the queued request never left")
        assert first.recv(65536).startswith(b"HTTP/1.1 200")
        first.close()
        time.sleep(0.4)  # a run of the second, had it not left the queue, would have ended now
        assert changed(st, before) == {
            "success": 1, "fail": 1, "executions": 1, "metric_success": 1, "metric_cancelled": 1
        }  # fmt: skip


def test_a_grpc_call_past_its_deadline_while_running_is_one_failure_in_stats_and_metrics(
    model_store: tuple[Store, dict[str, ModelRecord]],
) -> None:
    with slow_server(model_store, BatchPolicy(max_batch_size=4, max_queue_delay_ms=1)) as (st, before):
        request = pb.ModelInferRequest(model_name="slowc", raw_input_contents=[np.zeros(16, "<f4").tobytes()])
        request.inputs.add(name="x", datatype="FP32", shape=[1, 16])
        with grpc.insecure_channel(st.grpc_url) as channel, pytest.raises(grpc.RpcError) as e:
            pb_grpc.GRPCInferenceServiceStub(channel).ModelInfer(request, timeout=0.1)
        assert e.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        wait_for(lambda: counts(st, "slowc")["executions"] == before["executions"] + 1, "the model never ran it")
        time.sleep(0.1)
        assert changed(st, before) == {
            "success": 0, "fail": 1, "executions": 1, "metric_success": 0, "metric_cancelled": 1
        }  # fmt: skip
