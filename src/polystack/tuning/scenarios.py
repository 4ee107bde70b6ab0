"""MLPerf LoadGen scenarios over loaded models, in-process.

- ``single_stream``: one query at a time, run inline in LoadGen's issue thread; p50/p90/p99 and
  LoadGen's early-stopping estimate of the 90th percentile.
- ``offline``: every sample in one query, cut into batches and run by one worker per instance;
  samples per second.
- ``server``: Poisson arrivals at a target QPS, one request per sample, through the serving
  engineer's ``DynamicBatcher`` (the very batcher ``polystack serve`` runs); ``find_max_qps``
  searches the highest QPS whose p99 stays within the SLO.

Every run starts with a few untimed calls of its batch shapes (``RunSettings.warmup_calls``), as
MLPerf harnesses warm up before the timed run.

LoadGen writes its logs into a temporary folder per run (never the cwd); results are read back
from the ``:::MLLOG`` lines of ``mlperf_log_detail.txt``. The durations are short by default
(laptop budget): LoadGen then calls most runs INVALID by MLPerf's submission rules (minimum
query counts); ``valid`` records its verdict, the figures are what was measured.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import signal
import socket
import sys
import tempfile
import threading
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from polystack.backends.base import CheckedModel, LoadedModel
from polystack.stats import ModelStats
from polystack.tuning.batcher import Item, MeasureBatcher
from polystack.tuning.inputs import InputPool
from polystack.types import Signature


@dataclass(frozen=True)
class RunSettings:
    """How long each LoadGen run lasts; short by default, settable."""

    min_duration_ms: int = 300
    max_duration_ms: int = 5000
    min_query_count: int = 16
    seed: int = 0
    # untimed calls per batch shape before LoadGen starts: a fresh load's first call (40-60 ms for
    # MiniLM on OpenVINO, 4x a warm one) and the first calls after another configuration ran (cold
    # caches, sleeping threads) otherwise land in the run, and with ~100 queries a p99 *is* its slowest
    warmup_calls: int = 3


@dataclass
class ScenarioResult:
    scenario: str  # SingleStream, Offline, Server
    throughput: float  # completed samples per second
    p50_ms: float
    p90_ms: float
    p99_ms: float
    mean_ms: float
    queries: int
    valid: bool  # LoadGen's own verdict under MLPerf rules
    early_stopping_met: bool | None = None
    early_stop_p90_ms: float | None = None  # SingleStream: LoadGen's early-stopping p90 estimate
    target_qps: float | None = None  # Server: the rate asked of LoadGen
    # Server: the rate LoadGen actually scheduled. Poisson arrivals make it wander from the target:
    # with an instant model at 74 QPS, 16-query runs scheduled 44-90 QPS over six seeds
    scheduled_qps: float | None = None
    errors: int = 0
    error: str | None = None
    batch_p99_ms: float | None = None  # Offline / Server: compute time of one batch, p99
    mean_batch_size: float | None = None
    samples: int | None = None  # Offline: samples run
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if v is not None and v != {}}


def _lg() -> Any:
    import mlperf_loadgen

    return mlperf_loadgen


def _read_log(outdir: Path) -> dict[str, Any]:
    found: dict[str, Any] = {}
    path = outdir / "mlperf_log_detail.txt"
    if not path.exists():
        return found
    for line in path.read_text(errors="replace").splitlines():
        if not line.startswith(":::MLLOG "):
            continue
        try:
            entry = json.loads(line[len(":::MLLOG ") :])
        except ValueError:
            continue
        found[entry.get("key", "")] = entry.get("value")
    return found


def _ms(ns: Any) -> float:
    try:
        return float(ns) / 1e6
    except (TypeError, ValueError):
        return float("nan")


_RUN_LOCK = threading.Lock()  # LoadGen keeps global state: one test at a time per process
# Ctrl-C came while LoadGen ran: what is left of the run completes unrun, then KeyboardInterrupt (``_ctrl_c_after``)
_STOPPING = threading.Event()


@contextlib.contextmanager
def _ctrl_c_after() -> Iterator[None]:
    """Ctrl-C while LoadGen runs, noted and raised once it has returned: a KeyboardInterrupt raised in a Python
    callback LoadGen called (its QSL's, its SUT's, on the main thread) crossed its C++ and terminated the process
    (a segfault or an abort, its log folder left behind). The signal is seen at once through a wakeup file that a
    thread reads (the main thread runs no Python while it waits in LoadGen, an Offline run's whole length); a
    second Ctrl-C stops the process at once."""
    _STOPPING.clear()  # whatever an earlier run left
    if threading.current_thread() is not threading.main_thread():  # only the main thread gets the signal
        yield
        return

    def noted(signum: int, frame: Any) -> None:  # on the main thread, when it runs Python: never raises
        _STOPPING.set()

    reader, writer = socket.socketpair()
    writer.setblocking(False)

    def watch() -> None:
        seen = 0
        with contextlib.suppress(OSError):
            while got := reader.recv(16):
                seen += got.count(signal.SIGINT)
                if seen == 1:
                    _STOPPING.set()
                elif seen > 1:
                    sys.stderr.write("stopped at once (Ctrl-C twice)\n")
                    os._exit(130)

    wakeup: int | None = None
    installed = False
    before: Any = None
    watcher = threading.Thread(target=watch, name="ctrl-c", daemon=True)
    try:  # each step undone below, whichever of them failed (helper-263)
        wakeup = signal.set_wakeup_fd(writer.fileno(), warn_on_full_buffer=False)
        before, installed = signal.signal(signal.SIGINT, noted), True
        watcher.start()
        yield
    finally:
        if wakeup is not None:
            signal.set_wakeup_fd(wakeup)
        if installed:  # one installed from C is None: Python's default takes its place
            signal.signal(signal.SIGINT, before if before is not None else signal.default_int_handler)
        writer.close()  # the watcher reads its end and stops
        if watcher.is_alive():
            watcher.join(1.0)
        reader.close()
        stopped = _STOPPING.is_set()
        _STOPPING.clear()
    if stopped:
        raise KeyboardInterrupt


def _start(settings: Any, issue: Callable[[Any], None], flush: Callable[[], None], pool: InputPool) -> dict[str, Any]:
    lg = _lg()

    def issue_unless_stopping(samples: Any) -> None:
        if _STOPPING.is_set():  # Ctrl-C: the samples complete unrun, so that LoadGen's run ends at its minimum
            lg.QuerySamplesComplete([lg.QuerySampleResponse(s.id, 0, 0) for s in samples])
        else:
            issue(samples)

    outdir = Path(tempfile.mkdtemp(prefix="polystack-loadgen-"))
    try:
        out = lg.LogOutputSettings()
        out.outdir = str(outdir)
        out.copy_summary_to_stdout = False
        out.copy_detail_to_stdout = False
        log = lg.LogSettings()
        log.log_output = out
        log.enable_trace = False
        n = pool.size
        with _RUN_LOCK, _ctrl_c_after():
            sut = lg.ConstructSUT(issue_unless_stopping, flush)
            qsl = lg.ConstructQSL(n, n, lambda idx: None, lambda idx: None)
            try:
                lg.StartTestWithLogSettings(sut, qsl, settings, log)
            finally:
                lg.DestroyQSL(qsl)
                lg.DestroySUT(sut)
        return _read_log(outdir)
    finally:
        shutil.rmtree(outdir, ignore_errors=True)


def _test_settings(scenario: str, run: RunSettings) -> Any:
    lg = _lg()
    ts = lg.TestSettings()
    ts.scenario = getattr(lg.TestScenario, scenario)
    ts.mode = lg.TestMode.PerformanceOnly
    ts.min_duration_ms = run.min_duration_ms
    ts.max_duration_ms = max(run.max_duration_ms, run.min_duration_ms)
    ts.min_query_count = run.min_query_count
    ts.qsl_rng_seed = run.seed
    ts.sample_index_rng_seed = run.seed
    ts.schedule_rng_seed = run.seed
    return ts


def _result(scenario: str, log: dict[str, Any], throughput_key: str, errors: list[str]) -> ScenarioResult:
    return ScenarioResult(
        scenario=scenario,
        throughput=float(log.get(throughput_key) or 0.0),
        p50_ms=_ms(log.get("result_50.00_percentile_latency_ns")),
        p90_ms=_ms(log.get("result_90.00_percentile_latency_ns")),
        p99_ms=_ms(log.get("result_99.00_percentile_latency_ns")),
        mean_ms=_ms(log.get("result_mean_latency_ns")),
        queries=int(log.get("result_query_count") or 0),
        valid=log.get("result_validity") == "VALID",
        early_stopping_met=log.get("early_stopping_met"),
        errors=len(errors),
        error=errors[0] if errors else None,
    )


def _warm_up(model: LoadedModel, pool: InputPool, batch_sizes: Sequence[int], calls: int) -> None:
    for b in dict.fromkeys(batch_sizes):
        x = pool.first(b)
        for _ in range(calls):
            try:
                model.infer(x)
            except Exception:  # the run itself records the failure, with its count
                return


def _responses(items: Sequence[Item]) -> list[Any]:
    lg = _lg()
    return [lg.QuerySampleResponse(tag, 0, 0) for tag, _ in items]


def single_stream(
    model: LoadedModel, pool: InputPool, run: RunSettings = RunSettings(), expected_latency_s: float = 1e-3
) -> ScenarioResult:
    """One sample at a time, inferred inline in LoadGen's issue thread (no hand-off cost)."""
    lg = _lg()
    errors: list[str] = []

    def issue(samples: Any) -> None:
        for s in samples:
            try:
                model.infer(pool.batch([s.index]))
            except Exception as e:
                errors.append(f"{type(e).__name__}: {e}")
            lg.QuerySamplesComplete([lg.QuerySampleResponse(s.id, 0, 0)])

    _warm_up(model, pool, [1], run.warmup_calls)
    ts = _test_settings("SingleStream", run)
    ts.single_stream_expected_latency_ns = max(1000, int(expected_latency_s * 1e9))
    log = _start(ts, issue, lambda: None, pool)
    res = _result("SingleStream", log, "result_qps_without_loadgen_overhead", errors)
    ss = log.get("early_stopping_latency_ss")
    res.early_stop_p90_ms = _ms(ss) if ss else None
    return res


def _batched(
    scenario: str,
    instances: Sequence[LoadedModel],
    pool: InputPool,
    ts: Any,
    batch_size: int,
    throughput_key: str,
) -> ScenarioResult:
    lg = _lg()
    errors: list[str] = []

    def run_batch(model: LoadedModel, indices: Sequence[int]) -> None:
        if not _STOPPING.is_set():  # Ctrl-C: the batches queued complete unrun (an Offline query holds them all)
            model.infer(pool.batch(indices))

    def done(items: list[Item], error: BaseException | None) -> None:
        if error is not None:
            errors.append(f"{type(error).__name__}: {error}")
        lg.QuerySamplesComplete(_responses(items))

    batcher = MeasureBatcher(instances, run_batch, done, batch_size)
    try:
        log = _start(ts, lambda samples: batcher.submit_many([(s.id, s.index) for s in samples]), lambda: None, pool)
    finally:
        batcher.close()
    res = _result(scenario, log, throughput_key, errors)
    if batcher.batch_ns:
        res.batch_p99_ms = float(np.percentile(batcher.batch_ns, 99)) / 1e6
        res.mean_batch_size = float(np.mean(batcher.batch_sizes))
        res.samples = int(np.sum(batcher.batch_sizes))
    return res


def offline(
    model: LoadedModel,
    pool: InputPool,
    batch_size: int,
    run: RunSettings = RunSettings(),
    expected_qps: float = 1000.0,
    instances: int = 1,
    samples: int | None = None,
) -> ScenarioResult:
    """Every sample in one query; batches of ``batch_size`` run by ``instances`` worker threads sharing the model.

    LoadGen issues ``1.1 x expected_qps x min_duration`` samples; ``samples``, where given, is the count.
    """
    ts = _test_settings("Offline", run)
    ts.offline_expected_qps = max(1.0, expected_qps)
    ts.min_query_count = 1  # Offline: LoadGen reads it as the least number of samples
    if samples is not None:
        ts.min_query_count = samples
        # LoadGen's own count must not exceed ``samples`` by rounding
        ts.offline_expected_qps = max(
            1e-3, min(expected_qps, 0.99 * samples / (1.1 * max(run.min_duration_ms, 1) / 1000))
        )
    _warm_up(model, pool, [batch_size], run.warmup_calls)
    return _batched("Offline", [model] * max(1, instances), pool, ts, batch_size, "result_samples_per_second")


@dataclass
class _Entry:
    """What ``DynamicBatcher`` needs of a LoadedEntry, for a model loaded outside the engine."""

    name: str
    model: CheckedModel
    signature: Signature
    stats: ModelStats = field(default_factory=ModelStats)


def server(
    model: LoadedModel,
    pool: InputPool,
    target_qps: float,
    slo_ms: float,
    max_batch_size: int = 1,
    max_delay_ms: float = 0.0,
    run: RunSettings = RunSettings(),
    instances: int = 1,
) -> ScenarioResult:
    """Poisson arrivals at ``target_qps`` through the serving ``DynamicBatcher`` (as ``polystack serve`` runs it).

    Each LoadGen sample is one request of batch 1, validated and queued as a client's would be;
    ``instances`` worker threads share the one loaded model, as in serving.
    """
    from polystack.batching import BatchPolicy, DynamicBatcher

    lg = _lg()
    checked = model if isinstance(model, CheckedModel) else CheckedModel(model)
    entry = _Entry("tuning", checked, checked.signature)
    policy = BatchPolicy(
        max_batch_size=max(1, max_batch_size),
        max_queue_delay_ms=max(0.0, max_delay_ms),
        max_queue_size=1 << 22,
        instances=max(1, instances),
    )
    errors: list[str] = []
    sizes: list[int] = []
    compute_s: list[float] = []

    def on_batch(items: int, requests: int, seconds: float) -> None:
        sizes.append(items)
        compute_s.append(seconds)

    batcher = DynamicBatcher(entry, policy, on_batch=on_batch)

    def complete(tag: int) -> Callable[[Future[Any]], None]:
        def done(f: Future[Any]) -> None:
            if f.exception() is not None:
                errors.append(f"{type(f.exception()).__name__}: {f.exception()}")
            lg.QuerySamplesComplete([lg.QuerySampleResponse(tag, 0, 0)])

        return done

    def issue(samples: Any) -> None:
        for s in samples:
            try:
                batcher.submit(pool.batch([s.index])).add_done_callback(complete(s.id))
            except Exception as e:  # refused at the door (QueueFull, ...): still completes
                errors.append(f"{type(e).__name__}: {e}")
                lg.QuerySamplesComplete([lg.QuerySampleResponse(s.id, 0, 0)])

    ts = _test_settings("Server", run)
    ts.server_target_qps = max(0.1, target_qps)
    ts.server_target_latency_ns = int(slo_ms * 1e6)
    ts.server_max_async_queries = 0
    _warm_up(model, pool, [1, max_batch_size], run.warmup_calls)
    try:
        log = _start(ts, issue, lambda: None, pool)
    finally:
        batcher.close()
    res = _result("Server", log, "result_completed_samples_per_sec", errors)
    res.target_qps = target_qps
    scheduled = log.get("result_scheduled_samples_per_sec")
    res.scheduled_qps = float(scheduled) if scheduled else None
    if compute_s:
        res.batch_p99_ms = float(np.percentile(compute_s, 99)) * 1000
        res.mean_batch_size = float(np.mean(sizes))
    return res


def kept_up(r: ScenarioResult) -> bool:
    """The system completed at least 90% of the rate that arrived (Server; other runs always keep up).

    Judged against the rate LoadGen scheduled, not the target: a run of a slow model holds a few dozen
    Poisson arrivals, whose rate misses the target by 25% either way, and against the target an
    instant model "fell behind" in half its runs. LoadGen's schedule is seeded, so each (target,
    duration) pair drew the same arrivals every time: some targets failed for every configuration
    (74 QPS for MiniLM, at p99 55-67 ms under a 200 ms SLO) and decided the search.
    """
    if r.target_qps is None:
        return True
    arrived = r.scheduled_qps or r.target_qps
    return r.throughput >= 0.9 * arrived


def meets_slo(r: ScenarioResult, slo_ms: float) -> bool:
    """p99 within the SLO, no errors, and the system kept up with the arrivals."""
    return r.errors == 0 and math.isfinite(r.p99_ms) and r.p99_ms <= slo_ms and kept_up(r)


@dataclass
class QpsSearch:
    best: ScenarioResult | None  # the highest passing run
    tries: list[ScenarioResult]

    @property
    def qps(self) -> float:
        return (self.best.target_qps or 0.0) if self.best else 0.0


def find_max_qps(
    run_at: Callable[[float], ScenarioResult],
    slo_ms: float,
    upper_qps: float,
    steps: int = 5,
    start_qps: float | None = None,
) -> QpsSearch:
    """The highest target QPS meeting the SLO: bracket, then bisect.

    The first try is ``start_qps`` (default 0.6x the bound). Until a try misses, the rate doubles;
    until one passes, the next try is below what the overloaded run actually completed per second
    (its capacity) or a step down, whichever is lower; once both ends are known, the midpoint.

    From a guess the steps are 2x up and 0.5x down. From ``start_qps``, a rate that passed before,
    they are 1.25x and 0.8x: the answer is near, a miss there is mostly one noisy p99, and the
    coarse steps spent the few tries of a re-measurement far from it (a tree model's Server runs
    went 19k, 38k, 28k; the benchmark's re-measurements of one configuration jumped between 5.8k
    and 11.6k QPS).
    """
    lo, hi = 0.0, math.inf
    q = start_qps if start_qps else max(upper_qps, 1.0) * 0.6
    grow, back_off = (1.25, 0.8) if start_qps else (2.0, 0.5)
    best: ScenarioResult | None = None
    tries: list[ScenarioResult] = []
    for _ in range(max(1, steps)):
        r = run_at(q)
        tries.append(r)
        if r.error and r.errors and not r.throughput:  # the model fails outright: no point going on
            break
        if meets_slo(r, slo_ms):
            lo = q
            if best is None or q > (best.target_qps or 0):
                best = r
        else:
            hi = q
        if hi == math.inf:  # nothing missed yet: grow
            q = grow * q
        elif lo > 0:
            q = (lo + hi) / 2
        elif r.throughput > 0 and not kept_up(r):  # overloaded: go below what it managed
            q = min(hi * back_off, 0.8 * r.throughput)
        else:
            q = hi * back_off
    return QpsSearch(best, tries)
