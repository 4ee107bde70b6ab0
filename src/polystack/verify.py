"""The equivalence gate: a variant is served only if it computes the same function as its source.

Reference: the source model run by its own framework (the fp32 ONNX model through ONNX Runtime
when the source is ONNX), on the model's samples. Default tolerances by precision:

- fp32: ``max|a-b| <= 1e-4 * max|ref| + 1e-6``
- bf16 / fp16: ``max|a-b| <= 2e-2 * max|ref|``, cosine >= 0.999 and the error's root mean square at most 5%
  of the reference's spread (its standard deviation)
- int8: cosine >= 0.99 for every output row, the error's root mean square at most 10% of the reference's
  spread (a row's cosine is blind to scale and offset, and to one-value rows) and, where an output is a class
  score, top-1 agreement >= 99%

NaN and infinities must be where the reference has them; the figures are those of the finite values. A
comparison of no rows fails.

Integer outputs (labels) must agree exactly at fp32, and on at least the top-1 fraction otherwise.
A model overrides any figure with ``--tolerance KEY=VALUE`` (kept in its settings). The verdict
carries every figure it was decided on.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from polystack.errors import InvalidRequest
from polystack.types import Signature

HALF = ("bf16", "fp16", "f16")
_NOT_CLASS_SCORES = re.compile(r"embed|hidden|pool|feature|state|vector|token", re.IGNORECASE)


class Tolerance(BaseModel):
    """Per-precision tolerances; every field can be overridden per model."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)  # an infinite bound is no bound

    fp32_rtol: float = Field(default=1e-4, ge=0)
    fp32_atol: float = Field(default=1e-6, ge=0)
    half_rtol: float = Field(default=2e-2, ge=0)
    half_min_cosine: float = Field(default=0.999, ge=-1, le=1)
    # the error's root mean square over the reference's spread (``_spread_error``): valid bf16 variants measured
    # 0.002-0.006 here, int8 ones 0.008-0.04; int8 that answered a regression's near-constant (one value a row,
    # which a row's cosine cannot judge) 2.0
    half_max_spread_err: float = Field(default=0.05, ge=0)
    int8_min_cosine: float = Field(default=0.99, ge=-1, le=1)
    int8_min_top1: float = Field(default=0.99, ge=0, le=1)
    int8_max_spread_err: float = Field(default=0.1, ge=0)
    class_outputs: list[str] | None = Field(
        default=None, description="outputs that are class scores (default: 2-D float outputs, 2+ columns)"
    )

    def check_outputs(self, signature: Signature) -> None:
        """Refuse ``class_outputs`` naming no output of ``signature`` (the top-1 check silently went with it)."""
        if self.class_outputs is None:
            return
        unknown = [n for n in self.class_outputs if n not in signature.output_names]  # (none given: none are)
        if unknown:
            raise InvalidRequest(
                f"tolerance class_outputs={','.join(self.class_outputs)} names no output "
                f"{', '.join(map(repr, unknown))}; the model's outputs are {', '.join(signature.output_names)} "
                "(class_outputs= alone says none is)"
            )

    @classmethod
    def parse(cls, items: Sequence[str], base: Mapping[str, Any] | None = None) -> Tolerance:
        """From ``KEY=VALUE`` strings (``int8_min_cosine=0.95``, ``class_outputs=logits,probs``)."""
        data: dict[str, Any] = dict(base or {})
        for item in items:
            key, sep, value = item.partition("=")
            key = key.strip().replace(".", "_").replace("-", "_")
            if not sep or key not in cls.model_fields:
                raise InvalidRequest(
                    f"tolerance {item!r} is not KEY=VALUE with KEY one of {', '.join(cls.model_fields)}; "
                    "write e.g. --tolerance int8_min_cosine=0.95"
                )
            data[key] = [v for v in value.split(",") if v] if key == "class_outputs" else value
        try:
            return cls.model_validate(data)
        except ValidationError as e:
            err = e.errors()[0]
            raise InvalidRequest(f"invalid tolerance {'.'.join(map(str, err['loc']))}: {err['msg']}") from e


def precision_family(precision: str) -> str:
    p = precision.lower()
    if p in HALF:
        return "half"
    if p.startswith("int8") or p.startswith("int4") or p.startswith("uint8"):
        return "int8"
    return "fp32"


@dataclass
class Verdict:
    passed: bool
    metrics: dict[str, Any] = field(default_factory=dict)
    reasons: list[str] = field(default_factory=list)

    @property
    def reason(self) -> str | None:
        return "; ".join(self.reasons) if self.reasons else None


def _row_cosines(ref: np.ndarray, got: np.ndarray, batched: bool) -> np.ndarray:
    if ref.size == 0:  # no rows, or rows of no values: no cosine
        return np.zeros(0)
    a = ref.reshape(len(ref), -1) if batched and ref.ndim > 0 else ref.reshape(1, -1)
    b = got.reshape(len(got), -1) if batched and got.ndim > 0 else got.reshape(1, -1)
    a = a.astype(np.float64)
    b = b.astype(np.float64)
    na = np.linalg.norm(a, axis=1)
    nb = np.linalg.norm(b, axis=1)
    dot = (a * b).sum(axis=1)
    both_zero = (na == 0) & (nb == 0)
    with np.errstate(invalid="ignore", divide="ignore"):
        cos = np.where(both_zero, 1.0, dot / (na * nb))
    return np.nan_to_num(cos, nan=0.0)


def _cosine(ref: np.ndarray, got: np.ndarray) -> float:
    a = ref.astype(np.float64).ravel()
    b = got.astype(np.float64).ravel()
    na, nb = np.linalg.norm(a), np.linalg.norm(b)
    if na == 0 and nb == 0:
        return 1.0
    if na == 0 or nb == 0:
        return 0.0
    return float(np.dot(a, b) / (na * nb))


def is_class_score(name: str, ref: np.ndarray, tol: Tolerance) -> bool:
    if tol.class_outputs is not None:
        return name in tol.class_outputs
    return ref.ndim == 2 and ref.shape[1] >= 2 and ref.dtype.kind == "f" and not _NOT_CLASS_SCORES.search(name)


def compare(
    reference: Mapping[str, np.ndarray],
    candidate: Mapping[str, np.ndarray],
    signature: Signature,
    precision: str,
    tolerance: Tolerance | None = None,
) -> Verdict:
    """Decide whether ``candidate`` matches ``reference`` within the tolerance for ``precision``."""
    tol = tolerance or Tolerance()
    family = precision_family(precision)
    verdict = Verdict(passed=True, metrics={"precision": precision, "family": family, "outputs": {}})
    compared = 0  # outputs the reference gave: none where the samples have no rows
    for spec in signature.outputs:
        name = spec.name
        if name not in reference:
            continue
        ref = np.asarray(reference[name])
        compared += 1
        if name not in candidate:
            verdict.reasons.append(f"output {name!r} is missing")
            continue
        got = np.asarray(candidate[name])
        figures: dict[str, Any] = {}
        verdict.metrics["outputs"][name] = figures
        if ref.shape != got.shape:
            verdict.reasons.append(f"output {name!r} has shape {list(got.shape)}, the reference {list(ref.shape)}")
            continue
        if ref.dtype == object or ref.dtype.kind in "iub":
            agree = float(np.mean(ref == got)) if ref.size else 1.0
            figures["agreement"] = agree
            need = 1.0 if family != "int8" else tol.int8_min_top1
            if agree < need:
                verdict.reasons.append(f"output {name!r}: {agree:.2%} of values agree, need {need:.2%}")
            continue
        ref64 = ref.astype(np.float64)
        got64 = got.astype(np.float64)
        # NaN and infinities must be where the reference has them, the same ones; the figures are then those of
        # the finite values (a NaN in them made every bound's comparison false: any variant passed)
        odd = _non_finite_kind(ref64) != _non_finite_kind(got64)
        if np.any(odd):
            figures["non_finite"] = int(np.sum(odd))
            verdict.reasons.append(
                f"output {name!r} has {figures['non_finite']} values NaN/inf where the reference's are finite, or "
                "finite or another NaN/inf where the reference's are NaN/inf"
            )
            continue
        finite = np.isfinite(ref64)
        if not np.all(finite):
            figures["non_finite_ref"] = int(np.sum(~finite))
            ref64, got64 = np.where(finite, ref64, 0.0), np.where(finite, got64, 0.0)
        max_abs = float(np.max(np.abs(ref64 - got64))) if ref.size else 0.0
        ref_max = float(np.max(np.abs(ref64))) if ref.size else 0.0
        rows = _row_cosines(ref64, got64, spec.batched)
        figures.update(
            max_abs_err=max_abs,
            max_abs_ref=ref_max,
            cosine=_cosine(ref64, got64),
            min_row_cosine=float(rows.min()) if rows.size else 1.0,
            spread_err=_spread_error(ref64[finite], got64[finite]),
        )
        if family == "fp32":
            bound = tol.fp32_rtol * ref_max + tol.fp32_atol
            figures["bound"] = bound
            if max_abs > bound:
                verdict.reasons.append(f"output {name!r}: max|a-b| {max_abs:.3g} > {bound:.3g} (fp32 bound)")
        elif family == "half":
            bound = tol.half_rtol * ref_max
            figures["bound"] = bound
            if max_abs > bound:
                verdict.reasons.append(f"output {name!r}: max|a-b| {max_abs:.3g} > {bound:.3g} (half-precision bound)")
            if figures["cosine"] < tol.half_min_cosine:
                verdict.reasons.append(f"output {name!r}: cosine {figures['cosine']:.5f} < {tol.half_min_cosine}")
            if figures["spread_err"] > tol.half_max_spread_err:
                verdict.reasons.append(_spread_reason(name, figures["spread_err"], tol.half_max_spread_err))
        else:
            if figures["spread_err"] > tol.int8_max_spread_err:
                verdict.reasons.append(_spread_reason(name, figures["spread_err"], tol.int8_max_spread_err))
            if figures["min_row_cosine"] < tol.int8_min_cosine:
                verdict.reasons.append(
                    f"output {name!r}: min row cosine {figures['min_row_cosine']:.4f} < {tol.int8_min_cosine}"
                )
            if is_class_score(name, ref, tol):
                top1 = float(np.mean(ref.argmax(axis=1) == got.argmax(axis=1)))
                figures["top1_agreement"] = top1
                if top1 < tol.int8_min_top1:
                    verdict.reasons.append(f"output {name!r}: top-1 agreement {top1:.2%} < {tol.int8_min_top1:.0%}")
    if not compared:  # no rows (an empty samples file): nothing was compared, so nothing is known
        verdict.reasons.append("the samples have no rows, so no output was compared; register the model with samples")
    verdict.passed = not verdict.reasons
    verdict.metrics["tolerance"] = tol.model_dump(exclude_none=True)
    return verdict


def _spread_reason(name: str, error: float, bound: float) -> str:
    return f"output {name!r}: rms error {error:.3g} of the reference's spread > {bound:g}"


def _non_finite_kind(values: np.ndarray) -> np.ndarray:
    """0 where finite, 1 NaN, 2 +inf, 3 -inf."""
    return np.select([np.isnan(values), values == np.inf, values == -np.inf], [1, 2, 3], 0)


def _spread_error(ref: np.ndarray, got: np.ndarray) -> float:
    """The root mean square of the error over the spread (standard deviation) of the reference's values: 0 for the
    same values, 1 for a variant as far off as answering their mean. Unlike a cosine it sees an error in scale or
    offset, and it means something for outputs of one value a row (a regression's), where a row's cosine is 1.

    The spread is taken as at least 1% of the largest value, so that samples on which an output hardly varies (a
    sigmoid near 1, a constant, one row) judge it relative to its size; an output of zeros alone is left to the
    other bounds (0). The spread is of all of an output's values together: per column it rejected valid int8 and
    bf16 variants of a CNN (its classes' logits vary little from sample to sample next to their offsets), so a
    variant that loses one column's variation under much larger offsets between columns is not seen."""
    if ref.size == 0:
        return 0.0
    spread = max(float(np.std(ref)), 0.01 * float(np.max(np.abs(ref))))
    if spread == 0.0:
        return 0.0
    return float(np.sqrt(np.mean((got - ref) ** 2))) / spread


def run(model: Any, batches: Sequence[Mapping[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """Run a LoadedModel over sample batches and concatenate its outputs along dim 0."""
    parts: dict[str, list[np.ndarray]] = {}
    for batch in batches:
        for name, value in model.infer(batch).items():
            parts.setdefault(name, []).append(np.asarray(value))
    return {k: (np.concatenate(v) if len(v) > 1 else v[0]) for k, v in parts.items()}


def summary(metrics: Mapping[str, Any]) -> str:
    """One short line of the figures that matter (for tables)."""
    bits: list[str] = []
    for name, f in (metrics.get("outputs") or {}).items():
        if "agreement" in f:
            bits.append(f"{name}: agree {f['agreement']:.1%}")
        elif "max_abs_err" in f:
            part = f"{name}: max|Δ| {f['max_abs_err']:.2g}"
            if metrics.get("family") != "fp32":
                part += f", cos≥{f['min_row_cosine']:.4f}"
            if "top1_agreement" in f:
                part += f", top1 {f['top1_agreement']:.1%}"
            bits.append(part)
    return "; ".join(bits)
