"""The search's choice among finalists: confirmed by repeated runs and the leader's neighbours.

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
from polystack.tuning.search import search


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
    assert profile.runs[lucky] == profile.runs[steady] == 3
    assert any("median" in n for n in outcome.notes)


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

    class Slow(Scripted):
        def measure(self, m: Any, c: Config, duration_ms: int, rung: int, final: bool, hint: Trial | None) -> Trial:
            time.sleep(0.2)
            return super().measure(m, c, duration_ms, rung, final, hint)

        def cost_s(self, duration_ms: int, final: bool) -> float:
            return 0.2

    profile = Slow(lambda c, run: float(c.max_batch_size), proxy=lambda c: 0.0)
    outcome = search(profile, MEASURER, [a, b], budget_s=0.6, strategy="exhaustive")  # type: ignore[arg-type]
    assert profile.runs[a] == profile.runs[b] == 1  # a second round would end past the budget
    assert outcome.best is not None and outcome.best.config == b
    assert not any("median" in n for n in outcome.notes)


def test_an_unconfirmed_runner_up_never_beats_the_confirmed_finalists() -> None:
    a, b, c = (Config("v", t, 1, 1, 0.0) for t in (1, 2, 4))

    def script(cfg: Config, run: int) -> float:
        # a and b lead the first runs and then measure worse; c's one run sits between
        return {a: 100.0 if run == 0 else 40.0, b: 90.0 if run == 0 else 45.0, c: 80.0}[cfg]

    profile = Scripted(script, proxy=lambda cfg: 0.0)
    outcome = search(profile, MEASURER, [a, b, c], budget_s=60, strategy="exhaustive")  # type: ignore[arg-type]
    assert profile.runs[c] == 1
    assert outcome.best is not None and outcome.best.config == b
