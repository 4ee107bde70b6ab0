"""Triton's latency summaries (``serve --triton-metrics --metrics-config summary_latencies=true``):
``nv_inference_{request,queue,compute_input,compute_infer,compute_output}_summary_us`` and, for models that use
the response cache, ``nv_cache_{hit,miss}_summary_per_model``, each with its count and sum since the start and
its quantiles (``summary_quantiles``, Triton's default 0.5, 0.9, 0.95, 0.99 and 0.999) over the last minute.

Triton keeps them in prometheus-cpp's summaries: CKMS estimates over a sliding window of 60 s in 5 age buckets,
within the error given beside each quantile. Here the window keeps the values themselves (8 bytes each, in
12-second slots, the oldest dropped as the window slides past it) and a scrape computes the quantiles exactly,
which is within any error asked for: a pure Python CKMS costs tens of microseconds per observation (the one on
PyPI, ``quantile-estimator``, also counts values twice and misses its error bounds), where an append costs well
under one. Memory is the request rate's: 8 bytes per observation of the last minute, 5 observations a request
(by that arithmetic, a server answering 10,000 requests a second keeps 24 MB).

Observations are what the statistics count, at the same moment (``ModelStats`` hands them over): a request's
success duration, its queue time, each execution's compute phases once per request it served, a cache hit's
lookup and a miss's insertion; so each summary's ``_count`` and ``_sum`` agree with the counters, as Triton's
documentation says they should. Like Triton's, a version's summaries count on across a reload of the version,
and a model with the response cache has no request summary (Triton's DLIS-4762).
"""

from __future__ import annotations

import logging
import math
import threading
import time
from array import array
from collections import deque
from collections.abc import Callable, Sequence
from itertools import repeat

import numpy as np

from polystack.errors import InvalidRequest

# tritonserver 2.51's defaults (MetricReporterConfig::quantiles_), and prometheus-cpp's window, which Triton takes
DEFAULT_QUANTILES: tuple[float, ...] = (0.5, 0.9, 0.95, 0.99, 0.999)
MAX_AGE_S = 60.0
AGE_BUCKETS = 5

# polystack's statistics kinds (stats.DURATIONS) whose observations a summary keeps, by Triton's family names, with
# Triton's help texts as tritonserver 2.51 writes them
FAMILIES: tuple[tuple[str, str, str], ...] = (
    ("nv_inference_request_summary_us", "success",
     "Summary of inference request duration in microseconds (includes cached requests)"),
    ("nv_inference_queue_summary_us", "queue",
     "Summary of inference queuing duration in microseconds (includes cached requests)"),
    ("nv_inference_compute_input_summary_us", "compute_input",
     "Cumulative compute input duration in microseconds (does not include cached requests)"),
    ("nv_inference_compute_infer_summary_us", "compute_infer",
     "Cumulative compute inference duration in microseconds (does not include cached requests)"),
    ("nv_inference_compute_output_summary_us", "compute_output",
     "Cumulative inference compute output duration in microseconds (does not include cached requests)"),
    ("nv_cache_hit_summary_per_model", "cache_hit",
     "Summary of cache hit counts/durations per model, in microseconds"),
    ("nv_cache_miss_summary_per_model", "cache_miss",
     "Summary of cache miss counts/durations per model, in microseconds."),
)  # fmt: skip
CACHE_KINDS = frozenset({"cache_hit", "cache_miss"})


def parse_quantiles(text: str) -> tuple[float, ...]:
    """Triton's ``summary_quantiles=<quantile>:<error>,...``: the quantiles, in order. A pair without its ``:`` or
    with a part that is no number is left out with an error in the log, as Triton does; none left, Triton's
    defaults. A quantile or error outside [0, 1] is refused (Triton's estimator gives no meaning to it), and a
    quantile given twice is taken once."""
    log = logging.getLogger("polystack.server")
    quantiles: list[float] = []
    for pair in text.split(","):
        quantile, colon, error = pair.partition(":")
        if not colon:
            log.error(f"--metrics-config summary_quantiles: {pair!r} has no ':'; the format is <quantile>:<error>")
            continue
        try:
            q, e = float(quantile), float(error)
        except ValueError:
            log.error(f"--metrics-config summary_quantiles: {pair!r} is not <quantile>:<error> (two numbers)")
            continue
        if not 0.0 <= q <= 1.0 or not 0.0 <= e <= 1.0:
            what = f"quantile {quantile}" if not 0.0 <= q <= 1.0 else f"error {error}"
            raise InvalidRequest(
                f"--metrics-config summary_quantiles: {what} in {pair!r} is outside [0, 1]; give quantiles and "
                "errors such as 0.5:0.05,0.99:0.001"
            )
        if q not in quantiles:  # given twice, one series: two of one name and labels, Prometheus drops both
            quantiles.append(q)
    return tuple(quantiles) or DEFAULT_QUANTILES


class Window:
    """One summary: its count and sum since the start, and its values of the last ``max_age_s`` seconds, kept in
    ``age_buckets`` slots (prometheus-cpp's window: between (age_buckets - 1) / age_buckets of it and all of it).
    Safe to share between threads (the instances of one version record into the same window)."""

    def __init__(
        self, max_age_s: float = MAX_AGE_S, age_buckets: int = AGE_BUCKETS, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.count = 0
        self.sum = 0
        self._width = max_age_s / age_buckets
        self._slots = age_buckets
        self._clock = clock
        self._lock = threading.Lock()
        self._slot = int(clock() // self._width)
        self._current = array("q")
        self._past: deque[tuple[int, array[int]]] = deque()  # (slot, its values), oldest first

    def observe(self, us: int, times: int = 1) -> None:
        """``times`` observations of ``us`` microseconds (a batch's requests share their execution's time)."""
        with self._lock:
            slot = int(self._clock() // self._width)
            if slot != self._slot:
                self._rotate(slot)
            self.count += times
            self.sum += us * times
            if times == 1:
                self._current.append(us)
            else:
                self._current.extend(repeat(us, times))

    def _rotate(self, slot: int) -> None:
        if self._current:
            self._past.append((self._slot, self._current))
            self._current = array("q")
        self._slot = slot
        while self._past and self._past[0][0] <= slot - self._slots:
            self._past.popleft()

    def read(self, quantiles: Sequence[float]) -> tuple[int, int, list[float]]:
        """(count, sum, the quantiles of the window's values: NaN where it holds none, as Triton shows them)."""
        with self._lock:
            slot = int(self._clock() // self._width)
            if slot != self._slot:
                self._rotate(slot)
            count, total = self.count, self.sum
            past = [values for _, values in self._past]  # never appended to again: read after the lock
            current = np.array(self._current, dtype=np.int64)  # appended to meanwhile: copied now
        values = np.concatenate([*(np.array(p, dtype=np.int64) for p in past), current])
        if not len(values):
            return count, total, [math.nan] * len(quantiles)
        # the smallest value at or above each quantile's rank: a value observed, as Triton's estimates are
        return count, total, [float(v) for v in np.quantile(values, quantiles, method="inverted_cdf")]


class VersionSummaries:
    """The summaries of one model version (or ensemble), kept across the instances that serve it."""

    def __init__(
        self, max_age_s: float = MAX_AGE_S, age_buckets: int = AGE_BUCKETS, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.windows = {kind: Window(max_age_s, age_buckets, clock) for _, kind, _ in FAMILIES}

    def observe(self, kind: str, ns: int, times: int = 1) -> None:
        """What the statistics count as ``kind`` (``stats.DURATIONS``), in nanoseconds; a failure has none."""
        window = self.windows.get(kind)
        if window is not None:
            window.observe(ns // 1000, times)


def shown(kind: str, cached: bool) -> bool:
    """Whether a model shows the summary of ``kind``: the cache's only with the response cache, the request's only
    without it (Triton's DLIS-4762: a cache miss's insertion would be left out of it), the others always."""
    if kind in CACHE_KINDS:
        return cached
    return not cached or kind != "success"


def number(value: float) -> str:
    """A quantile's value as tritonserver writes it: whole microseconds as integers, an empty window as Nan."""
    return "Nan" if math.isnan(value) else f"{value:.0f}"
