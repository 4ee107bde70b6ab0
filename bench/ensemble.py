"""Ensemble benchmark: one request to a served ensemble against the client chaining its two models itself.

    .venv/bin/python bench/ensemble.py            # about 2 minutes
    .venv/bin/python bench/ensemble.py --quick    # 2 s cells, one repeat, for a smoke check

One `polystack serve --model-repository DIR --no-batching` process serves a Triton repository of three
folders: `pre` (MLP 256-1024-64, input x, output y), `post` (MLP 64-10, input h, output z) and the ensemble
`pipe` (IN -> pre -> post -> OUT). The same client, from 127.0.0.1, over keep-alive connections with the
binary tensor extension (what tritonclient sends), gets OUT for a [1, 256] input in two ways:
- chain: a request to `pre`, then one to `post` with the y it got back (what a client does without ensembles:
  two round trips, the intermediate tensor through the client);
- ensemble: one request to `pipe` (the server runs both steps, the intermediate tensor stays in it).
At concurrency 1 and 8, alternating the ways, order flipped each repeat; medians of the repeats. Both ways
are checked to give the same OUT first.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import serving  # the serving benchmark's server start-up, summaries and BENCHMARKS.md sections

ROOT = serving.ROOT
RESULTS = ROOT / "bench" / "results" / "ensemble.json"
START, END = "<!-- ensemble:start -->", "<!-- ensemble:end -->"
WAYS = ("chain", "ensemble")
CONCURRENCY = (1, 8)
_LENGTH = re.compile(rb"\ncontent-length: *(\d+)", re.I)  # at a line start: not Inference-Header-Content-Length
_HEADER = re.compile(rb"inference-header-content-length: *(\d+)", re.I)
PIPE = """
platform: "ensemble"
max_batch_size: 8
input [ { name: "IN", data_type: TYPE_FP32, dims: [ 256 ] } ]
output [ { name: "OUT", data_type: TYPE_FP32, dims: [ 10 ] } ]
ensemble_scheduling { step [
  { model_name: "pre", input_map { key: "x" value: "IN" }, output_map { key: "y" value: "MID" } },
  { model_name: "post", input_map { key: "h" value: "MID" }, output_map { key: "z" value: "OUT" } }
] }
"""


def repository(root: Path) -> Path:
    from polystack.examples import mlp_onnx

    for name, sizes, names in (("pre", (256, 1024, 64), ("x", "y")), ("post", (64, 10), ("h", "z"))):
        (root / name / "1").mkdir(parents=True)
        mlp_onnx(
            root / name / "1" / "model.onnx", sizes=sizes, seed=len(name), input_name=names[0], output_name=names[1]
        )
    (root / "pipe" / "1").mkdir(parents=True)
    (root / "pipe" / "config.pbtxt").write_text(PIPE)
    return root


def start(work: Path, repo: Path) -> tuple[subprocess.Popen[bytes], int]:
    """``polystack serve`` of the repository, ready when this returns (the ensemble's readiness)."""
    return serving.start_repository(work, repo, "pipe", ["--no-batching"])


def request(model: str, tensor: str, raw: bytes, rows: int, port: int) -> bytes:
    """A binary-tensor infer request of one FP32 input [rows, n] whose bytes are ``raw``."""
    header = json.dumps(
        {
            "inputs": [
                {"name": tensor, "datatype": "FP32", "shape": [rows, len(raw) // 4 // rows],
                 "parameters": {"binary_data_size": len(raw)}}
            ],
            "parameters": {"binary_data_output": True},
        }
    ).encode()  # fmt: skip
    return (
        (
            f"POST /v2/models/{model}/infer HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
            f"Content-Type: application/octet-stream\r\nInference-Header-Content-Length: {len(header)}\r\n"
            f"Content-Length: {len(header) + len(raw)}\r\n\r\n"
        ).encode()
        + header
        + raw
    )


async def _call(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, req: bytes) -> bytes:
    """Send ``req``; the one binary output of the answer."""
    writer.write(req)
    head = await reader.readuntil(b"\r\n\r\n")
    if not head.startswith(b"HTTP/1.1 200"):
        raise RuntimeError(f"request failed: {head[:200]!r}")
    body = await reader.readexactly(int(_LENGTH.search(head).group(1)))  # type: ignore[union-attr]
    m = _HEADER.search(head)
    return body[int(m.group(1)) :] if m else body


def ways(port: int, x: bytes) -> dict[str, Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[bytes]]]:
    first, whole = request("pre", "x", x, 1, port), request("pipe", "IN", x, 1, port)

    async def chain(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bytes:
        mid = await _call(reader, writer, first)
        return await _call(reader, writer, request("post", "h", mid, 1, port))

    async def ensemble(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bytes:
        return await _call(reader, writer, whole)

    return {"chain": chain, "ensemble": ensemble}


def run_cell(port: int, way: Any, concurrency: int, warmup_s: float, duration_s: float, pid: int) -> dict[str, float]:
    share = serving.CpuShare(pid)

    async def worker(warm_until: float, stop_at: float, lat: list[float]) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            while (t0 := time.perf_counter()) < stop_at:
                await way(reader, writer)
                if t0 >= warm_until:
                    lat.append(time.perf_counter() - t0)
        finally:
            writer.close()

    async def main() -> dict[str, float]:
        lat: list[float] = []
        now = time.perf_counter()
        warm_until, stop_at = now + warmup_s, now + warmup_s + duration_s
        await asyncio.gather(*(worker(warm_until, stop_at, lat) for _ in range(concurrency)))
        return serving.summarize(lat, duration_s)

    return share.done(asyncio.run(main()))


def answers(port: int, x: bytes) -> dict[str, np.ndarray]:
    async def main() -> dict[str, np.ndarray]:
        out = {}
        for name, way in ways(port, x).items():
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            out[name] = np.frombuffer(await way(reader, writer), np.float32)
            writer.close()
        return out

    return asyncio.run(main())


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="2 s cells, one repeat")
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    warmup_s, duration_s, repeats = (0.5, 2.0, 1) if args.quick else (1.0, 8.0, max(1, args.repeats))
    load_start = round(os.getloadavg()[0], 2)
    work = Path(tempfile.mkdtemp(prefix="polystack-bench-ensemble-"))
    repo = repository(work / "models")
    x = np.random.default_rng(0).standard_normal((1, 256)).astype(np.float32).tobytes()
    proc, port = start(work, repo)
    rows: list[dict[str, Any]] = []
    try:
        got = answers(port, x)
        np.testing.assert_allclose(got["chain"], got["ensemble"], rtol=1e-6)
        for concurrency in CONCURRENCY:

            def one(name: str, _: int, c: int = concurrency) -> dict[str, float]:
                return run_cell(port, ways(port, x)[name], c, warmup_s, duration_s, proc.pid)

            runs = serving.alternating(WAYS, repeats, one)
            for name, results in runs.items():
                row = {"way": name, "concurrency": concurrency, **serving.median_of(results)}
                rows.append(row)
                print(json.dumps(row), flush=True)
    finally:
        serving.stop(proc)
    result = {
        "benchmark": "ensemble",
        "command": " ".join(["python", "bench/ensemble.py", *sys.argv[1:]]),
        "seconds_per_cell": duration_s,
        "repeats": repeats,
        "rows": rows,
        "ratios": {
            f"c{c}": {
                "p50_ensemble_over_chain": round(
                    serving.cell_of(rows, way="ensemble", concurrency=c)["p50_ms"]
                    / serving.cell_of(rows, way="chain", concurrency=c)["p50_ms"],
                    2,
                ),
                "rps_ensemble_over_chain": round(
                    serving.cell_of(rows, way="ensemble", concurrency=c)["rps"]
                    / serving.cell_of(rows, way="chain", concurrency=c)["rps"],
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
        "## Ensembles (`bench/ensemble.py`)",
        "",
        serving.measured(result, f"{result['seconds_per_cell']:g} s per cell, median of {result['repeats']} runs"),
        "`polystack serve --model-repository DIR --no-batching` of `pre` (MLP 256-1024-64), `post` (MLP 64-10) and"
        " the ensemble `pipe` running one, then the other. Keep-alive connections from 127.0.0.1 send"
        " binary-tensor requests of one row: `chain`, a request to `pre` and then one to `post` with what it"
        " answered (the client chaining the models); `ensemble`, one request to `pipe`. A row's latency is the"
        " whole pipeline's.",
        "",
        "| way | concurrency | p50 ms | p99 ms | pipelines/s | cores: client / server |",
        "|---|---|---|---|---|---|",
    ]
    for r in result["rows"]:
        lines.append(
            f"| {r['way']} | {r['concurrency']} | {r['p50_ms']:.3f} | {r['p99_ms']:.3f} | {r['rps']:,.0f} |"
            f" {r['client_cores']:.2f} / {r['server_cores']:.2f} |"
        )
    lines += [
        "",
        "Ensemble over chain: "
        + "; ".join(
            f"concurrency {c[1:]}: p50 {v['p50_ensemble_over_chain']}, throughput {v['rps_ensemble_over_chain']}"
            for c, v in result["ratios"].items()
        )
        + ".",
        END,
    ]
    serving.put_section(START, END, lines)


if __name__ == "__main__":
    raise SystemExit(main())
