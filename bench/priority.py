"""Priority levels benchmark: an interactive client's latency beside bulk traffic on one model, with Triton's
priority levels in the model's config and without them.

    .venv/bin/python bench/priority.py            # about 1.5 minutes
    .venv/bin/python bench/priority.py --quick    # 2 s cells, one repeat, for a smoke check

One `polystack serve --model-repository DIR` process serves two folders of the serving benchmark's CNN
(3x32x32, 10 classes), both with max_batch_size 8 and a 1 ms queue delay:
- `cnn`: `dynamic_batching` alone, one FIFO queue;
- `cnn_prio`: the same with `priority_levels: 2` and `default_priority_level: 2`.
Bulk clients (16 keep-alive connections) send 8-image requests back to back without a priority (level 2 of
`cnn_prio`); one interactive connection sends a 1-image request every 10 ms with `priority: 1`, which `cnn`
ignores (as Triton does without levels). Both over HTTP/1.1 with the binary tensor extension. A cell is one
model under that load (or the interactive client alone, for reference); cells alternate, order flipped each
repeat; medians of the repeats. The interactive client's latency is the figure; the bulk items/s show what the
bulk traffic got meanwhile.
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
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import serving  # the serving benchmark's CNN, server start-up, summaries and BENCHMARKS.md sections

ROOT = serving.ROOT
RESULTS = ROOT / "bench" / "results" / "priority.json"
START, END = "<!-- priority:start -->", "<!-- priority:end -->"
BULK_CONNECTIONS = 16
BULK_ITEMS = 8
INTERACTIVE_EVERY_S = 0.010
CELLS = ("alone", "no priority levels", "priority levels")  # the interactive client alone; with bulk, each model
MODEL = {"alone": "cnn", "no priority levels": "cnn", "priority levels": "cnn_prio"}
_LENGTH = re.compile(rb"\ncontent-length: *(\d+)", re.I)  # at a line start: not Inference-Header-Content-Length

CONFIG = "max_batch_size: 8\ndynamic_batching { max_queue_delay_microseconds: 1000 %s}\n"
LEVELS = "priority_levels: 2 default_priority_level: 2 "


def repository(root: Path) -> Path:
    for name, extra in (("cnn", ""), ("cnn_prio", LEVELS)):
        (root / name / "1").mkdir(parents=True)
        serving.cnn_onnx(root / name / "1" / "model.onnx")
        (root / name / "config.pbtxt").write_text(CONFIG % extra)
    return root


def start(work: Path, repo: Path) -> tuple[subprocess.Popen[bytes], int]:
    return serving.start_repository(work, repo, "cnn_prio")


def request(model: str, items: int, priority: int, port: int) -> bytes:
    """A binary-tensor infer request of ``items`` random images."""
    raw = np.random.default_rng(items).standard_normal((items, 3, 32, 32)).astype(np.float32).tobytes()
    parameters: dict[str, Any] = {"binary_data_output": True}
    if priority:
        parameters["priority"] = priority
    header = json.dumps(
        {
            "inputs": [
                {
                    "name": "x",
                    "datatype": "FP32",
                    "shape": [items, 3, 32, 32],
                    "parameters": {"binary_data_size": len(raw)},
                }
            ],
            "parameters": parameters,
        }
    ).encode()
    body = header + raw
    return (
        f"POST /v2/models/{model}/infer HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
        f"Content-Type: application/octet-stream\r\nInference-Header-Content-Length: {len(header)}\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode() + body


async def _call(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, req: bytes) -> None:
    writer.write(req)
    head = await reader.readuntil(b"\r\n\r\n")
    body = await reader.readexactly(int(_LENGTH.search(head).group(1)))  # type: ignore[union-attr]
    if not head.startswith(b"HTTP/1.1 200"):
        raise RuntimeError(f"request failed: {head[:100]!r} {body[:300]!r}")


def run_cell(port: int, cell: str, warmup_s: float, duration_s: float, pid: int) -> dict[str, float]:
    model = MODEL[cell]
    bulk_req = request(model, BULK_ITEMS, 0, port)
    urgent_req = request(model, 1, 1, port)
    share = serving.CpuShare(pid)
    bulk_items = [0]

    async def bulk(warm_until: float, stop_at: float) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            while time.perf_counter() < stop_at:
                await _call(reader, writer, bulk_req)
                if time.perf_counter() >= warm_until:
                    bulk_items[0] += BULK_ITEMS
        finally:
            writer.close()

    async def interactive(warm_until: float, stop_at: float, lat: list[float]) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            next_at = time.perf_counter()
            while (now := time.perf_counter()) < stop_at:
                if now < next_at:
                    await asyncio.sleep(next_at - now)
                next_at += INTERACTIVE_EVERY_S
                t0 = time.perf_counter()
                await _call(reader, writer, urgent_req)
                if t0 >= warm_until:
                    lat.append(time.perf_counter() - t0)
        finally:
            writer.close()

    async def main() -> dict[str, float]:
        lat: list[float] = []
        now = time.perf_counter()
        warm_until, stop_at = now + warmup_s, now + warmup_s + duration_s
        loads = [] if cell == "alone" else [bulk(warm_until, stop_at) for _ in range(BULK_CONNECTIONS)]
        await asyncio.gather(interactive(warm_until, stop_at, lat), *loads)
        out = serving.summarize(lat, time.perf_counter() - warm_until)
        out["bulk_items_per_s"] = round(bulk_items[0] / duration_s, 1)
        return out

    return share.done(asyncio.run(main()))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="2 s cells, one repeat")
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    warmup_s, duration_s, repeats = (0.5, 2.0, 1) if args.quick else (1.0, 6.0, max(1, args.repeats))
    load_start = round(os.getloadavg()[0], 2)
    work = Path(tempfile.mkdtemp(prefix="polystack-bench-priority-"))
    proc, port = start(work, repository(work / "models"))
    rows: list[dict[str, Any]] = []
    try:
        runs = serving.alternating(CELLS, repeats, lambda cell, _: run_cell(port, cell, warmup_s, duration_s, proc.pid))
        for cell, results in runs.items():
            row = {"cell": cell, "model": MODEL[cell], **serving.median_of(results)}
            row["bulk_items_per_s"] = float(np.median([r["bulk_items_per_s"] for r in results]))
            rows.append(row)
            print(json.dumps(row), flush=True)
    finally:
        serving.stop(proc)
    by = {r["cell"]: r for r in rows}
    result = {
        "benchmark": "priority",
        "command": " ".join(["python", "bench/priority.py", *sys.argv[1:]]),
        "seconds_per_cell": duration_s,
        "repeats": repeats,
        "bulk_connections": BULK_CONNECTIONS,
        "bulk_items": BULK_ITEMS,
        "interactive_every_ms": INTERACTIVE_EVERY_S * 1000,
        "rows": rows,
        "ratios": {
            "interactive_p50_levels_over_none": round(
                by["priority levels"]["p50_ms"] / by["no priority levels"]["p50_ms"], 3
            ),
            "interactive_p99_levels_over_none": round(
                by["priority levels"]["p99_ms"] / by["no priority levels"]["p99_ms"], 3
            ),
            "bulk_items_levels_over_none": round(
                by["priority levels"]["bulk_items_per_s"] / max(by["no priority levels"]["bulk_items_per_s"], 1e-9), 3
            ),
        },
        **serving.run_facts(load_start),
    }
    serving.save(RESULTS, result, write_markdown)
    shutil.rmtree(work, ignore_errors=True)
    return 0


def write_markdown(result: dict[str, Any]) -> None:
    r = result["ratios"]
    lines = [
        START,
        "## Priority levels (`bench/priority.py`)",
        "",
        serving.measured(result, f"{result['seconds_per_cell']:g} s per cell, median of {result['repeats']} runs"),
        "The serving benchmark's CNN (3x32x32) served twice by one `polystack serve --model-repository DIR`, both"
        " with max_batch_size 8 and a 1 ms queue delay: `cnn` with dynamic batching alone, `cnn_prio` with"
        " `priority_levels: 2, default_priority_level: 2`. Beside"
        f" {result['bulk_connections']} bulk connections sending {result['bulk_items']}-image requests back to back"
        " without a priority, one interactive connection sends a 1-image request every"
        f" {result['interactive_every_ms']:g} ms with `priority: 1` (which `cnn` ignores, as Triton does without"
        " levels); `alone` is the interactive client with no bulk traffic. Keep-alive HTTP/1.1, binary tensors;"
        " latencies are the interactive client's.",
        "",
        "| cell | model | interactive p50 ms | interactive p99 ms | bulk items/s | cores: client / server |",
        "|---|---|---|---|---|---|",
    ]
    for row in result["rows"]:
        lines.append(
            f"| {row['cell']} | {row['model']} | {row['p50_ms']:.3f} | {row['p99_ms']:.3f} |"
            f" {row['bulk_items_per_s']:,.0f} | {row['client_cores']:.2f} / {row['server_cores']:.2f} |"
        )
    lines += [
        "",
        f"With priority levels over without: interactive p50 {r['interactive_p50_levels_over_none']}, p99"
        f" {r['interactive_p99_levels_over_none']}; bulk items/s {r['bulk_items_levels_over_none']}.",
        END,
    ]
    serving.put_section(START, END, lines)


if __name__ == "__main__":
    raise SystemExit(main())
