"""The demo's serving step: serve demo-mlp on free 127.0.0.1 ports and query it with tritonclient."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

import numpy as np

from polystack.server.app import ServeConfig, ServerThread

if TYPE_CHECKING:
    from polystack.cli.demo import DemoContext


def demo_step(ctx: DemoContext) -> None:
    ctx.step("serve it over the Open Inference Protocol v2 and query it with tritonclient (HTTP and gRPC)")
    record = ctx.models["demo-mlp"]
    try:
        import tritonclient.grpc as grpcclient
        import tritonclient.http as httpclient
    except ImportError:
        ctx.console.print("tritonclient is not installed (pip install 'tritonclient[http,grpc]'); skipping")
        return
    config = ServeConfig(host="127.0.0.1", http_port=0, grpc_port=0, models=[f"{record.name}:{record.version}"])
    server = ServerThread(ctx.engine, config).start()
    try:
        ctx.console.print(f"polystack serve: HTTP on {server.http_url}, gRPC on {server.grpc_url}", markup=False)
        x = np.random.default_rng(2).standard_normal((2, 16)).astype(np.float32)

        http = httpclient.InferenceServerClient(server.http_url)
        md = http.get_model_metadata(record.name)
        ctx.console.print(
            f"HTTP  model metadata: {md['name']} v{md['versions']} on {md['platform']}, "
            f"inputs {[(t['name'], t['datatype'], t['shape']) for t in md['inputs']]}",
            markup=False,
        )
        inp = httpclient.InferInput("x", list(x.shape), "FP32")
        inp.set_data_from_numpy(x)  # binary tensor extension, as tritonclient sends by default
        started = time.perf_counter()
        y_http = http.infer(record.name, [inp]).as_numpy("y")
        ctx.console.print(
            f"HTTP  infer x{list(x.shape)} -> y{list(y_http.shape)} in {(time.perf_counter() - started) * 1000:.2f} ms; "
            f"y[0] = {np.array2string(y_http[0], precision=4)}",
            markup=False,
        )

        grpc = grpcclient.InferenceServerClient(server.grpc_url)
        ginp = grpcclient.InferInput("x", list(x.shape), "FP32")
        ginp.set_data_from_numpy(x)
        started = time.perf_counter()
        y_grpc = grpc.infer(record.name, [ginp]).as_numpy("y")
        ctx.console.print(
            f"gRPC  infer x{list(x.shape)} -> y{list(y_grpc.shape)} in {(time.perf_counter() - started) * 1000:.2f} ms; "
            f"same as HTTP: {bool(np.array_equal(y_http, y_grpc))}",
            markup=False,
        )
        stats = http.get_inference_statistics(record.name)["model_stats"][0]["inference_stats"]["success"]
        ctx.console.print(f"statistics: {stats['count']} successful requests", markup=False)
    finally:
        server.stop()
        ctx.console.print("server stopped (drained, readiness false first)")
