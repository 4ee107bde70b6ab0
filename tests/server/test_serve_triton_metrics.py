"""Triton's metric names (``serve --triton-metrics``): a real server's ``/metrics`` shows ``nv_inference_*`` as
Triton's does, agreeing with its statistics extension, in a text format Prometheus' own parser reads; and the
rendering on its own (failure reasons, the cache's families, label escaping)."""

from __future__ import annotations

import shutil
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import tritonclient.http as httpclient
from conftest import Raw
from prometheus_client.parser import text_string_to_metric_families
from servekit import cli_server, free_port, start, until

from polystack.examples import mlp_onnx
from polystack.server.app import ServerThread
from polystack.server.triton_metrics import CpuSampler, Tally, VersionFigures, render
from polystack.stats import ModelStats
from polystack.store import ModelRecord, Store


@pytest.fixture(scope="module")
def triton_server(model_store: tuple[Store, dict[str, ModelRecord]]) -> Iterator[ServerThread]:
    st = start(model_store[0], models=["mlp", "ident64"], triton_metrics=True, allow_model_control=True)
    yield st
    st.stop()


def samples(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """/metrics by (name, labels), a counter's under its family's name (Prometheus' parser adds ``_total``)."""
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics").read().decode()
    return {
        (s.name.removesuffix("_total") if family.type == "counter" else s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if not s.name.endswith("_created")
    }


def test_triton_names_agree_with_the_statistics(triton_server: ServerThread) -> None:
    client = httpclient.InferenceServerClient(f"127.0.0.1:{triton_server.http_port}")
    x = httpclient.InferInput("x", [3, 16], "FP32")
    x.set_data_from_numpy(np.ones((3, 16), np.float32))
    for _ in range(4):
        client.infer("mlp", [x])
    status, _ = Raw(triton_server.http_port).json(
        "POST", "/v2/models/mlp/infer", {"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 3], "data": [1, 2, 3]}]}
    )
    assert status == 400  # a refusal: Triton's OTHER
    got = samples(triton_server.http_port)
    [stats] = client.get_inference_statistics("mlp", "1")["model_stats"]
    mlp = (("model", "mlp"), ("version", "1"))

    def nv(name: str, **extra: str) -> float:
        return got[(name, tuple(sorted((*mlp, *extra.items()))))]

    durations = stats["inference_stats"]
    assert nv("nv_inference_request_success") == durations["success"]["count"] >= 4
    assert nv("nv_inference_count") == stats["inference_count"] >= 12
    assert nv("nv_inference_exec_count") == stats["execution_count"]
    for name, phase in (("request", "success"), ("queue", "queue"), ("compute_infer", "compute_infer")):
        assert nv(f"nv_inference_{name}_duration_us") == durations[phase]["ns"] // 1000
    assert nv("nv_inference_request_failure", reason="OTHER") == durations["fail"]["count"] >= 1
    assert {nv("nv_inference_request_failure", reason=r) for r in ("REJECTED", "CANCELED", "BACKEND")} == {0}
    assert nv("nv_inference_pending_request_count") == 0
    assert ("nv_inference_count", (("model", "ident64"), ("version", "1"))) in got  # every version served
    assert 0 <= got[("nv_cpu_utilization", ())] <= 1 and got[("nv_cpu_memory_total_bytes", ())] > 0
    # polystack's own names are there as before
    assert got[("polystack_inference_request_success", mlp)] == durations["success"]["count"]
    assert not [k for k in got if k[0].startswith("nv_cache")]  # no model here enables the cache


def test_without_the_flag_there_are_no_triton_names(server: ServerThread) -> None:
    assert not [k for k in samples(server.http_port) if k[0].startswith("nv_")]


def test_the_rendering_maps_reasons_shows_the_cache_and_escapes_labels() -> None:
    stats = {
        "inference_count": 7, "execution_count": 2,
        "inference_stats": {k: {"count": 3, "ns": 4_500_999} for k in (
            "success", "fail", "queue", "compute_input", "compute_infer", "compute_output", "cache_hit", "cache_miss")},
    }  # fmt: skip
    odd = VersionFigures('we"ird\\name\n', "2", stats, {"QueueFull": 2, "DeadlineExceeded": 1, "Cancelled": 4,
                                                         "BackendError": 5, "RuntimeRefused": 2, "InvalidTensor": 6,
                                                         "Internal": 1}, pending=9, cached=True)  # fmt: skip
    text = render([odd]).decode()
    assert 'model="we\\"ird\\\\name\\n"' in text  # the text format's escapes
    families = {f.name: f for f in text_string_to_metric_families(text)}
    failures = {s.labels["reason"]: s.value for s in families["nv_inference_request_failure"].samples}
    # a full queue counts nowhere, as tritonserver 2.51 counts it (helper-114, -115): REJECTED is the timeout alone
    assert failures == {"REJECTED": 1, "CANCELED": 4, "BACKEND": 7, "OTHER": 7}  # values the runtime refused: BACKEND
    assert families["nv_inference_pending_request_count"].samples[0].value == 9
    assert families["nv_inference_queue_duration_us"].samples[0].value == 4500  # microseconds, whole
    assert families["nv_cache_num_hits_per_model"].samples[0].value == 3
    assert families["nv_cache_miss_duration_per_model"].samples[0].value == 4500
    assert families["nv_inference_request_success"].type == "counter"  # no _total: Triton's names
    assert "nv_inference_request_success{" in text and "_total" not in text
    assert "nv_cpu" not in text


def test_triton_names_count_on_across_a_reload_of_the_same_version(triton_server: ServerThread) -> None:
    """As Triton's reporter, shared by a version's instances (helper-78: successes restarted with the new instance
    while failures counted on); the statistics of the new instance start anew, as Triton's do."""
    client = httpclient.InferenceServerClient(f"127.0.0.1:{triton_server.http_port}")
    raw = Raw(triton_server.http_port)
    x = httpclient.InferInput("x", [1, 16], "FP32")
    x.set_data_from_numpy(np.ones((1, 16), np.float32))
    client.infer("mlp", [x])
    raw.json("POST", "/v2/models/mlp/infer", {"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 3], "data": [1, 2, 3]}]})
    mlp = (("model", "mlp"), ("version", "1"))
    key = {"ok": ("nv_inference_request_success", mlp), "n": ("nv_inference_count", mlp),
           "bad": ("nv_inference_request_failure", tuple(sorted((*mlp, ("reason", "OTHER")))))}  # fmt: skip
    before = {k: samples(triton_server.http_port)[v] for k, v in key.items()}
    client.load_model("mlp", config='{"max_batch_size": 8}')  # a new instance of version 1
    triton_server.server.plane.model_loads.wait_retired()
    assert {k: samples(triton_server.http_port)[v] for k, v in key.items()} == before
    client.infer("mlp", [x])
    after = {k: samples(triton_server.http_port)[v] for k, v in key.items()}
    assert after == {"ok": before["ok"] + 1, "n": before["n"] + 1, "bad": before["bad"]}
    assert client.get_inference_statistics("mlp", "1")["model_stats"][0]["inference_stats"]["success"]["count"] == 1


def test_a_tally_sums_live_and_closed_instances_and_folds_the_oldest() -> None:
    tally, instances = Tally(), [ModelStats() for _ in range(6)]
    for i, stats in enumerate(instances):
        stats.executed(2, 1000 * (i + 1))
        tally.add(stats)
    tally.fold(instances[-1])  # closed: final
    instances[-1].executed(5, 1)  # not counted: it is folded (a closed instance runs nothing more)
    instances[0].executed(3, 1)  # folded when the fifth came (more than four live): not counted either
    instances[4].executed(1, 1)  # live: counted
    figures = tally.figures()
    assert (figures["execution_count"], figures["inference_count"]) == (7, 13)
    assert figures["inference_stats"]["compute_infer"]["ns"] == sum(1000 * (i + 1) for i in range(6)) + 1


ENSEMBLE = (
    'platform: "ensemble"\nmax_batch_size: 4\ninput [ { name: "x", data_type: TYPE_FP32, dims: [ 16 ] } ]\n'
    'output [ { name: "y", data_type: TYPE_FP32, dims: [ 4 ] } ]\nensemble_scheduling { step [ { model_name: '
    '"mlp", model_version: -1, input_map { key: "x" value: "x" }, output_map { key: "y" value: "y" } } ] }\n'
)


def test_a_version_served_again_counts_anew_and_a_folder_changing_kind_keeps_its_series(tmp_path: Path) -> None:
    """helper-79: an ensemble's version served again resumed its old count (Triton's reporter is gone once nothing
    serves the version); a folder turning from a model into an ensemble of the same version lost every series of
    the name (the model's retirement took the ensemble's), so its refusals were counted nowhere."""
    repo = tmp_path / "models"
    mlp_onnx(repo / "mlp" / "1" / "model.onnx")
    (repo / "e" / "1").mkdir(parents=True)
    (repo / "e" / "config.pbtxt").write_text(ENSEMBLE)
    mlp_onnx(repo / "sw" / "1" / "model.onnx", seed=3)
    port = free_port()
    args = ["--model-repository", str(repo), "--grpc-port", "-1", "--allow-model-control", "--triton-metrics"]
    with cli_server(tmp_path / "home", args, port, tmp_path / "serve.log"):
        client = httpclient.InferenceServerClient(f"127.0.0.1:{port}")
        x = httpclient.InferInput("x", [1, 16], "FP32")
        x.set_data_from_numpy(np.ones((1, 16), np.float32))

        def success(name: str, version: str = "1") -> float | None:
            return samples(port).get(("nv_inference_request_success", (("model", name), ("version", version))))

        for _ in range(3):
            client.infer("e", [x])
        (repo / "e" / "2").mkdir()
        client.load_model("e")  # version 2 in its place
        assert success("e", "1") is None
        shutil.rmtree(repo / "e" / "2")
        client.load_model("e")  # version 1 again: a new count
        client.infer("e", [x])
        assert success("e") == 1
        # sw's folder holds an ensemble now, of the same version
        client.infer("sw", [x])
        shutil.rmtree(repo / "sw" / "1")
        (repo / "sw" / "1").mkdir()
        (repo / "sw" / "config.pbtxt").write_text(ENSEMBLE)
        client.load_model("sw")
        assert until(lambda: client.get_model_config("sw")["platform"] == "ensemble", 10)
        time.sleep(0.5)  # the model's retirement, on the loader thread
        client.infer("sw", [x])
        status, _ = Raw(port).json("POST", "/v2/models/sw/infer", {"inputs": [{"name": "q", "datatype": "FP32", "shape": [1], "data": [1]}]})
        assert status == 400
        got = samples(port)
        sw = (("model", "sw"), ("version", "1"))
        assert got[("polystack_inference_request_success", sw)] >= 1
        assert got[("nv_inference_request_failure", tuple(sorted((*sw, ("reason", "OTHER")))))] == 1


def test_tritons_metrics_config_leaves_the_duration_counters_out_and_adds_summaries(
    model_store: tuple[Store, dict[str, ModelRecord]], tmp_path: Path
) -> None:
    """tritonserver's --metrics-config counter_latencies=false: no nv_inference_*_duration_us counters (the
    flag was refused as unknown); summary_latencies=true: Triton's summaries, with the quantiles summary_quantiles
    gives (a pair Triton cannot read left out, in the log); they are among Triton's names, so they need
    --triton-metrics."""
    from servekit import mlp_ones, refused_at_start

    store, _ = model_store
    port = free_port()
    args = ["mlp", "--grpc-port", "-1", "--triton-metrics", "--metrics-config", "counter_latencies=false",
            "--metrics-config", "summary_latencies=true",
            "--metrics-config", "summary_quantiles=0.5:0.05,0.9,0.99:0.001"]  # fmt: skip
    with cli_server(store.settings.home, args, port, tmp_path / "serve.log"):
        httpclient.InferenceServerClient(f"127.0.0.1:{port}").infer("mlp", [mlp_ones()])
        text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    families = {f.name: f for f in text_string_to_metric_families(text)}
    assert "nv_inference_count" in families and "nv_inference_exec_count" in families
    assert not {n for n in families if n.startswith("nv_inference") and n.endswith("_duration_us")}, families
    summary = families["nv_inference_request_summary_us"]
    assert summary.type == "summary"
    assert sorted(s.labels.get("quantile", "") for s in summary.samples) == ["", "", "0.5", "0.99"]  # count, sum
    assert "'0.9' has no ':'" in (tmp_path / "serve.log").read_text()
    for args, words in (
        (["--metrics-config", "summary_latencies=true"], "which --triton-metrics shows: add --triton-metrics"),
        (["--triton-metrics", "--metrics-config", "summary_quantiles=0.5:0.05,2:0.01"], "quantile 2 in '2:0.01' is "
         "outside [0, 1]"),
        (["--metrics-config", "counter_latencies"], "--metrics-config option format is <setting>=<value>. Got"),
    ):  # fmt: skip
        assert words in refused_at_start(tmp_path, args)
    # Triton compares the text (helper-115): counter_latencies=0 leaves the counters on, summary_latencies=yes and
    # histogram_latencies=1 change nothing; the log says so (polystack read them as booleans, and exited 2)
    args = ["mlp", "--grpc-port", "-1", "--triton-metrics", "--metrics-config", "counter_latencies=0",
            "--metrics-config", "summary_latencies=yes", "--metrics-config", "histogram_latencies=1"]  # fmt: skip
    with cli_server(store.settings.home, args, port, tmp_path / "serve2.log"):
        text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    assert "nv_inference_request_duration_us" in text and "summary" not in text
    assert "Triton reads only 'true' and 'false' here; '0' changes nothing" in (tmp_path / "serve2.log").read_text()


def test_cpu_utilization_is_sampled_on_its_own_every_half_interval_and_shown_as_sampled() -> None:
    """As Triton's poll thread samples it (helper-272: read at each scrape, it was the utilization since anyone's
    last scrape, so two scrapers split the window): every scrape shows the last sample."""
    sampler = CpuSampler(interval_ms=200).start()  # a sample every 0.1 s
    busy = threading.Event()

    def spin() -> None:
        while not busy.is_set():
            sum(range(1000))

    spinner = threading.Thread(target=spin, daemon=True)
    spinner.start()
    try:
        assert until(lambda: sampler.utilization > 0, 5)  # a core busy: a share of the host's time
    finally:
        busy.set()
        sampler.stop()
    assert not sampler._thread.is_alive() and 0 < sampler.utilization <= 1
    texts = [render([], cpu=sampler).decode() for _ in range(2)]
    shown = [{f.name: f.samples[0].value for f in text_string_to_metric_families(t) if f.samples} for t in texts]
    assert shown[0]["nv_cpu_utilization"] == shown[1]["nv_cpu_utilization"] == float(f"{sampler.utilization:g}")
    assert shown[0]["nv_cpu_memory_total_bytes"] > 0


def test_metrics_interval_ms_is_read_as_triton_reads_it(tmp_path: Path) -> None:
    from servekit import refused_at_start

    for value, words in (("0", "give milliseconds, 1 or more"), ("1.5", "--metrics-interval-ms")):
        assert words in refused_at_start(tmp_path, ["--triton-metrics", "--metrics-interval-ms", value])
