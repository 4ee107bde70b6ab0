"""What each profile searches and how long its runs last, on null variants (deterministic call times)."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from polystack.store import ModelRecord, Store, VariantRecord
from polystack.tuning import candidates as cands
from polystack.tuning.inputs import pool_for
from polystack.tuning.measure import Config, Measurer
from polystack.tuning.profiles import (
    OFFLINE_MIN_ROUNDS,
    SERVER_MAX_RUN_MS,
    SERVER_MIN_QUERIES,
    SERVER_MIN_SLOS,
    Batch,
    Server,
)

AddVariant = Callable[..., VariantRecord]


def _server_delays(store: Store, mlp: ModelRecord, add_variant: AddVariant, call_ms: float) -> set[float]:
    v = add_variant(store, mlp, delay_ms=call_ms)
    found, _, _ = cands.gather(store, mlp)
    m = Measurer(mlp.signature, pool_for(store, mlp), [c for c in found if c.id == v.id])
    try:
        configs = Server(slo_ms=200.0).configs(m, v.id, [1], cores=2, max_batch_size=8)
    finally:
        m.close()
    assert {c.max_batch_size for c in configs} == {1, 2, 4, 8}
    return {c.max_delay_ms for c in configs}


def test_server_measures_queueing_delays_only_where_they_can_change_a_batch(
    store: Store, mlp: ModelRecord, add_variant: AddVariant
) -> None:
    # a 0.2 ms model: 1 and 4 ms delays gather requests that would otherwise run alone
    assert _server_delays(store, mlp, add_variant, 0.2) == {0.0, 1.0, 4.0}
    # a 12 ms model: requests queue behind the running call anyway; 1 and 4 ms delays change nothing
    assert _server_delays(store, mlp, add_variant, 12.0) == {0.0}


def test_server_delays_beyond_a_quarter_of_the_slo_are_not_tried() -> None:
    assert Server(slo_ms=8.0).useful_delays(0.0001) == [0.0, 1.0]


@pytest.mark.parametrize(
    ("slo_ms", "qps", "expected_ms"),
    [
        (200.0, 60.0, 1000 * SERVER_MIN_QUERIES / 60.0),  # a slow model: its queries decide
        (200.0, 2000.0, SERVER_MIN_SLOS * 200.0),  # a generous SLO: the run spans it several times
        (5.0, 20_000.0, 150),  # a fast model with a tight SLO: the shortest run
        (200.0, 1.0, SERVER_MAX_RUN_MS),  # never longer than the cap
    ],
)
def test_server_runs_hold_enough_queries_and_slos(slo_ms: float, qps: float, expected_ms: float) -> None:
    assert Server(slo_ms=slo_ms).run_ms(qps) == int(expected_ms)
    assert Server(slo_ms=slo_ms).run_ms(qps, duration_ms=9000) == 9000  # a longer run asked for is kept


@pytest.mark.parametrize(
    ("instances", "batch", "qps", "expected"),
    [
        (2, 32, 80.0, OFFLINE_MIN_ROUNDS * 64),  # a slow model: 300 ms would hold less than one round
        (1, 8, 1000.0, 336),  # a fast one: 300 ms at 1000/s (330 with LoadGen's margin), in whole batches
        (2, 4, 1000.0, 336),
    ],
)
def test_offline_runs_hold_whole_rounds_and_enough_of_them(
    instances: int, batch: int, qps: float, expected: int
) -> None:
    samples = Batch.samples(Config("v", 1, instances, batch), qps, duration_ms=300)
    assert samples == expected
    assert samples % (instances * batch) == 0
