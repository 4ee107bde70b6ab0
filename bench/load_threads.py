"""Start-up with models built at once: the time from `polystack serve --model-repository DIR` to a ready server,
with one load thread and with Triton's default of four (`--model-load-thread-count`).

    .venv/bin/python bench/load_threads.py            # about 1 minute
    .venv/bin/python bench/load_threads.py --quick    # one repeat, for a smoke check

Two repositories: `waiting`, four Python models whose `initialize` sleeps 1 s (a model that waits while it loads:
weights read from remote storage, a process it starts), and `onnx`, eight ONNX MLPs (512-2048-2048-10, 21 MB
each), whose loads are ONNX Runtime's session builds, work for the CPUs. Each start has a store of its own (every
folder registered afresh, as on a first start); cells alternate, order flipped each repeat; medians of the repeats.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import serving  # the serving benchmark's server start-up helpers, run facts and BENCHMARKS.md sections

ROOT = serving.ROOT
RESULTS = ROOT / "bench" / "results" / "load_threads.json"
START, END = "<!-- load-threads:start -->", "<!-- load-threads:end -->"
SLEEP_S = 1.0
THREADS = (1, 4)
WAITING = f"""
import time


class TritonPythonModel:
    def initialize(self, args):
        time.sleep({SLEEP_S})

    def execute(self, requests):
        return []
"""
WAITING_CONFIG = (
    'backend: "python"\ninput [ { name: "x", data_type: TYPE_FP32, dims: [ 1 ] } ]\n'
    'output [ { name: "y", data_type: TYPE_FP32, dims: [ 1 ] } ]\n'
)


def repositories(root: Path) -> dict[str, Path]:
    from polystack.examples import mlp_onnx

    for i in range(4):
        (root / "waiting" / f"wait{i}" / "1").mkdir(parents=True)
        (root / "waiting" / f"wait{i}" / "1" / "model.py").write_text(WAITING)
        (root / "waiting" / f"wait{i}" / "config.pbtxt").write_text(WAITING_CONFIG)
    for i in range(8):
        mlp_onnx(root / "onnx" / f"mlp{i}" / "1" / "model.onnx", sizes=(512, 2048, 2048, 10), seed=i)
    return {"waiting": root / "waiting", "onnx": root / "onnx"}


def start_s(work: Path, repo: Path, threads: int) -> float:
    """Seconds from the server's start to its readiness (every model loaded), with a store of its own."""
    home = Path(tempfile.mkdtemp(prefix="home-", dir=work))
    port = serving.free_port()
    cmd = [
        str(ROOT / ".venv" / "bin" / "polystack"), "--home", str(home), "serve", "--model-repository", str(repo),
        "--allow-python-models", "--model-load-thread-count", str(threads), "--http-port", str(port),
        "--grpc-port", "-1", "--log-level", "warning",
    ]  # fmt: skip
    log = work / "polystack.log"
    began = time.monotonic()
    proc = subprocess.Popen(cmd, stdout=log.open("w"), stderr=subprocess.STDOUT)
    try:
        while not _ready(port):  # asked every 20 ms (the serving benchmark's wait asks every 200 ms)
            if proc.poll() is not None or time.monotonic() - began > 120:
                raise RuntimeError(f"server not ready:\n{log.read_text()[-3000:]}")
            time.sleep(0.02)
        return time.monotonic() - began
    finally:
        serving.stop(proc)
        shutil.rmtree(home, ignore_errors=True)


def _ready(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/v2/health/ready", timeout=1) as r:
            return bool(r.status == 200)
    except OSError:
        return False


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="one repeat")
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    repeats = 1 if args.quick else max(1, args.repeats)
    load_start = round(os.getloadavg()[0], 2)
    work = Path(tempfile.mkdtemp(prefix="polystack-bench-load-threads-"))
    repos = repositories(work / "models")
    cells = [(name, threads) for name in repos for threads in THREADS]
    seconds: dict[tuple[str, int], list[float]] = {cell: [] for cell in cells}
    for k in range(repeats):
        for name, threads in cells if k % 2 == 0 else cells[::-1]:
            seconds[name, threads].append(start_s(work, repos[name], threads))
            print(json.dumps({"repository": name, "threads": threads, "start_s": seconds[name, threads][-1]}))
    rows: list[dict[str, Any]] = [
        {"repository": name, "threads": threads, "start_s": round(statistics.median(seconds[name, threads]), 2)}
        for name, threads in cells
    ]
    by = {(r["repository"], r["threads"]): r["start_s"] for r in rows}
    result = {
        "benchmark": "load_threads",
        "command": " ".join(["python", "bench/load_threads.py", *sys.argv[1:]]),
        "repeats": repeats,
        "sleep_s": SLEEP_S,
        "rows": rows,
        "ratios": {f"{name}_4_over_1": round(by[name, 4] / by[name, 1], 3) for name in repos},
        **serving.run_facts(load_start),
    }
    serving.save(RESULTS, result, write_markdown)
    shutil.rmtree(work, ignore_errors=True)
    return 0


def write_markdown(result: dict[str, Any]) -> None:
    lines = [
        START,
        "## Models built at once at start (`bench/load_threads.py`)",
        "",
        serving.measured(result, f"median of {result['repeats']} starts per cell"),
        f"Seconds from `polystack serve --model-repository DIR` to a ready server, each start with a store of its own:"
        f" `waiting`, four Python models whose `initialize` sleeps {result['sleep_s']:g} s; `onnx`, eight ONNX MLPs"
        " (512-2048-2048-10, 21 MB each), whose loads are ONNX Runtime's session builds. One load thread"
        " (`--model-load-thread-count 1`, polystack's only way before) and Triton's default of four.",
        "",
        "| repository | load threads | start to ready, s |",
        "|---|---|---|",
    ]
    for row in result["rows"]:
        lines.append(f"| {row['repository']} | {row['threads']} | {row['start_s']:.2f} |")
    lines += [
        "",
        "Four threads over one: " + ", ".join(f"{k} = {v}" for k, v in result["ratios"].items()) + ". Builds that"
        " wait overlap; the `onnx` builds are a small part of their start (a few tens of ms each, by the log's"
        " `model loaded` times) and need the CPUs, of which this machine has two, while the rest of a start (imports,"
        " reading and registering each folder) runs one step at a time whatever the thread count.",
        END,
    ]
    serving.put_section(START, END, lines)


if __name__ == "__main__":
    raise SystemExit(main())
