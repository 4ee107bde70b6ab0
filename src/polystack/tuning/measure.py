"""The measuring bench: configurations, loaded instances, quick calibration, and trial records.

A ``Config`` is one point of the search space (candidate x threads x instances x batch size x
batching delay). Instances are worker threads sharing one loaded model, as ``polystack serve``'s
``DynamicBatcher`` runs them, so that what is measured is what a plan deploys. The ``Measurer`` loads candidates (caching a few, closing the rest), calibrates
them with timed direct calls (cheap, used to size LoadGen runs and to order the search), and
hands loaded instances to the profiles, which run the LoadGen scenarios.
"""

from __future__ import annotations

import math
import os
import statistics
import sys
import time
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import psutil

from polystack.backends import registry
from polystack.backends.base import LoadedModel
from polystack.tuning.candidates import Candidate
from polystack.tuning.inputs import InputPool
from polystack.tuning.scenarios import RunSettings
from polystack.types import Signature


@dataclass(frozen=True)
class Config:
    candidate: str  # Candidate.id
    threads: int | None  # None: the runtime's default (or a backend without a thread option)
    instances: int = 1
    max_batch_size: int = 1
    max_delay_ms: float = 0.0

    @property
    def key(self) -> str:
        return f"{self.candidate}/t{self.threads}/i{self.instances}/b{self.max_batch_size}/d{self.max_delay_ms:g}"

    def describe(self, scenario: str) -> str:
        parts = [f"{self.threads} thread{'s' if self.threads != 1 else ''}" if self.threads else "default threads"]
        if self.instances > 1:
            parts.append(f"{self.instances} instances")
        if scenario == "Server":
            parts.append(f"batch <= {self.max_batch_size}, delay {self.max_delay_ms:g} ms")
        elif scenario == "Offline":
            parts.append(f"batch {self.max_batch_size}")
        return ", ".join(parts)

    def to_dict(self) -> dict[str, Any]:
        return {
            "threads": self.threads,
            "instances": self.instances,
            "max_batch_size": self.max_batch_size,
            "max_delay_ms": self.max_delay_ms,
        }


@dataclass
class Calibration:
    """Median seconds of one direct ``infer`` call per batch size (sizes too slow are absent)."""

    seconds: dict[int, float] = field(default_factory=dict)

    def t(self, batch: int) -> float:
        if batch in self.seconds:
            return self.seconds[batch]
        if not self.seconds:
            return 1e-3
        b0 = max(self.seconds)  # extrapolate linearly from the largest measured size
        return self.seconds[b0] * batch / b0


@dataclass
class Point:
    """One measured point for the latency-vs-throughput plot."""

    throughput: float
    latency_ms: float
    ok: bool = True  # False: that run missed the SLO (Server tries)


@dataclass
class Trial:
    config: Config
    rung: int
    duration_ms: int
    metrics: dict[str, Any]  # p50_ms, p99_ms, throughput, qps, ...
    score: tuple[float, float] | None  # higher is better; None: infeasible
    points: list[Point] = field(default_factory=list)
    error: str | None = None
    reason: str | None = None  # why infeasible

    def to_dict(self, candidate: Candidate | None, scenario: str) -> dict[str, Any]:
        return {
            "variant_id": self.config.candidate,
            "label": candidate.label if candidate else self.config.candidate,
            "backend": candidate.backend if candidate else None,
            "precision": candidate.precision if candidate else None,
            **self.config.to_dict(),
            "settings": self.config.describe(scenario),
            "scenario": scenario,
            "rung": self.rung,
            "duration_ms": self.duration_ms,
            **{k: v for k, v in self.metrics.items() if v is not None},
            "feasible": self.score is not None,
            "reason": self.reason,
            "error": self.error,
            "points": [{"throughput": p.throughput, "latency_ms": p.latency_ms, "ok": p.ok} for p in self.points],
        }


@dataclass
class CandidateFacts:
    load_time_s: float | None = None
    size_bytes: int = 0
    memory_bytes: int | None = None
    peak_rss_bytes: int | None = None
    memory_method: str | None = None
    error: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if v is not None}


# Backends whose thread setting is process-wide (torch.set_num_threads): re-applied before every
# use, so a model loaded with 1 thread does not run with the 2 another load set, and "default"
# means the runtime's own default again.
PROCESS_WIDE_THREADS = {"torch"}


def _process_threads(backend: str, threads: int | None) -> None:
    if backend not in PROCESS_WIDE_THREADS or "torch" not in sys.modules:
        return
    import torch

    torch.set_num_threads(threads or psutil.cpu_count(logical=False) or os.cpu_count() or 1)


class Measurer:
    def __init__(
        self,
        signature: Signature,
        pool: InputPool,
        candidates: Sequence[Candidate],
        *,
        max_call_s: float = 0.5,
        cache_models: int = 3,
    ) -> None:
        self.signature = signature
        self.pool = pool
        self.candidates = {c.id: c for c in candidates}
        self.max_call_s = max_call_s
        self.cache_models = cache_models
        self._cache: OrderedDict[tuple[str, int | None, int], LoadedModel] = OrderedDict()
        self._calib: dict[tuple[str, int | None], Calibration] = {}
        self.facts: dict[str, CandidateFacts] = {c.id: CandidateFacts(size_bytes=c.size_bytes) for c in candidates}

    # -- loading -------------------------------------------------------------------------------
    def _load(self, cand: Candidate, threads: int | None, instances: int) -> LoadedModel:
        spec = cand.with_threads(threads, instances)
        backend = registry.require(spec.backend)
        options = backend.parse_options(spec.options)
        rss0 = psutil.Process().memory_info().rss
        started = time.perf_counter()
        model = backend.load(spec.artifact, self.signature, options, spec.device)
        took = time.perf_counter() - started
        facts = self.facts[cand.id]
        if facts.load_time_s is None:
            facts.load_time_s = took
            if facts.memory_bytes is None:  # replaced by the subprocess probe where it runs
                facts.memory_bytes = max(0, psutil.Process().memory_info().rss - rss0)
                facts.memory_method = "in-process psutil RSS delta at first load"
        return model

    def model(self, candidate: str, threads: int | None, instances: int = 1) -> LoadedModel:
        """The candidate loaded for ``instances`` callers of ``threads`` threads each (cached; the least
        recently used are closed). One load serves any number of callers unless the runtime needs
        streams set at load time for calls to overlap (``Backend.streams_option``) or a copy per caller
        (``Backend.copies_option``)."""
        cand = self.candidates[candidate]
        backend = registry.require(cand.backend)
        if instances > 1 and backend.streams_option is None and backend.copies_option is None:
            instances = 1
        key = (candidate, threads, instances)
        model = self._cache.pop(key, None)
        if model is None:
            model = self._load(cand, threads, instances)
        _process_threads(self.candidates[candidate].backend, threads)
        self._cache[key] = model
        while len(self._cache) > self.cache_models:
            _, old = self._cache.popitem(last=False)
            old.close()
        return model

    def close(self) -> None:
        for model in self._cache.values():
            model.close()
        self._cache.clear()

    # -- calibration ---------------------------------------------------------------------------
    def calibrate(self, candidate: str, threads: int | None, batch_sizes: Sequence[int] = (1,)) -> Calibration:
        """Time direct calls per batch size (increasing); stop at the first slower than ``max_call_s``."""
        key = (candidate, threads)
        cal = self._calib.setdefault(key, Calibration())
        todo = sorted(b for b in set(batch_sizes) if b not in cal.seconds)
        if not todo:
            return cal
        if cal.seconds and max(cal.seconds.values()) > self.max_call_s:
            return cal
        model = self.model(candidate, threads)
        for b in todo:
            x = self.pool.first(b)
            started = time.perf_counter()
            model.infer(x)  # warm-up (first-call allocations, lazy compilation)
            first = time.perf_counter() - started
            if first > max(2.0, 4 * self.max_call_s):  # compiles per new shape (torch.compile): stop here
                cal.seconds[b] = first
                break
            reps = max(2, min(25, math.ceil(0.03 / max(first, 1e-6))))
            times = []
            for _ in range(reps):
                t0 = time.perf_counter()
                model.infer(x)
                times.append(time.perf_counter() - t0)
            cal.seconds[b] = statistics.median(times)
            if cal.seconds[b] > self.max_call_s:
                break
        return cal

    def calibration(self, candidate: str, threads: int | None) -> Calibration:
        return self._calib.get((candidate, threads)) or self.calibrate(candidate, threads)

    @staticmethod
    def run(duration_ms: int, seed: int = 0) -> RunSettings:
        return RunSettings(min_duration_ms=duration_ms, max_duration_ms=max(2000, duration_ms * 10), seed=seed)
