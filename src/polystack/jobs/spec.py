"""Which LoadSpec a batch job runs: the model's ``batch`` plan for this machine, else the default."""

from __future__ import annotations

from polystack.engine import LoadSpec, default_spec
from polystack.store import ModelRecord, Store


def batch_spec(
    store: Store, record: ModelRecord, backend: str | None = None, device: str = "cpu"
) -> tuple[LoadSpec, str, int | None]:
    """(spec, where it came from, the plan's batch size or None).

    An explicit ``backend`` wins. Otherwise a fresh ``batch`` plan measured on this machine
    (``polystack tune NAME --profile batch``) picks the variant, its threads and the batch size;
    no plan, a stale one or one whose variant is no longer verified means ``default_spec``.
    """
    if backend is None:
        from polystack.tuning.plan import spec_for_profile

        planned = spec_for_profile(store, record, "batch")
        if planned is not None:
            spec, settings = planned
            return spec, f"batch plan ({settings.describe()})", settings.max_batch_size
    return default_spec(store, record, backend, device), "default", None
