"""Triton's latency summaries (``serve --triton-metrics --metrics-config summary_latencies=true``): a window's
exact quantiles over the last minute, its count and sum since the start, Triton's ``summary_quantiles``, and a real
server's ``nv_*_summary_us`` agreeing with its counters, in a text format Prometheus' own parser reads."""

from __future__ import annotations

import json
import logging
import math
import urllib.request

import numpy as np
import pytest
import tritonclient.http as httpclient
from prometheus_client.parser import text_string_to_metric_families
from servekit import caught_logs, mlp_ones, start

from polystack.errors import InvalidRequest
from polystack.server.latency_summaries import DEFAULT_QUANTILES, VersionSummaries, Window, parse_quantiles
from polystack.server.model_config import ConfigFile
from polystack.server.response_cache import CacheConfig
from polystack.stats import ModelStats, Outcome
from polystack.store import ModelRecord, Store


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_a_window_gives_exact_quantiles_of_its_last_minute_and_counts_since_the_start() -> None:
    clock = Clock()
    window = Window(60.0, 5, clock)
    for us in range(1, 1001):  # 1..1000 us
        window.observe(us)
    count, total, (p50, p90, p999) = window.read((0.5, 0.9, 0.999))
    assert (count, total) == (1000, 500_500)
    assert (p50, p90, p999) == (500, 900, 999)  # the smallest value at or above each rank: a value observed
    clock.now += 30  # half a minute on: still in the window
    window.observe(5000, times=1000)  # a batch of 1000 requests, one execution's time each
    count, total, (p50, p99) = window.read((0.5, 0.99))
    assert (count, total, p50, p99) == (2000, 5_500_500, 1000, 5000)
    clock.now += 40  # the first thousand are past the minute: gone from the quantiles, not from count and sum
    count, total, (p50,) = window.read((0.5,))
    assert (count, total, p50) == (2000, 5_500_500, 5000)
    clock.now += 60
    count, total, values = window.read((0.5, 0.99))
    assert (count, total) == (2000, 5_500_500) and all(math.isnan(v) for v in values)  # Triton shows Nan


def test_the_statistics_hand_their_durations_to_the_summaries() -> None:
    """What the counters count is what the summaries observe: a success, its queue time, each execution's phases
    once per request it served, a cache hit's lookup and a miss's insertion; a failure is in none."""
    stats, summaries = ModelStats(), VersionSummaries()
    stats.summaries = summaries
    stats.add("queue", 7_999)
    stats.executed(8, 120_000, requests=4, input_ns=3_000, output_ns=2_000)
    stats.add("fail", 50_000)
    stats.cache_hit(9_000)
    stats.add("cache_miss", 11_000)

    def read(kind: str) -> tuple[int, int, list[float]]:
        return summaries.windows[kind].read((0.5,))

    assert read("compute_infer") == (4, 480, [120.0])  # whole microseconds, as Triton's (ns / 1000)
    assert read("compute_input")[:2] == (4, 12) and read("compute_output")[:2] == (4, 8)
    assert read("cache_hit") == (1, 9, [9.0]) and read("cache_miss") == (1, 11, [11.0])
    # the queue time (7,999 ns: 7 us), and a hit's, none: Triton's queue summary has cached requests too
    assert read("queue") == (2, 7, [0.0])
    assert read("success")[0] == 0
    Outcome(stats).settle("success", 250_000)
    held = Outcome(stats, held=True)
    held.settle("success", 400_000)
    assert read("success") == (1, 250, [250.0])  # a server's success counts when its answer is ready
    held.confirm()
    Outcome(stats).settle("fail", 1_000)
    assert read("success")[:2] == (2, 650)


def test_summary_quantiles_as_triton_reads_them() -> None:
    assert parse_quantiles("0.5:0.05,0.99:0.001") == (0.5, 0.99)
    with caught_logs("polystack.server", logging.ERROR) as logs:
        # a pair without ':' or with a part that is no number is left out, in the log, as Triton leaves it
        assert parse_quantiles("0.5:0.05,0.9,x:0.1,0.95:0.001") == (0.5, 0.95)
        assert parse_quantiles("nonsense") == DEFAULT_QUANTILES  # none left: Triton's defaults
    assert len(logs) == 3 and "the format is <quantile>:<error>" in logs[0].getMessage()
    with pytest.raises(InvalidRequest, match=r"quantile 1\.5 in '1\.5:0\.01' is outside \[0, 1\]"):
        parse_quantiles("0.5:0.05,1.5:0.01")
    with pytest.raises(InvalidRequest, match=r"error nan in '0\.5:nan' is outside \[0, 1\]"):
        parse_quantiles("0.5:nan")
    assert parse_quantiles("0.5:0.1,0.9:0.01,0.5:0.01") == (0.5, 0.9)  # one series a quantile


def test_the_last_summary_latencies_given_is_the_one_taken_as_in_triton() -> None:
    from polystack.cli.serve import _metrics_config

    assert _metrics_config(["summary_latencies=true", "summary_quantiles=0.9:0.01"], True) == (True, (0.9,))
    assert _metrics_config(["summary_latencies=true", "summary_latencies=false"], True) == (True, ())
    assert _metrics_config(["counter_latencies=false", "summary_latencies=true"], True) == (False, DEFAULT_QUANTILES)


def scrape(port: int) -> tuple[str, dict[tuple[str, tuple[tuple[str, str], ...]], float]]:
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    samples = {  # a counter's under its family's name (Prometheus' parser adds _total)
        (s.name.removesuffix("_total") if family.type == "counter" else s.name, tuple(sorted(s.labels.items()))): (
            s.value
        )
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }
    return text, samples


def test_a_server_shows_tritons_summaries_agreeing_with_its_counters(
    model_store: tuple[Store, dict[str, ModelRecord]],
) -> None:
    """A model's summaries count what its counters count (Triton's documentation: their _count and _sum match);
    a model with the response cache has the cache's summaries and no request summary (Triton's DLIS-4762); a reload
    of the version counts on, as Triton's reporter does."""
    store, _ = model_store
    cached = ConfigFile(json.dumps({"response_cache": {"enable": True}}))
    st = start(
        store, models=["mlp", "ident64"], triton_metrics=True, summary_quantiles=(0.5, 0.99), allow_model_control=True,
        model_configs={"ident64": cached}, response_cache=CacheConfig(1 << 20),
    )  # fmt: skip
    try:
        client = httpclient.InferenceServerClient(f"127.0.0.1:{st.http_port}")
        for _ in range(20):
            client.infer("mlp", [mlp_ones()])
        a = httpclient.InferInput("a", [2, 4], "INT64")
        a.set_data_from_numpy(np.arange(8, dtype=np.int64).reshape(2, 4))
        for _ in range(3):
            client.infer("ident64", [a])  # a miss, then two hits
        text, got = scrape(st.http_port)
        mlp, ident = (("model", "mlp"), ("version", "1")), (("model", "ident64"), ("version", "1"))

        def nv(name: str, labels: tuple[tuple[str, str], ...], **extra: str) -> float:
            return got[(name, tuple(sorted((*labels, *extra.items()))))]

        assert "# TYPE nv_inference_request_summary_us summary" in text
        assert nv("nv_inference_request_summary_us_count", mlp) == nv("nv_inference_request_success", mlp) == 20
        # the counter is the whole microseconds of the sum of durations, the summary the sum of each one's
        total = nv("nv_inference_request_duration_us", mlp)
        assert total - 20 <= nv("nv_inference_request_summary_us_sum", mlp) <= total
        p50 = nv("nv_inference_request_summary_us", mlp, quantile="0.5")
        p99 = nv("nv_inference_request_summary_us", mlp, quantile="0.99")
        assert 0 < p50 <= p99  # values observed, in microseconds
        assert nv("nv_inference_compute_infer_summary_us_count", mlp) == 20
        assert nv("nv_inference_queue_summary_us_count", mlp) == 20
        assert 'nv_inference_request_summary_us{model="mlp",version="1",quantile="0.5"}' in text  # Triton's order
        # the cached model: its hits and its miss, and no request summary
        assert nv("nv_cache_hit_summary_per_model_count", ident) == 2
        assert nv("nv_cache_miss_summary_per_model_count", ident) == 1
        assert ("nv_inference_request_summary_us_count", ident) not in got
        assert nv("nv_inference_queue_summary_us_count", ident) == 3  # cached requests too, as in Triton
        assert ("nv_cache_hit_summary_per_model_count", mlp) not in got
        client.load_model("mlp", config='{"max_batch_size": 8}')  # a new instance of version 1
        st.server.plane.model_loads.wait_retired()
        client.infer("mlp", [mlp_ones()])
        _, got = scrape(st.http_port)
        assert nv("nv_inference_request_summary_us_count", mlp) == 21  # counts on across the reload
    finally:
        st.stop()


def test_without_summary_latencies_there_are_no_summaries(model_store: tuple[Store, dict[str, ModelRecord]]) -> None:
    st = start(model_store[0], models=["mlp"], triton_metrics=True)
    try:
        httpclient.InferenceServerClient(f"127.0.0.1:{st.http_port}").infer("mlp", [mlp_ones()])
        text, _ = scrape(st.http_port)
        assert "nv_inference_request_duration_us" in text and "summary" not in text
        assert all(t.summaries is None for t in st.server.plane.tallies.values())  # nothing kept per request
    finally:
        st.stop()
