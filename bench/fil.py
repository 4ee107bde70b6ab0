"""FIL models' engines: Treelite's GTIL (what Triton's FIL backend's numbers are) against XGBoost's and LightGBM's
own predictors, in process, per batch size.

    .venv/bin/python bench/fil.py            # about 1 minute
    .venv/bin/python bench/fil.py --quick    # 0.2 s per cell, for a smoke check

A model of Triton's FIL backend (``formats/fil.py``) loaded by polystack's fil backend with ``engine`` treelite
(GTIL for every batch) and native (the framework's own predictor for every batch), for an XGBoost binary
classifier (200 trees of depth 6, 32 features) and a LightGBM 3-class classifier (100 rounds of 31 leaves, 32
features), answering probabilities; ms per call of ``FilModel.infer`` (FIL's post-processing included) at 1, 8,
64, 256 and 1,024 rows, the engines taking turns, the best of the repeats; each engine with the machine's
threads. The engines' answers are checked equal first (1e-5). ``engine: auto``, the default, runs GTIL below
``backends.fil.NATIVE_FROM`` rows (64 for XGBoost, 1 for LightGBM) and the framework's predictor from there.

Results go to bench/results/fil.json and a table into BENCHMARKS.md (between fil markers).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import serving  # the benchmarks' result files and BENCHMARKS.md sections

from polystack.backends.fil import NATIVE_FROM, FilBackend, FilModel, FilOptions
from polystack.formats.fil import FilSettings, pack, signature_of

RESULTS = serving.ROOT / "bench" / "results" / "fil.json"
START, END = "<!-- fil:start -->", "<!-- fil:end -->"
FEATURES = 32
BATCHES = (1, 8, 64, 256, 1024)


def models(work: Path) -> dict[str, tuple[Path, FilSettings]]:
    import lightgbm as lgb
    import xgboost as xgb

    rng = np.random.default_rng(0)
    x = rng.standard_normal((5000, FEATURES)).astype(np.float32)
    z = x[:, 0] + 0.5 * x[:, 1] - x[:, 2] * x[:, 3]
    binary, three = (z > 0).astype(int), np.digitize(z, [-0.5, 0.5])
    xgb.XGBClassifier(n_estimators=200, max_depth=6, random_state=0).fit(x, binary).save_model(work / "xgboost.json")
    booster = lgb.LGBMClassifier(n_estimators=100, num_leaves=31, verbose=-1).fit(x, three).booster_
    booster.save_model(str(work / "model.txt"))
    return {
        "xgboost binary (200 trees)": (
            work / "xgboost.json", FilSettings("xgboost_json", True, FEATURES, (2,), predict_proba=True)
        ),
        "lightgbm 3-class (300 trees)": (
            work / "model.txt", FilSettings("lightgbm", True, FEATURES, (3,), predict_proba=True)
        ),
    }  # fmt: skip


def load(file: Path, settings: FilSettings, engine: str, work: Path) -> FilModel:
    artifact = pack(file, settings, work / f"{file.stem}-{engine}.zip")
    model = FilBackend().load(artifact, signature_of(settings), FilOptions(engine=engine), "cpu")  # type: ignore[arg-type]
    assert isinstance(model, FilModel)
    return model


def ms_per_call(model: FilModel, x: np.ndarray, duration_s: float) -> float:
    feed = {"input__0": x}
    for _ in range(3):
        model.infer(feed)
    n, started = 0, time.perf_counter()
    while time.perf_counter() - started < duration_s:
        model.infer(feed)
        n += 1
    return (time.perf_counter() - started) / n * 1e3


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    duration = 0.2 if args.quick else 1.0
    load_start = round(os.getloadavg()[0], 2)
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="polystack-bench-fil-") as folder:
        work = Path(folder)
        x_all = np.random.default_rng(1).standard_normal((max(BATCHES), FEATURES)).astype(np.float32)
        for name, (file, settings) in models(work).items():
            engines = {e: load(file, settings, e, work) for e in ("treelite", "native")}
            check = {e: m.infer({"input__0": x_all})["output__0"] for e, m in engines.items()}
            np.testing.assert_allclose(check["native"], check["treelite"], rtol=1e-5, atol=1e-6)
            for batch in BATCHES:
                x = x_all[:batch].copy()
                best = {e: min(ms_per_call(m, x, duration) for _ in range(args.repeats)) for e, m in engines.items()}
                row = {"model": name, "rows": batch, **{f"{e}_ms": round(v, 4) for e, v in best.items()}}
                row["native_over_treelite"] = round(best["treelite"] / best["native"], 2)
                rows.append(row)
                print(row, flush=True)
    result = {
        "benchmark": "fil",
        "command": " ".join(["python", "bench/fil.py", *sys.argv[1:]]),
        "native_from": NATIVE_FROM,
        "rows": rows,
        **serving.run_facts(load_start),
    }
    serving.save(RESULTS, result, write_markdown)
    return 0


def write_markdown(result: dict[str, Any]) -> None:
    lines = [
        START,
        "## FIL models' engines (`bench/fil.py`)",
        "",
        serving.measured(result, "in process, the best of the repeats of each cell", sharing=""),
        "ms per `FilModel.infer` call (FIL's post-processing included): Treelite's GTIL (FIL's numbers) and the",
        "framework's own predictor; `engine: auto`, the default, runs GTIL below "
        f"{result['native_from']['xgboost_json']} rows of an XGBoost model and the",
        "framework's predictor from there, and LightGBM's for every batch (once it gave GTIL's values at load).",
        "",
        "| model | rows | GTIL ms | framework's ms | GTIL / framework's |",
        "|---|---|---|---|---|",
    ]
    for r in result["rows"]:
        lines.append(
            f"| {r['model']} | {r['rows']:,} | {r['treelite_ms']:.3f} | {r['native_ms']:.3f} | {r['native_over_treelite']} |"
        )
    lines.append(END)
    serving.put_section(START, END, lines)


if __name__ == "__main__":
    raise SystemExit(main())
