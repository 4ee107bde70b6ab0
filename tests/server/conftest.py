"""Fixtures for the serving tests: one store with every test model, servers on free 127.0.0.1 ports."""

from __future__ import annotations

import http.client
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from servekit import register_all, register_like, start

from polystack.server.app import ServerThread
from polystack.store import ModelRecord, Store

MAX_BODY = 1 << 20
ONNX_MODELS = ["mlp", "ident64", "ident8", "notb", "strid", "two"]


@pytest.fixture(scope="module")
def model_store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Store, dict[str, ModelRecord]]]:
    work = tmp_path_factory.mktemp("serve")
    store = Store.at(work / "home")
    records = register_all(store, work / "models")
    # a model on the null backend (zeros after a delay) for batching, queueing and draining
    records["slow"] = register_like(store, records["mlp"], "slow", tags={"delay_ms": "50"})
    yield store, records
    store.close()


@pytest.fixture(scope="module")
def server(model_store: tuple[Store, dict[str, ModelRecord]]) -> Iterator[ServerThread]:
    store, _ = model_store
    st = start(store, max_body_bytes=MAX_BODY, models=ONNX_MODELS)
    yield st
    st.stop()


class Raw:
    """Plain http.client requests, one connection each, for what tritonclient would never send."""

    def __init__(self, port: int) -> None:
        self.port = port

    def request(
        self, method: str, path: str, body: bytes | str | None = None, headers: dict[str, str] | None = None
    ) -> tuple[int, dict[str, str], bytes]:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
        try:
            conn.request(method, path, body=body, headers=headers or {})
            resp = conn.getresponse()
            return resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read()
        finally:
            conn.close()

    def json(self, method: str, path: str, doc: Any = None, **kw: Any) -> tuple[int, Any]:
        body = None if doc is None else json.dumps(doc)
        status, _, data = self.request(method, path, body, {"Content-Type": "application/json", **kw})
        return status, json.loads(data) if data else None

    def infer_ok(self) -> None:
        """A good JSON request succeeds: the server is still serving."""
        status, doc = self.json(
            "POST",
            "/v2/models/mlp/infer",
            {"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 16], "data": [0.5] * 16}]},
        )
        assert status == 200, doc
        assert doc["outputs"][0]["shape"] == [1, 4]


@pytest.fixture
def raw(server: ServerThread) -> Raw:
    return Raw(server.http_port)


def write_file(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path
