"""Triton reference: polystack against a real Triton Inference Server, same models, same client, same cores.

    .venv/bin/python bench/triton_reference.py            # about 8 minutes
    .venv/bin/python bench/triton_reference.py --quick    # 1 s per cell, for a smoke check

Why: issue 5's batching target (items/s through the server >= 0.85 x in-process Offline at batch 32) is met
by the pinned server for binary requests of 8 or more items, not for batch-1 requests, and the serving
benchmark's reference servers for batch-1 (`bare`, `minimal`) are written in Python. This runs the server
the target's users know, whose front end is not Python per request: tritonserver 2.51.0 (C++ HTTP front
end and dynamic batcher), from the `nvidia-pytriton==0.7.0` wheel on PyPI, which bundles it. The wheel is
fetched once (`pip download --no-deps`, 55 MB) and unpacked under ~/.cache/polystack/bench-tritonserver-0.7.0;
nothing is installed into a venv.

The wheel's only backend is Triton's Python backend, so each model is a python-backend `model.py` that runs
the same ONNX file with onnxruntime in Triton's stub process: the batch's inputs concatenated, one
`InferenceSession.run`, the answer split back (what Triton's onnxruntime backend does in C++; the Python
backend adds a shared-memory hand-off per batch and a few Python calls per request). Triton's own
onnxruntime backend ships only in NVIDIA's containers; its figures would be at least these.

Cells, for the serving benchmark's MLP and CNN, both servers batching (polystack `--batching
--max-batch-size 32 --max-queue-delay-ms 2`; Triton `dynamic_batching { max_queue_delay_microseconds: 2000 }`
with `max_batch_size: 32`), the serving benchmark's client (`bench/serving.py`: raw keep-alive HTTP/1.1):
- shared cores (both servers use both cores, ONNX Runtime's default threads): batch-1 JSON at concurrency
  1, 8, 32 and 128, binary 8-item requests at 32 and 32-item ones at 8;
- pinned (front end and client on the first core, runtime on the others, one runtime thread per core):
  polystack `--frontend-cpus/--runtime-cpus`; Triton's process on the first core and its stub process (the
  runtime) on the others; batch-1 JSON at 32 and 128, binary 8-item requests at 32.
Both servers run at once; each cell alternates them (order flipped each repeat), medians reported. Triton's
answer is checked against polystack's before any cell runs.

Results: bench/results/triton_reference.json and a section of BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import tempfile
import time
import zipfile
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import serving  # the serving benchmark's models, client, polystack start-up, floors and result helpers

RESULTS = serving.ROOT / "bench" / "results" / "triton_reference.json"
START, END = "<!-- triton-reference:start -->", "<!-- triton-reference:end -->"
WHEEL = "nvidia-pytriton==0.7.0"  # bundles tritonserver 2.51.0 with its Python backend
CACHE = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "polystack" / "bench-tritonserver-0.7.0"
# (items per request, concurrency, binary) on shared cores and on pinned ones
SHARED_CELLS = ((1, 1, False), (1, 8, False), (1, 32, False), (1, 128, False), (8, 32, True), (32, 8, True))
PINNED_CELLS = ((1, 32, False), (1, 128, False), (8, 32, True))
SERVERS = ("polystack", "triton")

MODEL_PY = """
import os
import sys

sys.path.append({site!r})  # the stub's interpreter does not see the venv that has numpy and onnxruntime
import numpy as np
import onnxruntime as ort
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args):
        import json

        threads = int(json.loads(args["model_config"])["parameters"]["intra_op_threads"]["string_value"])
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads  # 0: onnxruntime's default, one per core
        here = os.path.dirname(__file__)
        self.session = ort.InferenceSession(os.path.join(here, "model.onnx"), options, providers=["CPUExecutionProvider"])

    def execute(self, requests):
        # np.from_dlpack: as_numpy() repeats the first element of numpy 2 arrays (stride 0) in backend 2.51
        xs = [np.from_dlpack(pb_utils.get_input_tensor_by_name(r, "x")) for r in requests]
        y = self.session.run(None, {{"x": xs[0] if len(xs) == 1 else np.concatenate(xs)}})[0]
        answers, start = [], 0
        for x in xs:
            part = np.ascontiguousarray(y[start : start + len(x)])
            start += len(x)
            # from_dlpack: pb_utils.Tensor(name, array) makes an empty tensor of numpy 2 arrays
            answers.append(pb_utils.InferenceResponse(output_tensors=[pb_utils.Tensor.from_dlpack("y", part)]))
        return answers
"""

CONFIG = """backend: "python"
max_batch_size: 32
input [ {{ name: "x" data_type: TYPE_FP32 dims: [ {dims} ] }} ]
output [ {{ name: "y" data_type: TYPE_FP32 dims: [ 10 ] }} ]
dynamic_batching {{ max_queue_delay_microseconds: 2000 }}
instance_group [ {{ count: 1 kind: KIND_CPU }} ]
parameters {{ key: "intra_op_threads" value: {{ string_value: "{threads}" }} }}
"""


# -- Triton ------------------------------------------------------------------------------------------
def ensure_tritonserver() -> Path:
    """The unpacked wheel (fetched once): bin/tritonserver, the Python backend and its stubs."""
    binary = CACHE / "pytriton" / "tritonserver" / "bin" / "tritonserver"
    if not binary.exists():
        print(f"fetching {WHEEL} (tritonserver 2.51.0) into {CACHE}", flush=True)
        with tempfile.TemporaryDirectory() as tmp:
            subprocess.run(
                [
                    sys.executable,
                    "-m",
                    "pip",
                    "download",
                    "-q",
                    "--no-deps",
                    "--only-binary",
                    ":all:",
                    WHEEL,
                    "-d",
                    tmp,
                ],
                check=True,
            )
            (wheel,) = Path(tmp).glob("*.whl")
            staging = CACHE.with_name(CACHE.name + ".partial")
            shutil.rmtree(staging, ignore_errors=True)
            with zipfile.ZipFile(wheel) as z:
                z.extractall(staging)
            for exe in [staging / "pytriton" / "tritonserver" / "bin" / "tritonserver",
                        *(staging / "pytriton" / "tritonserver" / "python_backend_stubs").glob("*/*")]:  # fmt: skip
                exe.chmod(0o755)
            staging.rename(CACHE)
    return CACHE


def backends_folder(triton: Path, work: Path) -> Path:
    """Triton's backend folder with the Python backend's stub for this interpreter's version."""
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    stub = triton / "pytriton" / "tritonserver" / "python_backend_stubs" / version / "triton_python_backend_stub"
    if not stub.exists():
        raise SystemExit(f"{WHEEL} has no Python backend stub for Python {version}; run this with Python 3.8-3.13")
    libs = triton / "nvidia_pytriton.libs"
    missing = [
        line.split()[0]
        for line in subprocess.run(
            ["ldd", str(stub)], capture_output=True, text=True, env={**os.environ, "LD_LIBRARY_PATH": str(libs)}
        ).stdout.splitlines()
        if "not found" in line
    ]
    if missing:
        raise SystemExit(
            f"Triton's Python backend stub needs {', '.join(missing)}: install it "
            f"(Debian: apt-get install libpython{version}) and run this again"
        )
    folder = work / "triton-backends" / "python"
    folder.mkdir(parents=True, exist_ok=True)
    source = triton / "pytriton" / "tritonserver" / "backends" / "python"
    for f in (*source.iterdir(), stub):
        shutil.copy2(f, folder / f.name)
    return folder.parent


def triton_repository(work: Path, models: dict[str, tuple[Path, list[int]]], threads: int, tag: str) -> Path:
    repo = work / f"triton-repo-{tag}"
    site = sysconfig.get_paths()["purelib"]
    for name, (onnx_file, shape) in models.items():
        version = repo / name / "1"
        version.mkdir(parents=True)
        shutil.copy(onnx_file, version / "model.onnx")
        (version / "model.py").write_text(MODEL_PY.format(site=site))
        dims = ", ".join(map(str, shape[1:]))
        (repo / name / "config.pbtxt").write_text(CONFIG.format(dims=dims, threads=threads))
    return repo


def start_triton(
    triton: Path,
    backends: Path,
    repo: Path,
    models: list[str],
    work: Path,
    cores: tuple[frozenset[int], frozenset[int]] | None,
) -> tuple[subprocess.Popen[bytes], int, list[int]]:
    """tritonserver on 127.0.0.1 serving ``repo``; pinned when ``cores`` is (front end, runtime): it starts on
    the runtime cores, so the stub processes it spawns for its models (the runtime) stay there, and once the
    models are ready its own threads move to the front-end cores. Returns (process, HTTP port, stub pids)."""
    port, grpc, metrics = serving.free_port(), serving.free_port(), serving.free_port()
    flags = [
        "--http-address", "127.0.0.1", "--grpc-address", "127.0.0.1", "--metrics-address", "127.0.0.1",
        "--http-port", str(port), "--grpc-port", str(grpc), "--metrics-port", str(metrics), "--log-verbose", "0",
        "--log-info", "false",
    ]  # fmt: skip
    log = work / f"triton-{repo.name}.log"
    runtime = sorted(cores[1]) if cores else None
    proc = tritonserver(
        triton, backends, repo, flags, log,
        preexec_fn=(lambda: os.sched_setaffinity(0, runtime)) if runtime else None,
    )  # fmt: skip
    for model in models:
        serving.wait_ready(port, f"/v2/models/{model}/ready", proc, log)
    stubs = children(proc.pid)
    if cores:
        for task in Path(f"/proc/{proc.pid}/task").iterdir():
            os.sched_setaffinity(int(task.name), cores[0])
    return proc, port, stubs


def tritonserver(
    triton: Path, backends: Path, repo: Path, flags: list[str], log: Path, **popen: Any
) -> subprocess.Popen[bytes]:
    """The wheel's tritonserver serving ``repo`` with ``flags``, its libraries found, its output into ``log``
    (``popen``: more of ``subprocess.Popen``'s arguments)."""
    cmd = [str(triton / "pytriton" / "tritonserver" / "bin" / "tritonserver"), "--model-repository", str(repo),
           "--backend-directory", str(backends), *flags]  # fmt: skip
    env = {**os.environ, "LD_LIBRARY_PATH": str(triton / "nvidia_pytriton.libs")}
    return subprocess.Popen(cmd, stdout=log.open("w"), stderr=subprocess.STDOUT, env=env, **popen)


def children(pid: int) -> list[int]:
    return [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]


STUB_REGIONS = "/dev/shm/triton_python_backend_shm_region_"


def stub_regions(pid: int) -> set[Path]:
    """The shared memory objects tritonserver ``pid`` and its Python backend's stubs map: a stopped server's stubs
    leave them in /dev/shm (1 MB each, one per model instance and run), so whoever stops it removes them."""
    found: set[Path] = set()
    for p in (pid, *children(pid)):
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/{p}/maps").read_text().splitlines():
                at = line.find(STUB_REGIONS)
                if at >= 0:
                    found.add(Path(line[at:].removesuffix(" (deleted)")))
    return found


def stop_triton(proc: subprocess.Popen[bytes], group: bool = False) -> None:
    """Stop tritonserver ``proc`` (``group``: and what is left of its process group, its stubs) and remove the
    shared memory its stubs mapped."""
    regions = stub_regions(proc.pid) if proc.poll() is None else set()
    serving.stop(proc)
    if group:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
    for region in regions:
        region.unlink(missing_ok=True)


# -- cells -------------------------------------------------------------------------------------------
def with_cores(pids: list[int], run: Callable[[], dict[str, float]]) -> dict[str, float]:
    """``run``, plus the cores all of a server's processes used meanwhile (Triton's stubs are processes of
    their own: the runtime runs there)."""
    before, started = sum(serving.cpu_seconds(p) for p in pids), time.perf_counter()
    result = run()
    result["server_all_cores"] = round(
        (sum(serving.cpu_seconds(p) for p in pids) - before) / (time.perf_counter() - started), 2
    )
    return result


def run_cell(port: int, pids: list[int], model: str, req: bytes, conc: int, warmup: float, duration: float,
             watch: frozenset[int] | None) -> dict[str, float]:  # fmt: skip
    if conc == 1:
        load = partial(serving.run_sequential, port, req, warmup, duration, pids[0])
    else:
        load = partial(serving.run_concurrent, port, req, conc, warmup, duration, pids[0], watch)
    # both servers' statistics extensions report items, executions and each execution's compute time
    return serving.run_computing(port, model, partial(with_cores, pids, load))


def answer_of(port: int, model: str, shape: list[int]) -> np.ndarray:
    with socket.create_connection(("127.0.0.1", port)) as s:
        s.sendall(serving.request_bytes(model, shape, port))
        raw = serving._read_response(s, bytearray())
    head, body = raw.split(b"\r\n\r\n", 1)
    if not head.startswith(b"HTTP/1.1 200"):
        raise RuntimeError(f"{model} on port {port} answered {raw[:300]!r}")
    return np.asarray(json.loads(body)["outputs"][0]["data"])


def run_model(
    home: Path, triton: Path, backends: Path, work: Path, name: str, onnx_file: Path, shape: list[int],
    warmup: float, duration: float, repeats: int,
) -> list[dict[str, Any]]:  # fmt: skip
    rows: list[dict[str, Any]] = []
    layouts: list[tuple[str, tuple[frozenset[int], frozenset[int]] | None]] = [("shared", None)]
    cores = serving.placement()
    if cores is not None:
        layouts.append(("pinned", cores))
    for layout, pinned in layouts:
        threads = len(pinned[1]) if pinned else 0
        extra: tuple[str, ...] = ()
        if pinned:
            from polystack.server.placement import format_cpu_list

            extra = ("--frontend-cpus", format_cpu_list(pinned[0]), "--runtime-cpus", format_cpu_list(pinned[1]))
        repo = triton_repository(work, {name: (onnx_file, shape)}, threads, f"{name}-{layout}")
        servers: dict[str, tuple[subprocess.Popen[bytes], int, list[int]]] = {}
        before = os.sched_getaffinity(0)
        try:
            proc, port = serving.start_polystack(home, name, True, work, extra)
            servers["polystack"] = (proc, port, [proc.pid])
            tproc, tport, stubs = start_triton(triton, backends, repo, [name], work, pinned)
            servers["triton"] = (tproc, tport, [tproc.pid, *stubs])
            mine, theirs = answer_of(port, name, shape), answer_of(tport, name, shape)
            if not np.allclose(mine, theirs, rtol=1e-4, atol=1e-5):
                raise RuntimeError(f"Triton's answer differs from polystack's: {theirs} against {mine}")
            if pinned:
                os.sched_setaffinity(0, pinned[0])  # the client on the front-end core, as in the serving benchmark
            cells = PINNED_CELLS if pinned else SHARED_CELLS
            watch = pinned[1] if pinned else None
            rows += layout_rows(servers, name, shape, layout, cells, watch, warmup, duration, repeats)
        finally:
            os.sched_setaffinity(0, before)
            for server, (proc, _, _) in servers.items():
                if server == "triton":
                    stop_triton(proc)
                else:
                    serving.stop(proc)
    return rows


def layout_rows(
    servers: dict[str, tuple[subprocess.Popen[bytes], int, list[int]]], name: str, shape: list[int], layout: str,
    cells: tuple[tuple[int, int, bool], ...], watch: frozenset[int] | None, warmup: float, duration: float,
    repeats: int,
) -> list[dict[str, Any]]:  # fmt: skip
    """Each cell on both servers, alternating."""
    rows: list[dict[str, Any]] = []
    for items, conc, binary in cells:

        def one(
            server: str, _rep: int, items: int = items, conc: int = conc, binary: bool = binary
        ) -> dict[str, float]:
            _, port, pids = servers[server]
            req = serving.request_bytes(name, [items, *shape[1:]], port, binary=binary)
            return run_cell(port, pids, name, req, conc, warmup, duration, watch)

        for server, runs in serving.alternating(SERVERS, repeats, one).items():
            row = {"model": name, "server": server, "cores": layout, "concurrency": conc,
                   "client": f"raw-http-binary-b{items}" if binary else "raw-http-json", "items_per_request": items,
                   **serving.median_of(runs), "server_all_cores": float(np.median([r["server_all_cores"] for r in runs]))}  # fmt: skip
            rows.append(row)
            print(json.dumps(row), flush=True)
    return rows


# -- results -----------------------------------------------------------------------------------------
def ratios(rows: list[dict[str, Any]], floors: dict[str, Any]) -> dict[str, Any]:
    """Each server's items/s over in-process Offline at batch 32 (the better shared set-up, or the pinned
    runtime cores'), and Triton's over polystack's, per cell."""
    out: dict[str, Any] = {}
    for model, floor in floors.items():
        entry: dict[str, Any] = {}
        shared = max(floor["offline_items_per_s_b32"], floor.get("offline_items_per_s_b32_2x1", 0))
        for r in (r for r in rows if r["model"] == model and r["server"] == "polystack"):
            tag = f"{r['cores']}_{r['client'].removeprefix('raw-http-')}_c{r['concurrency']}"
            t = next(t for t in rows if t["server"] == "triton" and all(
                t[k] == r[k] for k in ("model", "cores", "client", "concurrency")))  # fmt: skip
            offline = floor["offline_items_per_s_b32_pinned"] if r["cores"] == "pinned" else shared
            if r["concurrency"] > 1:
                for server, cell in (("polystack", r), ("triton", t)):
                    entry[f"{server}_items_over_offline_{tag}"] = round(
                        cell["rps"] * cell["items_per_request"] / offline, 3
                    )
            entry[f"triton_rps_over_polystack_{tag}"] = round(t["rps"] / r["rps"], 2)
            if r["concurrency"] == 1:
                entry[f"triton_p50_over_polystack_{tag}"] = round(t["p50_ms"] / r["p50_ms"], 2)
        out[model] = entry
    return out


def write_markdown(result: dict[str, Any]) -> None:
    floors = result["in_process"]
    lines = [
        START,
        "## Triton reference (`bench/triton_reference.py`)",
        "",
        serving.measured(result, f"{result['duration_s']:g} s per cell, median of {result['repeats']} runs"),
        "tritonserver 2.51.0 (from the `nvidia-pytriton==0.7.0` wheel; its C++ HTTP front end and dynamic batcher)"
        " serves each model with its Python backend running the same ONNX file with onnxruntime (the wheel has no"
        " onnxruntime backend); polystack serves it as usual. Both batch (32 items or 2 ms), both are driven by the"
        " serving benchmark's client from 127.0.0.1, side by side. `shared`: both use both cores (ONNX Runtime's"
        " default threads); `pinned`: front end and client on the first core, runtime on the second (polystack"
        " `--frontend-cpus 0 --runtime-cpus 1`; Triton's process on core 0, its stub process on core 1; one runtime"
        " thread). `of Offline` is items/s over in-process Offline items/s at batch 32 (polystack `Engine.infer`;"
        " shared: the better of 1 instance and 2 x 1 thread; pinned: on the runtime core), the issue's batching"
        " target being 0.85. `cores` is all of the server's processes (Triton's stub included); `computing` the"
        " share of the time the runtime spent in model calls and `items/call` the items each ran (both from each"
        " server's statistics extension).",
        "",
        "| model | cores | client | concurrency | server | p50 ms | p99 ms | req/s | items/s | of Offline |"
        " cores: client / server | computing | items/call |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in result["rows"]:
        floor = floors[r["model"]]
        offline = (
            floor["offline_items_per_s_b32_pinned"]
            if r["cores"] == "pinned"
            else max(floor["offline_items_per_s_b32"], floor.get("offline_items_per_s_b32_2x1", 0))
        )
        items = r["rps"] * r["items_per_request"]
        lines.append(
            f"| {r['model']} | {r['cores']} | {r['client']} | {r['concurrency']} | {r['server']} | {r['p50_ms']:.3f}"
            f" | {r['p99_ms']:.3f} | {r['rps']:,.0f} | {items:,.0f} | {items / offline:.3f} |"
            f" {r['client_cores']:.2f} / {r['server_all_cores']:.2f} | {r.get('runtime_computing', 0):.3f} |"
            f" {r.get('items_per_batch', 0):.1f} |"
        )
    lines += ["", "In-process Offline items/s at batch 32 (polystack `Engine.infer`):", ""]
    lines += ["| model | 1 instance | 2 instances x 1 thread | pinned runtime core |", "|---|---|---|---|"]
    for model, f in floors.items():
        lines.append(
            f"| {model} | {f['offline_items_per_s_b32']:,.0f} | {f.get('offline_items_per_s_b32_2x1', 0):,.0f} |"
            f" {f.get('offline_items_per_s_b32_pinned', 0):,.0f} |"
        )
    lines += ["", "Ratios:", ""]
    for model, entry in result["ratios"].items():
        lines.append(f"- {model}: " + ", ".join(f"{k} = {v}" for k, v in entry.items()))
    lines.append(END)
    serving.put_section(START, END, lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="1 s per cell, one run")
    ap.add_argument("--duration-s", type=float, default=4.0)
    ap.add_argument("--warmup-s", type=float, default=1.0)
    ap.add_argument("--models", default="mlp,cnn")
    ap.add_argument("--repeats", type=int, default=2, help="runs per cell (medians reported)")
    args = ap.parse_args()
    duration, warmup = (1.0, 0.3) if args.quick else (args.duration_s, args.warmup_s)
    repeats = 1 if args.quick else max(1, args.repeats)
    load_start = round(os.getloadavg()[0], 2)
    triton = ensure_tritonserver()
    work = Path(tempfile.mkdtemp(prefix="polystack-bench-triton-"))
    backends = backends_folder(triton, work)
    home = work / "home"
    models = {k: v for k, v in serving.build_models(work).items() if k in args.models.split(",")}
    for name, (path, _) in models.items():
        subprocess.run(
            [
                str(serving.ROOT / ".venv" / "bin" / "polystack"),
                "--home",
                str(home),
                "register",
                str(path),
                "--name",
                name,
            ],
            check=True,
            stdout=subprocess.DEVNULL,
        )
    rows: list[dict[str, Any]] = []
    floors: dict[str, Any] = {}
    for name, (path, shape) in models.items():
        floors[name] = serving.in_process(home, name, shape, duration)
        print(f"{name} in-process: {floors[name]}", flush=True)
        rows += run_model(home, triton, backends, work, name, path, shape, warmup, duration, repeats)
    result = {
        "benchmark": "triton_reference",
        "command": " ".join(["python", "bench/triton_reference.py", *sys.argv[1:]]),
        "tritonserver": "2.51.0 (nvidia-pytriton 0.7.0), Python backend running onnxruntime",
        "duration_s": duration,
        "repeats": repeats,
        "in_process": floors,
        "rows": rows,
        "ratios": ratios(rows, floors),
        **serving.run_facts(load_start),
    }
    serving.save(RESULTS, result, write_markdown)
    shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
