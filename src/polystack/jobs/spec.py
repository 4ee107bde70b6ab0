"""Which LoadSpec a batch job runs: the model's ``batch`` plan for this machine, else the default."""

from __future__ import annotations

import dataclasses

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
    if backend is not None:
        return default_spec(store, record, backend, device), f"--backend {backend}", None
    from polystack.tuning.plan import spec_for_profile, why_unplanned

    planned = spec_for_profile(store, record, "batch")
    if planned is not None:
        spec, settings = planned
        said = f"batch plan ({dataclasses.replace(settings, instances=1).describe()})"
        if settings.instances > 1:  # the local engine scores one batch at a time
            said += f"; its {settings.instances} instances run as one"
        return spec, said, settings.max_batch_size
    # the default, and why: the summary and the manifest say it (the job ran it in silence: helper-261)
    tune = f"polystack tune {record.name}:{record.version} --profile batch"
    why = {
        "unusable": f"default: the batch plan's variant is no longer verified ({tune} again)",
        "stale": f"default: the batch plan was measured on another machine ({tune} here)",
    }.get(why_unplanned(store, record, "batch")[0], f"default: no batch plan ({tune})")
    return default_spec(store, record, backend, device), why, None
