"""BatchPolicy and BatchOverrides: what `serve`'s batching flags do to the policy a model is batched under."""

from __future__ import annotations

import pytest

from polystack.batching import BatchOverrides, BatchPolicy
from polystack.errors import InvalidRequest

PLANNED = BatchPolicy(max_batch_size=32, max_queue_delay_ms=4, preferred_batch_sizes=(8, 16, 32), instances=2)


def test_an_override_replaces_only_what_it_names() -> None:
    assert BatchOverrides(instances=3).apply(PLANNED) == BatchPolicy(
        max_batch_size=32, max_queue_delay_ms=4, preferred_batch_sizes=(8, 16, 32), instances=3
    )
    assert BatchOverrides().given() == {} and BatchOverrides(timeout_s=0.5).given() == {"timeout_s": 0.5}


def test_a_smaller_max_batch_size_drops_the_preferred_sizes_it_could_never_reach() -> None:
    """Kept as they were, a plan's preferred 16 and 32 under --max-batch-size 8 made the policy invalid."""
    assert BatchOverrides(max_batch_size=8).apply(PLANNED).preferred_batch_sizes == (8,)


def test_a_bad_override_is_refused_by_the_policys_own_checks() -> None:
    with pytest.raises(InvalidRequest, match="max_queue_size"):
        BatchOverrides(max_queue_size=-1).apply(PLANNED)
