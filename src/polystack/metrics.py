"""Prometheus metrics for serving, named in the spirit of Triton's (``polystack_inference_*``).

Each server owns its own ``CollectorRegistry`` (two servers in one process, as in the tests, never
collide), exposed at ``/metrics`` on the HTTP port. Label children are bound once per model so the
hot path pays one lock and one add per observation, not a label lookup.
"""

from __future__ import annotations

from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest

# Seconds, from 100 us to 10 s: serving latencies on CPU span that range.
LATENCY_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)

CONTENT_TYPE = CONTENT_TYPE_LATEST


@dataclass
class ModelMetrics:
    """The label children of one model version."""

    success: Counter
    request: Histogram
    queue: Histogram
    compute: Histogram
    batch: Histogram
    depth: Gauge


class ServerMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        labels = ("model", "version")
        self.success = Counter(
            "polystack_inference_request_success", "Inference requests that succeeded", labels, registry=r
        )
        self.failure = Counter(
            "polystack_inference_request_failure",
            "Inference requests that failed, by reason (the error class)",
            (*labels, "reason"),
            registry=r,
        )
        self.request_duration = Histogram(
            "polystack_inference_request_duration_seconds",
            "Time from a request's arrival to its response, per model",
            labels,
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.queue_duration = Histogram(
            "polystack_inference_queue_duration_seconds",
            "Time a request waited in the dynamic batcher's queue",
            labels,
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.compute_duration = Histogram(
            "polystack_inference_compute_duration_seconds",
            "Time in the runtime per execution (a batch counts once)",
            labels,
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.batch_size = Histogram(
            "polystack_inference_batch_size",
            "Items per runtime execution",
            labels,
            buckets=BATCH_BUCKETS,
            registry=r,
        )
        self.queue_depth = Gauge(
            "polystack_inference_queue_depth", "Requests waiting in the batcher's queue", labels, registry=r
        )
        self.models_loaded = Gauge("polystack_models_loaded", "Model versions loaded and serving", registry=r)
        self.in_flight = Gauge("polystack_requests_in_flight", "Requests being handled now", registry=r)
        self._models: dict[tuple[str, str], ModelMetrics] = {}

    def model(self, name: str, version: str) -> ModelMetrics:
        key = (name, version)
        m = self._models.get(key)
        if m is None:
            m = ModelMetrics(
                success=self.success.labels(name, version),
                request=self.request_duration.labels(name, version),
                queue=self.queue_duration.labels(name, version),
                compute=self.compute_duration.labels(name, version),
                batch=self.batch_size.labels(name, version),
                depth=self.queue_depth.labels(name, version),
            )
            self._models[key] = m
        return m

    def failed(self, name: str, version: str, reason: str) -> None:
        self.failure.labels(name, version, reason).inc()

    def render(self) -> bytes:
        return generate_latest(self.registry)
