"""Serving benchmark: polystack vs MLServer on the same ONNX models, driven by the same client.

    .venv/bin/python bench/serving.py            # full run (about 11 minutes)
    .venv/bin/python bench/serving.py --quick    # 1 s per cell, for a smoke check

What it does, all on 127.0.0.1:
- builds two ONNX models: the MLP 256-1024-1024-10 of FACTS.md and a small CNN (3x32x32 -> 10);
- serves each with `polystack serve` (a subprocess) and with MLServer 1.7.1 (its own venv, created on
  first use under ~/.cache/polystack/bench-mlserver-venv with `uvloop<0.22`, see FACTS.md) running a
  minimal onnxruntime MLModel in the server process (`parallel_workers: 0`, its fastest setting);
  both use ONNX Runtime's default thread settings;
- batching off and on (polystack: --batching --max-batch-size 32 --max-queue-delay-ms 2; MLServer:
  adaptive batching max_batch_size 32, max_batch_time 2 ms);
- drives both with the same client: batch-1 JSON requests (MLServer rejects binary tensors) over
  keep-alive HTTP/1.1; concurrency 1 is a blocking socket loop (the lightest client), 8 and 32 are
  asyncio connections; p50/p99 latency and requests/s per cell;
- adds polystack through tritonclient (binary tensors) at concurrency 1, and the in-process floor:
  polystack's Engine.infer latency at batch 1 and its Offline throughput at batch 32;
- with batching on, more polystack cells with binary tensors: 8-item requests (the batcher merges four
  into a batch of 32) and 32-item requests (already at that size), each at a low concurrency (8 and 4)
  and at one that saturates the server (32 and 8); their items/s set against the Offline figure show
  how much of the runtime's batch-32 throughput the server keeps once per-request cost is shared by
  several items; the same cells again on a server started with `--instances 2 --threads 1`, against
  the better of the two in-process set-ups;
- with batching on and at least 2 cores, the same cells on a pinned server (`--frontend-cpus` the first
  core, `--runtime-cpus` the rest, the client on the first core), batch-1 JSON at concurrency 32 and
  128, and those batch-1 cells against a bare uvloop + httptools server answering polystack's own
  answer, canned, on the same core: the ceiling of any server built that way beside this client; and
  against a minimal Python batching server (the same front end, simdjson decoding, one batch worker running
  onnxruntime, orjson answers, nothing else): the ceiling of a front end written in Python;
- each cell records the cores the client and the server used (CPU seconds per second, all threads):
  on 2 shared cores, what the client and the transport take is what the runtime cannot have; the pinned
  server's cells also record, from its batch statistics, the share of the time its runtime spent in model
  calls, the items/s of those calls alone (the runtime's own speed beside a busy front end) and the items
  each call ran;
- both servers of a cell run at once and their cells alternate, order flipped each repeat (--repeats,
  default 2, medians reported), so drift on the shared cores hits both sides of a ratio alike.

Results go to bench/results/serving.json and a table into BENCHMARKS.md (between serving markers).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results" / "serving.json"
BENCHMARKS = ROOT / "BENCHMARKS.md"
MLSERVER_VENV = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "polystack" / "bench-mlserver-venv"
MLSERVER_PINS = ["mlserver==1.7.1", "uvloop<0.22", "httptools", "onnxruntime", "numpy"]
START, END = "<!-- serving:start -->", "<!-- serving:end -->"
# batching efficiency: (items per request, requests in flight). The first two keep 64 and 128 items in
# flight, too few to keep two batch workers busy while the next requests are parsed (the 2x1 server
# used 1.3-1.75 of the 2 cores there); the last two hold enough to saturate the server
BINARY_CELLS = ((8, 8), (32, 4), (8, 32), (32, 8))
SPLIT = ("--instances", "2", "--threads", "1")  # two batch workers of one runtime thread each
# the pinned server's cells (items per request, requests in flight, binary): the binary ones above, and
# batch-1 JSON requests at concurrency 32 and at 128 (32 in flight fill one batch at most, so the front
# end and the runtime take turns; 128 lets the next batches' requests be read while one runs)
PINNED_CELLS = (*((items, conc, True) for items, conc in BINARY_CELLS), (1, 32, False), (1, 128, False))


def placement() -> tuple[frozenset[int], frozenset[int]] | None:
    """(front-end cores, runtime cores) for the pinned rows: the first core this process may use for the
    event loop (and the client), the others for the runtime; None with fewer than 2 cores or no Linux."""
    if not hasattr(os, "sched_getaffinity"):
        return None
    cpus = sorted(os.sched_getaffinity(0))
    return (frozenset(cpus[:1]), frozenset(cpus[1:])) if len(cpus) >= 2 else None


RUNTIME_PY = """
import onnxruntime as ort
from mlserver import MLModel
from mlserver.codecs import NumpyCodec
from mlserver.types import InferenceRequest, InferenceResponse


class OnnxModel(MLModel):
    async def load(self) -> bool:
        self.session = ort.InferenceSession(self.settings.parameters.uri, providers=["CPUExecutionProvider"])
        self.input_name = self.session.get_inputs()[0].name
        self.output_names = [o.name for o in self.session.get_outputs()]
        return True

    async def predict(self, payload: InferenceRequest) -> InferenceResponse:
        x = NumpyCodec.decode_input(payload.inputs[0])
        ys = self.session.run(self.output_names, {self.input_name: x})
        return InferenceResponse(
            model_name=self.name,
            outputs=[NumpyCodec.encode_output(n, y) for n, y in zip(self.output_names, ys)],
        )
"""


# A server with nothing behind it: uvloop + httptools (what polystack's HTTP front end is built on)
# answering every request with the same bytes, pinned to the given cores. Run beside the client on the
# pinned server's front-end core, it is the most any server written on them could answer there: the
# client, the kernel's loopback TCP and one parse and write per request, and no decoding, validation,
# batching or encoding.
BARE_SERVER_PY = """
import asyncio, os, sys
import httptools, uvloop

port, cores, answer = int(sys.argv[1]), {int(c) for c in sys.argv[2].split(",")}, open(sys.argv[3], "rb").read()
os.sched_setaffinity(0, cores)
response = b"HTTP/1.1 200 OK\\r\\ncontent-type: application/json\\r\\ncontent-length: %d\\r\\n\\r\\n" % len(answer) + answer


class Answer(asyncio.Protocol):
    def connection_made(self, transport):
        self.transport, self.parser = transport, httptools.HttpRequestParser(self)

    def data_received(self, data):
        self.parser.feed_data(data)

    def on_message_complete(self):
        self.transport.write(response)


async def main():
    server = await asyncio.get_running_loop().create_server(Answer, "127.0.0.1", port)
    await server.serve_forever()


uvloop.run(main())
"""


# The least a Python server must do per request to batch: the same uvloop + httptools front end, the
# request's tensor read from its JSON in C (simdjson, as polystack does), queued to one batch worker (up
# to 32 items or 2 ms, as the polystack server here) that runs onnxruntime on the runtime cores, and each
# row's answer written with orjson. No validation beyond the input's name and type, no metrics, statistics,
# timeouts, tracing or logging. Against the same client on the same front-end core, it is the most a
# batching server written in Python reaches here: polystack's distance from it is its own per-request
# work; its distance from Offline is what only a front end that is not Python per request could close.
MINIMAL_SERVER_PY = """
import asyncio, os, sys, threading
import httptools, numpy as np, onnxruntime as ort, orjson, simdjson, uvloop

port, model = int(sys.argv[1]), sys.argv[4]
front, runtime = ({int(c) for c in arg.split(",")} for arg in sys.argv[2:4])
os.sched_setaffinity(0, runtime)  # the runtime's threads start here and keep these cores
options = ort.SessionOptions()
options.intra_op_num_threads, options.inter_op_num_threads = len(runtime), 1
session = ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])
name, outputs = session.get_inputs()[0].name, [o.name for o in session.get_outputs()]
os.sched_setaffinity(0, front)
HEAD = b"HTTP/1.1 %d %s\\r\\ncontent-type: application/json\\r\\ncontent-length: %d\\r\\n\\r\\n"
queue, cond, parser, loop = [], threading.Condition(), simdjson.Parser(), None


def answer(transport, status, body):
    transport.write(HEAD % (status, b"OK" if status == 200 else b"Bad Request", len(body)) + body)


def deliver(batch, results):
    offset = 0
    for transport, x in batch:
        rows = len(x)
        doc = {"model_name": "m", "model_version": "1", "outputs": [
            {"name": n, "datatype": "FP32", "shape": list(y[offset : offset + rows].shape), "data": y[offset : offset + rows]}
            for n, y in zip(outputs, results)]}
        answer(transport, 200, orjson.dumps(doc, option=orjson.OPT_SERIALIZE_NUMPY))
        offset += rows


def worker():
    os.sched_setaffinity(0, runtime)
    while True:
        with cond:
            while not queue:
                cond.wait()
            if len(queue) < 32:
                cond.wait(0.002)
            batch, queue[:32] = queue[:32], []
        results = session.run(outputs, {name: np.concatenate([x for _, x in batch])})
        loop.call_soon_threadsafe(deliver, batch, results)


class Minimal(asyncio.Protocol):
    def connection_made(self, transport):
        self.transport, self.parser, self.body = transport, httptools.HttpRequestParser(self), []

    def data_received(self, data):
        self.parser.feed_data(data)

    def on_body(self, body):
        self.body.append(body)

    def on_message_complete(self):
        body, self.body = b"".join(self.body), []
        if not body:  # the readiness probe
            return answer(self.transport, 200, b"{}")
        doc = parser.parse(body)
        item = doc["inputs"][0]
        if item["name"] != name or item["datatype"] != "FP32":
            del item, doc
            return answer(self.transport, 400, b'{"error": "unexpected input"}')
        shape = item["shape"].as_list()
        x = np.frombuffer(item["data"].as_buffer(of_type="d"), dtype=np.float64).astype(np.float32).reshape(shape)
        del item, doc  # simdjson's views into its parser go before the next request
        with cond:
            queue.append((self.transport, x))
            cond.notify()


async def main():
    global loop
    loop = asyncio.get_running_loop()
    threading.Thread(target=worker, daemon=True).start()
    server = await loop.create_server(Minimal, "127.0.0.1", port)
    await server.serve_forever()


uvloop.run(main())
"""


def start_minimal_server(
    model: Path, cores: tuple[frozenset[int], frozenset[int]], work: Path
) -> tuple[subprocess.Popen[bytes], int]:
    script = work / "minimal_server.py"
    script.write_text(MINIMAL_SERVER_PY)
    port = free_port()
    log = work / "minimal-server.log"
    front, runtime = (",".join(map(str, sorted(side))) for side in cores)
    proc = subprocess.Popen(
        [str(ROOT / ".venv" / "bin" / "python"), str(script), str(port), front, runtime, str(model)],
        stdout=log.open("w"),
        stderr=subprocess.STDOUT,
    )
    wait_ready(port, "/", proc, log)
    return proc, port


def start_bare_server(answer: bytes, cores: frozenset[int], work: Path) -> tuple[subprocess.Popen[bytes], int]:
    script, body = work / "bare_server.py", work / "bare_answer.json"
    script.write_text(BARE_SERVER_PY)
    body.write_bytes(answer)
    port = free_port()
    log = work / "bare-server.log"
    cpus = ",".join(map(str, sorted(cores)))
    proc = subprocess.Popen(
        [str(ROOT / ".venv" / "bin" / "python"), str(script), str(port), cpus, str(body)],
        stdout=log.open("w"),
        stderr=subprocess.STDOUT,
    )
    wait_ready(port, "/", proc, log)
    return proc, port


# -- models ------------------------------------------------------------------------------------
def cnn_onnx(path: Path, seed: int = 0) -> Path:
    """A small CNN: 3 conv blocks (16, 32, 64 channels) on 3x32x32, global pooling, a 10-way head."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    nodes, inits = [], []
    prev, cin = "x", 3
    for i, cout in enumerate((16, 32, 64)):
        w = (rng.standard_normal((cout, cin, 3, 3)) / np.sqrt(cin * 9)).astype(np.float32)
        b = np.zeros(cout, np.float32)
        inits += [numpy_helper.from_array(w, f"cw{i}"), numpy_helper.from_array(b, f"cb{i}")]
        nodes.append(helper.make_node("Conv", [prev, f"cw{i}", f"cb{i}"], [f"c{i}"], pads=[1, 1, 1, 1]))
        nodes.append(helper.make_node("Relu", [f"c{i}"], [f"r{i}"]))
        if i < 2:
            nodes.append(helper.make_node("MaxPool", [f"r{i}"], [f"p{i}"], kernel_shape=[2, 2], strides=[2, 2]))
            prev = f"p{i}"
        else:
            prev = f"r{i}"
        cin = cout
    nodes.append(helper.make_node("GlobalAveragePool", [prev], ["gap"]))
    nodes.append(helper.make_node("Flatten", ["gap"], ["flat"], axis=1))
    w = (rng.standard_normal((64, 10)) / 8).astype(np.float32)
    inits += [numpy_helper.from_array(w, "fw"), numpy_helper.from_array(np.zeros(10, np.float32), "fb")]
    nodes.append(helper.make_node("Gemm", ["flat", "fw", "fb"], ["y"]))
    graph = helper.make_graph(
        nodes,
        "cnn",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 3, 32, 32])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 10])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="polystack-bench")
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save_model(model, str(path))
    return path


def build_models(work: Path) -> dict[str, tuple[Path, list[int]]]:
    from polystack.examples import mlp_onnx

    return {
        "mlp": (mlp_onnx(work / "mlp.onnx", sizes=(256, 1024, 1024, 10)), [1, 256]),
        "cnn": (cnn_onnx(work / "cnn.onnx"), [1, 3, 32, 32]),
    }


# -- servers -----------------------------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_ready(port: int, path: str, proc: subprocess.Popen[bytes], log: Path, timeout_s: float = 120) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1) as s:
                s.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
                if s.recv(64).startswith(b"HTTP/1.1 200"):
                    return
        except OSError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"server not ready in {timeout_s} s:\n{log.read_text()[-3000:]}")


def stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def start_polystack(
    home: Path, model: str | Sequence[str], batching: bool, work: Path, extra: Sequence[str] = ()
) -> tuple[subprocess.Popen[bytes], int]:
    """``polystack serve`` of ``model`` (or several), ready when this returns (the first model's readiness)."""
    port = free_port()
    models = [model] if isinstance(model, str) else list(model)
    cmd = [
        str(ROOT / ".venv" / "bin" / "polystack"), "--home", str(home), "serve", *models,
        "--http-port", str(port), "--grpc-port", "-1", "--log-level", "warning",
    ]  # fmt: skip
    cmd += ["--batching", "--max-batch-size", "32", "--max-queue-delay-ms", "2"] if batching else ["--no-batching"]
    cmd += extra
    log = work / f"polystack-{models[0]}-{batching}{'-'.join(['', *extra]).replace('/', '_')[:120]}.log"
    proc = subprocess.Popen(cmd, stdout=log.open("w"), stderr=subprocess.STDOUT)
    wait_ready(port, f"/v2/models/{models[0]}/ready", proc, log)
    return proc, port


def start_repository(
    work: Path, repo: Path, ready: str, extra: Sequence[str] = ()
) -> tuple[subprocess.Popen[bytes], int]:
    """``polystack serve --model-repository repo`` (HTTP only), ready when model ``ready`` is."""
    port = free_port()
    cmd = [
        str(ROOT / ".venv" / "bin" / "polystack"), "--home", str(work / "home"), "serve", "--model-repository",
        str(repo), *extra, "--http-port", str(port), "--grpc-port", "-1", "--log-level", "warning",
    ]  # fmt: skip
    log = work / "polystack.log"
    proc = subprocess.Popen(cmd, stdout=log.open("w"), stderr=subprocess.STDOUT)
    wait_ready(port, f"/v2/models/{ready}/ready", proc, log)
    return proc, port


def ensure_mlserver_venv() -> Path:
    python = MLSERVER_VENV / "bin" / "python"
    if not (MLSERVER_VENV / "bin" / "mlserver").exists():
        print(f"creating MLServer venv at {MLSERVER_VENV} ({' '.join(MLSERVER_PINS)})", flush=True)
        subprocess.run([sys.executable, "-m", "venv", str(MLSERVER_VENV)], check=True)
        subprocess.run([str(python), "-m", "pip", "install", "-q", *MLSERVER_PINS], check=True)
    return MLSERVER_VENV


def start_mlserver(
    venv: Path, model: str, artifact: Path, batching: bool, work: Path
) -> tuple[subprocess.Popen[bytes], int]:
    folder = work / f"mlserver-{model}-{batching}"
    shutil.rmtree(folder, ignore_errors=True)
    (folder / model).mkdir(parents=True)
    (folder / "runtime.py").write_text(RUNTIME_PY)
    port = free_port()
    settings = {
        "host": "127.0.0.1",
        "http_port": port,
        "grpc_port": free_port(),
        "metrics_port": free_port(),
        "parallel_workers": 0,
        "debug": False,
    }
    (folder / "settings.json").write_text(json.dumps(settings))
    model_settings: dict[str, Any] = {
        "name": model,
        "implementation": "runtime.OnnxModel",
        "parameters": {"uri": str(artifact)},
    }
    if batching:
        model_settings |= {"max_batch_size": 32, "max_batch_time": 0.002}
    (folder / model / "model-settings.json").write_text(json.dumps(model_settings))
    log = work / f"mlserver-{model}-{batching}.log"
    proc = subprocess.Popen(
        [str(venv / "bin" / "mlserver"), "start", str(folder)],
        cwd=folder,
        stdout=log.open("w"),
        stderr=subprocess.STDOUT,
        env={**os.environ, "PYTHONPATH": str(folder)},
    )
    wait_ready(port, f"/v2/models/{model}/ready", proc, log)
    return proc, port


# -- the client ----------------------------------------------------------------------------------
_LENGTH = re.compile(rb"\ncontent-length: *(\d+)", re.I)  # at a line start: not Inference-Header-Content-Length


def request_bytes(model: str, shape: list[int], port: int, binary: bool = False) -> bytes:
    """One raw HTTP/1.1 infer request: JSON tensor data, or the binary tensor extension (as tritonclient sends)."""
    x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    head = f"POST /v2/models/{model}/infer HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
    if not binary:
        body = json.dumps({"inputs": [{"name": "x", "datatype": "FP32", "shape": shape, "data": x.ravel().tolist()}]})
        return (f"{head}Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n{body}").encode()
    raw = x.tobytes()
    header = json.dumps(
        {
            "inputs": [{"name": "x", "datatype": "FP32", "shape": shape, "parameters": {"binary_data_size": len(raw)}}],
            "parameters": {"binary_data_output": True},
        }
    ).encode()
    return (
        (
            f"{head}Content-Type: application/octet-stream\r\nInference-Header-Content-Length: {len(header)}\r\n"
            f"Content-Length: {len(header) + len(raw)}\r\n\r\n"
        ).encode()
        + header
        + raw
    )


def _read_response(sock: socket.socket, buf: bytearray) -> bytes:
    while b"\r\n\r\n" not in buf:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError("server closed the connection")
        buf += chunk
    end = buf.index(b"\r\n\r\n") + 4
    m = _LENGTH.search(buf, 0, end)
    length = int(m.group(1)) if m else 0
    while len(buf) < end + length:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError("server closed the connection")
        buf += chunk
    response = bytes(buf[: end + length])
    del buf[: end + length]
    if not response.startswith(b"HTTP/1.1 200"):
        raise RuntimeError(f"request failed: {response[:300]!r}")
    return response


def cpu_seconds(pid: int, thread: int | None = None) -> float:
    """User + system CPU time of a process, all its threads, or of one thread (Linux /proc)."""
    stat = Path(f"/proc/{pid}/stat" if thread is None else f"/proc/{pid}/task/{thread}/stat")
    fields = stat.read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def idle_ticks(cores: frozenset[int]) -> tuple[int, int]:
    """(idle + iowait, all) clock ticks of these cores since boot (Linux /proc/stat)."""
    idle = total = 0
    for line in Path("/proc/stat").read_text().splitlines():
        name, *values = line.split()
        if name.startswith("cpu") and name[3:].isdigit() and int(name[3:]) in cores:
            ticks = [int(v) for v in values[:8]]  # user nice system idle iowait irq softirq steal
            idle += ticks[3] + ticks[4]
            total += sum(ticks)
    return idle, total


class CpuShare:
    """Cores the client (this process) and the server used over a run: where the 2 cores went.

    ``server_loop_cores`` is the server's main thread alone: for polystack, the event loop (HTTP
    parsing, the OIP codec, queueing, writing responses), which is what the runtime's threads cannot
    have on a machine this small. ``runtime_idle`` (with ``watch``, a pinned server's runtime cores)
    is the share of those cores' time nothing ran: the runtime waiting for work or for the GIL.
    """

    def __init__(self, server_pid: int | None, watch: frozenset[int] | None = None) -> None:
        self.pid = server_pid
        self.wall, self.client = time.perf_counter(), time.process_time()
        self.server = cpu_seconds(server_pid) if server_pid else 0.0
        self.loop = cpu_seconds(server_pid, server_pid) if server_pid else 0.0
        self.watch = watch
        self.ticks = idle_ticks(watch) if watch else (0, 0)

    def done(self, result: dict[str, float]) -> dict[str, float]:
        wall = time.perf_counter() - self.wall
        result["client_cores"] = round((time.process_time() - self.client) / wall, 2)
        if self.pid:
            result["server_cores"] = round((cpu_seconds(self.pid) - self.server) / wall, 2)
            result["server_loop_cores"] = round((cpu_seconds(self.pid, self.pid) - self.loop) / wall, 2)
        if self.watch:
            idle, total = idle_ticks(self.watch)
            result["runtime_idle"] = round((idle - self.ticks[0]) / max(1, total - self.ticks[1]), 3)
        return result


def run_sequential(
    port: int, req: bytes, warmup_s: float, duration_s: float, server_pid: int | None = None
) -> dict[str, float]:
    share = CpuShare(server_pid)
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        buf = bytearray()
        lat: list[float] = []
        end_warm = time.perf_counter() + warmup_s
        while time.perf_counter() < end_warm:
            sock.sendall(req)
            _read_response(sock, buf)
        started = time.perf_counter()
        while time.perf_counter() - started < duration_s:
            t0 = time.perf_counter()
            sock.sendall(req)
            _read_response(sock, buf)
            lat.append(time.perf_counter() - t0)
        return share.done(summarize(lat, time.perf_counter() - started))


async def _worker(port: int, req: bytes, warm_until: float, stop_at: float, lat: list[float]) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        while True:
            t0 = time.perf_counter()
            if t0 >= stop_at:
                return
            writer.write(req)
            head = await reader.readuntil(b"\r\n\r\n")
            m = _LENGTH.search(head)
            await reader.readexactly(int(m.group(1)) if m else 0)
            if not head.startswith(b"HTTP/1.1 200"):
                raise RuntimeError(f"request failed: {head[:200]!r}")
            if t0 >= warm_until:
                lat.append(time.perf_counter() - t0)
    finally:
        writer.close()


def run_concurrent(
    port: int,
    req: bytes,
    concurrency: int,
    warmup_s: float,
    duration_s: float,
    server_pid: int | None = None,
    watch: frozenset[int] | None = None,
) -> dict[str, float]:
    share = CpuShare(server_pid, watch)

    async def main() -> dict[str, float]:
        lat: list[float] = []
        now = time.perf_counter()
        warm_until, stop_at = now + warmup_s, now + warmup_s + duration_s
        await asyncio.gather(*(_worker(port, req, warm_until, stop_at, lat) for _ in range(concurrency)))
        return summarize(lat, duration_s)

    try:
        import uvloop

        return share.done(uvloop.run(main()))
    except ImportError:
        return share.done(asyncio.run(main()))


def model_totals(port: int, model: str) -> tuple[int, int, int]:
    """(items, runtime calls, nanoseconds in runtime calls) a polystack server has run for ``model`` so
    far, from its statistics extension: the batch statistics count each call's compute once, where the
    request totals count it once per request the call served."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(f"GET /v2/models/{model}/stats HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode())
        stats = json.loads(_read_response(s, bytearray()).split(b"\r\n\r\n", 1)[1])["model_stats"][0]
    ns = sum(int(b["compute_infer"]["ns"]) for b in stats["batch_stats"])
    return int(stats["inference_count"]), int(stats["execution_count"]), ns


def run_computing(port: int, model: str, run: Callable[[], dict[str, float]]) -> dict[str, float]:
    """``run`` (a cell's load on a polystack server), plus what its runtime did meanwhile: the share of the
    run's time it spent in model calls (``runtime_computing``), the items/s of those calls alone
    (``compute_items_per_s``: the runtime's own speed inside the server) and the items per call."""
    before, started = model_totals(port, model), time.perf_counter()
    result = run()
    wall = time.perf_counter() - started
    items, calls, ns = (a - b for a, b in zip(model_totals(port, model), before, strict=True))
    result["runtime_computing"] = round(ns / 1e9 / wall, 3)
    result["compute_items_per_s"] = round(items / (ns / 1e9), 1) if ns else 0.0
    result["items_per_batch"] = round(items / calls, 1) if calls else 0.0
    return result


def run_tritonclient(port: int, model: str, shape: list[int], warmup_s: float, duration_s: float) -> dict[str, float]:
    import tritonclient.http as httpclient

    client = httpclient.InferenceServerClient(f"127.0.0.1:{port}")
    i = httpclient.InferInput("x", shape, "FP32")
    i.set_data_from_numpy(np.random.default_rng(0).standard_normal(shape).astype(np.float32))
    end_warm = time.perf_counter() + warmup_s
    while time.perf_counter() < end_warm:
        client.infer(model, [i])
    lat: list[float] = []
    started = time.perf_counter()
    while time.perf_counter() - started < duration_s:
        t0 = time.perf_counter()
        client.infer(model, [i])
        lat.append(time.perf_counter() - t0)
    return summarize(lat, time.perf_counter() - started)


def alternating(
    names: Sequence[str], repeats: int, run: Callable[[str, int], dict[str, float]]
) -> dict[str, list[dict[str, float]]]:
    """Each of ``names`` run ``repeats`` times side by side (``run(name, repeat)``), the order flipped each
    repeat so that neither always goes first; each name's runs, for ``median_of``."""
    runs: dict[str, list[dict[str, float]]] = {name: [] for name in names}
    for rep in range(repeats):
        for name in names if rep % 2 == 0 else list(reversed(names)):
            runs[name].append(run(name, rep))
    return runs


def median_of(runs: list[dict[str, float]]) -> dict[str, float]:
    """Each figure's median over repeated runs of one cell (requests: their total)."""
    figures = (
        "p50_ms", "p99_ms", "rps", "client_cores", "server_cores", "server_loop_cores", "runtime_idle",
        "runtime_computing", "compute_items_per_s", "items_per_batch",
    )  # fmt: skip
    keys = [k for k in figures if all(k in r for r in runs)]
    out = {k: float(np.median([r[k] for r in runs])) for k in keys}
    return {"requests": sum(r["requests"] for r in runs), **out}


def summarize(lat: list[float], elapsed_s: float) -> dict[str, float]:
    lat.sort()
    return {
        "requests": len(lat),
        "p50_ms": round(lat[len(lat) // 2] * 1000, 3),
        "p99_ms": round(lat[min(len(lat) - 1, int(len(lat) * 0.99))] * 1000, 3),
        "rps": round(len(lat) / elapsed_s, 1),
    }


# -- in-process floor ----------------------------------------------------------------------------
def in_process(home: Path, model: str, shape: list[int], duration_s: float) -> dict[str, float]:
    from polystack.engine import Engine
    from polystack.store import Store

    store = Store.at(home)
    engine = Engine(store)
    try:
        engine.load(model)
        x1 = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
        x32 = np.repeat(x1, 32, axis=0)
        for _ in range(200):
            engine.infer(model, {"x": x1})
        lat: list[float] = []
        started = time.perf_counter()
        while time.perf_counter() - started < duration_s:
            t0 = time.perf_counter()
            engine.infer(model, {"x": x1})
            lat.append(time.perf_counter() - t0)
        offline = offline_rate(engine, model, x32, duration_s)
    finally:
        engine.close()
        store.close()
    lat.sort()
    floor = {
        "p50_ms": round(lat[len(lat) // 2] * 1000, 4),
        "offline_items_per_s_b32": round(offline, 1),
        "offline_items_per_s_b32_2x1": round(offline_split(home, model, x32, duration_s), 1),
    }
    cores = placement()
    if cores is not None:
        floor["offline_items_per_s_b32_pinned"] = round(offline_pinned(home, model, x32, duration_s, cores[1]), 1)
    return floor


def offline_rate(engine: Any, model: str, batch: np.ndarray, duration_s: float) -> float:
    """Items/s of back-to-back ``engine.infer`` calls on ``batch`` from this thread for ``duration_s``."""
    n = 0
    started = time.perf_counter()
    while time.perf_counter() - started < duration_s:
        engine.infer(model, {"x": batch})
        n += len(batch)
    return n / (time.perf_counter() - started)


def offline_split(home: Path, model: str, x32: np.ndarray, duration_s: float) -> float:
    """Offline items/s at batch 32 from two threads on one model set up for 2 instances x 1 thread."""
    from polystack.engine import Engine, default_spec, with_concurrency
    from polystack.store import Store

    store = Store.at(home)
    engine = Engine(store)
    try:
        record = store.get(model)
        engine.load(model, with_concurrency(default_spec(store, record), 1, 2))
        for _ in range(50):
            engine.infer(model, {"x": x32})
        counts = [0, 0]
        stop_at = time.perf_counter() + duration_s

        def work(i: int) -> None:
            while time.perf_counter() < stop_at:
                engine.infer(model, {"x": x32})
                counts[i] += 32

        started = time.perf_counter()
        threads = [threading.Thread(target=work, args=(i,)) for i in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        return sum(counts) / (time.perf_counter() - started)
    finally:
        engine.close()
        store.close()


def offline_pinned(home: Path, model: str, x32: np.ndarray, duration_s: float, cpus: frozenset[int]) -> float:
    """Offline items/s at batch 32 on the runtime cores alone, one thread per core: what a server started
    with ``--runtime-cpus`` gives its runtime (the same thread count: one per runtime core)."""
    from polystack.engine import Engine, default_spec, with_concurrency
    from polystack.store import Store

    before = os.sched_getaffinity(0)
    os.sched_setaffinity(0, cpus)  # the runtime's threads start on (and inherit) these cores
    store = Store.at(home)
    engine = Engine(store)
    try:
        engine.load(model, with_concurrency(default_spec(store, store.get(model)), len(cpus), 1))
        for _ in range(50):
            engine.infer(model, {"x": x32})
        return offline_rate(engine, model, x32, duration_s)
    finally:
        engine.close()
        store.close()
        os.sched_setaffinity(0, before)


def run_pinned_cells(
    home: Path, name: str, model: Path, shape: list[int], work: Path, cores: tuple[frozenset[int], frozenset[int]],
    warmup: float, duration: float, repeats: int,
) -> list[dict[str, Any]]:  # fmt: skip
    """The server started with --frontend-cpus/--runtime-cpus, the client on the front-end cores: the
    runtime keeps its cores to itself, as it would with the clients on other machines. Then the batch-1
    cells against two reference servers on the same cores: one that only answers, one that only batches."""
    from polystack.server.placement import format_cpu_list

    front, runtime = cores
    extra = ("--frontend-cpus", format_cpu_list(front), "--runtime-cpus", format_cpu_list(runtime))
    rows: list[dict[str, Any]] = []

    def batch1_rows(server: str, port: int, pid: int, watch: frozenset[int] | None) -> None:
        """The batch-1 JSON cells against a reference server on the same cores."""
        for items, conc, binary in PINNED_CELLS:
            if binary:
                continue
            req = request_bytes(name, shape, port)
            r = median_of([run_concurrent(port, req, conc, warmup, duration, pid, watch) for _ in range(repeats)])
            row = {"model": name, "server": server, "batching": True, "concurrency": conc,
                   "client": "raw-http-json", "items_per_request": items, **r}  # fmt: skip
            rows.append(row)
            print(json.dumps(row), flush=True)

    proc, port = start_polystack(home, name, True, work, extra)
    before = os.sched_getaffinity(0)
    os.sched_setaffinity(0, front)
    try:
        for items, conc, binary in PINNED_CELLS:
            req = request_bytes(name, [items, *shape[1:]], port, binary=binary)
            r = median_of(
                [
                    run_computing(port, name, partial(run_concurrent, port, req, conc, warmup, duration, proc.pid, runtime))
                    for _ in range(repeats)
                ]
            )
            client = f"raw-http-binary-b{items}" if binary else "raw-http-json"
            row = {"model": name, "server": "polystack pinned", "batching": True, "concurrency": conc,
                   "client": client, "items_per_request": items, **r}  # fmt: skip
            rows.append(row)
            print(json.dumps(row), flush=True)
        # the same batch-1 cells against a server that only answers (polystack's own answer, canned) on the
        # same front-end core: the ceiling the client and the transport leave any server written this way
        with socket.create_connection(("127.0.0.1", port)) as s:
            s.sendall(request_bytes(name, shape, port))
            answer = _read_response(s, bytearray()).split(b"\r\n\r\n", 1)[1]
        bare, bare_port = start_bare_server(answer, front, work)
        try:
            batch1_rows("bare (canned answer)", bare_port, bare.pid, None)
        finally:
            stop(bare)
        minimal, minimal_port = start_minimal_server(model, cores, work)
        try:
            with socket.create_connection(("127.0.0.1", minimal_port)) as s:
                s.sendall(request_bytes(name, shape, minimal_port))
                mine = _read_response(s, bytearray()).split(b"\r\n\r\n", 1)[1]
            # the same numbers as polystack's answer, or it is not doing the same work
            got, want = (np.asarray(json.loads(a)["outputs"][0]["data"]) for a in (mine, answer))
            if not np.allclose(got, want, rtol=1e-4, atol=1e-5):
                raise RuntimeError(f"the minimal server's answer differs from polystack's: {mine[:200]!r}")
            batch1_rows("minimal (python, batching)", minimal_port, minimal.pid, runtime)
        finally:
            stop(minimal)
    finally:
        os.sched_setaffinity(0, before)
        stop(proc)
    return rows


# -- the run -------------------------------------------------------------------------------------
def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="1 s per cell")
    ap.add_argument("--duration-s", type=float, default=4.0)
    ap.add_argument("--warmup-s", type=float, default=1.0)
    ap.add_argument("--models", default="mlp,cnn")
    ap.add_argument("--skip-mlserver", action="store_true")
    ap.add_argument("--repeats", type=int, default=2, help="runs per cell (medians reported)")
    args = ap.parse_args()
    duration, warmup = (1.0, 0.3) if args.quick else (args.duration_s, args.warmup_s)
    repeats = 1 if args.quick else max(1, args.repeats)
    concurrencies = (1, 8, 32)
    load_start = round(os.getloadavg()[0], 2)  # other work on the same cores skews every number
    work = Path(tempfile.mkdtemp(prefix="polystack-bench-serving-"))
    home = work / "home"
    models = {k: v for k, v in build_models(work).items() if k in args.models.split(",")}
    for name, (path, _) in models.items():
        subprocess.run(
            [str(ROOT / ".venv" / "bin" / "polystack"), "--home", str(home), "register", str(path), "--name", name],
            check=True,
            stdout=subprocess.DEVNULL,
        )
    venv = None if args.skip_mlserver else ensure_mlserver_venv()
    rows: list[dict[str, Any]] = []
    floors: dict[str, Any] = {}
    for name, (path, shape) in models.items():
        floors[name] = in_process(home, name, shape, duration)
        print(f"{name} in-process: {floors[name]}", flush=True)
        for batching in (False, True):
            # both servers up at once and their cells interleaved (order flipped each repeat): drift on
            # the shared cores then hits both sides of every ratio alike
            procs: dict[str, tuple[subprocess.Popen[bytes], int]] = {}
            try:
                procs["polystack"] = start_polystack(home, name, batching, work)
                if venv is not None:
                    procs["mlserver"] = start_mlserver(venv, name, path, batching, work)
                for c in concurrencies:
                    runs: dict[str, list[dict[str, float]]] = {server: [] for server in procs}
                    for rep in range(repeats):
                        order = list(procs) if rep % 2 == 0 else list(reversed(procs))
                        for server in order:
                            proc, port = procs[server]
                            req = request_bytes(name, shape, port)
                            if c == 1:
                                runs[server].append(run_sequential(port, req, warmup, duration, proc.pid))
                            else:
                                runs[server].append(run_concurrent(port, req, c, warmup, duration, proc.pid))
                    for server, results in runs.items():
                        row = {"model": name, "server": server, "batching": batching, "concurrency": c,
                               "client": "raw-http-json", **median_of(results)}  # fmt: skip
                        rows.append(row)
                        print(json.dumps(row), flush=True)
                if batching:
                    # multi-item binary requests: 8-item ones the batcher merges 4 to a batch of 32, and
                    # 32-item ones already at the batch size of the in-process Offline figure; the same again
                    # with the runtime split into two instances of one thread (what `tune --profile server`
                    # picks for some models): a worker never waits on the other's runtime threads
                    procs["polystack 2x1"] = start_polystack(home, name, batching, work, SPLIT)
                    for server in ("polystack", "polystack 2x1"):
                        proc, port = procs[server]
                        for items, conc in BINARY_CELLS:
                            req = request_bytes(name, [items, *shape[1:]], port, binary=True)
                            r = median_of(
                                [run_concurrent(port, req, conc, warmup, duration, proc.pid) for _ in range(repeats)]
                            )
                            row = {"model": name, "server": server, "batching": batching, "concurrency": conc,
                                   "client": f"raw-http-binary-b{items}", "items_per_request": items, **r}  # fmt: skip
                            rows.append(row)
                            print(json.dumps(row), flush=True)
                    cores = placement()
                    if cores is not None:
                        stop(procs.pop("polystack 2x1")[0])
                        rows += run_pinned_cells(home, name, path, shape, work, cores, warmup, duration, repeats)
                else:
                    port = procs["polystack"][1]
                    r = median_of([run_tritonclient(port, name, shape, warmup, duration) for _ in range(repeats)])
                    row = {"model": name, "server": "polystack", "batching": batching, "concurrency": 1,
                           "client": "tritonclient-binary", **r}  # fmt: skip
                    rows.append(row)
                    print(json.dumps(row), flush=True)
            finally:
                for proc, _ in procs.values():
                    stop(proc)
    result = {
        "benchmark": "serving",
        "command": " ".join(["python", "bench/serving.py", *sys.argv[1:]]),
        "duration_s": duration,
        "repeats": repeats,
        "in_process": floors,
        "rows": rows,
        "ratios": ratios(rows, floors),
        **run_facts(load_start),
    }
    save(RESULTS, result, write_markdown)
    shutil.rmtree(work, ignore_errors=True)
    return 0


def _cell(rows: list[dict[str, Any]], **where: Any) -> dict[str, Any] | None:
    for r in rows:
        if all(r.get(k) == v for k, v in where.items()):
            return r
    return None


def cell_of(rows: list[dict[str, Any]], **where: Any) -> dict[str, Any]:
    """The row measured ``where`` (``way="chain", concurrency=8``): there must be one."""
    row = _cell(rows, **where)
    if row is None:
        raise KeyError(f"no row measured where {where}")
    return row


def ratios(rows: list[dict[str, Any]], floors: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for model in floors:
        ps1 = _cell(rows, model=model, server="polystack", batching=False, concurrency=1, client="raw-http-json")
        ms1 = _cell(rows, model=model, server="mlserver", batching=False, concurrency=1)
        entry: dict[str, Any] = {}
        if ps1 and ms1:
            entry["p50_c1_polystack_over_mlserver"] = round(ps1["p50_ms"] / ms1["p50_ms"], 3)
        for batching in (False, True):
            ps = _cell(rows, model=model, server="polystack", batching=batching, concurrency=32)
            ms = _cell(rows, model=model, server="mlserver", batching=batching, concurrency=32)
            if ps and ms:
                entry[f"rps_c32_{'batching' if batching else 'nobatch'}_polystack_over_mlserver"] = round(
                    ps["rps"] / ms["rps"], 2
                )
        # the better of the two in-process set-ups is the reference for every batching ratio
        offline = max(floors[model]["offline_items_per_s_b32"], floors[model].get("offline_items_per_s_b32_2x1", 0))
        single = _cell(rows, model=model, server="polystack", batching=True, concurrency=32, client="raw-http-json")
        if single is not None:
            entry["batching_items_over_offline_b32_batch1_json"] = round(single["rps"] / offline, 3)
        shared = (r for r in rows if r["model"] == model and r["server"] != "polystack pinned")
        for multi in (r for r in shared if r.get("items_per_request", 1) > 1):
            items_s = multi["rps"] * multi["items_per_request"]
            tag = (
                multi["client"].removeprefix("raw-http-")
                + f"_c{multi['concurrency']}"
                + ("_2x1" if multi["server"].endswith("2x1") else "")
            )
            entry[f"batching_items_over_offline_b32_{tag}"] = round(items_s / offline, 3)
            if "server_loop_cores" in multi:
                # the most of Offline the server could keep if its runtime threads ran at in-process
                # speed on every cycle the client and the event loop left them
                cpus = os.cpu_count() or 1
                left = (cpus - multi["client_cores"] - multi["server_loop_cores"]) / cpus
                entry[f"batching_ceiling_{tag}"] = round(left, 3)
        pinned_offline = floors[model].get("offline_items_per_s_b32_pinned")
        for r in (r for r in rows if r["model"] == model and r["server"] == "polystack pinned"):
            tag = f"{r['client'].removeprefix('raw-http-')}_c{r['concurrency']}"
            if r["client"] == "raw-http-json":
                tag = f"batch1_json_c{r['concurrency']}"
            entry[f"pinned_items_over_offline_b32_pinned_{tag}"] = round(
                r["rps"] * r["items_per_request"] / pinned_offline, 3
            )
            if r.get("compute_items_per_s"):
                # the ratio's two factors: the runtime's own speed in the server against in-process (the
                # front end's work on its neighbour core slows it), and the share of the time it computed
                entry[f"pinned_compute_speed_over_offline_{tag}"] = round(r["compute_items_per_s"] / pinned_offline, 3)
                entry[f"pinned_runtime_computing_{tag}"] = round(r["runtime_computing"], 3)
        for r in (r for r in rows if r["model"] == model and r["server"] == "bare (canned answer)"):
            # what a server that does nothing but answer reaches on the front-end core, against the same Offline
            entry[f"bare_server_over_offline_b32_pinned_batch1_json_c{r['concurrency']}"] = round(
                r["rps"] / pinned_offline, 3
            )
        for r in (r for r in rows if r["model"] == model and r["server"].startswith("minimal")):
            # what a server that does nothing but batch reaches there: the ceiling of a front end in Python
            entry[f"minimal_server_over_offline_b32_pinned_batch1_json_c{r['concurrency']}"] = round(
                r["rps"] / pinned_offline, 3
            )
        out[model] = entry
    return out


def write_markdown(result: dict[str, Any]) -> None:
    lines = [
        START,
        "## Serving (`bench/serving.py`)",
        "",
        f"Measured {result['measured_at']} on this machine ({result['machine']['cpus']} CPUs; client, server and "
        f"runtime share them), {result['duration_s']:g} s per cell. Command: `.venv/bin/{result['command']}`.",
        f"1-minute load average at start / end: {result.get('load_average_1m', {}).get('start', '?')} / "
        f"{result.get('load_average_1m', {}).get('end', '?')} (above ~1, other processes shared the 2 cores).",
        "Batch-1 JSON requests over keep-alive HTTP/1.1 from 127.0.0.1 (concurrency 1: a blocking socket loop;",
        "8 and 32: asyncio connections); `tritonclient` and `raw-http-binary-bN` rows use binary tensors (the",
        "latter N items per request). MLServer 1.7.1 runs a minimal",
        "onnxruntime MLModel in-process (`parallel_workers: 0`); both use ONNX Runtime's default threads.",
        "Batching on: polystack `--batching --max-batch-size 32 --max-queue-delay-ms 2`; MLServer adaptive",
        "batching 32 / 2 ms. Both servers run at once and their cells alternate (order flipped each repeat);",
        f"each figure is the median of {result.get('repeats', 1)} runs of the cell. Cores: CPU seconds per second of",
        "the run (warm-up included) used by the client process and by the server process, all threads; in brackets,",
        "polystack's event loop thread alone.",
        "",
        "| model | server | batching | client | concurrency | p50 ms | p99 ms | req/s | items/s | cores: client / server (loop) |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in result["rows"]:
        cores = (
            f"{r['client_cores']:.2f} / {r['server_cores']:.2f}" if "client_cores" in r and "server_cores" in r else "-"
        )
        if "server_loop_cores" in r and not r["server"].startswith(("bare", "mlserver")):
            cores += f" ({r['server_loop_cores']:.2f})"
        if "runtime_idle" in r:
            cores += f", runtime idle {r['runtime_idle']:.1%}"
        if r.get("compute_items_per_s"):
            cores += f", computing {r['runtime_computing']:.1%}, {r['items_per_batch']:.1f} items/call"
        batching = "-" if r["server"].startswith("bare") else "on" if r["batching"] else "off"  # bare: no model
        lines.append(
            f"| {r['model']} | {r['server']} | {batching} | {r['client']} | "
            f"{r['concurrency']} | {r['p50_ms']:.3f} | {r['p99_ms']:.3f} | {r['rps']:,.0f} | "
            f"{r['rps'] * r.get('items_per_request', 1):,.0f} | {cores} |"
        )
    lines += ["", "In-process floor (polystack `Engine.infer`, no transport):", ""]
    lines += [
        "| model | p50 ms at batch 1 | Offline items/s at batch 32 | the same, 2 instances x 1 thread |"
        " the same, on the runtime cores of the pinned server |",
        "|---|---|---|---|---|",
    ]
    for model, f in result["in_process"].items():
        split = f.get("offline_items_per_s_b32_2x1")
        pinned = f.get("offline_items_per_s_b32_pinned")
        lines.append(
            f"| {model} | {f['p50_ms']:.4f} | {f['offline_items_per_s_b32']:,.0f} | "
            f"{'-' if split is None else f'{split:,.0f}'} | {'-' if pinned is None else f'{pinned:,.0f}'} |"
        )
    lines += [
        "",
        "Ratios (targets: p50 at c=1 <= 0.5x MLServer; req/s at c=32 >= 2x MLServer; batching >= 0.85x Offline).",
        "Batching efficiency is items/s through the server over the better in-process Offline items/s at batch 32, for",
        "batch-1 JSON requests at concurrency 32 and for binary requests of "
        + " and ".join(f"{i} items at concurrency {c}" for i, c in BINARY_CELLS)
        + " (the batcher merges the smaller ones into batches of 32); `polystack 2x1` rows and `_2x1` ratios"
        " are a server started with `--instances 2 --threads 1`. `batching_ceiling_*` is the share of the"
        " CPUs the client and the event loop left to the runtime in that cell: what the ratio could reach"
        " if the runtime's threads ran at in-process speed on every cycle left.",
        "",
        "`polystack pinned` rows are a server started with `--frontend-cpus 0 --runtime-cpus 1` (the first core"
        " for the event loop, the others for the runtime, one thread per core) and the client pinned to the"
        " front-end core, so the runtime keeps its core as it would with clients on other machines;"
        " `pinned_items_over_offline_b32_pinned_*` divides their items/s by in-process Offline items/s at batch 32"
        " on the same runtime cores with the same threads (the last in-process column). Their `runtime idle` is"
        " the share of the runtime cores' time (from /proc/stat, warm-up included) in which nothing ran: the"
        " batch worker waiting for requests, or for the event loop to hand it the GIL; `computing` the share of"
        " the run's time the runtime spent in model calls, and `items/call` the items each call ran (both from"
        " the server's batch statistics). `pinned_compute_speed_over_offline_*` is the items/s of those calls"
        " alone over the same Offline figure: the runtime's own speed inside the server, beside a busy front-end"
        " core; times `pinned_runtime_computing_*`, it gives about the pinned ratio (the statistics count the"
        " warm-up too). `bare (canned answer)`"
        " rows are a uvloop + httptools server (what polystack's HTTP front end is built on) that answers every"
        " request with polystack's own answer to it, pinned to the front-end core beside the client: the most"
        " any server built that way could answer there, with no decoding, validation, batching or encoding"
        " (`bare_server_over_offline_*`). `minimal (python, batching)` rows are the same front end doing the"
        " least a batching server must: each request's tensor read from its JSON in C (simdjson), queued to one"
        " batch worker (32 items or 2 ms) running onnxruntime on the runtime core, each answer written with"
        " orjson, and nothing else (no validation past the input's name and type, no metrics, statistics,"
        " timeouts or logging); its answer is checked against polystack's. `minimal_server_over_offline_*` is"
        " the most a front end written in Python reaches beside this client; the rest of the way to Offline"
        " needs one that is not Python per request. Loop cores per request against the pinned polystack's"
        " are what polystack's own per-request work costs:",
        "",
    ]
    for model, entry in result["ratios"].items():
        lines.append(f"- {model}: " + ", ".join(f"{k} = {v}" for k, v in entry.items()))
    lines.append(END)
    put_section(START, END, lines)


def run_facts(load_start: float) -> dict[str, Any]:
    """What a result records of its run: the machine, when it ended, the 1-minute load average at start and end."""
    return {
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version()},
        "measured_at": time.strftime("%Y-%m-%d %H:%M:%S"),
        "load_average_1m": {"start": load_start, "end": round(os.getloadavg()[0], 2)},
    }


def measured(result: dict[str, Any], cells: str, sharing: str = ", client and server sharing them") -> str:
    """The sentence that opens a section: when, where (the CPUs, and who shares them: ``sharing``, empty for a
    benchmark in process), how (``cells``), the command and the load around it."""
    return (
        f"Measured {result['measured_at']} on this machine ({result['machine']['cpus']} CPUs{sharing}), {cells}. "
        f"Command: `.venv/bin/{result['command']}`. 1-minute load average at start / end:"
        f" {result['load_average_1m']['start']} / {result['load_average_1m']['end']}."
    )


def save(path: Path, result: dict[str, Any], write_markdown: Callable[[dict[str, Any]], None]) -> None:
    """Write a result's JSON to ``path`` and its section into BENCHMARKS.md."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2) + "\n")
    write_markdown(result)
    print(f"wrote {path} and {BENCHMARKS}")


def put_section(start: str, end: str, lines: list[str]) -> None:
    """Replace BENCHMARKS.md's section between ``start`` and ``end`` with ``lines`` (markers included),
    or append it when the file has none."""
    block = "\n".join(lines) + "\n"
    text = BENCHMARKS.read_text() if BENCHMARKS.exists() else "# Benchmarks\n\n"
    if start in text and end in text:
        text = text[: text.index(start)] + block.rstrip("\n") + text[text.index(end) + len(end) :]
    else:
        text = text.rstrip("\n") + "\n\n" + block
    BENCHMARKS.write_text(text)


if __name__ == "__main__":
    raise SystemExit(main())
