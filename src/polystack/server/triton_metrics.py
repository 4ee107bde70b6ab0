"""Triton's metric names on ``/metrics`` (``serve --triton-metrics``): ``nv_inference_*``, ``nv_cache_*`` and
``nv_cpu_*``, as Triton's ``/metrics`` shows them, so that dashboards and alerts written for Triton read a
polystack server unchanged.

They are derived at scrape time from what the server counts anyway (each version's statistics, the
extension's ``{count, ns}`` figures, its failures by reason and its queue), so they cost nothing per
request; like Triton's they count on across a reload of the same version (``Tally``), where the statistics
of the new instance start anew (so the two agree until a version is reloaded). Triton's counters are cumulative microseconds and
counts without a ``_total`` suffix, which prometheus-client cannot write (it appends ``_total`` to every
counter): this module writes those lines of the text format itself (HELP, TYPE, escaped labels).

Triton counts failures by reason: ``REJECTED`` (timed out waiting; a full queue counts nowhere), ``CANCELED``,
``BACKEND`` (the runtime failed) and ``OTHER``; polystack's error classes map onto them (``REASONS``). Triton does not count a
request its checks refuse before it is queued; polystack counts it, as ``OTHER`` (as its own statistics do).
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import psutil

from polystack.server import latency_summaries
from polystack.server.latency_summaries import VersionSummaries
from polystack.server.response_cache import ResponseCache
from polystack.stats import DURATIONS, ModelStats

# polystack's failure reasons (status.reason: error class names) as Triton's; any other is OTHER
REASONS: dict[str, str | None] = {
    "QueueFull": None,  # a full queue: not counted, as tritonserver 2.51 counts it nowhere (helper-114, -115)
    "DeadlineExceeded": "REJECTED",
    "Cancelled": "CANCELED",
    "BackendError": "BACKEND",
    "RuntimeRefused": "BACKEND",  # values the runtime refused in its run: Triton's backends report them (helper-115)
}
TRITON_REASONS = ("REJECTED", "CANCELED", "BACKEND", "OTHER")
DEFAULT_INTERVAL_MS = 2000  # tritonserver's --metrics-interval-ms


class Tally:
    """What Triton's names count for one version across the instances that served it since it was loaded: a
    reload's new instance starts its own statistics (as Triton's do), but Triton's metric reporter, shared by the
    instances of a version, counts on. Instances still serving or draining are read live; one that has closed
    is folded into the sum (``fold``), and so is the oldest of more than ``_LIVE`` (an ensemble's, which no
    close folds)."""

    _LIVE = 4

    def __init__(self, summaries: VersionSummaries | None = None) -> None:
        self._lock = threading.Lock()
        self._done: dict[str, int] = {}
        self._live: list[ModelStats] = []
        self.summaries = summaries  # Triton's latency summaries of the version, where asked for

    def add(self, stats: ModelStats) -> None:
        stats.summaries = self.summaries  # the instance records its observations into the version's summaries
        with self._lock:
            if all(s is not stats for s in self._live):
                self._live.append(stats)
            while len(self._live) > self._LIVE:
                self._fold(self._live[0])

    def fold(self, stats: ModelStats) -> None:
        """``stats``' instance closed: its figures are final."""
        with self._lock:
            if any(s is stats for s in self._live):
                self._fold(stats)

    def _fold(self, stats: ModelStats) -> None:
        self._live = [s for s in self._live if s is not stats]
        for key, value in _flat(stats.to_dict()).items():
            self._done[key] = self._done.get(key, 0) + value

    def figures(self) -> dict[str, Any]:
        """The sum, shaped as ``ModelStats.to_dict`` (the fields Triton's names read)."""
        with self._lock:
            total = dict(self._done)
            for stats in self._live:
                for key, value in _flat(stats.to_dict()).items():
                    total[key] = total.get(key, 0) + value
        return {
            "inference_count": total.get("inference_count", 0),
            "execution_count": total.get("execution_count", 0),
            "inference_stats": {k: {"count": total.get(f"{k}.count", 0), "ns": total.get(f"{k}.ns", 0)} for k in DURATIONS},
        }


def _flat(stats: Mapping[str, Any]) -> dict[str, int]:
    out = {"inference_count": int(stats["inference_count"]), "execution_count": int(stats["execution_count"])}
    for kind, d in stats["inference_stats"].items():
        out[f"{kind}.count"], out[f"{kind}.ns"] = int(d["count"]), int(d["ns"])
    return out


class CpuSampler:
    """Triton's ``nv_cpu_utilization``: the host's CPU utilization sampled on a thread of its own every half
    ``--metrics-interval-ms`` (Triton's poll thread: 2,000 ms, so every second), over the time since the sample
    before, so that every scraper sees the same figure whoever scraped last (helper-272: read at each scrape, it
    was the utilization since anyone's last scrape, and two scrapers split the window). 0 until the first sample,
    as in Triton."""

    def __init__(self, interval_ms: int = DEFAULT_INTERVAL_MS) -> None:
        self.interval_s = interval_ms / 2000
        self.utilization = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="polystack-cpu-metrics", daemon=True)

    def start(self) -> CpuSampler:
        self._thread.start()
        return self

    def _run(self) -> None:
        psutil.cpu_percent(interval=None)  # the first sample's start: psutil keeps it per thread, so on this one
        while not self._stop.wait(self.interval_s):
            self.utilization = psutil.cpu_percent(interval=None) / 100

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=5)


@dataclass(frozen=True)
class VersionFigures:
    """What one served version (or ensemble) shows: its statistics (``ModelStats.to_dict``), its failures by
    polystack's reasons, the requests waiting to run, and whether its config enables the response cache."""

    name: str
    version: str
    stats: Mapping[str, Any]
    failures: Mapping[str, int] = field(default_factory=dict)
    pending: int = 0
    cached: bool = False
    summaries: VersionSummaries | None = None


# (name, kind, help, what of the figures): Triton's per-model families, in the order Triton lists them
_FAMILIES: tuple[tuple[str, str, str], ...] = (
    ("nv_inference_request_success", "counter", "Number of successful inference requests, all batch sizes"),
    ("nv_inference_request_failure", "counter", "Number of failed inference requests, all batch sizes"),
    ("nv_inference_count", "counter", "Number of inferences performed (does not include cached requests)"),
    ("nv_inference_exec_count", "counter", "Number of model executions performed (does not include cached requests)"),
    ("nv_inference_request_duration_us", "counter", "Cumulative inference request duration in microseconds (includes cached requests)"),
    ("nv_inference_queue_duration_us", "counter", "Cumulative inference queuing duration in microseconds (includes cached requests)"),
    ("nv_inference_compute_input_duration_us", "counter", "Cumulative compute input duration in microseconds (does not include cached requests)"),
    ("nv_inference_compute_infer_duration_us", "counter", "Cumulative compute inference duration in microseconds (does not include cached requests)"),
    ("nv_inference_compute_output_duration_us", "counter", "Cumulative inference compute output duration in microseconds (does not include cached requests)"),
    ("nv_inference_pending_request_count", "gauge", "Instantaneous number of pending requests awaiting execution per-model."),
)  # fmt: skip
_CACHE_FAMILIES: tuple[tuple[str, str, str], ...] = (
    ("nv_cache_num_hits_per_model", "counter", "Number of cache hits per model"),
    ("nv_cache_num_misses_per_model", "counter", "Number of cache misses per model"),
    ("nv_cache_hit_duration_per_model", "counter", "Total cache hit duration per model, in microseconds"),
    ("nv_cache_miss_duration_per_model", "counter", "Total cache miss (insert+lookup) duration per model, in microseconds"),
)  # fmt: skip
_DURATIONS = {
    "nv_inference_request_duration_us": "success",
    "nv_inference_queue_duration_us": "queue",
    "nv_inference_compute_input_duration_us": "compute_input",
    "nv_inference_compute_infer_duration_us": "compute_infer",
    "nv_inference_compute_output_duration_us": "compute_output",
    "nv_cache_hit_duration_per_model": "cache_hit",
    "nv_cache_miss_duration_per_model": "cache_miss",
}


_LATENCY_COUNTERS = frozenset(n for n, v in _DURATIONS.items() if not v.startswith("cache"))


def render(
    models: Iterable[VersionFigures],
    cpu: CpuSampler | None = None,
    counter_latencies: bool = True,
    cache: ResponseCache | None = None,
    quantiles: tuple[float, ...] = (),
) -> bytes:
    """The text format's lines of Triton's families for ``models``, the host's CPU ones (``cpu``: the sampler of its
    utilization; None, none of them) and, where the server has a response ``cache``, Triton's server-wide cache
    gauges (shown from start-up whatever the counters); without ``counter_latencies`` (Triton's ``--metrics-config
    counter_latencies=false``), not its duration counters, nor its per-model cache counters, which Triton makes among
    them; last, as Triton writes them, the latency summaries of the models that keep them, with ``quantiles``."""
    models = list(models)
    lines: list[str] = []
    for name, kind, text in _FAMILIES:
        if not counter_latencies and name in _LATENCY_COUNTERS:
            continue
        lines += [f"# HELP {name} {text}", f"# TYPE {name} {kind}"]
        for m in models:
            if name == "nv_inference_request_failure":
                by_reason = dict.fromkeys(TRITON_REASONS, 0)
                for reason, count in m.failures.items():
                    triton = REASONS.get(reason, "OTHER")
                    if triton is not None:
                        by_reason[triton] += count
                lines += [_sample(name, m, count, reason=reason) for reason, count in by_reason.items()]
            else:
                lines.append(_sample(name, m, _value(name, m)))
    cached = [m for m in models if m.cached] if counter_latencies else []  # Triton's are latency counters too
    for name, kind, text in _CACHE_FAMILIES if cached else ():
        lines += [f"# HELP {name} {text}", f"# TYPE {name} {kind}"]
        lines += [_sample(name, m, _value(name, m)) for m in cached]
    if cache is not None:
        lines += _cache_gauges(cache)
    if cpu is not None:
        memory = psutil.virtual_memory()
        lines += [
            "# HELP nv_cpu_utilization CPU utilization rate [0.0 - 1.0]",
            "# TYPE nv_cpu_utilization gauge",
            f"nv_cpu_utilization {cpu.utilization:g}",
            "# HELP nv_cpu_memory_total_bytes CPU total memory (RAM), in bytes",
            "# TYPE nv_cpu_memory_total_bytes gauge",
            f"nv_cpu_memory_total_bytes {memory.total}",
            "# HELP nv_cpu_memory_used_bytes CPU used memory (RAM), in bytes",
            "# TYPE nv_cpu_memory_used_bytes gauge",
            f"nv_cpu_memory_used_bytes {memory.total - memory.available}",
        ]
    lines += _summaries([m for m in models if m.summaries is not None], quantiles)
    return ("\n".join(lines) + "\n").encode()


def _summaries(models: list[VersionFigures], quantiles: tuple[float, ...]) -> list[str]:
    """Triton's latency summaries (``latency_summaries``): count, sum, then each quantile (labelled after the
    version, as prometheus-cpp writes it); a family no model shows is left out."""
    lines: list[str] = []
    for name, kind, text in latency_summaries.FAMILIES:
        shown = [m for m in models if latency_summaries.shown(kind, m.cached)]
        if shown:
            lines += [f"# HELP {name} {text}", f"# TYPE {name} summary"]
        for m in shown:
            assert m.summaries is not None
            count, total, values = m.summaries.windows[kind].read(quantiles)
            lines += [_sample(f"{name}_count", m, count), _sample(f"{name}_sum", m, total)]
            lines += [
                _sample(name, m, latency_summaries.number(v), after={"quantile": repr(q)})
                for q, v in zip(quantiles, values, strict=True)
            ]
    return lines


def _cache_gauges(cache: ResponseCache) -> list[str]:
    """Triton's gauges of the whole response cache (tritonserver 2.51's names and help text; helper-115)."""
    counts = cache.counts
    values: tuple[tuple[str, str, float], ...] = (
        ("nv_cache_num_entries", "Number of responses stored in response cache", cache.entries),
        ("nv_cache_num_lookups", "Number of cache lookups in response cache", counts.lookups),
        ("nv_cache_num_hits", "Number of cache hits in response cache", counts.hits),
        ("nv_cache_num_misses", "Number of cache misses in response cache", counts.misses),
        ("nv_cache_num_evictions", "Number of cache evictions in response cache", counts.evictions),
        ("nv_cache_lookup_duration", "Total cache lookup duration (hit and miss), in microseconds",
         counts.lookup_ns // 1000),
        ("nv_cache_insertion_duration", "Total cache insertion duration, in microseconds", counts.insertion_ns // 1000),
        ("nv_cache_util", "Cache utilization [0.0 - 1.0]", cache.used / cache.size if cache.size else 0.0),
    )  # fmt: skip
    lines: list[str] = []
    for name, text, value in values:
        lines += [f"# HELP {name} {text}", f"# TYPE {name} gauge", f"{name} {value!r}" if isinstance(value, float)
                  else f"{name} {value}"]  # fmt: skip
    return lines


def _value(name: str, m: VersionFigures) -> int:
    s = m.stats
    durations = s["inference_stats"]
    if name in _DURATIONS:
        return int(durations[_DURATIONS[name]]["ns"]) // 1000
    return int({
        "nv_inference_request_success": lambda: durations["success"]["count"],
        "nv_inference_count": lambda: s["inference_count"],
        "nv_inference_exec_count": lambda: s["execution_count"],
        "nv_inference_pending_request_count": lambda: m.pending,
        "nv_cache_num_hits_per_model": lambda: durations["cache_hit"]["count"],
        "nv_cache_num_misses_per_model": lambda: durations["cache_miss"]["count"],
    }[name]())


def _sample(name: str, m: VersionFigures, value: int | str, after: dict[str, str] | None = None, **extra: str) -> str:
    labels = {"model": m.name, **extra, "version": m.version, **(after or {})}
    text = ",".join(f'{k}="{_escape(v)}"' for k, v in labels.items())
    return f"{name}{{{text}}} {value}"


def _escape(value: str) -> str:
    """A label value as the text format writes it: backslash, double quote and line feed escaped."""
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
