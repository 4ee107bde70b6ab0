"""The search's choice among finalists: confirmed by repeated runs, with the leader's neighbours and another set-up.

The profile here is scripted: run-to-run noise cannot be produced on demand with a real runtime, and
what is under test is how the search decides from the scores it is given. The real runtimes and
LoadGen are exercised end to end in test_tune.py.
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Callable
from types import SimpleNamespace
from typing import Any

from polystack.tuning.measure import Config, Trial
from polystack.tuning.profiles import Profile
from polystack.tuning.search import CONFIRM_MAX_ROUNDS, CONFIRM_ROUNDS, search


class Scripted(Profile):
    """Scores come from ``script(config, run_number)``; every run costs nothing."""

    name = "server"
    scenario = "Server"
    summary = "scripted"

    def __init__(self, script: Callable[[Config, int], float], proxy: Callable[[Config], float]) -> None:
        super().__init__(slo_ms=10.0)
        self.script = script
        self._proxy = proxy
        self.runs: dict[Config, int] = defaultdict(int)

    def proxy(self, m: Any, c: Config) -> float:
        return self._proxy(c)

    def measure(self, m: Any, c: Config, duration_ms: int, rung: int, final: bool, hint: Trial | None) -> Trial:
        score = self.script(c, self.runs[c])
        self.runs[c] += 1
        return Trial(c, rung, duration_ms, {"qps": score}, (score, 0.0))

    def cost_s(self, duration_ms: int, final: bool) -> float:
        return 0.0

    def headline(self, t: Trial) -> str:
        return f"{t.metrics['qps']:.0f}"

    def compare(self, win: Trial, other: Trial, other_label: str) -> str:
        return "better"


class Slow(Scripted):
    """Every run takes 0.2 s, and the profile says so."""

    def measure(self, m: Any, c: Config, duration_ms: int, rung: int, final: bool, hint: Trial | None) -> Trial:
        time.sleep(0.2)
        return super().measure(m, c, duration_ms, rung, final, hint)

    def cost_s(self, duration_ms: int, final: bool) -> float:
        return 0.2


def space(batches: tuple[int, ...] = (1, 2, 4, 8, 16, 32), delays: tuple[float, ...] = (0.0, 1.0)) -> list[Config]:
    return [Config("v", 2, 1, b, d) for b in batches for d in delays]


MEASURER = SimpleNamespace(candidates={"v": SimpleNamespace(label="onnxruntime fp32")})


def test_a_finalist_that_won_one_lucky_run_loses_to_the_steady_one() -> None:
    lucky, steady = Config("v", 2, 1, 16, 0.0), Config("v", 2, 1, 32, 1.0)

    def script(c: Config, run: int) -> float:
        if c == lucky:
            return 1300.0 if run == 0 else 900.0  # one run at double its usual speed
        return 1000.0 if c == steady else 100.0

    profile = Scripted(script, proxy=lambda c: {lucky: 2.0, steady: 1.0}.get(c, 0.0))
    outcome = search(profile, MEASURER, [lucky, steady], budget_s=60, strategy="exhaustive")  # type: ignore[arg-type]
    assert outcome.best is not None and outcome.best.config == steady
    assert profile.runs[lucky] == profile.runs[steady] == 1 + CONFIRM_MAX_ROUNDS  # free runs: every round
    assert any("median" in n for n in outcome.notes)


A, B = Config("v", 2, 1, 16, 0.0), Config("v", 2, 1, 32, 1.0)


def _two_finalists(scores: dict[Config, list[float]]) -> tuple[Any, Scripted]:
    """An exhaustive search of A and B, each run scoring the next of its ``scores`` (round and round)."""
    profile = Scripted(lambda c, run: scores[c][run % len(scores[c])], proxy=lambda c: 0.0)
    outcome = search(profile, MEASURER, [A, B], budget_s=60, strategy="exhaustive")  # type: ignore[arg-type]
    assert outcome.best is not None and outcome.best.config == B
    return outcome, profile


def test_finalists_within_each_others_runs_are_called_a_tie_and_stand_by_their_medians() -> None:
    scores = {A: [1000.0, 960.0, 1040.0, 1000.0, 990.0], B: [1030.0, 1010.0, 970.0, 1020.0, 1015.0]}
    outcome, profile = _two_finalists(scores)
    tie = [n for n in outcome.notes if "tie" in n]
    assert len(tie) == 1 and "batch <= 16," in tie[0], outcome.notes  # the runner-up named
    # each finalist stands for its median run: the loser's best run (1040) is not what is said of it
    medians = {t.config: (t.metrics["qps"], n) for t, n in outcome.medians}
    runs = profile.runs[A]
    assert medians[A] == (sorted(scores[A][:runs])[(runs - 1) // 2], runs)
    standing = [t for t in outcome.standing() if t.config == A]
    assert len(standing) == 1 and standing[0].metrics["qps"] == medians[A][0]


def test_a_winner_that_beat_the_runner_ups_median_in_every_run_is_no_tie() -> None:
    outcome, _ = _two_finalists({A: [1300.0, 900.0, 900.0, 900.0, 900.0], B: [1000.0]})
    assert not [n for n in outcome.notes if "tie" in n], outcome.notes


def test_the_leaders_untried_neighbour_joins_the_finalists_and_can_win() -> None:
    configs = space()
    best = Config("v", 2, 1, 32, 1.0)

    def script(c: Config, run: int) -> float:
        if c == best:
            return 50.0 if run == 0 else 5000.0  # under-rated by its first (short) run, dropped there
        return 100.0 * c.max_batch_size + 10 * c.max_delay_ms  # batch 32 / delay 0 leads the last rung

    profile = Scripted(script, proxy=lambda c: script(c, 1))
    outcome = search(profile, MEASURER, configs, budget_s=60, strategy="halving")  # type: ignore[arg-type]
    first = next(t for t in outcome.trials if t.config == best)
    assert first.duration_ms < 300 and first.rung == 0
    assert outcome.best is not None and outcome.best.config == best
    assert outcome.best.metrics["qps"] == 5000.0


def test_finalists_are_not_confirmed_past_the_budget() -> None:
    a, b = Config("v", 2, 1, 8, 0.0), Config("v", 2, 1, 16, 0.0)

    profile = Slow(lambda c, run: float(c.max_batch_size), proxy=lambda c: 0.0)
    outcome = search(profile, MEASURER, [a, b], budget_s=0.6, strategy="exhaustive")  # type: ignore[arg-type]
    assert profile.runs[a] == profile.runs[b] == 1  # a second round would end past the budget
    assert outcome.best is not None and outcome.best.config == b
    assert not any("median" in n for n in outcome.notes)


def test_rounds_past_the_first_two_are_run_only_while_they_end_within_half_the_budget() -> None:
    a, b = Config("v", 2, 1, 8, 0.0), Config("v", 2, 1, 16, 0.0)
    # 0.2 s a run: the first runs take 0.4 s, each round 0.4 s more; a third round would end at 1.6 s,
    # past half of the 3 s budget, though the budget itself would still hold it
    profile = Slow(lambda c, run: float(c.max_batch_size), proxy=lambda c: 0.0)
    outcome = search(profile, MEASURER, [a, b], budget_s=3.0, strategy="exhaustive")  # type: ignore[arg-type]
    assert profile.runs[a] == profile.runs[b] == 1 + CONFIRM_ROUNDS
    assert outcome.best is not None and outcome.best.config == b


def test_an_unconfirmed_runner_up_never_beats_the_confirmed_finalists() -> None:
    a, b, c, d = (Config("v", t, 1, 1, 0.0) for t in (1, 2, 4, 8))

    def script(cfg: Config, run: int) -> float:
        # a and b lead the first runs and then measure worse; c (the other set-up that joins them) too;
        # d's one run sits between their first runs and their medians
        first, later = {a: (100.0, 40.0), b: (90.0, 45.0), c: (80.0, 30.0), d: (79.0, 79.0)}[cfg]
        return first if run == 0 else later

    profile = Scripted(script, proxy=lambda cfg: 0.0)
    outcome = search(profile, MEASURER, [a, b, c, d], budget_s=60, strategy="exhaustive")  # type: ignore[arg-type]
    assert profile.runs[c] == 1 + CONFIRM_MAX_ROUNDS and profile.runs[d] == 1
    assert outcome.best is not None and outcome.best.config == b


def test_a_measured_neighbour_under_rated_by_its_one_run_is_confirmed_and_wins() -> None:
    configs = space(batches=(8, 16, 32, 64), delays=(0.0,))
    b64 = Config("v", 2, 1, 64, 0.0)

    def script(c: Config, run: int) -> float:
        if c == b64:
            return 500.0 if run == 0 else 2000.0  # ranked last by its one exhaustive run
        return 1000.0 - 10 * abs(c.max_batch_size - 32)  # batch 32 leads, 16 second

    profile = Scripted(script, proxy=lambda c: 0.0)
    outcome = search(profile, MEASURER, configs, budget_s=60, strategy="exhaustive")  # type: ignore[arg-type]
    assert profile.runs[b64] == 1 + CONFIRM_MAX_ROUNDS and profile.runs[Config("v", 2, 1, 8, 0.0)] == 1
    assert outcome.best is not None and outcome.best.config == b64


def test_the_best_of_another_set_up_joins_the_finalists_and_can_win() -> None:
    one_thread = Config("v", 1, 2, 4, 0.0)
    configs = [*space(batches=(4, 8, 16, 32), delays=(0.0,)), one_thread]

    def script(c: Config, run: int) -> float:
        if c == one_thread:
            return 400.0 if run == 0 else 3000.0  # one unlucky run puts it below every 2-thread one
        return 1000.0 + c.max_batch_size

    profile = Scripted(script, proxy=lambda c: 0.0)
    outcome = search(profile, MEASURER, configs, budget_s=60, strategy="exhaustive")  # type: ignore[arg-type]
    assert profile.runs[one_thread] == 1 + CONFIRM_MAX_ROUNDS
    assert outcome.best is not None and outcome.best.config == one_thread


def test_finalists_that_do_not_fit_the_budget_are_dropped_the_best_two_last() -> None:
    configs = space(batches=(8, 16, 32, 64), delays=(0.0,))
    b8, b16, b32, b64 = configs

    # batch 32 leads, 16 second, 64 its neighbour: three finalists. After four runs (0.8 s) a round
    # of three (0.6 s) would end past the 1.3 s budget and a round of two (0.4 s) does not
    profile = Slow(lambda c, run: {8: 760.0, 16: 840.0, 32: 1000.0, 64: 680.0}[c.max_batch_size], proxy=lambda c: 0.0)
    outcome = search(profile, MEASURER, configs, budget_s=1.3, strategy="exhaustive")  # type: ignore[arg-type]
    assert (profile.runs[b32], profile.runs[b16], profile.runs[b64], profile.runs[b8]) == (2, 2, 1, 1)
    assert outcome.best is not None and outcome.best.config == b32
