"""AOTInductor packages (Triton's ``torch_aoti``): the same exported program compiled by AOTInductor against the
runtimes polystack already serves it with, in process, per batch size.

    .venv/bin/python bench/torch_aoti.py            # about 4 minutes (the two compiles take about a minute)
    .venv/bin/python bench/torch_aoti.py --quick    # 0.2 s per cell, for a smoke check

The MLP 256-1024-1024-10 and the ResNet-style CNN on 96x96 images of ``bench/specialization.py``, each exported
once with ``torch.export`` (batch 1..32 dynamic). ``polystack variants`` builds and gates the variants of the
exported program (torch eager and torch.compile, ONNX Runtime fp32 and int8, OpenVINO fp32 and bf16); the same program is compiled
with ``torch._inductor.aoti_compile_and_package`` and packed with a Triton config (``formats/torch_aoti.py``) as a
repository's ``model.pt2`` is, and its answers are compared with torch eager's (the figure in the table). Each
verified runtime is loaded as the server loads it and timed: ms per call at 1 and 32 rows, the runtimes taking
turns, the best of the repeats, each with its own default threads on this machine's cores.

Results go to bench/results/torch_aoti.json and a table into BENCHMARKS.md (between torch_aoti markers).
"""

from __future__ import annotations

import sys
import time
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import serving  # the benchmarks' result files and BENCHMARKS.md sections
import specialization  # its models
import torchscript  # its in-process runner and timing
from torchscript import ms_per_call

RESULTS = serving.ROOT / "bench" / "results" / "torch_aoti.json"
START, END = "<!-- torch_aoti:start -->", "<!-- torch_aoti:end -->"
BATCHES = (1, 32)
EXAMPLES = {"mlp": (256,), "cnn": (3, 96, 96)}


def compiled(name: str, source: Path, work: Path) -> tuple[Path, float]:
    """The exported program at ``source`` recompiled by AOTInductor for a batch of 1..32, packed with its Triton
    config; the seconds the compile took."""
    import torch

    from polystack.formats.aoti_source import read_source, wrapper_source
    from polystack.formats.torch_aoti import pack
    from polystack.zoo import aoti_package

    module = torch.export.load(str(source)).module()
    started = time.perf_counter()
    package = aoti_package(work / f"{name}.pt2", module, (torch.randn(2, *EXAMPLES[name]),), max_batch=32)
    took = time.perf_counter() - started
    with zipfile.ZipFile(package) as zf:  # torch may narrow the batch's range as it compiles
        source_text = wrapper_source(zf)
    _, facts = read_source(source_text or "", 1, name)
    high = facts.dims[0][0].high if facts and facts.dims[0] else None
    config = {
        "name": name, "platform": "torch_aoti", "max_batch_size": min(32, high or 32),
        "input": [{"name": "INPUT__0", "data_type": "TYPE_FP32", "dims": list(EXAMPLES[name])}],
        "output": [{"name": "OUTPUT__0", "data_type": "TYPE_FP32", "dims": [10]}],
    }  # fmt: skip
    return pack(package, config, name, work / f"{name}.torch_aoti.zip"), took


def bench_model(name: str, store: Any, work: Path, duration: float, repeats: int) -> list[dict[str, Any]]:
    from polystack.backends import registry
    from polystack.engine import spec_for_variant
    from polystack.formats import import_model
    from polystack.formats.torch_aoti import signature, unpack
    from polystack.variants import build

    source, _, title = specialization.BUILDERS[name](work)
    title = title.replace(" (torch.export)", "")
    imported = import_model(source, work)
    record, _ = store.register(
        imported.artifact, name=name, format=imported.format, signature=imported.signature, source_filename=source.name
    )
    report = build(store, record)
    loaded: dict[str, Any] = {}
    feeds: dict[str, str] = {}  # each runtime's input name
    rows: list[dict[str, Any]] = []
    for v in report.variants:
        label = f"{v.backend} {v.precision}" + (
            f" ({v.recipe})"
            if v.recipe
            else " (torch.compile)"
            if v.options.get("compile")
            else " (the exported program)"
        )
        if v.status != "verified":
            rows.append({"model": title, "variant": label, "status": v.status, "why": v.error or str(v.figures)})
            continue
        spec = spec_for_variant(store, v)
        backend = registry.require(spec.backend)
        loaded[label] = backend.load(spec.artifact, record.signature, backend.parse_options(spec.options), "cpu")
        feeds[label] = record.signature.inputs[0].name
    package, compile_s = compiled(name, source, work)
    config, _, _ = unpack(package)
    aoti = registry.require("torch_aoti")
    package_label = label = "torch_aoti fp32 (AOTInductor package)"
    loaded[label] = aoti.load(package, signature(config), aoti.parse_options({}), "cpu")
    feeds[label] = "INPUT__0"
    rng = np.random.default_rng(0)
    check = rng.standard_normal((8, *EXAMPLES[name])).astype(np.float32)
    eager = "torch fp32 (the exported program)"
    want = next(iter(loaded[eager].infer({feeds[eager]: check}).values()))
    got = loaded[label].infer({"INPUT__0": check})["OUTPUT__0"]
    max_diff = float(np.max(np.abs(got - want)))
    agree = float(np.mean(got.argmax(1) == want.argmax(1)))
    for batch in BATCHES:
        x = rng.standard_normal((batch, *EXAMPLES[name])).astype(np.float32)
        best = {label: float("inf") for label in loaded}
        for _ in range(repeats):  # the runtimes take turns, so that the machine's drift reaches each alike
            for label, model in loaded.items():
                if label == package_label and batch > config["max_batch_size"]:
                    continue  # compiled for fewer rows
                best[label] = min(best[label], ms_per_call(model, {feeds[label]: x}, duration))
        base = best[eager]
        for label, ms in best.items():
            if ms == float("inf"):
                rows.append({"model": title, "variant": label, "status": "not run", "rows": batch,
                             "why": f"compiled for at most {config['max_batch_size']} rows"})  # fmt: skip
                continue
            row = {"model": title, "variant": label, "status": "verified", "rows": batch, "ms": round(ms, 4),
                   "speedup": round(base / ms, 2)}  # fmt: skip
            if label.startswith("torch_aoti"):
                row |= {"max_abs_diff": max_diff, "top1_agreement": agree, "compile_s": round(compile_s, 1)}
            rows.append(row)
            print(row, flush=True)
    for model in loaded.values():
        model.close()
    return rows


def main() -> int:
    return torchscript.run("torch_aoti", __doc__ or "", RESULTS, bench_model, write_markdown)


def write_markdown(result: dict[str, Any]) -> None:
    lines = [
        START,
        "## AOTInductor packages (`bench/torch_aoti.py`)",
        "",
        serving.measured(result, "in process, the best of the repeats of each cell", sharing=""),
        "One exported program (`torch.export`, batch 1..32), served as torch runs it (polystack's `torch` runtime),",
        "as the variants `polystack variants` builds from it, and compiled by AOTInductor into a package (`model.pt2`",
        "with a `torch_aoti` config, as Triton's PyTorch backend serves it); ms per call and how many times faster",
        "than torch. The package's answers against torch's: largest absolute difference and top-1 agreement on 8",
        "random inputs. A package is timed only for the rows its compiled batch takes (torch may narrow the",
        "exported range as it compiles; the package's generated checks say it). At 1 row the package runs 2: torch",
        "compiles a batch exported with min=1 for 2 and more, as it does one that needs 2, and polystack pads a",
        "smaller batch up to it rather than hand a kernel fewer rows than it may read.",
        "",
        "| model | runtime | rows | ms | x torch | package vs torch |",
        "|---|---|---|---|---|---|",
    ]
    for r in result["rows"]:
        if r["status"] != "verified":
            continue
        against = ""
        if "max_abs_diff" in r:
            against = (
                f"max diff {r['max_abs_diff']:.1e}, top-1 {r['top1_agreement']:.0%}, compiled in {r['compile_s']} s"
            )
        lines.append(f"| {r['model']} | {r['variant']} | {r['rows']} | {r['ms']:.3f} | {r['speedup']} | {against} |")
    rejected = [r for r in result["rows"] if r["status"] != "verified"]
    if rejected:
        lines += ["", "Not timed:", ""]
        lines += [
            f"- {r['model']}, {r['variant']}"
            + (f", {r['rows']} rows" if "rows" in r else "")
            + f": {r['status']} ({r['why']})"
            for r in rejected
        ]
    lines.append(END)
    serving.put_section(START, END, lines)


if __name__ == "__main__":
    raise SystemExit(main())
