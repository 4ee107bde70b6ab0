"""The paired QPS ladder: monotone pass-rate fits, capacities, interleaving, widening, and real Server runs."""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable

import pytest

from polystack.store import ModelRecord, Store, VariantRecord
from polystack.tuning import candidates as cands
from polystack.tuning import ladder, scenarios
from polystack.tuning.inputs import pool_for
from polystack.tuning.measure import Config, Measurer
from polystack.tuning.profiles import Server

AddVariant = Callable[..., VariantRecord]


def test_rates_are_geometric_from_low_to_high() -> None:
    rates = ladder.rates_around(100.0)
    assert rates[0] == 50.0 and rates[-1] <= 140.0 < rates[-1] * 1.15
    assert len(rates) == 8
    assert all(b / a == pytest.approx(1.15, rel=1e-3) for a, b in itertools.pairwise(rates))
    with pytest.raises(ValueError, match="step > 1"):
        ladder.rates_around(100.0, step=1.0)


def test_a_pass_rate_that_rises_again_is_pooled_into_one_step() -> None:
    assert ladder.monotone_fit([1.0, 0.25, 0.75, 0.0], [4, 4, 4, 4]) == [1.0, 0.5, 0.5, 0.0]
    # weights count: a rung with more runs pulls the pooled value towards its own
    assert ladder.monotone_fit([0.0, 1.0], [3, 1]) == [0.25, 0.25]


def test_capacity_is_where_the_pass_rate_falls_through_one_half() -> None:
    rates = [100.0, 200.0, 400.0, 800.0]
    four = [True] * 4
    # 4/4, 3/4, 1/4, 0/4: half-way between 200 and 400 in log-rate
    cap, where = ladder.crossing(rates, [four, [True] * 3 + [False], [True] + [False] * 3, [False] * 4])
    assert where == "inside" and cap == pytest.approx(math.sqrt(200 * 400))
    # a lucky pass above an unlucky fail does not make two crossings
    cap, where = ladder.crossing(rates, [four, [True, False, False, False], [True, True, True, False], [False] * 4])
    assert where == "inside" and 200 <= cap <= 400
    assert ladder.crossing(rates, [four] * 4) == (800.0, "above")
    assert ladder.crossing(rates, [[False] * 4] * 4) == (100.0, "below")


def _threshold(limits: dict[str, float], calls: list[tuple[str, float]]) -> ladder.RunAt:
    def run_at(key: str, qps: float) -> tuple[bool, float]:
        calls.append((key, qps))
        return qps <= limits[key], 1.0 if qps <= limits[key] else 99.0

    return run_at


def test_a_ladder_runs_both_at_every_rate_alternating_which_goes_first() -> None:
    calls: list[tuple[str, float]] = []
    lad = ladder.run(_threshold({"a": 300.0, "b": 200.0}, calls), ("a", "b"), [100.0, 250.0, 400.0], runs=2, refine=0)
    assert calls[:4] == [("a", 100.0), ("b", 100.0), ("b", 100.0), ("a", 100.0)]
    assert lad.rates == [100.0, 250.0, 400.0]
    assert lad.to_dict()["a"]["passes"] == [2, 2, 0]
    assert lad.to_dict()["b"]["passes"] == [2, 0, 0]
    assert 250 < lad.capacity("a")[0] < 400 and 100 < lad.capacity("b")[0] < 250
    assert lad.ratio("a", "b") > 1
    # every run the same: the bootstrap has nothing to resample, the interval is the ratio itself
    lo, hi = lad.interval("a", "b", resamples=50)
    assert lo == hi == pytest.approx(lad.ratio("a", "b"), abs=1e-3)


def test_a_ladder_widens_until_both_cross_inside_it() -> None:
    limits = {"a": 1000.0, "b": 60.0}
    lad = ladder.run(_threshold(limits, []), ("a", "b"), [100.0, 200.0], runs=1, step=2.0, refine=0)
    # a passed at the top: rungs were added above until it failed; b failed at the bottom: one below
    assert lad.rates == [50.0, 100.0, 200.0, 400.0, 800.0, 1600.0]
    assert lad.capacity("a")[1] == lad.capacity("b")[1] == "inside"
    assert 800 < lad.capacity("a")[0] < 1600 and 50 < lad.capacity("b")[0] < 100
    # out of extra rungs before a failed: its capacity is censored at the top, and says so
    short = ladder.run(_threshold(limits, []), ("a", "b"), [100.0, 200.0], runs=1, step=2.0, max_extra=1, refine=0)
    assert short.rates == [50.0, 100.0, 200.0, 400.0]
    assert short.capacity("a") == (400.0, "above")


def test_two_crossings_between_the_same_coarse_rates_are_told_apart_by_refining() -> None:
    limits = {"a": 540.0, "b": 560.0}
    coarse = ladder.run(_threshold(limits, []), ("a", "b"), [400.0, 460.0, 529.0, 608.35], runs=1, refine=0)
    assert coarse.capacity("a") == coarse.capacity("b")  # both pass at 529 and fail at 608
    fine = ladder.run(_threshold(limits, []), ("a", "b"), [400.0, 460.0, 529.0, 608.35], runs=1, refine=2)
    assert len(fine.rates) == 6  # one rung half-way, then one half-way again
    assert fine.capacity("a")[0] < fine.capacity("b")[0]
    for key, limit in limits.items():  # each within 2% of its true limit, from coarse rungs 15% apart
        assert fine.capacity(key)[0] == pytest.approx(limit, rel=0.02)


def test_server_configurations_on_one_ladder_tell_a_faster_model_from_a_slower_one(
    store: Store, mlp: ModelRecord, add_variant: AddVariant
) -> None:
    # null variants sleep per call: 2 ms (500 QPS at batch 1) and 5 ms (200 QPS), whatever the machine's load
    fast = add_variant(store, mlp, delay_ms=2.0)
    slow = add_variant(store, mlp, delay_ms=5.0)
    found, _, _ = cands.gather(store, mlp)
    m = Measurer(mlp.signature, pool_for(store, mlp), [c for c in found if c.id in (fast.id, slow.id)])
    server = Server(slo_ms=100.0)
    configs = {"fast": Config(fast.id, 1, 1, 1, 0.0), "slow": Config(slow.id, 1, 1, 1, 0.0)}

    def run_at(key: str, qps: float) -> tuple[bool, float]:
        r = server.run_at(m, configs[key], qps, 150)
        return scenarios.meets_slo(r, 100.0), r.p99_ms

    try:
        lad = ladder.run(run_at, ("fast", "slow"), [100.0, 300.0, 900.0], runs=1, max_extra=0, refine=0)
    finally:
        m.close()
    assert lad.to_dict()["fast"]["passes"] == [1, 1, 0]
    assert lad.to_dict()["slow"]["passes"] == [1, 0, 0]
    assert lad.ratio("fast", "slow") > 1.5
