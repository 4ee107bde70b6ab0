"""Serving on Ray Serve: the same engine and the same OIP v2 HTTP routes, in Ray Serve replicas.

Each replica builds the serving engineer's composition root (``server.app.Server``: engine, data
plane, HTTP handlers) over the model store, without binding a socket, and answers the requests
Ray Serve's HTTP proxy hands it by routing them through that server's own ``HttpApp``: one route
table, one codec (JSON and the binary tensor extension), one error table, so tritonclient and
KServe clients see the same server whether it runs on one machine or on Ray.

    polystack serve --engine ray --replicas 2            # or --autoscale 1:4
    polystack serve --engine ray --ray-address auto      # join a running cluster

Replicas open the store by path, so on a cluster the store folder must be visible to every
node (a shared file system), as must the folders of ``--model-config`` files whose warm-up samples
read files (``warmup/``): each replica serves its models as those configs say. Only HTTP is exposed
(Ray Serve's gRPC proxy needs its own stubs).
Metrics and statistics are per replica. Ray Serve admits at most ``max_ongoing_requests`` per
replica (default 5 in Ray); it is raised here to 64, since at 5 the router's back-off collapsed
throughput under 32 concurrent clients on this machine. Each replica sets up polystack's JSON logging
(``ServeConfig.log``) and logs requests and failures as the local server does. On SIGTERM the
application is deleted first, so replicas finish the requests they hold (within the drain timeout)
while Ray Serve's proxy answers new ones 404; then Serve shuts down. ``check_before_ray`` refuses,
before Ray starts, what would otherwise fail deep inside it.
"""

from __future__ import annotations

import asyncio
import dataclasses
import inspect
import signal
import socket
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from polystack.errors import BackendUnavailable, InvalidRequest, PayloadTooLarge
from polystack.server.http import Request, Response, failed, log_request

DEFAULT_MAX_ONGOING = 64


def parse_autoscale(text: str) -> tuple[int, int]:
    lo, sep, hi = text.partition(":")
    if not sep or not lo.isdigit() or not hi.isdigit() or int(lo) < 0 or int(hi) < max(1, int(lo)):
        raise InvalidRequest(f"--autoscale {text!r} is not MIN:MAX with 0 <= MIN <= MAX and MAX >= 1; e.g. 1:4")
    return int(lo), int(hi)


def check_before_ray(store: Any, config: Any, ray_address: str | None = None, most_replicas: int = 1) -> None:
    """Refuse, with one line, what would fail only once Ray is up: an unknown model, a start config
    (``--model-config``) the model cannot take or an ensemble its models do not fit (a deployment that
    never becomes healthy), a sequence model in a deployment of more than one replica (``most_replicas``: its
    sequences would be spread over them), an HTTP port left to chance (Ray Serve's proxy cannot report one), and, for a
    Ray started here (no ``ray_address``: on a cluster the proxy runs on its nodes), a port already taken."""
    from polystack.engine import Engine
    from polystack.server.app import Server
    from polystack.store import ModelRef

    for ref in config.models:
        store.get(ModelRef.parse(ref))  # NotFound, with what to do
    if config.model_configs or config.ensembles:  # read here as each replica will, warm-up files included
        engine = Engine(store)
        server = Server(engine, config)
        try:
            stateful = server.check_model_configs()
            if stateful and most_replicas > 1:
                raise InvalidRequest(
                    f"model {stateful[0]!r} is a sequence model (its config sets sequence_batching): each of the "
                    f"{most_replicas} replicas would keep its own sequences, and Ray Serve sends a sequence's requests "
                    "to any replica; serve it with one replica (--replicas 1, the default), or with --engine local"
                )
            server.check_ensembles()  # against the models as planned: the replicas load them
        finally:
            server.close()
            engine.close()
    if config.http_port == 0:
        raise InvalidRequest("--engine ray needs a fixed --http-port: Ray Serve's proxy cannot report one it chose")
    if ray_address:
        return
    try:
        family, kind, proto, _, address = socket.getaddrinfo(
            config.host, config.http_port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )[0]
        with socket.socket(family, kind, proto) as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind(address)
    except OSError as e:
        raise InvalidRequest(
            f"cannot listen on {config.host} port {config.http_port} ({e.strerror}); stop what uses it, or choose "
            "another --host or --http-port"
        ) from None


def proxy_options(config: Any) -> dict[str, Any]:
    """Ray Serve's ``http_options`` for ``config``: its address, and TLS with the server's files (Ray Serve's
    proxy terminates it; it cannot require client certificates, so mutual TLS is refused before this)."""
    options: dict[str, Any] = {"host": config.host, "port": config.http_port}
    if config.tls is not None:
        options.update(ssl_certfile=str(config.tls.cert), ssl_keyfile=str(config.tls.key))
    return options


class OipReplica:
    """One Ray Serve replica: a polystack Server's HTTP handlers behind Ray Serve's proxy."""

    def __init__(self, store_home: str, config: Any) -> None:
        from polystack.engine import Engine
        from polystack.server import logs
        from polystack.server.app import Server
        from polystack.store import Store

        logs.configure(config.log)  # a replica is a process of its own: JSON lines on its stderr
        self.store = Store.at(store_home)
        self.engine = Engine(self.store)
        # settings changed over the protocol would reach one replica of several: off here
        self.server = Server(self.engine, dataclasses.replace(config, grpc_port=None, runtime_settings=False))
        self.server.load_models()
        self.http = self.server.http
        self._serving = False
        # Ray Serve's answer type, bound once (a request's path imports nothing)
        from starlette.responses import Response as StarletteResponse

        self._answer = StarletteResponse

    async def __call__(self, request: Any) -> Any:
        if not self._serving:  # the loop Ray runs the replica's calls on: its models' calls to others run there
            self.server.plane.calls.serve_on(asyncio.get_running_loop())
            self._serving = True
        headers = {k.lower().encode("latin-1"): v.encode("latin-1") for k, v in request.headers.items()}
        req = Request(request.method.encode(), request.url.path, headers, b"", True)
        try:
            req.body = await self._body(request, headers)
            routed = self.http.resolve(req)
            if isinstance(routed, Response):
                resp = routed
            else:
                handler, args = routed
                result = handler(req, args)
                resp = await result if inspect.isawaitable(result) else result
        except Exception as e:  # a PolystackError maps to its 4xx/5xx; anything else is a 500, logged
            resp = failed(req, e)
        log_request(self.http, req, resp.status)
        out_headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in resp.headers}
        if req.method == b"HEAD":  # the length a GET would have had, as the local server says it
            out_headers["content-length"] = str(resp.length)
        return self._answer(
            content=resp.whole() if req.method != b"HEAD" else b"",
            status_code=resp.status,
            media_type=resp.content_type.decode("latin-1"),
            headers=out_headers,
        )

    async def _body(self, request: Any, headers: dict[bytes, bytes]) -> bytes:
        """The request body, refused (413) past ``--max-body-bytes`` as soon as its length says so, or as
        soon as that much has arrived."""
        limit = self.http.max_body_bytes
        length = headers.get(b"content-length", b"")
        too_large = PayloadTooLarge(
            f"the request body exceeds the server's limit of {limit:,} bytes; send smaller batches or raise "
            "--max-body-bytes"
        )
        if length.isdigit() and int(length) > limit:
            raise too_large
        chunks, size = [], 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise too_large
            chunks.append(chunk)
        return b"".join(chunks)

    def __del__(self) -> None:
        try:
            self.server.close()
            self.engine.close()
            self.store.close()
        except Exception:  # best effort at replica teardown
            pass


def build_app(
    store_home: Path | str,
    config: Any,
    *,
    replicas: int | None = None,
    autoscale: tuple[int, int] | None = None,
    max_ongoing_requests: int = DEFAULT_MAX_ONGOING,
    num_cpus: float = 1.0,
) -> Any:
    """The Ray Serve application (``serve.run`` it): ``replicas`` fixed, or ``autoscale`` (min, max)."""
    try:
        from ray import serve
    except ImportError as e:
        raise BackendUnavailable("--engine ray needs Ray Serve: pip install 'polystack[ray]'") from e
    if replicas is not None and autoscale is not None:
        raise InvalidRequest("give --replicas or --autoscale, not both")
    options: dict[str, Any] = {
        "name": "polystack",
        "max_ongoing_requests": max_ongoing_requests,
        "ray_actor_options": {"num_cpus": num_cpus},
        # a replica being stopped finishes the requests it holds, for up to the drain timeout
        "graceful_shutdown_timeout_s": config.drain_timeout_s,
        "graceful_shutdown_wait_loop_s": 0.5,
    }
    if autoscale is not None:
        options["autoscaling_config"] = {
            "min_replicas": autoscale[0],
            "initial_replicas": max(1, autoscale[0]),
            "max_replicas": autoscale[1],
            "target_ongoing_requests": max(1, max_ongoing_requests // 4),
        }
    else:
        options["num_replicas"] = replicas or 1
    deployment = serve.deployment(**options)(OipReplica)
    # replicas bind no socket; the proxy terminates TLS, so the private key stays out of Ray's object store
    return deployment.bind(str(store_home), dataclasses.replace(config, tls=None))


def run_ray_serve(
    store_home: Path | str,
    config: Any,
    *,
    replicas: int | None = None,
    autoscale: tuple[int, int] | None = None,
    ray_address: str | None = None,
    max_ongoing_requests: int = DEFAULT_MAX_ONGOING,
    on_serving: Callable[[], None] | None = None,
) -> int:
    """Serve on Ray until SIGTERM/SIGINT, then shut Serve down; the process exit code. ``on_serving`` is
    called once the replicas are up.

    Starts a local Ray when no ``ray_address`` is given (on machines whose traffic must stay on
    loopback, run it in a loopback-only network namespace).
    """
    try:
        import ray
        from ray import serve
    except ImportError as e:
        raise BackendUnavailable("--engine ray needs Ray Serve: pip install 'polystack[ray]'") from e
    app = build_app(
        store_home, config, replicas=replicas, autoscale=autoscale, max_ongoing_requests=max_ongoing_requests
    )
    started_here = not ray.is_initialized()
    if started_here:
        kwargs: dict[str, Any] = {"logging_level": "WARNING"}
        if ray_address:
            ray.init(address=ray_address, **kwargs)
        else:
            ray.init(include_dashboard=False, **kwargs)
    stop = threading.Event()
    serving = False

    def on_signal(*_: Any) -> None:
        stop.set()
        if not serving:  # serve.run waits for replicas that may never come up (too few CPUs): stop waiting
            raise KeyboardInterrupt

    try:
        for sig in (signal.SIGTERM, signal.SIGINT):  # replaces ray.init's handler (sys.exit)
            signal.signal(sig, on_signal)
        try:
            serve.start(http_options=proxy_options(config))
            serve.run(app, name="polystack", route_prefix="/", blocking=False)
            serving = True
            if on_serving is not None:
                on_serving()
            scheme = "https" if config.tls is not None else "http"
            print(f"serving on Ray Serve at {scheme}://{config.host}:{config.http_port}/v2 (HTTP only)", flush=True)
            while not stop.wait(1.0):
                pass
        except (SystemExit, KeyboardInterrupt):  # a signal, or Ray's own SIGTERM handler exiting: stop cleanly
            pass
        finally:
            if serving:  # the proxy stays up while the replicas finish what they hold; then everything stops
                serve.delete("polystack", _blocking=True)
            serve.shutdown()
    finally:
        if started_here:
            ray.shutdown()
    return 0
