"""``polystack serve`` exporting its spans over OTLP/HTTP as the OTEL_* variables say, to a collector
stand-in on 127.0.0.1 that decodes what it receives with OpenTelemetry's own protobuf messages."""

from __future__ import annotations

import ast
import http.server
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import tritonclient.http as httpclient
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2 as trace_service
from servekit import cli_server, free_port, mlp_ones

from polystack.store import ModelRecord, Store

TRACE_ID = "0af7651916cd43dd8448eb211c80319c"
TRACEPARENT = f"00-{TRACE_ID}-b7ad6b7169203331-01"


class Collector(http.server.ThreadingHTTPServer):
    """Takes OTLP/HTTP trace exports (POST /v1/traces, protobuf) and keeps them."""

    def __init__(self) -> None:
        self.exports: list[Any] = []
        self.paths: list[str] = []
        collector = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                collector.paths.append(self.path)
                collector.exports.append(trace_service.ExportTraceServiceRequest.FromString(body))
                self.send_response(200)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        super().__init__(("127.0.0.1", 0), Handler)

    def spans(self) -> list[tuple[dict[str, Any], Any]]:
        """(resource attributes, span) for every span received."""
        out = []
        for export in self.exports:
            for rs in export.resource_spans:
                resource = {a.key: a.value.string_value for a in rs.resource.attributes}
                out.extend((resource, span) for ss in rs.scope_spans for span in ss.spans)
        return out


@pytest.fixture
def collector() -> Iterator[Collector]:
    c = Collector()
    thread = threading.Thread(target=c.serve_forever, daemon=True)
    thread.start()
    yield c
    c.shutdown()
    c.server_close()


def test_spans_go_to_the_otlp_endpoint_with_the_callers_trace_and_are_flushed_at_shutdown(
    model_store: tuple[Store, dict[str, ModelRecord]], collector: Collector, tmp_path: Path
) -> None:
    store, records = model_store
    http_port = free_port()
    endpoint = f"http://127.0.0.1:{collector.server_address[1]}"
    # OTEL_EXPORTER_OTLP_ENDPOINT alone turns tracing on; spans wait in the batch processor (5 s by
    # default), so only the flush at shutdown can have sent them by the time the process exits
    # (an empty OTEL_TRACES_EXPORTER is unset, as the specification has it: otlp)
    env = {"OTEL_EXPORTER_OTLP_ENDPOINT": endpoint, "OTEL_TRACES_EXPORTER": ""}
    env.pop("OTEL_SERVICE_NAME", None)
    with cli_server(store.settings.home, ["mlp", "--grpc-port", "-1"], http_port, tmp_path / "log", env=env) as proc:
        client = httpclient.InferenceServerClient(f"127.0.0.1:{http_port}")
        x = mlp_ones()
        client.infer("mlp", [x], request_id="r-1", headers={"traceparent": TRACEPARENT})
        client.infer("mlp", [x], request_id="r-2")
        assert client.get_trace_settings()["trace_level"] == ["TIMESTAMPS"]
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0, (tmp_path / "log").read_text()
    assert set(collector.paths) == {"/v1/traces"}
    got = collector.spans()
    # Triton's three spans a request, each ended before the one it is in (helper-121)
    assert [s.name for _, s in got] == ["compute", "mlp", "InferRequest"] * 2
    assert {r["service.name"] for r, _ in got} == {"polystack"}
    compute, run, first = (s for _, s in got[:3])
    assert first.trace_id.hex() == TRACE_ID and first.parent_span_id.hex() == "b7ad6b7169203331"
    assert run.parent_span_id == first.span_id and compute.parent_span_id == run.span_id
    assert {run.trace_id, compute.trace_id} == {first.trace_id}
    attributes = {a.key: a.value for a in run.attributes}
    assert attributes["triton.model_name"].string_value == "mlp"
    assert attributes["triton.request_id"].string_value == "r-1"
    assert attributes["triton.model_version"].int_value == records["mlp"].version
    second = got[5][1]
    assert second.trace_id.hex() != TRACE_ID and not second.parent_span_id


@pytest.mark.parametrize(
    ("args", "env", "says"),
    [
        (["--trace"], {"OTEL_TRACES_EXPORTER": "zipkin"}, "OTEL_TRACES_EXPORTER names 'zipkin'"),
        (["--trace"], {"OTEL_EXPORTER_OTLP_PROTOCOL": "http/json"}, "http/protobuf or grpc"),
        (["--trace", "--trace-rate", "0"], {}, "trace_rate must be between 1 and"),
        (["--trace-count", "-3"], {}, "trace_count must be -1"),
        (["--trace"], {"OTEL_PROPAGATORS": "tracecontext,nosuch"}, "OTEL_PROPAGATORS"),
        # tritonserver's --trace-config, in Triton's words where it has some
        (["--trace-config", "mode=jaeger"], {}, 'invalid value for trace mode option: jaeger. Available options'),
        (["--trace-config", "level=LOUD"], {}, "invalid value for trace level option: LOUD"),
        (["--trace-config", "rate"], {}, "--trace-config option format is '<trace mode>,<setting>=<value>'. Got rate"),
        # Triton's trace files (its triton mode)
        (["--trace-config", "triton,file=/nonexistent/t.json"], {}, "its folder /nonexistent does not exist; give a"),
        (["--trace-config", "triton,file=/tmp"], {}, "/tmp is a folder; give a file that can be written"),
        (["--trace-config", "mode=triton", "--trace-config", "level=TIMESTAMPS"], {}, "give --trace-config triton,file="),
        (["--trace-config", "triton,log-frequency=often"], {}, "triton,log-frequency=often: give a whole number"),
        (["--trace-config", "triton,colour=blue"], {}, "Triton's trace-file settings are file and log-frequency"),
        (["--trace", "--trace-config", "triton,file=/tmp/t.json"], {}, "give --trace-config level=TIMESTAMPS for"),
        (["--trace-config", "triton,file=/tmp/t.json", "--engine", "ray"], {}, "written by the local engine's server"),
        (["--trace-config", "level=TENSORS"], {}, "not tensors; give level=TIMESTAMPS, or trace into Triton's trace"),
        (["--trace-config", "opentelemetry,colour=blue"], {}, "Triton's opentelemetry settings are url, resource"),
        (["--trace-config", "rate=0"], {}, "trace_rate must be between 1 and"),
        (["--trace-config", "opentelemetry,bsp_schedule_delay=0"], {}, "give a whole number from 1"),
        (["--trace-config", "opentelemetry,bsp_max_export_batch_size=4096"], {}, "give bsp_max_queue_size=4096"),
        (["--trace-file", "/nonexistent/t.json", "--trace-level", "TIMESTAMPS"], {}, "triton,file=/nonexistent/t.json:"),
        (["--trace-level", "LOUD"], {}, "invalid value for trace level option: LOUD"),
    ],
)
def test_bad_tracing_configuration_exits_2_with_one_line(
    model_store: tuple[Store, dict[str, ModelRecord]], args: list[str], env: dict[str, str], says: str
) -> None:
    store, _ = model_store
    cmd = [sys.executable, "-m", "polystack", "--home", str(store.settings.home), "serve", "mlp", *args]
    cmd += ["--http-port", str(free_port()), "--grpc-port", "-1"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=120, env={**os.environ, **env})
    assert done.returncode == 2, done.stderr
    lines = [ln for ln in done.stderr.splitlines() if ln.startswith("error:")]
    assert len(lines) == 1 and says in lines[0], done.stderr


@pytest.mark.parametrize("drain", [[], ["--drain-timeout-s", "1"]])
def test_a_collector_that_is_down_holds_the_exit_at_most_5_s_and_otel_says_so_in_json(
    model_store: tuple[Store, dict[str, ModelRecord]], tmp_path: Path, drain: list[str]
) -> None:
    """With a drain timeout shorter than the flush's 5 s, the flush held the models' close past it, and the exit
    blamed a model's call still running (helper-265): the spans' flush is bounded on its own, and said so."""
    store, _ = model_store
    http_port = free_port()
    log = tmp_path / "serve.log"
    env = {"OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{free_port()}", "OTEL_BSP_SCHEDULE_DELAY": "60000"}
    with cli_server(store.settings.home, ["mlp", "--grpc-port", "-1", *drain], http_port, log, env=env) as proc:
        client = httpclient.InferenceServerClient(f"127.0.0.1:{http_port}")
        x = mlp_ones()
        for _ in range(50):
            client.infer("mlp", [x])
        stopped = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
        took = time.monotonic() - stopped
    lines = log.read_text().splitlines()
    assert took < 9, f"the exit took {took:.1f} s"
    assert all(ln.startswith("{") for ln in lines), [ln for ln in lines if not ln.startswith("{")]
    assert any(json.loads(ln)["msg"].startswith("spans still queued were not exported") for ln in lines)
    assert not any("a model's call" in ln for ln in lines)


def test_two_traced_servers_in_one_process_both_export(
    model_store: tuple[Store, dict[str, ModelRecord]], collector: Collector
) -> None:
    """Embedded use (``ServerThread``): the process's provider outlives the first server."""
    store, _ = model_store
    script = f"""
import sys
sys.path[:0] = [{str(Path(__file__).parent)!r}, {str(Path(__file__).parents[1])!r}]
import tritonclient.http as httpclient
from servekit import mlp_ones, start
from polystack.store import Store
store = Store.at({str(store.settings.home)!r})
for k in range(2):
    st = start(store, models=["mlp"], trace=True, grpc_port=None)
    httpclient.InferenceServerClient(st.http_url).infer("mlp", [mlp_ones()], request_id=f"server-{{k}}")
    st.stop()
"""
    env = {**os.environ, "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{collector.server_address[1]}"}
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120, env=env)
    assert done.returncode == 0, done.stderr
    ids = [{a.key: a.value.string_value for a in s.attributes}["triton.request_id"] for _, s in collector.spans()
           if s.name == "mlp"]  # fmt: skip
    assert ids == ["server-0", "server-1"]


def test_tritons_trace_config_flags_export_as_they_say(
    model_store: tuple[Store, dict[str, ModelRecord]], collector: Collector, tmp_path: Path
) -> None:
    """tritonserver's --trace-config (its opentelemetry mode) starts polystack tracing as it starts Triton's: the
    level, rate and count, the collector's url and the resource's attributes (they were refused as unknown)."""
    store, _ = model_store
    http_port = free_port()
    url = f"127.0.0.1:{collector.server_address[1]}/v1/traces"  # Triton's form, without a scheme (helper-104)
    args = ["mlp", "--grpc-port", "-1", "--trace-config", "mode=opentelemetry", "--trace-config", "level=TIMESTAMPS",
            "--trace-config", "rate=2", "--trace-config", "count=5", "--trace-config", f"opentelemetry,url={url}",
            "--trace-config", "opentelemetry,resource=service.name=triton-like",
            "--trace-config", "opentelemetry,bsp_schedule_delay=100"]  # fmt: skip
    env = {"OTEL_TRACES_EXPORTER": "", "OTEL_EXPORTER_OTLP_ENDPOINT": "", "OTEL_SERVICE_NAME": ""}
    # the environment's own attributes are kept, the flag's service name wins (Triton's)
    theirs = {**env, "OTEL_SERVICE_NAME": "from-env", "OTEL_RESOURCE_ATTRIBUTES": "deployment=k8s"}
    with cli_server(store.settings.home, args, http_port, tmp_path / "log", env=theirs) as proc:
        client = httpclient.InferenceServerClient(f"127.0.0.1:{http_port}")
        settings = client.get_trace_settings()
        assert settings["trace_level"] == ["TIMESTAMPS"] and settings["trace_rate"] == "2", settings
        assert settings["trace_count"] == "5", settings
        # the collector's address and the span processor's settings, listed as Triton lists them (helper-119)
        # the url as given (Triton adds no scheme where it lists it), and the resource (helper-121)
        assert settings["url"] == url and settings["bsp_schedule_delay"] == "100", settings
        assert settings["resource"] == "service.name=triton-like", settings
        assert settings["bsp_max_queue_size"] == "2048", settings
        for _ in range(4):
            client.infer("mlp", [mlp_ones()])
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0, (tmp_path / "log").read_text()
    got = collector.spans()
    assert len(got) == 2 * 3 and {r["service.name"] for r, _ in got} == {"triton-like"}, got  # one request in 2
    assert {r["deployment"] for r, _ in got} == {"k8s"}, got
    # Triton's default rate where --trace-config gives none: one request in 1000
    with cli_server(store.settings.home, ["mlp", "--grpc-port", "-1", "--trace-config", "level=TIMESTAMPS",
                                          "--trace-config", "level=OFF"], http_port,
                    tmp_path / "log2", env=env):  # fmt: skip  (OFF anywhere: off, as in Triton)
        settings = httpclient.InferenceServerClient(f"127.0.0.1:{http_port}").get_trace_settings()
        assert settings["trace_rate"] == "1000" and settings["trace_level"] == ["OFF"], settings
    # Triton's deprecated --trace-level, as --trace-config level=
    with cli_server(store.settings.home, ["mlp", "--grpc-port", "-1", "--trace-level", "TIMESTAMPS"], http_port,
                    tmp_path / "log3", env={**env, "OTEL_TRACES_EXPORTER": "none"}):  # fmt: skip
        settings = httpclient.InferenceServerClient(f"127.0.0.1:{http_port}").get_trace_settings()
        assert settings["trace_level"] == ["TIMESTAMPS"] and settings["trace_rate"] == "1000", settings


def test_an_ensembles_steps_are_spans_in_its_own_and_a_failed_run_is_an_error_as_triton_exports_them(
    collector: Collector, tmp_path: Path
) -> None:
    """helper-121: an ensemble's steps' spans are in the ensemble's run span, naming its trace id as their parent's;
    a request refused before its run exports nothing (it exported a failed span with compute events); a model that
    fails exports its spans with an ERROR status (Triton sets none)."""
    import numpy as np
    from servekit import failing_at_run
    from test_serve_ensemble import pipeline_repository
    from tritonclient.utils import InferenceServerException

    repo, port = pipeline_repository(tmp_path / "models"), free_port()
    (repo / "failing" / "1").mkdir(parents=True)
    failing_at_run(repo / "failing" / "1" / "model.onnx")
    url = f"127.0.0.1:{collector.server_address[1]}/v1/traces"
    args = ["--model-repository", str(repo), "--grpc-port", "-1", "--trace-config", "mode=opentelemetry",
            "--trace-config", f"opentelemetry,url={url}", "--trace-config", "level=TIMESTAMPS",
            "--trace-config", "rate=1"]  # fmt: skip
    env = {"OTEL_TRACES_EXPORTER": "", "OTEL_EXPORTER_OTLP_ENDPOINT": "", "OTEL_SERVICE_NAME": ""}
    with cli_server(tmp_path / "home", args, port, tmp_path / "log", env=env) as proc:
        client = httpclient.InferenceServerClient(f"127.0.0.1:{port}")
        x = httpclient.InferInput("IN", [1, 16], "FP32")
        x.set_data_from_numpy(np.ones((1, 16), np.float32))
        client.infer("pipe", [x], request_id="e-1")
        with pytest.raises(InferenceServerException, match="head"):
            client.infer("head", [mlp_ones()])  # no input h: refused before its run
        bad = httpclient.InferInput("x", [1, 2], "FP32")
        bad.set_data_from_numpy(np.zeros((1, 2), np.float32))
        with pytest.raises(InferenceServerException, match="cannot be reshaped"):
            client.infer("failing", [bad])
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0, (tmp_path / "log").read_text()
    spans = [s for _, s in collector.spans()]
    by_id = {s.span_id: s for s in spans}
    runs = {s.name: s for s in spans if s.name not in ("InferRequest", "compute")}
    assert sorted(runs) == ["failing", "head", "mlp", "neg", "pipe"]  # nothing of the refused request
    attributes = {n: {a.key: a.value for a in s.attributes} for n, s in runs.items()}
    pipe_id = attributes["pipe"]["triton.trace_id"].int_value
    for step in ("mlp", "head", "neg"):
        assert by_id[runs[step].parent_span_id].name == "pipe"
        assert attributes[step]["triton.trace_parent_id"].int_value == pipe_id
        assert attributes[step]["triton.request_id"].string_value == "e-1"
        assert [by_id[s.parent_span_id].name for s in spans if s.name == "compute" and by_id[s.parent_span_id] is
                runs[step]] == [step]  # fmt: skip
    assert by_id[runs["pipe"].parent_span_id].name == "InferRequest"
    assert not any(s.name == "compute" and s.parent_span_id == runs["pipe"].span_id for s in spans)  # it computes not
    assert [e.name for e in runs["pipe"].events] == ["REQUEST_START", "QUEUE_START", "REQUEST_END"]
    failed = runs["failing"]
    assert failed.status.code == 2 and "cannot be reshaped" in failed.status.message  # STATUS_CODE_ERROR
    assert by_id[failed.parent_span_id].status.code == 2
    assert runs["pipe"].status.code == 0


def test_a_python_model_gets_its_requests_span_context_and_its_call_with_it_is_a_span_inside(
    collector: Collector, tmp_path: Path
) -> None:
    """As tritonserver 2.51 (run here beside polystack, its OpenTelemetry mode): ``request.trace().get_context()``
    is ``{"traceparent":"00-<trace>-<span>-01"}`` of the request's run span, the call the model sends with
    ``trace=request.trace()`` is traced inside that span, and its call without it is not traced."""
    import numpy as np
    from test_serve_trace_files import calling_repository

    repo, port = calling_repository(tmp_path / "models"), free_port()
    url = f"127.0.0.1:{collector.server_address[1]}/v1/traces"
    args = ["--model-repository", str(repo), "--allow-python-models", "--grpc-port", "-1", "--trace-config",
            "mode=opentelemetry", "--trace-config", f"opentelemetry,url={url}", "--trace-config", "level=TIMESTAMPS",
            "--trace-config", "rate=1"]  # fmt: skip
    env = {"OTEL_TRACES_EXPORTER": "", "OTEL_EXPORTER_OTLP_ENDPOINT": "", "OTEL_SERVICE_NAME": ""}
    with cli_server(tmp_path / "home", args, port, tmp_path / "log", env=env) as proc:
        client = httpclient.InferenceServerClient(f"127.0.0.1:{port}")
        x = httpclient.InferInput("x", [2], "FP32")
        x.set_data_from_numpy(np.array([1.0, -2.0], np.float32))
        answer = client.infer("calling", [x], headers={"traceparent": TRACEPARENT})
        (given,) = answer.as_numpy("context").tolist()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0, (tmp_path / "log").read_text()
    spans = [s for _, s in collector.spans()]
    by_id = {s.span_id: s for s in spans}
    (calling,) = [s for s in spans if s.name == "calling"]
    (called,) = [s for s in spans if s.name == "double"]  # the call without the trace: no span
    assert by_id[calling.parent_span_id].name == "InferRequest" and called.parent_span_id == calling.span_id
    assert {calling.trace_id.hex(), called.trace_id.hex()} == {TRACE_ID}
    assert ast.literal_eval(given.decode()) == f'{{"traceparent":"00-{TRACE_ID}-{calling.span_id.hex()}-01"}}'
