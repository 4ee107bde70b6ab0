"""Prometheus metrics for serving, named in the spirit of Triton's (``polystack_inference_*``).

Each server owns its own ``CollectorRegistry`` (two servers in one process, as in the tests, never
collide), exposed at ``/metrics`` on the HTTP port. Label children are bound once per model so the
hot path pays one lock and one add per observation, not a label lookup. A version no longer served
leaves ``/metrics`` (``retire``), so that a long-running server with many uploads does not keep a set
of series for every version it ever served. The series only some models record (the response cache's, a
decoupled model's first response) appear at their first use, and no ``_created`` series are written (Triton
writes none): a scrape of many models stays the size a Triton-sized Prometheus expects (helper-272: 113 series
a model, the most of them empty or ``_created``).
"""

from __future__ import annotations

import contextlib
import functools
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, disable_created_metrics
from prometheus_client.exposition import generate_latest

# Seconds, from 100 us to 10 s: serving latencies on CPU span that range.
LATENCY_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)

if TYPE_CHECKING:
    from polystack.server.response_cache import ResponseCache

# the text format's 0.0.4, as Triton's /metrics and prometheus-client before 0.22 name it (0.26 writes the same text
# as "version=1.0.0", which scrapers that check the version may not know); polystack's names need nothing newer
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
disable_created_metrics()  # process-wide in prometheus-client: polystack's registries are all there is


class _FirstUse:
    """A label child made at its first use, so that a series a model never records is not shown; a version retired
    meanwhile records nowhere (its series would otherwise come back)."""

    __slots__ = ("_bind", "_child")

    def __init__(self, bind: Callable[[], Any]) -> None:
        self._bind = bind
        self._child: Any = None

    def _made(self) -> Any:
        if self._child is None:
            self._child = self._bind()
        return self._child

    def inc(self, amount: float = 1.0) -> None:
        self._made().inc(amount)

    def observe(self, amount: float) -> None:
        self._made().observe(amount)


@dataclass
class ModelMetrics:
    """The label children of one model version."""

    success: Counter
    request: Histogram
    queue: Histogram
    compute: Histogram
    batch: Histogram
    depth: Gauge
    # made at their first use: only models with a response cache, and decoupled ones, record them
    cache_hits: _FirstUse
    cache_misses: _FirstUse
    cache_hit_seconds: _FirstUse
    cache_miss_seconds: _FirstUse
    first_response: _FirstUse


@dataclass(frozen=True)
class _Families:
    """The metric families labelled by model version (``registry`` None: counted nowhere, a sink)."""

    success: Counter
    failure: Counter
    request: Histogram
    queue: Histogram
    compute: Histogram
    batch: Histogram
    depth: Gauge
    cache_hits: Counter
    cache_misses: Counter
    cache_hit_seconds: Counter
    cache_miss_seconds: Counter
    first_response: Histogram

    @classmethod
    def create(cls, registry: CollectorRegistry | None) -> _Families:
        labels = ("model", "version")
        return cls(
            success=Counter(
                "polystack_inference_request_success", "Inference requests that succeeded", labels, registry=registry
            ),
            failure=Counter(
                "polystack_inference_request_failure",
                "Inference requests that failed, by reason (the error class)",
                (*labels, "reason"),
                registry=registry,
            ),
            request=Histogram(
                "polystack_inference_request_duration_seconds",
                "Time from a request's arrival to its response, per model",
                labels,
                buckets=LATENCY_BUCKETS,
                registry=registry,
            ),
            queue=Histogram(
                "polystack_inference_queue_duration_seconds",
                "Time a request waited in the dynamic batcher's queue",
                labels,
                buckets=LATENCY_BUCKETS,
                registry=registry,
            ),
            compute=Histogram(
                "polystack_inference_compute_duration_seconds",
                "Time in the runtime per execution (a batch counts once)",
                labels,
                buckets=LATENCY_BUCKETS,
                registry=registry,
            ),
            batch=Histogram(
                "polystack_inference_batch_size", "Items per runtime execution", labels, buckets=BATCH_BUCKETS,
                registry=registry,
            ),
            depth=Gauge(
                "polystack_inference_queue_depth",
                "Requests waiting to run: in the batcher's queue, or for an inference thread (unbatched)",
                labels, registry=registry,
            ),
            cache_hits=Counter(
                "polystack_cache_hits", "Requests answered from the response cache (Triton counts them per model too)",
                labels, registry=registry,
            ),
            cache_misses=Counter(
                "polystack_cache_misses",
                "Requests the response cache did not have, that ran the model (Triton counts them per model too)",
                labels, registry=registry,
            ),
            cache_hit_seconds=Counter(
                "polystack_cache_hit_duration_seconds",
                "Time hits spent hashing and finding their answer (Triton times them per model too)",
                labels, registry=registry,
            ),
            cache_miss_seconds=Counter(
                "polystack_cache_miss_duration_seconds",
                "Time misses spent hashing, looking up and keeping the answer (Triton times them per model too)",
                labels, registry=registry,
            ),
            first_response=Histogram(
                "polystack_inference_first_response_duration_seconds",
                "Time from a decoupled model's request's arrival to its first response (Triton's first response "
                "histogram), per model",
                labels, buckets=LATENCY_BUCKETS, registry=registry,
            ),
        )  # fmt: skip

    def bind(self, name: str, version: str, later: Callable[[str], Any] | None = None) -> ModelMetrics:
        """The children of ``name:version``; those made at first use through ``later(field)`` (default: this
        family's child at once)."""
        if later is None:
            later = lambda field: getattr(self, field).labels(name, version)  # noqa: E731
        return ModelMetrics(
            success=self.success.labels(name, version),
            request=self.request.labels(name, version),
            queue=self.queue.labels(name, version),
            compute=self.compute.labels(name, version),
            batch=self.batch.labels(name, version),
            depth=self.depth.labels(name, version),
            **{field: _FirstUse(functools.partial(later, field)) for field in _FIRST_USE},
        )

    def remove(self, name: str, version: str, reasons: set[str]) -> None:
        for family in (
            self.success, self.request, self.queue, self.compute, self.batch, self.depth, self.cache_hits,
            self.cache_misses, self.cache_hit_seconds, self.cache_miss_seconds, self.first_response,
        ):  # fmt: skip
            with contextlib.suppress(KeyError):
                family.remove(name, version)
        for reason in reasons:
            with contextlib.suppress(KeyError):
                self.failure.remove(name, version, reason)


_FIRST_USE = ("cache_hits", "cache_misses", "cache_hit_seconds", "cache_miss_seconds", "first_response")


class ServerMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self._families = _Families.create(r)
        self._sink = _Families.create(None)  # what requests of a retired version still record
        self.models_loaded = Gauge("polystack_models_loaded", "Model versions loaded and serving", registry=r)
        self.in_flight = Gauge("polystack_requests_in_flight", "Requests being handled now", registry=r)
        self._models: dict[tuple[str, str], ModelMetrics] = {}
        # failures by version and reason: the series to remove with a version, and what Triton's names read
        self._failures: dict[tuple[str, str], dict[str, int]] = {}
        self._retired: set[tuple[str, str]] = set()
        self._lock = threading.Lock()

    def model(self, name: str, version: str) -> ModelMetrics:
        m = self._models.get((name, version))  # the hot path: bound once, read without the lock
        if m is not None:
            return m
        with self._lock:  # retire runs on another thread: a series it removed is never bound again
            key = (name, version)
            if key in self._retired:
                return self._sink.bind(name, version)  # a late request of a retired version: counted nowhere
            m = self._models.get(key)
            if m is None:
                later = functools.partial(self._later, name, version)
                m = self._models[key] = self._families.bind(name, version, later)
            return m

    def _later(self, name: str, version: str, field: str) -> Any:
        """The child ``field`` of ``name:version`` at its first use: the sink's if the version was retired since."""
        with self._lock:
            families = self._sink if (name, version) in self._retired else self._families
            return getattr(families, field).labels(name, version)

    def failed(self, name: str, version: str, reason: str) -> None:
        with self._lock:
            key = (name, version)
            if key in self._retired:
                return
            counts = self._failures.setdefault(key, {})
            counts[reason] = counts.get(reason, 0) + 1
            self._families.failure.labels(name, version, reason).inc()

    def failures(self, name: str, version: str) -> dict[str, int]:
        """The failures of a version counted on /metrics, by reason."""
        with self._lock:
            return dict(self._failures.get((name, version), {}))

    def serving(self, name: str, version: str) -> None:
        """A version is loaded: it is counted on /metrics (again, if it was retired)."""
        with self._lock:
            self._retired.discard((name, version))

    def retire(self, name: str, version: str) -> None:
        """A version is no longer served: its series leave /metrics, where each version ever served would
        otherwise stay for the life of the process, and what its last requests record goes nowhere."""
        with self._lock:
            key = (name, version)
            self._retired.add(key)
            self._models.pop(key, None)
            self._families.remove(name, version, set(self._failures.pop(key, {})))

    def forget_name(self, name: str) -> None:
        """No version of ``name`` is served: its failures without a version (a version it never had) go too."""
        with self._lock:
            for reason in self._failures.pop((name, ""), {}):
                with contextlib.suppress(KeyError):
                    self._families.failure.remove(name, "", reason)

    def watch_cache(self, cache: ResponseCache) -> Callable[[int], None]:
        """Gauges of the server's response cache, read at scrape time; returns what counts its evictions."""
        r = self.registry
        Gauge("polystack_cache_entries", "Answers the response cache holds", registry=r).set_function(
            lambda: cache.entries
        )
        Gauge("polystack_cache_bytes", "Bytes the response cache's answers count for", registry=r).set_function(
            lambda: cache.used
        )
        Gauge("polystack_cache_size_bytes", "The response cache's size (--cache-config)", registry=r).set(cache.size)
        evictions = Counter(
            "polystack_cache_evictions", "Answers the response cache dropped to make room for newer ones", registry=r
        )
        return evictions.inc

    def render(self) -> bytes:
        return generate_latest(self.registry)
