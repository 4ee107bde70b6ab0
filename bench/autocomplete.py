"""Auto-complete benchmark: what Triton's auto-complete of a repository model's batching (max_batch_size 4 and
dynamic batching, for a folder without a config) costs and gives, against the same model served unbatched.

    .venv/bin/python bench/autocomplete.py            # about 1 minute
    .venv/bin/python bench/autocomplete.py --quick    # 1 s cells, one repeat, for a smoke check

One `polystack serve --model-repository DIR` process serves two folders of the serving benchmark's MLP
(256-1024-1024-10): `auto` without a config (auto-completed: max_batch_size 4, dynamic batching with Triton's
defaults, no queue delay) and `unbatched`, whose config lists its inputs and outputs (so nothing is
auto-completed: max_batch_size 0, served unbatched on the server's inference threads). Clients send 1-row
binary-tensor requests over keep-alive HTTP/1.1, one connection (concurrency 1) or 8; cells alternate, order
flipped each repeat; medians of the repeats.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import urllib.request
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import serving  # the serving benchmark's models, server start-up, load loops, summaries and BENCHMARKS.md sections

ROOT = serving.ROOT
RESULTS = ROOT / "bench" / "results" / "autocomplete.json"
START, END = "<!-- autocomplete:start -->", "<!-- autocomplete:end -->"
MODELS = ("auto", "unbatched")
CONCURRENCY = (1, 8)
LISTED = (
    'input [ { name: "x", data_type: TYPE_FP32, dims: [ -1, 256 ] } ]\n'
    'output [ { name: "y", data_type: TYPE_FP32, dims: [ -1, 10 ] } ]\n'
)


def repository(root: Path) -> Path:
    from polystack.examples import mlp_onnx

    for name in MODELS:
        mlp_onnx(root / name / "1" / "model.onnx", sizes=(256, 1024, 1024, 10))
    (root / "unbatched" / "config.pbtxt").write_text(LISTED)
    return root


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="1 s cells, one repeat")
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    warmup_s, duration_s, repeats = (0.3, 1.0, 1) if args.quick else (1.0, 4.0, max(1, args.repeats))
    load_start = round(os.getloadavg()[0], 2)
    work = Path(tempfile.mkdtemp(prefix="polystack-bench-autocomplete-"))
    proc, port = serving.start_repository(work, repository(work / "models"), "auto")
    cells = [f"{model} c{c}" for c in CONCURRENCY for model in MODELS]
    rows: list[dict[str, Any]] = []
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/v2/models/auto/config") as r:  # what auto-complete gave
            shown = json.load(r)
        requests = {model: serving.request_bytes(model, [1, 256], port, binary=True) for model in MODELS}

        def run(cell: str, _: int) -> dict[str, float]:
            model, c = cell.split(" c")
            if c == "1":
                return serving.run_sequential(port, requests[model], warmup_s, duration_s, proc.pid)
            return serving.run_concurrent(port, requests[model], int(c), warmup_s, duration_s, proc.pid)

        for cell, results in serving.alternating(cells, repeats, run).items():
            model, c = cell.split(" c")
            row = {"model": model, "concurrency": int(c), **serving.median_of(results)}
            rows.append(row)
            print(json.dumps(row), flush=True)
    finally:
        serving.stop(proc)
    by = {(r["model"], r["concurrency"]): r for r in rows}
    result = {
        "benchmark": "autocomplete",
        "command": " ".join(["python", "bench/autocomplete.py", *sys.argv[1:]]),
        "seconds_per_cell": duration_s,
        "repeats": repeats,
        "auto_max_batch_size": shown["max_batch_size"],
        "auto_dynamic_batching": "dynamic_batching" in shown,
        "rows": rows,
        "ratios": {
            **{
                f"p50_c{c}_auto_over_unbatched": round(by["auto", c]["p50_ms"] / by["unbatched", c]["p50_ms"], 3)
                for c in CONCURRENCY
            },
            **{
                f"rps_c{c}_auto_over_unbatched": round(by["auto", c]["rps"] / by["unbatched", c]["rps"], 3)
                for c in CONCURRENCY
            },
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
        "## Auto-completed batching (`bench/autocomplete.py`)",
        "",
        serving.measured(result, f"{result['seconds_per_cell']:g} s per cell, median of {result['repeats']} runs"),
        "The serving benchmark's MLP (256-1024-1024-10) served twice by one `polystack serve --model-repository DIR`:"
        f" `auto`, a folder without a config, which Triton's auto-complete gives max_batch_size"
        f" {result['auto_max_batch_size']} and dynamic batching (no queue delay; Triton's 2 CPU instances, two batches"
        " at once), and `unbatched`, whose config"
        " lists its inputs and outputs (nothing auto-completed: served unbatched). 1-row binary-tensor requests over"
        " keep-alive HTTP/1.1, one connection or 8.",
        "",
        "| model | concurrency | p50 ms | p99 ms | req/s | cores: client / server |",
        "|---|---|---|---|---|---|",
    ]
    for row in result["rows"]:
        lines.append(
            f"| {row['model']} | {row['concurrency']} | {row['p50_ms']:.3f} | {row['p99_ms']:.3f} | {row['rps']:,.0f} |"
            f" {row['client_cores']:.2f} / {row['server_cores']:.2f} |"
        )
    lines += [
        "",
        "Auto-completed over unbatched: " + ", ".join(f"{k} = {v}" for k, v in r.items()) + ". Serve with"
        " `--backend-config onnxruntime,default-max-batch-size=0` (or `--no-batching`, or a config listing the"
        " inputs and outputs) to serve such models unbatched, as before.",
        END,
    ]
    serving.put_section(START, END, lines)


if __name__ == "__main__":
    raise SystemExit(main())
