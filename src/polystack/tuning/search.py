"""Search the configurations of a profile: exhaustively when the budget allows, else by successive halving.

Successive halving (eta = 3): every surviving configuration is measured at a short LoadGen
duration, the best third goes on to a run three times longer, and so on until the last rung runs
at the full duration. When even the first rung would not fit the budget, the configurations are
first ordered by their calibration estimate (a cheap direct timing) and only the most promising
enter, always including the most promising configuration of every candidate, so that no runtime
is dropped on an estimate alone. The winner is the best configuration of the last rung.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Literal

from polystack.tuning.measure import Config, Measurer, Trial
from polystack.tuning.profiles import Profile

Strategy = Literal["auto", "exhaustive", "halving"]
Progress = Callable[[str, int, int], None]  # (message, done, total)
ETA = 3


@dataclass
class SearchOutcome:
    strategy: str
    trials: list[Trial]
    best: Trial | None
    final_rung: list[Trial]
    notes: list[str] = field(default_factory=list)
    configs_total: int = 0
    configs_measured: int = 0


def _key(t: Trial) -> tuple[int, tuple[float, float]]:
    return (1, t.score) if t.score is not None else (0, (0.0, 0.0))


def _rungs(n: int, final_ms: int, min_ms: int) -> list[tuple[int, int]]:
    """[(configs, duration_ms)] for successive halving of n configurations."""
    sizes = [n]
    while sizes[-1] > 2:
        sizes.append(max(2, math.ceil(sizes[-1] / ETA)))
    durations = [max(min_ms, int(final_ms / ETA ** (len(sizes) - 1 - i))) for i in range(len(sizes))]
    return list(zip(sizes, durations, strict=True))


class _CostModel:
    """The profile's cost estimate, scaled by what runs have actually cost so far on this machine."""

    PRIOR = 1.5  # LoadGen set-up, model warm-up and a busy machine: runs cost more than their duration

    def __init__(self, profile: Profile) -> None:
        self.profile = profile
        self.estimated = 0.0
        self.actual = 0.0

    @property
    def ratio(self) -> float:
        return self.actual / self.estimated if self.estimated > 0 else self.PRIOR

    def observe(self, duration_ms: int, final: bool, seconds: float) -> None:
        self.estimated += self.profile.cost_s(duration_ms, final)
        self.actual += seconds

    def estimate(self, rungs: Sequence[tuple[int, int]]) -> float:
        last = len(rungs) - 1
        return self.ratio * sum(n * self.profile.cost_s(d, i == last) for i, (n, d) in enumerate(rungs))


def _diverse_order(configs: Sequence[Config], proxy: Callable[[Config], float]) -> list[Config]:
    """Most promising first, but the best of every candidate ahead of everyone's second best."""
    ranked = sorted(configs, key=proxy, reverse=True)
    leaders: dict[str, Config] = {}
    for c in ranked:
        leaders.setdefault(c.candidate, c)
    head = list(leaders.values())
    return head + [c for c in ranked if c not in head]


def search(
    profile: Profile,
    m: Measurer,
    configs: Sequence[Config],
    *,
    budget_s: float,
    duration_ms: int = 300,
    min_duration_ms: int = 60,
    strategy: Strategy = "auto",
    progress: Progress | None = None,
) -> SearchOutcome:
    started = time.perf_counter()
    configs = list(configs)
    notes: list[str] = []
    progress = progress or (lambda msg, done, total: None)
    if not configs:
        return SearchOutcome(strategy, [], None, [], ["nothing to measure"], 0, 0)

    learnt = _CostModel(profile)
    use = strategy
    if strategy == "auto":
        use = "exhaustive" if learnt.estimate([(len(configs), duration_ms)]) <= budget_s else "halving"
    by_load = lambda c: (c.candidate, c.threads or 0, c.instances)  # noqa: E731  (fewest reloads first)

    trials: list[Trial] = []
    hints: dict[Config, Trial] = {}
    last_rung: list[Trial] = []
    done = 0
    rungs_run = 0
    # survivors are kept best first: by calibration estimate before any run, then by measured score
    survivors = _diverse_order(configs, lambda c: profile.proxy(m, c))
    measured: set[Config] = set()
    while survivors:
        remaining = budget_s - (time.perf_counter() - started)
        if use == "exhaustive":
            plan = [(len(survivors), duration_ms)]
        else:
            plan = _rungs(len(survivors), duration_ms, min_duration_ms)
            while len(survivors) > 2 and learnt.estimate(plan) > remaining:
                survivors = survivors[: max(2, int(len(survivors) * 0.8))]
                plan = _rungs(len(survivors), duration_ms, min_duration_ms)
        size, dur = plan[0]
        final = len(plan) == 1
        if rungs_run == 0 and size < len(configs):
            notes.append(
                f"{len(configs) - size} of {len(configs)} configurations left out by their calibration estimate "
                f"to fit the {budget_s:g} s budget"
            )
        total = done + sum(k for k, _ in plan)
        this_rung: list[Trial] = []
        for c in sorted(survivors[:size], key=by_load):
            cand = m.candidates[c.candidate]
            progress(f"{cand.label}, {c.describe(profile.scenario)} ({dur} ms)", done, total)
            t0 = time.perf_counter()
            try:
                t = profile.measure(m, c, dur, rungs_run, final, hints.get(c))
            except Exception as e:  # a configuration that cannot run is recorded, never fatal
                t = Trial(c, rungs_run, dur, {}, None, error=f"{type(e).__name__}: {e}", reason="could not run")
            learnt.observe(dur, final, time.perf_counter() - t0)
            trials.append(t)
            this_rung.append(t)
            hints[c] = t
            measured.add(c)
            done += 1
            if use != "exhaustive" and not final and time.perf_counter() - started > budget_s * 1.5:
                notes.append(f"stopped early in rung {rungs_run}: the {budget_s:g} s budget ran out")
                break
        last_rung = this_rung
        rungs_run += 1
        if final or (notes and notes[-1].startswith("stopped early")):
            break
        survivors = [t.config for t in sorted(this_rung, key=_key, reverse=True)][: plan[1][0]]
    total = done
    progress("done", total, total)
    feasible = [t for t in last_rung if t.score is not None]
    best = max(feasible, key=_key) if feasible else None
    strategy_words = "exhaustive" if use == "exhaustive" else f"successive halving ({rungs_run} rungs)"
    return SearchOutcome(strategy_words, trials, best, last_rung, notes, len(configs), len(measured))
