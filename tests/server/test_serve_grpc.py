"""tritonclient's gRPC clients (sync and asyncio) against a real server, and gRPC error codes."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import queue
import threading
import time
from collections.abc import Iterator
from typing import Any

import grpc
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.grpc.aio as aiogrpcclient
import tritonclient.http as httpclient
from conftest import Raw
from grpc_health.v1 import health_pb2, health_pb2_grpc
from servekit import caught_logs, failing_at_run, register_like, start, test_spec_for, threads_calling
from tritonclient.utils import InferenceServerException

from polystack.engine import Engine
from polystack.protocol import grpc_codec
from polystack.protocol.grpc_gen import inference_pb2 as pb
from polystack.protocol.grpc_gen import inference_pb2_grpc as pb_grpc
from polystack.server.app import ServerThread
from polystack.server.dataplane import DataPlane
from polystack.server.grpc import HealthServicer
from polystack.store import ModelRecord, Store

CASES = [
    ("ident64", "a", "b", "INT64", np.array([[1, -2, 3, 2**40]], dtype=np.int64)),
    ("notb", "p", "q", "BOOL", np.array([[True, False, True]])),
    ("strid", "s", "t", "BYTES", np.array([[b"hello", "ünï".encode()], [b"", b"x"]], dtype=object)),
    ("mlp", "x", "y", "FP32", np.full((2, 16), 0.25, np.float32)),
]


@pytest.fixture(scope="module")
def client(server: ServerThread) -> grpcclient.InferenceServerClient:
    return grpcclient.InferenceServerClient(server.grpc_url)


@pytest.mark.parametrize(("model", "inp", "out", "dtype", "arr"), CASES, ids=[c[0] for c in CASES])
def test_infer_every_datatype(
    client: grpcclient.InferenceServerClient, server: ServerThread, model: str, inp: str, out: str, dtype: str, arr: np.ndarray
) -> None:
    i = grpcclient.InferInput(inp, list(arr.shape), dtype)
    i.set_data_from_numpy(arr)
    result = client.infer(model, [i], outputs=[grpcclient.InferRequestedOutput(out)], request_id="g-1")
    got = result.as_numpy(out)
    assert result.get_response().id == "g-1"
    if model == "notb":
        np.testing.assert_array_equal(got, ~arr)
    elif model == "mlp":
        np.testing.assert_allclose(got, server.server.engine.infer("mlp", {"x": arr})["y"], rtol=1e-6)
    else:
        np.testing.assert_array_equal(got, arr)


def test_requested_outputs(client: grpcclient.InferenceServerClient) -> None:
    x = np.arange(4, dtype=np.float32).reshape(1, 4)
    i = grpcclient.InferInput("x", [1, 4], "FP32")
    i.set_data_from_numpy(x)
    both = client.infer("two", [i])
    assert {o.name for o in both.get_response().outputs} == {"same", "neg"}
    one = client.infer("two", [i], outputs=[grpcclient.InferRequestedOutput("neg")])
    assert [o.name for o in one.get_response().outputs] == ["neg"]
    np.testing.assert_array_equal(one.as_numpy("neg"), -x)


def test_health_metadata_config_statistics(client: grpcclient.InferenceServerClient) -> None:
    assert client.is_server_live() and client.is_server_ready()
    assert client.is_model_ready("mlp") and client.is_model_ready("mlp", "1") and not client.is_model_ready("nope")
    md = client.get_model_metadata("mlp", as_json=True)
    assert md["name"] == "mlp" and md["platform"] == "onnxruntime_onnx"
    assert md["inputs"] == [{"name": "x", "datatype": "FP32", "shape": ["-1", "16"]}]
    config = client.get_model_config("mlp", as_json=True)["config"]
    assert config["max_batch_size"] == 64
    assert config["input"] == [{"name": "x", "data_type": "TYPE_FP32", "dims": ["16"]}]
    server_md = client.get_server_metadata(as_json=True)
    assert server_md["name"] == "polystack" and "binary_tensor_data" in server_md["extensions"]
    i = grpcclient.InferInput("p", [1, 3], "BOOL")
    i.set_data_from_numpy(np.zeros((1, 3), bool))
    client.infer("notb", [i])
    stats = client.get_inference_statistics("notb", as_json=True)["model_stats"][0]
    assert stats["name"] == "notb" and int(stats["inference_stats"]["success"]["count"]) >= 1
    phases = client.get_inference_statistics("notb").model_stats[0].inference_stats
    assert phases.compute_input.count == phases.compute_infer.count == phases.compute_output.count >= 1
    assert phases.cache_hit.count == phases.cache_miss.count == 0


def test_typed_contents_are_accepted(server: ServerThread) -> None:
    with grpc.insecure_channel(server.grpc_url) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        req = pb.ModelInferRequest(model_name="ident64")
        t = req.inputs.add(name="a", datatype="INT64", shape=[1, 4])
        t.contents.int64_contents.extend([5, 6, 7, 8])
        resp = stub.ModelInfer(req)
        assert np.frombuffer(resp.raw_output_contents[0], "<i8").tolist() == [5, 6, 7, 8]
        req = pb.ModelInferRequest(model_name="ident64")
        t = req.inputs.add(name="a", datatype="INT64", shape=[1, 4])
        t.contents.int64_contents.extend([5, 6, 7])
        with pytest.raises(grpc.RpcError) as err:
            stub.ModelInfer(req)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "4 elements" in err.value.details()


def _status(exc: InferenceServerException) -> str:
    return str(exc.status())


def test_errors_map_to_grpc_codes_and_server_keeps_serving(client: grpcclient.InferenceServerClient, raw: Raw) -> None:
    i = grpcclient.InferInput("x", [1, 16], "FP32")
    i.set_data_from_numpy(np.zeros((1, 16), np.float32))
    with pytest.raises(InferenceServerException) as e:
        client.infer("nope", [i])
    assert "NOT_FOUND" in _status(e.value)
    with pytest.raises(InferenceServerException) as e:
        client.infer("mlp", [i], model_version="7")
    assert "NOT_FOUND" in _status(e.value)
    wrong = grpcclient.InferInput("x", [1, 16], "INT64")
    wrong.set_data_from_numpy(np.zeros((1, 16), np.int64))
    with pytest.raises(InferenceServerException) as e:
        client.infer("mlp", [wrong])
    assert "INVALID_ARGUMENT" in _status(e.value) and "FP32" in e.value.message()
    big = grpcclient.InferInput("x", [65, 16], "FP32")
    big.set_data_from_numpy(np.zeros((65, 16), np.float32))
    with pytest.raises(InferenceServerException) as e:
        client.infer("mlp", [big])
    assert "INVALID_ARGUMENT" in _status(e.value) and "65" in e.value.message()
    assert {"name": "mlp", "version": "1", "state": "READY"} in client.get_model_repository_index(as_json=True)["models"]
    with pytest.raises(InferenceServerException) as e:  # Triton's code and words without explicit model control
        client.unload_model("mlp")
    assert "UNAVAILABLE" in _status(e.value) and "explicit model load / unload is not allowed" in e.value.message()
    assert client.infer("mlp", [i]).as_numpy("y").shape == (1, 4)
    raw.infer_ok()


def _refused(stub: pb_grpc.GRPCInferenceServiceStub, req: pb.ModelInferRequest, *words: str) -> None:
    with pytest.raises(grpc.RpcError) as err:
        stub.ModelInfer(req)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT, err.value.details()
    for w in words:
        assert w in err.value.details(), err.value.details()


def test_typed_integers_that_do_not_fit_the_datatype_are_refused_not_wrapped(server: ServerThread) -> None:
    with grpc.insecure_channel(server.grpc_url) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        req = pb.ModelInferRequest(model_name="ident8")
        req.inputs.add(name="a", datatype="INT8", shape=[1, 2]).contents.int_contents.extend([200, -129])
        _refused(stub, req, "INT8", "-129", "200")
        req = pb.ModelInferRequest(model_name="ident8")
        req.inputs.add(name="a", datatype="INT8", shape=[1, 2]).contents.int_contents.extend([127, -128])
        assert np.frombuffer(stub.ModelInfer(req).raw_output_contents[0], np.int8).tolist() == [127, -128]


def test_a_datatype_spelled_in_lower_case_is_refused(server: ServerThread) -> None:
    with grpc.insecure_channel(server.grpc_url) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        req = pb.ModelInferRequest(model_name="ident64", raw_input_contents=[np.arange(4, dtype="<i8").tobytes()])
        req.inputs.add(name="a", datatype="int64", shape=[1, 4])
        _refused(stub, req, "'int64' is spelled 'INT64'")


def test_typed_contents_in_a_second_field_or_the_wrong_one_are_refused_in_tritons_words(server: ServerThread) -> None:
    """The data in one field, the input's datatype's (helper-87: a second field was dropped unread, and the
    wrong field alone was refused as holding 0 elements)."""
    with grpc.insecure_channel(server.grpc_url) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        req = pb.ModelInferRequest(model_name="ident64")
        t = req.inputs.add(name="a", datatype="INT64", shape=[1, 4])
        t.contents.int64_contents.extend([5, 6, 7, 8])
        t.contents.fp32_contents.extend([1, 2, 3, 4])
        _refused(stub, req, "unexpected explicit tensor data for input tensor 'a' for model 'ident64', binary data was already supplied")
        req = pb.ModelInferRequest(model_name="ident64")
        req.inputs.add(name="a", datatype="INT64", shape=[1, 4]).contents.int_contents.extend([5, 6, 7, 8])
        _refused(stub, req, "for model 'ident64' of type 'INT32', expected datatype 'INT64'", "int64_contents")
        req = pb.ModelInferRequest(model_name="ident8")  # int_contents carries INT8
        req.inputs.add(name="a", datatype="INT8", shape=[1, 2]).contents.int_contents.extend([1, 2])
        assert np.frombuffer(stub.ModelInfer(req).raw_output_contents[0], np.int8).tolist() == [1, 2]


def test_statistics_of_a_model_or_version_not_served_are_refused_in_tritons_words(server: ServerThread) -> None:
    """Triton answers INVALID_ARGUMENT (HTTP 400): only ready models have statistics (helper-87: NOT_FOUND, 404)."""
    grpc_client = grpcclient.InferenceServerClient(server.grpc_url)
    http_client = httpclient.InferenceServerClient(server.http_url)
    for name, version, says in (
        ("nope", "", "requested model 'nope' is not available"),
        ("mlp", "7", "requested model version is not available for model 'mlp'"),
    ):
        with pytest.raises(InferenceServerException) as e:
            grpc_client.get_inference_statistics(name, version)
        assert "INVALID_ARGUMENT" in _status(e.value) and says in e.value.message()
        with pytest.raises(InferenceServerException) as e:
            http_client.get_inference_statistics(name, version)
        assert e.value.status() == "400" and says in e.value.message()
    with grpc.insecure_channel(server.grpc_url) as channel:  # a version that is no number, for every model
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        with pytest.raises(grpc.RpcError) as err:
            stub.ModelStatistics(pb.ModelStatisticsRequest(version="abc"))
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "version string 'abc'" in err.value.details()
        # a number is every model's, whatever it is, 0 too, as in Triton (helper-88: 0 was NOT_FOUND)
        assert len(stub.ModelStatistics(pb.ModelStatisticsRequest(version="0")).model_stats) > 1
    assert grpc_client.get_inference_statistics("mlp", "1", as_json=True)["model_stats"][0]["name"] == "mlp"


def test_raw_and_typed_contents_together_are_refused(server: ServerThread) -> None:
    with grpc.insecure_channel(server.grpc_url) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        req = pb.ModelInferRequest(model_name="ident64", raw_input_contents=[np.arange(4, dtype="<i8").tobytes()])
        req.inputs.add(name="a", datatype="INT64", shape=[1, 4]).contents.int64_contents.extend([9, 9, 9, 9])
        # Triton's words, which its explicit-content example looks for
        _refused(stub, req, "contents field must not be specified when using raw_input_contents for 'a' for model 'ident64'")


def test_an_empty_contents_beside_raw_contents_is_no_data(server: ServerThread) -> None:
    """MLServer's gRPC converter (``ModelInferRequestConverter.from_types(..., use_raw=True)``) sets an empty
    ``contents`` on each input beside its raw data (helper-228): no values in it, so the raw data is the input's,
    where Triton refuses it as contents sent both ways."""
    x = np.arange(4, dtype="<i8")
    with grpc.insecure_channel(server.grpc_url) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        req = pb.ModelInferRequest(model_name="ident64", raw_input_contents=[x.tobytes()])
        req.inputs.add(name="a", datatype="INT64", shape=[1, 4]).contents.SetInParent()
        assert req.inputs[0].HasField("contents")
        answer = stub.ModelInfer(req)
        assert np.frombuffer(answer.raw_output_contents[0], "<i8").tolist() == x.tolist()


def test_raw_contents_past_the_last_inputs_are_left_unread_and_too_few_are_refused(server: ServerThread) -> None:
    """tritonserver 2.51 answers a request with more raw_input_contents than inputs, reading one per input
    (helper-107), where polystack refused it."""
    x = np.arange(4, dtype="<i8")
    with grpc.insecure_channel(server.grpc_url) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        req = pb.ModelInferRequest(model_name="ident64", raw_input_contents=[x.tobytes(), b"\xff" * 32])
        req.inputs.add(name="a", datatype="INT64", shape=[1, 4])
        answer = stub.ModelInfer(req)
        assert np.frombuffer(answer.raw_output_contents[0], "<i8").tolist() == x.tolist()
        req = pb.ModelInferRequest(model_name="ident64", raw_input_contents=[x.tobytes()])
        req.inputs.add(name="a", datatype="INT64", shape=[1, 4])
        req.inputs.add(name="b", datatype="INT64", shape=[1, 4])
        _refused(stub, req, "2 inputs outside shared memory but 1 raw_input_contents")


def test_unknown_models_and_malformed_versions_say_so_in_tritons_words(server: ServerThread) -> None:
    with grpc.insecure_channel(server.grpc_url) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        req = pb.ModelInferRequest(model_name="ident64", model_version="wrong_specification")
        req.inputs.add(name="a", datatype="INT64", shape=[1, 4]).contents.int64_contents.extend([9, 9, 9, 9])
        _refused(stub, req, "failed to get model version from specified version string 'wrong_specification'")
    with grpcclient.InferenceServerClient(server.grpc_url) as client:
        with pytest.raises(InferenceServerException) as e:
            client.get_model_metadata("wrong_model_name")
        assert "NOT_FOUND" in _status(e.value)
        assert e.value.message().startswith("Request for unknown model: 'wrong_model_name' is not found")


def test_a_request_for_an_unknown_model_is_not_found_whatever_its_tensors(server: ServerThread) -> None:
    # Triton looks the model up before it reads the inputs
    with grpc.insecure_channel(server.grpc_url) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        for name, version, words in (("nope", "", "'nope' is not found"), ("mlp", "9", "version 9")):
            req = pb.ModelInferRequest(model_name=name, model_version=version, raw_input_contents=[b"\0" * 5])
            req.inputs.add(name="x", datatype="FP32", shape=[1, 16])
            with pytest.raises(grpc.RpcError) as err:
                stub.ModelInfer(req)
            assert err.value.code() == grpc.StatusCode.NOT_FOUND, err.value.details()
            assert words in err.value.details()


def test_shared_memory_tensors_are_refused_with_a_clear_error(server: ServerThread) -> None:
    i = grpcclient.InferInput("x", [1, 16], "FP32")
    i.set_shared_memory("region0", 64)
    with pytest.raises(InferenceServerException) as e:
        grpcclient.InferenceServerClient(server.grpc_url).infer("mlp", [i])
    assert "INVALID_ARGUMENT" in _status(e.value) and "shared memory" in e.value.message()


def test_raw_bool_bytes_other_than_one_are_true(server: ServerThread) -> None:
    with grpc.insecure_channel(server.grpc_url) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        req = pb.ModelInferRequest(model_name="notb", raw_input_contents=[b"\x00\x02\xff"])
        req.inputs.add(name="p", datatype="BOOL", shape=[1, 3])
        assert list(stub.ModelInfer(req).raw_output_contents[0]) == [1, 0, 0]


def test_huge_version_numbers_are_not_found(client: grpcclient.InferenceServerClient) -> None:
    assert not client.is_model_ready("mlp", "99999999999999999999999")
    with pytest.raises(InferenceServerException) as e:  # Triton's ModelReady: not a version, not "not ready"
        client.is_model_ready("mlp", "x")
    assert "INVALID_ARGUMENT" in _status(e.value) and "failed to get model version" in e.value.message()
    with pytest.raises(InferenceServerException) as e:
        client.get_model_metadata("mlp", "99999999999999999999999")
    assert "NOT_FOUND" in _status(e.value) and "version 99999999999999999999999 is not found" in e.value.message()


def test_raw_contents_not_matching_shape_is_invalid_argument(server: ServerThread) -> None:
    with grpc.insecure_channel(server.grpc_url) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        for shape, raw_bytes, words in [
            # Triton's words first (L0_shared_memory's test_too_big_shm looks for them, helper-198)
            ([1, 16], b"\0" * 60, "input byte size mismatch for input 'x' for model 'mlp'. Expected 64, got 60: "),
            ([-1, 16], b"\0" * 64, "negative"),
            ([2**40, 2**40], b"\0" * 64, "over the limit"),
            ([0, 2**62], b"", "over the limit"),
        ]:
            req = pb.ModelInferRequest(model_name="mlp", raw_input_contents=[raw_bytes])
            req.inputs.add(name="x", datatype="FP32", shape=shape)
            with pytest.raises(grpc.RpcError) as err:
                stub.ModelInfer(req)
            assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT, err.value.details()
            assert words in err.value.details()
        assert stub.ServerLive(pb.ServerLiveRequest()).live


def test_asyncio_client(server: ServerThread) -> None:
    async def main() -> list[np.ndarray]:
        client = aiogrpcclient.InferenceServerClient(server.grpc_url)
        try:
            assert await client.is_server_ready()
            x = np.array([[b"a", b"bc"]], dtype=object)
            i = aiogrpcclient.InferInput("s", [1, 2], "BYTES")
            i.set_data_from_numpy(x)
            results = await asyncio.gather(*(client.infer("strid", [i]) for _ in range(8)))
            return [r.as_numpy("t") for r in results]
        finally:
            await client.close()

    for got in asyncio.run(main()):
        np.testing.assert_array_equal(got, np.array([[b"a", b"bc"]], dtype=object))


def test_streaming_answers_every_request_and_errors_do_not_end_the_stream(server: ServerThread) -> None:
    client = grpcclient.InferenceServerClient(server.grpc_url)
    answers: queue.Queue[tuple[object, object]] = queue.Queue()
    client.start_stream(callback=lambda result, error: answers.put((result, error)))
    try:
        good = grpcclient.InferInput("x", [2, 16], "FP32")
        good.set_data_from_numpy(np.full((2, 16), 0.5, np.float32))
        wrong = grpcclient.InferInput("x", [1, 16], "INT64")
        wrong.set_data_from_numpy(np.zeros((1, 16), np.int64))
        for k in range(6):
            client.async_stream_infer("mlp", [good], request_id=f"r{k}")
        client.async_stream_infer("mlp", [wrong], request_id="wrong")
        client.async_stream_infer("nope", [good], request_id="nope")
        client.async_stream_infer("mlp", [good], request_id="after")
        got = [answers.get(timeout=10) for _ in range(9)]
    finally:
        client.stop_stream()
    ids = sorted(r.get_response().id for r, e in got if e is None)  # type: ignore[attr-defined]
    assert ids == sorted([f"r{k}" for k in range(6)] + ["after"])
    for r, e in got:
        if e is None:
            assert r.as_numpy("y").shape == (2, 4)  # type: ignore[attr-defined]
    errors = sorted(str(e) for r, e in got if e is not None)
    assert len(errors) == 2
    assert any("INT64" in e for e in errors) and any("Request for unknown model: 'nope'" in e for e in errors)


@pytest.mark.parametrize("how", ["fail", "invalid_argument"])
def test_a_stream_asking_for_grpc_errors_ends_at_a_failed_run_with_its_status_as_tritons(
    model_store: tuple[Store, dict[str, ModelRecord]], tmp_path: Any, how: str
) -> None:
    """Triton's triton_grpc_error stream header: a request that fails in its run ends the stream with the gRPC
    status, which the client's callback gets (``status()``), and nothing after it is answered; a request refused
    before it runs (an unknown model, a wrong datatype) is answered in the stream as without the header.
    polystack ignored the header: the failure came as an answer without a status, and the stream went on."""
    from polystack.formats import import_model

    store, _ = model_store
    gather = how == "invalid_argument"  # answered 400, but in the run: it ends the stream too (it did not)
    imported = import_model(failing_at_run(tmp_path / "failing.onnx", gather), tmp_path / "import")
    name = f"failing_{how}"
    store.register(imported.artifact, name=name, format=imported.format, signature=imported.signature)
    st = start(store, models=["mlp", name])
    client = grpcclient.InferenceServerClient(st.grpc_url)
    answers: queue.Queue[tuple[object, object]] = queue.Queue()
    try:
        client.start_stream(
            callback=lambda result, error: answers.put((result, error)), headers={"triton_grpc_error": "true"}
        )
        good = grpcclient.InferInput("x", [2, 16], "FP32")
        good.set_data_from_numpy(np.full((2, 16), 0.5, np.float32))
        wrong = grpcclient.InferInput("x", [1, 16], "INT64")
        wrong.set_data_from_numpy(np.zeros((1, 16), np.int64))
        if gather:
            failing = grpcclient.InferInput("x", [1], "INT64")
            failing.set_data_from_numpy(np.array([5], np.int64))
        else:
            failing = grpcclient.InferInput("x", [1, 2], "FP32")
            failing.set_data_from_numpy(np.zeros((1, 2), np.float32))
        client.async_stream_infer("mlp", [good], request_id="first")
        client.async_stream_infer("mlp", [wrong], request_id="wrong")
        client.async_stream_infer("nope", [good], request_id="nope")
        got = [answers.get(timeout=10) for _ in range(3)]
        assert got[0][1] is None and got[0][0].get_response().id == "first"  # type: ignore[attr-defined]
        refused = [error for _, error in got[1:]]
        assert all(isinstance(e, InferenceServerException) and e.status() is None for e in refused), refused
        client.async_stream_infer(name, [failing], request_id="fails")
        _, error = answers.get(timeout=10)
        assert isinstance(error, InferenceServerException), error
        if gather:
            assert error.status() == "StatusCode.INVALID_ARGUMENT" and "refused the inputs" in error.message(), error
            # a failure in the run, as Triton's backends report it: its metrics count it BACKEND (helper-115)
            import urllib.request

            text = urllib.request.urlopen(f"http://{st.http_url}/metrics", timeout=10).read().decode()
            assert f'model="{name}",reason="RuntimeRefused",version="1"' in text, text[-2000:]
        else:
            assert error.status() == "StatusCode.INTERNAL" and "cannot be reshaped" in error.message(), error
        with contextlib.suppress(Exception):  # the stream is over: tritonclient may refuse to send
            client.async_stream_infer("mlp", [good], request_id="after")
        with pytest.raises(queue.Empty):
            answers.get(timeout=1)
    finally:
        client.stop_stream()
        with caught_logs("asyncio", logging.ERROR) as unhandled:
            st.stop()
            gc.collect()
    # the stream's reader, ended by the abort, was collected without its error taken ("Task exception was never
    # retrieved", with a traceback, for every such stream)
    assert not [r.getMessage() for r in unhandled]


def test_asyncio_streaming(server: ServerThread) -> None:
    async def main() -> list[str]:
        client = aiogrpcclient.InferenceServerClient(server.grpc_url)
        i = aiogrpcclient.InferInput("s", [1, 2], "BYTES")
        i.set_data_from_numpy(np.array([[b"a", b"bc"]], dtype=object))

        async def requests():  # type: ignore[no-untyped-def]
            for k in range(4):
                yield {"model_name": "strid", "inputs": [i], "request_id": str(k)}

        try:
            out = []
            async for result, error in client.stream_infer(requests()):
                assert error is None, error
                out.append(result.get_response().id)
                if len(out) == 4:
                    break
            return out
        finally:
            await client.close()

    assert sorted(asyncio.run(main())) == ["0", "1", "2", "3"]


def test_cuda_shared_memory_rpcs_answer_as_a_server_without_gpus_does(client: grpcclient.InferenceServerClient) -> None:
    """Also without --allow-shared-memory: there is nothing to protect when nothing can be registered."""
    client.unregister_cuda_shared_memory()
    assert len(client.get_cuda_shared_memory_status().regions) == 0
    with pytest.raises(InferenceServerException) as e:
        client.register_cuda_shared_memory("r", b"\0" * 64, 0, 64)
    assert "INVALID_ARGUMENT" in _status(e.value) and "system shared memory" in e.value.message()
    with pytest.raises(InferenceServerException) as e:
        client.get_cuda_shared_memory_status("r")
    assert "NOT_FOUND" in _status(e.value)
    assert client.is_server_live()


def _stream_requests(count: int, rows: int, bad_every: int = 0) -> Iterator[pb.ModelInferRequest]:
    raw = np.zeros((rows, 4), "<i8").tobytes()
    for k in range(count):
        req = pb.ModelInferRequest(model_name="ident64", id=f"r{k}", raw_input_contents=[raw])
        bad = bad_every and k % bad_every == 0
        req.inputs.add(name="a", datatype="INT32" if bad else "INT64", shape=[rows, 4])
        yield req


def test_a_stream_whose_client_stops_reading_stops_being_read(server: ServerThread) -> None:
    """Answers wait in the server for a slow reader only up to the stream's in-flight limit."""

    async def main() -> tuple[int, int]:
        async with grpc.aio.insecure_channel(server.grpc_url) as channel:
            stub = pb_grpc.GRPCInferenceServiceStub(channel)
            stats = pb.ModelStatisticsRequest(name="ident64")
            before = (await stub.ModelStatistics(stats)).model_stats[0].inference_stats.success.count
            call = stub.ModelStreamInfer(_stream_requests(300, 8192))  # answers of 256 KiB each
            await asyncio.sleep(2)  # not reading
            computed = (await stub.ModelStatistics(stats)).model_stats[0].inference_stats.success.count - before
            read = 0
            async for _ in call:
                read += 1
                if read == 300:
                    break
            return computed, read

    computed, read = asyncio.run(main())
    assert read == 300
    assert computed <= 150, computed  # the in-flight limit (64) plus what grpc's own windows hold; not all 300


def test_stream_errors_say_which_request_failed(server: ServerThread) -> None:
    with grpc.insecure_channel(server.grpc_url) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        answers = list(stub.ModelStreamInfer(_stream_requests(6, 2, bad_every=3)))
    failed = sorted(a.infer_response.id for a in answers if a.error_message)
    assert failed == ["r0", "r3"] and all("INT32" in a.error_message for a in answers if a.error_message)
    assert sorted(a.infer_response.id for a in answers if not a.error_message) == ["r1", "r2", "r4", "r5"]


def test_a_stream_answers_in_the_order_it_sent_each_answer_final_as_tritons(
    model_store: tuple[Store, dict[str, ModelRecord]],
) -> None:
    """Triton writes a stream's answers to a model that is not decoupled in the order of its requests (a
    slow request holds back the faster ones sent after it), failures included: tritonclient drops a failed
    answer's id, so its place is what tells a client which request failed. Each answer that succeeds carries
    triton_final_response true (stream clients read answers until it says the last came); a failure carries
    its id alone, as tritonserver 2.51's does (helper-107)."""
    store, _ = model_store
    st = start(store, models=["mlp", "slow"])
    try:
        x = np.zeros((1, 16), np.float32).tobytes()

        def req(model: str, rid: str) -> pb.ModelInferRequest:
            r = pb.ModelInferRequest(model_name=model, id=rid, raw_input_contents=[x])
            r.inputs.add(name="x", datatype="FP32", shape=[1, 16])
            return r

        sent = [req("slow", "s0"), req("mlp", "f0"), req("nope", "bad"), req("mlp", "f1"), req("slow", "s1")]
        sent.append(req("mlp", "f2"))
        with grpc.insecure_channel(st.grpc_url) as channel:
            answers = list(pb_grpc.GRPCInferenceServiceStub(channel).ModelStreamInfer(iter(sent), timeout=30))
        assert [a.infer_response.id for a in answers] == ["s0", "f0", "bad", "f1", "s1", "f2"]
        assert [bool(a.error_message) for a in answers] == [False, False, True, False, False, False]
        failed = next(a for a in answers if a.error_message).infer_response
        assert failed == pb.ModelInferResponse(id="bad")  # its id alone (a map read below would add a key)
        assert all(a.infer_response.parameters["triton_final_response"].bool_param for a in answers if not a.error_message)

        client = grpcclient.InferenceServerClient(st.grpc_url)
        got: queue.Queue[tuple[Any, Any]] = queue.Queue()
        client.start_stream(callback=lambda result, error: got.put((result, error)))
        try:
            inp = grpcclient.InferInput("x", [1, 16], "FP32")
            inp.set_data_from_numpy(np.zeros((1, 16), np.float32))
            for model, rid in [("slow", "a"), ("nope", "b"), ("mlp", "c")]:
                client.async_stream_infer(model, [inp], request_id=rid, enable_empty_final_response=True)
            order = []
            for _ in range(3):
                result, error = got.get(timeout=10)
                if error is not None:
                    order.append("error")
                    continue
                response = result.get_response()
                assert response.parameters["triton_final_response"].bool_param  # the usual loop's end
                order.append(response.id)
        finally:
            client.stop_stream()
        assert order == ["a", "error", "c"]  # the failure in its place, which tritonclient leaves as its only mark
    finally:
        st.stop()


def test_standard_health_service_answers_probes(server: ServerThread) -> None:
    with grpc.insecure_channel(server.grpc_url) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        for service in ("", "inference.GRPCInferenceService"):  # what Kubernetes' gRPC probes ask
            got = health.Check(health_pb2.HealthCheckRequest(service=service), timeout=10)
            assert got.status == health_pb2.HealthCheckResponse.SERVING, service
        with pytest.raises(grpc.RpcError) as err:
            health.Check(health_pb2.HealthCheckRequest(service="mlp"), timeout=10)
        assert err.value.code() == grpc.StatusCode.NOT_FOUND and "inference.GRPCInferenceService" in err.value.details()
        unknown = health.Watch(health_pb2.HealthCheckRequest(service="nope"), timeout=10)
        assert next(unknown).status == health_pb2.HealthCheckResponse.SERVICE_UNKNOWN  # the call stays open
        unknown.cancel()


def test_a_health_watch_tells_a_drain_that_began_while_its_first_status_was_on_its_way(
    model_store: tuple[Store, dict[str, ModelRecord]],
) -> None:
    """The Watch stream went on to wait only if the server was still ready when it resumed after its first
    message: a drain that began meanwhile ended the stream with no NOT_SERVING (seen once in a clean clone's
    run). Driven here step by step: the drain begins between the first message and the next."""
    store, _ = model_store
    plane = DataPlane(Engine(store), profile="realtime", spec_for=test_spec_for, policy_for=lambda *_: None)
    watch = HealthServicer(plane).Watch(health_pb2.HealthCheckRequest(service=""), None)

    async def main() -> list[int]:
        first = await watch.__anext__()
        plane.start_draining()
        return [first.status, (await watch.__anext__()).status]

    try:
        assert asyncio.run(main()) == [health_pb2.HealthCheckResponse.SERVING, health_pb2.HealthCheckResponse.NOT_SERVING]
    finally:
        plane.close()


def test_health_watch_sees_the_drain_and_does_not_hold_the_shutdown(
    model_store: tuple[Store, dict[str, ModelRecord]],
) -> None:
    store, _ = model_store
    st = start(store, models=["mlp"], drain_timeout_s=20.0)
    stopped = threading.Thread(target=st.stop)
    try:
        with grpc.insecure_channel(st.grpc_url) as channel:
            health = health_pb2_grpc.HealthStub(channel)
            watch = health.Watch(health_pb2.HealthCheckRequest(service=""), timeout=30)
            unknown = health.Watch(health_pb2.HealthCheckRequest(service="nope"), timeout=30)
            assert next(watch).status == health_pb2.HealthCheckResponse.SERVING
            assert next(unknown).status == health_pb2.HealthCheckResponse.SERVICE_UNKNOWN
            began = time.monotonic()
            stopped.start()
            assert next(watch).status == health_pb2.HealthCheckResponse.NOT_SERVING
            with pytest.raises(StopIteration):  # the stream ends: the shutdown need not wait for it
                next(watch)
            with pytest.raises(StopIteration):  # no second SERVICE_UNKNOWN: messages are for changes
                next(unknown)
            stopped.join(20)
            assert not stopped.is_alive() and time.monotonic() - began < 10
    finally:
        if stopped.ident is None:  # failed before it began stopping
            st.stop()


def test_a_stream_open_at_the_drain_answers_what_runs_then_ends_unavailable(
    model_store: tuple[Store, dict[str, ModelRecord]],
) -> None:
    """A ModelStreamInfer stream stops taking requests when the drain begins: the request it is running
    is answered, then the stream ends with UNAVAILABLE (what was sent after is not run), and the server
    stops at once rather than after the whole drain timeout."""
    store, records = model_store
    register_like(store, records["mlp"], "slowstream", tags={"delay_ms": "300"})
    st = start(store, models=["slowstream"], drain_timeout_s=20.0)
    stopped = threading.Thread(target=st.stop)
    sent: queue.Queue[pb.ModelInferRequest | None] = queue.Queue()

    def request(rid: str) -> pb.ModelInferRequest:
        req = pb.ModelInferRequest(model_name="slowstream", id=rid, raw_input_contents=[bytes(64)])
        req.inputs.add(name="x", datatype="FP32", shape=[1, 16])
        return req

    try:
        with grpc.insecure_channel(st.grpc_url) as channel:
            call = pb_grpc.GRPCInferenceServiceStub(channel).ModelStreamInfer(iter(sent.get, None), timeout=30)
            sent.put(request("first"))
            raw = Raw(st.http_port)
            deadline = time.monotonic() + 10
            while b"polystack_requests_in_flight 1.0" not in raw.request("GET", "/metrics")[2]:
                assert time.monotonic() < deadline, "the stream's request never showed as in flight"
                time.sleep(0.01)
            began = time.monotonic()
            stopped.start()
            first = next(call)
            assert first.infer_response.id == "first" and not first.error_message
            sent.put(request("late"))
            with pytest.raises(grpc.RpcError) as ended:
                next(call)
            assert ended.value.code() == grpc.StatusCode.UNAVAILABLE and "shutting down" in ended.value.details()
            stopped.join(20)
            assert not stopped.is_alive() and time.monotonic() - began < 10
    finally:
        sent.put(None)
        if stopped.ident is None:
            st.stop()


def test_a_stream_request_read_but_not_started_at_the_drain_is_answered_not_run(
    model_store: tuple[Store, dict[str, ModelRecord]], monkeypatch: pytest.MonkeyPatch
) -> None:
    """With the stream's in-flight slots taken, a request it read waits for one; at the drain it gets an
    answer saying it was not run, rather than none."""
    from polystack.server import grpc as grpc_transport

    monkeypatch.setattr(grpc_transport, "STREAM_IN_FLIGHT", 1)
    store, records = model_store
    register_like(store, records["mlp"], "slowstream", tags={"delay_ms": "300"})
    st = start(store, models=["slowstream"], drain_timeout_s=20.0)
    sent: queue.Queue[pb.ModelInferRequest | None] = queue.Queue()
    try:
        with grpc.insecure_channel(st.grpc_url) as channel:
            call = pb_grpc.GRPCInferenceServiceStub(channel).ModelStreamInfer(iter(sent.get, None), timeout=30)
            for rid in ("first", "second"):
                req = pb.ModelInferRequest(model_name="slowstream", id=rid, raw_input_contents=[bytes(64)])
                req.inputs.add(name="x", datatype="FP32", shape=[1, 16])
                sent.put(req)
            time.sleep(0.15)  # the first runs (300 ms); the second is read and waits for the one slot
            stopper = threading.Thread(target=st.stop)
            stopper.start()
            answers = {}
            with pytest.raises(grpc.RpcError) as ended:
                for a in call:
                    answers[a.infer_response.id] = a.error_message
            assert ended.value.code() == grpc.StatusCode.UNAVAILABLE
            assert answers["first"] == "" and "did not run this request" in answers["second"], answers
            stopper.join(20)
    finally:
        sent.put(None)


def test_a_grpc_request_slow_to_read_is_decoded_off_the_event_loop(
    server: ServerThread, monkeypatch: pytest.MonkeyPatch
) -> None:
    """BYTES elements and typed contents are read element by element: from 256 KiB such a request is read
    on the front end's codec threads, not the loop (4M BYTES elements held every client 6 s there);
    binary numbers, read in place, stay on the loop."""
    from polystack.protocol import grpc_codec

    seen = threads_calling(monkeypatch, grpc_codec, "decode_infer_request")
    client = grpcclient.InferenceServerClient(server.grpc_url)
    for rows, width in ((2, 2), (2, 70_000)):  # a few bytes, then 2 x 2 x 70,000 B = 280 KB of BYTES
        s = grpcclient.InferInput("s", [rows, 2], "BYTES")
        s.set_data_from_numpy(np.full((rows, 2), b"x" * width, dtype=object))
        assert client.infer("strid", [s]).as_numpy("t").shape == (rows, 2)
    x = grpcclient.InferInput("x", [64, 16], "FP32")  # 4 KB of numbers, raw: on the loop
    x.set_data_from_numpy(np.ones((64, 16), np.float32))
    client.infer("mlp", [x])
    assert seen[0] == seen[2] == "polystack-server" and seen[1].startswith("codec"), seen


def test_raw_numbers_beside_an_empty_contents_are_read_on_the_loop() -> None:
    """MLServer's use_raw=True sets an empty contents beside raw data (helper-228): numbers read in place however
    large, as raw numbers alone are (helper-229 saw them sent to the codec threads)."""
    from polystack.server.grpc import DECODE_INLINE_BELOW, _slow_to_read

    req = pb.ModelInferRequest(model_name="mlp", raw_input_contents=[b"\0" * DECODE_INLINE_BELOW])
    req.inputs.add(name="x", datatype="FP32", shape=[DECODE_INLINE_BELOW // 4]).contents.SetInParent()
    assert not _slow_to_read(req)
    req.inputs[0].contents.fp32_contents.append(1.0)  # typed values: read one by one
    assert _slow_to_read(req)


def test_bytes_that_are_not_protobuf_are_invalid_argument_and_a_stream_goes_on(server: ServerThread) -> None:
    garbage = b"\xff\xff\xff\x0f garbage"

    def good(i: int) -> bytes:
        r = pb.ModelInferRequest(model_name="mlp", id=f"g{i}", raw_input_contents=[np.zeros(16, np.float32).tobytes()])
        r.inputs.add(name="x", datatype="FP32", shape=[1, 16])
        return r.SerializeToString()

    with grpc.insecure_channel(server.grpc_url) as channel:
        for method in ("inference.GRPCInferenceService/ModelInfer", "inference.GRPCInferenceService/ServerLive"):
            with pytest.raises(grpc.RpcError) as err:
                channel.unary_unary(f"/{method}")(garbage, timeout=10)
            assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "not a valid protobuf" in err.value.details()
        with pytest.raises(grpc.RpcError) as err:
            next(channel.unary_stream("/grpc.health.v1.Health/Watch")(garbage, timeout=10))
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        call = channel.stream_stream("/inference.GRPCInferenceService/ModelStreamInfer")(
            iter([good(1), garbage, good(2), good(3)]), timeout=10
        )
        answers = [pb.ModelStreamInferResponse.FromString(m) for m in call]
        assert call.code() == grpc.StatusCode.OK
        assert sorted(a.infer_response.id for a in answers if not a.error_message) == ["g1", "g2", "g3"]
        (bad,) = [a for a in answers if a.error_message]  # was: the stream ended at it, g2 and g3 unanswered
        assert "not a valid protobuf" in bad.error_message


def test_an_error_echoing_a_huge_model_name_still_reaches_the_client(client: grpcclient.InferenceServerClient) -> None:
    # the NOT_FOUND message repeats the name: 20,000 characters would break the trailers' 16 KiB limit
    for name in ("m" * 20_000, "é" * 20_000):
        with pytest.raises(InferenceServerException) as err:
            client.get_model_metadata(name)
        assert "NOT_FOUND" in str(err.value.status()) and "cut" in err.value.message()


def test_a_timeout_that_is_not_a_number_of_microseconds_is_invalid_argument(server: ServerThread) -> None:
    stub = pb_grpc.GRPCInferenceServiceStub(grpc.insecure_channel(server.grpc_url))
    for value in (float("nan"), -1.0):
        r = pb.ModelInferRequest(model_name="mlp", raw_input_contents=[np.zeros(16, np.float32).tobytes()])
        r.inputs.add(name="x", datatype="FP32", shape=[1, 16])
        r.parameters["timeout"].double_param = value
        with pytest.raises(grpc.RpcError) as err:
            stub.ModelInfer(r, timeout=10)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "timeout" in err.value.details()


def test_priority_and_timeout_other_than_integers_are_invalid_argument(server: ServerThread) -> None:
    # Triton takes both as int64_param only; a double or a string was taken (or ignored) before
    stub = pb_grpc.GRPCInferenceServiceStub(grpc.insecure_channel(server.grpc_url))
    cases = [("timeout", "double_param", 1500.0), ("timeout", "string_param", "1500"), ("timeout", "uint64_param", 10),
             ("priority", "double_param", 1.0), ("priority", "string_param", "high"), ("priority", "bool_param", True),
             ("priority", "int64_param", -1)]  # fmt: skip
    for key, field, value in cases:
        r = pb.ModelInferRequest(model_name="mlp", raw_input_contents=[np.zeros(16, np.float32).tobytes()])
        r.inputs.add(name="x", datatype="FP32", shape=[1, 16])
        setattr(r.parameters[key], field, value)
        with pytest.raises(grpc.RpcError) as err:
            stub.ModelInfer(r, timeout=10)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT, (key, field)
        words = {  # tritonserver 2.51's words (helper-114)
            "timeout": "invalid value type for 'timeout' parameter, expected int64_param.",
            "priority": "invalid value type for 'priority' parameter, expected int64_param or uint64_param.",
        }[key] if field != "int64_param" else "invalid value for 'priority', expected value >= 0."  # fmt: skip
        assert err.value.details() == words, err.value.details()
    for key, field, value in [("priority", "int64_param", 5), ("priority", "uint64_param", 5), ("timeout", "int64_param", 10**7)]:
        r = pb.ModelInferRequest(model_name="mlp", raw_input_contents=[np.zeros(16, np.float32).tobytes()])
        r.inputs.add(name="x", datatype="FP32", shape=[1, 16])
        setattr(r.parameters[key], field, value)
        assert len(stub.ModelInfer(r, timeout=10).raw_output_contents) == 1


def test_reserved_and_untyped_request_parameters_are_refused_in_tritons_words(server: ServerThread) -> None:
    # Triton's gRPC front end refuses triton_ keys but its own, and custom parameters its backends cannot take
    stub = pb_grpc.GRPCInferenceServiceStub(grpc.insecure_channel(server.grpc_url))

    def call(key: str, field: str, value: Any) -> Any:
        r = pb.ModelInferRequest(model_name="mlp", raw_input_contents=[np.zeros(16, np.float32).tobytes()])
        r.inputs.add(name="x", datatype="FP32", shape=[1, 16])
        setattr(r.parameters[key], field, value)
        return stub.ModelInfer(r, timeout=10)

    refused = [
        ("triton_anything", "bool_param", True, "parameter keys starting with 'triton_' are reserved for Triton usage"),
        ("triton_enable_empty_final_response", "string_param", "true",
         "invalid value type for 'triton_enable_empty_final_response' parameter, expected bool_param."),
        ("my_count", "uint64_param", 3,
         "invalid value type for 'my_count' parameter, expected int64_param, bool_param, or string_param."),
    ]  # fmt: skip
    for key, field, value, words in refused:
        with pytest.raises(grpc.RpcError) as err:
            call(key, field, value)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT, key
        assert words in err.value.details(), err.value.details()
    for key, field, value in [("triton_enable_empty_final_response", "bool_param", True),
                              ("my_threshold", "string_param", "0.5"), ("my_count", "int64_param", 3),
                              ("my_flag", "bool_param", False),
                              ("my_threshold", "double_param", 0.5)]:  # tritonclient 2.51 sends a float so (helper-160)  # fmt: skip
        assert len(call(key, field, value).raw_output_contents) == 1


def test_a_grpc_message_may_be_larger_than_an_http_body_as_in_triton(model_store: tuple[Store, dict[str, ModelRecord]]) -> None:
    """Triton caps HTTP bodies (64 MiB) but not gRPC messages (INT32_MAX): --max-body-bytes capped both, so an
    image batch too large for one HTTP body failed over gRPC too (RESOURCE_EXHAUSTED in gRPC's words alone)."""
    import tritonclient.http as httpclient

    store, _ = model_store
    x = np.ones((64, 16), np.float32)  # 4 KiB of data
    for limit, grpc_ok in ((None, True), (2048, False)):
        extra = {} if limit is None else {"grpc_max_message_bytes": limit}
        st = start(store, models=["mlp"], max_body_bytes=2048, **extra)
        try:
            h = httpclient.InferenceServerClient(st.http_url)
            i = httpclient.InferInput("x", list(x.shape), "FP32")
            i.set_data_from_numpy(x)
            with pytest.raises(InferenceServerException, match="413"):
                h.infer("mlp", [i])
            g = grpcclient.InferenceServerClient(st.grpc_url)
            gi = grpcclient.InferInput("x", list(x.shape), "FP32")
            gi.set_data_from_numpy(x)
            if grpc_ok:
                assert g.infer("mlp", [gi]).as_numpy("y").shape == (64, 4)
            else:
                with pytest.raises(InferenceServerException, match="RESOURCE_EXHAUSTED"):
                    g.infer("mlp", [gi])
        finally:
            st.stop()


def test_large_requests_and_answers_over_grpc_are_exact_unary_and_streamed(
    client: grpcclient.InferenceServerClient, server: ServerThread, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Messages of 256 KiB and more are read and written around their raw tensors (``grpc_raw``; helper-274: protobuf
    copied a 400 MiB tensor at parse and at each read, holding every other request a second): the answers are what
    protobuf's own reading and writing gave, and large BYTES inputs are still read off the event loop."""
    rng = np.random.default_rng(3)
    x = rng.standard_normal((100_000, 4)).astype(np.float32)  # 1.6 MB in, 3.2 MB out
    words = np.array([f"w{i}".encode() * (i % 7) for i in range(2 * 60_000)], dtype=object).reshape(-1, 2)
    seen = threads_calling(monkeypatch, grpc_codec, "decode_infer_request")

    def inputs() -> tuple[list[Any], list[Any]]:
        f = grpcclient.InferInput("x", list(x.shape), "FP32")
        f.set_data_from_numpy(x)
        b = grpcclient.InferInput("s", list(words.shape), "BYTES")
        b.set_data_from_numpy(words)
        return [f], [b]

    f, b = inputs()
    answer = client.infer("two", f, request_id="big")
    assert answer.get_response().id == "big"
    np.testing.assert_array_equal(answer.as_numpy("same"), x)
    np.testing.assert_array_equal(answer.as_numpy("neg"), -x)
    np.testing.assert_array_equal(client.infer("strid", b).as_numpy("t"), words)
    assert seen[0] == "polystack-server" and seen[1].startswith("codec"), seen  # raw numbers in place; BYTES off it
    got: queue.Queue[Any] = queue.Queue()
    client.start_stream(callback=lambda result, error: got.put(error or result))
    try:
        f, b = inputs()
        client.async_stream_infer("two", f, request_id="s1")
        client.async_stream_infer("strid", b, request_id="s2")
        first, second = got.get(timeout=30), got.get(timeout=30)
    finally:
        client.stop_stream()
    assert first.get_response().id == "s1" and second.get_response().id == "s2"
    np.testing.assert_array_equal(first.as_numpy("neg"), -x)
    np.testing.assert_array_equal(second.as_numpy("t"), words)


def test_a_grpc_message_limit_grpc_cannot_take_exits_2(tmp_path: Any) -> None:
    from servekit import refused_at_start

    assert "--grpc-max-message-bytes takes 1 to 2147483647" in refused_at_start(
        tmp_path, ["--grpc-max-message-bytes", "4294967296"]
    )


def test_keepalive_settings_let_clients_ping_idle_connections_as_tritons_flags_do(
    model_store: tuple[Store, dict[str, ModelRecord]],
) -> None:
    """Triton's --grpc-keepalive-* and --grpc-http2-* flags: a client pinging every second with no call in
    flight gets GOAWAY too_many_pings at gRPC's defaults (its channel drops to IDLE), and keeps its connection
    once the server permits it. polystack had no such settings: such clients lost their connection every few
    seconds, whatever the operator wanted."""
    from polystack.server.grpc import Keepalive

    store, _ = model_store
    relaxed = Keepalive(permit_without_calls=True, min_recv_ping_interval_without_data_ms=500, max_ping_strikes=0)
    for keepalive, kept in ((Keepalive(), False), (relaxed, True)):
        st = start(store, models=["mlp"], grpc_keepalive=keepalive)
        states: list[grpc.ChannelConnectivity] = []
        channel = grpc.insecure_channel(
            f"127.0.0.1:{st.grpc_port}",
            options=[
                ("grpc.keepalive_time_ms", 1000),
                ("grpc.keepalive_permit_without_calls", 1),
                ("grpc.http2.max_pings_without_data", 0),
            ],
        )
        try:
            channel.subscribe(states.append, try_to_connect=True)
            deadline = time.monotonic() + 8  # three pings a second apart are two strikes: GOAWAY in about 4 s
            while time.monotonic() < deadline and states[-1:] != [grpc.ChannelConnectivity.READY]:
                time.sleep(0.05)
            assert states[-1] == grpc.ChannelConnectivity.READY, states
            while time.monotonic() < deadline and states[-1] == grpc.ChannelConnectivity.READY:
                time.sleep(0.1)
            assert (states[-1] == grpc.ChannelConnectivity.READY) is kept, states
        finally:
            channel.close()
            st.stop()


def test_a_keepalive_setting_grpc_cannot_take_exits_2(tmp_path: Any) -> None:
    from servekit import refused_at_start

    assert "--grpc-http2-max-ping-strikes takes 0 to 2147483647" in refused_at_start(
        tmp_path, ["--grpc-http2-max-ping-strikes", "-1"]
    )
    # a boolean takes a value, as tritonserver's does (--grpc-keepalive-permit-without-calls=1): it was a bare
    # flag, so Triton's command lines were refused, or read its value as a model name
    assert "takes 1 or 0 (true or false), not 'maybe'" in refused_at_start(
        tmp_path, ["--grpc-keepalive-permit-without-calls=maybe"]
    )
    # gRPC's settings where no gRPC server runs are refused, not ignored
    assert "which --engine ray does not run" in refused_at_start(
        tmp_path, ["--engine", "ray", "--grpc-http2-max-ping-strikes", "0"]
    )
    for value in ("=1", "=true", " false"):  # taken: the start goes on to the next flag's refusal
        args = [*f"--grpc-keepalive-permit-without-calls{value}".split(), "--grpc-keepalive-time", "-5"]
        assert "--grpc-keepalive-time takes 0 to" in refused_at_start(tmp_path, args)


class _CountingProxy:
    """A TCP proxy on 127.0.0.1 counting the bytes the server sends back: what goes over the wire."""

    def __init__(self, target_port: int) -> None:
        import socket as socket_module

        self.listener = socket_module.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.target = target_port
        self.back = 0
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        import socket as socket_module

        with contextlib.suppress(OSError):
            while True:
                client, _ = self.listener.accept()
                upstream = socket_module.create_connection(("127.0.0.1", self.target))
                threading.Thread(target=self._pump, args=(client, upstream, False), daemon=True).start()
                threading.Thread(target=self._pump, args=(upstream, client, True), daemon=True).start()

    def _pump(self, src: Any, dst: Any, back: bool) -> None:
        with contextlib.suppress(OSError):
            while data := src.recv(65536):
                if back:
                    self.back += len(data)
                dst.sendall(data)
        with contextlib.suppress(OSError):
            dst.shutdown(2)

    def close(self) -> None:
        self.listener.close()


def test_inference_responses_are_compressed_with_tritons_compression_level(
    model_store: tuple[Store, dict[str, ModelRecord]],
) -> None:
    """tritonserver's --grpc-infer-response-compression-level: an inference response goes gzip-compressed, a
    large zero tensor a few hundred bytes on the wire where it is 64 KB otherwise, and clients read it as ever."""
    store, _ = model_store
    zeros = np.zeros((2000, 4), np.int64)
    sent = {}
    for compress in (False, True):
        st = start(store, models=["ident64"], grpc_compress_infer=compress)
        proxy = _CountingProxy(st.grpc_port or 0)
        try:
            client = grpcclient.InferenceServerClient(f"127.0.0.1:{proxy.port}")
            a = grpcclient.InferInput("a", list(zeros.shape), "INT64")
            a.set_data_from_numpy(zeros)
            before = proxy.back
            np.testing.assert_array_equal(client.infer("ident64", [a]).as_numpy("b"), zeros)
            sent[compress] = proxy.back - before
            client.close()
        finally:
            proxy.close()
            st.stop()
    assert sent[False] > zeros.nbytes > 20 * sent[True], sent


def test_a_compression_level_triton_does_not_have_exits_2(tmp_path: Any) -> None:
    from servekit import refused_at_start

    line = refused_at_start(tmp_path, ["--grpc-infer-response-compression-level", "max"])
    assert "invalid argument for --grpc-infer-response-compression-level: 'max'; give none, low, medium" in line
    line = refused_at_start(tmp_path, ["--grpc-infer-response-compression-level", "HIGH", "--engine", "ray"])
    assert "--grpc-infer-response-compression-level settings are the gRPC server's" in line


def test_tritons_max_connection_age_closes_old_connections_and_clients_reconnect(
    model_store: tuple[Store, dict[str, ModelRecord]], tmp_path: Any
) -> None:
    """tritonserver's --grpc-max-connection-age (and its grace): a connection that old is closed (GOAWAY), its
    client reconnecting by itself, so that clients spread over replicas that come later; a bad value exits 2."""
    from servekit import refused_at_start

    from polystack.server.grpc import Keepalive

    store, _ = model_store
    st = start(store, models=["mlp"], grpc_keepalive=Keepalive(max_connection_age_ms=300, max_connection_age_grace_ms=100))
    try:
        states: list[str] = []
        channel = grpc.insecure_channel(f"127.0.0.1:{st.grpc_port}")
        channel.subscribe(lambda s: states.append(s.name), try_to_connect=True)
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        for _ in range(8):
            assert stub.ServerLive(pb.ServerLiveRequest(), timeout=10).live
            time.sleep(0.15)
        assert states.count("READY") >= 2, states  # connected again after the server closed the first one
        channel.close()
    finally:
        st.stop()
    line = refused_at_start(tmp_path, ["--grpc-max-connection-age", "-5"])
    assert "--grpc-max-connection-age takes 0 to 2147483647, not -5" in line, line


def test_a_repository_named_in_an_index_load_or_unload_is_unsupported_as_in_triton(server: ServerThread) -> None:
    """tritonserver 2.51 answers UNIMPLEMENTED, "'repository_name' specification is not supported" (helper-107);
    polystack answered with every repository's models."""
    with grpc.insecure_channel(server.grpc_url) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        calls = [
            (stub.RepositoryIndex, pb.RepositoryIndexRequest(repository_name="x")),
            (stub.RepositoryModelLoad, pb.RepositoryModelLoadRequest(repository_name="x", model_name="mlp")),
            (stub.RepositoryModelUnload, pb.RepositoryModelUnloadRequest(repository_name="x", model_name="mlp")),
        ]
        for call, request in calls:
            with pytest.raises(grpc.RpcError) as e:
                call(request)
            assert e.value.code() == grpc.StatusCode.UNIMPLEMENTED
            assert (e.value.details() or "").startswith("'repository_name' specification is not supported")
        assert len(stub.RepositoryIndex(pb.RepositoryIndexRequest()).models) > 0


def test_refusals_of_inputs_start_with_tritons_words(server: ServerThread) -> None:
    """What bench/triton_parity.py found tritonserver 2.51 says: a shape a batching model refuses carries its NOTE,
    an input sent twice "already exists in request", an input without raw contents "unable to find data"."""
    with grpc.insecure_channel(server.grpc_url) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        req = pb.ModelInferRequest(model_name="mlp", raw_input_contents=[bytes(12)])
        req.inputs.add(name="x", datatype="FP32", shape=[1, 3])
        _refused(stub, req, "unexpected shape for input 'x' for model 'mlp'. Expected [-1,16], got [1,3]. NOTE: Setting")
        req = pb.ModelInferRequest(model_name="mlp", raw_input_contents=[bytes(64), bytes(64)])
        req.inputs.add(name="x", datatype="FP32", shape=[1, 16])
        req.inputs.add(name="x", datatype="FP32", shape=[1, 16])
        _refused(stub, req, "input 'x' already exists in request")
        req = pb.ModelInferRequest(model_name="ident64", raw_input_contents=[bytes(32)])
        req.inputs.add(name="a", datatype="INT64", shape=[1, 4])
        req.inputs.add(name="b", datatype="INT64", shape=[1, 4])
        _refused(stub, req, "unable to find data for input tensor 'b' for model 'ident64' in request.")
