"""Event loop cost per request: the CPU polystack's event loop spends on one inference request, in process.

    .venv/bin/python bench/loop_cost.py                      # this tree (about 2 minutes)
    .venv/bin/python bench/loop_cost.py --against c81fdc9    # and a commit, side by side (about 4 minutes)
    .venv/bin/python bench/loop_cost.py --quick              # fewer requests, one repeat: a smoke check

Through a server on 2 shared cores, one request's cost moves with the client, the kernel and whatever else
runs (the serving benchmark's c=1 p50 ranged 0.39-0.77 ms within minutes): a change that saves 10% of the
loop's work is lost in that. Here the HTTP front end runs in process on a uvloop loop with no sockets: each
of C connections (polystack's own `HttpProtocol`, fed the bytes of a real request) sends its next request
when the answer to its last is written, and the loop thread's CPU time (``time.thread_time``) over N
requests, after a warm-up, gives the loop's CPU per request: parsing, decoding, validation, batching or the
hand-off to an inference thread, statistics, metrics, encoding. The model is the serving benchmark's MLP
256-1024-1024-10 (ONNX Runtime, default threads), served as `polystack serve` would (a `Server`), batch-1
JSON and 8-item binary requests, with batching (32 / 2 ms) and without.

Each cell runs in a fresh process, for this tree and (``--against REV``) a checkout of that commit, their
runs alternating, order flipped each repeat; medians of the repeats. The runtime runs beside the loop on the
same cores, so the figures include the cache and GIL effects of real serving; what they leave out is the
socket and the client. They are for comparing code, not for quoting as server capacity.

Results go to bench/results/loop_cost.json and a table into BENCHMARKS.md (between loop-cost markers).
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import serving  # the serving benchmark's models, request bodies and result helpers
from wakeup import FakeTransport  # polystack's HTTP front end in process, with no socket

RESULTS = serving.ROOT / "bench" / "results" / "loop_cost.json"
START, END = "<!-- loop-cost:start -->", "<!-- loop-cost:end -->"
CELLS = {  # name: (batching, items per request, binary)
    "batching, batch-1 JSON": (True, 1, False),
    "batching, 8-item binary": (True, 8, True),
    "no batching, batch-1 JSON": (False, 1, False),
    "no batching, 8-item binary": (False, 8, True),
}
CONCURRENCY = 32
MODEL = "mlp"


# -- one cell, in a child process (the tree under test first on PYTHONPATH) -----------------------------
def measure(
    home: Path, row_shape: list[int], batching: bool, items: int, binary: bool, requests: int, warmup: int
) -> dict[str, float]:
    import asyncio

    import uvloop

    from polystack.batching.policy import BatchPolicy
    from polystack.engine import Engine
    from polystack.server.app import ServeConfig, Server
    try:
        from polystack.server.http_connection import HttpProtocol
    except ImportError:  # a commit from before the connection had a module of its own (--against)
        from polystack.server.http import HttpProtocol
    from polystack.store import Store

    policy = BatchPolicy(max_batch_size=32, max_queue_delay_ms=2.0) if batching else None
    config = ServeConfig(http_port=0, grpc_port=None, models=[MODEL], batching=policy, no_batching=not batching)
    server = Server(Engine(Store.at(home)), config)
    server.load_models()
    req = serving.request_bytes(MODEL, [items, *row_shape], 1, binary=binary)
    total = warmup + requests
    state: dict[str, Any] = {"done": 0}

    def answered(head: bytes, proto: HttpProtocol, loop: asyncio.AbstractEventLoop, end: asyncio.Event) -> None:
        """An answer written: counted, and the connection sends its next request."""
        if not head.startswith(b"HTTP/1.1 200"):
            raise RuntimeError(f"the request failed: {bytes(head[:300])!r}")
        state["done"] += 1
        if state["done"] == warmup:
            state["start"] = (time.thread_time(), time.perf_counter())
        if state["done"] + CONCURRENCY <= total:
            loop.call_soon(proto.data_received, req)
        if state["done"] == total:
            end.set()

    async def main() -> dict[str, float]:
        loop = asyncio.get_running_loop()
        end = asyncio.Event()
        connections = []
        for _ in range(CONCURRENCY):
            proto = HttpProtocol(server.http)
            transport = FakeTransport(functools.partial(answered, proto=proto, loop=loop, end=end))
            proto.connection_made(transport)  # type: ignore[arg-type]
            connections.append(proto)
        for proto in connections:
            proto.data_received(req)
        await end.wait()
        cpu, wall = state["start"]
        return {
            "loop_us_per_request": round((time.thread_time() - cpu) / requests * 1e6, 1),
            "requests_per_s": round(requests / (time.perf_counter() - wall), 1),
        }

    try:
        return uvloop.run(main())
    finally:
        server.plane.close()


# -- the run ---------------------------------------------------------------------------------------------
def run_cell(src: Path, home: Path, row_shape: list[int], cell: str, requests: int, warmup: int) -> dict[str, float]:
    """One cell in a fresh process with ``src`` first on its path."""
    batching, items, binary = CELLS[cell]
    args = json.dumps([str(home), row_shape, batching, items, binary, requests, warmup])
    env = dict(os.environ, PYTHONPATH=str(src))
    out = subprocess.run(
        [sys.executable, __file__, "--child", args], env=env, capture_output=True, text=True, timeout=600
    )
    if out.returncode != 0:
        raise RuntimeError(f"the cell {cell!r} failed for {src}:\n{out.stderr[-3000:]}")
    return dict(json.loads(out.stdout.strip().splitlines()[-1]))


def checkout(rev: str, into: Path) -> Path:
    """The ``src`` folder of ``rev``, extracted from git (no worktree to clean up)."""
    archive = subprocess.run(["git", "-C", str(serving.ROOT), "archive", rev, "src"], capture_output=True, check=True)
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive.stdout, check=True)
    return into / "src"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--against", help="a commit to compare with, side by side")
    ap.add_argument("--requests", type=int, default=20_000)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--quick", action="store_true", help="2,000 requests, one repeat")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.child:
        home, row_shape, batching, items, binary, requests, warmup = json.loads(a.child)
        print(json.dumps(measure(Path(home), row_shape, batching, items, binary, requests, warmup)))
        return 0
    requests, repeats = (2_000, 1) if a.quick else (a.requests, a.repeats)
    warmup = max(500, requests // 10)
    load_start = round(os.getloadavg()[0], 2)
    head = subprocess.run(
        ["git", "-C", str(serving.ROOT), "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True
    ).stdout.strip()
    with tempfile.TemporaryDirectory(prefix="loop-cost-") as tmp:
        work = Path(tmp)
        path, shape = serving.build_models(work)[MODEL]
        home = work / "home"
        subprocess.run(
            [str(serving.ROOT / ".venv" / "bin" / "polystack"), "--home", str(home), "register", str(path), "--name", MODEL],
            check=True, capture_output=True,
        )  # fmt: skip
        trees = {f"this tree ({head})": serving.ROOT / "src"}
        if a.against:
            (work / "against").mkdir()
            trees[a.against] = checkout(a.against, work / "against")
        runs: dict[tuple[str, str], list[dict[str, float]]] = {}
        for r in range(repeats):
            for cell in CELLS:
                order = list(trees.items()) if r % 2 == 0 else list(reversed(trees.items()))
                for label, src in order:
                    out = run_cell(src, home, shape[1:], cell, requests, warmup)
                    runs.setdefault((label, cell), []).append(out)
                    print(json.dumps({"tree": label, "cell": cell, **out}), flush=True)
    rows = []
    for (label, cell), outs in runs.items():
        rows.append({
            "tree": label, "cell": cell,
            "loop_us_per_request": round(statistics.median(o["loop_us_per_request"] for o in outs), 1),
            "requests_per_s": round(statistics.median(o["requests_per_s"] for o in outs), 1),
            "runs_loop_us": [o["loop_us_per_request"] for o in outs],
        })  # fmt: skip
    result = {
        **serving.run_facts(load_start),
        "command": "python bench/loop_cost.py" + (f" --against {a.against}" if a.against else ""),
        "concurrency": CONCURRENCY, "requests": requests, "repeats": repeats, "rows": rows,
    }  # fmt: skip
    serving.save(RESULTS, result, write_markdown)
    return 0


def write_markdown(result: dict[str, Any]) -> None:
    lines = [
        START,
        "## Event loop cost per request (`bench/loop_cost.py`)",
        "",
        f"Measured {result['measured_at']} on this machine ({result['machine']['cpus']} CPUs), {result['requests']:,}"
        f" requests per run after a warm-up, {result['repeats']} runs of each cell, medians. Command:"
        f" `.venv/bin/{result['command']}`. 1-minute load average at start / end:"
        f" {result['load_average_1m']['start']} / {result['load_average_1m']['end']}.",
        f"polystack's HTTP front end in process, with no sockets: {result['concurrency']} connections each sending"
        " its next request when its answer is written, on the serving benchmark's MLP. Loop CPU is the event"
        " loop thread's CPU time per request; requests/s is the in-process rate, runtime included (not a"
        " server's capacity: no client, no kernel). For comparing code side by side; each run is a fresh process.",
        "",
        "| cell | tree | loop CPU us / request | requests/s | loop CPU of each run |",
        "|---|---|---|---|---|",
    ]
    for row in sorted(result["rows"], key=lambda r: (list(CELLS).index(r["cell"]), r["tree"])):
        runs = ", ".join(f"{v:g}" for v in row["runs_loop_us"])
        lines.append(
            f"| {row['cell']} | {row['tree']} | {row['loop_us_per_request']:g} | {row['requests_per_s']:,.0f} | {runs} |"
        )
    lines.append(END)
    serving.put_section(START, END, lines)


if __name__ == "__main__":
    sys.exit(main())
