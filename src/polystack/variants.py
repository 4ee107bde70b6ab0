"""Specialization: plan the variants a model can have here, build what is missing, gate each one.

``plan`` lists recipes from the model's format and the installed runtimes and their devices (the
native runtime on every device it offers; for models that convert to ONNX: ONNX Runtime fp32 on
its devices, int8 by dynamic and by calibrated static quantization, OpenVINO f32 and the
hardware's lower-precision hint). ``build`` converts (each intermediate once), stores every
artifact content-addressed, loads it from the store on its backend, runs the samples and lets the
gate decide: ``verified``, ``rejected`` (with the figures) or ``failed`` (with why). One variant
failing never stops the others.
"""

from __future__ import annotations

import dataclasses
import tempfile
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from polystack import samples as samples_mod
from polystack.backends import registry
from polystack.convert import TO_ONNX, ConvertContext, step
from polystack.engine import source_options
from polystack.errors import BackendUnavailable, PolystackError
from polystack.store import ModelRecord, Store, VariantRecord
from polystack.store.variants import Status, build_key
from polystack.verify import Tolerance, Verdict, compare, run

# The runtime that runs each source format as its own framework does: the gate's reference.
NATIVE = {
    "onnx": "onnxruntime",
    "torch.export": "torch",
    "skops": "sklearn",
    "xgboost": "xgboost",
    "lightgbm": "lightgbm",
    "jax.export": "jax",
    "litert": "litert",
    "openvino": "openvino",
    "fil": "fil",
    "torchscript": "torchscript",
    "torch_aoti": "torch_aoti",
}
TABULAR = frozenset({"skops", "xgboost", "lightgbm"})  # ONNX-ML: no int8, no OpenVINO (ai.onnx.ml ops)
VERIFY_BATCH = 16


@dataclass(frozen=True)
class Recipe:
    backend: str
    device: str
    precision: str
    options: Mapping[str, Any]
    steps: tuple[str, ...] = ()  # converter steps from the source; () = the source artifact itself
    format: str = ""  # format of the artifact the backend loads

    @property
    def recipe(self) -> str:
        return "+".join(self.steps)

    @property
    def build_key(self) -> str:
        return build_key(self.backend, self.device, self.precision, self.options, self.recipe)

    def describe(self) -> str:
        opts = ",".join(f"{k}={v}" for k, v in sorted(self.options.items()) if k != "trusted")
        return (
            f"{self.backend}/{self.device}/{self.precision}"
            + (f" [{opts}]" if opts else "")
            + (f" via {self.recipe}" if self.recipe else "")
        )


def _devices(name: str) -> list[str]:
    try:
        backend = registry.get(name)
        return backend.devices() if backend.available() else []
    except PolystackError:
        return []
    except Exception:  # a runtime that is installed but broken offers nothing
        return []


def plan(record: ModelRecord) -> list[Recipe]:
    """Every variant worth building for this model with the runtimes installed here."""
    fmt = record.format
    recipes: list[Recipe] = []
    native = NATIVE.get(fmt)
    if native is not None:
        base: dict[str, Any] = {}
        if native == "sklearn" and record.settings.get("trusted_types"):
            base = {"trusted": list(record.settings["trusted_types"])}
        if native == "openvino":
            base = source_options(record, native)  # full precision, as the reference (not bf16 on some CPUs)
        for device in _devices(native):
            recipes.append(Recipe(native, device, "fp32", base, (), fmt))
            if native == "torch":
                recipes.append(Recipe("torch", device, "fp32", {"compile": True}, (), fmt))
            if native == "openvino":
                recipes += _lower_precision(device, ())
            if native == "fil" and _has_native_predictor(record):
                recipes.append(Recipe("fil", device, "fp32", {"engine": "native"}, (), fmt))  # the framework's own
    if fmt != "onnx" and fmt not in TO_ONNX:
        return recipes
    to_onnx: tuple[str, ...] = () if fmt == "onnx" else ("onnx",)
    if fmt != "onnx":
        for device in _devices("onnxruntime"):
            recipes.append(Recipe("onnxruntime", device, "fp32", {}, to_onnx, "onnx"))
    if fmt in TABULAR:
        return recipes
    if "cpu" in _devices("onnxruntime"):
        for quant in ("int8-dynamic", "int8-static"):
            recipes.append(Recipe("onnxruntime", "cpu", "int8", {}, (*to_onnx, quant), "onnx"))
    ir = (*to_onnx, "openvino-ir")
    for device in _devices("openvino"):
        recipes.append(Recipe("openvino", device, "fp32", {"inference_precision": "f32"}, ir, "openvino"))
        recipes += _lower_precision(device, ir)
    return recipes


def _has_native_predictor(record: ModelRecord) -> bool:
    """Whether a FIL model's file has its framework's own predictor here (XGBoost JSON or UBJSON, LightGBM)."""
    from polystack.formats.fil import NATIVE_TYPES, FilSettings

    text = record.settings.get("fil")
    return isinstance(text, str) and FilSettings.from_json(text).model_type in NATIVE_TYPES


def _lower_precision(device: str, steps: tuple[str, ...]) -> list[Recipe]:
    """OpenVINO IR (built by ``steps``, or the source) at ``device``'s lower-precision hint, where it has one."""
    from polystack.backends.openvino import OpenVinoBackend

    ov = registry.get("openvino")
    assert isinstance(ov, OpenVinoBackend)
    try:
        lower = ov.lower_precision(device)
    except Exception:
        lower = None
    if not lower:
        return []
    precision = "bf16" if lower == "bf16" else "fp16"
    return [Recipe("openvino", device, precision, {"inference_precision": lower}, steps, "openvino")]


@dataclass
class BuildReport:
    model: ModelRecord
    variants: list[VariantRecord] = field(default_factory=list)
    built: list[str] = field(default_factory=list)  # ids built (or rebuilt) this time
    samples_synthesized: bool = False
    reference_s: float = 0.0


Log = Callable[[str], None]


def _first_line(e: BaseException) -> str:
    text = str(e.args[0]) if isinstance(e, PolystackError) and e.args else str(e)
    text = " ".join(text.split())
    return f"{type(e).__name__}: {text[:500]}" if not isinstance(e, PolystackError) else text[:500]


def reference_outputs(store: Store, record: ModelRecord, samples: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The source model run by its own framework (fp32 ONNX via ONNX Runtime for ONNX) on the samples."""
    name = NATIVE.get(record.format)
    if name is None:
        raise BackendUnavailable(f"no reference runtime is known for format {record.format!r}")
    backend = registry.require(name)
    options = source_options(record, name)  # as served by default (skops: its trusted types; IR: full precision)
    if name == "fil":
        options = {"engine": "treelite"}  # Treelite's GTIL alone, as FIL predicts: the others are checked against it
    model = backend.load(store.artifact_path(record), record.signature, backend.parse_options(options), "cpu")
    try:
        return run(model, samples_mod.batches(samples, record.signature, VERIFY_BATCH))
    finally:
        model.close()


def tolerance_for(record: ModelRecord) -> Tolerance:
    return Tolerance.model_validate(record.settings.get("tolerance") or {})


def build(
    store: Store,
    record: ModelRecord,
    *,
    rebuild: bool = False,
    include: Callable[[Recipe], bool] | None = None,
    log: Log | None = None,
) -> BuildReport:
    """Build and gate every planned variant that is not in the store yet (all of them with ``rebuild``)."""
    say = log or (lambda _msg: None)
    with tempfile.TemporaryDirectory(prefix="polystack-build-") as tmp:
        work = Path(tmp)
        record, samples, synthesized = samples_mod.ensure(store, record, work)
        report = BuildReport(model=record, samples_synthesized=synthesized)
        existing = {v.build_key for v in store.variants.for_model(record)}
        recipes = [r for r in plan(record) if include is None or include(r)]
        todo = [r for r in recipes if rebuild or r.build_key not in existing]
        if todo:
            _build_all(store, record, todo, samples, work, report, say, synthesized)
        report.variants = store.variants.for_model(record)
        return report


def _build_all(
    store: Store,
    record: ModelRecord,
    todo: Iterable[Recipe],
    samples: Mapping[str, np.ndarray],
    work: Path,
    report: BuildReport,
    say: Log,
    synthesized: bool = False,
) -> None:
    tolerance = tolerance_for(record)
    started = time.perf_counter()
    try:
        reference: dict[str, np.ndarray] | None = reference_outputs(store, record, samples)
        reference_error = None
    except Exception as e:
        reference, reference_error = None, f"the reference ({NATIVE.get(record.format)}) could not run: {_first_line(e)}"
    # a model may refuse made-up values (a string input it parses as numbers, an index past a table): its
    # variants' reasons, and those of conversions that ran it on them (int8 calibration), say what to do
    hint = (
        "; its samples were synthesized: register it with real ones (--samples FILE), then run "
        f"`polystack variants {record.name}:{record.version} --rebuild`"
        if synthesized and reference_error is not None
        else ""
    )
    reference_error = reference_error and reference_error + hint
    report.reference_s = time.perf_counter() - started
    ctx = ConvertContext(
        source_format=record.format,
        signature=record.signature,
        samples=samples,
        workdir=work,
        settings=record.settings,
    )
    # steps prefix -> (artifact path, seconds spent on the steps) or the error that stopped it
    artifacts: dict[tuple[str, ...], tuple[Path, float] | str] = {(): (store.artifact_path(record), 0.0)}

    def materialize(steps: tuple[str, ...]) -> tuple[Path, float]:
        if steps in artifacts:
            found = artifacts[steps]
            if isinstance(found, str):
                raise _Failed(found)
            return found
        src, before = materialize(steps[:-1])
        folder = work / "-".join(steps)
        folder.mkdir(parents=True, exist_ok=True)
        t0 = time.perf_counter()
        try:
            out = step(steps[-1])(src, dataclasses.replace(ctx, workdir=folder))
        except Exception as e:
            artifacts[steps] = f"{steps[-1]} conversion failed: {_first_line(e)}{hint}"
            raise _Failed(artifacts[steps]) from e
        artifacts[steps] = (out, before + time.perf_counter() - t0)
        return artifacts[steps]  # type: ignore[return-value]

    for recipe in todo:
        t0 = time.perf_counter()  # build time: conversion (shared steps counted in full) + load + verification
        record_kw: dict[str, Any] = dict(
            backend=recipe.backend,
            device=recipe.device,
            precision=recipe.precision,
            options=dict(recipe.options),
            format=recipe.format,
            recipe=recipe.recipe,
        )
        digest: str | None = None
        size: int | None = None
        try:
            t_steps = time.perf_counter()
            path, convert_s = materialize(recipe.steps)
            t0 += time.perf_counter() - t_steps  # counted through convert_s, also when cached
            if recipe.steps:
                digest, size = store.blobs.put_file(path)
            else:
                digest, size = record.digest, record.size_bytes
            if reference is None:
                raise _Failed(reference_error or "no reference")
            try:
                verdict, timings = _gate(store, record, recipe, digest, samples, reference, tolerance)
            except Exception:
                if not (recipe.steps and _put_again(store, digest, path)):
                    raise
                verdict, timings = _gate(store, record, recipe, digest, samples, reference, tolerance)
            metrics = {**verdict.metrics, "convert_s": round(convert_s, 4), **timings}
            status: Status = "verified" if verdict.passed else "rejected"
            v = store.variants.upsert(
                record,
                **record_kw,
                digest=digest,
                size_bytes=size,
                status=status,
                metrics=metrics,
                error=verdict.reason,
                build_time_s=round(convert_s + time.perf_counter() - t0, 4),
            )
            if recipe.steps:  # named by its row now, no removal deletes them
                _put_again(store, digest, path)
            say(f"{recipe.describe()}: {status}" + (f" ({verdict.reason})" if verdict.reason else ""))
        except Exception as e:
            reason = str(e) if isinstance(e, _Failed) else _first_line(e)
            v = store.variants.upsert(
                record,
                **record_kw,
                digest=digest,
                size_bytes=size,
                status="failed",
                metrics={},
                error=reason,
                build_time_s=time.perf_counter() - t0,
            )
            if recipe.steps and digest is not None:  # a failed row names its bytes too
                _put_again(store, digest, path)
            say(f"{recipe.describe()}: failed ({reason})")
        report.built.append(v.id)


class _Failed(Exception):
    pass


def _put_again(store: Store, digest: str, path: Path) -> bool:
    """Write a build's bytes again where a removal took them since the build wrote them (another model's row held
    the same bytes: helper-247); whether it had to."""
    if store.blobs.has(digest):
        return False
    store.blobs.put_file(path)
    return True


def _gate(
    store: Store,
    record: ModelRecord,
    recipe: Recipe,
    digest: str,
    samples: Mapping[str, np.ndarray],
    reference: Mapping[str, np.ndarray],
    tolerance: Tolerance,
) -> tuple[Verdict, dict[str, float]]:
    """Load the stored artifact on its backend, run the samples, compare with the reference."""
    backend = registry.require(recipe.backend)
    options = backend.parse_options(recipe.options)
    t0 = time.perf_counter()
    model = backend.load(store.blobs.path(digest), record.signature, options, recipe.device)
    load_s = time.perf_counter() - t0
    try:
        t1 = time.perf_counter()
        outputs = run(model, samples_mod.batches(samples, record.signature, VERIFY_BATCH))
        verify_s = time.perf_counter() - t1
    finally:
        model.close()
    verdict = compare(reference, outputs, record.signature, recipe.precision, tolerance)
    verdict.metrics["samples"] = samples_mod.rows(samples, record.signature)
    return verdict, {"load_s": round(load_s, 4), "verify_s": round(verify_s, 4)}


def verified(store: Store, record: ModelRecord) -> list[VariantRecord]:
    return store.variants.for_model(record, status="verified")
