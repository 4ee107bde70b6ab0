"""Streaming benchmark: a decoupled Python model's responses through polystack and a real tritonserver 2.51.

    .venv/bin/python bench/streaming.py            # about 2 minutes (and the wheel's download once)
    .venv/bin/python bench/streaming.py --quick    # 2 s cells, one repeat, for a smoke check

What a client of a streaming model (an LLM sending its tokens) meets: the time to the first response, the time
between responses, and how many responses the server sends in all. One model, `tokens`, the same `model.py` on
both servers (a decoupled Python model: `model_transaction_policy { decoupled: true }`): IN INT32 [1] = n; its
`execute` sends n responses (TOKEN INT32 [1] = i) through the request's response sender as fast as it can, then the
final flag alone. tritonserver 2.51.0 comes from the `nvidia-pytriton==0.7.0` wheel (`bench/triton_reference.py`:
its C++ front end, its Python backend running the model in a stub process); polystack runs it with
`--allow-python-models` in its own process. One server runs at a time (the other stopped), for the same cells.

Client: tritonclient's gRPC streams from 127.0.0.1 (`start_stream`, `async_stream_infer` with
`enable_empty_final_response=True`, so that the final flag marks a request's end), at concurrency 1 and 8 (that
many streams, each on a thread of its own, sending its next request when the last one's final answer came), n = 64
(a request is 64 responses). Per request: time to first response (its sending to its first answer) and the mean
gap between its answers; per cell: requests/s and responses/s. Cells alternate between the servers, their order
flipped each repeat; medians of the repeats. Every answer's TOKEN is checked (0..n-1, in order).
"""

from __future__ import annotations

import argparse
import json
import os
import queue
import shutil
import subprocess
import sys
import sysconfig
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import serving  # the serving benchmark's server start-up, summaries and BENCHMARKS.md sections
import triton_reference  # tritonserver 2.51 from the nvidia-pytriton wheel

ROOT = serving.ROOT
RESULTS = ROOT / "bench" / "results" / "streaming.json"
START, END = "<!-- streaming:start -->", "<!-- streaming:end -->"
SERVERS = ("polystack", "triton")
CONCURRENCY = (1, 8)
TOKENS = 64

# numpy through DLPack (np.from_dlpack, Tensor.from_dlpack): backend 2.51's as_numpy() and Tensor(name, array) are
# wrong under numpy 2 (bench/triton_parity.py says how); polystack's pb_utils takes both ways
MODEL_PY = """
import sys

sys.path.append({site!r})
import numpy as np
import triton_python_backend_utils as pb_utils

FINAL = pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL


class TritonPythonModel:
    def execute(self, requests):
        for request in requests:
            n = int(np.from_dlpack(pb_utils.get_input_tensor_by_name(request, "IN")).reshape(-1)[0])
            sender = request.get_response_sender()
            for i in range(n):
                token = pb_utils.Tensor.from_dlpack("TOKEN", np.array([i], np.int32))
                sender.send(pb_utils.InferenceResponse(output_tensors=[token]))
            sender.send(flags=FINAL)
        return None
"""
CONFIG = """backend: "python"
max_batch_size: 0
input [ { name: "IN" data_type: TYPE_INT32 dims: [ 1 ] } ]
output [ { name: "TOKEN" data_type: TYPE_INT32 dims: [ 1 ] } ]
model_transaction_policy { decoupled: true }
instance_group [ { count: 1 kind: KIND_CPU } ]
"""


def repository(root: Path) -> Path:
    (root / "tokens" / "1").mkdir(parents=True)
    (root / "tokens" / "1" / "model.py").write_text(MODEL_PY.format(site=sysconfig.get_paths()["purelib"]))
    (root / "tokens" / "config.pbtxt").write_text(CONFIG)
    return root


def start(server: str, repo: Path, work: Path, triton: Path | None) -> tuple[subprocess.Popen[bytes], int]:
    """The server, ready; its gRPC port."""
    http, grpc = serving.free_port(), serving.free_port()
    flags = ["--http-address", "127.0.0.1", "--grpc-address", "127.0.0.1", "--http-port", str(http),
             "--grpc-port", str(grpc)]  # fmt: skip
    log = work / f"{server}.log"
    if server == "triton":
        assert triton is not None
        backends = triton_reference.backends_folder(triton, work)
        metrics = ["--metrics-address", "127.0.0.1", "--metrics-port", str(serving.free_port()), "--log-info", "false"]
        proc = triton_reference.tritonserver(triton, backends, repo, [*flags, *metrics], log, start_new_session=True)
    else:
        cmd = [str(ROOT / ".venv" / "bin" / "polystack"), "--home", str(work / "home"), "serve",
               "--model-repository", str(repo), "--allow-python-models", *flags]  # fmt: skip
        proc = subprocess.Popen(cmd, stdout=log.open("w"), stderr=subprocess.STDOUT, start_new_session=True)
    serving.wait_ready(http, "/v2/models/tokens/ready", proc, log)
    return proc, grpc


def stop(server: str, proc: subprocess.Popen[bytes]) -> None:
    if server == "triton":
        triton_reference.stop_triton(proc, group=True)
    else:
        serving.stop(proc)


def run_cell(port: int, concurrency: int, warmup_s: float, duration_s: float) -> dict[str, float]:
    """``concurrency`` streams, each sending a request of ``TOKENS`` responses when its last one ended, for
    ``duration_s`` after ``warmup_s``; bounded: a request whose final answer does not come in 30 s fails the cell."""
    import tritonclient.grpc as grpcclient

    began = time.perf_counter()
    warm_until, stop_at = began + warmup_s, began + warmup_s + duration_s
    firsts: list[float] = []
    gaps: list[float] = []
    counts: list[int] = []
    failures: list[str] = []
    lock = threading.Lock()

    def stream() -> None:
        client = grpcclient.InferenceServerClient(f"127.0.0.1:{port}")
        answers: queue.SimpleQueue[tuple[float, Any]] = queue.SimpleQueue()
        client.start_stream(callback=lambda result, error: answers.put((time.perf_counter(), error or result)))
        x = grpcclient.InferInput("IN", [1], "INT32")
        x.set_data_from_numpy(np.array([TOKENS], np.int32))
        try:
            while (sent := time.perf_counter()) < stop_at:
                client.async_stream_infer("tokens", [x], enable_empty_final_response=True)
                times, tokens = [], []
                while True:
                    at, answer = answers.get(timeout=30)
                    if isinstance(answer, Exception):
                        raise RuntimeError(f"the stream failed: {answer}")
                    response = answer.get_response()
                    if response.outputs:
                        times.append(at)
                        tokens.append(int(answer.as_numpy("TOKEN")[0]))
                    if response.parameters["triton_final_response"].bool_param:
                        break
                if tokens != list(range(TOKENS)):
                    raise RuntimeError(f"the responses were not the model's: {tokens[:8]}...")
                if sent >= warm_until:
                    with lock:
                        firsts.append(times[0] - sent)
                        gaps.append((times[-1] - times[0]) / (len(times) - 1))
                        counts.append(len(times))
        except Exception as e:  # reported by the cell
            failures.append(str(e))
        finally:
            client.stop_stream()
            client.close()

    threads = [threading.Thread(target=stream) for _ in range(concurrency)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(warmup_s + duration_s + 60)
    if failures or not firsts:
        raise SystemExit(f"a cell failed: {failures[:1] or 'no request ended after the warm-up'}")
    elapsed = time.perf_counter() - warm_until
    first = np.array(firsts) * 1e3
    return {
        "requests": len(firsts),
        "requests_per_s": len(firsts) / elapsed,
        "responses_per_s": sum(counts) / elapsed,
        "first_p50_ms": float(np.percentile(first, 50)),
        "first_p99_ms": float(np.percentile(first, 99)),
        "gap_p50_ms": float(np.percentile(np.array(gaps) * 1e3, 50)),
    }


def median(cells: list[dict[str, float]]) -> dict[str, float]:
    """Each figure's median over the repeats of one cell (requests: their total)."""
    return {
        "requests": sum(c["requests"] for c in cells),
        **{k: float(np.median([c[k] for c in cells])) for k in cells[0] if k != "requests"},
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="2 s cells, one repeat")
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    warmup_s, duration_s, repeats = (0.5, 2.0, 1) if args.quick else (1.0, 6.0, max(1, args.repeats))
    load_start = round(os.getloadavg()[0], 2)
    triton = triton_reference.ensure_tritonserver()
    work = Path(tempfile.mkdtemp(prefix="polystack-bench-streaming-"))
    repo = repository(work / "models")
    runs: dict[tuple[str, int], list[dict[str, float]]] = {}
    try:
        for repeat in range(repeats):
            for server in SERVERS if repeat % 2 == 0 else tuple(reversed(SERVERS)):
                proc, port = start(server, repo, work, triton)
                try:
                    for concurrency in CONCURRENCY:
                        cell = run_cell(port, concurrency, warmup_s, duration_s)
                        runs.setdefault((server, concurrency), []).append(cell)
                        print(json.dumps({"server": server, "concurrency": concurrency, **cell}), flush=True)
                finally:
                    stop(server, proc)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    rows = [{"server": server, "concurrency": c, **median(runs[(server, c)])} for c in CONCURRENCY for server in SERVERS]
    result = {
        "benchmark": "streaming",
        "command": " ".join(["python", "bench/streaming.py", *sys.argv[1:]]),
        "seconds_per_cell": duration_s,
        "repeats": repeats,
        "tokens_per_request": TOKENS,
        "tritonserver": "2.51.0 (nvidia-pytriton 0.7.0), Python backend",
        "rows": rows,
        "ratios": {
            f"c{c}": {
                key: round(
                    serving.cell_of(rows, server="polystack", concurrency=c)[key]
                    / serving.cell_of(rows, server="triton", concurrency=c)[key],
                    2,
                )
                for key in ("responses_per_s", "first_p50_ms", "gap_p50_ms")
            }
            for c in CONCURRENCY
        },
        **serving.run_facts(load_start),
    }
    serving.save(RESULTS, result, write_markdown)
    return 0


def write_markdown(result: dict[str, Any]) -> None:
    lines = [
        START,
        "## Streaming: a decoupled model's responses (`bench/streaming.py`)",
        "",
        serving.measured(result, f"{result['seconds_per_cell']:g} s per cell, median of {result['repeats']} runs"),
        f"A decoupled Python model, the same `model.py` on both, sends {result['tokens_per_request']} responses a"
        " request (one INT32 each) through its response sender, then the final flag; tritonserver"
        f" {result['tritonserver']} and `polystack serve --allow-python-models`, one at a time. tritonclient's gRPC"
        " streams from 127.0.0.1 (one per concurrent client) send a request when the last one's final answer came."
        " `first`: from sending a request to its first answer; `gap`: the mean time between a request's answers.",
        "",
        "| server | concurrency | first p50 ms | first p99 ms | gap p50 ms | responses/s | requests/s |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in result["rows"]:
        lines.append(
            f"| {r['server']} | {r['concurrency']} | {r['first_p50_ms']:.2f} | {r['first_p99_ms']:.2f} |"
            f" {r['gap_p50_ms']:.3f} | {r['responses_per_s']:,.0f} | {r['requests_per_s']:,.1f} |"
        )
    lines += [
        "",
        "polystack over Triton (responses/s: above 1, polystack sends more; first and gap: below 1, polystack's are"
        " shorter): "
        + "; ".join(
            f"concurrency {c[1:]}: responses/s {v['responses_per_s']}, first p50 {v['first_p50_ms']}, gap p50"
            f" {v['gap_p50_ms']}"
            for c, v in result["ratios"].items()
        )
        + ".",
        END,
    ]
    serving.put_section(START, END, lines)


if __name__ == "__main__":
    raise SystemExit(main())
