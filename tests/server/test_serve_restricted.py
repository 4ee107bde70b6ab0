"""Triton's restricted APIs (``--http-restricted-api``, ``--grpc-restricted-protocol``): the APIs named answer only
requests carrying the header (or metadata key) with its value; the rest stay open. As Triton's L0_http and L0_grpc
restricted-API tests check them, through the real tritonclient against ``polystack serve`` in its own process."""

from __future__ import annotations

import contextlib
import json
import queue
import socket
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import grpc as grpc_lib
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from grpc_health.v1 import health_pb2, health_pb2_grpc
from servekit import cli_server, free_port, refused_at_start
from tritonclient.utils import InferenceServerException

from polystack.store import ModelRecord, Store

INFER = {"infer-key": "infer-value"}
GRPC_INFER = {"triton-grpc-protocol-infer-key": "infer-value"}  # Triton's gRPC key: its prefix, then the flag's


def _x(module: Any) -> Any:
    x = module.InferInput("x", [1, 16], "FP32")
    x.set_data_from_numpy(np.ones((1, 16), np.float32))
    return x


def test_restricted_apis_answer_only_with_their_header_over_http_and_grpc(
    model_store: tuple[Store, dict[str, ModelRecord]], tmp_path: Path
) -> None:
    store, _ = model_store
    http_port, grpc_port = free_port(), free_port()
    args = [
        "mlp", "--grpc-port", str(grpc_port), "--allow-model-control", "--access-log", "--grpc-max-message-bytes",
        str(1 << 20),
        "--http-restricted-api", "model-repository:admin-key=admin-value",
        "--http-restricted-api=inference,metadata:infer-key=infer-value",
        "--grpc-restricted-protocol", "inference,health:infer-key=infer-value",
        "--http-restricted-api", "logging:auth=user:pass=word",  # a value may hold ':' and '=', as in Triton
    ]  # fmt: skip
    with cli_server(store.home, args, http_port, tmp_path / "serve.log"):
        http = httpclient.InferenceServerClient(f"127.0.0.1:{http_port}")
        http.get_inference_statistics("mlp")  # statistics and config are not restricted
        assert http.get_model_config("mlp")["name"] == "mlp"
        for call in (
            lambda: http.get_server_metadata(),
            lambda: http.get_model_metadata("mlp", headers={"infer-key": "another-value"}),
            lambda: http.infer("mlp", [_x(httpclient)]),
            lambda: http.unload_model("mlp", headers=INFER),  # another group's key
        ):
            with pytest.raises(InferenceServerException, match="This API is restricted, expecting header") as refused:
                call()
            assert refused.value.status() == "403"
        assert http.get_server_metadata(headers=INFER)["name"] == "polystack"
        with socket.create_connection(("127.0.0.1", http_port), timeout=10) as sock:  # white space around the value
            sock.sendall(b"GET /v2 HTTP/1.1\r\nHost: x\r\ninfer-key: \t infer-value  \r\nConnection: close\r\n\r\n")
            assert sock.recv(12) == b"HTTP/1.1 200"  # is no part of it (RFC 9110 5.5; helper-268: it was 403)
        assert http.infer("mlp", [_x(httpclient)], headers={"Infer-Key": "infer-value"}).as_numpy("y").shape == (1, 4)
        for action in ("generate", "generate_stream"):  # the generate extension is inference, as in Triton
            body = json.dumps({"x": [1.0] * 16}).encode()
            refused_req = urllib.request.Request(f"http://127.0.0.1:{http_port}/v2/models/mlp/{action}", body)
            with pytest.raises(urllib.error.HTTPError) as refused_http:
                urllib.request.urlopen(refused_req, timeout=10)
            assert refused_http.value.code == 403, action
            allowed = urllib.request.Request(refused_req.full_url, body, {"infer-key": "infer-value"})
            with urllib.request.urlopen(allowed, timeout=10) as answer:
                assert answer.status == 200, action
        http.load_model("mlp", headers={"admin-key": "admin-value"})
        with pytest.raises(InferenceServerException, match="expecting header 'auth'"):
            http.get_log_settings(headers={"auth": "user:pass"})
        assert "log_info" in http.get_log_settings(headers={"auth": "user:pass=word"})

        grpc = grpcclient.InferenceServerClient(f"127.0.0.1:{grpc_port}")
        assert grpc.get_server_metadata().name == "polystack"  # metadata is open over gRPC
        for call in (
            lambda: grpc.infer("mlp", [_x(grpcclient)]),
            lambda: grpc.is_server_live(),
            lambda: grpc.is_server_live(headers=INFER),  # HTTP's key: gRPC's has Triton's prefix
        ):
            with pytest.raises(
                InferenceServerException, match="This protocol is restricted, expecting header 'triton-grpc-protocol-infer-key'"
            ) as refused:
                call()
            assert refused.value.status() == "StatusCode.UNAVAILABLE"
        assert grpc.is_server_live(headers=GRPC_INFER)
        assert grpc.infer("mlp", [_x(grpcclient)], headers=GRPC_INFER).as_numpy("y").shape == (1, 4)
        # the key is checked before the request is read: a call without it is refused whatever its size, and only
        # one with it can make the server take in a message (here past --grpc-max-message-bytes: grpc refuses it)
        big = grpcclient.InferInput("x", [1 << 15, 16], "FP32")
        big.set_data_from_numpy(np.ones((1 << 15, 16), np.float32))  # 2 MiB
        for headers, code, words in (
            (None, "UNAVAILABLE", "This protocol is restricted"),
            (GRPC_INFER, "RESOURCE_EXHAUSTED", "larger than max"),
        ):
            with pytest.raises(InferenceServerException, match=words) as refused:
                grpc.infer("mlp", [big], headers=headers)
            assert refused.value.status() == f"StatusCode.{code}"
        # the standard health service is health too, as Triton groups it
        with grpc_lib.insecure_channel(f"127.0.0.1:{grpc_port}") as channel:
            check = health_pb2_grpc.HealthStub(channel).Check
            with pytest.raises(grpc_lib.RpcError) as refused_call:
                check(health_pb2.HealthCheckRequest(), timeout=10)
            assert refused_call.value.code() == grpc_lib.StatusCode.UNAVAILABLE
            answer = check(health_pb2.HealthCheckRequest(), timeout=10, metadata=tuple(GRPC_INFER.items()))
            assert answer.status == health_pb2.HealthCheckResponse.SERVING
            watch = health_pb2_grpc.HealthStub(channel).Watch  # a stream of answers to one request, checked first too
            for service in ("", "s" * (2 << 20)):  # past --grpc-max-message-bytes: refused before it is read
                with pytest.raises(grpc_lib.RpcError) as refused_call:
                    next(iter(watch(health_pb2.HealthCheckRequest(service=service), timeout=10)))
                assert refused_call.value.code() == grpc_lib.StatusCode.UNAVAILABLE
            watching = watch(health_pb2.HealthCheckRequest(), timeout=10, metadata=tuple(GRPC_INFER.items()))
            assert next(iter(watching)).status == health_pb2.HealthCheckResponse.SERVING
            watching.cancel()
        for headers, refused_words in ((None, "This protocol is restricted"), (GRPC_INFER, None)):
            answers: queue.Queue[Any] = queue.Queue()
            grpc.start_stream(lambda result, error, answers=answers: answers.put((result, error)), headers=headers)
            try:
                # refused, the stream ends at once: the client may already refuse to send on it
                with contextlib.suppress(InferenceServerException) if headers is None else contextlib.nullcontext():
                    grpc.async_stream_infer("mlp", [_x(grpcclient)])
                result, error = answers.get(timeout=30)
            finally:
                grpc.stop_stream()
            if refused_words is None:
                assert error is None and result.as_numpy("y").shape == (1, 4)
            else:
                assert error is not None and refused_words in str(error), error
        grpc.close()
        http.close()
    # a refusal is the client's doing: no warning that the server failed (helper-99: every refused call logged one)
    lines = [json.loads(line) for line in (tmp_path / "serve.log").read_text().splitlines() if line.startswith("{")]
    assert not [line for line in lines if line["msg"] == "request failed"], lines
    # a stream refused at its start is one line of the access log, as a refused call is (helper-99: none)
    refused_streams = [
        line for line in lines
        if line["msg"] == "request" and line.get("rpc", "").endswith("/ModelStreamInfer") and line["status"] == "UNAVAILABLE"
    ]  # fmt: skip
    assert len(refused_streams) == 1, lines


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["--http-restricted-api", "model-reposit,health:k1=v1"], "unknown restricted api 'model-reposit'"),
        (["--http-restricted-api", "model-repository,health:k1=v1", "--http-restricted-api", "metadata,health:k2=v2"],
         "api 'health' can not be specified in multiple config groups"),
        (["--grpc-restricted-protocol", "inference:k"], "give API[,API...]:KEY=VALUE"),
        (["--grpc-restricted-protocol", "inferense:k=v"], "unknown restricted protocol 'inferense'"),
        # helper-98: an empty value served, letting anyone with an empty header in
        (["--http-restricted-api", "inference:k="], "option format is '<config name>:<setting>=<value>'. Got inference:k="),
        (["--grpc-port", "-1", "--grpc-restricted-protocol", "inference:k=v"], "which this server does not serve"),
    ],
)  # fmt: skip
def test_restrictions_tritonserver_refuses_exit_2_in_its_words(tmp_path: Path, args: list[str], says: str) -> None:
    assert says in refused_at_start(tmp_path, args)
