"""CPU placement: the event loop on the front-end cores, every thread that runs a model on the runtime cores.

The threads are real (a real server, a real ONNX Runtime session) and their affinity is read back from
the kernel. The server tests need two cores a process may use; with fewer they are skipped.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tritonclient.http as httpclient
from servekit import cli_server, free_port, register_like, start

from polystack.batching import BatchPolicy
from polystack.engine import Engine, LoadSpec, default_spec
from polystack.errors import InvalidRequest
from polystack.server.app import ServeConfig, ServerThread
from polystack.server.placement import CpuPlacement, format_cpu_list, parse_cpu_list
from polystack.store import ModelRecord, Store

CPUS = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
two_cores = pytest.mark.skipif(len(CPUS) < 2, reason="placement needs two cores this process may use")


def test_cpu_lists_read_and_write_as_taskset_does() -> None:
    assert parse_cpu_list("0") == {0}
    assert parse_cpu_list("0-2,5") == {0, 1, 2, 5}
    assert parse_cpu_list(" 4, 1-2 ") == {1, 2, 4}
    assert format_cpu_list(frozenset({0, 1, 2, 5, 7, 8})) == "0-2,5,7-8"
    for bad, fragment in (("", "not a CPU list"), ("a", "not a CPU list"), ("-1", "not a CPU list"),
                          ("3-1", "runs backwards"), ("1,,2", "not a CPU list"), ("\uff10", "not a CPU list"),
                          ("0-99999999999", "past any machine's cores")):  # fmt: skip
        with pytest.raises(InvalidRequest, match=fragment):
            parse_cpu_list(bad)


def test_no_options_no_placement() -> None:
    assert CpuPlacement.resolve(None, None) is None


@two_cores
def test_one_side_given_the_other_gets_the_remaining_cores() -> None:
    first, rest = CPUS[0], frozenset(CPUS[1:])
    assert CpuPlacement.resolve(str(first), None) == CpuPlacement(frozenset({first}), rest)
    assert CpuPlacement.resolve(None, str(first)) == CpuPlacement(rest, frozenset({first}))
    both = format_cpu_list(frozenset(CPUS))
    assert CpuPlacement.resolve(both, both) == CpuPlacement(frozenset(CPUS), frozenset(CPUS))  # overlap: asked for


def test_cores_the_process_cannot_use_or_an_empty_side_are_refused() -> None:
    outside = max(CPUS, default=0) + 1000
    with pytest.raises(InvalidRequest, match=f"cores {outside} this process cannot use"):
        CpuPlacement.resolve(None, str(outside))
    with pytest.raises(InvalidRequest, match="leaves no core for the other side"):
        CpuPlacement.resolve(format_cpu_list(frozenset(CPUS)), None)


def test_threads_per_instance_fill_the_runtime_cores() -> None:
    placement = CpuPlacement(frozenset({0}), frozenset({1, 2, 3, 4}))
    assert [placement.threads_per_instance(n) for n in (1, 2, 3, 8)] == [4, 2, 1, 1]


def _native_threads() -> set[int]:
    return {int(t) for t in os.listdir("/proc/self/task")}


def _name(tid: int) -> str:
    with open(f"/proc/self/task/{tid}/comm") as f:
        return f.read().strip()


def _affinity(tid: int) -> set[int]:
    return set(os.sched_getaffinity(tid))


def _recording(fn: Callable[..., Any], threads: list[int]) -> Callable[..., Any]:
    """``fn``, which also appends the native id of each thread it runs on to ``threads``."""

    def spy(*args: Any, **kwargs: Any) -> Any:
        threads.append(threading.get_native_id())
        return fn(*args, **kwargs)

    return spy


def _split() -> tuple[int, int, CpuPlacement]:
    """The first core for the front end, the second for the runtime, and that placement."""
    front, back = CPUS[0], CPUS[1]
    return front, back, CpuPlacement(frozenset({front}), frozenset({back}))


def _mlp_input(rows: int) -> httpclient.InferInput:
    i = httpclient.InferInput("x", [rows, 16], "FP32")
    i.set_data_from_numpy(np.ones((rows, 16), np.float32))
    return i


@two_cores
def test_batching_server_pins_loop_batchers_and_runtime_pools(
    model_store: tuple[Store, dict[str, ModelRecord]],
) -> None:
    store, _ = model_store
    front, back, placement = _split()
    mine = _affinity(0)
    before = _native_threads()
    # two runtime threads on one core: ONNX Runtime starts an intra-op pool thread of its own
    st = start(store, models=["mlp"], grpc_port=None, cpus=placement, threads=2, batching=BatchPolicy(max_batch_size=8))
    try:
        started = _native_threads() - before  # before any client starts threads of its own (gevent's DNS pool)
        assert _affinity(0) == mine  # the caller's thread went back after loading
        client = httpclient.InferenceServerClient(st.http_url)
        assert client.infer("mlp", [_mlp_input(3)]).as_numpy("y").shape == (3, 4)

        loop_tid = st._thread.native_id
        assert loop_tid is not None and _affinity(loop_tid) == {front}
        python = {t.native_id: t.name for t in threading.enumerate()}
        batchers = [tid for tid, name in python.items() if name.startswith("batcher-mlp")]
        assert batchers and all(_affinity(tid) == {back} for tid in batchers)
        # not Python's, nor libuv's pool (uvloop starts it on first use in a process, with the loop's cores)
        runtime_pool = [tid for tid in started if tid not in python and _name(tid) != "libuv-worker"]
        assert runtime_pool, "ONNX Runtime started no thread of its own with 2 intra-op threads"
        assert {tid: _affinity(tid) for tid in runtime_pool} == {tid: {back} for tid in runtime_pool}
    finally:
        st.stop()


@two_cores
def test_inference_pool_without_batching_runs_on_the_runtime_cores(
    model_store: tuple[Store, dict[str, ModelRecord]],
) -> None:
    store, _ = model_store
    _, back, placement = _split()
    st = start(store, models=["mlp"], grpc_port=None, cpus=placement, no_batching=True)  # inline on by default
    try:
        entry = st.server.engine.loaded()[0]
        ran_on: list[int] = []
        entry.model.infer = _recording(entry.model.infer, ran_on)  # type: ignore[method-assign]
        client = httpclient.InferenceServerClient(st.http_url)
        for _ in range(20):  # one at a time: unpinned, a model this fast would run on the event loop
            client.infer("mlp", [_mlp_input(1)])
        assert len(ran_on) == 20 and {tid: _affinity(tid) for tid in ran_on} == {tid: {back} for tid in ran_on}
        assert st.server.plane.executor.workers == 1  # one inference thread per runtime core
        assert entry.spec.options.get("intra_op_threads") == 1  # sized to the runtime cores, not the machine
    finally:
        st.stop()


@two_cores
def test_large_responses_are_compressed_on_the_front_end_cores(
    model_store: tuple[Store, dict[str, ModelRecord]], monkeypatch: pytest.MonkeyPatch
) -> None:
    from polystack.server import http

    store, _ = model_store
    front, _, placement = _split()
    compressed_on: list[int] = []
    monkeypatch.setattr(http, "_compress", _recording(http._compress, compressed_on))
    st = start(store, models=["ident64"], grpc_port=None, cpus=placement, no_batching=True)
    try:
        client = httpclient.InferenceServerClient(st.http_url)
        x = np.arange(40_000, dtype=np.int64).reshape(10_000, 4)  # 312 KiB out: past the inline limit
        i = httpclient.InferInput("a", list(x.shape), "INT64")
        i.set_data_from_numpy(x)
        got = client.infer("ident64", [i], response_compression_algorithm="gzip").as_numpy("b")
        np.testing.assert_array_equal(got, x)
        loop_tid = st._thread.native_id
        assert len(compressed_on) == 1 and compressed_on[0] != loop_tid  # off the loop, in a thread of its own
        assert _affinity(compressed_on[0]) == {front}  # on the front end's cores, not the runtime's
    finally:
        st.stop()


@two_cores
def test_response_cache_keys_of_large_inputs_are_hashed_on_the_front_end_cores(
    model_store: tuple[Store, dict[str, ModelRecord]], monkeypatch: pytest.MonkeyPatch
) -> None:
    from polystack.server.model_config import ConfigFile
    from polystack.server.response_cache import CacheConfig, ResponseCache

    store, _ = model_store
    front, _, placement = _split()
    hashed_on: list[int] = []
    monkeypatch.setattr(ResponseCache, "key", staticmethod(_recording(ResponseCache.key, hashed_on)))
    cached = ConfigFile('{"response_cache": {"enable": true}}')
    st = start(
        store, models=["ident64"], grpc_port=None, cpus=placement, no_batching=True,
        model_configs={"ident64": cached}, response_cache=CacheConfig(8 << 20),
    )  # fmt: skip
    try:
        client = httpclient.InferenceServerClient(st.http_url)
        x = np.arange(40_000, dtype=np.int64).reshape(10_000, 4)  # 312 KiB in: past the inline limit
        i = httpclient.InferInput("a", list(x.shape), "INT64")
        i.set_data_from_numpy(x)
        for _ in range(2):
            np.testing.assert_array_equal(client.infer("ident64", [i]).as_numpy("b"), x)
        assert len(hashed_on) == 2 and st._thread.native_id not in hashed_on  # off the loop
        assert all(_affinity(tid) == {front} for tid in hashed_on)  # front-end work: not on the runtime's cores
    finally:
        st.stop()


@two_cores
def test_a_repository_load_does_not_hold_the_inference_thread(
    model_store: tuple[Store, dict[str, ModelRecord]],
) -> None:
    store, records = model_store
    register_like(store, records["mlp"], "slowload", tags={"delay_ms": "0", "load_delay_ms": "1500"})
    _, back, placement = _split()  # one inference thread
    st = start(store, models=["mlp"], cpus=placement, no_batching=True, allow_model_control=True)
    try:

        def load() -> None:  # tritonclient.http runs on gevent: a client per thread
            httpclient.InferenceServerClient(st.http_url).load_model("slowload")

        loading = threading.Thread(target=load)
        loading.start()
        time.sleep(0.2)  # the load is under way
        started = time.monotonic()
        httpclient.InferenceServerClient(st.http_url).infer("mlp", [_mlp_input(1)])
        assert time.monotonic() - started < 1.0  # not after the load's 1.5 s
        loading.join(10)
        assert httpclient.InferenceServerClient(st.http_url).is_model_ready("slowload")
        load_threads = [t.native_id for t in threading.enumerate() if t.name.startswith("load")]
        assert load_threads and all(tid is not None and _affinity(tid) == {back} for tid in load_threads)
    finally:
        st.stop()


@pytest.mark.skipif(not CPUS, reason="CPU placement needs Linux")
def test_serve_refuses_a_bad_cpu_list_with_one_line(tmp_path: Path) -> None:
    for args, fragment in (
        (["--runtime-cpus", "1-x"], "not a CPU list"),
        (["--frontend-cpus", "4096"], "cannot use"),
        (["--frontend-cpus", str(CPUS[0]), "--runtime-cpus", str(CPUS[0]), "--engine", "ray"], "Ray places"),
    ):
        out = subprocess.run(
            [sys.executable, "-m", "polystack", "--home", str(tmp_path / "home"), "serve", *args],
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert out.returncode == 2, out.stderr
        lines = out.stderr.strip().splitlines()
        assert len(lines) == 1 and fragment in lines[0], out.stderr


@two_cores
def test_polystack_serve_leaves_no_thread_unpinned(
    model_store: tuple[Store, dict[str, ModelRecord]], tmp_path: Path
) -> None:
    """The CLI's process serves only: threads libraries started at import move to the runtime cores too."""
    store, _ = model_store
    front, back = CPUS[0], CPUS[1]
    port, log_path = free_port(), tmp_path / "serve.log"
    args = [
        "mlp",
        "--profile",
        "server",
        "--grpc-port",
        "-1",
        "--frontend-cpus",
        str(front),
        "--runtime-cpus",
        str(back),
    ]
    with cli_server(store.home, args, port, log_path) as proc:
        client = httpclient.InferenceServerClient(f"127.0.0.1:{port}")
        assert client.infer("mlp", [_mlp_input(2)]).as_numpy("y").shape == (2, 4)
        threads = {int(t): set(os.sched_getaffinity(int(t))) for t in os.listdir(f"/proc/{proc.pid}/task")}
        assert threads.pop(proc.pid) == {front}  # the main thread runs the event loop
        assert {back} in threads.values()  # the batch worker
        assert all(cpus in ({front}, {back}) for cpus in threads.values()), threads
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
    serving = [json.loads(line) for line in log_path.read_text().splitlines() if '"serving"' in line]
    assert serving and serving[0]["frontend_cpus"] == str(front) and serving[0]["runtime_cpus"] == str(back)


@two_cores
def test_a_serving_process_moves_every_thread_and_shortens_the_gil_switch_interval() -> None:
    front, back = CPUS[0], CPUS[1]
    script = f"""
import os, sys, threading
import numpy  # starts OpenBLAS's pool at import
from polystack.server.placement import SWITCH_INTERVAL_S, CpuPlacement
event = threading.Event()
helper = threading.Thread(target=event.wait)
helper.start()
CpuPlacement(frozenset({{{front}}}), frozenset({{{back}}})).apply_to_process()
tids = os.listdir("/proc/self/task")
print(len(tids), all(os.sched_getaffinity(int(t)) == {{{back}}} for t in tids), abs(sys.getswitchinterval() - SWITCH_INTERVAL_S) < 1e-9)
event.set()
"""
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    count, pinned, interval = out.stdout.split()
    assert int(count) >= 2 and pinned == "True" and interval == "True", out


@two_cores
def test_openvino_leaves_the_pinning_to_the_server(model_store: tuple[Store, dict[str, ModelRecord]]) -> None:
    """OpenVINO's own CPU pinning resets the calling thread's affinity on its first call: a pinned server
    turns it off, so the batch worker stays on the runtime cores."""
    store, _ = model_store
    _, back, placement = _split()

    def on_openvino(store: Store, record: ModelRecord, profile: str) -> LoadSpec:
        return default_spec(store, record, backend="openvino")

    config = ServeConfig(
        http_port=0, grpc_port=None, models=["mlp"], batching=BatchPolicy(max_batch_size=8),
        cpus=placement,
    )  # fmt: skip
    st = ServerThread(Engine(store), config, spec_for=on_openvino).start()
    try:
        entry = st.server.engine.loaded()[0]
        assert entry.spec.backend == "openvino" and entry.spec.options["cpu_pinning"] is False
        client = httpclient.InferenceServerClient(st.http_url)
        for _ in range(10):
            client.infer("mlp", [_mlp_input(2)])
        workers = [t.native_id for t in threading.enumerate() if t.name.startswith("batcher-mlp")]
        assert workers and all(tid is not None and _affinity(tid) == {back} for tid in workers)
    finally:
        st.stop()
