"""ServerMetrics on its own: a version no longer served leaves /metrics for good, until it is served again."""

from __future__ import annotations

import re
import threading

from polystack.metrics import ServerMetrics


def _text(metrics: ServerMetrics) -> str:
    return metrics.render().decode()


def test_a_retired_version_leaves_metrics_until_it_is_served_again() -> None:
    m = ServerMetrics()
    m.model("m", "1").success.inc()
    m.failed("m", "1", "InvalidTensor")
    m.failed("m", "", "VersionNotFound")  # a version m never had
    m.model("other", "1").success.inc()
    m.retire("m", "1")
    m.forget_name("m")
    m.model("m", "1").success.inc()  # a late request of the retired version: counted nowhere
    m.failed("m", "1", "InvalidTensor")
    text = _text(m)
    assert 'model="m"' not in text and 'polystack_inference_request_success_total{model="other",version="1"} 1.0' in text
    m.serving("m", "1")
    m.model("m", "1").success.inc()
    assert 'polystack_inference_request_success_total{model="m",version="1"} 1.0' in _text(m)  # afresh


def test_late_failures_racing_a_retirement_never_bring_its_series_back() -> None:
    """A review saw the failure series come back in 212 of 500 such races before the lock."""
    for _ in range(200):
        m = ServerMetrics()
        m.failed("m", "1", "X")
        stop = threading.Event()

        def fail(m: ServerMetrics = m, stop: threading.Event = stop) -> None:
            while not stop.is_set():
                m.failed("m", "1", "X")
                m.model("m", "1").success.inc()

        t = threading.Thread(target=fail)
        t.start()
        m.retire("m", "1")
        stop.set()
        t.join(10)
        assert 'model="m"' not in _text(m)


def test_polystacks_own_families_name_no_triton_family() -> None:
    """Triton's metrics tests look for a family's absence by its name in the whole text (helper-166: L0_metrics'
    test_cache_counters_missing found nv_cache_num_hits_per_model in polystack_cache_hits' help line)."""
    m = ServerMetrics()
    m.model("m", "1").success.inc()
    assert "nv_" not in _text(m)


def test_a_models_series_are_those_it_records_with_no_created_series() -> None:
    """helper-272: 113 series a model version, the response cache's and a decoupled model's first response among
    them for every model, and a ``_created`` series beside each counter and histogram (Triton writes none)."""
    m = ServerMetrics()
    m.model("plain", "1").success.inc()
    cached = m.model("cached", "1")
    cached.cache_hits.inc()
    cached.cache_hit_seconds.inc(0.001)
    m.model("streams", "1").first_response.observe(0.002)
    text = _text(m)
    assert "_created" not in text
    assert 'model="plain"' in text and not re.search(r'(cache|first_response)\S*\{model="plain"', text)
    assert 'polystack_cache_hits_total{model="cached",version="1"} 1.0' in text
    assert 'polystack_cache_misses_total{model="cached"' not in text  # none yet
    assert 'polystack_inference_first_response_duration_seconds_count{model="streams",version="1"} 1.0' in text
    assert not re.search(r'first_response\S*\{model="cached"', text)


def test_a_series_first_used_after_its_version_was_retired_is_not_shown() -> None:
    m = ServerMetrics()
    bound = m.model("m", "1")  # held by a request in flight as its version is unloaded
    bound.success.inc()
    m.retire("m", "1")
    bound.cache_misses.inc()  # its first use: counted nowhere, as a late request's are
    bound.first_response.observe(0.1)
    assert 'model="m"' not in _text(m)
