"""Batch jobs: polystack batch vs a hand-written loop over the same runtime and data; memory; Ray's overhead.

    .venv/bin/python bench/batch.py              # 1M rows (about 1 minute of runs)
    .venv/bin/python bench/batch.py --rows 200000 --repeats 1

Each run is a fresh child process (peak RSS from getrusage). Both sides read the same Parquet
file in 1024-row batches, run the same ONNX model on ONNX Runtime with its default threads, and
write Parquet (key column + output as a fixed-size list). The hand loop does this serially, as a
user would write it; polystack overlaps reading, inference and writing, adds bad-row checks,
parts and a manifest. Runs alternate (hand, polystack, hand, ...); medians are reported.
The Ray rows start a local Ray for the job inside a loopback-only network namespace.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import shutil
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SIZES = (64, 256, 256, 8)

HAND = r"""
import json, resource, sys, time
import numpy as np, onnxruntime as ort, pyarrow as pa, pyarrow.parquet as pq
src, model, dst, bs = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
t0 = time.perf_counter()
so = ort.SessionOptions(); so.log_severity_level = 3
sess = ort.InferenceSession(model, sess_options=so, providers=["CPUExecutionProvider"])
writer = None
for b in pq.ParquetFile(src).iter_batches(batch_size=bs):
    col = b.column("x")
    x = col.values.to_numpy().reshape(len(col), -1)
    y = sess.run(["y"], {"x": x})[0]
    out = pa.table({"id": b.column("id"), "y": pa.FixedSizeListArray.from_arrays(pa.array(y.reshape(-1)), y.shape[1])})
    if writer is None:
        writer = pq.ParquetWriter(dst, out.schema, compression="zstd")
    writer.write_table(out)
writer.close()
print(json.dumps({"seconds": time.perf_counter() - t0, "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}))
"""

POLY = r"""
import json, resource, sys, time
from pathlib import Path
from polystack.jobs import BatchOptions, run_batch
from polystack.store import Store
home, src, dst, bs, engine = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), sys.argv[5]
t0 = time.perf_counter()
store = Store.at(home)
s = run_batch(store, BatchOptions(model="bench-mlp", input=Path(src), output=Path(dst), keys=["id"], batch_size=bs, engine=engine))
assert s.rows_out == s.rows_total, s
print(json.dumps({"seconds": time.perf_counter() - t0, "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024, "rows": s.rows_out}))
"""


def child(code: str, *args: str, netns: bool = False) -> dict[str, float]:
    cmd = [sys.executable, "-c", code, *args]
    if netns:  # Ray listens on every interface: keep it in a loopback-only namespace
        quoted = " ".join("'" + a.replace("'", "'\\''") + "'" for a in cmd)
        cmd = ["unshare", "-n", "sh", "-c", f"ip link set lo up && exec {quoted}"]
    out = subprocess.run(cmd, capture_output=True, text=True, check=False, cwd=ROOT)
    if out.returncode != 0:
        raise SystemExit(f"child failed: {out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def make_data(work: Path, rows: int) -> tuple[Path, Path, Path]:
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    from polystack.examples import mlp_onnx
    from polystack.formats import import_model
    from polystack.store import Store

    model = mlp_onnx(work / "mlp.onnx", sizes=SIZES)
    home = work / "home"
    store = Store.at(home)
    imp = import_model(model, work)
    store.register(imp.artifact, name="bench-mlp", format=imp.format, signature=imp.signature)
    store.close()
    src = work / f"in-{rows}.parquet"
    rng = np.random.default_rng(0)
    writer = None
    for lo in range(0, rows, 100_000):
        n = min(100_000, rows - lo)
        x = rng.standard_normal((n, SIZES[0])).astype(np.float32)
        t = pa.table(
            {"id": np.arange(lo, lo + n), "x": pa.FixedSizeListArray.from_arrays(pa.array(x.reshape(-1)), SIZES[0])}
        )
        writer = writer or pq.ParquetWriter(src, t.schema)
        writer.write_table(t, row_group_size=65_536)
    assert writer is not None
    writer.close()
    return home, model, src


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--ray-rows", type=int, default=200_000)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--batch-size", type=int, default=1024)
    ap.add_argument("--no-ray", action="store_true")
    args = ap.parse_args()
    work = ROOT / "bench" / "results" / "tmp" / "batch"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    load_start = os.getloadavg()[0]
    home, model, src = make_data(work, args.rows)
    bs = str(args.batch_size)
    hand, poly = [], []
    for i in range(args.repeats):
        hand.append(child(HAND, str(src), str(model), str(work / f"hand-{i}.parquet"), bs))
        poly.append(child(POLY, str(home), str(src), str(work / f"poly-{i}"), bs, "local"))
        shutil.rmtree(work / f"poly-{i}")
    med = lambda runs, k: statistics.median(r[k] for r in runs)  # noqa: E731
    result: dict[str, object] = {
        "when": datetime.datetime.now().strftime("%Y-%m-%d %H:%M:%S"),
        "cpus": os.cpu_count(),
        "model": f"MLP {'-'.join(map(str, SIZES))} (ONNX, onnxruntime default threads)",
        "rows": args.rows,
        "batch_size": args.batch_size,
        "input_bytes": src.stat().st_size,
        "hand": {
            "rows_per_s": args.rows / med(hand, "seconds"),
            "peak_rss_bytes": med(hand, "peak_rss_bytes"),
            "runs": hand,
        },
        "polystack": {
            "rows_per_s": args.rows / med(poly, "seconds"),
            "peak_rss_bytes": med(poly, "peak_rss_bytes"),
            "runs": poly,
        },
    }
    result["ratio"] = args.rows / med(poly, "seconds") / (args.rows / med(hand, "seconds"))
    if not args.no_ray:
        (work / "ray").mkdir()
        rhome, _, rsrc = make_data(work / "ray", args.ray_rows)
        local = child(POLY, str(rhome), str(rsrc), str(work / "ray-local"), bs, "local")
        ray = child(POLY, str(rhome), str(rsrc), str(work / "ray-ray"), bs, "ray", netns=True)
        result["ray"] = {
            "rows": args.ray_rows,
            "local_seconds": local["seconds"],
            "ray_seconds": ray["seconds"],
            "overhead_seconds": ray["seconds"] - local["seconds"],
            "local_peak_rss_bytes": local["peak_rss_bytes"],
            "ray_driver_peak_rss_bytes": ray["peak_rss_bytes"],
            "ratio": ray["seconds"] / local["seconds"],
        }
    result["load_average_start_end"] = [round(load_start, 2), round(os.getloadavg()[0], 2)]
    out = ROOT / "bench" / "results" / "batch.json"
    out.write_text(json.dumps(result, indent=1))
    write_markdown(result, " ".join(["bench/batch.py", *sys.argv[1:]]))
    shutil.rmtree(work, ignore_errors=True)
    print(json.dumps({k: v for k, v in result.items() if k not in ("hand", "polystack")}, indent=1))


def secs(side: dict) -> str:
    return ", ".join(f"{run['seconds']:.2f}" for run in side["runs"])


def write_markdown(r: dict, command: str) -> None:
    h, p = r["hand"], r["polystack"]
    mib = 1 << 20
    lines = [
        "<!-- batch:start -->",
        "## Batch jobs (`bench/batch.py`)",
        "",
        f"Measured {r['when']} on this machine ({r['cpus']} CPUs). Command: `.venv/bin/python {command}`.",
        f"{r['model']}; {r['rows']:,} rows of 64 FP32 features in one Parquet file ({r['input_bytes'] / mib:,.0f} MiB),",
        f"batches of {r['batch_size']}; output Parquet (key + output as a fixed-size list). Each run is a fresh process;",
        "medians of the runs. The hand loop reads, infers and writes serially with the same runtime;",
        "polystack overlaps the three and adds bad-row checks, numbered parts and an atomic manifest.",
        f"1-minute load average at start / end: {r['load_average_start_end'][0]} / {r['load_average_start_end'][1]}"
        " (the end figure includes the benchmark's own runs; a start above ~1 means something else shared the 2 cores).",
        "",
        "| runner | rows/s (median) | vs hand loop | peak RSS MiB | each run, s |",
        "|---|---|---|---|---|",
        f"| hand-written loop (pyarrow + onnxruntime) | {h['rows_per_s']:,.0f} | 1.00x | {h['peak_rss_bytes'] / mib:,.0f} | {secs(h)} |",
        f"| `polystack batch` (local engine) | {p['rows_per_s']:,.0f} | {r['ratio']:.2f}x | {p['peak_rss_bytes'] / mib:,.0f} | {secs(p)} |",
    ]
    if "ray" in r:
        small = r["ray"]
        lines += [
            "",
            f"Bounded memory: `polystack batch` peaks at {p['peak_rss_bytes'] / mib:,.0f} MiB on {r['rows']:,} rows and "
            f"{small['local_peak_rss_bytes'] / mib:,.0f} MiB on {small['rows']:,} rows (the process, runtime and libraries included).",
        ]
    if "ray" in r:
        ray = r["ray"]
        lines += [
            "",
            f"Ray engine on {ray['rows']:,} rows (a local Ray started for the job, 1 actor, in a loopback-only namespace):",
            f"{ray['ray_seconds']:.1f} s against {ray['local_seconds']:.1f} s locally "
            f"({ray['overhead_seconds']:+.1f} s, {ray['ratio']:.1f}x): on one machine Ray's start-up and actor",
            "launch dominate; it pays off only across machines.",
        ]
    lines.append("<!-- batch:end -->")
    section = "\n".join(lines)
    md = ROOT / "BENCHMARKS.md"
    text = md.read_text() if md.exists() else "# Benchmarks\n"
    if "<!-- batch:start -->" in text:
        head, rest = text.split("<!-- batch:start -->", 1)
        tail = rest.split("<!-- batch:end -->", 1)[1] if "<!-- batch:end -->" in rest else ""
        text = head + section + tail
    else:
        text = text.rstrip("\n") + "\n\n" + section + "\n"
    md.write_text(text)


if __name__ == "__main__":
    main()
