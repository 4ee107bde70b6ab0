"""The Ray Serve replica's request handling, without Ray: a replica is a plain class Ray Serve hands
Starlette requests to, so it is called here the same way (Ray itself runs in tests/jobs, in a
loopback-only network namespace)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from servekit import caught_logs, refused_at_start
from starlette.requests import Request

from polystack.server import ensemble
from polystack.server.app import ServeConfig
from polystack.server.ray_serve import OipReplica
from polystack.store import ModelRecord, Store

MLP_ROW = json.dumps({"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 16], "data": [0.5] * 16}]}).encode()


@contextlib.contextmanager
def built(store: Store, config: ServeConfig) -> Iterator[OipReplica]:
    """A replica as Ray Serve builds one; the process's logging put back afterwards (a replica sets it up)."""
    saved = {
        n: (lg.handlers[:], lg.propagate, lg.level)
        for n in ("polystack", "opentelemetry")
        for lg in [logging.getLogger(n)]
    }
    r = OipReplica(str(store.settings.home), config)
    try:
        yield r
    finally:
        r.server.close()
        for name, (handlers, propagate, level) in saved.items():
            lg = logging.getLogger(name)
            lg.handlers[:], lg.propagate = handlers, propagate
            lg.setLevel(level)


@pytest.fixture
def replica(model_store: tuple[Store, dict[str, ModelRecord]]) -> Iterator[OipReplica]:
    config = ServeConfig(http_port=0, grpc_port=None, models=["mlp"], max_body_bytes=4096, access_log=True)
    with built(model_store[0], config) as r:
        yield r


def call(replica: OipReplica, method: str, path: str, body: bytes = b"", chunks: int = 1, **headers: str) -> Any:
    """``replica`` answering one request, its body arriving in ``chunks`` parts."""
    size = max(1, -(-len(body) // chunks))
    parts = [body[i : i + size] for i in range(0, len(body), size)] or [b""]
    messages = [{"type": "http.request", "body": p, "more_body": i < len(parts) - 1} for i, p in enumerate(parts)]

    async def receive() -> dict[str, Any]:
        return messages.pop(0) if messages else {"type": "http.disconnect"}

    scope = {
        "type": "http", "method": method, "path": path, "raw_path": path.encode(), "query_string": b"",
        "headers": [(k.replace("_", "-").encode(), v.encode()) for k, v in headers.items()],
        "http_version": "1.1", "scheme": "http", "server": ("127.0.0.1", 8000), "client": ("127.0.0.1", 5), "root_path": "",
    }  # fmt: skip
    return asyncio.run(replica(Request(scope, receive)))


def test_a_replica_answers_and_logs_each_request(replica: OipReplica) -> None:
    with caught_logs("polystack.server", logging.INFO) as records:
        ok = call(replica, "POST", "/v2/models/mlp/infer", MLP_ROW, content_type="application/json", x_request_id="r1")
        missing = call(replica, "GET", "/v2/models/nope")
    assert ok.status_code == 200 and np.asarray(json.loads(ok.body)["outputs"][0]["data"]).shape == (4,)
    assert missing.status_code == 404 and "error" in json.loads(missing.body)
    lines = [(r.__dict__["request_id"], r.__dict__["status"]) for r in records if r.getMessage() == "request"]
    assert lines[0] == ("r1", 200) and lines[1][1] == 404


def test_a_replica_refuses_a_body_over_the_limit_before_reading_it_all(replica: OipReplica) -> None:
    """--max-body-bytes held on the local server only: a replica read any body whole."""
    big = MLP_ROW + b" " * 5000
    declared = call(replica, "POST", "/v2/models/mlp/infer", big, content_length=str(len(big)))
    assert declared.status_code == 413 and "--max-body-bytes" in json.loads(declared.body)["error"]
    streamed = call(replica, "POST", "/v2/models/mlp/infer", big, chunks=8)  # no length: counted as it comes
    assert streamed.status_code == 413
    assert call(replica, "POST", "/v2/models/mlp/infer", MLP_ROW).status_code == 200


def test_a_replica_serves_the_ensembles_its_config_gives(model_store: tuple[Store, dict[str, ModelRecord]]) -> None:
    """Each replica runs an ensemble's steps on its own models, as the local server does."""
    pipe = ensemble.read(
        json.dumps(
            {
                "platform": "ensemble",
                "max_batch_size": 8,
                "input": [{"name": "IN", "data_type": "TYPE_FP32", "dims": [16]}],
                "output": [{"name": "OUT", "data_type": "TYPE_FP32", "dims": [4]}],
                "ensemble_scheduling": {
                    "step": [{"model_name": "mlp", "input_map": {"x": "IN"}, "output_map": {"y": "OUT"}}]
                },
            }
        ),
        "pipe",
        1,
    )
    config = ServeConfig(http_port=0, grpc_port=None, models=["mlp"], ensembles={"pipe": pipe})
    with built(model_store[0], config) as r:
        body = MLP_ROW.replace(b'"x"', b'"IN"')
        got, direct = call(r, "POST", "/v2/models/pipe/infer", body), call(r, "POST", "/v2/models/mlp/infer", MLP_ROW)
        assert got.status_code == 200 and direct.status_code == 200
        [out], [y] = json.loads(got.body)["outputs"], json.loads(direct.body)["outputs"]
        assert out["name"] == "OUT" and np.allclose(out["data"], y["data"])
        assert json.loads(call(r, "GET", "/v2/models/pipe").body)["platform"] == "ensemble"


def test_a_head_answer_says_the_length_a_get_would_have(replica: OipReplica) -> None:
    get = call(replica, "GET", "/v2/models/mlp")
    head = call(replica, "HEAD", "/v2/models/mlp")
    assert head.status_code == 200 and head.body == b""
    assert head.headers["content-length"] == str(len(get.body)) != "0"


@pytest.mark.parametrize(
    "args,says",
    [
        (["--grpc-port", "9001"], "HTTP only"),
        (["--http-port", "0"], "fixed --http-port"),
        (["no-such-model"], "no-such-model"),
    ],
)
def test_ray_start_up_mistakes_exit_2_before_ray_starts(tmp_path: Path, args: list[str], says: str) -> None:
    """They failed inside Ray, after it started, with a traceback of hundreds of lines (exit 1). A bogus
    --ray-address keeps a Ray from starting here should a check let one through."""
    line = refused_at_start(tmp_path, [*args, "--engine", "ray", "--ray-address", "127.0.0.1:1"])
    assert says in line


def test_a_port_already_taken_is_refused_before_ray_starts(model_store: tuple[Store, dict[str, ModelRecord]]) -> None:
    """Called directly: through the CLI, a check that let it through would start a Ray outside a namespace."""
    import socket

    from polystack.errors import InvalidRequest
    from polystack.server.ray_serve import check_before_ray

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        config = ServeConfig(host="127.0.0.1", http_port=port, grpc_port=None, models=["mlp"])
        with pytest.raises(InvalidRequest, match=f"127.0.0.1 port {port}.*--http-port"):
            check_before_ray(model_store[0], config)


def test_the_port_check_follows_the_hosts_address_family_and_skips_a_cluster(
    model_store: tuple[Store, dict[str, ModelRecord]],
) -> None:
    """It bound an IPv4 socket whatever the host (--host ::1 was refused as if the port were taken), and
    checked this machine's port for a cluster whose proxy runs on its own nodes."""
    import socket

    from polystack.server.ray_serve import check_before_ray

    store, _ = model_store
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        config = ServeConfig(host="127.0.0.1", http_port=port, grpc_port=None, models=["mlp"])
        check_before_ray(store, config, ray_address="10.9.9.9:6379")  # a cluster's port is not ours to try
    if socket.has_ipv6:
        try:
            with socket.socket(socket.AF_INET6) as probe:
                probe.bind(("::1", 0))
                free6 = probe.getsockname()[1]
        except OSError:
            return  # no IPv6 loopback here
        check_before_ray(store, ServeConfig(host="::1", http_port=free6, grpc_port=None, models=["mlp"]))
