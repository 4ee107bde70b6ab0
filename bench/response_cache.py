"""Response cache benchmark: what a hit saves, and what a miss costs, against the same model uncached.

    .venv/bin/python bench/response_cache.py            # about 2 minutes
    .venv/bin/python bench/response_cache.py --quick    # 300 requests per cell, for a smoke check

One `polystack serve --cache-config local,size=268435456 --no-batching` process serves three ONNX
models twice each: under their own name with a config that enables `response_cache`, and as
`NAME_plain` without one. The models are the serving benchmark's MLP 256-1024-1024-10 and CNN
(3x32x32), where the runtime call is ~0.05 ms, and an MLP 256-4096-4096-10 (~4 ms), where it is not.
One keep-alive connection from 127.0.0.1 sends binary-tensor requests (what tritonclient sends), one at
a time, in three ways per model:
- plain: a new input each request, to the uncached model (what serving it without the cache costs);
- miss: a new input each request, to the cached model (the model runs, then its answer is hashed and kept);
- hit: the same input every request, to the cached model (answered from the cache).
The ways alternate, order flipped each repeat; medians of the repeats.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import serving  # the serving benchmark's models, server start-up and summaries

ROOT = serving.ROOT
RESULTS = ROOT / "bench" / "results" / "response_cache.json"
START, END = "<!-- response-cache:start -->", "<!-- response-cache:end -->"
CACHE_BYTES = 256 << 20
WAYS = ("plain", "miss", "hit")


def models(work: Path) -> dict[str, tuple[Path, list[int]]]:
    from polystack.examples import mlp_onnx

    built = serving.build_models(work)
    built["mlp_big"] = (mlp_onnx(work / "mlp_big.onnx", sizes=(256, 4096, 4096, 10)), [1, 256])
    return built


def requests(name: str, shape: list[int], port: int, count: int, first: int) -> list[bytes]:
    """``count`` binary requests whose inputs differ (the first element numbers them, from ``first``);
    the same request ``count`` times when ``first`` is negative."""
    template = serving.request_bytes(name, shape, port, binary=True)
    if first < 0:
        return [template] * count
    at = len(template) - int(np.prod(shape)) * 4  # the tensor's bytes end the request
    out = []
    for i in range(first, first + count):
        req = bytearray(template)
        req[at : at + 4] = np.float32(i).tobytes()
        out.append(bytes(req))
    return out


def run_cell(port: int, reqs: list[bytes], pid: int, limit_s: float) -> dict[str, float]:
    """Send ``reqs`` one at a time (for at most ``limit_s``); latency of each."""
    share = serving.CpuShare(pid)
    lat: list[float] = []
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        buf = bytearray()
        started = time.perf_counter()
        for req in reqs:
            t0 = time.perf_counter()
            sock.sendall(req)
            serving._read_response(sock, buf)
            lat.append(time.perf_counter() - t0)
            if t0 - started > limit_s:
                break
        return share.done(serving.summarize(lat, time.perf_counter() - started))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="300 requests per cell, one repeat")
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    count, repeats, limit_s = (300, 1, 5.0) if args.quick else (2000, max(1, args.repeats), 20.0)
    load_start = round(os.getloadavg()[0], 2)
    work = Path(tempfile.mkdtemp(prefix="polystack-bench-cache-"))
    home = work / "home"
    built = models(work)
    extra: list[str] = ["--cache-config", f"local,size={CACHE_BYTES}"]
    cached = work / "cached.json"
    cached.write_text(json.dumps({"response_cache": {"enable": True}}))
    for name, (path, _) in built.items():
        for served in (name, f"{name}_plain"):
            subprocess.run(
                [str(ROOT / ".venv" / "bin" / "polystack"), "--home", str(home), "register", str(path), "--name", served],
                check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            )  # fmt: skip
        extra += ["--model-config", f"{name}={cached}"]
    names = [n for name in built for n in (name, f"{name}_plain")]
    proc, port = serving.start_polystack(home, names, False, work, extra)
    rows: list[dict[str, Any]] = []
    try:
        for name, (_, shape) in built.items():
            for warm in (f"{name}_plain", name):  # the runtimes warm; these inputs are never sent again
                run_cell(port, requests(warm, shape, port, 100, 10**6), proc.pid, limit_s)

            def one(way: str, rep: int, name: str = name, shape: list[int] = shape) -> dict[str, float]:
                target = f"{name}_plain" if way == "plain" else name
                reqs = requests(target, shape, port, count, -1 if way == "hit" else rep * count)
                return run_cell(port, reqs, proc.pid, limit_s)

            runs = serving.alternating(WAYS, repeats, one)
            for way, results in runs.items():
                row = {"model": name, "way": way, **serving.median_of(results)}
                rows.append(row)
                print(json.dumps(row), flush=True)
        stats = json.loads(_get(port, "/v2/models/stats"))["model_stats"]
    finally:
        serving.stop(proc)
    counted = {s["name"]: {k: s["inference_stats"][k]["count"] for k in ("cache_hit", "cache_miss")} for s in stats}
    result = {
        "benchmark": "response_cache",
        "command": " ".join(["python", "bench/response_cache.py", *sys.argv[1:]]),
        "requests_per_cell": count,
        "repeats": repeats,
        "rows": rows,
        "statistics": {name: counted[name] for name in built},
        "ratios": {
            name: {
                "hit_p50_over_plain": round(_p50(rows, name, "hit") / _p50(rows, name, "plain"), 2),
                "miss_p50_over_plain": round(_p50(rows, name, "miss") / _p50(rows, name, "plain"), 2),
            }
            for name in built
        },
        **serving.run_facts(load_start),
    }
    serving.save(RESULTS, result, write_markdown)
    shutil.rmtree(work, ignore_errors=True)
    return 0


def _get(port: int, path: str) -> str:
    import urllib.request

    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=30) as r:
        return str(r.read().decode())


def _p50(rows: list[dict[str, Any]], model: str, way: str) -> float:
    return next(float(r["p50_ms"]) for r in rows if r["model"] == model and r["way"] == way)


def write_markdown(result: dict[str, Any]) -> None:
    lines = [
        START,
        "## Response cache (`bench/response_cache.py`)",
        "",
        serving.measured(
            result, f"{result['requests_per_cell']:,} requests per cell, median of {result['repeats']} runs"
        ),
        "`polystack serve --cache-config local,size=268435456 --no-batching`; each model served twice: with a"
        " config enabling `response_cache`, and as `NAME_plain` without. One connection from 127.0.0.1 sends"
        " binary-tensor requests one at a time: `plain`, a new input each time to the uncached model; `miss`, a"
        " new input each time to the cached one (it runs, and its answer is hashed and kept); `hit`, the same"
        " input every time to the cached one. mlp = MLP 256-1024-1024-10, cnn = CNN 3x32x32 (runtime calls of"
        " ~0.05 ms), mlp_big = MLP 256-4096-4096-10.",
        "",
        "| model | way | p50 ms | p99 ms | req/s | cores: client / server |",
        "|---|---|---|---|---|---|",
    ]
    for r in result["rows"]:
        lines.append(
            f"| {r['model']} | {r['way']} | {r['p50_ms']:.3f} | {r['p99_ms']:.3f} | {r['rps']:,.0f} |"
            f" {r['client_cores']:.2f} / {r['server_cores']:.2f} |"
        )
    lines += [
        "",
        "p50 over plain: "
        + "; ".join(
            f"{m}: hit {v['hit_p50_over_plain']}, miss {v['miss_p50_over_plain']}" for m, v in result["ratios"].items()
        )
        + ". The server's statistics after the run (cache_hit / cache_miss counts): "
        + "; ".join(f"{m}: {v['cache_hit']:,} / {v['cache_miss']:,}" for m, v in result["statistics"].items())
        + ".",
        END,
    ]
    serving.put_section(START, END, lines)


if __name__ == "__main__":
    raise SystemExit(main())
