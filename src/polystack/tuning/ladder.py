"""A paired QPS ladder: Server configurations run at the same offered loads, interleaved, and compared by pass rate.

Why: on a small shared machine one max-QPS search of one configuration is a noisy figure. On this
2-core VM, repeated searches of a single CNN configuration found 230 to 545 QPS, so two independent
searches cannot tell 5% apart, and a tuned plan could look 25% worse than the oracle's or 50% better
from one run to the next. A ladder runs every configuration at each of the same rates, alternating
which goes first, several times: the machine's stalls then hit both sides alike. Each run passes or
fails (p99 within the SLO, no errors, the arrivals kept up with). A configuration's capacity is the
rate at which its pass rate falls through one half, read off a non-increasing fit of its pass rates
(pool-adjacent-violators, weighted by runs: a higher rate should not pass more often, and a
run-to-run flip should not make two crossings). A bootstrap over each rung's runs gives an interval
of the ratio of two capacities. The fit is written here: scikit-learn's IsotonicRegression does the
same, but scikit-learn is an optional extra (``trees``) and tuning runs without it; the
pool-adjacent-violators loop is a dozen lines.

Capacities outside the ladder are censored: below its lowest rate or above its highest, the
capacity is reported as that rate and flagged, and ``run`` first widens the ladder (up to
``max_extra`` rungs each way) so that both configurations cross inside it where they can.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

# one run at one rate: True when it met the SLO; the p99 it saw (ms) for the record
RunAt = Callable[[str, float], tuple[bool, float]]


def rates_around(center: float, low: float = 0.5, high: float = 1.4, step: float = 1.15) -> list[float]:
    """Geometric rates from ``low x center`` up to ``high x center`` in steps of ``step``."""
    if center <= 0 or step <= 1 or low <= 0 or high < low:
        raise ValueError("rates_around needs center > 0, step > 1 and 0 < low <= high")
    n = math.floor(math.log(high / low) / math.log(step) + 1e-9) + 1
    return [round(center * low * step**i, 3) for i in range(n)]


def monotone_fit(rates: Sequence[float], weights: Sequence[float]) -> list[float]:
    """The non-increasing sequence nearest to ``rates`` in weighted least squares (pool adjacent violators)."""
    blocks: list[list[float]] = []  # [value, weight, count]
    for r, w in zip(rates, weights, strict=True):
        blocks.append([r, w, 1])
        while len(blocks) > 1 and blocks[-2][0] < blocks[-1][0]:
            v2, w2, n2 = blocks.pop()
            v1, w1, n1 = blocks.pop()
            total = w1 + w2
            blocks.append([(v1 * w1 + v2 * w2) / total if total else (v1 + v2) / 2, total, n1 + n2])
    out: list[float] = []
    for v, _, n in blocks:
        out += [v] * int(n)
    return out


def _fit(passes: Sequence[Sequence[bool]]) -> list[float]:
    return monotone_fit([sum(p) / len(p) if p else 0.0 for p in passes], [len(p) for p in passes])


def _last_passing(fit: Sequence[float]) -> int | None:
    if fit[0] < 0.5 or fit[-1] >= 0.5:
        return None
    return max(k for k in range(len(fit)) if fit[k] >= 0.5)


def bracket(passes: Sequence[Sequence[bool]]) -> int | None:
    """The rung i whose fitted pass rate is >= one half while rung i + 1's is below (None: no crossing inside)."""
    return _last_passing(_fit(passes))


def crossing(rates: Sequence[float], passes: Sequence[Sequence[bool]]) -> tuple[float, str]:
    """The rate where the fitted pass rate falls through one half, interpolated in log-rate.

    Returns (rate, where): where is "inside", "below" (it fails at half the runs or more even at the
    lowest rate: the capacity is at most that) or "above" (it passes at the highest: at least that).
    """
    fit = _fit(passes)
    i = _last_passing(fit)
    if i is None:
        return (rates[0], "below") if fit[0] < 0.5 else (rates[-1], "above")
    f0, f1 = fit[i], fit[i + 1]
    frac = (f0 - 0.5) / (f0 - f1)
    lr = math.log(rates[i]) + frac * (math.log(rates[i + 1]) - math.log(rates[i]))
    return math.exp(lr), "inside"


@dataclass
class Ladder:
    """Outcomes per configuration key, per rung (``rates`` ascending), per run."""

    rates: list[float]
    passes: dict[str, list[list[bool]]] = field(default_factory=dict)
    p99_ms: dict[str, list[list[float]]] = field(default_factory=dict)

    def capacity(self, key: str) -> tuple[float, str]:
        return crossing(self.rates, self.passes[key])

    def ratio(self, a: str, b: str) -> float:
        return self.capacity(a)[0] / self.capacity(b)[0]

    def interval(self, a: str, b: str, resamples: int = 2000, seed: int = 0, level: float = 0.9) -> list[float]:
        """A bootstrap interval of capacity(a) / capacity(b): each rung's runs resampled, each side alone."""
        rng = np.random.default_rng(seed)
        out = np.empty(resamples)
        for j in range(resamples):
            caps = []
            for key in (a, b):
                drawn = [[bool(x) for x in rng.choice(p, len(p))] if p else [] for p in self.passes[key]]
                caps.append(crossing(self.rates, drawn)[0])
            out[j] = caps[0] / caps[1]
        tail = (1 - level) / 2 * 100
        return [round(float(np.percentile(out, tail)), 3), round(float(np.percentile(out, 100 - tail)), 3)]

    def to_dict(self, keys: Sequence[str] | None = None) -> dict[str, Any]:
        keys = list(keys or self.passes)
        doc: dict[str, Any] = {"rates": self.rates}
        for k in keys:
            cap, where = self.capacity(k)
            doc[k] = {
                "capacity_qps": round(cap, 3),
                "capacity_where": where,
                "passes": [sum(p) for p in self.passes[k]],
                "runs": [len(p) for p in self.passes[k]],
                "median_p99_ms": [round(float(np.median(p)), 3) if p else None for p in self.p99_ms[k]],
            }
        return doc


def run(
    run_at: RunAt,
    keys: Sequence[str],
    rates: Sequence[float],
    runs: int = 4,
    step: float = 1.15,
    max_extra: int = 3,
    refine: int = 2,
    progress: Callable[[str], None] | None = None,
) -> Ladder:
    """Run every key ``runs`` times at each rate, alternating the order; widen the ladder while a key's
    pass rate has not crossed one half inside it (``max_extra`` rungs each way at most); then ``refine``
    times, add a rung half-way (in log-rate) inside each rung pair where a key crosses, so that two
    configurations crossing between the same two coarse rates are still told apart."""
    if runs < 1 or not keys or not rates:
        raise ValueError("a ladder needs at least one key, one rate and one run per rung")
    ladder = Ladder([], {k: [] for k in keys}, {k: [] for k in keys})

    def add(rate: float) -> None:
        ok: dict[str, list[bool]] = {k: [] for k in keys}
        p99: dict[str, list[float]] = {k: [] for k in keys}
        for i in range(runs):
            for k in keys if i % 2 == 0 else list(reversed(keys)):
                passed, p = run_at(k, rate)
                ok[k].append(passed)
                p99[k].append(p)
        if progress:
            progress(f"{rate:,.1f} QPS: " + ", ".join(f"{k} {sum(v)}/{len(v)}" for k, v in ok.items()))
        at = bisect.bisect(ladder.rates, rate)
        ladder.rates.insert(at, rate)
        for k in keys:
            ladder.passes[k].insert(at, ok[k])
            ladder.p99_ms[k].insert(at, p99[k])

    for rate in sorted(rates):
        add(rate)
    for _ in range(max_extra):
        wheres = {ladder.capacity(k)[1] for k in keys}
        if wheres == {"inside"}:
            break
        if "above" in wheres:
            add(round(ladder.rates[-1] * step, 3))
        if "below" in wheres:
            add(round(ladder.rates[0] / step, 3))
    for _ in range(refine):
        pairs = {i for i in (bracket(ladder.passes[k]) for k in keys) if i is not None}
        for i in sorted(pairs, reverse=True):  # from the top: inserting leaves lower indices where they were
            add(round(math.sqrt(ladder.rates[i] * ladder.rates[i + 1]), 3))
    return ladder
