"""What tuning may choose from: verified variants, or the source model when none exist.

A ``Candidate`` is one variant with the LoadSpec that loads it; ``with_threads`` sets the
backend's thread option, whatever that backend calls it, and streams where the runtime needs them
(``engine.with_concurrency``). Variants that were not verified are kept aside as ``Rejected`` with
the gate's reason, so plans and reports can say why.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from polystack.backends import registry
from polystack.engine import LoadSpec, default_spec, spec_for_variant, thread_option, with_concurrency
from polystack.errors import PolystackError
from polystack.store import ModelRecord, Store, VariantRecord


@dataclass(frozen=True)
class Candidate:
    id: str  # the variant id, or "source" for the fallback
    label: str  # "onnxruntime fp32", "openvino bf16"
    backend: str
    precision: str
    spec: LoadSpec
    size_bytes: int
    variant: VariantRecord | None = None

    @property
    def thread_option(self) -> str | None:
        return thread_option(self.backend)

    def with_threads(self, threads: int | None, instances: int = 1) -> LoadSpec:
        return with_concurrency(self.spec, threads, instances)


@dataclass(frozen=True)
class Rejected:
    id: str
    label: str
    status: str
    reason: str

    def to_dict(self) -> dict[str, Any]:
        return {"variant_id": self.id, "label": self.label, "status": self.status, "reason": self.reason}


def label_of(v: VariantRecord) -> str:
    """Words for a variant: "onnxruntime int8 static", "torch fp32 compiled", "openvino bf16 on gpu"."""
    words = [v.backend, v.precision]
    steps = str(getattr(v, "recipe", "") or "").split("+")
    words += [s.split("-", 1)[1] for s in steps if s.startswith("int8-")]  # int8-dynamic -> dynamic
    if v.backend == "torch":
        words.append("compiled" if v.options.get("compile") else "eager")
    if v.device != "cpu":
        words.append(f"on {v.device}")
    return " ".join(words)


def _reason(v: VariantRecord) -> str:
    if v.error:
        return v.error
    shown = {k: val for k, val in v.metrics.items() if isinstance(val, (int, float, str))}
    return (
        ", ".join(f"{k} {val:.4g}" if isinstance(val, float) else f"{k} {val}" for k, val in shown.items()) or v.status
    )


def gather(store: Store, record: ModelRecord) -> tuple[list[Candidate], list[Rejected], str | None]:
    """(candidates, rejected, note): verified variants, those refused, and a note on any fallback."""
    variants = store.variants.for_model(record)
    rejected = [Rejected(v.id, label_of(v), v.status, _reason(v)) for v in variants if v.status != "verified"]
    candidates: list[Candidate] = []
    for v in variants:
        if v.status != "verified":
            continue
        try:
            backend = registry.get(v.backend)
            if not backend.available():
                raise PolystackError(f"backend {v.backend!r} is not installed here")
            spec = spec_for_variant(store, v)
        except PolystackError as e:
            rejected.append(Rejected(v.id, label_of(v), "unavailable", e.message))
            continue
        candidates.append(Candidate(v.id, label_of(v), v.backend, v.precision, spec, v.size_bytes or 0, v))
    note = None
    if not candidates:
        spec = default_spec(store, record)
        candidates.append(
            Candidate("source", f"{spec.backend} (source)", spec.backend, "fp32", spec, record.size_bytes)
        )
        note = (
            f"no verified variants of {record.name}:{record.version}; measured the source model on "
            f"{spec.backend} only (`polystack variants NAME` builds and verifies variants to compare runtimes)"
        )
    return candidates, rejected, note
