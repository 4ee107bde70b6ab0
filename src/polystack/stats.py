"""Per-model inference statistics, shaped like Triton's statistics extension ({count, ns} pairs)."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from polystack.errors import DeadlineExceeded, PolystackError

if TYPE_CHECKING:
    from polystack.server.latency_summaries import VersionSummaries

# Triton's full set; cache_hit and cache_miss count only models whose config enables the response cache
DURATIONS = ("success", "fail", "queue", "compute_input", "compute_infer", "compute_output", "cache_hit", "cache_miss")
BATCH_DURATIONS = ("compute_input", "compute_infer", "compute_output")


# the backends whose executes that raised are executions all the same, as Triton counts them: its Python backend
# reports every execute's statistics (helper-275: 2.51 counted one, with no inference, for a model that raised),
# where its ONNX Runtime and PyTorch backends report none for a batch whose every response failed
FAILURES_EXECUTE = frozenset({"python"})


def ran_and_failed(error: BaseException) -> bool:
    """Whether a model call that raised ``error`` ran and failed in its run: not a refusal of its inputs before it,
    a model closed under it or a deadline passed first."""
    if not isinstance(error, PolystackError):
        return True
    return error.in_run and not isinstance(error, DeadlineExceeded)


@dataclass
class Duration:
    count: int = 0
    ns: int = 0


@dataclass
class ModelStats:
    inference_count: int = 0  # items inferred (a batch of 8 counts 8)
    execution_count: int = 0  # runtime executions (a batch counts 1)
    last_inference_ms: int = 0
    durations: dict[str, Duration] = field(default_factory=lambda: {k: Duration() for k in DURATIONS})
    batch_stats: dict[int, dict[str, Duration]] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    # Triton's latency summaries (serve --metrics-config summary_latencies=true): each duration counted is observed
    summaries: VersionSummaries | None = field(default=None, repr=False, compare=False)
    # whether an execution that raised counts as one (its backend among FAILURES_EXECUTE; the engine sets it)
    failures_execute: bool = field(default=False, repr=False, compare=False)

    def add(self, kind: str, ns: int, count: int = 1) -> None:
        with self._lock:
            d = self.durations[kind]
            d.count += count
            d.ns += ns
            if self.summaries is not None:
                self.summaries.observe(kind, ns // max(count, 1), count)

    def cache_hit(self, lookup_ns: int) -> None:
        """A request answered from the response cache: its lookup time, and nothing else, as Triton's
        ``UpdateSuccessCacheHit`` counts a hit (the model did not run: no inference, execution, compute or
        last inference time). Its success is its ``Outcome``'s, and its queue count with it (``to_dict``)."""
        with self._lock:
            d = self.durations["cache_hit"]
            d.count += 1
            d.ns += lookup_ns
            if self.summaries is not None:
                self.summaries.observe("cache_hit", lookup_ns)
                self.summaries.observe("queue", 0)  # Triton's queue summary has cached requests too (none queued)

    def _settle(self, outcome: Outcome, kind: str, ns: int) -> None:
        with self._lock:
            if outcome.state is not None:
                return  # counted already (its caller went away first)
            outcome.state = kind
            d = self.durations[kind]
            d.count += 1
            d.ns += ns
            if self.summaries is not None:
                self.summaries.observe(kind, ns)

    def _abandon(self, outcome: Outcome, ns: int) -> None:
        with self._lock:
            if outcome.state is not None:  # a success stays one: counts never go down (helper-272: Prometheus read
                return  # a success taken back as a counter's reset, and the success time kept its duration)
            outcome.state = "fail"
            d = self.durations["fail"]
            d.count += 1
            d.ns += ns

    def executed(
        self, batch_size: int, infer_ns: int, requests: int = 1, input_ns: int = 0, output_ns: int = 0
    ) -> None:
        """One runtime execution of ``batch_size`` items serving ``requests`` requests.

        ``input_ns`` is what assembling the runtime's inputs took (merging a batch's requests),
        ``output_ns`` what handing each request its share of the outputs took: 0 for a lone request,
        whose tensors go to the runtime and back as they are. Each phase counts once per request, with
        the whole execution's time, as Triton counts them.
        """
        phases = (("compute_input", input_ns), ("compute_infer", infer_ns), ("compute_output", output_ns))
        with self._lock:
            self.execution_count += 1
            self.inference_count += batch_size
            self.last_inference_ms = int(time.time() * 1000)
            for kind, ns in phases:
                d = self.durations[kind]
                d.count += requests
                d.ns += ns * requests
                if self.summaries is not None:
                    self.summaries.observe(kind, ns, requests)
            # every execution is a batch's (execution_count is the sum of batch_stats' counts); a server refuses
            # empty batches, as Triton does, so batch size 0 is an unbatched model's or one run in process
            per = self.batch_stats.get(batch_size)
            if per is None:
                per = self.batch_stats[batch_size] = {k: Duration() for k in BATCH_DURATIONS}
            for kind, ns in phases:
                per[kind].count += 1
                per[kind].ns += ns

    def failed(self, error: BaseException, batch_size: int, infer_ns: int) -> None:
        """A call of ``batch_size`` items that raised ``error``: where it ran and its backend's Triton counts such
        executes, an execution all the same (``failed_execution``)."""
        if self.failures_execute and ran_and_failed(error):
            self.failed_execution(batch_size, infer_ns)

    def failed_execution(self, batch_size: int, infer_ns: int) -> None:
        """A runtime execution of ``batch_size`` items that raised: an execution all the same, in the execution count
        and its batch size's statistics, as Triton's Python backend reports every execute whatever became of it
        (helper-275: a model that raised counted none); no inference and no request's compute time, which count
        successes."""
        with self._lock:
            self.execution_count += 1
            self.last_inference_ms = int(time.time() * 1000)
            per = self.batch_stats.get(batch_size)
            if per is None:
                per = self.batch_stats[batch_size] = {k: Duration() for k in BATCH_DURATIONS}
            for kind in BATCH_DURATIONS:
                per[kind].count += 1
            per["compute_infer"].ns += infer_ns

    def to_dict(self) -> dict[str, Any]:
        with self._lock:
            return {
                "inference_count": self.inference_count,
                "execution_count": self.execution_count,
                "last_inference": self.last_inference_ms,
                # Triton reports the queue count as the success count (cache hits and ensembles' requests too)
                "inference_stats": {
                    k: {"count": d.count if k != "queue" else self.durations["success"].count, "ns": d.ns}
                    for k, d in self.durations.items()
                },
                "batch_stats": [
                    {"batch_size": size, **{k: {"count": d.count, "ns": d.ns} for k, d in v.items()}}
                    for size, v in sorted(self.batch_stats.items())
                ],
                # Triton's always-present fields for what polystack does not count: responses of decoupled
                # models (it serves none), and memory a backend reports (ONNX Runtime's backend reports none)
                "response_stats": {},
                "memory_usage": [],
            }


class Outcome:
    """One request's success or failure in its model's statistics: counted once, as its caller saw it.

    Whoever runs the request settles it (``settle``). A caller that goes away before the answer (an HTTP
    client that disconnected, a gRPC call cancelled or past its deadline), or that cannot be handed the
    answer (its shared memory region went away), abandons it (``abandon``): a failure, whether the model
    runs it after or not (its executions and compute count all the same). Without this the statistics
    counted a success where /metrics counted the failure the caller saw.

    A server's outcome is ``held``: the run's success is kept aside until the server has the answer ready to
    hand over (``confirm``), so that a caller going away between the two is a failure, never a success taken
    back (counts only grow, as Prometheus reads Triton's); a success confirmed stays one whatever comes after
    (a client gone as its answer is written, as Triton counts it)."""

    __slots__ = ("held", "rerouted", "state", "stats")

    def __init__(self, stats: ModelStats, rerouted: bool = False, held: bool = False) -> None:
        self.stats = stats  # a request rerouted to the instance that replaced its model's counts there
        self.state: str | None = None  # "success" or "fail" once counted
        # its caller sends it on to what replaced a model that closed as it reached it (a server does), so
        # that refusal (ModelClosed) is not counted where it happened; other callers count it a failure
        self.rerouted = rerouted
        # held: -1 until its run succeeds, then that success's duration until ``confirm``; None: not held
        self.held: int | None = -1 if held else None

    def settle(self, kind: str, ns: int) -> None:
        """Count the request as ``kind`` (success or fail) with its duration, unless it is counted already (a held
        success waits for ``confirm``)."""
        if kind == "success" and self.held is not None:
            if self.held < 0:
                self.held = ns
            return
        self.stats._settle(self, kind, ns)

    def confirm(self) -> None:
        """The answer is ready for its caller: a held success counts now."""
        ns, self.held = self.held, None
        if ns is not None and ns >= 0:
            self.stats._settle(self, "success", ns)

    def abandon(self, ns: int) -> None:
        """Count the request as a failure, unless it is counted already: its caller does not get the answer."""
        self.stats._abandon(self, ns)
