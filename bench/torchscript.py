"""Models of Triton's PyTorch backend: the TorchScript module as that backend runs it (torch, under inference mode)
against the variants polystack builds from it and verifies against it, in process, per batch size.

    .venv/bin/python bench/torchscript.py            # about 2 minutes
    .venv/bin/python bench/torchscript.py --quick    # 0.2 s per cell, for a smoke check

Two models, scripted with ``torch.jit.script`` and packed with a Triton config (INPUT__0 -> OUTPUT__0) as a
repository folder's ``model.pt`` is (``formats/torchscript.py``): the MLP 256-1024-1024-10 and the ResNet-style
CNN on 96x96 images of ``bench/specialization.py``. ``polystack variants``' build makes and gates every variant
(torchscript, ONNX Runtime fp32 and int8 through the TorchScript ONNX exporter, OpenVINO fp32 and bf16); each
verified one is loaded as the server loads it and timed: ms per call at 1 and 32 rows, the variants taking turns,
the best of the repeats, each runtime with its own default threads on this machine's cores. A rejected variant is
listed with the figures that rejected it, not timed.

Results go to bench/results/torchscript.json and a table into BENCHMARKS.md (between torchscript markers).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import serving  # the benchmarks' result files and BENCHMARKS.md sections
import specialization  # its models

RESULTS = serving.ROOT / "bench" / "results" / "torchscript.json"
START, END = "<!-- torchscript:start -->", "<!-- torchscript:end -->"
BATCHES = (1, 32)


def packed(name: str, work: Path) -> tuple[Path, str]:
    """The model scripted and packed with its Triton config, as a repository registers it."""
    import torch

    from polystack.formats.torchscript import pack

    source, _, title = specialization.BUILDERS[name](work)
    module = torch.export.load(str(source)).module()
    example = {"mlp": torch.randn(2, 256), "cnn": torch.randn(2, 3, 96, 96)}[name]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        scripted = torch.jit.trace(module, (example,)).eval()  # an exported program's module traces (in eval)
        scripted.save(str(work / f"{name}.pt"))
    dims = list(example.shape[1:])
    config = {
        "name": name, "platform": "pytorch_libtorch", "max_batch_size": 32,
        "input": [{"name": "INPUT__0", "data_type": "TYPE_FP32", "dims": dims}],
        "output": [{"name": "OUTPUT__0", "data_type": "TYPE_FP32", "dims": [10]}],
    }  # fmt: skip
    return pack(work / f"{name}.pt", config, name, work / f"{name}.torchscript.zip"), title.replace(
        "(torch.export)", "(TorchScript)"
    )


def ms_per_call(model: Any, feed: dict[str, np.ndarray], duration_s: float) -> float:
    for _ in range(3):
        model.infer(feed)
    n, started = 0, time.perf_counter()
    while time.perf_counter() - started < duration_s:
        model.infer(feed)
        n += 1
    return (time.perf_counter() - started) / n * 1e3


def bench_model(name: str, store: Any, work: Path, duration: float, repeats: int) -> list[dict[str, Any]]:
    from polystack.backends import registry
    from polystack.engine import spec_for_variant
    from polystack.formats import import_model
    from polystack.variants import build

    path, title = packed(name, work)
    imported = import_model(path, work)
    record, _ = store.register(
        imported.artifact, name=name, format=imported.format, signature=imported.signature, source_filename=path.name
    )
    report = build(store, record)
    loaded: dict[str, Any] = {}
    rows: list[dict[str, Any]] = []
    for v in report.variants:
        label = f"{v.backend} {v.precision}" + (f" ({v.recipe})" if v.recipe else " (the module)")
        if v.status != "verified":
            rows.append({"model": title, "variant": label, "status": v.status, "why": v.error or str(v.figures)})
            continue
        spec = spec_for_variant(store, v)
        backend = registry.require(spec.backend)
        loaded[label] = backend.load(spec.artifact, record.signature, backend.parse_options(spec.options), "cpu")
    rng = np.random.default_rng(0)
    shape = record.signature.inputs[0].shape[1:]
    for batch in BATCHES:
        feed = {"INPUT__0": rng.standard_normal((batch, *shape)).astype(np.float32)}
        best = {label: float("inf") for label in loaded}
        for _ in range(repeats):  # the variants take turns, so that the machine's drift reaches each alike
            for label, model in loaded.items():
                best[label] = min(best[label], ms_per_call(model, feed, duration))
        base = best[next(label for label in loaded if label.startswith("torchscript"))]
        for label, ms in best.items():
            rows.append(
                {"model": title, "variant": label, "status": "verified", "rows": batch, "ms": round(ms, 4),
                 "speedup": round(base / ms, 2)}
            )  # fmt: skip
            print(rows[-1], flush=True)
    for model in loaded.values():
        model.close()
    return rows


def main() -> int:
    return run("torchscript", __doc__ or "", RESULTS, bench_model, write_markdown)


def run(benchmark: str, doc: str, results: Path, bench_model: Any, write_markdown: Any) -> int:
    """An in-process benchmark of the MLP and the CNN (``bench_model`` each, in one store), its result saved to
    ``results`` and its table written by ``write_markdown``; bench/torch_aoti.py runs the same way."""
    from polystack.store import Store

    ap = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    duration = 0.2 if args.quick else 1.0
    load_start = round(os.getloadavg()[0], 2)
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix=f"polystack-bench-{benchmark}-") as folder:
        work = Path(folder)
        store = Store.at(work / "home")
        try:
            for name in ("mlp", "cnn"):
                rows += bench_model(name, store, work, duration, args.repeats)
        finally:
            store.close()
    result = {
        "benchmark": benchmark,
        "command": " ".join(["python", f"bench/{benchmark}.py", *sys.argv[1:]]),
        "rows": rows,
        **serving.run_facts(load_start),
    }
    serving.save(results, result, write_markdown)
    return 0


def write_markdown(result: dict[str, Any]) -> None:
    lines = [
        START,
        "## Models of Triton's PyTorch backend (`bench/torchscript.py`)",
        "",
        serving.measured(result, "in process, the best of the repeats of each cell", sharing=""),
        "A TorchScript module (`model.pt` with a `pytorch_libtorch` config) as torch runs it, which is what Triton's",
        "PyTorch backend runs, against the variants `polystack variants` builds from it and verifies against it;",
        "ms per call and how many times faster than the module.",
        "",
        "| model | variant | rows | ms | x the module |",
        "|---|---|---|---|---|",
    ]
    for r in result["rows"]:
        if r["status"] == "verified":
            lines.append(f"| {r['model']} | {r['variant']} | {r['rows']} | {r['ms']:.3f} | {r['speedup']} |")
    rejected = [r for r in result["rows"] if r["status"] != "verified"]
    if rejected:
        lines += ["", "Not timed (the gate's verdict):", ""]
        lines += [f"- {r['model']}, {r['variant']}: {r['status']} ({r['why']})" for r in rejected]
    lines.append(END)
    serving.put_section(START, END, lines)


if __name__ == "__main__":
    raise SystemExit(main())
