"""Tuning end to end on deterministic null variants: each profile picks what it should, plans are kept."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from polystack.engine import LoadSpec
from polystack.store import ModelRecord, Store, VariantRecord
from polystack.tuning import TuneOptions, plan_status, spec_for_profile, tune
from polystack.tuning.plan import PlanSettings, fingerprint
from polystack.tuning.profiles import SERVER_MIN_QUERIES, SS_MIN_QUERIES

AddVariant = Callable[..., VariantRecord]
FAST = TuneOptions(budget_s=20, duration_ms=120, min_duration_ms=40, memory=False, threads=[1])


def test_realtime_chooses_the_lowest_latency_variant_and_stores_the_plan(
    store: Store, mlp: ModelRecord, add_variant: AddVariant
) -> None:
    slow = add_variant(store, mlp, delay_ms=3.0)
    fast = add_variant(store, mlp, delay_ms=0.2)
    result = tune(store, mlp, "realtime", FAST)
    assert result.chosen is not None and result.chosen.config.candidate == fast.id
    assert result.plan is not None and result.plan.variant_id == fast.id
    assert "p99" in result.explanation and "lower than" in result.explanation
    # every measurement is kept with the plan, the variants' facts too
    kinds = {m["kind"] for m in result.plan.measurements}
    assert kinds == {"trial", "variant"}
    ids = {m["variant_id"] for m in result.plan.measurements if m["kind"] == "trial"}
    assert ids == {slow.id, fast.id}
    # a p99 from a 120 ms run of a 3 ms variant would be the slowest of 40 queries: runs go on to 200
    assert all(t.metrics["queries"] >= SS_MIN_QUERIES for t in result.outcome.trials)

    got = spec_for_profile(store, mlp, "realtime")
    assert got is not None
    spec, settings = got
    assert isinstance(spec, LoadSpec) and spec.variant_id == fast.id and spec.backend == "null"
    assert spec.options["delay_ms"] == 0.2
    assert settings.profile == "realtime" and settings.max_batch_size == 1 and not settings.dynamic_batching


def test_only_verified_variants_are_candidates_and_rejections_are_explained(
    store: Store, mlp: ModelRecord, add_variant: AddVariant
) -> None:
    ok = add_variant(store, mlp, delay_ms=1.0)
    bad = add_variant(store, mlp, status="rejected", precision="int8", delay_ms=0.0)
    result = tune(store, mlp, "realtime", FAST)
    assert [c.id for c in result.candidates] == [ok.id]
    assert result.chosen is not None and result.chosen.config.candidate == ok.id
    assert "null int8 rejected by the gate: min cosine 0.92 < 0.99" in result.explanation
    assert result.plan is not None
    assert {
        "kind": "rejected",
        "variant_id": bad.id,
        "label": "null int8",
        "status": "rejected",
        "reason": "min cosine 0.92 < 0.99",
    } in result.plan.measurements


def test_no_verified_variants_falls_back_to_the_source_model(
    store: Store, mlp: ModelRecord, add_variant: AddVariant
) -> None:
    result = tune(store, mlp, "realtime", FAST)
    assert [c.id for c in result.candidates] == ["source"]
    assert result.notes and "no verified variants" in result.notes[0]
    assert result.plan is not None and result.plan.variant_id is None
    got = spec_for_profile(store, mlp, "realtime")
    assert got is not None
    spec, settings = got
    assert spec.backend == "onnxruntime" and spec.artifact == store.artifact_path(mlp)
    assert spec.options == {"intra_op_threads": 1} and settings.threads == 1


def test_batch_profile_takes_the_largest_batch_when_calls_cost_the_same(
    store: Store, mlp: ModelRecord, add_variant: AddVariant
) -> None:
    v = add_variant(store, mlp, delay_ms=2.0)  # 2 ms per call whatever the batch: bigger batches win
    result = tune(store, mlp, "batch", TuneOptions(**{**FAST.__dict__, "max_batch_size": 16}))
    assert result.chosen is not None and result.chosen.config.candidate == v.id
    assert result.settings is not None and result.settings.max_batch_size >= 8
    assert result.chosen.metrics["throughput"] > 2000  # >> 500/s at batch 1


def test_server_profile_finds_a_qps_under_the_slo_with_dynamic_batching(
    store: Store, mlp: ModelRecord, add_variant: AddVariant
) -> None:
    add_variant(store, mlp, delay_ms=2.0)
    opts = TuneOptions(**{**FAST.__dict__, "max_batch_size": 8, "slo_ms": 40.0, "budget_s": 4.0})
    result = tune(store, mlp, "server", opts)
    assert result.chosen is not None and result.settings is not None
    assert result.settings.dynamic_batching and result.settings.slo_ms == 40.0
    assert result.chosen.metrics["qps"] > 500  # one call at a time tops out at 500/s: batching won
    assert result.chosen.metrics["p99_ms"] <= 40.0
    assert result.chosen.metrics["queries"] >= SERVER_MIN_QUERIES  # its p99 is not its slowest query
    assert "QPS" in result.explanation


def test_edge_profile_takes_the_smallest_variant_within_the_slo(
    store: Store, mlp: ModelRecord, add_variant: AddVariant
) -> None:
    small_slow = add_variant(store, mlp, size_bytes=1_000, delay_ms=30.0)  # misses a 10 ms SLO
    small = add_variant(store, mlp, size_bytes=10_000, delay_ms=1.0)
    add_variant(store, mlp, size_bytes=50_000_000, delay_ms=0.1)
    result = tune(store, mlp, "edge", TuneOptions(**{**FAST.__dict__, "slo_ms": 10.0}))
    assert result.chosen is not None and result.chosen.config.candidate == small.id
    slow_trials = [t for t in result.outcome.trials if t.config.candidate == small_slow.id]
    assert slow_trials and all(t.score is None and "SLO" in (t.reason or "") for t in slow_trials)
    assert "smaller than" in result.explanation


def test_halving_measures_fewer_configurations_and_still_finds_the_best(
    store: Store, mlp: ModelRecord, add_variant: AddVariant
) -> None:
    for d in (8.0, 6.0, 5.0, 4.0, 3.5, 3.0):
        add_variant(store, mlp, delay_ms=d)
    best = add_variant(store, mlp, delay_ms=0.1)
    opts = TuneOptions(**{**FAST.__dict__, "strategy": "halving", "budget_s": 8.0, "duration_ms": 120})
    # a tune is a measurement: beside the suite's other worker the best's p99 (the 2nd slowest of 200 calls of
    # 0.1 ms) measured 1.4 and 4.5 ms in two runs of the suite, past a slower variant's, and the tune rightly chose
    # that one; a search that does not find the best fails all three
    for _ in range(3):
        result = tune(store, mlp, "realtime", opts)
        if result.chosen is not None and result.chosen.config.candidate == best.id:
            break
    assert result.outcome.strategy.startswith("successive halving")
    assert result.chosen is not None and result.chosen.config.candidate == best.id
    assert max(t.rung for t in result.outcome.trials) >= 1
    assert len(result.outcome.final_rung) < 7


def test_a_plan_from_another_machine_is_stale_and_not_used(
    store: Store, mlp: ModelRecord, add_variant: AddVariant
) -> None:
    v = add_variant(store, mlp)
    other = store.plans.put(
        mlp,
        profile="realtime",
        fingerprint="0123456789abcdef",
        variant_id=v.id,
        settings=PlanSettings(profile="realtime", backend="null").to_dict(),
        measurements=[],
        explanation="elsewhere",
        machine={},
    )
    assert plan_status(other) == "stale" and fingerprint() != "0123456789abcdef"
    assert spec_for_profile(store, mlp, "realtime") is None


def test_a_plan_whose_variant_lost_verification_is_not_used(
    store: Store, mlp: ModelRecord, add_variant: AddVariant
) -> None:
    v = add_variant(store, mlp)
    tune(store, mlp, "realtime", FAST)
    assert spec_for_profile(store, mlp, "realtime") is not None
    add_variant(store, mlp, status="rejected")  # same id: the gate now refuses it
    assert store.variants.get(v.id).status == "rejected"
    assert spec_for_profile(store, mlp, "realtime") is None


def test_unknown_profile_and_bad_slo_are_refused(store: Store, mlp: ModelRecord, add_variant: AddVariant) -> None:
    from polystack.errors import InvalidRequest

    with pytest.raises(InvalidRequest, match="choose one of realtime, server, batch, edge"):
        tune(store, mlp, "fastest", FAST)
    with pytest.raises(InvalidRequest, match="slo"):
        tune(store, mlp, "server", TuneOptions(slo_ms=-1))


def test_memory_is_measured_per_variant_in_a_subprocess(
    store: Store, mlp: ModelRecord, add_variant: AddVariant
) -> None:
    result = tune(store, mlp, "realtime", TuneOptions(**{**FAST.__dict__, "memory": True}))
    facts = result.facts["source"]
    assert facts.memory_method and "subprocess" in facts.memory_method
    assert facts.memory_bytes is not None and facts.memory_bytes > 1_000_000  # onnxruntime's import alone
    assert facts.peak_rss_bytes is not None and facts.peak_rss_bytes > facts.memory_bytes
    assert facts.load_time_s is not None and facts.size_bytes == mlp.size_bytes
