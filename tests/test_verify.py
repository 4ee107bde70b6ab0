"""The equivalence gate: the per-precision tolerances exactly as specified, and their overrides."""

from __future__ import annotations

import numpy as np
import pytest

from polystack.errors import InvalidRequest
from polystack.types import DType, Signature, TensorSpec
from polystack.verify import Tolerance, compare

SIG = Signature(
    inputs=(TensorSpec("x", DType.FP32, (-1, 4)),),
    outputs=(TensorSpec("logits", DType.FP32, (-1, 10)),),
)
EMB = Signature(
    inputs=(TensorSpec("x", DType.FP32, (-1, 4)),),
    outputs=(TensorSpec("embedding", DType.FP32, (-1, 32)),),
)


def ref(shape: tuple[int, ...] = (100, 10), seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


def test_fp32_passes_within_1e_4_of_the_largest_reference_value_and_fails_beyond() -> None:
    r = ref()
    bound = 1e-4 * np.abs(r).max() + 1e-6
    ok = r.copy()
    ok[0, 0] += bound * 0.9
    bad = r.copy()
    bad[0, 0] += bound * 1.5
    assert compare({"logits": r}, {"logits": ok}, SIG, "fp32").passed
    verdict = compare({"logits": r}, {"logits": bad}, SIG, "fp32")
    assert not verdict.passed and "fp32 bound" in (verdict.reason or "")
    assert verdict.metrics["outputs"]["logits"]["max_abs_err"] == pytest.approx(bound * 1.5, rel=1e-2)


def test_bf16_needs_2e_2_relative_error_and_cosine_0_999() -> None:
    r = ref()
    noisy = r + np.random.default_rng(1).standard_normal(r.shape).astype(np.float32) * 0.003
    assert compare({"logits": r}, {"logits": noisy}, SIG, "bf16").passed
    far = r.copy()
    far[3, 3] += 0.05 * np.abs(r).max()
    v = compare({"logits": r}, {"logits": far}, SIG, "bf16")
    assert not v.passed and "half-precision bound" in (v.reason or "")


def test_int8_needs_every_row_cosine_0_99_and_top1_agreement_for_class_scores() -> None:
    r = ref()
    slightly = r + np.random.default_rng(2).standard_normal(r.shape).astype(np.float32) * 0.01
    assert compare({"logits": r}, {"logits": slightly}, SIG, "int8").passed
    one_row_off = slightly.copy()
    one_row_off[7] = np.random.default_rng(3).standard_normal(10)
    v = compare({"logits": r}, {"logits": one_row_off}, SIG, "int8")
    assert not v.passed and "min row cosine" in (v.reason or "")
    # two rows whose top-1 flips by swapping the top two (cosine stays high): 98% < 99%
    flipped = r.copy()
    for i in (1, 2):
        top2 = np.argsort(r[i])[-2:]
        flipped[i, top2] = r[i, top2[::-1]]
    v = compare({"logits": r}, {"logits": flipped}, SIG, "int8", Tolerance(int8_min_cosine=0.5))
    assert not v.passed and v.metrics["outputs"]["logits"]["top1_agreement"] == pytest.approx(0.98)


def test_embeddings_are_not_class_scores() -> None:
    r = ref((20, 32))
    shuffled_argmax = r + 0.001  # cosine ~1, argmax unchanged anyway
    v = compare({"embedding": r}, {"embedding": shuffled_argmax}, EMB, "int8")
    assert v.passed and "top1_agreement" not in v.metrics["outputs"]["embedding"]


def test_integer_labels_must_agree_exactly_at_fp32() -> None:
    sig = Signature(inputs=SIG.inputs, outputs=(TensorSpec("label", DType.INT64, (-1,)),))
    labels = np.arange(100) % 3
    changed = labels.copy()
    changed[5] = 9
    assert compare({"label": labels}, {"label": labels.copy()}, sig, "fp32").passed
    v = compare({"label": labels}, {"label": changed}, sig, "fp32")
    assert not v.passed and v.metrics["outputs"]["label"]["agreement"] == pytest.approx(0.99)


def test_shape_mismatch_and_nan_are_rejected_with_a_reason() -> None:
    r = ref()
    assert "shape" in (compare({"logits": r}, {"logits": r[:5]}, SIG, "fp32").reason or "")
    nan = r.copy()
    nan[0, 0] = np.nan
    assert "NaN" in (compare({"logits": r}, {"logits": nan}, SIG, "bf16").reason or "")


def test_tolerances_are_overridden_per_model_by_key_value() -> None:
    tol = Tolerance.parse(["int8_min_cosine=0.9", "class_outputs=logits,probs", "fp32.rtol=1e-3"])
    assert (tol.int8_min_cosine, tol.class_outputs, tol.fp32_rtol) == (0.9, ["logits", "probs"], 1e-3)
    with pytest.raises(InvalidRequest, match="KEY=VALUE"):
        Tolerance.parse(["cosine=0.9"])
    with pytest.raises(InvalidRequest, match="invalid tolerance"):
        Tolerance.parse(["int8_min_cosine=lots"])


REG = Signature(  # a regression: one value a row, about 49 give or take 1 (helper-258's reg1)
    inputs=(TensorSpec("x", DType.FP32, (-1, 4)),),
    outputs=(TensorSpec("y", DType.FP32, (-1, 1)),),
)


def test_int8_answering_a_regressions_near_constant_is_rejected_by_its_error_over_the_spread() -> None:
    # a row of one value has cosine 1 with any value of its sign: an int8 answering 50 for every row passed
    r = (49 + np.random.default_rng(4).standard_normal((128, 1))).astype(np.float32)
    flat = np.full_like(r, 50.0)
    v = compare({"y": r}, {"y": flat}, REG, "int8")
    assert v.metrics["outputs"]["y"]["min_row_cosine"] == 1.0
    assert not v.passed and "rms error" in (v.reason or "") and "of the reference's spread > 0.1" in (v.reason or "")
    close = r + np.random.default_rng(5).standard_normal(r.shape).astype(np.float32) * 0.03  # 3% of the spread
    assert compare({"y": r}, {"y": close}, REG, "int8").passed
    # bf16 is judged so too, at 5% (its bound relative to max|ref|, 1.0 here, let a 0.3-off bf16 pass)
    off = r + np.float32(0.3)
    v = compare({"y": r}, {"y": off}, REG, "bf16")
    assert not v.passed and "> 0.05" in (v.reason or "")


def test_int8_off_by_a_scale_fails_though_every_row_cosine_is_1() -> None:
    r = ref()
    v = compare({"logits": r}, {"logits": r * 2}, SIG, "int8")
    assert v.metrics["outputs"]["logits"]["min_row_cosine"] == pytest.approx(1.0)
    assert not v.passed and "rms error" in (v.reason or "")


def test_nan_in_the_reference_is_matched_by_position_and_the_rest_judged() -> None:
    # one NaN made max|a-b| NaN, and every bound's comparison false: a bf16 answering zeros passed
    r = ref()
    r[5, 2] = np.nan
    zeros = np.where(np.isnan(r), np.nan, 0).astype(np.float32)
    v = compare({"logits": r}, {"logits": zeros}, SIG, "bf16")
    assert not v.passed and "half-precision bound" in (v.reason or "")
    assert v.metrics["outputs"]["logits"]["non_finite_ref"] == 1
    assert compare({"logits": r}, {"logits": r.copy()}, SIG, "fp32").passed
    elsewhere = r.copy()
    elsewhere[5, 2], elsewhere[6, 3] = 0.0, np.nan
    v = compare({"logits": r}, {"logits": elsewhere}, SIG, "fp32")
    assert not v.passed and "2 values NaN/inf" in (v.reason or "")
    inf = r.copy()
    inf[5, 2] = np.inf  # another non-finite value where the reference's is NaN
    assert not compare({"logits": r}, {"logits": inf}, SIG, "fp32").passed


def test_a_comparison_of_no_rows_fails() -> None:
    # samples of no rows: no reference output, nothing compared, and every variant passed
    v = compare({}, {}, SIG, "int8")
    assert not v.passed and "no rows" in (v.reason or "")


def test_tolerances_refuse_what_would_disable_a_check() -> None:
    for bad in ("fp32_rtol=inf", "half_rtol=nan", "int8_min_cosine=-3", "int8_max_spread_err=-1"):
        with pytest.raises(InvalidRequest, match="invalid tolerance"):
            Tolerance.parse([bad])
    with pytest.raises(InvalidRequest, match="names no output 'probs'; the model's outputs are logits"):
        Tolerance.parse(["class_outputs=probs"]).check_outputs(SIG)
    Tolerance.parse(["class_outputs=logits"]).check_outputs(SIG)
    Tolerance.parse(["class_outputs="]).check_outputs(SIG)  # none is a class score: no top-1 check
    r = ref()
    flipped = r.copy()
    flipped[:, [0, 1]] = flipped[:, [1, 0]] * 1.0001  # top-1 changes where column 0 or 1 led, the rest near
    none = Tolerance.parse(["class_outputs=", "int8_min_cosine=-1", "int8_max_spread_err=10"])
    assert compare({"logits": r}, {"logits": flipped}, SIG, "int8", none).passed


def test_the_spread_is_at_least_a_hundredth_of_the_largest_value() -> None:
    # samples on which an output hardly varies (a sigmoid near 1, a constant, one row): its spread is ~0, and a
    # correct fp16 variant's rounding counted as infinitely far off (helper-260)
    near_one = np.full((64, 1), 0.9999, np.float32) + np.random.default_rng(6).standard_normal((64, 1)) * 1e-6
    rounded = near_one.astype(np.float16).astype(np.float32)
    v = compare({"y": near_one}, {"y": rounded}, REG, "fp16")
    assert v.passed, v.reason
    assert v.metrics["outputs"]["y"]["spread_err"] < 0.05
    zeros = np.zeros((8, 1), np.float32)
    assert compare({"y": zeros}, {"y": zeros}, REG, "int8").metrics["outputs"]["y"]["spread_err"] == 0.0


def test_an_output_of_no_values_is_compared_and_passes() -> None:
    # a detector finding nothing in its samples answers [0, 6]: compared (equal), not "no rows"
    det = Signature(inputs=(TensorSpec("x", DType.FP32, (-1, 4)),), outputs=(TensorSpec("boxes", DType.FP32, (-1, 6)),))
    empty = np.zeros((0, 6), np.float32)
    assert compare({"boxes": empty}, {"boxes": empty}, det, "int8").passed
