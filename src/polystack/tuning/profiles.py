"""Deployment profiles: which scenario measures a configuration, what is better, what is allowed.

- ``realtime``: SingleStream, lowest p99 latency (batch 1, one instance; threads searched).
- ``server``: Server scenario with dynamic batching, highest QPS whose p99 <= SLO.
- ``batch``: Offline, highest throughput (batch size, threads and instances searched).
- ``edge``: SingleStream, least memory plus artifact size among configurations with p99 <= SLO.

Scores are tuples, higher better (a tie on the first element falls to the second); ``None`` marks
a configuration that does not qualify, with its reason.
"""

from __future__ import annotations

import abc
import math
import os
import statistics
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import ClassVar

from polystack.errors import InvalidRequest
from polystack.tuning import scenarios
from polystack.tuning.measure import CandidateFacts, Config, Measurer, Point, Trial

DEFAULT_SLO_MS = {"server": 50.0, "edge": 100.0}
# In-process requests through the DynamicBatcher cost tens of microseconds each in Python: the
# Server search starts below this ceiling however fast the model computes.
HARNESS_QPS = 40_000.0
# A p99 from a run shorter than this rests on too few requests to rank Server configurations.
SERVER_MIN_RUN_MS = 150
# ... and a Server run goes on until it holds this many queries at its target rate and lasts this many
# SLOs (up to SERVER_MAX_RUN_MS). At 150-300 ms a MiniLM run at 60 QPS held 9-18 queries, its p99 was
# its slowest one, and the completed rate, which runs to the last completion, lost the last query's
# own 40 ms latency: a stable run "fell behind". A tune's rungs then ranked MiniLM's configurations at
# random (34-70 QPS for set-ups that 600-query runs told apart at once: 1 thread x 2 instances kept
# p99 <= 200 ms at 100 QPS where 2 threads missed at 80). Over 4 SLOs and 100 queries, the last
# query's own latency (tens of ms for MiniLM) costs the completed rate a few percent, while a 10%
# overload leaves a backlog that fails the run.
SERVER_MIN_QUERIES = 100
SERVER_MIN_SLOS = 4
SERVER_MAX_RUN_MS = 3000
# SingleStream runs last until they hold this many queries (within the run's maximum duration): a
# p99 is then the 2nd-3rd slowest, not the slowest. At 300 ms a 10 ms model ran 30 queries, so one
# hiccup decided, and tune chose ONNX Runtime at 22 ms p99 over OpenVINO at 15 ms for MiniLM.
SS_MIN_QUERIES = 200
# ... and may run this long to get them (a 40 ms model needs 8 s): capped at 3 s, a tune of MiniLM
# ended its 1-thread runs at 80-160 queries, where a p99 is the slowest query or next to it
SS_MAX_RUN_MS = 10_000
# An Offline run holds a whole number of rounds, a round being one full batch on every instance, and at
# least this many. At 300 ms a MiniLM run (~80 samples/s) held 15-30 samples: a batch of 32 ran once,
# part-filled, on one of two instances, and single runs ranked batch 4 over 32, which 1 s runs then
# measured 25% faster (92 vs 74 samples/s).
OFFLINE_MIN_ROUNDS = 3


@dataclass(frozen=True)
class Space:
    """The knobs a profile searches (before calibration prunes what cannot fit)."""

    threads: Sequence[int | None]
    batch_sizes: Sequence[int] = (1,)
    delays_ms: Sequence[float] = (0.0,)
    instances: bool = False  # search instances with threads x instances <= cores


def thread_choices(cores: int | None = None) -> list[int]:
    cores = cores or os.cpu_count() or 1
    out = [1]
    while out[-1] * 2 <= cores:
        out.append(out[-1] * 2)
    if out[-1] != cores:
        out.append(cores)
    return out


def powers_of_two(limit: int) -> list[int]:
    out = [1]
    while out[-1] * 2 <= limit:
        out.append(out[-1] * 2)
    return out


class Profile(abc.ABC):
    name: ClassVar[str]
    scenario: ClassVar[str]
    summary: ClassVar[str]
    needs_slo: ClassVar[bool] = False

    def __init__(self, slo_ms: float | None = None) -> None:
        self.slo_ms = slo_ms if slo_ms is not None else DEFAULT_SLO_MS.get(self.name)
        if self.slo_ms is not None and not (math.isfinite(self.slo_ms) and self.slo_ms > 0):
            raise InvalidRequest(f"--slo-ms must be a positive number of milliseconds, got {self.slo_ms}")
        # each configuration's least run length, where its queries or batches set one (filled by
        # ``configs``; the search's cost estimates start from it)
        self._run_ms: list[float] = []

    # -- the space -----------------------------------------------------------------------------
    def configs(
        self,
        m: Measurer,
        candidate: str,
        threads: Sequence[int | None],
        cores: int,
        max_batch_size: int,
    ) -> list[Config]:
        return [Config(candidate, t) for t in threads]

    def proxy(self, m: Measurer, c: Config) -> float:
        """A cheap estimate of the score's first element from calibration (orders the search)."""
        return -m.calibration(c.candidate, c.threads).t(1)

    # -- measuring -----------------------------------------------------------------------------
    @abc.abstractmethod
    def measure(self, m: Measurer, c: Config, duration_ms: int, rung: int, final: bool, hint: Trial | None) -> Trial:
        """Measure one configuration at a fidelity; ``hint`` is its result at the previous rung."""

    def cost_s(self, duration_ms: int, final: bool) -> float:
        return duration_ms / 1000 + 0.06

    # -- words ---------------------------------------------------------------------------------
    @abc.abstractmethod
    def headline(self, t: Trial) -> str: ...

    @abc.abstractmethod
    def compare(self, win: Trial, other: Trial, other_label: str) -> str: ...

    def plot_axes(self) -> tuple[str, str]:
        return "throughput (samples/s)", "p99 latency (ms)"


def _ss(m: Measurer, c: Config, duration_ms: int, rung: int) -> tuple[Trial, scenarios.ScenarioResult]:
    model = m.model(c.candidate, c.threads)
    t1 = m.calibration(c.candidate, c.threads).t(1)
    run = m.run(duration_ms)
    enough_ms = int(SS_MIN_QUERIES * t1 * 1000 * 1.2)
    run = replace(
        run,
        min_query_count=SS_MIN_QUERIES,
        max_duration_ms=max(run.max_duration_ms, min(SS_MAX_RUN_MS, enough_ms)),
    )
    r = scenarios.single_stream(model, m.pool, run, expected_latency_s=max(1e-5, t1 * 0.5))
    metrics = {
        "p50_ms": r.p50_ms,
        "p90_ms": r.p90_ms,
        "p99_ms": r.p99_ms,
        "mean_ms": r.mean_ms,
        "throughput": r.throughput,
        "queries": r.queries,
        "early_stop_p90_ms": r.early_stop_p90_ms,
        "loadgen_valid": r.valid,
    }
    trial = Trial(c, rung, duration_ms, metrics, None, [Point(r.throughput, r.p99_ms)], r.error)
    return trial, r


class Realtime(Profile):
    name = "realtime"
    scenario = "SingleStream"
    summary = "lowest p99 latency, one request at a time (SingleStream)"

    def measure(self, m: Measurer, c: Config, duration_ms: int, rung: int, final: bool, hint: Trial | None) -> Trial:
        trial, r = _ss(m, c, duration_ms, rung)
        trial.score = None if r.errors else (-r.p99_ms, -r.p50_ms)
        trial.reason = "inference failed" if r.errors else None
        return trial

    def headline(self, t: Trial) -> str:
        return f"p99 {t.metrics['p99_ms']:.3g} ms (p50 {t.metrics['p50_ms']:.3g} ms)"

    def compare(self, win: Trial, other: Trial, other_label: str) -> str:
        ratio = other.metrics["p99_ms"] / max(win.metrics["p99_ms"], 1e-9)
        return f"p99 {ratio:.1f}x lower than {other_label}" if ratio >= 1 else f"p99 {1 / ratio:.2f}x of {other_label}"


class Edge(Profile):
    name = "edge"
    scenario = "SingleStream"
    summary = "least memory plus artifact size with p99 within the SLO (SingleStream)"
    needs_slo = True

    def __init__(self, slo_ms: float | None = None, facts: dict[str, CandidateFacts] | None = None) -> None:
        super().__init__(slo_ms)
        self.facts = facts or {}

    def footprint(self, candidate: str) -> int:
        f = self.facts.get(candidate)
        return (f.memory_bytes or 0) + f.size_bytes if f else 0

    def proxy(self, m: Measurer, c: Config) -> float:
        return -float(self.footprint(c.candidate)) - m.calibration(c.candidate, c.threads).t(1)

    def measure(self, m: Measurer, c: Config, duration_ms: int, rung: int, final: bool, hint: Trial | None) -> Trial:
        trial, r = _ss(m, c, duration_ms, rung)
        fp = self.footprint(c.candidate)
        trial.metrics["footprint_bytes"] = fp
        assert self.slo_ms is not None
        if r.errors:
            trial.reason = "inference failed"
        elif r.p99_ms > self.slo_ms:
            trial.reason = f"p99 {r.p99_ms:.3g} ms > SLO {self.slo_ms:g} ms"
        else:
            trial.score = (-float(fp), -r.p99_ms)
        return trial

    def headline(self, t: Trial) -> str:
        return f"{t.metrics['footprint_bytes'] / 1e6:.1f} MB memory+artifact, p99 {t.metrics['p99_ms']:.3g} ms"

    def compare(self, win: Trial, other: Trial, other_label: str) -> str:
        ratio = other.metrics["footprint_bytes"] / max(win.metrics["footprint_bytes"], 1)
        return (
            f"{ratio:.1f}x smaller than {other_label}" if ratio >= 1 else f"{1 / ratio:.2f}x the size of {other_label}"
        )


class Batch(Profile):
    name = "batch"
    scenario = "Offline"
    summary = "highest throughput over a whole dataset (Offline)"

    def configs(
        self, m: Measurer, candidate: str, threads: Sequence[int | None], cores: int, max_batch_size: int
    ) -> list[Config]:
        sizes = powers_of_two(max_batch_size) if m.signature.batched else [1]
        out = []
        for t in threads:
            cal = m.calibrate(candidate, t, sizes)
            fits = [b for b in sizes if b in cal.seconds]
            for inst in _instance_choices(t, cores):
                new = [Config(candidate, t, inst, b) for b in fits]
                out += new
                self._run_ms += [
                    1000 * OFFLINE_MIN_ROUNDS * c.instances * c.max_batch_size / self.proxy(m, c) for c in new
                ]
        return out

    @staticmethod
    def samples(c: Config, expected_qps: float, duration_ms: int) -> int:
        """How many samples a run of ``c`` holds: ``duration_ms`` at ``expected_qps`` (LoadGen's 1.1x margin
        included) and ``OFFLINE_MIN_ROUNDS`` rounds at least, rounded up to whole rounds."""
        per_round = c.instances * c.max_batch_size
        wanted = max(math.ceil(1.1 * expected_qps * duration_ms / 1000), OFFLINE_MIN_ROUNDS * per_round)
        return math.ceil(wanted / per_round) * per_round

    def cost_s(self, duration_ms: int, final: bool) -> float:
        if not self._run_ms:
            return super().cost_s(duration_ms, final)
        return statistics.fmean(max(duration_ms, f) for f in self._run_ms) / 1000 + 0.06

    def proxy(self, m: Measurer, c: Config) -> float:
        t = m.calibration(c.candidate, c.threads).t(c.max_batch_size)
        return c.instances * c.max_batch_size / max(t, 1e-9) / (1.2 if c.instances > 1 else 1.0)

    def measure(self, m: Measurer, c: Config, duration_ms: int, rung: int, final: bool, hint: Trial | None) -> Trial:
        model = m.model(c.candidate, c.threads, c.instances)
        expected = hint.metrics["throughput"] if hint and hint.metrics.get("throughput") else self.proxy(m, c) * 0.5
        r = scenarios.offline(
            model,
            m.pool,
            c.max_batch_size,
            m.run(duration_ms),
            expected_qps=expected,
            instances=c.instances,
            samples=self.samples(c, expected, duration_ms),
        )
        metrics = {
            "throughput": r.throughput,
            "batch_p99_ms": r.batch_p99_ms,
            "mean_batch_size": r.mean_batch_size,
            "samples": r.samples,
            "loadgen_valid": r.valid,
        }
        lat = r.batch_p99_ms if r.batch_p99_ms is not None else r.mean_ms
        trial = Trial(c, rung, duration_ms, metrics, None, [Point(r.throughput, lat)], r.error)
        trial.score = None if r.errors or not r.throughput else (r.throughput, -(r.batch_p99_ms or 0.0))
        trial.reason = "inference failed" if r.errors else None
        return trial

    def headline(self, t: Trial) -> str:
        return f"{t.metrics['throughput']:,.0f} samples/s"

    def compare(self, win: Trial, other: Trial, other_label: str) -> str:
        ratio = win.metrics["throughput"] / max(other.metrics["throughput"], 1e-9)
        return f"{ratio:.1f}x the throughput of {other_label}"

    def plot_axes(self) -> tuple[str, str]:
        return "throughput (samples/s)", "p99 compute time of one batch (ms)"


class Server(Profile):
    name = "server"
    scenario = "Server"
    summary = "highest QPS with p99 within the SLO (Server, Poisson arrivals, dynamic batching)"
    needs_slo = True
    delays_ms: ClassVar[tuple[float, ...]] = (0.0, 1.0, 4.0)
    max_batch: ClassVar[int] = 32

    def configs(
        self, m: Measurer, candidate: str, threads: Sequence[int | None], cores: int, max_batch_size: int
    ) -> list[Config]:
        assert self.slo_ms is not None
        sizes = powers_of_two(min(max_batch_size, self.max_batch)) if m.signature.batched else [1]
        out = []
        for t in threads:
            cal = m.calibrate(candidate, t, sizes)
            # a batch whose compute alone takes more than half the SLO cannot meet it under load
            fits = [b for b in sizes if b in cal.seconds and (b == 1 or cal.seconds[b] * 1000 <= self.slo_ms / 2)]
            delays = self.useful_delays(cal.t(1))
            for inst in _instance_choices(t, cores):
                for b in fits:
                    new = [Config(candidate, t, inst, b, d) for d in (delays if b > 1 else [0.0])]
                    out += new
                    self._run_ms += [self.run_ms(0.8 * self.capacity(m, new[0]))] * len(new)
        return out

    def useful_delays(self, t1_s: float) -> list[float]:
        """The queueing delays worth measuring for a model whose batch-1 call takes ``t1_s``.

        A delay shorter than half a batch-1 call changes nothing measurable: under load, requests
        already queue behind the running batch and fill the next one, and a tune that measured them
        spent its budget on configurations that differed only by noise (MiniLM: 12-20 ms a call, with
        1 and 4 ms delays tripling the Server space). Delays beyond a quarter of the SLO cost too much
        latency to try.
        """
        assert self.slo_ms is not None
        return [d for d in self.delays_ms if d == 0 or (d <= self.slo_ms / 4 and d / 1000 >= t1_s / 2)]

    def run_ms(self, qps: float, duration_ms: int = SERVER_MIN_RUN_MS) -> int:
        """How long a run at ``qps`` lasts: ``duration_ms``, ``SERVER_MIN_SLOS`` SLOs and ``SERVER_MIN_QUERIES``
        queries at least, ``SERVER_MAX_RUN_MS`` at most (unless ``duration_ms`` asks for more)."""
        assert self.slo_ms is not None
        enough = max(SERVER_MIN_SLOS * self.slo_ms, 1000 * SERVER_MIN_QUERIES / max(min(qps, HARNESS_QPS), 1e-3))
        return int(max(duration_ms, SERVER_MIN_RUN_MS, min(SERVER_MAX_RUN_MS, enough)))

    def capacity(self, m: Measurer, c: Config) -> float:
        t = m.calibration(c.candidate, c.threads).t(c.max_batch_size)
        return c.instances * c.max_batch_size / max(t, 1e-9)

    def proxy(self, m: Measurer, c: Config) -> float:
        # larger batches only help once there is a queue; a delay only costs latency: order by
        # capacity, then prefer short delays
        return self.capacity(m, c) * (1.0 - c.max_delay_ms / (10 * (self.slo_ms or 1.0)))

    def steps(self, final: bool, hint: Trial | None) -> int:
        return 5 if hint is None else (4 if final else 3)

    def cost_s(self, duration_ms: int, final: bool) -> float:
        # runs last long enough for their queries and SLOs: start from the configurations' median length
        floor = statistics.median(self._run_ms) if self._run_ms else SERVER_MIN_RUN_MS
        return (max(duration_ms, floor) / 1000 + 0.08) * (4 if final else 3.5)

    def run_at(self, m: Measurer, c: Config, qps: float, duration_ms: int) -> scenarios.ScenarioResult:
        """One Server run of ``c`` at ``qps`` (Poisson arrivals), as long as ``run_ms`` says."""
        assert self.slo_ms is not None
        length = self.run_ms(qps, duration_ms)
        run = replace(m.run(length), min_query_count=SERVER_MIN_QUERIES, max_duration_ms=max(length, SERVER_MAX_RUN_MS))
        model = m.model(c.candidate, c.threads, c.instances)
        return scenarios.server(
            model, m.pool, qps, self.slo_ms, c.max_batch_size, c.max_delay_ms, run, instances=c.instances
        )

    def measure(self, m: Measurer, c: Config, duration_ms: int, rung: int, final: bool, hint: Trial | None) -> Trial:
        assert self.slo_ms is not None
        slo = self.slo_ms

        def run_at(q: float) -> scenarios.ScenarioResult:
            return self.run_at(m, c, q, duration_ms)

        prev = hint.metrics.get("qps") if hint else None
        if prev:
            found = scenarios.find_max_qps(run_at, slo, prev * 1.2, self.steps(final, hint), start_qps=prev)
        else:
            upper = min(self.capacity(m, c), HARNESS_QPS)
            found = scenarios.find_max_qps(run_at, slo, upper, self.steps(final, hint))
        points = [Point(r.target_qps or 0.0, r.p99_ms, scenarios.meets_slo(r, slo)) for r in found.tries]
        best = found.best
        error = next((r.error for r in found.tries if r.error), None)
        metrics = {
            "qps": found.qps,
            "throughput": best.throughput if best else None,
            "p50_ms": best.p50_ms if best else None,
            "p99_ms": best.p99_ms if best else None,
            "mean_batch_size": best.mean_batch_size if best else None,
            "early_stopping_met": best.early_stopping_met if best else None,
            "queries": best.queries if best else None,
            "qps_tries": len(found.tries),
        }
        trial = Trial(c, rung, duration_ms, metrics, None, points, error)
        if best is None:
            low = min(found.tries, key=lambda r: r.target_qps or 0.0)
            trial.reason = error or f"p99 {low.p99_ms:.3g} ms > SLO {slo:g} ms even at {low.target_qps or 0:.0f} QPS"
        else:
            trial.score = (found.qps, -best.p99_ms)
        return trial

    def headline(self, t: Trial) -> str:
        return f"{t.metrics['qps']:,.0f} QPS at p99 {t.metrics['p99_ms']:.3g} ms (SLO {self.slo_ms:g} ms)"

    def compare(self, win: Trial, other: Trial, other_label: str) -> str:
        ratio = win.metrics["qps"] / max(other.metrics["qps"], 1e-9)
        return f"{ratio:.1f}x the QPS of {other_label}"

    def plot_axes(self) -> tuple[str, str]:
        return "offered load (QPS, Poisson)", "p99 latency (ms)"


def _instance_choices(threads: int | None, cores: int) -> list[int]:
    if threads is None:
        return [1]
    out = [1]
    while threads * out[-1] * 2 <= cores:
        out.append(out[-1] * 2)
    return out


PROFILES: dict[str, type[Profile]] = {p.name: p for p in (Realtime, Server, Batch, Edge)}


def make(name: str, slo_ms: float | None = None) -> Profile:
    try:
        return PROFILES[name](slo_ms)
    except KeyError:
        raise InvalidRequest(f"unknown profile {name!r}; choose one of {', '.join(PROFILES)}") from None
