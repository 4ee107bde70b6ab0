"""Plans: what tuning chose for a model and a profile on this machine, and how to use it.

``spec_for_profile(store, record, profile)`` is what serving and batch jobs call: the LoadSpec of
the chosen variant (its thread option set) and the ``PlanSettings`` (threads, instances, batch
policy), or None when no plan was made on this machine. A plan made on another machine (another
fingerprint: CPU, cores, accelerators, runtime versions) is *stale*: kept and shown, never used.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from polystack.engine import LoadSpec, default_spec, spec_for_variant, with_concurrency
from polystack.errors import PolystackError
from polystack.fleet.doctor import machine
from polystack.store import ModelRecord, PlanRecord, Store


def fingerprint() -> str:
    return machine()[0]


@dataclass(frozen=True)
class PlanSettings:
    """How to run the chosen variant: what a server or batch job applies."""

    profile: str
    threads: int | None = None  # intra-op threads per instance; None: the runtime's default
    instances: int = 1  # model instances run side by side
    dynamic_batching: bool = False
    max_batch_size: int = 1  # Server: the batcher's limit; Offline: the batch size
    max_delay_ms: float = 0.0  # Server: how long the batcher waits to fill a batch
    slo_ms: float | None = None
    backend: str = ""
    precision: str = ""
    label: str = ""
    thread_option: str | None = (
        None  # the backend option that carries ``threads`` (for readers; loading asks the backend)
    )
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> PlanSettings:
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in known})

    def describe(self) -> str:
        parts = [self.label or self.backend]
        parts.append(f"{self.threads} thread{'s' if self.threads != 1 else ''}" if self.threads else "default threads")
        if self.instances > 1:
            parts.append(f"{self.instances} instances")
        if self.dynamic_batching:
            parts.append(f"dynamic batching <= {self.max_batch_size}, {self.max_delay_ms:g} ms")
        elif self.max_batch_size > 1:
            parts.append(f"batch {self.max_batch_size}")
        return ", ".join(parts)


def plan_status(plan: PlanRecord, current: str | None = None) -> str:
    """'fresh' when measured on this machine, else 'stale'."""
    return "fresh" if plan.fingerprint == (current or fingerprint()) else "stale"


def usable(store: Store, record: ModelRecord, plan: PlanRecord) -> bool:
    """Whether the plan's variant is still there and verified (a plan of the source always is)."""
    if plan.variant_id is None:
        return True
    try:
        variant = store.variants.get(plan.variant_id)
    except PolystackError:
        return False
    return variant.status == "verified" and variant.model_id == record.id


def current_plan(store: Store, record: ModelRecord, profile: str) -> PlanRecord | None:
    return store.plans.get(record, profile, fingerprint())


def spec_for_profile(store: Store, record: ModelRecord, profile: str) -> tuple[LoadSpec, PlanSettings] | None:
    """The plan's LoadSpec and settings for ``profile`` on this machine; None when there is no fresh plan.

    None also when the plan's variant is gone or no longer verified (rebuild, then re-tune).
    """
    plan = current_plan(store, record, profile)
    if plan is None:
        return None
    settings = PlanSettings.from_dict(plan.settings)
    if plan.variant_id is None:
        try:
            spec = default_spec(store, record, backend=settings.backend or None)
        except PolystackError:
            return None
    elif usable(store, record, plan):
        spec = spec_for_variant(store, plan.variant_id)
    else:
        return None
    return with_concurrency(spec, settings.threads, settings.instances), settings


def why_unplanned(store: Store, record: ModelRecord, profile: str) -> tuple[str, int | None]:
    """Why ``spec_for_profile`` gives ``record`` no plan for ``profile``: ("unusable", None) for a fresh plan whose
    variant is gone or no longer verified, ("stale", None) for plans measured on other machines alone, ("older", N)
    where none is its own but version N, older, has a fresh one, else ("none", None)."""
    if current_plan(store, record, profile) is not None:
        return "unusable", None
    if any(p.profile == profile for p in store.plans.for_model(record)):
        return "stale", None
    tuned = [r.version for r in store.models.list(record.name) if current_plan(store, r, profile) is not None]
    if tuned and tuned[-1] < record.version:  # a newer version registered since the tune: no plan of its own
        return "older", tuned[-1]
    return "none", None
