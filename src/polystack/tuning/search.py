"""Search the configurations of a profile: exhaustively when the budget allows, else by successive halving.

Successive halving (eta = 3): every surviving configuration is measured at a short LoadGen
duration, the best third goes on to a run three times longer, and so on until the last rung runs
at the full duration. When even the first rung would not fit the budget, the configurations are
first ordered by their calibration estimate (a cheap direct timing) and only the most promising
enter, always including the most promising configuration of every candidate, so that no runtime
is dropped on an estimate alone.

Then the finalists are confirmed: the best two of the last rung, the leader's neighbours (the next
batch size or delay either side, same runtime and threads, measured already or not) and the best of
another set-up are measured again at the full duration, order flipped each round, with what is left
of the budget (``CONFIRM_SHARE`` of it is kept for this; finalists that do not fit are dropped, the
best two last): ``CONFIRM_ROUNDS`` rounds, and more, up to ``CONFIRM_MAX_ROUNDS``, while they end
within half the budget, so that a tune of cheap runs decides on more of them. The winner has the
best median score. One run decides badly on a shared machine: single Server runs here vary by up to 2x, and the benchmark saw halving
keep batch <= 16 over <= 32 on one lucky run (0.90x the exhaustive best).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Literal

from polystack.tuning.measure import Config, Measurer, Trial
from polystack.tuning.profiles import Profile

Strategy = Literal["auto", "exhaustive", "halving"]
Progress = Callable[[str, int, int], None]  # (message, done, total)
ETA = 3
CONFIRM_SHARE = 0.25  # of the budget kept back from the rungs for re-measuring the finalists
CONFIRM_ROUNDS = 2  # re-measurements of each finalist, budget permitting
# more rounds, up to this many, while they end within half the budget: a cheap decision gets more
# evidence (MLP realtime: two exhaustive tunes of the same 8 configurations, 3 runs a finalist, chose
# 1 and 2 threads; 2 threads then won 5 of 5 side-by-side runs, p99 0.14 vs 0.16 ms)
CONFIRM_MAX_ROUNDS = 6
NEIGHBOURS = 2  # neighbours of the leader that join the finalists


@dataclass
class SearchOutcome:
    strategy: str
    trials: list[Trial]
    best: Trial | None
    final_rung: list[Trial]
    notes: list[str] = field(default_factory=list)
    configs_total: int = 0
    configs_measured: int = 0
    # each finalist's median run (its standing) and how many runs it is the median of, where runs were repeated
    medians: list[tuple[Trial, int]] = field(default_factory=list)

    def standing(self) -> list[Trial]:
        """The trials, with a finalist's repeated runs standing as its median one (at the latest rung of them):
        what the choice was made on, so that what is said of a loser is not its luckiest run."""
        median = {t.config: t for t, _ in self.medians}
        top = {c: max(x.rung for x in self.trials if x.config == c) for c in median}
        return [
            t if t.config not in median else replace(t, rung=top[t.config])
            for t in self.trials
            if t.config not in median or t is median[t.config]
        ]


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


def _neighbours(leader: Config, configs: Sequence[Config]) -> list[Config]:
    """Configurations one step from the leader in batch size or delay, with its runtime, threads, instances."""
    same = [
        c
        for c in configs
        if (c.candidate, c.threads, c.instances) == (leader.candidate, leader.threads, leader.instances)
    ]
    sizes = sorted({c.max_batch_size for c in same})
    delays = sorted({c.max_delay_ms for c in same})
    i, k = sizes.index(leader.max_batch_size), delays.index(leader.max_delay_ms)
    wanted: list[tuple[int, float]] = []
    for j in (i + 1, i - 1):  # a larger batch or a longer delay first: short runs under-rate them
        if 0 <= j < len(sizes):
            wanted.append((sizes[j], leader.max_delay_ms))
    for j in (k + 1, k - 1):
        if 0 <= j < len(delays):
            wanted.append((leader.max_batch_size, delays[j]))
    by_shape = {(c.max_batch_size, c.max_delay_ms): c for c in same}
    return [by_shape[w] for w in wanted if w in by_shape]


def _setup(c: Config) -> tuple[str, int | None, int]:
    return (c.candidate, c.threads, c.instances)


def _finalists(ranked: Sequence[Config], configs: Sequence[Config]) -> list[Config]:
    """The best two, the leader's neighbours, and the best of another set-up (runtime, threads, instances).

    Neighbours join whether or not they have run: one run can under-rate the true best by more than
    the gap to the leader (the benchmark's exhaustive MLP Offline search ranked batch 64 below 32 on
    one run, 94k vs 113k items/s side by side). The other set-up guards against the two best being
    near-copies of one lucky set-up.
    """
    if not ranked:
        return []
    finalists = list(ranked[:2])
    finalists += [c for c in _neighbours(finalists[0], configs) if c not in finalists][:NEIGHBOURS]
    setups = {_setup(c) for c in finalists}
    other = next((c for c in ranked if _setup(c) not in setups), None)
    return finalists + ([other] if other is not None else [])


def _median_key(trials: Sequence[Trial]) -> tuple[int, tuple[float, float]]:
    """A finalist's standing: the median of its runs' scores (an infeasible run ranks lowest)."""
    return _key(_median_trial(trials))


def _median_trial(trials: Sequence[Trial]) -> Trial:
    """The run whose score is a finalist's standing (``_median_key``): the lower median, so that a configuration must
    win most of its runs."""
    return sorted(trials, key=_key)[(len(trials) - 1) // 2]


def _tied(winner: Config, pool: Sequence[Config], runs: Mapping[Config, Sequence[Trial]]) -> Config | None:
    """The runner-up, where its median run scored at least the winner's worst run: measured more than once each,
    they could not be told apart on this machine; None where the winner's runs all beat the runner-up's median."""
    ranked = sorted((c for c in pool if c != winner), key=lambda c: _median_key(runs[c]), reverse=True)
    if not ranked or len(runs[winner]) < 2 or len(runs[ranked[0]]) < 2:
        return None
    runner = ranked[0]
    if not _median_key(runs[runner])[0]:  # an infeasible runner-up ties with nothing
        return None
    return runner if _median_key(runs[runner]) >= min(map(_key, runs[winner])) else None


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
    elapsed = lambda: time.perf_counter() - started  # noqa: E731
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

    def run(c: Config, dur: int, final: bool, message: str, total: int) -> Trial:
        """Measure one configuration and record it (a configuration that cannot run is recorded, never fatal)."""
        nonlocal done
        progress(f"{message}{m.candidates[c.candidate].label}, {c.describe(profile.scenario)} ({dur} ms)", done, total)
        t0 = time.perf_counter()
        try:
            t = profile.measure(m, c, dur, rungs_run, final, hints.get(c))
        except Exception as e:
            t = Trial(c, rungs_run, dur, {}, None, error=f"{type(e).__name__}: {e}", reason="could not run")
        learnt.observe(dur, final, time.perf_counter() - t0)
        trials.append(t)
        hints[c] = t
        measured.add(c)
        done += 1
        return t

    while survivors:
        remaining = budget_s - elapsed()
        if use == "exhaustive":
            plan = [(len(survivors), duration_ms)]
        else:
            remaining -= budget_s * CONFIRM_SHARE
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
            this_rung.append(run(c, dur, final, "", total))
            if use != "exhaustive" and not final and elapsed() > budget_s * 1.5:
                notes.append(f"stopped early in rung {rungs_run}: the {budget_s:g} s budget ran out")
                break
        last_rung = this_rung
        rungs_run += 1
        if final or (notes and notes[-1].startswith("stopped early")):
            break
        survivors = [t.config for t in sorted(this_rung, key=_key, reverse=True)][: plan[1][0]]
    final_ms = last_rung[0].duration_ms if last_rung else duration_ms
    runs: dict[Config, list[Trial]] = {}
    for t in last_rung:
        runs.setdefault(t.config, []).append(t)
    ranked = sorted(runs, key=lambda c: _median_key(runs[c]), reverse=True)
    finalists = _finalists([c for c in ranked if _median_key(runs[c])[0]], configs)

    def fits(n: int, share: float = 1.0) -> bool:
        """Whether a round of ``n`` finalists would end within ``share`` of the budget."""
        return elapsed() + learnt.estimate([(n, final_ms)]) <= budget_s * share

    # what does not fit the budget goes, the other set-up first, then the neighbours (never the best two)
    while len(finalists) > 2 and not fits(len(finalists)):
        finalists.pop()
    rounds = 0

    def another_round() -> bool:
        n = len(finalists)
        if n < 2 or rounds >= CONFIRM_MAX_ROUNDS or not fits(n):
            return False
        return rounds < CONFIRM_ROUNDS or fits(n, share=0.5)

    while another_round():
        fresh = [c for c in finalists if c not in runs]
        order = finalists if rounds % 2 == 0 else finalists[::-1]
        for c in sorted(fresh, key=by_load) + [c for c in order if c not in fresh]:
            runs.setdefault(c, []).append(run(c, final_ms, True, "confirming ", done + 1))
        rounds += 1
    if rounds:
        counts = sorted({len(runs[c]) for c in finalists})
        notes.append(
            f"{len(finalists)} finalists measured {'-'.join(map(str, counts))} times at {final_ms} ms, "
            "the winner chosen by its median"
        )
    total = done
    progress("done", total, total)
    best: Trial | None = None
    # after confirmation only the finalists compete: the others lost to them run for run, and a
    # single unconfirmed run must not beat a median that extra runs have pulled down
    pool = [c for c in finalists if c in runs] if rounds else list(runs)
    medians = [(_median_trial(runs[c]), len(runs[c])) for c in pool if len(runs[c]) > 1] if rounds else []
    if pool:
        winner = max(pool, key=lambda c: _median_key(runs[c]))
        mid = _median_trial(runs[winner])  # the very run the medians' table marks (not another of equal score)
        best = mid if mid.score is not None else None
        tie = _tied(winner, pool, runs)
        if tie is not None and best is not None:
            notes.append(
                f"a tie within this machine's noise: {m.candidates[tie.candidate].label}, "
                f"{tie.describe(profile.scenario)} scored in its median run as well as the winner in one of its; "
                "another tune may choose either (a longer --duration-ms or --budget-s measures them more closely)"
            )
    strategy_words = "exhaustive" if use == "exhaustive" else f"successive halving ({rungs_run} rungs)"
    return SearchOutcome(strategy_words, trials, best, last_rung, notes, len(configs), len(measured), medians)
