"""Where a lone request's time goes: the serving benchmark's concurrency-1 request, phase by phase, in process.

    .venv/bin/python bench/lone_request.py            # about 30 seconds
    .venv/bin/python bench/lone_request.py --quick    # fewer requests, for a smoke check

Why: issue 5's target for concurrency 1 (polystack's p50 <= 0.5x MLServer's) is missed by a few percent on the
serving benchmark's MLP, and a minimal uvloop + httptools + simdjson + orjson server answering the same request
with the same ONNX Runtime call took 0.29 ms against polystack's 0.48-0.53 ms (the model run on the loop in both;
2026-12-07). Both make the same three system calls a request (one read, one write, one epoll wait: strace), and a
bare server's canned answer takes 0.08 ms through the same client: what is left is the Python on the loop around the
model's run, which costs 2-4 times what it does back to back, as the run (5 MB of weights) leaves the caches cold
for it (``bench/wakeup.py`` shows the same for a loop that idles between requests).

Each request of one connection goes through polystack's HTTP front end in process, with no socket
(``wakeup.FakeTransport``), to the serving benchmark's MLP 256-1024-1024-10 (ONNX Runtime, default threads) served
without batching and run on the loop, as a lone request is at concurrency 1 (``inline_max_ms`` raised so that it
always is: the MLP's compute sits near the default 0.2 ms). Named functions are wrapped to time each phase
(inclusive wall time, median over the requests); a name that is gone fails the run. ``minimal`` is the same request
answered the least a JSON server can, from its body (no HTTP parsing, no write): simdjson's parse, the tensor built
with numpy, the same runtime call, the answer written with orjson; each runtime call between two such answers, as
polystack's are. The difference between the two
totals is polystack's own per-request work under serving's cache conditions.

Results: bench/results/lone_request.json and a section of BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import inspect
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import serving  # the serving benchmark's models, request bytes and BENCHMARKS.md writer
from wakeup import FakeTransport  # polystack's HTTP front end in process, with no socket

RESULTS = serving.ROOT / "bench" / "results" / "lone_request.json"
START, END = "<!-- lone-request:start -->", "<!-- lone-request:end -->"
MODEL = "mlp"


def phases() -> list[tuple[str, Any, str]]:
    """(phase, owner, attribute): what is timed, outermost first."""
    from onnxruntime.capi.onnxruntime_inference_collection import Session

    from polystack.backends.onnxruntime import OnnxRuntimeModel
    from polystack.protocol import http_codec
    from polystack.server import dataplane, http, http_connection

    return [
        ("HTTP parse and dispatch (data_received)", http_connection.HttpProtocol, "data_received"),
        ("the request's task (HttpProtocol._finish)", http_connection.HttpProtocol, "_finish"),
        ("JSON decode (decode_infer_request)", http_codec, "decode_infer_request"),
        ("the data plane (DataPlane.infer_model)", dataplane.DataPlane, "infer_model"),
        ("routing, statistics, metrics, checks (DataPlane._run_on)", dataplane.DataPlane, "_run_on"),
        ("the backend (OnnxRuntimeModel.infer)", OnnxRuntimeModel, "infer"),
        ("ONNX Runtime (Session.run)", Session, "run"),
        ("JSON encode (http._encoded)", http, "_encoded"),
        ("the write (HttpProtocol._send)", http_connection.HttpProtocol, "_send"),
    ]


def timed(fn: Callable[..., Any], times: list[int], on: list[bool]) -> Callable[..., Any]:
    if inspect.iscoroutinefunction(fn):

        async def wrapped_async(*args: Any, **kwargs: Any) -> Any:
            t0 = time.perf_counter_ns()
            try:
                return await fn(*args, **kwargs)
            finally:
                if on[0]:
                    times.append(time.perf_counter_ns() - t0)

        return wrapped_async

    def wrapped(*args: Any, **kwargs: Any) -> Any:
        t0 = time.perf_counter_ns()
        try:
            return fn(*args, **kwargs)
        finally:
            if on[0]:
                times.append(time.perf_counter_ns() - t0)

    return wrapped


def polystack_phases(home: Path, row_shape: list[int], requests: int, warmup: int) -> dict[str, Any]:
    import uvloop

    from polystack.engine import Engine
    from polystack.server.app import ServeConfig, Server
    from polystack.server.http_connection import HttpProtocol
    from polystack.store import Store

    on = [False]
    times: dict[str, list[int]] = defaultdict(list)
    for name, owner, attr in phases():
        setattr(owner, attr, timed(getattr(owner, attr), times[name], on))
    config = ServeConfig(http_port=0, grpc_port=None, models=[MODEL], no_batching=True, inline_max_ms=50.0)
    server = Server(Engine(Store.at(home)), config)
    server.load_models()
    req = serving.request_bytes(MODEL, [1, *row_shape], 1)
    state = {"done": 0, "start": 0, "wall": 0}

    def answered(head: bytes, proto: HttpProtocol, loop: asyncio.AbstractEventLoop, end: asyncio.Event) -> None:
        if not head.startswith(b"HTTP/1.1 200"):
            raise RuntimeError(f"the request failed: {bytes(head[:300])!r}")
        state["done"] += 1
        if state["done"] == warmup:
            on[0], state["start"] = True, time.perf_counter_ns()
        if state["done"] < warmup + requests:
            loop.call_soon(proto.data_received, req)
        else:
            on[0], state["wall"] = False, time.perf_counter_ns() - state["start"]
            end.set()

    async def main() -> None:
        loop = asyncio.get_running_loop()
        end = asyncio.Event()
        proto = HttpProtocol(server.http)
        proto.connection_made(FakeTransport(functools.partial(answered, proto=proto, loop=loop, end=end)))  # type: ignore[arg-type]
        proto.data_received(req)
        await end.wait()

    try:
        uvloop.run(main())
    finally:
        server.plane.close()
    return {
        "request_us": round(state["wall"] / requests / 1000, 1),
        "phases_us": {name: round(statistics.median(t) / 1000, 1) for name, t in times.items() if t},
    }


def minimal(model: Path, row_shape: list[int], requests: int, warmup: int) -> dict[str, float]:
    """Microseconds a request takes answered the least a JSON server can, and its runtime call's."""
    import numpy as np
    import onnxruntime as ort
    import orjson
    import simdjson

    session = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    name, outputs = session.get_inputs()[0].name, [o.name for o in session.get_outputs()]
    req = serving.request_bytes(MODEL, [1, *row_shape], 1)
    body = req[req.index(b"\r\n\r\n") + 4 :]
    parser = simdjson.Parser()
    took, ran = [], []
    for i in range(warmup + requests):
        t0 = time.perf_counter_ns()
        doc = parser.parse(body)
        item = doc["inputs"][0]
        x = np.array(item["data"].as_list(), dtype=np.float32).reshape(item["shape"].as_list())
        del doc, item
        t1 = time.perf_counter_ns()
        y = session.run(outputs, {name: x})
        t2 = time.perf_counter_ns()
        answer = orjson.dumps(
            {
                "model_name": MODEL,
                "outputs": [
                    {"name": n, "datatype": "FP32", "shape": list(v.shape), "data": v.ravel().tolist()}
                    for n, v in zip(outputs, y, strict=True)
                ],
            }
        )
        _ = b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: %d\r\n\r\n" % len(answer) + answer
        if i >= warmup:
            took.append(time.perf_counter_ns() - t0)
            ran.append(t2 - t1)
    return {
        "request_us": round(statistics.median(took) / 1000, 1),
        "runtime_us": round(statistics.median(ran) / 1000, 1),
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="500 requests a run, one run each")
    ap.add_argument("--child", choices=("polystack", "minimal"), help=argparse.SUPPRESS)
    ap.add_argument("--home", help=argparse.SUPPRESS)
    ap.add_argument("--model-file", help=argparse.SUPPRESS)
    ap.add_argument("--shape", help=argparse.SUPPRESS)  # a request's row shape, as JSON
    ap.add_argument("--requests", type=int, default=3000)
    a = ap.parse_args()
    if a.child:
        shape = json.loads(a.shape)
        if a.child == "polystack":
            out: Any = polystack_phases(Path(a.home), shape, a.requests, max(200, a.requests // 6))
        else:
            out = minimal(Path(a.model_file), shape, a.requests, max(200, a.requests // 6))
        print(json.dumps(out))
        return 0
    requests, repeats = (500, 1) if a.quick else (a.requests, 3)
    load_start = round(os.getloadavg()[0], 2)
    with tempfile.TemporaryDirectory(prefix="lone-request-") as tmp:
        work = Path(tmp)
        path, shape = serving.build_models(work)[MODEL]
        home = work / "home"
        subprocess.run(
            [str(serving.ROOT / ".venv" / "bin" / "polystack"), "--home", str(home), "register", str(path), "--name",
             MODEL],
            check=True, capture_output=True,
        )  # fmt: skip

        def child(kind: str) -> Any:
            cmd = [sys.executable, __file__, "--child", kind, "--home", str(home), "--model-file", str(path),
                   "--shape", json.dumps(shape[1:]), "--requests", str(requests)]  # fmt: skip
            out = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
            if out.returncode != 0:
                raise RuntimeError(f"the {kind} run failed:\n{out.stderr[-3000:]}")
            return json.loads(out.stdout.strip().splitlines()[-1])

        done: dict[str, list[Any]] = {"polystack": [], "minimal": []}
        for r in range(repeats):  # each in a fresh process, alternating
            for kind in list(done) if r % 2 == 0 else list(reversed(done)):
                done[kind].append(child(kind))
        runs, minimal_runs = done["polystack"], done["minimal"]
    names = [name for name, _, _ in phases()]
    result = {
        **serving.run_facts(load_start),
        "command": "python bench/lone_request.py" + (" --quick" if a.quick else ""),
        "requests": requests,
        "repeats": repeats,
        "request_us": statistics.median(r["request_us"] for r in runs),
        "minimal_request_us": statistics.median(r["request_us"] for r in minimal_runs),
        "minimal_runtime_us": statistics.median(r["runtime_us"] for r in minimal_runs),
        "phases_us": {n: statistics.median(r["phases_us"][n] for r in runs) for n in names},
        "runs": runs,
        "minimal_runs": minimal_runs,
    }
    serving.save(RESULTS, result, write_markdown)
    return 0


def write_markdown(result: dict[str, Any]) -> None:
    phases_us = result["phases_us"]
    runtime = phases_us["ONNX Runtime (Session.run)"]
    http_parts = phases_us["HTTP parse and dispatch (data_received)"] + phases_us["the write (HttpProtocol._send)"]
    own = result["request_us"] - runtime - http_parts
    lines = [
        START,
        "## A lone request, phase by phase (`bench/lone_request.py`)",
        "",
        serving.measured(
            result,
            f"{result['requests']:,} requests a run after a warm-up, {result['repeats']} run"
            f"{'s' if result['repeats'] != 1 else ''} of each, alternating, medians",
            "",
        ),
        "polystack's HTTP front end in process (no socket), one connection, the serving benchmark's batch-1 JSON"
        " request to its MLP, run on the loop as a lone request is at concurrency 1. Each phase is the median"
        " inclusive wall time of the functions named (nested: a phase includes those below it that it calls).",
        "",
        "| phase | us (median) |",
        "|---|---|",
        f"| the whole request, polystack | {result['request_us']:g} |",
        *(f"| {name} | {us:g} |" for name, us in phases_us.items()),
        f"| the whole request, minimal (from its body: simdjson, numpy, the same runtime call, orjson) | "
        f"{result['minimal_request_us']:g} |",
        "",
        "polystack's own work around the runtime call, HTTP parsing and the write left out (the harness's callback"
        " that sends the next request in it): "
        f"{own:.0f} us a request, against"
        f" {result['minimal_request_us'] - result['minimal_runtime_us']:.0f} us for the minimal answer (each less its"
        f" runtime call's median: {runtime:g} us in polystack, {result['minimal_runtime_us']:g} us in the minimal"
        " answer's).",
        END,
    ]
    serving.put_section(START, END, lines)


if __name__ == "__main__":
    sys.exit(main())
