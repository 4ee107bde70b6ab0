"""LoadGen scenarios over a model: short runs, figures read back, no log files left in the cwd."""

from __future__ import annotations

import os
import signal
import threading
import time
from dataclasses import replace
from pathlib import Path

import pytest

from polystack.backends.null import NullModel
from polystack.tuning import scenarios
from polystack.tuning.inputs import synthetic
from polystack.types import DType, Signature, TensorSpec

SIG = Signature(
    inputs=(TensorSpec("x", DType.FP32, (-1, 4)),),
    outputs=(TensorSpec("y", DType.FP32, (-1, 2)),),
)
RUN = scenarios.RunSettings(min_duration_ms=150, min_query_count=8)


@pytest.fixture(autouse=True)
def in_tmp(tmp_path: Path) -> None:
    old = os.getcwd()
    os.chdir(tmp_path)
    yield
    assert list(tmp_path.iterdir()) == [], "LoadGen wrote into the cwd"
    os.chdir(old)


def test_single_stream_reports_percentiles_and_early_stopping_estimate() -> None:
    r = scenarios.single_stream(NullModel(SIG, delay_ms=1.0), synthetic(SIG, n=8), RUN, expected_latency_s=1e-3)
    assert r.scenario == "SingleStream" and r.errors == 0
    assert r.queries >= 8
    assert 1.0 <= r.p50_ms <= r.p90_ms <= r.p99_ms
    assert r.throughput > 0
    assert r.early_stop_p90_ms is None or r.early_stop_p90_ms >= r.p50_ms


def test_offline_runs_batches_of_the_asked_size() -> None:
    model = NullModel(SIG, delay_ms=0.5)
    r = scenarios.offline(model, synthetic(SIG, n=16), batch_size=8, run=RUN, expected_qps=4000)
    assert r.errors == 0 and r.throughput > 0
    assert r.mean_batch_size is not None and r.mean_batch_size > 6
    assert r.batch_p99_ms is not None and r.batch_p99_ms >= 0.5


def test_offline_runs_the_asked_samples_in_whole_batches_on_every_instance() -> None:
    # three rounds of two 8-sample batches, though 150 ms at 4000/s would ask for 660 samples
    model = NullModel(SIG, delay_ms=2.0)
    r = scenarios.offline(
        model, synthetic(SIG, n=16), batch_size=8, run=RUN, expected_qps=4000, instances=2, samples=48
    )
    assert r.errors == 0 and r.samples == 48
    assert r.mean_batch_size == 8  # no part-filled batch, first or last


def test_offline_without_a_sample_count_runs_the_duration_at_the_expected_rate() -> None:
    r = scenarios.offline(NullModel(SIG, delay_ms=0.0), synthetic(SIG, n=16), batch_size=8, run=RUN, expected_qps=400)
    assert r.samples == 66  # LoadGen's 1.1 x 400/s x 150 ms


def test_server_batches_poisson_arrivals_within_the_slo() -> None:
    r = scenarios.server(NullModel(SIG, delay_ms=0.5), synthetic(SIG, n=16), 300, 50.0, 8, 1.0, RUN)
    assert r.errors == 0
    assert r.target_qps == 300 and r.throughput > 200
    assert scenarios.meets_slo(r, 50.0)
    assert not scenarios.meets_slo(r, r.p99_ms / 2)


def test_failing_model_is_reported_and_the_run_still_ends() -> None:
    class Broken(NullModel):
        def infer(self, inputs):  # type: ignore[no-untyped-def]
            raise RuntimeError("boom")

    r = scenarios.server(Broken(SIG, 0), synthetic(SIG, n=8), 200, 50.0, 4, 0.0, RUN)
    assert r.errors > 0 and "boom" in (r.error or "")
    assert not scenarios.meets_slo(r, 50.0)


def test_a_fast_model_keeps_up_with_a_slow_rate_whatever_the_poisson_draw() -> None:
    # 16 arrivals at 74 QPS: the scheduled rate misses the target by up to 40% from seed to seed; a
    # model this fast keeps up with every schedule, and must not be judged behind against the target
    model, pool = NullModel(SIG, delay_ms=0.2), synthetic(SIG, n=16)
    runs = [
        scenarios.server(model, pool, 74, 200.0, 1, 0.0, replace(RUN, min_query_count=16, seed=seed))
        for seed in range(6)
    ]
    assert any((r.scheduled_qps or 0) < 0.9 * 74 for r in runs), "no seed drew a slow schedule"
    for r in runs:
        # kept up as `kept_up` judges it (90% of the rate scheduled): at 0.95 the suite's other worker failed it once,
        # a 12 ms stall at the end of 16 arrivals costing 5% of the completed rate (72.8 of 76.7 QPS)
        assert r.scheduled_qps is not None and r.throughput >= 0.9 * r.scheduled_qps
        assert scenarios.meets_slo(r, 200.0), (r.throughput, r.scheduled_qps, r.p99_ms)


def test_a_system_that_completes_less_than_arrived_does_not_keep_up() -> None:
    behind = scenarios.ScenarioResult("Server", 50.0, 1, 2, 3, 1, 40, False, target_qps=74, scheduled_qps=70.0)
    assert not scenarios.meets_slo(behind, 200.0)
    # the same completed rate, against a schedule that drew only 52 QPS: it kept up
    assert scenarios.meets_slo(replace(behind, scheduled_qps=52.0), 200.0)


def fake_run(capacity: float):  # type: ignore[no-untyped-def]
    """A system that meets the SLO below ``capacity`` QPS and is overloaded above it."""

    def run_at(q: float) -> scenarios.ScenarioResult:
        ok = q <= capacity
        done = q if ok else capacity
        return scenarios.ScenarioResult("Server", done, 1, 2, 3 if ok else 500, 1, 10, False, target_qps=q)

    return run_at


@pytest.mark.parametrize("capacity", [50.0, 900.0, 30_000.0])
def test_qps_search_lands_near_the_capacity_from_a_rough_bound(capacity: float) -> None:
    found = scenarios.find_max_qps(fake_run(capacity), slo_ms=10, upper_qps=5000, steps=8)
    assert found.best is not None
    assert 0.8 * capacity <= found.qps <= capacity


def test_a_rate_that_passed_before_is_re_measured_in_small_steps() -> None:
    # re-measuring from the previous run's rate: a near miss steps down a little, then bisects
    found = scenarios.find_max_qps(fake_run(920.0), slo_ms=10, upper_qps=1200, steps=3, start_qps=1000)
    assert [round(r.target_qps or 0) for r in found.tries][:2] == [1000, 800]
    assert found.qps >= 0.85 * 920
    # and a pass grows by a quarter, not twice over: three tries end within 10% of the capacity
    found = scenarios.find_max_qps(fake_run(1300.0), slo_ms=10, upper_qps=1200, steps=3, start_qps=1000)
    assert [round(r.target_qps or 0) for r in found.tries][:2] == [1000, 1250]
    assert found.qps >= 0.9 * 1300


def test_qps_search_reports_nothing_when_even_low_rates_miss() -> None:
    found = scenarios.find_max_qps(fake_run(0.0), slo_ms=10, upper_qps=1000, steps=4)
    assert found.best is None and found.qps == 0.0 and len(found.tries) == 4


class SlowFirstCalls(NullModel):
    """A model whose first calls are slow, as a freshly loaded runtime's are (allocations, compilation)."""

    def __init__(self, slow: int) -> None:
        super().__init__(SIG, delay_ms=0.2)
        self.slow = slow
        self.batches: list[int] = []  # the batch size of every call, in order

    def infer(self, inputs):  # type: ignore[no-untyped-def]
        self.batches.append(len(inputs["x"]))
        if self.slow > 0:
            self.slow -= 1
            time.sleep(0.05)
        return super().infer(inputs)


def test_a_fresh_models_slow_first_calls_stay_out_of_the_timed_run() -> None:
    # 16 queries: a p99 is the slowest, so one 50 ms first call would be the p99
    r = scenarios.single_stream(SlowFirstCalls(slow=2), synthetic(SIG, n=8), RUN, expected_latency_s=2e-4)
    assert r.queries >= 8 and r.errors == 0
    assert r.p99_ms < 25

    cold = scenarios.single_stream(
        SlowFirstCalls(slow=2), synthetic(SIG, n=8), replace(RUN, warmup_calls=0), expected_latency_s=2e-4
    )
    assert cold.p99_ms >= 50  # the same run without warm-up: what the tuner used to rank


def test_offline_and_server_runs_warm_their_batch_shapes_first() -> None:
    # three 50 ms first calls: timed, they would be the slowest batches and hold up the queue
    model = SlowFirstCalls(slow=3)
    r = scenarios.offline(model, synthetic(SIG, n=16), batch_size=8, run=RUN, expected_qps=4000)
    assert model.batches[:3] == [8, 8, 8]
    assert r.batch_p99_ms is not None and r.batch_p99_ms < 25
    model = SlowFirstCalls(slow=3)
    r = scenarios.server(model, synthetic(SIG, n=16), 300, 20.0, 8, 1.0, RUN)
    assert model.batches[:6] == [1, 1, 1, 8, 8, 8]  # both shapes a Server run sends
    assert r.p99_ms < 20


class CtrlCAt(NullModel):
    """A model during whose ``at``-th timed call the user presses Ctrl-C (SIGINT to this process)."""

    def __init__(self, at: int) -> None:
        super().__init__(SIG, delay_ms=0.2)
        self.at, self.calls = at, 0

    def infer(self, inputs):  # type: ignore[no-untyped-def]
        self.calls += 1
        if self.calls == self.at:
            signal.raise_signal(signal.SIGINT)
        return super().infer(inputs)


@pytest.mark.parametrize("scenario", ["single_stream", "offline", "server"])
def test_ctrl_c_in_a_run_ends_it_and_then_interrupts_the_caller(scenario: str) -> None:
    # a KeyboardInterrupt raised in a callback LoadGen called crossed its C++: the process aborted or segfaulted
    if threading.current_thread() is not threading.main_thread():
        pytest.skip("only the main thread gets SIGINT")
    model = CtrlCAt(at=RUN.warmup_calls * 2 + 3)  # a timed call, after the warm-up of every batch shape
    run = replace(RUN, min_duration_ms=400, min_query_count=8)
    before = signal.getsignal(signal.SIGINT)
    started = time.perf_counter()
    with pytest.raises(KeyboardInterrupt):
        if scenario == "single_stream":
            scenarios.single_stream(model, synthetic(SIG, n=8), run, expected_latency_s=2e-4)
        elif scenario == "offline":
            scenarios.offline(model, synthetic(SIG, n=16), batch_size=1, run=run, expected_qps=2000)
        else:
            scenarios.server(model, synthetic(SIG, n=16), 300, 50.0, 1, 0.0, run)
    assert time.perf_counter() - started < 30
    assert signal.getsignal(signal.SIGINT) is before  # the caller's handler is back
    calls = model.calls
    time.sleep(0.1)
    assert model.calls == calls  # nothing of the run is left running
    assert not scenarios._STOPPING.is_set()  # the next run runs
    r = scenarios.single_stream(NullModel(SIG, delay_ms=0.2), synthetic(SIG, n=8), RUN, expected_latency_s=2e-4)
    assert r.queries >= 8 and r.errors == 0


def test_a_stop_left_from_before_does_not_skip_the_next_run() -> None:
    # a run that raised after a Ctrl-C left the flag set, and every later run completed its samples unrun
    scenarios._STOPPING.set()
    model = CtrlCAt(at=10**9)  # never presses it
    r = scenarios.single_stream(model, synthetic(SIG, n=8), RUN, expected_latency_s=2e-4)
    assert r.queries >= 8 and model.calls >= r.queries and not scenarios._STOPPING.is_set()
