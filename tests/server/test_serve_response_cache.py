"""Triton's response cache through a real server: a model whose config enables ``response_cache`` answers
a repeated request from the server's cache (``--cache-config``) over HTTP and gRPC, counted in the
statistics and metrics as Triton counts it; a reload or unload drops its answers."""

from __future__ import annotations

import concurrent.futures
import json
import re
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from servekit import caught_logs, cli_server, free_port, mlp_ones, refused_at_start, register_like, start
from tritonclient.utils import InferenceServerException

from polystack.server.app import ServerThread
from polystack.server.model_config import ConfigFile
from polystack.server.response_cache import CacheConfig
from polystack.store import ModelRecord, Store

CACHED = ConfigFile(json.dumps({"response_cache": {"enable": True}}))
BATCHED_CACHED = ConfigFile(
    json.dumps(
        {
            "max_batch_size": 8,
            "dynamic_batching": {"max_queue_delay_microseconds": 2000},
            "response_cache": {"enable": True},
        }
    )
)


@pytest.fixture(scope="module")
def server(model_store: tuple[Store, dict[str, ModelRecord]]) -> Iterator[ServerThread]:
    store, records = model_store
    register_like(store, records["mlp"], "mlpb")  # the MLP again, batched
    st = start(
        store,
        models=["mlp", "mlpb", "two", "strid", "ident64"],
        allow_model_control=True,
        model_configs={"mlp": CACHED, "mlpb": BATCHED_CACHED, "two": CACHED, "strid": CACHED},
        response_cache=CacheConfig(1 << 20),
    )
    yield st
    st.stop()


def stats(st: ServerThread, name: str) -> dict[str, Any]:
    s = httpclient.InferenceServerClient(st.http_url).get_inference_statistics(name)["model_stats"][0]
    return {
        "inference_count": s["inference_count"],
        "execution_count": s["execution_count"],
        **{k: s["inference_stats"][k]["count"] for k in ("success", "queue", "cache_hit", "cache_miss")},
    }


def rows(values: list[list[float]], client: Any = httpclient) -> Any:
    x = client.InferInput("x", [len(values), 16], "FP32")
    x.set_data_from_numpy(np.array(values, np.float32).repeat(16 // len(values[0]), axis=1))
    return x


def metric(st: ServerThread, name: str, **labels: str) -> float:
    import urllib.request

    text = urllib.request.urlopen(f"http://{st.http_url}/metrics").read().decode()
    wanted = ",".join(f'{k}="{v}"' for k, v in labels.items())
    m = re.search(rf"^{name}{{{wanted}}} (\S+)$", text, re.M) if labels else re.search(rf"^{name} (\S+)$", text, re.M)
    assert m, f"{name} {labels} not in /metrics"
    return float(m.group(1))


def test_a_repeated_request_is_answered_from_the_cache_and_counted_as_triton_counts_it(server: ServerThread) -> None:
    http = httpclient.InferenceServerClient(server.http_url)
    grpc = grpcclient.InferenceServerClient(server.grpc_url)
    assert http.get_model_config("mlp")["response_cache"] == {"enable": True}
    assert "response_cache" not in http.get_model_config("ident64")  # its config gives none: shown so, as Triton does
    before = stats(server, "mlp")
    first = http.infer("mlp", [rows([[1.0], [2.0]])]).as_numpy("y")
    again = http.infer("mlp", [rows([[1.0], [2.0]])]).as_numpy("y")
    over_grpc = grpc.infer("mlp", [rows([[1.0], [2.0]], grpcclient)]).as_numpy("y")  # one cache for both
    other = http.infer("mlp", [rows([[3.0], [2.0]])]).as_numpy("y")
    np.testing.assert_array_equal(first, again)
    np.testing.assert_array_equal(first, over_grpc)
    assert not np.array_equal(first[0], other[0]) and np.array_equal(first[1], other[1])
    after = stats(server, "mlp")
    change = {k: after[k] - before[k] for k in after}
    # two hits: successes, but no inference, execution or compute of their own; the queue count is the
    # successes', as Triton reports it (helper-76: hits counted inferences, and the queue count executions)
    assert change == {
        "inference_count": 4,
        "execution_count": 2,
        "success": 4,
        "queue": 4,
        "cache_hit": 2,
        "cache_miss": 2,
    }
    assert metric(server, "polystack_cache_hits_total", model="mlp", version="1") >= 2
    assert metric(server, "polystack_cache_misses_total", model="mlp", version="1") >= 2
    for way in ("hit", "miss"):  # the time spent in the cache, cumulative, as Triton's *_duration_per_model
        assert metric(server, f"polystack_cache_{way}_duration_seconds_total", model="mlp", version="1") > 0
    assert metric(server, "polystack_cache_entries") >= 2
    assert metric(server, "polystack_cache_size_bytes") == 1 << 20


def test_the_outputs_asked_for_are_part_of_the_key(server: ServerThread) -> None:
    client = httpclient.InferenceServerClient(server.http_url)
    x = httpclient.InferInput("x", [1, 4], "FP32")
    x.set_data_from_numpy(np.array([[1, 2, 3, 4]], np.float32))
    before = stats(server, "two")
    same = client.infer("two", [x], outputs=[httpclient.InferRequestedOutput("same")])
    neg = client.infer("two", [x], outputs=[httpclient.InferRequestedOutput("neg")])
    both = client.infer("two", [x])
    assert same.as_numpy("neg") is None and neg.as_numpy("same") is None
    assert neg.as_numpy("neg").tolist() == [[-1, -2, -3, -4]]
    assert both.as_numpy("same").tolist() == [[1, 2, 3, 4]] and both.as_numpy("neg").tolist() == [[-1, -2, -3, -4]]
    again = client.infer("two", [x], outputs=[httpclient.InferRequestedOutput("neg")])
    assert again.as_numpy("neg").tolist() == [[-1, -2, -3, -4]] and again.as_numpy("same") is None

    def order(*names: str) -> list[str]:
        asked = [httpclient.InferRequestedOutput(n) for n in names]
        return [o["name"] for o in client.infer("two", [x], outputs=asked).get_response()["outputs"]]

    # a hit answers in the order its request asks for, as the model does, whatever order the miss asked in
    assert order("neg", "same") == ["neg", "same"] and order("same", "neg") == ["same", "neg"]
    after = stats(server, "two")
    assert (after["cache_miss"] - before["cache_miss"], after["cache_hit"] - before["cache_hit"]) == (4, 2)


def test_a_model_reading_no_parameters_is_cached_by_its_inputs_alone(server: ServerThread) -> None:
    """An ONNX model never sees its request's parameters: requests that differ only there share an answer."""
    client = httpclient.InferenceServerClient(server.http_url)
    before = stats(server, "mlp")
    first = client.infer("mlp", [rows([[5.0]])], parameters={"tenant": "a"}).as_numpy("y")
    again = client.infer("mlp", [rows([[5.0]])], parameters={"tenant": "b"}).as_numpy("y")
    np.testing.assert_array_equal(first, again)
    after = stats(server, "mlp")
    assert (after["cache_miss"] - before["cache_miss"], after["cache_hit"] - before["cache_hit"]) == (1, 1)


def test_bytes_tensors_are_cached_by_their_elements(server: ServerThread) -> None:
    client = grpcclient.InferenceServerClient(server.grpc_url)

    def ask(*values: bytes) -> list[bytes]:
        s = grpcclient.InferInput("s", [1, 2], "BYTES")
        s.set_data_from_numpy(np.array([list(values)], dtype=object))
        return list(client.infer("strid", [s]).as_numpy("t").reshape(-1))

    before = stats(server, "strid")
    assert ask(b"ab", b"c") == [b"ab", b"c"]
    assert ask(b"a", b"bc") == [b"a", b"bc"]  # the same bytes joined: another request
    assert ask(b"ab", b"c") == [b"ab", b"c"]
    after = stats(server, "strid")
    assert (after["cache_miss"] - before["cache_miss"], after["cache_hit"] - before["cache_hit"]) == (2, 1)


def test_a_batched_model_answers_hits_without_queueing_them(server: ServerThread) -> None:
    client = httpclient.InferenceServerClient(server.http_url)
    assert client.get_model_config("mlpb")["dynamic_batching"]["max_queue_delay_microseconds"] == 2000
    expected = client.infer("mlp", [rows([[5.0]])]).as_numpy("y")
    before = stats(server, "mlpb")
    answers = [client.infer("mlpb", [rows([[5.0]])]).as_numpy("y") for _ in range(3)]
    for a in answers:
        np.testing.assert_allclose(a, expected, rtol=1e-6)
    after = stats(server, "mlpb")
    change = {k: after[k] - before[k] for k in after}
    assert change["cache_miss"] == 1 and change["cache_hit"] == 2 and change["queue"] == 3
    assert change["execution_count"] == 1 and change["success"] == 3


def test_a_reload_never_answers_from_what_the_instance_before_it_computed(server: ServerThread) -> None:
    client = httpclient.InferenceServerClient(server.http_url)
    client.infer("mlp", [rows([[7.0]])])
    client.infer("mlp", [rows([[7.0]])])
    entries = metric(server, "polystack_cache_entries")
    # a load with a config of its own replaces the instance, even with the same config
    client.load_model("mlp", config=json.dumps({"response_cache": {"enable": True}}))
    server.server.plane.model_loads.wait_retired()
    assert metric(server, "polystack_cache_entries") < entries  # the old instance's answers are gone
    before = stats(server, "mlp")  # a new instance: its statistics start again
    assert before["cache_hit"] == 0
    client.infer("mlp", [rows([[7.0]])])
    assert stats(server, "mlp")["cache_miss"] == 1
    # a load that turns the cache off: every request runs the model
    client.load_model("mlp", config=json.dumps({"response_cache": {"enable": False}}))
    assert client.get_model_config("mlp")["response_cache"] == {"enable": False}
    client.infer("mlp", [rows([[7.0]])])
    client.infer("mlp", [rows([[7.0]])])
    s = stats(server, "mlp")
    assert (s["cache_hit"], s["cache_miss"], s["execution_count"]) == (0, 0, 2)
    client.load_model("mlp", config=json.dumps({"response_cache": {"enable": True}}))


def test_a_config_enabling_the_cache_on_a_server_without_one_runs_every_request(
    model_store: tuple[Store, dict[str, ModelRecord]],
) -> None:
    store, _ = model_store
    with caught_logs("polystack.server") as logs:
        st = start(store, models=["mlp"], model_configs={"mlp": CACHED}, triton_metrics=True)
    try:
        warned = [r for r in logs if "no response cache" in r.getMessage()]
        assert warned and "--cache-config local,size=BYTES" in warned[0].getMessage()
        client = httpclient.InferenceServerClient(st.http_url)
        assert client.get_model_config("mlp")["response_cache"] == {"enable": True}  # as its config says
        for _ in range(2):
            client.infer("mlp", [mlp_ones(1)])
        s = stats(st, "mlp")
        assert (s["cache_hit"], s["cache_miss"], s["execution_count"]) == (0, 0, 2)
        # Triton's names show the model's cache series, at 0, as tritonserver 2.51 does (its metrics follow the
        # model's config; helper-280), and no server-wide cache gauges
        for family in ("nv_cache_num_hits_per_model", "nv_cache_num_misses_per_model"):
            assert metric(st, family, model="mlp", version="1") == 0
        with pytest.raises(AssertionError, match="not in /metrics"):
            metric(st, "nv_cache_num_entries")
    finally:
        st.stop()


def test_a_config_pbtxt_enables_the_cache(tmp_path: Path, model_store: tuple[Store, dict[str, ModelRecord]]) -> None:
    from polystack.server import config_text

    store, _ = model_store
    text = config_text.as_json("response_cache {\n  enable: true\n}\n")
    st = start(store, models=["mlp"], model_configs={"mlp": ConfigFile(text)}, response_cache=CacheConfig(4096))
    try:
        client = grpcclient.InferenceServerClient(st.grpc_url)
        assert client.get_model_config("mlp", as_json=True)["config"]["response_cache"] == {"enable": True}
        for _ in range(2):
            client.infer("mlp", [mlp_ones(1, grpcclient)])
        assert stats(st, "mlp")["cache_hit"] == 1
    finally:
        st.stop()


@pytest.mark.parametrize(
    ("flag", "says"),
    [("redis,host=localhost", "one cache implementation, local"), ("local,size=1GB", "whole number of bytes")],
)
def test_a_cache_config_polystack_cannot_use_exits_2_at_start(tmp_path: Path, flag: str, says: str) -> None:
    assert says in refused_at_start(tmp_path, ["--cache-config", flag])


def test_both_cache_flags_at_once_exit_2_at_start(tmp_path: Path) -> None:
    args = ["--cache-config", "local,size=4096", "--response-cache-byte-size", "4096"]
    assert "Please provide one or the other; --cache-config local,size=BYTES is the current one" in refused_at_start(
        tmp_path, args
    )


def test_tritons_deprecated_byte_size_flag_serves_a_cache_and_warns(
    model_store: tuple[Store, dict[str, ModelRecord]], tmp_path: Path
) -> None:
    """``serve --response-cache-byte-size BYTES``, as launch scripts written for older Tritons pass it, is
    ``--cache-config local,size=BYTES``: a repeated request is a hit; the log says which flag to use."""
    store, _ = model_store
    config = tmp_path / "mlp.json"
    config.write_text(CACHED.text)
    port, log = free_port(), tmp_path / "serve.log"
    args = ["mlp", "--grpc-port", "-1", "--model-config", f"mlp={config}", "--response-cache-byte-size", "1048576"]
    with cli_server(store.settings.home, args, port, log):
        client = httpclient.InferenceServerClient(f"127.0.0.1:{port}")
        for _ in range(2):
            client.infer("mlp", [mlp_ones(1, httpclient)])
        counts = client.get_inference_statistics("mlp")["model_stats"][0]["inference_stats"]
        assert (counts["cache_hit"]["count"], counts["cache_miss"]["count"]) == (1, 1)
    assert "give --cache-config local,size=BYTES instead" in log.read_text()


def test_a_hit_with_a_large_input_never_waits_for_the_inference_threads(
    model_store: tuple[Store, dict[str, ModelRecord]],
) -> None:
    """Its key is hashed off the event loop, on threads of the cache's own: with the one inference thread
    running a slow model for another request, the hit still answers at once. (Ordered, not timed: the
    hit must come back while the other request is still running.)"""
    store, records = model_store
    register_like(store, records["mlp"], "slow1000", tags={"delay_ms": "1000"})
    st = start(
        store, models=["slow1000"], workers=1, model_configs={"slow1000": CACHED}, response_cache=CacheConfig(8 << 20)
    )
    try:
        client = httpclient.InferenceServerClient(st.http_url)
        big = np.arange(8192 * 16, dtype=np.float32).reshape(8192, 16)  # 512 KiB: hashed off the loop
        x = httpclient.InferInput("x", list(big.shape), "FP32")
        x.set_data_from_numpy(big)
        client.infer("slow1000", [x])  # a miss: kept

        def other() -> None:  # holds the only inference thread for 1 s
            httpclient.InferenceServerClient(st.http_url).infer("slow1000", [mlp_ones(1)])

        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            running = pool.submit(other)
            deadline = time.monotonic() + 10
            while st.server.plane.in_flight.count < 1 and time.monotonic() < deadline:
                time.sleep(0.005)
            client.infer("slow1000", [x])
            assert not running.done()  # the hit came back while the other request still ran
            running.result()
        assert stats(st, "slow1000")["cache_hit"] == 1
    finally:
        st.stop()


def test_a_hit_counts_no_inference(server: ServerThread) -> None:
    """Without a batch dimension in the config (max_batch_size 0), Triton counts a request as one
    inference whatever its first dimension; a hit counts none (Triton's UpdateSuccessCacheHit)."""
    client = httpclient.InferenceServerClient(server.http_url)
    client.load_model("ident64", config=json.dumps({"max_batch_size": 0, "response_cache": {"enable": True}}))
    try:
        a = httpclient.InferInput("a", [3, 4], "INT64")
        a.set_data_from_numpy(np.arange(12, dtype=np.int64).reshape(3, 4))
        for _ in range(2):
            assert client.infer("ident64", [a]).as_numpy("b").tolist() == np.arange(12).reshape(3, 4).tolist()
        s = stats(server, "ident64")
        assert (s["cache_miss"], s["cache_hit"], s["inference_count"]) == (1, 1, 1)
    finally:
        client.load_model("ident64")


def test_tritons_server_wide_cache_gauges_count_the_whole_cache(model_store: tuple[Store, dict[str, ModelRecord]]) -> None:
    """helper-115 against tritonserver 2.51: with a cache, Triton shows eight label-less gauges of the whole cache from
    start-up (counter_latencies=false too); polystack showed only the per-model families."""
    store, _ = model_store
    st = start(
        store, models=["mlp"], model_configs={"mlp": CACHED}, response_cache=CacheConfig(1 << 20),
        triton_metrics=True, counter_latencies=False, grpc_port=None,
    )  # fmt: skip
    try:
        names = ("entries", "lookups", "hits", "misses", "evictions")
        assert {n: metric(st, f"nv_cache_num_{n}") for n in names} == dict.fromkeys(names, 0)
        assert metric(st, "nv_cache_util") == 0
        http = httpclient.InferenceServerClient(st.http_url)
        for values in ([[1.0]], [[1.0]], [[2.0]], [[1.0]]):  # A, A, B, A: two misses, two hits, two kept
            http.infer("mlp", [rows(values)])
        got = {n: metric(st, f"nv_cache_num_{n}") for n in names}
        assert got == {"entries": 2, "lookups": 4, "hits": 2, "misses": 2, "evictions": 0}, got
        assert 0 < metric(st, "nv_cache_util") < 0.01 and metric(st, "nv_cache_lookup_duration") >= 0
        assert metric(st, "nv_cache_insertion_duration") >= 0
    finally:
        st.stop()


PARAMETER_ECHO = """
import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):
        return [pb_utils.InferenceResponse([pb_utils.Tensor("seen", np.array([r.parameters().encode()], dtype=np.object_))])
                for r in requests]
"""


def test_a_python_model_reading_the_parameters_is_cached_by_them_too(tmp_path: Path) -> None:
    """A Python model reads its request's parameters (a client's, or headers forwarded as them): two requests that
    differ only there get their own answers (Triton's key is the inputs alone, and hands one the other's); the
    same parameters again are a hit, and an ONNX model, which reads none, is cached by its inputs alone."""
    from test_serve_python_models import python_folder

    repo = tmp_path / "models"
    python_folder(repo, "params", PARAMETER_ECHO,
        'backend: "python"\nmax_batch_size: 0\nresponse_cache { enable: true }\n'
        'input [ { name: "x", data_type: TYPE_FP32, dims: [ 1 ] } ]\n'
        'output [ { name: "seen", data_type: TYPE_STRING, dims: [ 1 ] } ]\n'
    )  # fmt: skip
    port = free_port()
    args = ["--model-repository", str(repo), "--allow-python-models", "--grpc-port", "-1",
            "--cache-config", "local,size=1048576", "--http-header-forward-pattern", "x-tenant"]  # fmt: skip
    with cli_server(tmp_path / "home", args, port, tmp_path / "log"):
        client = httpclient.InferenceServerClient(f"127.0.0.1:{port}")

        def seen(headers: dict[str, str] | None = None, **parameters: Any) -> dict[str, Any]:
            x = httpclient.InferInput("x", [1], "FP32")
            x.set_data_from_numpy(np.ones(1, np.float32))
            result = client.infer("params", [x], headers=dict(headers or {}), parameters=parameters or None)
            return {k.lower(): v for k, v in json.loads(result.as_numpy("seen")[0]).items()}  # the client's casing

        assert seen(tenant="a") == {"tenant": "a"}
        assert seen(tenant="b") == {"tenant": "b"}  # not the first one's answer
        assert seen() == {}
        assert seen({"X-Tenant": "a"}) == {"x-tenant": "a"}
        assert seen({"X-Tenant": "b"}) == {"x-tenant": "b"}
        assert seen(tenant="a") == {"tenant": "a"}  # a hit
        s = client.get_inference_statistics("params")["model_stats"][0]["inference_stats"]
        assert (s["cache_hit"]["count"], s["cache_miss"]["count"]) == (1, 5)


def test_a_python_models_answer_is_a_hit_whatever_deadline_priority_or_transport_asked_for_it(tmp_path: Path) -> None:
    """The parameters that schedule or carry a request never reach a model (``priority``, ``binary_data_output``;
    ``timeout`` only as its deadline): they were part of a Python model's key, so a client sending its time left
    at each call, a priority, or tritonclient's HTTP ``binary_data_output`` beside a gRPC client never hit
    (helper-264: each ran the model again, and under load was refused as the queue was full)."""
    from test_serve_python_models import python_folder

    repo = tmp_path / "models"
    python_folder(repo, "params", PARAMETER_ECHO,
        'backend: "python"\nmax_batch_size: 0\nresponse_cache { enable: true }\n'
        'dynamic_batching { priority_levels: 2 default_priority_level: 1 '
        'default_queue_policy { allow_timeout_override: true } }\n'
        'input [ { name: "x", data_type: TYPE_FP32, dims: [ 1 ] } ]\n'
        'output [ { name: "seen", data_type: TYPE_STRING, dims: [ 1 ] } ]\n'
    )  # fmt: skip
    http_port, grpc_port = free_port(), free_port()
    args = ["--model-repository", str(repo), "--allow-python-models", "--grpc-port", str(grpc_port),
            "--cache-config", "local,size=1048576"]  # fmt: skip
    with cli_server(tmp_path / "home", args, http_port, tmp_path / "log"):
        http = httpclient.InferenceServerClient(f"127.0.0.1:{http_port}")
        grpc = grpcclient.InferenceServerClient(f"127.0.0.1:{grpc_port}")

        def seen(client: Any, **asked: Any) -> dict[str, Any]:
            x = (httpclient if client is http else grpcclient).InferInput("x", [1], "FP32")
            x.set_data_from_numpy(np.ones(1, np.float32))
            return dict(json.loads(client.infer("params", [x], **asked).as_numpy("seen")[0]))

        assert seen(grpc, parameters={"tenant": "a"}) == {"tenant": "a"}  # the miss that fills the cache
        for client in (grpc, http):  # tritonclient's HTTP client asks for binary_data_output; gRPC's does not
            assert seen(client, parameters={"tenant": "a"}, priority=2) == {"tenant": "a"}
            for timeout in (5_000_000, 5_000_001):
                assert seen(client, parameters={"tenant": "a"}, timeout=timeout) == {"tenant": "a"}
        assert seen(http, parameters={"tenant": "b"}) == {"tenant": "b"}  # what the model reads still tells apart
        s = http.get_inference_statistics("params")["model_stats"][0]["inference_stats"]
        assert (s["cache_hit"]["count"], s["cache_miss"]["count"]) == (6, 2)


@contextmanager
def _python_model_cached(
    tmp_path: Path, name: str, source: str, config: str, **client_options: Any
) -> Iterator[httpclient.InferenceServerClient]:
    """Python model ``name`` (its model.py ``source``, and ``config`` after its backend and cache lines) served
    with a 1 MiB response cache; a client of it."""
    from test_serve_python_models import python_folder, served

    python_folder(tmp_path / "models", name, source, f'backend: "python"\nresponse_cache {{ enable: true }}\n{config}')
    with served(tmp_path, tmp_path / "models", "--cache-config", "local,size=1048576", **client_options) as client:
        yield client


DOUBLES_OR_RAISES = """
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):
        answers = []
        for request in requests:
            x = pb_utils.get_input_tensor_by_name(request, "x").as_numpy()
            if (x < 0).any():
                raise RuntimeError("negative input")
            answers.append(pb_utils.InferenceResponse([pb_utils.Tensor("y", x * 2)]))
        return answers
"""


def test_a_request_whose_run_fails_is_a_miss_and_one_refused_before_it_is_neither(tmp_path: Path) -> None:
    """Triton looks a request up in the cache once its checks passed, and counts the miss there whatever its run
    does then (helper-280: polystack counted no miss for a run that failed); a request its checks refuse never
    reaches the cache."""
    config = (
        'max_batch_size: 0\ninput [ { name: "x", data_type: TYPE_FP32, dims: [ 1 ] } ]\n'
        'output [ { name: "y", data_type: TYPE_FP32, dims: [ 1 ] } ]\n'
    )
    with _python_model_cached(tmp_path, "twice", DOUBLES_OR_RAISES, config) as client:

        def infer(values: list[float]) -> Any:
            x = httpclient.InferInput("x", [len(values)], "FP32")
            x.set_data_from_numpy(np.array(values, np.float32))
            return client.infer("twice", [x])

        def counts() -> tuple[int, int, int, int]:
            s = client.get_inference_statistics("twice")["model_stats"][0]["inference_stats"]
            return s["cache_hit"]["count"], s["cache_miss"]["count"], s["success"]["count"], s["fail"]["count"]

        for _ in range(2):
            with pytest.raises(InferenceServerException, match="negative input"):
                infer([-1.0])
        assert counts() == (0, 2, 0, 2)
        with pytest.raises(InferenceServerException, match="400"):
            infer([1.0, 2.0])  # two elements where its dims take one: refused before the cache
        assert counts()[:2] == (0, 2)
        assert infer([3.0]).as_numpy("y").tolist() == [6.0]
        assert infer([3.0]).as_numpy("y").tolist() == [6.0]
        assert counts()[:3] == (1, 3, 2)


SLOW_DOUBLES = """
import time

import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):
        time.sleep(0.6)
        return [
            pb_utils.InferenceResponse([pb_utils.Tensor("y", pb_utils.get_input_tensor_by_name(r, "x").as_numpy() * 2)])
            for r in requests
        ]
"""


def test_a_request_that_times_out_in_its_queue_is_no_miss(tmp_path: Path) -> None:
    """Triton counts a miss as a batch takes the request; one its queue's timeout rejects before that is a failure
    only (helper-281: the first version of the miss for a failed run counted it)."""
    config = (
        'max_batch_size: 1\n'
        'dynamic_batching { default_queue_policy { timeout_action: REJECT default_timeout_microseconds: 100000 } }\n'
        'input [ { name: "x", data_type: TYPE_FP32, dims: [ 1 ] } ]\n'
        'output [ { name: "y", data_type: TYPE_FP32, dims: [ 1 ] } ]\n'
    )
    with _python_model_cached(tmp_path, "slow", SLOW_DOUBLES, config, concurrency=2) as client:

        def sent(value: float) -> Any:
            x = httpclient.InferInput("x", [1, 1], "FP32")
            x.set_data_from_numpy(np.full((1, 1), value, np.float32))
            return client.async_infer("slow", [x])

        running = sent(1.0)
        time.sleep(0.15)  # the first runs for 0.6 s: the second waits past its 100 ms in the queue
        with pytest.raises(InferenceServerException, match="Request timeout expired"):
            sent(2.0).get_result()
        assert running.get_result().as_numpy("y").tolist() == [[2.0]]
        s = client.get_inference_statistics("slow")["model_stats"][0]["inference_stats"]
        assert (s["cache_miss"]["count"], s["success"]["count"], s["fail"]["count"]) == (1, 1, 1)
