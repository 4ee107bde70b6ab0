"""Custom metrics (the families a server's models define): Triton's text on /metrics, Triton's sharing of families
and series by name and labels, and refusals in words where tritonserver 2.51 refuses (or aborts)."""

from __future__ import annotations

import pytest
from prometheus_client.parser import text_string_to_metric_families

from polystack.custom_metrics import COUNTER, GAUGE, HISTOGRAM, CustomMetrics
from polystack.errors import InvalidRequest


def test_families_render_as_triton_writes_them() -> None:
    metrics = CustomMetrics()
    counter = metrics.family("my_counter", "My counter desc", COUNTER).series({"model": "x", "ver": "1"})
    gauge = metrics.family("my_gauge", "My gauge desc", GAUGE).series({"model": "x"})
    histogram = metrics.family("my_histogram", "My histogram desc", HISTOGRAM).series({"model": "x"}, [0.1, 1, 10])
    metrics.family("my_gauge", "ignored", GAUGE).series().set(1.25)  # no labels; the first description stays
    counter.increment(1)
    counter.increment(2.5)
    gauge.set(3.5)
    gauge.increment(-1)
    for value in (0.5, 5, 100):
        histogram.observe(value)
    assert metrics.render().decode() == (
        "# HELP my_counter My counter desc\n"
        "# TYPE my_counter counter\n"
        'my_counter{model="x",ver="1"} 3.5\n'
        "# HELP my_gauge My gauge desc\n"
        "# TYPE my_gauge gauge\n"
        "my_gauge 1.25\n"
        'my_gauge{model="x"} 2.5\n'
        "# HELP my_histogram My histogram desc\n"
        "# TYPE my_histogram histogram\n"
        'my_histogram_count{model="x"} 3\n'
        'my_histogram_sum{model="x"} 105.5\n'
        'my_histogram_bucket{model="x",le="0.1"} 0\n'
        'my_histogram_bucket{model="x",le="1"} 1\n'
        'my_histogram_bucket{model="x",le="10"} 2\n'
        'my_histogram_bucket{model="x",le="+Inf"} 3\n'
    )
    assert (counter.value(), gauge.value()) == (3.5, 2.5)
    # a Prometheus scraper reads it (the histogram's samples as its own)
    parsed = {f.name: f for f in text_string_to_metric_families(metrics.render().decode())}
    assert parsed["my_histogram"].type == "histogram" and parsed["my_counter"].samples[0].value == 3.5


def test_the_same_name_and_labels_are_the_same_family_and_series() -> None:
    metrics = CustomMetrics()
    first = metrics.family("c", "one", COUNTER).series({"model": "twice"})
    again = metrics.family("c", "two", COUNTER).series({"model": "twice"})
    first.increment(1)
    again.increment(2)
    assert first is again and first.value() == 3
    assert CustomMetrics().render() == b""
    # a model loaded again with other buckets gets the series it made, as Triton's does
    histogram = metrics.family("h", "", HISTOGRAM).series({"m": "x"}, [1, 2])
    assert metrics.family("h", "", HISTOGRAM).series({"m": "x"}, [5]) is histogram and histogram.buckets == (1, 2)


def test_the_series_the_models_make_are_bounded() -> None:
    metrics = CustomMetrics(most=3)
    family = metrics.family("c", "", COUNTER)
    for i in range(3):
        family.series({"i": str(i)})
    family.series({"i": "0"})  # one it has: no room taken
    with pytest.raises(InvalidRequest, match="hold 3 custom metric series already"):
        metrics.family("g", "", GAUGE).series({"i": "3"})


def test_a_series_goes_with_its_last_holder_and_a_family_without_series_is_not_shown() -> None:
    """tritonserver 2.51 (run here beside polystack): a deleted ``MetricFamily`` object's series leave /metrics, a
    family with no series shows no lines, and a series made again starts from nothing."""
    metrics = CustomMetrics(most=2)
    family = metrics.family("c", "help", COUNTER)
    one, kept = family.series({"k": "one"}), family.series({"k": "kept"})
    again = family.series({"k": "one"})  # a second holder of the same series
    one.increment(2)
    family.release(one)
    assert 'c{k="one"} 2' in metrics.render().decode()  # still held
    family.release(again)
    assert metrics.render().decode() == '# HELP c help\n# TYPE c counter\nc{k="kept"} 0\n'
    assert family.series({"k": "new"}).value() == 0  # its room is free again (most=2)
    family.release(kept)
    metrics.family("e", "", GAUGE)
    assert b"kept" not in metrics.render() and b"# HELP e" not in metrics.render()
    assert family.series({"k": "one"}).value() == 0  # made again: from nothing
    family.release(one)  # a release of a series no longer held changes nothing
    assert 'c{k="one"} 0' in metrics.render().decode()


def test_a_histogram_without_bounds_counts_in_its_inf_bucket_alone() -> None:
    """tritonserver 2.51 takes buckets=[] (helper-177, L0_backend_python custom_metrics); polystack refused it."""
    metrics = CustomMetrics()
    histogram = metrics.family("h", "", HISTOGRAM).series(buckets=[])
    histogram.observe(3)
    histogram.observe(4)
    assert [ln for ln in metrics.render().decode().splitlines() if ln.startswith("h")] == [
        "h_count 2", "h_sum 7", 'h_bucket{le="+Inf"} 2',
    ]  # fmt: skip


@pytest.mark.parametrize(
    ("act", "words"),
    [
        (lambda m: m.family("c", "", COUNTER).series().increment(-1), "can only be incremented monotonically"),
        (lambda m: m.family("c", "", COUNTER).series().set(10), "KIND_COUNTER does not support Set"),
        (lambda m: m.family("c", "", COUNTER).series().observe(1), "KIND_COUNTER does not support Observe"),
        (lambda m: m.family("g", "", GAUGE).series().observe(1), "KIND_GAUGE does not support Observe"),
        (lambda m: m.family("h", "", HISTOGRAM).series(buckets=[1]).set(1), "KIND_HISTOGRAM does not support Set"),
        (lambda m: m.family("h", "", HISTOGRAM).series(buckets=[1]).value(), "KIND_HISTOGRAM does not support Value"),
        (lambda m: m.family("h", "", HISTOGRAM).series(), "Missing required buckets"),
        (lambda m: m.family("c", "", COUNTER).series(buckets=[1]), "Unexpected buckets found"),
        (lambda m: m.family("h", "", HISTOGRAM).series(buckets=[2, 1]), "increasing order"),
        (lambda m: m.family("c", "", GAUGE), "Family name already exists with different type"),
        (lambda m: m.family("bad-name!", "", GAUGE), "is not a Prometheus metric name"),
        (lambda m: m.family("nv_inference_count", "", GAUGE), "starts as the server's own metrics do"),
        (lambda m: m.family("g", "", GAUGE).series({"model": 1}), "its value is a string, got int"),
        (lambda m: m.family("g", "", GAUGE).series({"le": "x"}), "not a Prometheus label name"),
        (lambda m: m.family("g", "", GAUGE).series({"__name__": "x"}), "not a Prometheus label name"),
    ],
)
def test_what_a_kind_does_not_take_is_refused_in_words_and_changes_nothing(act, words: str) -> None:  # type: ignore[no-untyped-def]
    metrics = CustomMetrics()
    metrics.family("c", "", COUNTER).series()
    before = metrics.render()
    with pytest.raises(InvalidRequest, match=words):
        act(metrics)
    assert metrics.render().startswith(before.rstrip(b"\n")) and b"c 0\n" in metrics.render()
