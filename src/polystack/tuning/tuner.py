"""Tune one model for one profile: gather candidates, measure, search, explain, store the plan."""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from polystack.errors import InvalidRequest, PolystackError
from polystack.store import ModelRecord, PlanRecord, Store
from polystack.tuning import candidates as cands
from polystack.tuning import memory, profiles
from polystack.tuning.inputs import InputPool, pool_for
from polystack.tuning.measure import CandidateFacts, Config, Measurer, Trial
from polystack.tuning.plan import PlanSettings, machine
from polystack.tuning.search import Progress, SearchOutcome, Strategy, search

FRAMEWORK_DEFAULTS = ("torch", "xgboost", "lightgbm", "sklearn")  # what users run before polystack


@dataclass(frozen=True)
class TuneOptions:
    slo_ms: float | None = None  # server and edge (defaults in profiles.DEFAULT_SLO_MS)
    budget_s: float = 120.0  # for the whole tuning of one model and profile
    duration_ms: int = 300  # LoadGen min duration of a full-fidelity run
    min_duration_ms: int = 60  # the shortest run successive halving uses
    strategy: Strategy = "auto"
    threads: Sequence[int] | None = None  # default: 1, 2, 4, ... up to the cores
    max_batch_size: int = 64
    memory: bool = True  # measure each candidate's peak memory in a subprocess
    store_plan: bool = True
    max_call_s: float = 0.5  # batch sizes whose single call exceeds this are not tried
    seq_len: int = 128  # synthetic inputs: length of sequence-like dynamic dimensions
    only: Sequence[str] | None = None  # restrict to these candidate ids (benchmarks)
    pool: InputPool | None = None  # inputs to measure with (default: the model's samples or synthetic)

    def __post_init__(self) -> None:
        if not (math.isfinite(self.budget_s) and self.budget_s > 0):  # NaN ran, an endless budget stored Infinity
            raise InvalidRequest(f"--budget-s must be a positive number of seconds, got {self.budget_s}")
        if self.duration_ms < 10:
            raise InvalidRequest(f"--duration-ms must be at least 10, got {self.duration_ms}")
        if self.duration_ms > self.budget_s * 1000:  # the search would run one full run at least, past its budget
            raise InvalidRequest(
                f"--duration-ms {self.duration_ms} is longer than --budget-s {self.budget_s:g} s: one full run "
                "would outlast the whole search; give a shorter --duration-ms or a larger --budget-s"
            )


@dataclass
class TuneResult:
    model: ModelRecord
    profile: profiles.Profile
    outcome: SearchOutcome
    candidates: list[cands.Candidate]
    rejected: list[cands.Rejected]
    facts: dict[str, CandidateFacts]
    chosen: Trial | None
    settings: PlanSettings | None
    explanation: str
    notes: list[str]
    fingerprint: str
    machine: dict[str, Any]
    elapsed_s: float
    plan: PlanRecord | None = None
    options: TuneOptions = field(default_factory=TuneOptions)

    def candidate(self, cid: str) -> cands.Candidate | None:
        return next((c for c in self.candidates if c.id == cid), None)

    def measurements(self) -> list[dict[str, Any]]:
        rows: list[dict[str, Any]] = []
        median_of = {id(t): n for t, n in self.outcome.medians}
        for t in self.outcome.trials:
            row = t.to_dict(self.candidate(t.config.candidate), self.profile.scenario)
            if id(t) in median_of:  # the run that stands for its configuration: the median of its repeated runs
                row["median_of"] = median_of[id(t)]
            rows.append({"kind": "trial", "chosen": t is self.chosen, **row})
        for c in self.candidates:
            rows.append({"kind": "variant", "variant_id": c.id, "label": c.label, **self.facts[c.id].to_dict()})
        for r in self.rejected:
            rows.append({"kind": "rejected", **r.to_dict()})
        return rows

    def to_dict(self) -> dict[str, Any]:
        return {
            "model": f"{self.model.name}:{self.model.version}",
            "profile": self.profile.name,
            "slo_ms": self.profile.slo_ms,
            "fingerprint": self.fingerprint,
            "chosen": None if self.chosen is None else self.chosen.config.candidate,
            "settings": self.settings.to_dict() if self.settings else None,
            "explanation": self.explanation,
            "strategy": self.outcome.strategy,
            "configs_total": self.outcome.configs_total,
            "configs_measured": self.outcome.configs_measured,
            "elapsed_s": round(self.elapsed_s, 2),
            "notes": self.notes,
            "measurements": self.measurements(),
        }


def _best_per_candidate(trials: Sequence[Trial]) -> dict[str, Trial]:
    """Each candidate's best trial at the highest rung it reached (feasible before infeasible)."""
    out: dict[str, Trial] = {}
    for t in trials:
        cur = out.get(t.config.candidate)
        key = (t.rung, t.score is not None, t.score or (0.0, 0.0))
        if cur is None or key > (cur.rung, cur.score is not None, cur.score or (0.0, 0.0)):
            out[t.config.candidate] = t
    return out


def explain(
    profile: profiles.Profile,
    chosen: Trial | None,
    trials: Sequence[Trial],
    labels: dict[str, str],
    backends: dict[str, str],
    rejected: Sequence[cands.Rejected],
) -> str:
    per = _best_per_candidate(trials)
    parts: list[str] = []
    if chosen is None:
        near = [t for t in per.values() if t.reason]
        why = "; ".join(f"{labels[t.config.candidate]}: {t.reason}" for t in near[:3])
        parts.append(f"no configuration qualifies for {profile.name}" + (f" ({why})" if why else ""))
    else:
        win = chosen.config.candidate
        parts.append(
            f"{labels[win]} chosen for {profile.name} ({chosen.config.describe(profile.scenario)}): "
            f"{profile.headline(chosen)}"
        )
        others = sorted(
            (t for c, t in per.items() if c != win and t.score is not None),
            key=lambda t: t.score or (0, 0),
            reverse=True,
        )
        shown: list[Trial] = others[:1]
        shown += [t for t in others[1:] if backends.get(t.config.candidate) in FRAMEWORK_DEFAULTS][:1]
        for t in shown:
            parts.append(profile.compare(chosen, t, labels[t.config.candidate]))
        for c, t in per.items():
            if c != win and t.score is None and t.reason:
                parts.append(f"{labels[c]} out: {t.reason}")
    for r in rejected[:4]:
        verb = "rejected by the gate" if r.status == "rejected" else r.status
        parts.append(f"{r.label} {verb}: {r.reason}")
    return "; ".join(parts)


def tune(
    store: Store,
    record: ModelRecord,
    profile_name: str,
    options: TuneOptions = TuneOptions(),
    progress: Progress | None = None,
) -> TuneResult:
    started = time.perf_counter()
    say = progress or (lambda msg, done, total: None)
    profile = profiles.make(profile_name, options.slo_ms)
    fp, facts_machine = machine()
    candidates, rejected, note = cands.gather(store, record)
    if options.only is not None:
        candidates = [c for c in candidates if c.id in options.only]
        if not candidates:
            raise PolystackError(f"none of the candidates {list(options.only)} is a verified variant here")
    notes = [note] if note else []
    pool = options.pool or pool_for(store, record, seq_len=options.seq_len)
    m = Measurer(record.signature, pool, candidates, max_call_s=options.max_call_s)
    try:
        # load each candidate once (load time, failures) and probe its memory in a subprocess
        usable: list[cands.Candidate] = []
        for i, c in enumerate(candidates):
            say(f"loading {c.label}", i, len(candidates))
            try:
                m.calibrate(c.id, None, (1,))
            except Exception as e:
                msg = e.message if isinstance(e, PolystackError) else f"{type(e).__name__}: {e}"
                rejected.append(cands.Rejected(c.id, c.label, "failed to run", msg))
                continue
            usable.append(c)
            if options.memory:
                try:
                    mem = memory.measure(c.spec, record.signature, pool.first(1))
                    f = m.facts[c.id]
                    f.memory_bytes, f.peak_rss_bytes, f.memory_method = mem.model_bytes, mem.peak_rss_bytes, mem.method
                except Exception as e:
                    m.facts[c.id].error = str(e)
        candidates = usable
        if isinstance(profile, profiles.Edge):
            profile.facts = m.facts
        threads_all = list(options.threads) if options.threads else profiles.thread_choices()
        cores = max(threads_all)
        configs: list[Config] = []
        for c in candidates:
            threads: list[int | None] = list(threads_all) if c.thread_option else [None]
            try:
                configs += profile.configs(m, c.id, threads, cores, options.max_batch_size)
            except Exception as e:
                rejected.append(cands.Rejected(c.id, c.label, "failed to run", f"{type(e).__name__}: {e}"))
        left = max(options.budget_s - (time.perf_counter() - started), options.budget_s * 0.25)
        outcome = search(
            profile,
            m,
            configs,
            budget_s=left,
            duration_ms=options.duration_ms,
            min_duration_ms=options.min_duration_ms,
            strategy=options.strategy,
            progress=progress,
        )
    finally:
        m.close()
    notes += outcome.notes
    chosen = outcome.best
    labels = {c.id: c.label for c in candidates}
    backends = {c.id: c.backend for c in candidates}
    explanation = explain(profile, chosen, outcome.standing(), labels, backends, rejected)
    settings = None
    elapsed = time.perf_counter() - started
    if chosen is not None:
        cand = next(c for c in candidates if c.id == chosen.config.candidate)
        cfg = chosen.config
        settings = PlanSettings(
            profile=profile.name,
            threads=cfg.threads,
            instances=cfg.instances,
            dynamic_batching=profile.scenario == "Server",
            max_batch_size=cfg.max_batch_size,
            max_delay_ms=cfg.max_delay_ms,
            slo_ms=profile.slo_ms,
            backend=cand.backend,
            precision=cand.precision,
            label=cand.label,
            thread_option=cand.thread_option,
            extra={
                "strategy": outcome.strategy,
                "budget_s": options.budget_s,
                "elapsed_s": round(elapsed, 2),
                "duration_ms": options.duration_ms,
                "configs_total": outcome.configs_total,
                "configs_measured": outcome.configs_measured,
                "metrics": {k: v for k, v in chosen.metrics.items() if isinstance(v, (int, float))},
                "notes": notes,
            },
        )
    result = TuneResult(
        model=record,
        profile=profile,
        outcome=outcome,
        candidates=candidates,
        rejected=rejected,
        facts=m.facts,
        chosen=chosen,
        settings=settings,
        explanation=explanation,
        notes=notes,
        fingerprint=fp,
        machine=facts_machine,
        elapsed_s=elapsed,
        options=options,
    )
    if options.store_plan and chosen is not None and settings is not None:
        result.plan = store.plans.put(
            record,
            profile=profile.name,
            fingerprint=fp,
            variant_id=None if chosen.config.candidate == "source" else chosen.config.candidate,
            settings=settings.to_dict(),
            measurements=result.measurements(),
            explanation=explanation,
            machine=facts_machine,
        )
    return result
