"""Sequence batching benchmark: a recurrent model whose state the server keeps (Triton's sequence batching)
against the same model served stateless, with the client sending the state and getting it back each step.

    .venv/bin/python bench/sequence.py            # about 1 minute
    .venv/bin/python bench/sequence.py --quick    # 2 s cells, one repeat, for a smoke check

One `polystack serve --model-repository DIR` process serves two folders of one recurrent cell (x FP32[64],
state h FP32[1024]: h' = tanh(x W + h U + b), y = h' V, y FP32[16]), both with max_batch_size 8 and no
queue delay:
- `cell` (stateless, `dynamic_batching`): inputs x and h, outputs y and h'. The client keeps each sequence's
  state: it sends h (zeros at the start) and reads h' back, 4 KiB each way a step (what a client does without
  sequence batching);
- `cell_seq` (`sequence_batching`, direct, a START control and the state h -> h' kept by the server): the client
  sends x with `sequence_id` (and `sequence_start` / `sequence_end`) and reads y.
Each client connection runs sequences of 32 steps, one after another, over keep-alive HTTP/1.1 with the
binary tensor extension (what tritonclient sends), at concurrency 1 and 8; the ways alternate, order
flipped each repeat; medians of the repeats. Both ways are checked to give the same y first.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import serving  # the serving benchmark's server start-up, summaries and BENCHMARKS.md sections

ROOT = serving.ROOT
RESULTS = ROOT / "bench" / "results" / "sequence.json"
START, END = "<!-- sequence:start -->", "<!-- sequence:end -->"
WAYS = ("client state", "sequence batching")
CONCURRENCY = (1, 8)
STEPS = 32  # requests a sequence
X, H, Y = 64, 1024, 16
_LENGTH = re.compile(rb"\ncontent-length: *(\d+)", re.I)  # at a line start: not Inference-Header-Content-Length
_HEADER = re.compile(rb"inference-header-content-length: *(\d+)", re.I)
_ids = itertools.count(1)

SEQ_CONFIG = """
max_batch_size: 8
sequence_batching {
  max_sequence_idle_microseconds: 5000000
  control_input [ { name: "START", control [ { kind: CONTROL_SEQUENCE_START, fp32_false_true: [ 0, 1 ] } ] } ]
  state [ { input_name: "h", output_name: "h_next", data_type: TYPE_FP32, dims: [ 1024 ] } ]
}
"""
STATELESS_CONFIG = "max_batch_size: 8\ndynamic_batching { max_queue_delay_microseconds: 0 }\n"


def cell_onnx(path: Path, with_start: bool) -> Path:
    """The recurrent cell; ``with_start``: h is multiplied by (1 - START) first (the sequence model's)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    weights = {
        "W": (rng.standard_normal((X, H)) / np.sqrt(X)).astype(np.float32),
        "U": (rng.standard_normal((H, H)) / np.sqrt(H)).astype(np.float32),
        "b": np.zeros(H, np.float32),
        "V": (rng.standard_normal((H, Y)) / np.sqrt(H)).astype(np.float32),
        "one": np.ones((), np.float32),
    }
    nodes = []
    h = "h"
    inputs = [
        helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", X]),
        helper.make_tensor_value_info("h", TensorProto.FLOAT, ["batch", H]),
    ]
    if with_start:
        inputs.append(helper.make_tensor_value_info("START", TensorProto.FLOAT, ["batch", 1]))
        nodes += [helper.make_node("Sub", ["one", "START"], ["keep"]), helper.make_node("Mul", ["h", "keep"], ["h0"])]
        h = "h0"
    nodes += [
        helper.make_node("MatMul", ["x", "W"], ["xw"]),
        helper.make_node("MatMul", [h, "U"], ["hu"]),
        helper.make_node("Add", ["xw", "hu"], ["s"]),
        helper.make_node("Add", ["s", "b"], ["sb"]),
        helper.make_node("Tanh", ["sb"], ["h_next"]),
        helper.make_node("MatMul", ["h_next", "V"], ["y"]),
    ]
    outputs = [
        helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", Y]),
        helper.make_tensor_value_info("h_next", TensorProto.FLOAT, ["batch", H]),
    ]
    graph = helper.make_graph(
        nodes, "cell", inputs, outputs, initializer=[numpy_helper.from_array(v, k) for k, v in weights.items()]
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="polystack-bench")
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save_model(model, str(path))
    return path


def repository(root: Path) -> Path:
    for name, with_start, config in (("cell", False, STATELESS_CONFIG), ("cell_seq", True, SEQ_CONFIG)):
        (root / name / "1").mkdir(parents=True)
        cell_onnx(root / name / "1" / "model.onnx", with_start)
        (root / name / "config.pbtxt").write_text(config)
    return root


def start(work: Path, repo: Path) -> tuple[subprocess.Popen[bytes], int]:
    return serving.start_repository(work, repo, "cell_seq")


def request(model: str, tensors: dict[str, bytes], parameters: dict[str, Any], port: int) -> bytes:
    """A binary-tensor infer request of FP32 inputs of one row each."""
    header = json.dumps(
        {
            "inputs": [
                {
                    "name": n,
                    "datatype": "FP32",
                    "shape": [1, len(raw) // 4],
                    "parameters": {"binary_data_size": len(raw)},
                }
                for n, raw in tensors.items()
            ],
            "parameters": {"binary_data_output": True, **parameters},
        }
    ).encode()
    body = header + b"".join(tensors.values())
    return (
        f"POST /v2/models/{model}/infer HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
        f"Content-Type: application/octet-stream\r\nInference-Header-Content-Length: {len(header)}\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode() + body


async def _call(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, req: bytes) -> dict[str, bytes]:
    """Send ``req``; the answer's binary outputs by name."""
    writer.write(req)
    head = await reader.readuntil(b"\r\n\r\n")
    body = await reader.readexactly(int(_LENGTH.search(head).group(1)))  # type: ignore[union-attr]
    if not head.startswith(b"HTTP/1.1 200"):
        raise RuntimeError(f"request failed: {head[:100]!r} {body[:300]!r}")
    size = int(_HEADER.search(head).group(1))  # type: ignore[union-attr]
    out, at = {}, size
    for o in json.loads(body[:size])["outputs"]:
        n = o["parameters"]["binary_data_size"]
        out[o["name"]] = body[at : at + n]
        at += n
    return out


async def sequence(
    way: str, port: int, xs: list[bytes], reader: Any, writer: Any, lat: list[float] | None
) -> list[bytes]:
    """One sequence of ``len(xs)`` steps; the y of each. Latencies per step into ``lat`` when given."""
    ys = []
    h = bytes(4 * H)
    sid = next(_ids)
    for step, x in enumerate(xs):
        t0 = time.perf_counter()
        if way == "client state":
            out = await _call(reader, writer, request("cell", {"x": x, "h": h}, {}, port))
            h = out["h_next"]
        else:
            flags = {"sequence_id": sid, "sequence_start": step == 0, "sequence_end": step == len(xs) - 1}
            req = request("cell_seq", {"x": x}, flags, port)
            out = await _call(reader, writer, req)
        if lat is not None:
            lat.append(time.perf_counter() - t0)
        ys.append(out["y"])
    return ys


def run_cell(
    port: int, way: str, concurrency: int, warmup_s: float, duration_s: float, pid: int, xs: list[bytes]
) -> dict[str, float]:
    share = serving.CpuShare(pid)

    async def worker(warm_until: float, stop_at: float, lat: list[float]) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            while time.perf_counter() < stop_at:
                await sequence(way, port, xs, reader, writer, lat if time.perf_counter() >= warm_until else None)
        finally:
            writer.close()

    async def main() -> dict[str, float]:
        lat: list[float] = []
        now = time.perf_counter()
        warm_until, stop_at = now + warmup_s, now + warmup_s + duration_s
        await asyncio.gather(*(worker(warm_until, stop_at, lat) for _ in range(concurrency)))
        return serving.summarize(lat, time.perf_counter() - warm_until)

    return share.done(asyncio.run(main()))


def answers(port: int, xs: list[bytes]) -> dict[str, np.ndarray]:
    async def main() -> dict[str, np.ndarray]:
        out = {}
        for way in WAYS:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            out[way] = np.frombuffer(b"".join(await sequence(way, port, xs, reader, writer, None)), np.float32)
            writer.close()
        return out

    return asyncio.run(main())


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="2 s cells, one repeat")
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    warmup_s, duration_s, repeats = (0.5, 2.0, 1) if args.quick else (1.0, 6.0, max(1, args.repeats))
    load_start = round(os.getloadavg()[0], 2)
    work = Path(tempfile.mkdtemp(prefix="polystack-bench-sequence-"))
    repo = repository(work / "models")
    rng = np.random.default_rng(1)
    xs = [rng.standard_normal((1, X)).astype(np.float32).tobytes() for _ in range(STEPS)]
    proc, port = start(work, repo)
    rows: list[dict[str, Any]] = []
    try:
        got = answers(port, xs)
        np.testing.assert_allclose(got["client state"], got["sequence batching"], rtol=1e-4, atol=1e-5)
        for concurrency in CONCURRENCY:

            def one(way: str, _: int, c: int = concurrency) -> dict[str, float]:
                return run_cell(port, way, c, warmup_s, duration_s, proc.pid, xs)

            runs = serving.alternating(WAYS, repeats, one)
            for way, results in runs.items():
                row = {"way": way, "concurrency": concurrency, **serving.median_of(results)}
                rows.append(row)
                print(json.dumps(row), flush=True)
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/v2/models/cell_seq/stats", timeout=10) as r:
            stats = json.load(r)["model_stats"][0]
    finally:
        serving.stop(proc)
    executions, inferences = stats["execution_count"], stats["inference_count"]
    result = {
        "benchmark": "sequence",
        "command": " ".join(["python", "bench/sequence.py", *sys.argv[1:]]),
        "seconds_per_cell": duration_s,
        "repeats": repeats,
        "steps_per_sequence": STEPS,
        "rows": rows,
        "sequence_rows_per_execution": round(inferences / max(executions, 1), 2),
        "ratios": {
            f"c{c}": {
                "p50_sequence_over_client_state": round(
                    serving.cell_of(rows, way="sequence batching", concurrency=c)["p50_ms"]
                    / serving.cell_of(rows, way="client state", concurrency=c)["p50_ms"],
                    2,
                ),
                "steps_per_s_sequence_over_client_state": round(
                    serving.cell_of(rows, way="sequence batching", concurrency=c)["rps"]
                    / serving.cell_of(rows, way="client state", concurrency=c)["rps"],
                    2,
                ),
            }
            for c in CONCURRENCY
        },
        **serving.run_facts(load_start),
    }
    serving.save(RESULTS, result, write_markdown)
    shutil.rmtree(work, ignore_errors=True)
    return 0


def write_markdown(result: dict[str, Any]) -> None:
    lines = [
        START,
        "## Sequence batching (`bench/sequence.py`)",
        "",
        serving.measured(result, f"{result['seconds_per_cell']:g} s per cell, median of {result['repeats']} runs"),
        "A recurrent cell (x FP32[64], state FP32[1024], y FP32[16]; two MatMuls of 64x1024 and 1024x1024) served by"
        " one `polystack serve --model-repository DIR`, max_batch_size 8 and no queue delay both ways: `client"
        " state`, the cell stateless under dynamic batching, the client sending each sequence's state and reading"
        " it back (4 KiB each way a step); `sequence batching`, the cell with a START control and its state kept"
        f" by the server (`sequence_batching`, direct). Each connection runs sequences of {result['steps_per_sequence']}"
        " steps back to back over keep-alive HTTP/1.1 with binary tensors; a row's latency is one step's.",
        "",
        "| way | concurrency | p50 ms | p99 ms | steps/s | cores: client / server |",
        "|---|---|---|---|---|---|",
    ]
    for r in result["rows"]:
        lines.append(
            f"| {r['way']} | {r['concurrency']} | {r['p50_ms']:.3f} | {r['p99_ms']:.3f} | {r['rps']:,.0f} |"
            f" {r['client_cores']:.2f} / {r['server_cores']:.2f} |"
        )
    lines += [
        "",
        "Sequence batching over client state: "
        + "; ".join(
            f"concurrency {c[1:]}: p50 {v['p50_sequence_over_client_state']},"
            f" throughput {v['steps_per_s_sequence_over_client_state']}"
            for c, v in result["ratios"].items()
        )
        + f". The sequence model ran {result['sequence_rows_per_execution']} rows (sequences) a call on average,"
        " warm-up and the check included.",
        END,
    ]
    serving.put_section(START, END, lines)


if __name__ == "__main__":
    raise SystemExit(main())
