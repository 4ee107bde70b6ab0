"""Helpers for the serving tests: small typed ONNX models, a store holding them, servers on free ports."""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import tritonclient.http as httpclient
from ports import free_port as free_port  # the tests' port chooser, imported from here by the server tests

from polystack.engine import Engine, LoadSpec, default_spec
from polystack.examples import mlp_onnx
from polystack.formats import import_model
from polystack.server.app import ServeConfig, ServerThread
from polystack.store import ModelRecord, Store


def single_op(path: Path, op: str, elem: int, width: int, inp: str, outs: list[tuple[str, str]]) -> Path:
    """A model applying ``op`` (one node per output) to one input of shape [batch, width]."""
    import onnx
    from onnx import helper

    nodes = [helper.make_node(o_op, [inp], [o_name]) for o_name, o_op in outs]
    graph = helper.make_graph(
        nodes,
        path.stem,
        [helper.make_tensor_value_info(inp, elem, ["batch", width])],
        [helper.make_tensor_value_info(o_name, elem, ["batch", width]) for o_name, _ in outs],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="polystack-tests")
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save_model(model, str(path))
    return path


def batch_of_scalars(path: Path) -> Path:
    """A model of a batch of scalars: x FP32[n] -> y FP32[n] (x * 2) and z FP32[n, 2] (x twice)."""
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [
            helper.make_node("Add", ["x", "x"], ["y"]),
            helper.make_node("Unsqueeze", ["x", "axis"], ["col"]),
            helper.make_node("Concat", ["col", "col"], ["z"], axis=1),
        ],
        "scalars",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n"])],
        [
            helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n"]),
            helper.make_tensor_value_info("z", TensorProto.FLOAT, ["n", 2]),
        ],
        [helper.make_tensor("axis", TensorProto.INT64, [1], [1])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save_model(model, str(path))
    return path


CONCAT_IO = (
    'max_batch_size: 0\ninput [ { name: "A" data_type: TYPE_INT32 dims: [ -1 ] }, '
    '{ name: "B" data_type: TYPE_INT32 dims: [ -1 ] } ]\noutput [ { name: "C" data_type: TYPE_INT32 dims: [ -1 ] } ]\n'
)


def concat_onnx(path: Path) -> Path:
    """C = concat(A, B) of INT32 vectors of any lengths (a model whose inputs' first dims differ), whose config's
    tensors are ``CONCAT_IO``."""
    import onnx
    from onnx import TensorProto, helper

    io = [helper.make_tensor_value_info(n, TensorProto.INT32, [-1]) for n in ("A", "B", "C")]
    graph = helper.make_graph([helper.make_node("Concat", ["A", "B"], ["C"], axis=0)], "concat", io[:2], io[2:])
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    return path


def concat_inputs() -> list[Any]:
    """tritonclient's HTTP inputs A [1] and B [2] of ``concat_onnx``, which answers [1, 2, 3]."""
    a, b = httpclient.InferInput("A", [1], "INT32"), httpclient.InferInput("B", [2], "INT32")
    a.set_data_from_numpy(np.array([1], dtype=np.int32))
    b.set_data_from_numpy(np.array([2, 3], dtype=np.int32))
    return [a, b]


def failing_at_run(path: Path, gather: bool = False) -> Path:
    """An ONNX model that ONNX Runtime fails to run for a request that passes every check: for one row (a
    reshape of 2 values into 3: its Fail), or with ``gather`` for an index past its table (its InvalidArgument,
    which polystack answers as the request's fault)."""
    import onnx
    from onnx import TensorProto, helper

    if gather:
        graph = helper.make_graph(
            [helper.make_node("Gather", ["table", "x"], ["y"])],
            "failing",
            [helper.make_tensor_value_info("x", TensorProto.INT64, ["batch"])],
            [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch"])],
            [helper.make_tensor("table", TensorProto.FLOAT, [3], [1.0, 2.0, 3.0])],
        )
    else:
        graph = helper.make_graph(
            [helper.make_node("Reshape", ["x", "shape"], ["y"])],
            "failing",
            [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 2])],
            [helper.make_tensor_value_info("y", TensorProto.FLOAT, [3])],
            [helper.make_tensor("shape", TensorProto.INT64, [1], [3])],
        )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save_model(model, str(path))
    return path


def build_models(work: Path) -> dict[str, Path]:
    from onnx import TensorProto

    work.mkdir(parents=True, exist_ok=True)
    return {
        "mlp": mlp_onnx(work / "mlp.onnx", sizes=(16, 32, 4)),
        "ident64": single_op(work / "ident64.onnx", "Identity", TensorProto.INT64, 4, "a", [("b", "Identity")]),
        "ident8": single_op(work / "ident8.onnx", "Identity", TensorProto.INT8, 2, "a", [("b", "Identity")]),
        "notb": single_op(work / "notb.onnx", "Not", TensorProto.BOOL, 3, "p", [("q", "Not")]),
        "strid": single_op(work / "strid.onnx", "Identity", TensorProto.STRING, 2, "s", [("t", "Identity")]),
        "two": single_op(work / "two.onnx", "", TensorProto.FLOAT, 4, "x", [("same", "Identity"), ("neg", "Neg")]),
    }


def register_all(store: Store, work: Path) -> dict[str, ModelRecord]:
    out = {}
    for name, path in build_models(work).items():
        imported = import_model(path, work / f"import-{name}")
        record, _ = store.register(imported.artifact, name=name, format=imported.format, signature=imported.signature)
        out[name] = record
    return out


MLP_MAX_BATCH = 64


def register_like(store: Store, record: ModelRecord, name: str, **kw: Any) -> ModelRecord:
    """``record``'s artifact under another name; its tags (``slow*``: the null backend's delays) or
    settings (labels) make it a different model to serve."""
    copy, _ = store.register(
        store.artifact_path(record), name=name, format=record.format, signature=record.signature, **kw
    )
    return copy


def test_spec_for(store: Store, record: ModelRecord, profile: str) -> LoadSpec:
    """The default spec, with the MLP capped at MLP_MAX_BATCH items and `slow*` models on the null backend."""
    if record.name.startswith("slow"):
        delay = float(record.tags.get("delay_ms", "50"))
        options = {"delay_ms": delay, "load_delay_ms": float(record.tags.get("load_delay_ms", "0"))}
        return LoadSpec(artifact=store.artifact_path(record), format=record.format, backend="null", options=options)
    spec = default_spec(store, record)
    if record.name == "mlp":
        spec = dataclasses.replace(spec, max_batch_size=MLP_MAX_BATCH)
    return spec


test_spec_for.__test__ = False  # type: ignore[attr-defined]  # not a test, despite its name


def start(store: Store, **config: Any) -> ServerThread:
    hooks = {k: config.pop(k) for k in ("policy_for",) if k in config}
    cfg = ServeConfig(**{"http_port": 0, "grpc_port": 0, "drain_timeout_s": 10.0, **config})
    return ServerThread(Engine(store), cfg, spec_for=test_spec_for, **hooks).start()


def threads_calling(monkeypatch: Any, module: Any, name: str) -> list[str]:
    """Replace ``module.name`` (a function) with one that also records the name of each thread that calls
    it, in the list returned (for the tests of what runs off the event loop)."""
    seen: list[str] = []
    fn = getattr(module, name)

    def spy(*args: Any, **kwargs: Any) -> Any:
        seen.append(threading.current_thread().name)
        return fn(*args, **kwargs)

    monkeypatch.setattr(module, name, spy)
    return seen


def mlp_ones(rows: int = 1, client: Any = httpclient) -> Any:
    """The test MLP's input ``x``, ``rows`` rows of ones, for ``client`` (tritonclient.http or .grpc)."""
    x = client.InferInput("x", [rows, 16], "FP32")
    x.set_data_from_numpy(np.ones((rows, 16), np.float32))
    return x


@contextlib.contextmanager
def caught_logs(name: str, level: int = logging.DEBUG) -> Iterator[list[logging.LogRecord]]:
    """What logger ``name`` writes at ``level`` and up while the block runs, caught in this process."""
    records: list[logging.LogRecord] = []
    handler = logging.Handler()
    handler.emit = records.append  # type: ignore[method-assign]
    logger = logging.getLogger(name)
    before = logger.level
    logger.addHandler(handler)
    logger.setLevel(level)
    try:
        yield records
    finally:
        logger.removeHandler(handler)
        logger.setLevel(before)


def http_call(
    port: int, method: str, path: str, body: bytes | None = None, headers: dict[str, str] | None = None
) -> tuple[int, str, bytes]:
    """One plain HTTP request on a fresh connection to 127.0.0.1: status, content type, body."""
    import http.client

    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        resp = conn.getresponse()
        return resp.status, resp.getheader("content-type") or "", resp.read()
    finally:
        conn.close()


def refused_at_start(tmp_path: Path, args: list[str]) -> str:
    """``polystack serve ARGS`` exiting 2 at start with one line on stderr, which this returns. Under ``--engine
    ray`` without a cluster's address, one that refuses at once is given: were the refusal lost, no Ray would
    start here, outside a loopback-only namespace (one did, for a minute, in a check of a test before its fix)."""
    if "ray" in args and "--engine" in args and "--ray-address" not in args:
        args = [*args, "--ray-address", "127.0.0.1:1"]
    cmd = [sys.executable, "-m", "polystack", "--home", str(tmp_path / "home"), "serve", *args]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    assert out.returncode == 2, out.stderr
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1, out.stderr
    return lines[0]


def refused_after_loads(tmp_path: Path, args: list[str]) -> str:
    """``polystack serve ARGS`` exiting 2 once some models loaded (their log lines), with one line saying why
    last on stderr, which this returns."""
    cmd = [sys.executable, "-m", "polystack", "--home", str(tmp_path / "home"), "serve", *args]
    out = subprocess.run([*cmd, "--grpc-port", "-1", "--http-port", "0"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 2, out.stderr
    return out.stderr.strip().splitlines()[-1]


def until(check: Callable[[], bool], within_s: float = 30.0) -> bool:
    """Whether ``check`` holds within ``within_s`` (asked every 0.1 s): a poll takes a while to notice, and a
    reload may leave a model unserved for a moment, which a check asking meanwhile sees as an error."""
    from tritonclient.utils import InferenceServerException

    def holds() -> bool:
        with contextlib.suppress(InferenceServerException):
            return bool(check())
        return False

    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline:
        if holds():
            return True
        time.sleep(0.1)
    return holds()


def same_config_both_ways(http: Any, grpc: Any, name: str) -> dict[str, Any]:
    """GET config of ``name`` over HTTP, having checked that gRPC's says the same: both read as Triton's
    ModelConfig message (a field the server's proto lacked was dropped from gRPC's answer)."""
    from google.protobuf import json_format
    from tritonclient.grpc import model_config_pb2

    shown = http.get_model_config(name)
    assert grpc.get_model_config(name).config == json_format.ParseDict(shown, model_config_pb2.ModelConfig())
    return dict(shown)


@contextlib.contextmanager
def cli_server(
    home: Path,
    args: list[str],
    http_port: int,
    log_path: Path,
    client: Any = None,
    env: dict[str, str] | None = None,
    own_group: bool = False,
) -> Iterator[subprocess.Popen[bytes]]:
    """``polystack serve ARGS`` as a user runs it, in its own process (with ``env`` added to this one's),
    ready when this yields (as ``client`` asks it: plain HTTP unless given); killed if the test leaves it
    running. Its JSON log goes to ``log_path``. Give ``args`` a ``--grpc-port`` (-1: none) unless the test is of
    Triton's default ports: ``make test`` runs two workers, and two servers cannot both take gRPC's 8001.
    ``own_group``: in a process group of its own, as a shell starts a job (for signals sent to the whole group)."""
    cmd = [sys.executable, "-m", "polystack", "--home", str(home), "serve", *args, "--http-port", str(http_port)]
    with log_path.open("w") as log:
        env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=own_group)
    try:
        client = client or httpclient.InferenceServerClient(f"127.0.0.1:{http_port}")
        deadline = time.monotonic() + 60
        while True:
            with contextlib.suppress(Exception):
                if client.is_server_ready():
                    break
            assert proc.poll() is None, log_path.read_text()
            assert time.monotonic() < deadline, "server did not become ready"
            time.sleep(0.1)
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


# the accumulator's config (polystack.examples.accumulator_onnx with a UINT64 correlation ID): sequence batching
# with every control and its state; % {"idle": microseconds}
ACC = """
max_batch_size: 4
input [ { name: "INPUT", data_type: TYPE_FP32, dims: [ 1 ] } ]
sequence_batching {
  max_sequence_idle_microseconds: %(idle)d
  control_input [
    { name: "START", control [ { kind: CONTROL_SEQUENCE_START, int32_false_true: [ 0, 1 ] } ] },
    { name: "END", control [ { kind: CONTROL_SEQUENCE_END, int32_false_true: [ 0, 1 ] } ] },
    { name: "READY", control [ { kind: CONTROL_SEQUENCE_READY, int32_false_true: [ 0, 1 ] } ] },
    { name: "CORRID", control [ { kind: CONTROL_SEQUENCE_CORRID, data_type: TYPE_UINT64 } ] }
  ]
  state [ { input_name: "STATE_IN", output_name: "STATE_OUT", data_type: TYPE_FP32, dims: [ 1 ] } ]
}
"""
