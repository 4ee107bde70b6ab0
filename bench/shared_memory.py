"""Shared memory benchmark: when does passing tensors in /dev/shm beat sending them over HTTP?

    .venv/bin/python bench/shared_memory.py            # about 3 minutes
    .venv/bin/python bench/shared_memory.py --quick    # 1 s per cell, for a smoke check

One `polystack serve --allow-shared-memory --no-batching` process serves an ONNX Identity model on
FP32 [1, N] (the runtime does almost nothing, so what is measured is moving the tensor). The same
asyncio client, from 127.0.0.1, sends each tensor size two ways at the same concurrency:
- binary: the binary tensor extension (what tritonclient sends by default), the input in the
  request body and the output in the response body;
- shm: the system shared memory extension, each connection with its own region holding its input
  and receiving its output; only the JSON header crosses the socket.
Sizes 64 KiB, 1 MiB and 8 MiB; cells alternate (order flipped each repeat) and medians are kept.
Results go to bench/results/shared_memory.json and a table into BENCHMARKS.md (between markers).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from multiprocessing import shared_memory
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import serving  # the serving benchmark's server start-up, client loop and summaries

ROOT = serving.ROOT
RESULTS = ROOT / "bench" / "results" / "shared_memory.json"
START, END = "<!-- shared-memory:start -->", "<!-- shared-memory:end -->"
SIZES = (64 << 10, 1 << 20, 8 << 20)  # bytes per tensor
CONCURRENCY = 4


def identity_onnx(path: Path) -> Path:
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("Identity", ["x"], ["y"])],
        "identity",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", "n"])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", "n"])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save_model(model, str(path))
    return path


def http_post(port: int, path: str, doc: dict[str, Any]) -> None:
    import http.client

    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        conn.request("POST", path, json.dumps(doc), {"Content-Type": "application/json"})
        resp = conn.getresponse()
        body = resp.read()
        if resp.status != 200:
            raise RuntimeError(f"{path}: {resp.status} {body[:300]!r}")
    finally:
        conn.close()


def shm_requests(port: int, size: int, objects: list[shared_memory.SharedMemory]) -> list[bytes]:
    """One region a connection, holding its input (first half) and receiving its output (second half)."""
    x = np.random.default_rng(0).standard_normal(size // 4).astype(np.float32)
    reqs = []
    for k in range(CONCURRENCY):
        obj = shared_memory.SharedMemory(name=f"polystack-bench-{os.getpid()}-{size}-{k}", create=True, size=2 * size)
        objects.append(obj)
        obj.buf[:size] = x.tobytes()
        region = f"r{size}-{k}"
        http_post(
            port, f"/v2/systemsharedmemory/region/{region}/register", {"key": "/" + obj.name, "byte_size": 2 * size}
        )
        body = json.dumps(
            {
                "inputs": [
                    {
                        "name": "x", "datatype": "FP32", "shape": [1, size // 4],
                        "parameters": {"shared_memory_region": region, "shared_memory_byte_size": size},
                    }
                ],
                "outputs": [
                    {
                        "name": "y",
                        "parameters": {
                            "shared_memory_region": region, "shared_memory_byte_size": size,
                            "shared_memory_offset": size,
                        },
                    }
                ],
            }
        )  # fmt: skip
        reqs.append(
            (
                f"POST /v2/models/identity/infer HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
                f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n{body}"
            ).encode()
        )
    return reqs


def run_cell(port: int, reqs: list[bytes], warmup: float, duration: float, pid: int) -> dict[str, float]:
    """``serving.run_concurrent``'s loop, with each connection sending its own request."""
    share = serving.CpuShare(pid)

    async def main() -> dict[str, float]:
        lat: list[float] = []
        now = time.perf_counter()
        warm_until, stop_at = now + warmup, now + warmup + duration
        await asyncio.gather(*(serving._worker(port, r, warm_until, stop_at, lat) for r in reqs))
        return serving.summarize(lat, duration)

    import uvloop

    return share.done(uvloop.run(main()))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="1 s per cell")
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    duration, warmup, repeats = (1.0, 0.3, 1) if args.quick else (4.0, 1.0, max(1, args.repeats))
    load_start = round(os.getloadavg()[0], 2)
    work = Path(tempfile.mkdtemp(prefix="polystack-bench-shm-"))
    home = work / "home"
    subprocess.run(
        [str(ROOT / ".venv" / "bin" / "polystack"), "--home", str(home), "register",
         str(identity_onnx(work / "identity.onnx")), "--name", "identity"],
        check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    proc, port = serving.start_polystack(home, "identity", False, work, ("--allow-shared-memory",))
    objects: list[shared_memory.SharedMemory] = []
    rows: list[dict[str, Any]] = []
    try:
        for size in SIZES:
            binary = [serving.request_bytes("identity", [1, size // 4], port, binary=True)] * CONCURRENCY
            ways = {"binary": binary, "shm": shm_requests(port, size, objects)}

            def one(way: str, _: int, ways: dict[str, Any] = ways) -> dict[str, float]:
                return run_cell(port, ways[way], warmup, duration, proc.pid)

            runs = serving.alternating(list(ways), repeats, one)
            for way, results in runs.items():
                r = serving.median_of(results)
                row = {"bytes": size, "way": way, "concurrency": CONCURRENCY, **r,
                       "mib_per_s": round(r["rps"] * size / (1 << 20), 1)}  # fmt: skip
                rows.append(row)
                print(json.dumps(row), flush=True)
    finally:
        serving.stop(proc)
        for obj in objects:
            obj.close()
            obj.unlink()
    result = {
        "benchmark": "shared_memory",
        "command": " ".join(["python", "bench/shared_memory.py", *sys.argv[1:]]),
        "duration_s": duration,
        "repeats": repeats,
        "rows": rows,
        "shm_over_binary_rps": {
            str(size): round(_rps(rows, size, "shm") / _rps(rows, size, "binary"), 2) for size in SIZES
        },
        **serving.run_facts(load_start),
    }
    serving.save(RESULTS, result, write_markdown)
    shutil.rmtree(work, ignore_errors=True)
    return 0


def _rps(rows: list[dict[str, Any]], size: int, way: str) -> float:
    return next(float(r["rps"]) for r in rows if r["bytes"] == size and r["way"] == way)


def write_markdown(result: dict[str, Any]) -> None:
    lines = [
        START,
        "## Shared memory (`bench/shared_memory.py`)",
        "",
        serving.measured(result, f"{result['duration_s']:g} s per cell, median of {result['repeats']} runs"),
        "An ONNX Identity model on FP32 [1, N] served by `polystack serve --allow-shared-memory --no-batching`;"
        f" {CONCURRENCY} asyncio connections from 127.0.0.1 send each tensor with the binary tensor extension"
        " (input in the request body, output in the response body) or through the system shared memory extension"
        " (each connection's own region; only the JSON header crosses the socket). Cores: CPU seconds per second"
        " used by the client and by the server (in brackets, its event loop).",
        "",
        "| tensor | way | p50 ms | p99 ms | req/s | MiB/s each way | cores: client / server (loop) |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in result["rows"]:
        lines.append(
            f"| {r['bytes'] // 1024:,} KiB | {r['way']} | {r['p50_ms']:.3f} | {r['p99_ms']:.3f} | {r['rps']:,.0f} | "
            f"{r['mib_per_s']:,.0f} | {r['client_cores']:.2f} / {r['server_cores']:.2f} ({r['server_loop_cores']:.2f}) |"
        )
    lines += [
        "",
        "Requests/s through shared memory over binary, by tensor size: "
        + ", ".join(f"{int(k) // 1024:,} KiB: {v}" for k, v in result["shm_over_binary_rps"].items())
        + ".",
        END,
    ]
    serving.put_section(START, END, lines)


if __name__ == "__main__":
    raise SystemExit(main())
