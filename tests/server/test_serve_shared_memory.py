"""The system shared memory extension through the real tritonclient, over HTTP and gRPC.

The shared memory objects are made with Python's ``multiprocessing.shared_memory`` (POSIX
``shm_open``, as ``tritonclient.utils.shared_memory`` does), which the tests can unlink whatever
happens; one test goes Triton's examples' whole way, with tritonclient's own helpers (they import
``pkg_resources``: constraints.txt keeps setuptools below 81 for them). Registering, naming regions in
requests and reading answers all go through tritonclient's own HTTP and gRPC clients.
"""

from __future__ import annotations

import contextlib
import gc
import json
import os
import queue
import signal
import subprocess
import threading
from collections.abc import Callable, Iterator
from multiprocessing import shared_memory
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from conftest import Raw
from servekit import caught_logs, cli_server, free_port, refused_at_start, start
from tritonclient.utils import InferenceServerException

from polystack.batching import BatchPolicy
from polystack.errors import InvalidRequest
from polystack.protocol.wire import ShmRef
from polystack.server.app import ServerThread
from polystack.server.shared_memory import SharedMemoryRegions
from polystack.store import ModelRecord, Store

X = np.arange(32, dtype=np.float32).reshape(2, 16) / 10
pytestmark = pytest.mark.skipif(not os.path.isdir("/dev/shm"), reason="POSIX shared memory lives in /dev/shm (Linux)")


@pytest.fixture(autouse=True)
def _collect_here() -> Iterator[None]:
    """tritonclient's HTTP client sits in a reference cycle once a call of it failed; collected on
    another thread (the server's), it complains of being closed from the wrong one. Collect on this one."""
    gc.collect()
    yield
    gc.collect()


@pytest.fixture(scope="module")
def shm_server(model_store: tuple[Store, dict[str, ModelRecord]]) -> Iterator[ServerThread]:
    store, _ = model_store
    st = start(store, allow_shared_memory=True, models=["mlp", "two", "strid"])
    yield st
    st.stop()


class Objects:
    """POSIX shared memory objects made for one test, unlinked after it."""

    def __init__(self) -> None:
        self.made: list[shared_memory.SharedMemory] = []

    def make(self, size: int) -> tuple[str, shared_memory.SharedMemory]:
        name = f"polystack-test-{os.getpid()}-{len(self.made)}"
        obj = shared_memory.SharedMemory(name=name, create=True, size=size)
        self.made.append(obj)
        return "/" + name, obj

    def close(self) -> None:
        for obj in self.made:
            obj.close()
            obj.unlink()


@pytest.fixture
def objects() -> Iterator[Objects]:
    o = Objects()
    yield o
    o.close()


@pytest.fixture
def http(shm_server: ServerThread) -> Iterator[httpclient.InferenceServerClient]:
    client = httpclient.InferenceServerClient(shm_server.http_url)
    yield client
    client.unregister_system_shared_memory()
    client.close()


@pytest.fixture
def grpc(shm_server: ServerThread) -> Iterator[grpcclient.InferenceServerClient]:
    client = grpcclient.InferenceServerClient(shm_server.grpc_url)
    yield client
    client.unregister_system_shared_memory()
    client.close()


def _refusal(call: Callable[[], object], status: str | None = None) -> str:
    """The message of the error ``call`` must raise (with ``status``: its HTTP status or gRPC code's name)."""
    try:
        call()
    except InferenceServerException as e:
        if status is not None:
            assert str(e.status()) in (status, f"StatusCode.{status}"), (e.status(), e.message())
        return str(e.message())
    raise AssertionError("the call was not refused")


def _expected(client: httpclient.InferenceServerClient | grpcclient.InferenceServerClient, module: object) -> np.ndarray:
    """The mlp's answer for X sent in the request: what the shared memory path must reproduce."""
    i = module.InferInput("x", list(X.shape), "FP32")  # type: ignore[attr-defined]
    i.set_data_from_numpy(X)
    out = client.infer("mlp", [i]).as_numpy("y")
    assert out is not None
    return out


@pytest.mark.parametrize("transport", ["http", "grpc"])
def test_tritonclients_own_shared_memory_helpers_work_as_in_tritons_examples(
    transport: str, request: pytest.FixtureRequest
) -> None:
    """What simple_http_shm_client.py and simple_grpc_shm_client.py do, on the mlp: regions made, filled and
    read with tritonclient.utils.shared_memory (helper-92/-93: in this venv it could not be imported)."""
    import tritonclient.utils.shared_memory as shm

    client = request.getfixturevalue(transport)
    module = httpclient if transport == "http" else grpcclient
    key_in, key_out = f"/polystack-test-in-{os.getpid()}", f"/polystack-test-out-{os.getpid()}"
    handle_in = shm.create_shared_memory_region("input_data", key_in, X.nbytes)
    handle_out = shm.create_shared_memory_region("output_data", key_out, 32)
    try:
        shm.set_shared_memory_region(handle_in, [X])
        client.register_system_shared_memory("input_data", key_in, X.nbytes)
        client.register_system_shared_memory("output_data", key_out, 32)
        x = module.InferInput("x", list(X.shape), "FP32")
        x.set_shared_memory("input_data", X.nbytes)
        y = module.InferRequestedOutput("y") if transport == "grpc" else module.InferRequestedOutput("y", binary_data=True)
        y.set_shared_memory("output_data", 32)
        result = client.infer("mlp", [x], outputs=[y])
        out = result.get_output("y")
        shape = out["shape"] if transport == "http" else list(out.shape)
        got = shm.get_contents_as_numpy(handle_out, np.float32, shape)
        np.testing.assert_allclose(got, _expected(client, module), rtol=1e-6)
        client.unregister_system_shared_memory()
    finally:
        shm.destroy_shared_memory_region(handle_in)
        shm.destroy_shared_memory_region(handle_out)


@pytest.mark.parametrize("transport", ["http", "grpc"])
def test_inputs_and_outputs_pass_through_registered_regions(
    transport: str, request: pytest.FixtureRequest, objects: Objects
) -> None:
    client = request.getfixturevalue(transport)
    module = httpclient if transport == "http" else grpcclient
    in_key, in_obj = objects.make(X.nbytes)
    out_key, out_obj = objects.make(2 * 4 * 4)
    np.ndarray(X.shape, np.float32, in_obj.buf)[:] = X
    client.register_system_shared_memory("in", in_key, X.nbytes)
    client.register_system_shared_memory("out", out_key, 32)

    x = module.InferInput("x", list(X.shape), "FP32")
    x.set_shared_memory("in", X.nbytes)
    y = module.InferRequestedOutput("y")
    y.set_shared_memory("out", 32)
    result = client.infer("mlp", [x], outputs=[y])

    got = np.ndarray((2, 4), np.float32, out_obj.buf).copy()
    np.testing.assert_allclose(got, _expected(client, module), rtol=1e-6)
    out = result.get_output("y")
    # listed with no parameters, as tritonserver 2.51 lists an output written to shared memory (helper-116)
    if transport == "http":
        assert out == {"name": "y", "datatype": "FP32", "shape": [2, 4]}
    else:
        assert list(out.shape) == [2, 4] and out.datatype == "FP32" and not out.parameters


@pytest.mark.parametrize("transport", ["http", "grpc"])
def test_a_region_at_an_offset_of_its_object_and_a_tensor_at_an_offset_of_its_region(
    transport: str, request: pytest.FixtureRequest, objects: Objects
) -> None:
    client = request.getfixturevalue(transport)
    module = httpclient if transport == "http" else grpcclient
    key, obj = objects.make(4096)
    # region "r" is bytes 1024..3072 of the object; the input lies 256 bytes into it, the output 1024
    np.ndarray(X.shape, np.float32, obj.buf, offset=1024 + 256)[:] = X
    client.register_system_shared_memory("r", key, 2048, offset=1024)
    x = module.InferInput("x", list(X.shape), "FP32")
    x.set_shared_memory("r", X.nbytes, offset=256)
    y = module.InferRequestedOutput("y")
    y.set_shared_memory("r", 32, offset=1024)
    client.infer("mlp", [x], outputs=[y])
    got = np.ndarray((2, 4), np.float32, obj.buf, offset=2048).copy()
    np.testing.assert_allclose(got, _expected(client, module), rtol=1e-6)


def test_grpc_outputs_in_the_response_keep_their_places_beside_one_in_shared_memory(
    grpc: grpcclient.InferenceServerClient, objects: Objects
) -> None:
    """tritonclient pairs raw_output_contents with outputs by position: the shared memory one keeps its place, with an
    empty raw entry there, as tritonserver 2.51 answers (helper-116; polystack listed it last)."""
    v = np.array([[1.5, -2.0, 3.0, 0.25]], np.float32)
    key, obj = objects.make(16)
    grpc.register_system_shared_memory("same", key, 16)
    x = grpcclient.InferInput("x", [1, 4], "FP32")
    x.set_data_from_numpy(v)
    same = grpcclient.InferRequestedOutput("same")
    same.set_shared_memory("same", 16)
    result = grpc.infer("two", [x], outputs=[same, grpcclient.InferRequestedOutput("neg")])
    np.testing.assert_array_equal(result.as_numpy("neg"), -v)
    answer = result.get_response()
    assert [o.name for o in answer.outputs] == ["same", "neg"] and answer.raw_output_contents[0] == b""
    np.testing.assert_array_equal(np.ndarray((1, 4), np.float32, obj.buf), v)


def test_bytes_tensors_travel_length_prefixed(http: httpclient.InferenceServerClient, objects: Objects) -> None:
    words = [b"shared", b"memory"]
    raw = b"".join(len(w).to_bytes(4, "little") + w for w in words)
    key, obj = objects.make(64)
    obj.buf[: len(raw)] = raw
    http.register_system_shared_memory("s", key, 64)
    s = httpclient.InferInput("s", [1, 2], "BYTES")
    s.set_shared_memory("s", len(raw))
    t = httpclient.InferRequestedOutput("t")
    t.set_shared_memory("s", 64 - len(raw), offset=len(raw))
    result = http.infer("strid", [s], outputs=[t])
    assert result.get_output("t") == {"name": "t", "datatype": "BYTES", "shape": [1, 2]}
    assert bytes(obj.buf[len(raw) : 2 * len(raw)]) == raw


@pytest.mark.parametrize("transport", ["http", "grpc"])
def test_status_lists_regions_and_unregister_forgets_them(
    transport: str, request: pytest.FixtureRequest, objects: Objects
) -> None:
    client = request.getfixturevalue(transport)
    key, _ = objects.make(256)
    client.register_system_shared_memory("b", key, 64, offset=128)
    client.register_system_shared_memory("a", key, 128)
    status = client.get_system_shared_memory_status()
    if transport == "http":
        assert status == [  # by name, as Triton lists them (helper-92: in the order they were registered)
            {"name": "a", "key": key, "offset": 0, "byte_size": 128},
            {"name": "b", "key": key, "offset": 128, "byte_size": 64},
        ]
        assert client.get_system_shared_memory_status("b") == [{"name": "b", "key": key, "offset": 128, "byte_size": 64}]
    else:
        assert sorted(status.regions) == ["a", "b"]
        assert (status.regions["b"].key, status.regions["b"].offset, status.regions["b"].byte_size) == (key, 128, 64)
        assert list(client.get_system_shared_memory_status("b").regions) == ["b"]
    client.unregister_system_shared_memory("a")
    client.unregister_system_shared_memory("a")  # forgetting a name that is not registered is no error
    assert "Unable to find system shared memory region: 'a'" in _refusal(lambda: client.get_system_shared_memory_status("a"))
    client.unregister_system_shared_memory()
    left = client.get_system_shared_memory_status()
    assert (left if transport == "http" else list(left.regions)) == []


@pytest.mark.parametrize("transport", ["http", "grpc"])
def test_bad_registrations_are_refused_with_what_to_do(
    transport: str, request: pytest.FixtureRequest, objects: Objects, tmp_path: Path
) -> None:
    client = request.getfixturevalue(transport)
    key, _ = objects.make(64)
    link = f"/dev/shm/polystack-test-link-{os.getpid()}-{transport}"
    secret = tmp_path / "not-shared-memory.bin"
    secret.write_bytes(b"x" * 64)
    os.symlink(secret, link)  # a link in /dev/shm to a file elsewhere: never mapped, never written
    request.addfinalizer(lambda: os.unlink(link))
    cases = [
        (lambda: client.register_system_shared_memory("r", "/polystack-no-such-object", 64), "create it"),
        (lambda: client.register_system_shared_memory("r", "/" + os.path.basename(link), 8), "symbolic link"),
        (lambda: client.register_system_shared_memory("r", "/../etc/passwd", 64), "not a POSIX shared memory name"),
        (lambda: client.register_system_shared_memory("r", key, 65), "runs past the end"),
        (lambda: client.register_system_shared_memory("r", key, 0), "above 0"),
    ]
    for call, says in cases:
        message = _refusal(call)
        assert says in message, message
    # Triton's words and code for a key it cannot open: INTERNAL, 500 (tritonserver 2.51, helper-107), a key that is
    # not a POSIX name too (helper-116: polystack answered 400 in its own words)
    internal = "500" if transport == "http" else "INTERNAL"
    missing = _refusal(lambda: client.register_system_shared_memory("r", "/polystack-no-such-object", 64), internal)
    assert missing.startswith("Unable to open shared memory region: '/polystack-no-such-object'"), missing
    outside = _refusal(lambda: client.register_system_shared_memory("r", "/../etc/passwd", 64), internal)
    assert outside.startswith("Unable to open shared memory region: '/../etc/passwd'"), outside
    if transport == "grpc":  # no name and no key: Triton opens the key first (L0_grpc's python_unit_test,
        # helper-197: polystack's INVALID_ARGUMENT about the name failed it); over HTTP an empty name is no route
        nothing = _refusal(lambda: client.register_system_shared_memory("", "", 0), internal)
        assert nothing.startswith("Unable to open shared memory region: ''"), nothing
    # out of bounds and a byte size of 0 start with Triton's words (helper-116)
    for size in (65, 0):
        words = _refusal(lambda size=size: client.register_system_shared_memory("r", key, size))
        assert words.startswith("failed to register shared memory region 'r': invalid args"), words
    client.register_system_shared_memory("r", key, 64)
    # Triton's code and words: ALREADY_EXISTS, which its HTTP front end answers 400
    code = "400" if transport == "http" else "ALREADY_EXISTS"
    refused = _refusal(lambda: client.register_system_shared_memory("r", key, 32), code)
    assert "shared memory region 'r' already in manager" in refused and "unregister it first" in refused, refused


def test_register_answers_an_empty_body_and_names_a_missing_field_in_tritons_words(
    shm_server: ServerThread, objects: Objects
) -> None:
    """tritonserver 2.51's register and unregister answer no body, and a register request without key or byte_size
    is refused in its words (helper-116; polystack answered {} and refused in its own words)."""
    raw = Raw(shm_server.http_port)
    key, _ = objects.make(64)
    for body, field in (({"byte_size": 64}, "key"), ({"key": key}, "byte_size")):
        status, doc = raw.json("POST", "/v2/systemsharedmemory/region/m/register", body)
        assert status == 400 and doc["error"].startswith(f"Shared memory register request has no '{field}' field"), doc
    status, headers, data = raw.request(
        "POST", "/v2/systemsharedmemory/region/m/register", json.dumps({"key": key, "byte_size": 64}),
        {"Content-Type": "application/json"},
    )  # fmt: skip
    assert (status, data, headers["content-length"]) == (200, b"", "0")
    status, _, data = raw.request("POST", "/v2/systemsharedmemory/region/m/unregister")
    assert (status, data) == (200, b"")


@pytest.mark.parametrize("transport", ["http", "grpc"])
def test_bad_shared_memory_tensors_are_refused_and_the_server_keeps_serving(
    transport: str, request: pytest.FixtureRequest, objects: Objects
) -> None:
    client = request.getfixturevalue(transport)
    module = httpclient if transport == "http" else grpcclient
    key, obj = objects.make(128)
    np.ndarray(X.shape, np.float32, obj.buf)[:] = X
    client.register_system_shared_memory("in", key, 128)

    def infer(region: str, size: int, offset: int = 0, out_size: int | None = None, status: str | None = None) -> str:
        x = module.InferInput("x", list(X.shape), "FP32")
        x.set_shared_memory(region, size, offset=offset)
        outputs = None
        if out_size is not None:
            y = module.InferRequestedOutput("y")
            y.set_shared_memory("in", out_size)
            outputs = [y]
        return _refusal(lambda: client.infer("mlp", [x], outputs=outputs), status)

    # Triton's code and words (GetMemoryInfo: NOT_FOUND)
    not_found = "404" if transport == "http" else "NOT_FOUND"
    assert "Unable to find shared memory region: 'nope'" in infer("nope", X.nbytes, status=not_found)
    assert "Invalid offset + byte size for shared memory region: 'in'" in infer("in", X.nbytes, offset=100)
    # Triton's words first (helper-198's L0_shared_memory run: test_too_big_shm looks for them)
    assert infer("in", 64).startswith("input byte size mismatch for input 'x' for model 'mlp'. Expected 128, got 64: ")
    small = infer("in", X.nbytes, out_size=16, status="500" if transport == "http" else "INTERNAL")  # Triton's code
    assert small.startswith("shared memory size specified with the request for output 'y' (16 bytes) should be at "
                            "least 32 bytes to hold the results"), small  # fmt: skip
    np.testing.assert_allclose(_expected(client, module).shape, (2, 4))  # still serving


def test_an_answer_its_region_cannot_hold_is_a_failure_and_never_a_success_taken_back(
    http: httpclient.InferenceServerClient, objects: Objects
) -> None:
    """helper-272: the run's success was counted, then taken back when the write failed: a scrape between saw
    ``nv_inference_request_success`` go down (a counter's reset to Prometheus), and the success time kept the
    duration of a request no longer counted there."""
    key, obj = objects.make(128)
    np.ndarray(X.shape, np.float32, obj.buf)[:] = X
    http.register_system_shared_memory("in", key, 128)

    def figures() -> dict[str, int]:
        stats = http.get_inference_statistics("mlp")["model_stats"][0]["inference_stats"]
        return {f"{k}_{f}": int(stats[k][f]) for k in ("success", "fail") for f in ("count", "ns")}

    before = figures()
    x = httpclient.InferInput("x", list(X.shape), "FP32")
    x.set_shared_memory("in", X.nbytes)
    y = httpclient.InferRequestedOutput("y")
    y.set_shared_memory("in", 16)  # its answer takes 32 bytes
    with pytest.raises(InferenceServerException, match="should be at least 32 bytes"):
        http.infer("mlp", [x], outputs=[y])
    after = figures()
    assert after["success_count"] == before["success_count"] and after["success_ns"] == before["success_ns"]
    assert after["fail_count"] == before["fail_count"] + 1 and after["fail_ns"] > before["fail_ns"]


def test_a_region_too_small_for_an_answer_in_a_stream_is_a_final_refusal_not_the_servers_failure(
    grpc: grpcclient.InferenceServerClient, objects: Objects
) -> None:
    """helper-110's review: a stream logged Triton's INTERNAL for a region too small as the server's failure
    (HTTP and unary gRPC do not); it fails in the request's run, so its answer is marked final, as Triton's are."""
    key, obj = objects.make(128)
    np.ndarray(X.shape, np.float32, obj.buf)[:] = X
    grpc.register_system_shared_memory("in", key, 128)
    got: queue.Queue[tuple[object, object]] = queue.Queue()
    x = grpcclient.InferInput("x", list(X.shape), "FP32")
    x.set_shared_memory("in", X.nbytes)
    y = grpcclient.InferRequestedOutput("y")
    y.set_shared_memory("in", 16)
    with caught_logs("polystack") as records:
        grpc.start_stream(callback=lambda result, error: got.put((result, error)))
        try:
            grpc.async_stream_infer("mlp", [x], outputs=[y], request_id="small")
            _, error = got.get(timeout=10)
        finally:
            grpc.stop_stream()
    assert "should be at least 32 bytes to hold the results" in str(error)
    assert not [r for r in records if r.getMessage() == "request failed"]


def test_an_object_shrunk_after_registering_is_refused_not_a_crash(
    http: httpclient.InferenceServerClient, objects: Objects
) -> None:
    key, _ = objects.make(16384)
    http.register_system_shared_memory("r", key, 16384)
    os.truncate(f"/dev/shm{key}", 16)  # the client shrinks it: its pages past the first are gone
    x = httpclient.InferInput("x", list(X.shape), "FP32")
    x.set_shared_memory("r", X.nbytes, offset=8192)  # through a mapping of the old size: SIGBUS, all gone
    assert "ends before region 'r' does" in _refusal(lambda: http.infer("mlp", [x]))
    assert http.is_server_live()


def test_a_batching_server_writes_each_answer_into_its_own_region(
    model_store: tuple[Store, dict[str, ModelRecord]], objects: Objects
) -> None:
    store, _ = model_store
    st = start(
        store, allow_shared_memory=True, models=["mlp"], batching=BatchPolicy(max_queue_delay_ms=100, idle_gap_ms=0)
    )
    try:
        client = httpclient.InferenceServerClient(st.http_url, concurrency=8)
        rows = [np.full((1, 16), k, np.float32) for k in range(8)]
        outs = []
        for k, row in enumerate(rows):
            key, obj = objects.make(64 + 16)
            np.ndarray((1, 16), np.float32, obj.buf)[:] = row
            client.register_system_shared_memory(f"r{k}", key, 80)
            outs.append(obj)
        pending = []
        for k in range(8):
            x = httpclient.InferInput("x", [1, 16], "FP32")
            x.set_shared_memory(f"r{k}", 64)
            y = httpclient.InferRequestedOutput("y")
            y.set_shared_memory(f"r{k}", 16, offset=64)
            pending.append(client.async_infer("mlp", [x], outputs=[y]))
        for p in pending:
            p.get_result()
        batches = client.get_inference_statistics("mlp")["model_stats"][0]["batch_stats"]
        assert any(b["batch_size"] > 1 for b in batches), batches  # requests were merged
        plain = httpclient.InferInput("x", [8, 16], "FP32")
        plain.set_data_from_numpy(np.concatenate(rows))
        want = client.infer("mlp", [plain]).as_numpy("y")
        got = np.concatenate([np.ndarray((1, 4), np.float32, o.buf, offset=64) for o in outs])
        np.testing.assert_allclose(got, want, rtol=1e-5)
        client.unregister_system_shared_memory()
        client.close()
    finally:
        st.stop()


def test_the_extension_is_off_unless_asked_for(raw: Raw, server: ServerThread) -> None:
    """The module-wide server of the other tests runs without --allow-shared-memory."""
    status, doc = raw.json("GET", "/v2")
    assert "system_shared_memory" not in doc["extensions"]
    status, doc = raw.json("POST", "/v2/systemsharedmemory/region/r/register", {"key": "/k", "byte_size": 8})
    assert status == 403 and "--allow-shared-memory" in doc["error"]
    with grpcclient.InferenceServerClient(server.grpc_url) as client:
        assert "--allow-shared-memory" in _refusal(client.get_system_shared_memory_status)
        # a CUDA region's refusal points to system shared memory, and how to turn it on
        assert "(start the server with --allow-shared-memory)" in _refusal(
            lambda: client.register_cuda_shared_memory("r", b"\0" * 64, 0, 64)
        )


def test_the_extension_is_listed_when_on(
    http: httpclient.InferenceServerClient, grpc: grpcclient.InferenceServerClient
) -> None:
    assert "system_shared_memory" in http.get_server_metadata()["extensions"]
    assert "system_shared_memory" in grpc.get_server_metadata().extensions
    assert "cuda_shared_memory" not in http.get_server_metadata()["extensions"]


def test_cuda_shared_memory_answers_as_a_server_without_gpus_does(
    http: httpclient.InferenceServerClient, grpc: grpcclient.InferenceServerClient, shm_server: ServerThread
) -> None:
    """Triton's own shared memory examples unregister every CUDA region before they start, as a Triton
    built without GPUs allows: that succeeds, and none is ever registered. Registering one is refused,
    saying what to use instead."""
    for client in (http, grpc):
        client.unregister_cuda_shared_memory()
        client.unregister_cuda_shared_memory("never")
    assert http.get_cuda_shared_memory_status() == []
    assert len(grpc.get_cuda_shared_memory_status().regions) == 0
    for call in (
        lambda: http.get_cuda_shared_memory_status("never"),
        lambda: grpc.get_cuda_shared_memory_status("never"),
    ):
        assert "no CUDA shared memory region 'never' is registered" in _refusal(call)
    for call in (
        lambda: http.register_cuda_shared_memory("r", "AAAA", 0, 64),
        lambda: grpc.register_cuda_shared_memory("r", b"\0" * 64, 0, 64),
    ):
        message = _refusal(call)
        assert message.startswith("failed to register CUDA shared memory region: 'r'")
        # this server takes system shared memory already (helper-95: it was told to turn it on)
        assert "use system shared memory or send tensors in the request" in message, message
    raw = Raw(shm_server.http_port)
    status, doc = raw.json("POST", "/v2/cudasharedmemory/region/r/register", {"raw_handle": {"b64": "AAAA"}})
    assert status == 400 and doc["error"].startswith("failed to register")
    assert raw.json("GET", "/v2/cudasharedmemory/region/never/status")[0] == 404
    assert raw.json("POST", "/v2/cudasharedmemory/unregister") == (200, None)  # an empty body, as Triton's
    assert raw.json("GET", "/v2/cudasharedmemory/status") == (200, [])
    assert raw.json("GET", "/v2/cudasharedmemory/region/r")[0] == 404  # not a route
    assert raw.json("DELETE", "/v2/cudasharedmemory/unregister")[0] == 405


def test_regions_are_limited_to_a_share_of_the_open_file_limit(objects: Objects) -> None:
    """Each region holds a descriptor: 20,000 registrations took every descriptor the server had, and it
    stopped accepting connections. Past the limit a registration is refused, saying what to do."""
    import resource

    soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    assert SharedMemoryRegions().max_regions == max(16, (65536 if soft == resource.RLIM_INFINITY else soft) // 4)
    regions = SharedMemoryRegions(max_regions=3)
    key, _ = objects.make(64)
    for i in range(3):
        regions.register(f"r{i}", key, 0, 64)
    with pytest.raises(InvalidRequest, match="3 system shared memory regions are registered, the most"):
        regions.register("r3", key, 0, 64)
    assert _fds_on(key) >= 3 and len(regions.status()) == 3
    regions.unregister("r0")
    regions.register("r3", key, 0, 64)  # room again
    regions.close()


def test_the_registry_serves_reads_while_other_threads_register_and_unregister(objects: Objects) -> None:
    """Both transports call it from the event loop; the lock is for any other caller (a thread pool)."""
    regions = SharedMemoryRegions()
    key, obj = objects.make(X.nbytes)
    np.ndarray(X.shape, np.float32, obj.buf)[:] = X
    ours = _fds_on(key)  # this test's own (the object, and its mapping's copy)
    regions.register("fixed", key, 0, X.nbytes)
    assert _fds_on(key) == ours + 1
    errors: list[BaseException] = []

    def churn(k: int) -> None:
        try:
            for i in range(200):
                regions.register(f"churn{k}-{i}", key, 0, X.nbytes)
                regions.unregister(f"churn{k}-{i}")
        except BaseException as e:
            errors.append(e)

    threads = [threading.Thread(target=churn, args=(k,)) for k in range(3)]
    for t in threads:
        t.start()
    for _ in range(500):
        assert regions.read(ShmRef("fixed", X.nbytes), "input 'x'") == X.tobytes()
    for t in threads:
        t.join(30)
    assert not errors and [r["name"] for r in regions.status()] == ["fixed"]
    regions.close()
    assert _fds_on(key) == ours  # every registration's descriptor was closed


def _fds_on(key: str) -> int:
    """This process's open descriptors on shared memory object ``key``."""
    target = f"/dev/shm{key}"
    count = 0
    for fd in os.listdir("/proc/self/fd"):
        with contextlib.suppress(OSError):  # closed meanwhile
            count += os.readlink(f"/proc/self/fd/{fd}") == target
    return count


def test_a_write_into_a_full_tmpfs_is_an_error_not_a_crash(tmp_path: Path) -> None:
    """Objects are sparse: a write may need pages /dev/shm no longer has. Through a mapping, that is a
    SIGBUS that kills the server; a write system call fails with ENOSPC, reported here."""
    mount = tmp_path / "tmpfs"
    mount.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(mount)], capture_output=True).returncode:
        pytest.skip("needs a small tmpfs (mount as root) to fill")
    try:
        (mount / "filler").write_bytes(b"\1" * (200 << 10))
        with open(mount / "sparse", "wb") as f:
            f.truncate(1 << 20)  # 1 MiB claimed, nothing allocated: what shm_open + ftruncate makes
        regions = SharedMemoryRegions(shm_dir=mount)
        regions.register("big", "/sparse", 0, 1 << 20)
        with pytest.raises(InvalidRequest, match="free some of /dev/shm"):
            regions.write(ShmRef("big", 1 << 20), b"\2" * (512 << 10), "output 'y'")
        regions.close()
    finally:
        subprocess.run(["umount", str(mount)], check=True)


@pytest.mark.parametrize("flag", ["--allow-shared-memory", "--allow-client-shm=true"])
def test_polystack_serve_takes_shared_memory_when_told(
    model_store: tuple[Store, dict[str, ModelRecord]], tmp_path: Path, objects: Objects, flag: str
) -> None:
    """The command a user runs: ``polystack serve --allow-shared-memory``, in its own process; or the flag
    tritonserver takes since 26.04 (helper-92: launch scripts written for Triton pass it, and it was refused)."""
    store, _ = model_store
    port = free_port()
    args = ["mlp", "--grpc-port", "-1", flag]
    with cli_server(store.home, args, port, tmp_path / "serve.log") as proc:
        client = httpclient.InferenceServerClient(f"127.0.0.1:{port}")
        key, obj = objects.make(X.nbytes + 32)
        np.ndarray(X.shape, np.float32, obj.buf)[:] = X
        client.register_system_shared_memory("r", key, X.nbytes + 32)
        x = httpclient.InferInput("x", list(X.shape), "FP32")
        x.set_shared_memory("r", X.nbytes)
        y = httpclient.InferRequestedOutput("y")
        y.set_shared_memory("r", 32, offset=X.nbytes)
        client.infer("mlp", [x], outputs=[y])
        got = np.ndarray((2, 4), np.float32, obj.buf, offset=X.nbytes).copy()
        np.testing.assert_allclose(got, _expected(client, httpclient), rtol=1e-6)
        client.unregister_system_shared_memory()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0


def test_shared_memory_is_refused_on_ray_with_one_line(tmp_path: Path) -> None:
    assert "--engine local" in refused_at_start(tmp_path, ["--allow-shared-memory", "--engine", "ray"])
    assert "--engine local" in refused_at_start(tmp_path, ["--allow-client-shm", "1", "--engine", "ray"])


def test_tritons_shared_memory_flag_takes_a_boolean_and_must_agree(tmp_path: Path) -> None:
    assert "--allow-client-shm takes 1 or 0 (true or false), not 'maybe'" in refused_at_start(
        tmp_path, ["--allow-client-shm=maybe"]
    )
    assert "disagree; give one of them" in refused_at_start(
        tmp_path, ["--allow-shared-memory", "--allow-client-shm=false"]
    )


def test_an_output_region_gone_before_the_model_runs_is_refused_and_one_in_use_cannot_be_unregistered(
    model_store: tuple[Store, dict[str, ModelRecord]], objects: Objects
) -> None:
    """Unregistered before: refused before the model runs (it ran for an answer nobody could take). While the
    model runs, the request holds its output region, and unregistering it is refused, as tritonserver 2.51 refuses
    it (500, "Cannot unregister shared memory region 'out', it is currently in use."; helper-116: polystack let it
    go after the answer); unregistering every region unregisters the others and names it. The answer lands in the
    memory registered when the request came, and the region can be unregistered once it is written."""
    from servekit import register_like

    store, records = model_store
    register_like(store, records["mlp"], "slow300", tags={"delay_ms": "300"})
    st = start(store, allow_shared_memory=True, models=["slow300"], grpc_port=None)
    try:
        client = httpclient.InferenceServerClient(st.http_url)
        out_key, out = objects.make(64)
        other_key, other = objects.make(64)
        out.buf[:64] = b"\xff" * 64
        other.buf[:64] = b"\xee" * 64
        x = httpclient.InferInput("x", list(X.shape), "FP32")
        x.set_data_from_numpy(X)
        y = httpclient.InferRequestedOutput("y")
        y.set_shared_memory("out", 32)

        def counts() -> tuple[int, int, int]:
            s = client.get_inference_statistics("slow300")["model_stats"][0]
            return s["inference_stats"]["success"]["count"], s["inference_stats"]["fail"]["count"], s["execution_count"]

        assert "not registered" in _refusal(lambda: client.infer("slow300", [x], outputs=[y]))
        assert counts() == (0, 1, 0)  # refused before the model ran: a failure, as /metrics counts it, and no run
        client.register_system_shared_memory("out", out_key, 64)
        client.register_system_shared_memory("spare", other_key, 64)
        # on connections of their own (tritonclient's waits for the infer), while the model runs
        raw, seen = Raw(st.http_port), {}

        def meanwhile() -> None:
            seen["unregister"] = raw.json("POST", "/v2/systemsharedmemory/region/out/unregister")
            seen["register"] = raw.json(
                "POST", "/v2/systemsharedmemory/region/out/register", {"key": other_key, "offset": 0, "byte_size": 64}
            )
            seen["all"] = raw.json("POST", "/v2/systemsharedmemory/unregister")
            seen["status"] = raw.json("GET", "/v2/systemsharedmemory/status")

        timer = threading.Timer(0.1, meanwhile)
        timer.start()
        answer = client.infer("slow300", [x], outputs=[y])
        timer.join(5)
        assert answer.get_output("y") == {"name": "y", "datatype": "FP32", "shape": [2, 4]}
        status, doc = seen["unregister"]
        assert status == 500 and doc["error"].startswith(
            "Cannot unregister shared memory region 'out', it is currently in use."
        ), doc
        status, doc = seen["register"]
        assert status == 400 and "already in manager" in doc["error"], doc
        status, doc = seen["all"]
        assert status == 500 and doc["error"].startswith(
            "Failed to unregister the following system shared memory regions: out ,"
        ), doc
        assert [r["name"] for r in seen["status"][1]] == ["out"], seen["status"]  # "spare" went, "out" stayed
        assert bytes(out.buf[:32]) == bytes(32) and bytes(out.buf[32:64]) == b"\xff" * 32  # the null model's zeros
        assert bytes(other.buf[:64]) == b"\xee" * 64
        assert counts() == (1, 1, 1)
        client.unregister_system_shared_memory("out")  # not in use once its answer is written
        assert client.get_system_shared_memory_status() == []
    finally:
        st.stop()
