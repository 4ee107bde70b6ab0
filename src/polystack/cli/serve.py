"""polystack serve: serve registered models over the Open Inference Protocol v2 (HTTP and gRPC)."""

from __future__ import annotations

import dataclasses
import logging
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer
from typer.core import TyperCommand

from polystack.cli.app import app, open_store
from polystack.errors import InvalidRequest, NotUnique, PolystackError

if TYPE_CHECKING:
    from polystack.server.app import ServeConfig
    from polystack.server.cloud_repository import CloudRepository
    from polystack.server.model_config import ConfigFile
    from polystack.server.model_files import Registered
    from polystack.server.model_repository import FolderRules
    from polystack.server.tls import TlsConfig
    from polystack.server.vertex_ai import VertexAiSettings


class _TritonCommand(TyperCommand):
    """``serve`` reading its long options as tritonserver's parser (getopt_long) reads them: an unambiguous
    prefix stands for the option (``--log-warn=false`` is ``--log-warning=false``, as Triton's own QA scripts
    write it). Only words before ``--`` that are no option of their own are read so."""

    def parse_args(self, ctx: Any, args: list[str]) -> list[str]:  # typer's own click Context
        names = sorted({o for p in self.params for o in (*p.opts, *p.secondary_opts) if o.startswith("--")})
        takes_value = {o for p in self.params if not getattr(p, "is_flag", False) for o in p.opts}
        out: list[str] = []
        value_next = False  # the word after an option that takes a value is that value, whatever it looks like
        for i, arg in enumerate(args):
            if arg == "--":
                out += args[i:]
                break
            if value_next:
                value_next = False
                out.append(arg)
                continue
            flag, eq, value = arg.partition("=")
            if flag.startswith("--") and len(flag) > 2 and flag not in names:
                matches = [n for n in names if n.startswith(flag)]
                if len(matches) > 1:
                    ctx.fail(f"option {flag} is ambiguous: {', '.join(matches)} begin so; give more of it")
                if len(matches) == 1:
                    flag = matches[0]
                    arg = flag + eq + value
            value_next = flag in takes_value and not eq
            out.append(arg)
        return super().parse_args(ctx, out)


@app.command(cls=_TritonCommand)
def serve(
    models: list[str] = typer.Argument(None, metavar="[NAME[:VERSION]]...", help="Models to serve (default: all)."),
    profile: str = typer.Option("realtime", "--profile", help="realtime, server (batching on), batch or edge."),
    host: str | None = typer.Option(
        None, "--host", help="Address to bind (default 127.0.0.1); 0.0.0.0 exposes the server."
    ),
    http_address: str | None = typer.Option(
        None, "--http-address", metavar="ADDR", help="Triton's: the HTTP listener's address (default: --host's)."
    ),
    grpc_address: str | None = typer.Option(
        None, "--grpc-address", metavar="ADDR", help="Triton's: the gRPC listener's address (default: --host's)."
    ),
    metrics_address: str | None = typer.Option(
        None,
        "--metrics-address",
        metavar="ADDR",
        help="Triton's: the --metrics-port listener's address (default: the HTTP one's).",
    ),
    allow_http: str | None = typer.Option(
        None,
        "--allow-http",
        metavar="BOOL",
        help="Triton's: false serves no HTTP (gRPC and --metrics-port only). Default true (false where AIP_MODE="
        "PREDICTION turns Vertex AI's port on, as in Triton).",
    ),
    allow_grpc: str | None = typer.Option(
        None,
        "--allow-grpc",
        metavar="BOOL",
        help="Triton's: false is --grpc-port -1. Default true (false where AIP_MODE=PREDICTION, as in Triton).",
    ),
    allow_metrics: str = typer.Option(
        "true", "--allow-metrics", metavar="BOOL", help="Triton's: false serves no GET /metrics, on any port."
    ),
    allow_cpu_metrics: str = typer.Option(
        "true", "--allow-cpu-metrics", metavar="BOOL", help="Triton's: false leaves nv_cpu_* out of --triton-metrics."
    ),
    allow_gpu_metrics: str = typer.Option(
        "true",
        "--allow-gpu-metrics",
        metavar="BOOL",
        help="Triton's: polystack reports no GPU metrics (nv_gpu_*), so either value serves as false does.",
    ),
    http_port: int = typer.Option(8000, "--http-port", help="HTTP/REST port (0: any free port)."),
    grpc_port: int | None = typer.Option(
        None, "--grpc-port", help="gRPC port (default 8001; 0: any free port, -1: no gRPC; not with --engine ray)."
    ),
    metrics_port: int | None = typer.Option(
        None,
        "--metrics-port",
        help="Serve GET /metrics on this port too, alone, as Triton does (0: any free port; -1: none). Default: "
        "8002 where HTTP and gRPC are on Triton's ports (8000, 8001), as in Triton; else /metrics on the HTTP port "
        "only.",
    ),
    allow_model_control: bool = typer.Option(
        False,
        "--allow-model-control",
        help="Allow loads and unloads through the repository extension (its index answers without).",
    ),
    model_control_mode: str | None = typer.Option(
        None,
        "--model-control-mode",
        metavar="none|poll|explicit",
        help="Triton's model control modes: none (what the start names serves, no loads or unloads), explicit "
        "(--allow-model-control, and only the models --load-model names serve at start, none if it names none), "
        "poll (--repository-poll-secs, every 15 s unless that says). Default: polystack's flags decide.",
    ),
    load_model: list[str] = typer.Option(
        None,
        "--load-model",
        metavar="NAME",
        help="With --model-control-mode explicit: serve this model at start, a --model-repository folder's (an "
        "ensemble's with the models it runs) or a registered one; repeat for more; * serves all (Triton's flag).",
    ),
    allow_shared_memory: bool = typer.Option(
        False,
        "--allow-shared-memory",
        help="Enable the system shared memory extension: clients on this host pass tensors in /dev/shm "
        "(Triton's --allow-client-shm).",
    ),
    allow_client_shm: str | None = typer.Option(
        None,
        "--allow-client-shm",
        metavar="BOOL",
        help="Triton's spelling of --allow-shared-memory (tritonserver 26.04 on): true (1) or false (0).",
    ),
    http_restricted_api: list[str] | None = typer.Option(
        None,
        "--http-restricted-api",
        metavar="API[,API...]:KEY=VALUE",
        help="Answer these HTTP APIs only for requests with header KEY: VALUE, others 403 (Triton's flag; give it "
        "once per key). APIs: health, metadata, inference, shared-memory, model-config, model-repository, "
        "statistics, trace, logging.",
    ),
    grpc_restricted_protocol: list[str] | None = typer.Option(
        None,
        "--grpc-restricted-protocol",
        metavar="API[,API...]:KEY=VALUE",
        help="The same for gRPC: calls without metadata triton-grpc-protocol-KEY: VALUE are refused UNAVAILABLE "
        "(Triton's flag and key).",
    ),
    exit_on_error: str = typer.Option(
        "true",
        "--exit-on-error",
        metavar="BOOL",
        help="Triton's: false serves on when a model fails to load at start (its repository folder, its file, its "
        "config), leaving it out; the repository index says why.",
    ),
    strict_readiness: str = typer.Option(
        "true",
        "--strict-readiness",
        metavar="BOOL",
        help="Triton's: true (its default) reports the server not ready while a model loads for the first time or "
        "its last load failed (a reload stays ready, its versions serving on, where Triton's is not); false: ready "
        "whenever it is not shutting down.",
    ),
    drain_timeout_s: float = typer.Option(
        30.0,
        "--drain-timeout-s",
        "--exit-timeout-secs",
        help="On SIGTERM, wait this long for requests, then exit 1 without the rest, as tritonserver does "
        "(--exit-timeout-secs: its name for it).",
    ),
    max_body_bytes: int = typer.Option(
        64 * 1024 * 1024,
        "--max-body-bytes",
        "--http-max-input-size",
        help="Refuse larger HTTP bodies (413); 64 MiB by default, as newer tritonservers' --http-max-input-size "
        "(they count a request's tensor bytes and answer 400; tritonserver 2.51 has no limit).",
    ),
    grpc_max_message_bytes: int = typer.Option(
        (1 << 31) - 1,
        "--grpc-max-message-bytes",
        help="Refuse larger gRPC messages (RESOURCE_EXHAUSTED); Triton's 2 GiB by default, so that image batches "
        "too large for one HTTP body go over gRPC as they do to Triton.",
    ),
    grpc_compression_level: str = typer.Option(
        "none",
        "--grpc-infer-response-compression-level",
        metavar="none|low|medium|high",
        help="Triton's: compress gRPC inference responses (every level but none: gzip, on every response, as "
        "grpcio's Python server can only set it).",
    ),
    grpc_max_connection_age: int = typer.Option(
        0, "--grpc-max-connection-age", help="Close gRPC connections this old, in ms, once idle (0: never; Triton's)."
    ),
    grpc_max_connection_age_grace: int = typer.Option(
        0, "--grpc-max-connection-age-grace", help="And this long after, in ms, whatever runs (0: no limit)."
    ),
    reuse_http_port: str = typer.Option(
        "false", "--reuse-http-port", metavar="BOOL", help="Triton's: SO_REUSEPORT, several servers on one port."
    ),
    reuse_grpc_port: str = typer.Option("false", "--reuse-grpc-port", metavar="BOOL", help="The same for gRPC."),
    grpc_keepalive_time: int = typer.Option(
        7_200_000, "--grpc-keepalive-time", help="Ping gRPC connections idle this long, in ms (Triton's flag)."
    ),
    grpc_keepalive_timeout: int = typer.Option(
        20_000, "--grpc-keepalive-timeout", help="Close a connection whose ping is not answered within this, in ms."
    ),
    grpc_keepalive_permit_without_calls: str = typer.Option(
        "0",
        "--grpc-keepalive-permit-without-calls",
        metavar="BOOL",
        help="1 (true): take clients' keepalive pings on gRPC connections with no call in flight; 0 (false): "
        "Triton's default.",
    ),
    grpc_http2_max_pings_without_data: int = typer.Option(
        2, "--grpc-http2-max-pings-without-data", help="Pings the server sends without data between (0: no limit)."
    ),
    grpc_http2_min_recv_ping_interval_without_data: int = typer.Option(
        300_000,
        "--grpc-http2-min-recv-ping-interval-without-data",
        help="A client's pings closer than this (ms) count as strikes; past the strikes, GOAWAY too_many_pings.",
    ),
    grpc_http2_max_ping_strikes: int = typer.Option(
        2, "--grpc-http2-max-ping-strikes", help="Strikes before a connection is closed (0: no limit)."
    ),
    idle_timeout_s: float = typer.Option(
        120.0,
        "--idle-timeout-s",
        help="Close HTTP connections idle (or stalled mid-request) this long, and answer 408 to a request "
        "not whole this long after its first byte, plus 1 s per 500 bytes (0: never).",
    ),
    batching: bool | None = typer.Option(
        None, "--batching/--no-batching", help="Force dynamic batching on or off (default: by profile)."
    ),
    max_batch_size: int | None = typer.Option(
        None, "--max-batch-size", help="Batching: items per runtime call (default: the plan's, else 32)."
    ),
    max_queue_delay_ms: float | None = typer.Option(
        None, "--max-queue-delay-ms", help="Batching: longest wait to fill (default: the plan's, else 2); a batch leaves sooner once no request "
        "came for 0.2 ms."
    ),
    max_queue_size: int | None = typer.Option(
        None, "--max-queue-size", help="Batching: queued requests before 503 (0: no limit; default 1024)."
    ),
    timeout_s: float | None = typer.Option(None, "--timeout-s", help="Batching: default per-request deadline."),
    instances: int | None = typer.Option(
        None,
        "--instances",
        help="How many of a model's batches (batched) or requests (not batched) run at once, on threads of its own "
        "sharing one loaded model, as Triton's instance count (default: the plan's, else 1 when batched; "
        "unbatched models share the --workers threads).",
    ),
    threads: int | None = typer.Option(
        None, "--threads", min=1, help="Runtime threads per instance (default: the plan's, else the runtime's)."
    ),
    workers: int | None = typer.Option(None, "--workers", help="Inference threads without batching (default: CPUs)."),
    inline_max_ms: float = typer.Option(
        0.2,
        "--inline-max-ms",
        min=0.0,
        help="Run an unbatched model's lone request on the event loop when the model answers such requests this "
        "fast (on average) and the request is no larger than they are (0: always use threads, whatever "
        "--inline-serial-max-ms says).",
    ),
    inline_serial_max_ms: float = typer.Option(
        1.0,
        "--inline-serial-max-ms",
        min=0.0,
        help="The same limit while one client sends its requests one at a time on one HTTP/1.1 connection and none "
        "comes from elsewhere (8 in a row after its first): no other request waits behind the call, and the handoff "
        "to a thread (40-50 us) lengthens each answer (never below --inline-max-ms).",
    ),
    frontend_cpus: str | None = typer.Option(
        None,
        "--frontend-cpus",
        metavar="LIST",
        help="Pin the event loop (HTTP, gRPC) to these cores, e.g. 0 or 0-1 (Linux; default: the cores "
        "--runtime-cpus leaves).",
    ),
    runtime_cpus: str | None = typer.Option(
        None,
        "--runtime-cpus",
        metavar="LIST",
        help="Pin the model runtimes and batch workers to these cores, e.g. 1-3; their threads default to "
        "one per core (Linux; default: the cores --frontend-cpus leaves).",
    ),
    tls_cert: Path | None = typer.Option(
        None,
        "--tls-cert",
        metavar="PEM",
        help="Serve HTTPS and gRPC over TLS with this certificate chain (Triton: --grpc-server-cert).",
    ),
    tls_key: Path | None = typer.Option(
        None, "--tls-key", metavar="PEM", help="The certificate's private key, unencrypted (Triton: --grpc-server-key)."
    ),
    tls_client_ca: Path | None = typer.Option(
        None,
        "--tls-client-ca",
        metavar="PEM",
        help="Mutual TLS: clients must present a certificate issued by these CAs (Triton: --grpc-root-cert with "
        "--grpc-use-ssl-mutual).",
    ),
    grpc_use_ssl: str = typer.Option(
        "false", "--grpc-use-ssl", metavar="BOOL", help="Triton's: gRPC over TLS alone (HTTP stays plain)."
    ),
    grpc_use_ssl_mutual: str | None = typer.Option(
        None,
        "--grpc-use-ssl-mutual",
        metavar="BOOL",
        help="Triton's: gRPC clients must present a certificate from --grpc-root-cert (given at all, it turns "
        "--grpc-use-ssl on, as in Triton).",
    ),
    grpc_server_cert: Path | None = typer.Option(None, "--grpc-server-cert", metavar="PEM", help="Triton's."),
    grpc_server_key: Path | None = typer.Option(None, "--grpc-server-key", metavar="PEM", help="Triton's."),
    grpc_root_cert: Path | None = typer.Option(None, "--grpc-root-cert", metavar="PEM", help="Triton's."),
    model_config: list[str] = typer.Option(
        None,
        "--model-config",
        metavar="NAME=FILE|DIR",
        help="Serve model NAME as this Triton model configuration (config.pbtxt, or the JSON GET config returns) says: "
        "batching, instances, warm-up; loads without a config of their own use it too (Triton's config.pbtxt; a "
        "model directory means its config.pbtxt, and its warmup/ folder holds the warm-up files). "
        "Repeat for more models.",
    ),
    model_repository: list[str] = typer.Option(
        None,
        "--model-repository",
        "--model-store",
        metavar="DIR|s3://...|gs://...",
        help="Serve the models of a Triton model repository as it is (DIR/<model>/[config.pbtxt] and "
        "<version>/model.onnx): the versions each config's version_policy picks (default: the latest) are "
        "registered in the store under their folder's name and number and served with that config. Repeatable; "
        "with it, models named on the command line are served as well, not instead. A load by name "
        "(--allow-model-control) reads the model's folder again, as Triton's explicit model control does. "
        "In cloud storage as Triton names it (s3://bucket/path, s3://[https://]host:port/bucket/path, "
        "gs://bucket/path), a local copy is served, brought up to date by each load by name and each poll.",
    ),
    repository_poll_secs: float | None = typer.Option(
        None,
        "--repository-poll-secs",
        metavar="SECONDS",
        help="Poll the --model-repository folders this often (Triton's poll mode): a model folder whose files "
        "changed is read again and reloaded (what was served serves on if that fails), a new one loaded, one "
        "gone unloaded. Not with --allow-model-control, as in Triton.",
    ),
    model_config_name: str | None = typer.Option(
        None,
        "--model-config-name",
        metavar="NAME",
        help="Triton's: read a repository model's config from <model>/configs/NAME.pbtxt where it has one (else its "
        "config.pbtxt).",
    ),
    allow_python_models: bool = typer.Option(
        False,
        "--allow-python-models",
        help="Serve repository models written for Triton's Python backend (backend: \"python\", model.py), run "
        "in the server's own process with its rights: only from repositories you trust.",
    ),
    allow_torchscript_models: bool = typer.Option(
        False,
        "--allow-torchscript-models",
        help="Serve repository models written for Triton's PyTorch backend (platform: \"pytorch_libtorch\", "
        "model.pt): torch runs their TorchScript code in the server's process, and some of torch's operators reach "
        "past the model (polystack refuses those it knows; it is no sandbox): only from repositories you trust.",
    ),
    allow_torch_aoti_models: bool = typer.Option(
        False,
        "--allow-torch-aoti-models",
        help="Serve repository models compiled for Triton's PyTorch backend by AOTInductor (platform: "
        "\"torch_aoti\", model.pt2): their compiled library runs as native code in the server's process, with its "
        "rights: only from repositories you trust.",
    ),
    disable_auto_complete_config: bool = typer.Option(
        False,
        "--disable-auto-complete-config",
        help="Triton's: no auto-complete of repository models' configs: each folder needs a config.pbtxt listing its "
        "inputs and outputs (max_batch_size left out: 0).",
    ),
    strict_model_config: str | None = typer.Option(
        None,
        "--strict-model-config",
        metavar="BOOL",
        help="Triton's deprecated flag: true is --disable-auto-complete-config, false the default.",
    ),
    backend_config: list[str] = typer.Option(
        None,
        "--backend-config",
        metavar="[onnxruntime,]default-max-batch-size=N",
        help="Triton's flag: the max_batch_size its auto-complete gives a --model-repository model (or a load's "
        "model files) whose config leaves it out, where the model can batch (default 4; 0: no batching). "
        "Settings for other backends are ignored, as Triton's ONNX Runtime backend ignores them; its other "
        "settings (the global thread pool's) are taken, and the start's log says they change nothing.",
    ),
    cache_config: list[str] = typer.Option(
        None,
        "--cache-config",
        metavar="local,size=BYTES",
        help="A response cache of this many bytes, in this process's memory (Triton's flag): models whose config "
        "enables response_cache answer repeated requests (the same inputs and requested outputs) from it.",
    ),
    response_cache_byte_size: str | None = typer.Option(
        None,
        "--response-cache-byte-size",
        metavar="BYTES",
        help="Triton's deprecated flag for the response cache: --cache-config local,size=BYTES (0: no cache).",
    ),
    access_log: bool = typer.Option(False, "--access-log", help="Log every request (JSON, with request ids)."),
    server_name: str = typer.Option(
        "polystack",
        "--server-name",
        "--id",
        help="The name server metadata reports (GET /v2, ServerMetadata); client code that checks for Triton "
        "(Triton's own examples do) runs with --server-name triton (--id: tritonserver's name for it).",
    ),
    triton_metrics: bool = typer.Option(
        False,
        "--triton-metrics",
        help="/metrics shows Triton's metric names too (nv_inference_request_success, nv_inference_count, "
        "nv_inference_*_duration_us, nv_cache_*, nv_cpu_*), for dashboards written for Triton.",
    ),
    metrics_config: list[str] = typer.Option(
        None,
        "--metrics-config",
        metavar="SETTING=VALUE",
        help="tritonserver's: counter_latencies=false leaves the nv_inference_*_duration_us counters out of "
        "--triton-metrics; summary_latencies=true adds Triton's latency summaries (nv_inference_*_summary_us: "
        "quantiles of the last minute), summary_quantiles=0.5:0.05,0.99:0.001 sets their quantiles.",
    ),
    trace: bool = typer.Option(
        False,
        "--trace",
        help="OpenTelemetry spans, exported as the OTEL_* variables say (default: OTLP/HTTP to localhost:4318); "
        "on by itself when OTEL_EXPORTER_OTLP_ENDPOINT is set. The trace extension changes this at run time.",
    ),
    trace_rate: int | None = typer.Option(
        None, "--trace-rate", metavar="N", help="Trace one request in N (default 1; Triton: rate)."
    ),
    trace_count: int | None = typer.Option(
        None, "--trace-count", metavar="N", help="Take N traces, then stop (-1, the default: no limit; Triton: count)."
    ),
    trace_level: list[str] = typer.Option(None, "--trace-level", hidden=True),  # Triton's deprecated flags: as
    trace_file: str | None = typer.Option(None, "--trace-file", hidden=True),  # --trace-config level=, triton,file=
    trace_log_frequency: str | None = typer.Option(None, "--trace-log-frequency", hidden=True),
    trace_config: list[str] = typer.Option(
        None,
        "--trace-config",
        metavar="[MODE,]SETTING=VALUE",
        help="tritonserver's trace settings: level=TIMESTAMPS|TENSORS|OFF, rate=N (Triton's 1000 unless given), "
        "count=N, mode=triton|opentelemetry; triton,file=PATH and triton,log-frequency=N (Triton's trace files); "
        "opentelemetry,url=, resource=, bsp_* (the OTEL_* variables).",
    ),
    log_level: str = typer.Option("info", "--log-level", help="debug, info, warning, error."),
    log_verbose: str | None = typer.Option(
        None,
        "--log-verbose",
        metavar="N",
        help="Triton's verbose level over --log-level: 1 or more writes the debug lines, among them one per request "
        "(0: none; true and false are 1 and 0).",
    ),
    log_info: str | None = typer.Option(None, "--log-info", metavar="BOOL", help="Triton's: write info lines or not."),
    log_warning: str | None = typer.Option(
        None, "--log-warning", metavar="BOOL", help="Triton's: write warning lines or not."
    ),
    log_error: str | None = typer.Option(None, "--log-error", metavar="BOOL", help="Triton's: write error lines or not."),
    log_format: str = typer.Option(
        "default",
        "--log-format",
        metavar="default|ISO8601",
        help="Triton's log formats, reported by the logging extension; polystack's lines are JSON with ISO 8601 times "
        "for both.",
    ),
    log_file: str | None = typer.Option(
        None, "--log-file", metavar="PATH", help="Append the log lines to this file instead of stderr (Triton's flag)."
    ),
    engine: str = typer.Option("local", "--engine", help="local (this process) or ray (Ray Serve deployments)."),
    replicas: int | None = typer.Option(None, "--replicas", min=1, help="Ray: fixed number of replicas."),
    autoscale: str | None = typer.Option(None, "--autoscale", metavar="MIN:MAX", help="Ray: autoscale replicas."),
    ray_address: str | None = typer.Option(None, "--ray-address", help="Ray: join this cluster (default: local)."),
    # tritonserver's flags for what polystack does not have (triton_flags.py): taken, checked, said at start
    pinned_memory_pool_byte_size: list[str] = typer.Option(None, "--pinned-memory-pool-byte-size", hidden=True),
    cuda_memory_pool_byte_size: list[str] = typer.Option(None, "--cuda-memory-pool-byte-size", hidden=True),
    cuda_virtual_address_size: list[str] = typer.Option(None, "--cuda-virtual-address-size", hidden=True),
    min_supported_compute_capability: list[str] = typer.Option(None, "--min-supported-compute-capability", hidden=True),
    enable_peer_access: list[str] = typer.Option(None, "--enable-peer-access", hidden=True),
    model_load_gpu_limit: list[str] = typer.Option(None, "--model-load-gpu-limit", hidden=True),
    backend_directory: list[str] = typer.Option(None, "--backend-directory", hidden=True),
    repoagent_directory: list[str] = typer.Option(None, "--repoagent-directory", hidden=True),
    cache_directory: list[str] = typer.Option(None, "--cache-directory", hidden=True),
    buffer_manager_thread_count: list[str] = typer.Option(None, "--buffer-manager-thread-count", hidden=True),
    http_thread_count: list[str] = typer.Option(None, "--http-thread-count", hidden=True),
    grpc_infer_allocation_pool_size: list[str] = typer.Option(None, "--grpc-infer-allocation-pool-size", hidden=True),
    grpc_infer_thread_count: list[str] = typer.Option(None, "--grpc-infer-thread-count", hidden=True),
    grpc_max_response_pool_size: list[str] = typer.Option(None, "--grpc-max-response-pool-size", hidden=True),
    model_load_thread_count: str | None = typer.Option(
        None,
        "--model-load-thread-count",
        metavar="N",
        help="Build up to N models at once, at start and for loads of different models (Triton's; default 4).",
    ),
    model_load_retry_count: str | None = typer.Option(
        None,
        "--model-load-retry-count",
        metavar="N",
        help="Try a model's load that fails N more times before it fails (Triton's; default 0).",
    ),
    host_policy: list[str] = typer.Option(
        None,
        "--host-policy",
        metavar="cpu,SETTING=VALUE",
        help="Triton's host policy of the model instances: cpu,cpu-cores=LOW-HIGH pins them (as --runtime-cpus), "
        "cpu,numa-node=N binds their memory to that NUMA node (Linux).",
    ),
    rate_limit_resource: list[str] = typer.Option(
        None,
        "--rate-limit-resource",
        metavar="NAME:COUNT[:DEVICE]",
        help="How much of a rate limiter resource there is (on DEVICE, else on each device; a global resource "
        "takes the largest given); default: the most any one model instance needs.",
    ),
    http_header_forward_pattern: str = typer.Option(
        None,
        "--http-header-forward-pattern",
        metavar="REGEX",
        help="Triton's: HTTP headers whose names match (a search, case ignored unless it starts with (?-i)) become "
        "request parameters, which Python models read in request.parameters().",
    ),
    grpc_header_forward_pattern: str = typer.Option(
        None,
        "--grpc-header-forward-pattern",
        metavar="REGEX",
        help="The same for gRPC requests' metadata (a stream's, for each of its requests).",
    ),
    metrics_interval_ms: str | None = typer.Option(
        None,
        "--metrics-interval-ms",
        metavar="MS",
        help="tritonserver's: --triton-metrics' nv_cpu_utilization is sampled every half this long, over the time "
        "since the sample before (default 2000).",
    ),
    rate_limit: list[str] = typer.Option(
        None,
        "--rate-limit",
        metavar="MODE",
        help="Triton's rate limiter: execution_count makes each model instance wait for the resources its "
        "config's instance_group rate_limiter names, in priority order across all models; off (default).",
    ),
    model_namespacing: list[str] = typer.Option(
        None,
        "--model-namespacing",
        metavar="BOOL",
        help="Triton's model namespacing: a model folder two or more repositories hold serves from each, as "
        "NAME@REPOSITORY (the repository's folder name), and each repository's ensembles run its own copy; a request "
        "naming NAME alone is refused as ambiguous. Off (default): such a folder is not served.",
    ),
    allow_sagemaker: str | None = typer.Option(
        None,
        "--allow-sagemaker",
        metavar="BOOL",
        help="Triton's SageMaker front end on its own port: GET /ping and POST /invocations (the model "
        "SAGEMAKER_TRITON_DEFAULT_MODEL_NAME names), on the HTTP address.",
    ),
    sagemaker_port: int | None = typer.Option(None, "--sagemaker-port", help="The SageMaker port (default 8080)."),
    sagemaker_safe_port_range: str | None = typer.Option(None, "--sagemaker-safe-port-range", hidden=True),
    sagemaker_thread_count: list[str] = typer.Option(None, "--sagemaker-thread-count", hidden=True),
    allow_vertex_ai: str | None = typer.Option(
        None,
        "--allow-vertex-ai",
        metavar="BOOL",
        help="Triton's Vertex AI front end on its own port: the AIP_HEALTH_ROUTE and AIP_PREDICT_ROUTE routes "
        "(default: on where AIP_MODE=PREDICTION).",
    ),
    vertex_ai_port: int | None = typer.Option(
        None, "--vertex-ai-port", help="The Vertex AI port (default AIP_HTTP_PORT, else 8080)."
    ),
    vertex_ai_default_model: str | None = typer.Option(
        None, "--vertex-ai-default-model", help="The model the predict route runs (default: the one model served)."
    ),
    vertex_ai_thread_count: list[str] = typer.Option(None, "--vertex-ai-thread-count", hidden=True),
) -> None:
    """Serve models until SIGTERM/SIGINT; then stop being ready, finish in-flight requests and exit 0."""
    from polystack.batching import BatchOverrides, BatchPolicy
    from polystack.cli import triton_flags
    from polystack.engine import Engine
    from polystack.server import host_policy as host_policies
    from polystack.server import logs, python_backend_config, restricted
    from polystack.server.app import PROFILES, ServeConfig, run
    from polystack.server.grpc import Keepalive
    from polystack.server.header_forward import HeaderForward
    from polystack.server.model_config import DEFAULT_MAX_BATCH_SIZE
    from polystack.server.onnxruntime_config import default_max_batch_size, unread
    from polystack.server.placement import CpuPlacement, format_cpu_list, parse_cpu_list
    from polystack.server.response_cache import CacheConfig
    from polystack.server.sagemaker import SageMakerSettings
    from polystack.server.tls import TlsConfig
    from polystack.server.tracing import TRITON_RATE, trace_flags

    if not server_name.strip():
        raise InvalidRequest("--server-name must not be empty; leave it out for the default, polystack")
    for pattern, flag in ((http_header_forward_pattern, "--http-header-forward-pattern"),
                          (grpc_header_forward_pattern, "--grpc-header-forward-pattern")):  # fmt: skip
        if pattern is not None:
            HeaderForward(pattern, flag)  # one that is no regular expression exits 2, naming the flag
    if profile not in PROFILES:
        raise InvalidRequest(f"unknown profile {profile!r}; use one of {', '.join(PROFILES)}")
    if engine not in ("local", "ray"):
        raise InvalidRequest(f"unknown --engine {engine!r}; use local (this process) or ray (Ray Serve)")
    log_options = logs.LogOptions(
        level=log_level,
        verbose=None if log_verbose is None else _flag_level(log_verbose),
        info=None if log_info is None else _flag_bool(log_info, "--log-info"),
        warning=None if log_warning is None else _flag_bool(log_warning, "--log-warning"),
        error=None if log_error is None else _flag_bool(log_error, "--log-error"),
        format=log_format,
        file=log_file or "",
    )
    if log_file and engine == "ray":
        raise InvalidRequest(
            "--log-file names a file of this host, and Ray Serve replicas run as processes of their own (Ray keeps "
            "their stderr in its session logs): drop it, or serve with --engine local"
        )
    logs.configure(log_options)
    response_cache = CacheConfig.from_flags(cache_config or [], response_cache_byte_size)
    max_batch_default = default_max_batch_size(backend_config or [])
    if max_batch_default is not None and batching is False:
        raise InvalidRequest(
            "--backend-config default-max-batch-size sizes the batches of repository models without a config, which "
            "--no-batching serves unbatched: drop one"
        )
    if response_cache_byte_size is not None:
        logging.getLogger("polystack.server").warning(
            "--response-cache-byte-size is deprecated, as in Triton; give --cache-config local,size=BYTES instead",
            extra={"response_cache_byte_size": response_cache_byte_size},
        )
    policy = host_policies.parse(host_policy or [])
    if policy is not None and policy.cpu_cores is not None:  # the instances' cores: the runtime side
        if runtime_cpus is not None and parse_cpu_list(runtime_cpus) != policy.cpu_cores:
            raise InvalidRequest(
                f"--host-policy cpu,cpu-cores and --runtime-cpus {runtime_cpus} name different cores for the model "
                "instances: give one of them"
            )
        runtime_cpus = format_cpu_list(policy.cpu_cores)
    # as Triton's host policy, which pins the instances alone: the front end may share their cores
    cpus = CpuPlacement.resolve(frontend_cpus, runtime_cpus, share=policy is not None and frontend_cpus is None)
    tls = TlsConfig.resolve(tls_cert, tls_key, tls_client_ca)
    grpc_tls = _grpc_tls(grpc_use_ssl, grpc_use_ssl_mutual, grpc_server_cert, grpc_server_key, grpc_root_cert)
    if grpc_tls is not None and tls is not None:
        raise InvalidRequest(
            "--tls-cert serves HTTP and gRPC over TLS, --grpc-use-ssl (Triton's) gRPC alone: give one of them"
        )
    overrides = BatchOverrides(max_batch_size, max_queue_delay_ms, max_queue_size, timeout_s, instances)
    if overrides.given():
        if batching is False and set(overrides.given()) - {"instances"}:
            raise InvalidRequest("batching settings (--max-batch-size, ...) contradict --no-batching: drop one")
        try:  # checked here, once: a bad value exits 2 before anything loads, naming the flag
            overrides.apply(BatchPolicy())
        except InvalidRequest as e:
            message = e.message
            for field in overrides.given():
                message = message.replace(field, "--" + field.replace("_", "-"))
            raise InvalidRequest(message) from None
    # Vertex AI's containers (AIP_MODE=PREDICTION) serve its port alone by default, as Triton's do
    prediction = os.environ.get("AIP_MODE") == "PREDICTION"  # Triton reads it before its flags
    vertex_on = _flag_bool(allow_vertex_ai, "--allow-vertex-ai") if allow_vertex_ai is not None else prediction
    allow_http = allow_http or ("false" if prediction else "true")
    allow_grpc = allow_grpc or ("false" if prediction else "true")
    if not model_repository and os.environ.get("AIP_STORAGE_URI"):  # Vertex AI's model folder, read as Triton does
        model_repository = [_storage_uri(os.environ["AIP_STORAGE_URI"])]
    listeners = _Listeners.resolve(
        host, http_address, grpc_address, metrics_address,
        *(_flag_bool(v, f) for v, f in (
            (allow_http, "--allow-http"), (allow_grpc, "--allow-grpc"), (allow_metrics, "--allow-metrics"),
            (allow_cpu_metrics, "--allow-cpu-metrics"), (allow_gpu_metrics, "--allow-gpu-metrics"),
        )),
    )  # fmt: skip
    # (not where servers share their ports: a second one would find 8002 taken)
    shared = _flag_bool(reuse_http_port, "--reuse-http-port") or _flag_bool(reuse_grpc_port, "--reuse-grpc-port")
    tritons_ports = http_port == TRITON_HTTP_PORT and grpc_port in (None, TRITON_GRPC_PORT) and engine != "ray"
    tritons_ports = tritons_ports and not shared
    if not listeners.grpc:  # a listener turned off: its port and address are not read, as in Triton
        grpc_port = -1
    if not listeners.metrics or metrics_port == -1:  # -1: the HTTP port's /metrics alone
        metrics_port = None
    elif metrics_port is None and (metrics_address is not None or tritons_ports):  # Triton's metrics port
        metrics_port = TRITON_METRICS_PORT
    platform = vertex_on or (allow_sagemaker is not None and _flag_bool(allow_sagemaker, "--allow-sagemaker"))
    if not listeners.http and (grpc_port == -1 or engine == "ray") and not platform:
        raise InvalidRequest(
            "--allow-http false leaves gRPC alone to serve, which this server does not serve (--grpc-port -1, "
            "--allow-grpc false, or --engine ray): serve one of them"
        )
    # checked here, naming the flag: a port past 65535 wrapped around (70000 bound 4464), and a taken or
    # impossible one failed after the models loaded, in the socket library's words
    if listeners.http and not 0 <= http_port <= 65535:  # a disabled listener's port is not read (Triton's)
        raise InvalidRequest(f"--http-port {http_port}: give a port from 0 (any free one) to 65535")
    if grpc_port is not None and not (grpc_port == -1 or 0 <= grpc_port <= 65535):
        raise InvalidRequest(f"--grpc-port {grpc_port}: give a port from 0 (any free one) to 65535, or -1 for no gRPC")
    grpc_bound = (8001 if engine != "ray" else None) if grpc_port is None else grpc_port  # ray: no gRPC by default
    grpc_beside_http = listeners.grpc_host is None and listeners.http  # one address: one port each
    if http_port and http_port == grpc_bound and grpc_beside_http:
        raise InvalidRequest(f"--http-port and --grpc-port are both {http_port}; give each a port of its own")
    if max_body_bytes < 1:  # as tritonserver refuses --http-max-input-size of 0 or less
        raise InvalidRequest(f"--max-body-bytes must be greater than 0, not {max_body_bytes}")
    if not drain_timeout_s >= 0:  # NaN too
        raise InvalidRequest(f"--drain-timeout-s takes 0 (no wait) or more seconds, not {drain_timeout_s}")
    if not 1 <= grpc_max_message_bytes <= (1 << 31) - 1:
        raise InvalidRequest(
            f"--grpc-max-message-bytes takes 1 to 2147483647 (gRPC's own limit), not {grpc_max_message_bytes}"
        )
    if allow_client_shm is not None:  # launch scripts written for tritonserver pass --allow-client-shm=true
        client_shm = _flag_bool(allow_client_shm, "--allow-client-shm")
        if allow_shared_memory and not client_shm:
            raise InvalidRequest("--allow-shared-memory and --allow-client-shm=false disagree; give one of them")
        allow_shared_memory = client_shm
    deprecated = [f"level={v}" for v in trace_level or []]  # tritonserver's older spellings of --trace-config
    deprecated += [f"triton,file={trace_file}"] if trace_file is not None else []
    deprecated += [f"triton,log-frequency={trace_log_frequency}"] if trace_log_frequency is not None else []
    trace_config = [*deprecated, *(trace_config or [])]
    traced = trace_flags(trace_config)  # Triton's --trace-config, checked
    if traced.mode == "triton" and trace:
        raise InvalidRequest(
            "--trace turns on OpenTelemetry spans, and --trace-config asks for Triton's trace files: give "
            "--trace-config level=TIMESTAMPS for the files, or --trace-config mode=opentelemetry for spans"
        )
    if traced.mode == "triton" and engine == "ray":
        raise InvalidRequest(
            "Triton's trace files are written by the local engine's server: serve with --engine local, or trace "
            "Ray Serve replicas through OpenTelemetry (--trace-config mode=opentelemetry)"
        )
    if traced.environment and engine == "ray":
        raise InvalidRequest(
            "--trace-config opentelemetry,... sets this process's OpenTelemetry variables, which Ray Serve replicas "
            "do not see: set the OTEL_* variables in the Ray cluster's environment, or serve with --engine local"
        )
    os.environ.update(dict(traced.environment))  # what the OpenTelemetry SDK reads when tracing starts
    if traced.names_service:
        os.environ.pop("OTEL_SERVICE_NAME", None)  # the flag names the service, as Triton's resource setting does
    unused = triton_flags.check({
        "--pinned-memory-pool-byte-size": pinned_memory_pool_byte_size or [],
        "--cuda-memory-pool-byte-size": cuda_memory_pool_byte_size or [],
        "--cuda-virtual-address-size": cuda_virtual_address_size or [],
        "--min-supported-compute-capability": min_supported_compute_capability or [],
        "--enable-peer-access": enable_peer_access or [],
        "--model-load-gpu-limit": model_load_gpu_limit or [],
        "--repoagent-directory": repoagent_directory or [],
        "--cache-directory": cache_directory or [],
        "--buffer-manager-thread-count": buffer_manager_thread_count or [],
        "--http-thread-count": http_thread_count or [],
        "--grpc-infer-allocation-pool-size": grpc_infer_allocation_pool_size or [],
        "--grpc-infer-thread-count": grpc_infer_thread_count or [],
        "--grpc-max-response-pool-size": grpc_max_response_pool_size or [],
        "--sagemaker-thread-count": sagemaker_thread_count or [],
        "--vertex-ai-thread-count": vertex_ai_thread_count or [],
    }) + unread(backend_config or [], python_backend_config.SETTINGS) + python_backend_config.unread(
        backend_config or [], checked=allow_python_models
    )  # fmt: skip
    served = {"HTTP": http_port if listeners.http else None, "GRPC": grpc_bound if listeners.grpc else None,
              "metrics": metrics_port}  # fmt: skip
    ports = {k: p for k, p in served.items() if p is not None and p > 0}
    sagemaker = _sagemaker(allow_sagemaker, sagemaker_port, sagemaker_safe_port_range, engine, ports)
    sagemaker_settings = SageMakerSettings.from_environment()
    if sagemaker is not None:
        sagemaker_settings.check()
    vertex_port, vertex = _vertex_ai(allow_vertex_ai, vertex_ai_port, vertex_ai_default_model, engine,
                                     {**ports, **({"SageMaker": sagemaker} if sagemaker else {})})  # fmt: skip
    if (sagemaker is not None or vertex_port is not None) and listeners.host in ("127.0.0.1", "localhost", "::1"):
        logging.getLogger("polystack.server").warning(  # Triton's bind every address; polystack's, the HTTP one's
            "the SageMaker / Vertex AI port listens on %s alone, where the platform cannot reach it: give "
            "--http-address 0.0.0.0 in its container",
            listeners.host,
        )
    rules = dataclasses.replace(
        _folder_rules(model_config_name, disable_auto_complete_config, strict_model_config),
        python_models=allow_python_models,
        torchscript_models=allow_torchscript_models,
        aoti_models=allow_torch_aoti_models,
    )
    if model_namespacing:  # the last given, as Triton reads the flag
        rules = dataclasses.replace(rules, namespacing=_flag_bool(model_namespacing[-1], "--model-namespacing"))
    if backend_directory:  # where Python-based backends are found (the last given, as Triton reads the flag)
        rules = dataclasses.replace(rules, backend_directory=Path(backend_directory[-1]))
    start_models = None  # explicit model control: the models --load-model serves at start (None: as without it)
    if model_control_mode is not None or load_model:
        allow_model_control, repository_poll_secs, start_models = _model_control(
            model_control_mode, load_model or [], allow_model_control, repository_poll_secs, bool(model_repository)
        )
    keepalive = Keepalive(
        grpc_keepalive_time,
        grpc_keepalive_timeout,
        _flag_bool(grpc_keepalive_permit_without_calls, "--grpc-keepalive-permit-without-calls"),
        grpc_http2_max_pings_without_data,
        grpc_http2_min_recv_ping_interval_without_data,
        grpc_http2_max_ping_strikes,
        grpc_max_connection_age,
        grpc_max_connection_age_grace,
    )  # checked here: a bad value exits 2, naming the flag
    counter_latencies, summary_quantiles = _metrics_config(metrics_config or [], triton_metrics)
    config = ServeConfig(
        memory_node=policy.numa_node if policy is not None else None,
        host=listeners.host,
        http_port=http_port,
        grpc_port=TRITON_GRPC_PORT if grpc_port is None else None if grpc_port < 0 else grpc_port,
        metrics_port=metrics_port,
        profile=profile,
        allow_model_control=allow_model_control,
        allow_shared_memory=allow_shared_memory,
        drain_timeout_s=drain_timeout_s,
        max_body_bytes=max_body_bytes,
        grpc_max_message_bytes=grpc_max_message_bytes,
        grpc_keepalive=keepalive,
        idle_timeout_s=idle_timeout_s,
        workers=workers,
        inline_max_ms=inline_max_ms,
        inline_serial_max_ms=inline_serial_max_ms,
        batch_overrides=overrides if overrides.given() else None,
        force_batching=batching is True,
        threads=threads,
        no_batching=batching is False,
        access_log=access_log,
        server_name=server_name,
        http_header_forward=http_header_forward_pattern,
        grpc_header_forward=grpc_header_forward_pattern,
        triton_metrics=triton_metrics,
        log=log_options,
        trace=True if trace or traced.level else False if traced.level is False else None,
        trace_rate=next(r for r in (trace_rate, traced.rate, TRITON_RATE if trace_config else 1) if r is not None),
        trace_count=next(c for c in (trace_count, traced.count, -1) if c is not None),
        trace_levels=traced.levels,
        trace_mode=traced.mode,
        trace_file=traced.file,
        trace_log_frequency=traced.log_frequency,
        trace_shown=traced.shown,
        sagemaker_port=sagemaker,
        sagemaker=sagemaker_settings,
        vertex_ai_port=vertex_port,
        vertex_ai=vertex,
        models=list(models or []),
        cpus=cpus,
        tls=tls,
        model_configs=_model_configs(model_config or []),
        response_cache=response_cache,
        default_max_batch_size=DEFAULT_MAX_BATCH_SIZE if max_batch_default is None else max_batch_default,
        http_restricted=restricted.parse(http_restricted_api or [], "--http-restricted-api"),
        grpc_restricted=restricted.parse(grpc_restricted_protocol or [], "--grpc-restricted-protocol"),
        start_named_only=start_models is not None,
        grpc_host=listeners.grpc_host,
        metrics_host=listeners.metrics_host,
        serve_http=listeners.http,
        serve_metrics=listeners.metrics,
        cpu_metrics=listeners.cpu_metrics,
        metrics_interval_ms=_metrics_interval(metrics_interval_ms),
        exit_on_error=_flag_bool(exit_on_error, "--exit-on-error"),
        strict_readiness=_flag_bool(strict_readiness, "--strict-readiness"),
        repository_only=(model_control_mode or "").lower() == "explicit",
        folder_rules=rules,
        grpc_compress_infer=_compression(grpc_compression_level),
        rate_limit=_rate_limit(rate_limit or [], rate_limit_resource or []),
        load_retries=_load_retries(model_load_retry_count),
        load_threads=_load_threads(model_load_thread_count),
        grpc_tls=grpc_tls,
        reuse_http_port=_flag_bool(reuse_http_port, "--reuse-http-port"),
        reuse_grpc_port=_flag_bool(reuse_grpc_port, "--reuse-grpc-port"),
        counter_latencies=counter_latencies,
        summary_quantiles=summary_quantiles,
    )
    if metrics_port is not None and not 0 <= metrics_port <= 65535:
        raise InvalidRequest(
            f"--metrics-port {metrics_port}: give a port from 0 (any free one) to 65535, or -1 (none of its own)"
        )
    # 0: any free port, never a clash; listeners on other addresses may share a port, as in Triton
    fixed = {http_port} if listeners.http else set()
    fixed |= {TRITON_GRPC_PORT if grpc_port is None else grpc_port} if grpc_beside_http else set()
    fixed = fixed - {0} if listeners.metrics_host is None else set()
    if metrics_port is not None and metrics_port in fixed:
        raise InvalidRequest(
            f"--metrics-port {metrics_port} is the HTTP or gRPC port too; give the metrics a port of their own"
        )
    if engine == "ray" and metrics_port is not None:
        raise InvalidRequest(
            "--metrics-port needs --engine local: Ray Serve's proxy is the one HTTP port (a GET /metrics there "
            "reaches one replica); drop it, or serve with --engine local"
        )
    if engine == "ray" and config.reuse_http_port:
        raise InvalidRequest("--reuse-http-port: Ray Serve's proxy binds the HTTP port; drop it, or serve with --engine local")
    if engine == "ray" and listeners.grpc_host is not None:
        raise InvalidRequest("--grpc-address: --engine ray serves HTTP only; drop it, or serve with --engine local")
    if engine == "ray" and config.rate_limit is not None:
        raise InvalidRequest(
            "--rate-limit execution_count limits the model instances of one server process; each Ray Serve replica "
            "would limit its own: drop it, or serve with --engine local"
        )
    if engine == "ray" and cpus is not None:
        raise InvalidRequest(
            "--frontend-cpus and --runtime-cpus pin threads of this process (--engine local); "
            "Ray places its replicas itself: drop them, or serve with --engine local"
        )
    if grpc_restricted_protocol and (config.grpc_port is None or engine == "ray"):
        raise InvalidRequest(
            "--grpc-restricted-protocol restricts gRPC, which this server does not serve (--grpc-port -1, or --engine "
            "ray): drop it, or restrict HTTP with --http-restricted-api"
        )
    if engine == "ray" and allow_shared_memory:
        raise InvalidRequest(
            "--allow-shared-memory needs the client and the one server process on the same host; Ray Serve "
            "spreads requests over replicas, each with its own regions: serve with --engine local"
        )
    if engine == "ray" and allow_model_control:
        raise InvalidRequest(
            f"{'--model-control-mode explicit' if model_control_mode else '--allow-model-control'} would load or unload a model in whichever Ray Serve replica a request reaches, "
            "leaving the others as they were: name the models to serve instead (polystack serve NAME ... --engine "
            "ray), or serve with --engine local"
        )
    if engine == "ray" and tls is not None and tls.mutual:
        raise InvalidRequest(
            "--tls-client-ca needs --engine local: Ray Serve's HTTP proxy does not require client certificates; "
            "drop it, or serve with --engine local"
        )
    if repository_poll_secs is not None and not repository_poll_secs > 0:
        # no polling, as tritonserver 2.51 takes it (launch scripts pass --repository-poll-secs=0 to say so; helper-119)
        logging.getLogger("polystack.server").info(
            f"--repository-poll-secs {repository_poll_secs:g}: the repository is not polled, as Triton takes it"
        )
        repository_poll_secs = None
    if repository_poll_secs is not None:
        if not model_repository:
            raise InvalidRequest("--repository-poll-secs polls the --model-repository folders: give one, or drop it")
        if allow_model_control:
            raise InvalidRequest(
                "--repository-poll-secs and --allow-model-control are Triton's poll and explicit model control "
                "modes: choose one (a load or unload by hand would be undone by the next change a poll finds)"
            )
        if engine == "ray":
            raise InvalidRequest(
                "--repository-poll-secs would reload a model in each Ray Serve replica on its own; serve with "
                "--engine local, or restart the Ray application when the repository changes"
            )
        config = dataclasses.replace(config, repository_poll_s=repository_poll_secs)
    triton_flags.log_unused(unused)  # once the flags are known good
    from polystack.server.model_repository import settle, undo

    clouds: list[CloudRepository] = []  # repositories in cloud storage: their copies go at the exit
    try:
        registered: list[Registered] = []  # what --model-repository registered: taken back if the start fails
        if model_repository:  # registered once the flags are known good, before anything loads
            try:
                roots = _repository_roots(model_repository, clouds)
            except _StoppedCopying:  # SIGTERM while copying from cloud storage: the copies go (finally), exit 0
                logging.getLogger("polystack.server").info("stopped", extra={"before_serving": True, "copying": True})
                raise typer.Exit(0) from None
            # read again by loads and polls, which Ray Serve's replicas do not run: its start's copy is all they read
            config = dataclasses.replace(config, cloud_repositories=clouds if engine != "ray" else [])
            config = _with_repositories(config, roots, registered, ray=engine == "ray", start=start_models)
        elif start_models:  # --load-model names the store's models
            config = dataclasses.replace(config, models=[*config.models, *sorted(start_models)])
        if engine == "ray":  # Ray Serve replicas run the same server (src/polystack/server/ray_serve.py)
            from polystack.cli.app import store_settings
            from polystack.server.ray_serve import check_before_ray, parse_autoscale, run_ray_serve

            if grpc_port is not None and grpc_port >= 0:
                raise InvalidRequest(
                    "--engine ray serves HTTP only (Ray Serve's gRPC proxy needs stubs of its own): drop --grpc-port, "
                    "or serve with --engine local"
                )
            compressed = grpc_compression_level.lower() != "none"
            if keepalive != Keepalive() or grpc_max_message_bytes != (1 << 31) - 1 or compressed or grpc_tls:
                raise InvalidRequest(
                    "the --grpc-keepalive-*, --grpc-http2-*, --grpc-max-message-bytes, --grpc-use-ssl* and "
                    "--grpc-infer-response-compression-level settings are the gRPC server's, "
                    "which --engine ray does not run (it serves HTTP only): drop them, or serve with --engine local"
                )
            scale = parse_autoscale(autoscale) if autoscale else None
            home = store_settings().home
            store = open_store()
            try:
                most = scale[1] if scale else replicas or 1  # the most replicas the deployment may have
                check_before_ray(store, config, ray_address, most)  # what would otherwise fail deep inside Ray
                code = run_ray_serve(
                    home, config, replicas=replicas, autoscale=scale, ray_address=ray_address,
                    on_serving=lambda: settle(store, registered),
                )  # fmt: skip
            finally:  # the replicas never came up (or the start failed): what it replaced is put back
                undo(store, registered)
                store.close()
            raise typer.Exit(code)
        if replicas is not None or autoscale is not None:
            raise InvalidRequest("--replicas and --autoscale need --engine ray; add it, or drop them")
        if allow_python_models:  # its flags read, the process's argv is left to its models as Triton's stub leaves it,
            # with no server flags: a model's unittest.main("model") parses sys.argv (Triton's QA models)
            del sys.argv[1:]
        store = open_store()
        try:
            code = run(Engine(store), config, on_serving=lambda: settle(store, registered))
        finally:  # the start failed (a model that would not load, a port taken) or stopped before serving: what it
            # registered is taken back, what it replaced put back (once it served, settle left nothing to undo)
            undo(store, registered)
            store.close()
        raise typer.Exit(code)
    finally:
        for cloud in clouds:
            cloud.close()


def _with_repositories(
    config: ServeConfig,
    roots: list[Path],
    registered: list[Registered],
    ray: bool = False,
    start: frozenset[str] | None = None,
) -> ServeConfig:
    """``config`` serving the models of these Triton model repositories too (``model_repository.py``), their
    versions registered in the store first; what registering did is added to ``registered``, and taken back
    if a repository cannot be served. An empty repository starts empty, as Triton's does, but under Ray Serve
    (``ray``), where no model loads later, it is refused. ``start`` (explicit model control): the models served
    at start, the folders of those the repositories hold and of the models their ensembles run (the rest are
    read when a load names them, as Triton reads them), the others the store's; None: every folder's."""
    from polystack.errors import load_failed
    from polystack.server import model_repository
    from polystack.server.app import start_failed
    from polystack.store import ModelRef

    models, configs = list(config.models), dict(config.model_configs)
    ensembles = dict(config.ensembles)
    named = {ModelRef.parse(m).name for m in models}
    found: dict[str, Path] = {}
    twice: dict[str, str] = {}  # folders in two repositories: refused where the start reads them
    # each folder as it was before the start read it: a poll sees a change made meanwhile, and a load one made since
    seen = {}
    unique = {root.resolve(): root for root in reversed(roots)}  # a repository given twice is one, as in Triton
    roots = [root for root in roots if unique.get(root.resolve()) is root]
    listed = [(root, model_repository.model_folders(root.resolve())) for root in roots]
    if ray and not models and not any(folders for _, folders in listed):
        raise InvalidRequest(
            f"--model-repository {roots[0]} holds no model folders, and under --engine ray no model loads later (no "
            "model control, no polling); add the model folders (mlp/1/model.onnx), or serve with --engine local"
        )
    for root, folders in listed:  # each model served one way, checked before the store changes
        if not folders:
            later = "" if ray else (
                ", loaded by name (--allow-model-control) or found by a poll (--repository-poll-secs)"
            )  # fmt: skip
            logging.getLogger("polystack.server").warning(
                "the model repository holds no model folders; each model is a folder with its versions in numbered "
                f"folders (mlp/1/model.onnx){later}",
                extra={"repository": str(root)},
            )
        for folder in folders:
            name = folder.name
            seen[name] = model_repository.fingerprint(folder)
            if name in found:
                twice[name] = (
                    f"{NotUnique.TRITON}: {name!r} is in --model-repository {found[name]} and in {root}; keep it in "
                    "one, or serve with --model-namespacing true to serve each"
                )
                continue
            if name in named:
                raise InvalidRequest(
                    f"model {name!r} is in --model-repository {root} and named on the command line too; serve it one "
                    "way (drop the name)"
                )
            if name in configs:
                raise InvalidRequest(
                    f"--model-config {name}: model {name!r} comes from --model-repository {root}, whose "
                    f"{model_repository.CONFIG} is its config; drop --model-config {name}"
                )
            found[name] = root
    copies: dict[str, str] = {}  # (--model-namespacing) each copy of a folder two repositories hold: its folder's name
    names = (  # (--model-namespacing) each repository's name in its copies' names
        model_repository.namespaces([root.absolute() for root in roots], config.cloud_repositories)
        if config.folder_rules.namespacing
        else {}
    )
    if config.folder_rules.namespacing and twice:
        for root, folders in listed:
            namespace = names[root.absolute()]
            for folder in folders:
                if folder.name in twice:  # a model in each repository, under its copy's name
                    as_copy = model_repository.namespaced(folder.name, namespace)
                    copies[as_copy], found[as_copy] = folder.name, root
                    seen[as_copy] = model_repository.fingerprint(folder)
        for name in twice:
            found.pop(name)
            seen.pop(name)
        if start is not None:  # a name two repositories hold loads each copy
            start = (start - twice.keys()) | {copy for copy, name in copies.items() if name in start}
        twice = {}

    def holding(name: str) -> list[Path]:
        return [root.absolute() for root, folders in listed if any(f.name == name for f in folders)]

    log = logging.getLogger("polystack.server")
    wanted = sorted(found) if start is None else sorted(start & found.keys())
    # folders that cannot be read: served without (--exit-on-error false), or named as the start fails
    failures = dict(config.start_failures)
    for name in sorted((start or frozenset()) - found.keys()):  # explicit model control reads the repository alone
        missing = (
            f"--load-model {name}: failed to poll model {name!r}: model not found in any model repository "
            f"({', '.join(map(str, roots))}); add its folder, or name a model folder (a version is not a name)"
        )
        if config.exit_on_error:  # named as the start fails, once the others were tried
            failures[name] = InvalidRequest(missing)
            continue
        log.error("failed to load a model at start; serving the others (--exit-on-error false)", extra={
            "model": name, "error": missing,
        })  # fmt: skip
    read: set[str] = set()
    store = open_store()
    try:
        while wanted:  # in name order, then the models the ensembles read run, in name order
            more: set[str] = set()
            for name in wanted:
                done: list[Registered] = []
                try:
                    if name in twice:  # Triton's load fails so: the model is not unique
                        raise NotUnique(twice[name])
                    folder = found[name].resolve() / copies.get(name, name)
                    served_as = name if name in copies else None  # a copy's name (namespacing)
                    m = model_repository.register_folder(store, folder, done, rules=config.folder_rules, name=served_as)
                except PolystackError as e:
                    model_repository.undo(store, done)  # what it registered of the folder before it failed
                    if config.exit_on_error:  # the start tries the other models, then fails naming each, as Triton's
                        failures[name] = e
                        continue
                    log.error(
                        "failed to load a model at start; serving the others (--exit-on-error false)",
                        extra={"model": name, "error": e.message},
                    )
                    failures[name] = load_failed(name, e)
                    continue
                registered += done
                read.add(name)
                if m.ensemble is not None:  # served once the models it runs are loaded: nothing to register
                    pipeline = m.ensemble
                    if config.folder_rules.namespacing:  # its steps run its repository's copies
                        pipeline = model_repository.in_namespace(pipeline, found[name].absolute(), holding, names)
                    ensembles[m.name] = pipeline
                    more |= (pipeline.models & found.keys()) - read
                    continue
                models += m.refs
                if m.config is not None:
                    configs[m.name] = m.config
            wanted = sorted(more - read - failures.keys())  # those this pass read (or failed) are done
        if ray and config.exit_on_error and failures:  # said before Ray starts: its replicas would load the rest
            raise start_failed(failures)
    except BaseException:
        model_repository.undo(store, registered)
        raise
    finally:
        store.close()
    return dataclasses.replace(
        config,
        models=models,
        model_configs=configs,
        ensembles=ensembles,
        model_repositories=[root.absolute() for root in roots],
        repository_models=sorted(read),
        repository_seen=seen,
        start_failures=failures,
    )


def _model_configs(items: list[str]) -> dict[str, ConfigFile]:
    """``--model-config NAME=FILE`` options as {name: the file's config, as JSON, and its directory}; the
    file is JSON or Triton's config.pbtxt. A model's config is checked against the model when it loads, at
    start."""
    from polystack.server import config_text, model_config

    configs: dict[str, model_config.ConfigFile] = {}
    for item in items:
        name, sep, path = item.partition("=")
        if not (sep and name and path):
            raise InvalidRequest(
                f"--model-config takes NAME=FILE (a model and its Triton config: config.pbtxt or JSON), not {item!r}"
            )
        if ":" in name:
            raise InvalidRequest(
                f"--model-config takes a model name without a version, not {name!r}: a config applies to every "
                "version served"
            )
        if name in configs:
            raise InvalidRequest(f"--model-config names model {name!r} twice; give one file per model")
        file = Path(path).resolve()  # replicas on Ray read its warmup/ folder from their own working directory
        if file.is_dir():  # a Triton model directory
            file = file / "config.pbtxt"
        try:
            text = file.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as e:
            reason = e.strerror if isinstance(e, OSError) else "not UTF-8 text"
            raise InvalidRequest(f"--model-config {name}: cannot read {file}: {reason}") from None
        try:  # its version_policy picks the versions served (Server._refs), as GET config shows the ones served
            policy, text = model_config.split_field(config_text.as_json(text), "version_policy")
            configs[name] = model_config.ConfigFile(text, file.parent, policy=policy)
        except InvalidRequest as e:
            raise e.prefixed(f"--model-config {name}: {file}") from None
    return configs


@dataclasses.dataclass(frozen=True)
class _Listeners:
    """Where the server listens and what: ``--host``, and tritonserver's per-listener addresses and switches."""

    host: str
    grpc_host: str | None
    metrics_host: str | None
    http: bool
    grpc: bool
    metrics: bool
    cpu_metrics: bool

    @classmethod
    def resolve(
        cls,
        host: str | None,
        http: str | None,
        grpc: str | None,
        metrics: str | None,
        allow_http: bool,
        allow_grpc: bool,
        allow_metrics: bool,
        allow_cpu_metrics: bool,
        allow_gpu_metrics: bool,  # no GPU metrics here: taken, and either value serves alike
    ) -> _Listeners:
        def bare(address: str | None, flag: str) -> str | None:
            if address is None:
                return None
            if not address.strip():
                raise InvalidRequest(f"{flag} takes an address to listen on (127.0.0.1, 0.0.0.0, ::1), not an empty one")
            return address[1:-1] if address.startswith("[") and address.endswith("]") else address  # [::1]: ::1

        every = bare(host, "--host") or "127.0.0.1"  # polystack's: loopback unless told
        main = bare(http, "--http-address") or every
        grpc_host = bare(grpc, "--grpc-address") or every
        metrics_host = bare(metrics, "--metrics-address") or main  # Triton's default: the HTTP address
        return cls(  # a listener turned off: its address is not read, as in Triton
            main,
            grpc_host if grpc_host != main and allow_grpc else None,
            metrics_host if metrics_host != main and allow_metrics else None,
            allow_http,
            allow_grpc,
            allow_metrics,
            allow_cpu_metrics,
        )


def _folder_rules(name: str | None, disable: bool, strict: str | None) -> FolderRules:
    """tritonserver's --model-config-name, --disable-auto-complete-config and --strict-model-config, checked."""
    from polystack.server.model_repository import FolderRules

    if name is not None and (not name or "/" in name or "\\" in name or name in (".", "..")):
        raise InvalidRequest(
            f"--model-config-name takes the name of a file in a model's configs/ folder, without .pbtxt, not {name!r}"
        )
    if strict is not None:
        strict_on = _flag_bool(strict, "--strict-model-config")
        logging.getLogger("polystack.server").warning(
            "'--strict-model-config' has been deprecated, as in Triton; use '--disable-auto-complete-config' instead"
        )
        if disable and not strict_on:  # Triton's override, said
            logging.getLogger("polystack.server").warning(
                "overriding deprecated '--strict-model-config' from false to true in favor of "
                "'--disable-auto-complete-config'"
            )
        disable = disable or strict_on
    return FolderRules(config_name=name or "", auto_complete=not disable)


def _grpc_tls(
    use_ssl: str, mutual: str | None, cert: Path | None, key: Path | None, root: Path | None
) -> TlsConfig | None:
    """tritonserver's gRPC TLS flags, read as it reads them: any --grpc-use-ssl-mutual turns TLS on, the files
    are read only with TLS on, the root certificate only for mutual TLS."""
    from polystack.server.tls import GRPC_FLAGS, TlsConfig

    on = _flag_bool(use_ssl, "--grpc-use-ssl")
    both = mutual is not None and _flag_bool(mutual, "--grpc-use-ssl-mutual")
    if not (on or mutual is not None):
        return None
    if both and root is None:
        raise InvalidRequest("--grpc-use-ssl-mutual needs --grpc-root-cert: the CA certificates clients' certificates must chain to")
    if cert is None or key is None:
        raise InvalidRequest(
            "--grpc-use-ssl needs --grpc-server-cert (the server's certificate chain, PEM) and --grpc-server-key"
        )
    return TlsConfig.resolve(cert, key, root if both else None, GRPC_FLAGS)


def _metrics_config(items: list[str], triton_metrics: bool) -> tuple[bool, tuple[float, ...]]:
    """tritonserver's --metrics-config settings: whether --triton-metrics shows its duration counters, and the
    quantiles of its latency summaries (none: no summaries). Histograms are taken (polystack's latencies are
    histograms already, a decoupled model's first response among them)."""
    from polystack.server import latency_summaries

    counters, summaries, quantiles = True, False, latency_summaries.DEFAULT_QUANTILES
    for item in items:
        setting, eq, value = item.partition("=")
        if not eq or not setting:
            raise InvalidRequest(f"--metrics-config option format is <setting>=<value>. Got {item}")
        # tritonserver 2.51 compares the text (helper-115): only "false" turns the counters off and only "true" the
        # summaries or histograms on; any other value is taken and changes nothing, said here in the log
        if setting in ("counter_latencies", "summary_latencies", "histogram_latencies") and value not in ("true", "false"):
            logging.getLogger("polystack.server").warning(
                f"--metrics-config {item}: Triton reads only 'true' and 'false' here; {value!r} changes nothing, as in "
                "Triton"
            )
        if setting == "counter_latencies":
            counters = value != "false"
        elif setting == "summary_latencies":
            summaries = value == "true"  # the last given, as Triton keeps it
        elif setting == "summary_quantiles":
            quantiles = latency_summaries.parse_quantiles(value)
        elif setting == "histogram_latencies":
            pass  # polystack's latencies are histograms already (polystack_inference_*_duration_seconds)
        else:  # Triton leaves a setting it does not know unread
            logging.getLogger("polystack.server").warning(
                f"--metrics-config {item}: not a setting polystack (or Triton) reads; left unread, as Triton leaves it"
            )
    if summaries and not triton_metrics:
        raise InvalidRequest(
            "--metrics-config summary_latencies=true: Triton's summaries (nv_inference_*_summary_us) are among "
            "Triton's names, which --triton-metrics shows: add --triton-metrics (polystack's own latencies are "
            "histograms, polystack_inference_request_duration_seconds)"
        )
    return counters, quantiles if summaries else ()


def _metrics_interval(value: str | None) -> int:
    """tritonserver's --metrics-interval-ms: a whole number of milliseconds (2000 if not given), at least 1."""
    from polystack.cli import triton_flags
    from polystack.server.triton_metrics import DEFAULT_INTERVAL_MS

    if value is None:
        return DEFAULT_INTERVAL_MS
    triton_flags.check_value("--metrics-interval-ms", "int", value)
    if int(value) < 1:
        raise InvalidRequest(f"invalid argument for --metrics-interval-ms: {value}; give milliseconds, 1 or more")
    return int(value)


def _compression(level: str) -> bool:
    """tritonserver's --grpc-infer-response-compression-level: whether inference responses are compressed."""
    from polystack.server.grpc import COMPRESSION_LEVELS

    if level.lower() not in COMPRESSION_LEVELS:  # Triton's words, then what to do
        raise InvalidRequest(
            f"invalid argument for --grpc-infer-response-compression-level: {level!r}; give none, low, medium or high"
        )
    return level.lower() != "none"


def _load_retries(given: str | None) -> int:
    """tritonserver's --model-load-retry-count: how many more times a failed load is tried."""
    from polystack.cli import triton_flags

    if given is None:
        return 0
    triton_flags.check_value("--model-load-retry-count", "int", given)
    if int(given) < 0:
        raise InvalidRequest(f"--model-load-retry-count takes a whole number of 0 or more, not {given!r}")
    return int(given)


def _load_threads(given: str | None) -> int:
    """tritonserver's --model-load-thread-count: how many models build at once (0 is taken as 1, as Triton does)."""
    from polystack.cli import triton_flags
    from polystack.server.loader import DEFAULT_THREADS

    if given is None:
        return DEFAULT_THREADS
    triton_flags.check_value("--model-load-thread-count", "int", given)
    if int(given) < 0:
        raise InvalidRequest(f"--model-load-thread-count takes a whole number of 0 or more, not {given!r}")
    return max(1, int(given))


def _rate_limit(modes: list[str], resources: list[str]) -> dict[tuple[int, str], int] | None:
    """tritonserver's --rate-limit (the last one given) and --rate-limit-resource: None, off; else the
    resources given ((device or each, name) -> count; empty: as much as any one instance needs)."""
    from polystack.batching.rate_limiter import parse_resources
    from polystack.cli import triton_flags

    for mode in modes:
        if mode.lower() not in ("off", "execution_count"):  # Triton's words, then what to do
            raise InvalidRequest(f"invalid argument for --rate-limit: {mode!r}; give off or execution_count")
    for value in resources:
        triton_flags.check_resource(value)
    if not modes or modes[-1].lower() == "off":
        if resources:
            logging.getLogger("polystack.server").info(
                "--rate-limit-resource changes nothing while the rate limiter is off (--rate-limit execution_count "
                "turns it on)"
            )
        return None
    return parse_resources(resources)


POLL_SECS = 15.0  # tritonserver's --repository-poll-secs default
# tritonserver's default ports: a server on its HTTP and gRPC ones serves its metrics on its metrics one too
TRITON_HTTP_PORT, TRITON_GRPC_PORT, TRITON_METRICS_PORT = 8000, 8001, 8002


def _model_control(
    mode: str | None, load: list[str], allow: bool, poll_secs: float | None, repository: bool
) -> tuple[bool, float | None, frozenset[str] | None]:
    """tritonserver's ``--model-control-mode`` and ``--load-model`` as polystack's flags: whether loads and
    unloads are allowed, how often to poll (None: never), and the models served at start (None: as without
    them). Triton's checks, in its words where it has some."""
    log = logging.getLogger("polystack.server")
    kind = (mode or "").lower()  # as Triton reads it
    if mode is not None and kind not in ("none", "poll", "explicit"):
        raise InvalidRequest(f"invalid argument for --model-control-mode: {mode!r}; give none, poll or explicit")
    if load and kind != "explicit":
        raise InvalidRequest("Use of '--load-model' requires setting '--model-control-mode=explicit' as well")
    if allow and kind != "explicit":
        raise InvalidRequest(
            f"--allow-model-control is --model-control-mode explicit, not {kind}; drop one of them"
        )
    if poll_secs is not None and kind != "poll":  # Triton's parser zeroes it outside poll mode
        log.warning(
            f"--repository-poll-secs polls the repository only in --model-control-mode poll, not {kind}: ignored, as "
            "Triton ignores it",
            extra={"repository_poll_secs": poll_secs},
        )
        poll_secs = None
    if kind == "poll":
        if not repository:
            raise InvalidRequest("--model-control-mode poll polls the --model-repository folders: give one")
        if poll_secs is not None and not poll_secs > 0:  # Triton's poll mode then never polls: its none mode
            return False, None, None
        return False, POLL_SECS if poll_secs is None else poll_secs, None
    if kind == "none":
        return False, None, None
    names = frozenset(load)  # as given, as Triton takes them (" m" is no model's name)
    if "" in names:
        raise InvalidRequest("--load-model takes a model name (or * for all), not an empty one")
    if "*" in names and len(names) > 1:
        raise InvalidRequest("Wildcard model name '*' must be the ONLY startup model if specified at all")
    return True, None, None if "*" in names else names


def _flag_level(value: str) -> int:
    """``--log-verbose``'s value as tritonserver reads it: a whole number, or true (1) and false (0)."""
    word = value.strip().lower()
    if word in ("true", "false"):
        return int(word == "true")
    try:
        return int(word)
    except ValueError:
        raise InvalidRequest(f"--log-verbose takes a level (0: off, 1 or more: on), not {value!r}") from None


def _sagemaker(
    allow: str | None, port: int | None, safe: str | None, engine: str, others: dict[str, int]
) -> int | None:
    """The SageMaker port to serve (None: none), from tritonserver's flags, checked in its words where it has some."""
    if allow is None or not _flag_bool(allow, "--allow-sagemaker"):
        if port is not None or safe is not None:
            logging.getLogger("polystack.server").warning(
                "--sagemaker-port and --sagemaker-safe-port-range are read with --allow-sagemaker true only"
            )
        return None
    if engine == "ray":
        raise InvalidRequest(
            "--allow-sagemaker true: the SageMaker port is served by the local engine's server; serve with --engine "
            "local"
        )
    port = 8080 if port is None else port
    if not 0 <= port <= 65535:
        raise InvalidRequest(f"--sagemaker-port {port}: give a port from 0 (any free one) to 65535")
    taken = [name for name, other in others.items() if other == port]
    if port and taken:
        raise InvalidRequest(  # Triton's words, then what to do
            f"The server cannot listen to {taken[0]} requests and SageMaker requests at the same address and port "
            f"{port}; give --sagemaker-port a port of its own"
        )
    if safe is not None:
        low, dash, high = safe.partition("-")
        if not (dash and low.strip().isdigit() and high.strip().isdigit() and int(low) <= int(high)):
            raise InvalidRequest(f"--sagemaker-safe-port-range {safe}: give <low>-<high>, two port numbers")
        outside = [(name, p) for name, p in others.items() if not int(low) <= p <= int(high)]
        if outside:  # Triton's check, for the ports beside the SageMaker one
            name, other = outside[0]
            raise InvalidRequest(
                f"The server cannot listen to {name} requests at port {other}, allowed port range is "
                f"[{int(low)}, {int(high)}]; "
                "give the HTTP, gRPC and metrics ports within --sagemaker-safe-port-range"
            )
    return port


def _storage_uri(uri: str) -> str:
    """``AIP_STORAGE_URI``, the model repository Vertex AI gives a container (gs://, or a local folder), as Triton
    reads it where no --model-repository is given."""
    from polystack.server.cloud_repository import check_location, is_cloud

    try:
        check_location(uri)
    except InvalidRequest as e:
        raise InvalidRequest(f"AIP_STORAGE_URI={uri}: {e.message.split(': ', 1)[1]}") from None
    if not is_cloud(uri) and not Path(uri).is_dir():  # said as --model-repository's, which it was not given as
        raise InvalidRequest(f"AIP_STORAGE_URI={uri}: not a folder; give the folder that holds the model folders")
    return uri


class _StoppedCopying(BaseException):
    """SIGTERM came while a repository was being copied from cloud storage (before the server's own handlers): a
    BaseException, as KeyboardInterrupt, which no `except Exception` of the copy takes for a failed read."""


def _repository_roots(locations: list[str], clouds: list[CloudRepository]) -> list[Path]:
    """The folders of ``--model-repository``'s locations: a local folder as it is, a repository in cloud storage as
    its local copy, made now (added to ``clouds``, whose copies go at the exit). A SIGTERM meanwhile (a pod stopped
    while its models download) raises ``_StoppedCopying``, as SIGINT raises KeyboardInterrupt, so that the copies go."""
    import signal

    from polystack.server.cloud_repository import CloudRepository, check_location, is_cloud

    def stop(signum: int, frame: object) -> None:
        raise _StoppedCopying()

    roots: list[Path] = []
    before = signal.signal(signal.SIGTERM, stop) if any(map(is_cloud, locations)) else None
    try:
        for location in locations:
            check_location(location)
            if not is_cloud(location):
                roots.append(Path(location))
                continue
            cloud = CloudRepository(location)
            clouds.append(cloud)
            try:
                cloud.sync()
            except PolystackError as e:  # Triton's start fails too where it cannot read a repository
                raise InvalidRequest(f"--model-repository {cloud.shown}: {e.message}; check its name and credentials") from None
            roots.append(cloud.local)
    finally:
        if before is not None:
            signal.signal(signal.SIGTERM, before)
    return roots


def _vertex_ai(
    allow: str | None, port: int | None, model: str | None, engine: str, others: dict[str, int]
) -> tuple[int | None, VertexAiSettings | None]:
    """The Vertex AI port to serve and its settings (None: none), from tritonserver's flags and the variables Vertex
    AI sets in its containers, checked in Triton's words where it has some."""
    from polystack.server.vertex_ai import VertexAiSettings

    on = os.environ.get("AIP_MODE") == "PREDICTION" if allow is None else _flag_bool(allow, "--allow-vertex-ai")
    if not on:
        return None, None
    if engine == "ray":
        raise InvalidRequest(
            "--allow-vertex-ai true: the Vertex AI port is served by the local engine's server; serve with --engine "
            "local"
        )
    if port is None:
        given = os.environ.get("AIP_HTTP_PORT", "")
        if given and not given.isdigit():
            raise InvalidRequest(f"AIP_HTTP_PORT={given!r}: give a port number, or --vertex-ai-port")
        port = int(given) if given else 8080
    if not 0 <= port <= 65535:
        raise InvalidRequest(f"--vertex-ai-port {port}: give a port from 0 (any free one) to 65535")
    taken = [name for name, other in others.items() if other == port]
    if port and taken:
        raise InvalidRequest(  # Triton's words, then what to do
            f"The server cannot listen to {taken[0]} requests and Vertex AI requests at the same address and port "
            f"{port}; give --vertex-ai-port a port of its own"
        )
    return port, VertexAiSettings.from_environment(model or "")


def _flag_bool(value: str, flag: str) -> bool:
    """A boolean flag's value as tritonserver reads one (``--flag=1``, ``--flag true``)."""
    from polystack.server.onnxruntime_config import triton_bool

    try:
        return triton_bool(value.strip())
    except InvalidRequest:
        raise InvalidRequest(f"{flag} takes 1 or 0 (true or false), not {value!r}") from None
