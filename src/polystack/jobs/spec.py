"""Which LoadSpec a batch job runs: the model's ``batch`` plan for this machine, else the default.

Kept in this one function so that tuning's own "plan -> LoadSpec" helper can replace the body.
"""

from __future__ import annotations

import dataclasses

from polystack.engine import LoadSpec, default_spec
from polystack.errors import PolystackError
from polystack.store import ModelRecord, Store


def batch_spec(
    store: Store, record: ModelRecord, backend: str | None = None, device: str = "cpu"
) -> tuple[LoadSpec, str, int | None]:
    """(spec, where it came from, the plan's batch size or None).

    An explicit ``backend`` wins. Otherwise a ``batch`` plan measured on this machine picks the
    variant and its threads; no plan (or one from another machine) means ``default_spec``.
    """
    if backend is None:
        plans = [p for p in store.plans.for_model(record) if p.profile == "batch" and p.variant_id]
        if plans:
            try:
                from polystack.fleet.doctor import fingerprint, report
                from polystack.tuning.candidates import THREAD_OPTIONS

                here = fingerprint(report())
                plan = next((p for p in reversed(plans) if p.fingerprint == here), None)
                variant = store.variants.get(plan.variant_id) if plan is not None and plan.variant_id else None
                if plan is not None and variant is not None and variant.digest is not None:
                    spec = LoadSpec(
                        artifact=store.blobs.path(variant.digest),
                        format=variant.format,
                        backend=variant.backend,
                        device=variant.device,
                        options=dict(variant.options),
                        variant_id=variant.id,
                    )
                    threads = plan.settings.get("threads")
                    if isinstance(threads, int):
                        key = next((k for k in THREAD_OPTIONS if k in spec.options), THREAD_OPTIONS[0])
                        if spec.backend == "onnxruntime" or key in spec.options:
                            spec = dataclasses.replace(spec, options={**spec.options, key: threads})
                    batch = plan.settings.get("batch_size") or plan.settings.get("max_batch_size")
                    return spec, f"batch plan (variant {plan.variant_id})", batch if isinstance(batch, int) else None
            except (PolystackError, ImportError):
                pass  # a plan that no longer loads falls back to the default, which always does
    return default_spec(store, record, backend, device), "default", None
