"""The HTTP/REST transport: a lean asyncio server on httptools, routing OIP v2 paths to the data plane.

Why by hand and not Starlette/uvicorn: measured here, a bare Starlette + uvicorn route costs
~0.57 ms a request, more than the whole budget (p50 <= 0.45 ms through tritonclient, including the
model). The framework layers (ASGI scope dicts, middleware stack, request/response objects,
header normalisation) are what that costs; what remains to write is small: an
``asyncio.Protocol`` feeding httptools (the same C parser uvicorn uses; ``http_connection.py``), a fixed route
table over ~15 OIP paths, and one ``transport.write`` per response. What no library does for us anyway is
ours too: refusing an oversized body with 413 as soon as its headers arrive, before reading it (the connection's),
415 for content types the server does not speak, and the binary tensor extension's header (here).

Here: the route table and the handlers (``HttpApp``, one per server), the request and response of one exchange, and
reading and encoding their bodies. Each connection (``http_connection.HttpProtocol``) handles its requests in order
(HTTP/1.1 pipelining is honoured, bounded); a client that disconnects mid-request only loses its own connection.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import functools
import itertools
import logging
import os
import time
import zlib
from collections.abc import AsyncGenerator, Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar
from urllib.parse import unquote

import orjson

from polystack.errors import (
    InvalidRequest,
    ModelNotReady,
    NotFound,
    PayloadTooLarge,
    PolystackError,
    Restricted,
    ShuttingDown,
    UnsupportedMediaType,
    load_failed,
    quote,
)
from polystack.metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from polystack.protocol import generate_codec, http_codec, v1_codec
from polystack.protocol.wire import InferRequest, InferResponse
from polystack.server import model_files, status
from polystack.server.dataplane import DataPlane
from polystack.server.decoupled import Streamed
from polystack.server.header_forward import HeaderForward
from polystack.server.logs import request_level
from polystack.server.restricted import Restrictions
from polystack.server.tracing import Front
from polystack.types import DType

if TYPE_CHECKING:
    from polystack.server.http_connection import HttpProtocol

log = logging.getLogger("polystack.server.http")
_Decoded = TypeVar("_Decoded")  # what a request body decodes into (an InferRequest, a V1 request)

JSON = b"application/json"
# Accepted request content types (the part before ';'). curl's default for -d is form-urlencoded, and a
# browser's fetch() of a string body (Postman's raw text too) sends text/plain: both are read as JSON, as
# Triton reads them (it reads no content type), rather than turning every first try into a 415.
_ACCEPTED_TYPES = frozenset(
    {
        b"",
        b"application/json",
        b"application/octet-stream",
        b"application/vnd.sagemaker-triton.binary+json",
        b"application/x-www-form-urlencoded",
        b"text/plain",
    }
)
# Responses the client accepts compressed (Accept-Encoding, tritonclient's response_compression_algorithm)
# are compressed from this size (below it the header costs more than it saves), on the loop below the next.
_COMPRESS_FROM_BYTES = 1024
_COMPRESS_INLINE_BELOW = 256 * 1024
# JSON and BYTES bodies from this size, and compressed ones, are read on the codec threads (_slow_to_read)
DECODE_INLINE_BELOW = 256 * 1024
_MAX_GZIP_MEMBERS = 64  # a body compressed in one go has one; concatenated pieces a few
_INFLATE_SLICE = 64 * 1024
_ids = itertools.count(1)
_MAX_ROUTES = 1024  # (method, path) pairs whose route is kept
_MAX_ROUTE_CHARS = 256  # the longest path whose route is kept: at most ~0.5 MiB in all


@dataclass
class Request:
    method: bytes
    path: str
    headers: dict[bytes, bytes]
    body: bytes
    keep_alive: bool
    started: float = field(default_factory=time.perf_counter)
    inference_id: str | None = None  # an inference request's own ``id``, once its body is read
    http10: bool = False  # an HTTP/1.0 request that asked to be kept alive
    received: tuple[int, int] = (0, 0)  # perf_counter_ns at its first byte and at its last (a trace's HTTP_RECV_*)
    front: Front | None = None  # its trace's front-end side, while trace files are written: ended once answered
    # its headers' names as the client wrote them, by the lower-case key (kept only while headers are forwarded)
    names: dict[bytes, bytes] | None = None
    connection: object | None = None  # the connection it came on, which sends one request at a time (HTTP/1.1)
    _id: str | None = field(default=None, repr=False)

    @property
    def request_id(self) -> str:
        """The X-Request-ID header, else the inference request's ``id``, else one made up (once: every line
        about the request carries the same)."""
        if self._id is None:
            rid = self.headers.get(b"x-request-id")
            self._id = rid.decode("latin-1") if rid else self.inference_id or f"r{next(_ids)}"
        return self._id

    def log_ids(self) -> dict[str, str]:
        """``request_id`` for the log, and the inference request's own ``id`` beside it where it is another (a client
        sending both: helper-265, the id the answer echoes was in no line)."""
        rid, own = self.request_id, self.inference_id
        return {"request_id": rid, "inference_id": own} if own and own != rid else {"request_id": rid}


@dataclass
class Response:
    status: int
    body: bytes
    content_type: bytes = JSON
    headers: list[tuple[bytes, bytes]] = field(default_factory=list)
    tail: list[bytes | memoryview] = field(default_factory=list)  # more body after ``body``, written uncopied
    # a body sent as it comes, after ``body`` (chunked; HTTP/1.0: to the connection's close): a decoupled model's
    # Server-Sent Events
    events: AsyncGenerator[bytes, None] | None = None

    @property
    def length(self) -> int:
        return len(self.body) + sum(memoryview(t).nbytes for t in self.tail)

    def whole(self) -> bytes:
        """The body in one piece (for transports that take no list of parts)."""
        return b"".join([self.body, *self.tail]) if self.tail else self.body


def json_response(status_code: int, doc: Any) -> Response:
    return Response(status_code, orjson.dumps(doc))


def error_response(exc: BaseException) -> Response:
    return Response(status.http_status(exc), orjson.dumps({"error": status.message(exc)}))


Handler = Callable[[Request, list[str]], Response | Awaitable[Response]]


class _RunFailed(Exception):
    """A generate_stream request that failed in its run, not before it: answered as an event holding the error."""

    def __init__(self, error: PolystackError) -> None:
        super().__init__(str(error))
        self.error = error


class HttpApp:
    """Routes and handlers; one per server, shared by its connections."""

    def __init__(
        self,
        plane: DataPlane,
        *,
        max_body_bytes: int,
        access_log: bool = False,
        idle_timeout_s: float = 0.0,
        thread_initializer: Callable[[], None] | None = None,
        only_metrics: bool = False,
        restricted: Restrictions = Restrictions(),
        metrics: bool = True,
        header_forward: HeaderForward | None = None,
    ) -> None:
        self.plane = plane
        self.header_forward = header_forward  # headers made request parameters (--http-header-forward-pattern)
        self.serve_metrics = metrics  # GET /metrics (off: serve --allow-metrics false, as Triton's)
        self.restricted = restricted  # --http-restricted-api: the APIs that answer only with a header
        # each handler's API, as Triton groups its endpoints (restricted.py)
        self._apis: dict[Handler, str] = {
            self.live: "health", self.ready: "health", self.model_ready: "health", self.v1_live: "health",
            self.v1_model_ready: "health", self.server_metadata: "metadata", self.model_metadata: "metadata",
            self.v1_models: "metadata", self.infer: "inference", self.v1_predict: "inference",
            self.generate: "inference", self.generate_stream: "inference",
            self.config: "model-config", self.stats: "statistics", self.trace_setting: "trace",
            self.logging: "logging", self.repository_index: "model-repository",
            self.repository_load: "model-repository", self.repository_unload: "model-repository",
            self.shm_status: "shared-memory", self.shm_register: "shared-memory", self.shm_unregister: "shared-memory",
            self.cuda_status: "shared-memory", self.cuda_register: "shared-memory",
            self.cuda_unregister: "shared-memory",
        }  # fmt: skip
        self.only_metrics = only_metrics  # the metrics port: GET /metrics and nothing else, as Triton's
        self.max_body_bytes = max_body_bytes
        self.access_log = access_log
        # the logging extension's log_verbose_level >= 1 logs every request too (at debug), as Triton's verbose log
        self.log_settings = plane.log_settings
        self.connections: set[HttpProtocol] = set()
        self.closing = False
        self.loop: asyncio.AbstractEventLoop | None = None  # the loop its connections run on (set by them)
        self.idle_timeout_s = idle_timeout_s
        self._routes: dict[tuple[bytes, str], tuple[Handler, list[str]]] = {}
        # compressing a large response, and reading a large request, is front-end work: its own threads
        # (started as needed), on the front-end cores of a pinned server (``thread_initializer``), never the
        # runtime's inference pool
        self.codec_pool = ThreadPoolExecutor(
            max_workers=os.cpu_count() or 2, thread_name_prefix="codec", initializer=thread_initializer
        )

    def close(self) -> None:
        self.codec_pool.shutdown(wait=True)

    def starts_now(self, connection: object) -> bool:
        """A request arriving on ``connection`` starts at once (``eager.py``): nothing is in flight (no request to a
        model, no load or unload) and the connection is a ``serial`` client's (8 requests in a row from it after its
        first, and none from elsewhere since)."""
        in_flight = self.plane.in_flight
        return in_flight.count == 0 and in_flight.serial and in_flight.came_last(connection)

    async def wait_answered(self, timeout_s: float) -> bool:
        """Until no connection is receiving a request, answering one or holding unsent bytes of an answer (a
        drain): a request still arriving as the drain begins is read whole and answered, not cut off."""
        return await self._wait(
            timeout_s, lambda: not any(c.busy or c.receiving or c.unsent() for c in self.connections)
        )

    async def wait_closed(self, timeout_s: float) -> bool:
        """Until every connection being closed has handed its last bytes to the kernel, which still sends
        them; then the sockets are released. A TLS connection would otherwise wait for the client's own
        close_notify, which HTTP clients do not send, for the whole drain timeout."""
        done = await self._wait(timeout_s, lambda: not any(c.unsent() for c in self.connections))
        for conn in list(self.connections):
            if conn.transport is not None:
                conn.transport.abort()
        return done

    @staticmethod
    async def _wait(timeout_s: float, ready: Callable[[], bool]) -> bool:
        loop = asyncio.get_running_loop()
        end = loop.time() + timeout_s
        while not ready():
            if loop.time() >= end:
                return False
            await asyncio.sleep(0.01)  # shutdown only: a poll keeps every connection free of hooks
        return True

    async def close_idle_connections(self) -> None:
        """Close connections with nothing in flight that have been quiet for ``idle_timeout_s``: idle
        keep-alive connections and clients stalled mid-request (each holds a socket and a parser)."""
        if self.idle_timeout_s <= 0:
            return
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(max(0.05, self.idle_timeout_s / 4))
            now = loop.time()
            for conn in list(self.connections):
                if conn.transport is None:
                    continue
                if conn.request_overdue(now, self.idle_timeout_s):
                    conn.time_out_request(self.idle_timeout_s)
                    continue
                if now - conn.last_active < self.idle_timeout_s:
                    continue
                if conn.waiting_on_client:  # not reading its answers: close() would wait for them forever
                    conn.transport.abort()
                elif not conn.busy:
                    conn.transport.close()

    # -- routing -------------------------------------------------------------------------------
    def route(self, method: bytes, path: str) -> tuple[Handler, list[str]] | Response:
        """The handler for ``method`` on ``path`` and its arguments, else the error to answer with. A path
        found once is looked up, not parsed again (2.7% of the event loop's time on batch-1 requests)."""
        key = (method, path)
        found = self._routes.get(key)
        if found is not None:
            return found
        routed = self._route(method, path)
        # errors are rare, and a long path (URLs may have 64 KiB) would let a client fill the memory it keeps
        if not isinstance(routed, Response) and len(path) <= _MAX_ROUTE_CHARS:
            if len(self._routes) >= _MAX_ROUTES:  # paths without end (model names, versions): stay bounded
                self._routes.clear()
            self._routes[key] = routed
        return routed

    def resolve(self, req: Request) -> tuple[Handler, list[str]] | Response:
        """``route``, then the restriction of the handler's API (``--http-restricted-api``): 403 without its header."""
        return self.restrict(req, self.route(req.method, req.path))

    def refused_unread(self, req: Request) -> Response | None:
        """The answer ``req`` gets whatever its body holds, where its headers alone decide it: no route, a method
        its route does not take, a restricted API, or an inference request of a model not served or in a content
        type or coding not read. Sent in place of 100 Continue to a client that waits for it before sending its
        body (curl's, over 1 MB), so that a mistake does not cost the upload (RFC 9110 10.1.1)."""
        routed = self.resolve(req)
        if isinstance(routed, Response):
            return routed
        handler, args = routed
        if handler not in (self.infer, self.generate, self.generate_stream):
            return None
        try:  # the model resolved and the coding checked, neither of which its body changes; counted as failed
            self.plane.decode(args[0], args[1] or None, lambda: _coding(req))
        except PolystackError as e:  # the answer the request would get once read
            return error_response(e)
        return None

    def restrict(
        self, req: Request, routed: tuple[Handler, list[str]] | Response
    ) -> tuple[Handler, list[str]] | Response:
        """``routed``, unless its handler's API is restricted and ``req`` lacks its header: 403."""
        if self.restricted and not isinstance(routed, Response):
            api = self._apis.get(routed[0])
            if api is not None:
                try:
                    self.restricted.check(api, lambda key: _header(req.headers, key))
                except Restricted as e:
                    return error_response(e)
        return routed

    def _route(self, method: bytes, path: str) -> tuple[Handler, list[str]] | Response:
        parts = [unquote(p) for p in path.strip("/").split("/")]
        if parts == ["metrics"] and self.serve_metrics:
            return self._only(method, b"GET", self.metrics, [])
        if self.only_metrics:
            return error_response(
                NotFound(
                    f"no route {path!r}: this is the metrics port, serving GET /metrics only; the Open Inference "
                    "Protocol endpoints are on the HTTP port"
                )
            )
        if parts == [""]:  # KServe's V1 liveness (its clients ask the server's root)
            return self._only(method, b"GET", self.v1_live, [])
        if parts[0] == "v1":
            routed = self._v1(method, parts[1:])
            if routed is not None:
                return routed
        if parts[0] != "v2":
            return error_response(
                NotFound(
                    f"no route {path!r}; the OIP v2 endpoints live under /v2, KServe's V1 ones under /v1/models"
                )
            )
        rest = parts[1:]
        if not rest:
            return self._only(method, b"GET", self.server_metadata, [])
        head = rest[0]
        if head == "health" and len(rest) == 2 and rest[1] in ("live", "ready"):
            return self._only(method, b"GET", self.live if rest[1] == "live" else self.ready, [])
        if head == "models":
            if rest == ["models"]:  # KServe's V2 server lists its models here (Triton has no such route)
                return self._only(method, b"GET", self.v1_models, [])
            if rest == ["models", "stats"]:
                return self._only(method, b"GET", self.stats, ["", ""])
            if len(rest) >= 2:
                name = rest[1]
                tail = rest[2:]
                version = ""
                if len(tail) >= 2 and tail[0] == "versions":
                    version, tail = tail[1], tail[2:]
                args = [name, version]
                if not tail:
                    return self._only(method, b"GET", self.model_metadata, args)
                if len(tail) == 1:
                    action = tail[0]
                    if action == "infer":
                        return self._only(method, b"POST", self.infer, args)
                    if action in ("generate", "generate_stream"):
                        handler = self.generate if action == "generate" else self.generate_stream
                        return self._only(method, b"POST", handler, args)
                    if action == "ready":
                        return self._only(method, b"GET", self.model_ready, args)
                    if action == "config":
                        return self._only(method, b"GET", self.config, args)
                    if action == "stats":
                        return self._only(method, b"GET", self.stats, args)
                if tail == ["trace", "setting"] and name and not version:
                    return self._get_or_post(method, self.trace_setting, [name])
        if rest == ["trace", "setting"]:
            return self._get_or_post(method, self.trace_setting, [""])
        if rest == ["logging"]:
            return self._get_or_post(method, self.logging, [])
        if head == "systemsharedmemory":
            routed = self._shared_memory(method, rest[1:], self.shm_status, self.shm_register, self.shm_unregister)
            if routed is not None:
                return routed
        if head == "cudasharedmemory":
            routed = self._shared_memory(method, rest[1:], self.cuda_status, self.cuda_register, self.cuda_unregister)
            if routed is not None:
                return routed
        if head == "repository":
            if rest == ["repository", "index"]:
                return self._only(method, b"POST", self.repository_index, [])
            if len(rest) == 4 and rest[1] == "models" and rest[3] in ("load", "unload"):
                handler = self.repository_load if rest[3] == "load" else self.repository_unload
                return self._only(method, b"POST", handler, [rest[2]])
        return error_response(NotFound(f"no route {path!r}; see GET /v2 and the Open Inference Protocol v2"))

    def _v1(self, method: bytes, rest: list[str]) -> tuple[Handler, list[str]] | Response | None:
        """KServe's V1 protocol, after ``/v1/``: ``models``, ``models/{m}`` (ready), ``models/{m}:predict``."""
        if rest == ["models"]:
            return self._only(method, b"GET", self.v1_models, [])
        if len(rest) != 2 or rest[0] != "models" or not rest[1]:
            return None
        name, colon, verb = rest[1].rpartition(":")
        if not colon:
            return self._only(method, b"GET", self.v1_model_ready, [rest[1]])
        if verb == "predict" and name:
            return self._only(method, b"POST", self.v1_predict, [name])
        if verb == "explain" and name:
            return error_response(
                NotFound(f"polystack serves no explainers: {name}:explain has none; ask {name}:predict for predictions")
            )
        return None

    def _shared_memory(
        self, method: bytes, rest: list[str], status: Handler, register: Handler, unregister: Handler
    ) -> tuple[Handler, list[str]] | Response | None:
        """The paths both shared memory extensions share, after ``/v2/{system,cuda}sharedmemory/``."""
        if rest == ["status"]:
            return self._only(method, b"GET", status, [""])
        if rest == ["unregister"]:
            return self._only(method, b"POST", unregister, [""])
        if len(rest) == 3 and rest[0] == "region" and rest[1]:
            handler = {"status": status, "register": register, "unregister": unregister}.get(rest[2])
            if handler is not None:
                return self._only(method, b"GET" if handler is status else b"POST", handler, [rest[1]])
        return None

    @staticmethod
    def _only(method: bytes, want: bytes, handler: Handler, args: list[str]) -> tuple[Handler, list[str]] | Response:
        if method == want or (want == b"GET" and method == b"HEAD"):
            return handler, args
        allow = b"GET, HEAD" if want == b"GET" else want  # every method the route answers (RFC 9110: HEAD too)
        return Response(405, orjson.dumps({"error": f"use {want.decode()} here"}), headers=[(b"allow", allow)])

    @staticmethod
    def _get_or_post(method: bytes, handler: Handler, args: list[str]) -> tuple[Handler, list[str]] | Response:
        if method in (b"GET", b"HEAD", b"POST"):
            return handler, args
        return Response(405, orjson.dumps({"error": "use GET or POST here"}), headers=[(b"allow", b"GET, HEAD, POST")])

    # -- handlers ------------------------------------------------------------------------------
    def live(self, req: Request, args: list[str]) -> Response:
        ok = self.plane.live()
        return json_response(200 if ok else 400, {"live": ok})

    def ready(self, req: Request, args: list[str]) -> Response:
        if self.plane.ready():
            return json_response(200, {"ready": True})
        # Triton's status and body; the error for clients that show an answer's (KServe's, helper-267)
        return json_response(400, {"ready": False, "error": self.plane.why_not_ready()})

    def server_metadata(self, req: Request, args: list[str]) -> Response:
        doc = self.plane.server_metadata()
        # Triton's generate extension is HTTP's alone (gRPC's ServerMetadata leaves it out); tritonserver 2.51 lists
        # it nowhere, but GET /v2 lists what is implemented
        doc["extensions"] = [*doc["extensions"], "generate"]
        return json_response(200, doc)

    def model_metadata(self, req: Request, args: list[str]) -> Response:
        return json_response(200, self.plane.model_metadata(args[0], args[1]))

    async def model_ready(self, req: Request, args: list[str]) -> Response:
        ok = await self.plane.model_ready_now(args[0], args[1])
        if ok:
            return json_response(200, {"name": args[0], "ready": True})
        # Triton's 400 and words, beside KServe's readiness fields
        return json_response(400, {"error": "Model version not ready", "name": args[0], "ready": False})

    def config(self, req: Request, args: list[str]) -> Response:
        return json_response(200, self.plane.model_config(args[0], args[1]))

    def stats(self, req: Request, args: list[str]) -> Response:
        return json_response(200, self.plane.model_stats(args[0] or None, args[1]))

    async def metrics(self, req: Request, args: list[str]) -> Response:
        """``/metrics``, written (and compressed, where the scraper takes gzip or deflate, as Prometheus does) off
        the event loop: a scrape of many models takes tens of milliseconds (helper-272: 90 ms for 80 models held
        every request that long)."""
        encoding = _response_encoding(req.headers)
        body = await asyncio.get_running_loop().run_in_executor(self.codec_pool, self._metrics_text, encoding)
        headers = [(b"vary", b"accept-encoding")]
        if encoding is not None:
            headers.append((b"content-encoding", encoding.encode()))
        return Response(200, body, METRICS_CONTENT_TYPE.encode(), headers)

    def _metrics_text(self, encoding: str | None) -> bytes:
        text = self.plane.render_metrics()
        custom = self.plane.custom_metrics
        if custom.room.used:  # the models' own series, as many as they made
            text += custom.render()
        return _compress(text, encoding) if encoding is not None else text

    def _json_body(self, req: Request) -> dict[str, Any]:
        if not req.body.strip():
            return {}
        doc = http_codec.loads(decoded_body(req, self.max_body_bytes))
        if not isinstance(doc, dict):
            raise InvalidRequest("the request body must be a JSON object")
        return doc

    def trace_setting(self, req: Request, args: list[str]) -> Response:
        changes = self._json_body(req) if req.method == b"POST" else None
        return json_response(200, self.plane.trace_settings(args[0], changes))

    def logging(self, req: Request, args: list[str]) -> Response:
        changes = self._json_body(req) if req.method == b"POST" else None
        return json_response(200, self.plane.log_settings_of(changes))

    async def repository_index(self, req: Request, args: list[str]) -> Response:
        doc = self._json_body(req)
        ready = doc.get("ready", False)
        if not isinstance(ready, bool):
            raise InvalidRequest(f"'ready' must be true or false, not {quote(ready)}")
        return json_response(200, await self.plane.repository_extension.index(ready))

    def shm_status(self, req: Request, args: list[str]) -> Response:
        return json_response(200, self.plane.regions().status(args[0] or None))

    def shm_register(self, req: Request, args: list[str]) -> Response:
        regions = self.plane.regions()
        doc = self._json_body(req)
        for needed in ("key", "byte_size"):
            if needed not in doc:  # Triton's words
                raise InvalidRequest(
                    f"Shared memory register request has no '{needed}' field; send key, offset and byte_size"
                )
        regions.register(args[0], doc.get("key"), doc.get("offset", 0), doc.get("byte_size"))
        return Response(200, b"")  # an empty body, as tritonserver 2.51's (helper-116)

    def shm_unregister(self, req: Request, args: list[str]) -> Response:
        self.plane.regions().unregister(args[0] or None)
        return Response(200, b"")

    def cuda_status(self, req: Request, args: list[str]) -> Response:
        return json_response(200, self.plane.cuda_shared_memory.status(args[0] or None))

    def cuda_register(self, req: Request, args: list[str]) -> Response:
        self.plane.cuda_shared_memory.register(args[0])
        return Response(200, b"")

    def cuda_unregister(self, req: Request, args: list[str]) -> Response:
        self.plane.cuda_shared_memory.unregister(args[0] or None)
        return Response(200, b"")

    async def repository_load(self, req: Request, args: list[str]) -> Response:
        try:
            params = self._json_body(req).get("parameters") or {}
            if not isinstance(params, dict):
                raise InvalidRequest("'parameters' must be an object")
            files = {k: _file_bytes(k, v) for k, v in params.items() if k.startswith(model_files.PREFIX)}
        except InvalidRequest as e:  # refused as the data plane refuses a load
            raise load_failed(args[0], e) from None
        await self.plane.repository_extension.load(args[0], {**params, **files})
        return Response(200, b"")  # an empty body, as Triton's (tritonserver 2.51, helper-108)

    async def repository_unload(self, req: Request, args: list[str]) -> Response:
        params = self._json_body(req).get("parameters") or {}
        if not isinstance(params, dict):
            raise InvalidRequest("'parameters' must be an object")
        await self.plane.repository_extension.unload(args[0], params)
        return Response(200, b"")

    async def infer(self, req: Request, args: list[str]) -> Response:
        def decode() -> InferRequest:
            length = _header_length(req.headers)
            body = decoded_body(req, self.max_body_bytes)
            if length == 0:  # Triton's raw binary request: the body is the data of the model's one input
                return http_codec.decode_raw_request(body, args[0], self.plane.served_config(args[0], args[1]))
            return http_codec.decode_infer_request(body, length, self.plane.shared_memory, model=args[0])

        request, result = await self._run(req, args[0], args[1], decode, _slow_to_read(req))
        head, blobs = _encoded(request, result)
        headers: list[tuple[bytes, bytes]] = []
        if blobs:  # the JSON header's length before any compression, as Triton sends it
            headers.append((b"inference-header-content-length", str(len(head)).encode()))
        resp = Response(200, head, b"application/octet-stream" if blobs else JSON, headers, blobs)
        if resp.length < _COMPRESS_FROM_BYTES:
            return resp
        headers.append((b"vary", b"accept-encoding"))  # the body depends on it: caches must key on it (RFC 9110)
        encoding = _response_encoding(req.headers)
        if encoding is None:
            return resp
        payload = resp.whole()
        if len(payload) < _COMPRESS_INLINE_BELOW:
            payload = _compress(payload, encoding)
        else:  # a large body would hold the event loop for milliseconds
            payload = await asyncio.get_running_loop().run_in_executor(self.codec_pool, _compress, payload, encoding)
        headers.append((b"content-encoding", encoding.encode()))
        return Response(200, payload, resp.content_type, headers)

    async def infer_typed(
        self, req: Request, name: str, version: str, mime: bytes, answer_typed: bool = True
    ) -> Response:
        """An inference request whose JSON part's length comes in its content type (``<mime><N>``, N 0: the body is
        the model's one input), as SageMaker's and Vertex AI's endpoints send it; the body as it came, whatever else
        its content type or encoding says, as Triton's ports for them read it. An answer with binary outputs
        carries ``<mime>`` with its JSON part's length (SageMaker's), or (``answer_typed`` False: Vertex AI's) the
        binary extension's ``Inference-Header-Content-Length``, uncompressed."""
        length = typed_length(req.headers.get(b"content-type", b""), mime, len(req.body))
        length_by = f"Content-Type: {mime.decode()}<N>"

        def decode() -> InferRequest:
            if length == 0:  # raw: the body is the data of the model's one input
                return http_codec.decode_raw_request(req.body, name, self.plane.served_config(name, version))
            return http_codec.decode_infer_request(req.body, length, self.plane.shared_memory, length_by, name)

        request, result = await self._run(req, name, version, decode, len(req.body) >= DECODE_INLINE_BELOW)
        head, blobs = _encoded(request, result)
        if not blobs:
            return Response(200, head, JSON)
        if not answer_typed:
            sized = [(b"inference-header-content-length", str(len(head)).encode())]
            return Response(200, head, b"application/octet-stream", sized, blobs)
        return Response(200, head, mime + str(len(head)).encode(), [], blobs)

    async def generate(self, req: Request, args: list[str]) -> Response:
        """Triton's generate extension (generate_codec.py): the answer's tensors as JSON fields. A decoupled model's
        request must get one response (its final flag alone aside)."""
        if self.plane.decoupled(args[0], args[1] or None):
            result = await self._generate_once(req, *args)
        else:
            result = await self._generate(req, args)
        return Response(200, generate_codec.encode_generate(result), JSON)

    async def generate_stream(self, req: Request, args: list[str]) -> Response:
        """The same answer as one Server-Sent Event; a decoupled model's, an event for each of its responses, sent as
        it comes. A request refused before its model runs is a JSON error, as Triton's; one that fails in its run
        (the runtime's error, a timeout in its queue) is an event holding the error, with its status, as Triton's."""
        if self.plane.decoupled(args[0], args[1] or None):
            return await self._generate_events(req, *args)
        try:
            result = await self._generate(req, args, stream=True)
        except _RunFailed as failed:
            error = error_response(failed.error)
            return Response(error.status, generate_codec.event(error.body), generate_codec.SSE_TYPE)
        return Response(200, generate_codec.event(generate_codec.encode_generate(result)), generate_codec.SSE_TYPE)

    async def _generate(self, req: Request, args: list[str], stream: bool = False) -> InferResponse:
        name, version = args
        try:
            return (await self._run(req, name, version, self._generate_decoder(req, name, version), _slow_to_read(req)))[1]
        except PolystackError as e:
            if not e.in_run:  # refused before its run (a missing input): a JSON error with its status, as Triton's
                raise
            failed = _as_triton_generates(e)
            try:
                if stream:
                    raise _RunFailed(failed) from e
                raise failed from e
            finally:  # its traceback holds this frame: naming it made a cycle, which kept the model's entry (in
                del failed  # the traceback of the error it came from) until Python's cycle collector ran

    def _generate_decoder(self, req: Request, name: str, version: str) -> Callable[[], InferRequest]:
        inputs = [
            (t["name"], DType(t["datatype"]), t["shape"])
            for t in self.plane.model_metadata(name, version or None)["inputs"]
        ]

        def decode() -> InferRequest:
            return generate_codec.decode_generate(decoded_body(req, self.max_body_bytes), inputs)

        return decode

    async def _responses(self, req: Request, name: str, version: str) -> AsyncGenerator[Streamed, None]:
        """A decoupled model's responses to a generate request, as it sends them."""
        decode = self._generate_decoder(req, name, version)
        slow = _slow_to_read(req)
        decode = self._forwarding(decode, req)
        request = await self._decode_off_loop(name, version, decode) if slow else self.plane.decode(name, version, decode)
        req.inference_id = request.id
        self._refuse_when_draining(req, name, version, request)
        return self.plane.infer_stream(name, version, request, self.loop, lambda: text_headers(req.headers))

    async def _generate_once(self, req: Request, name: str, version: str) -> InferResponse:
        """A decoupled model's one response to a generate request (the final flag alone aside); its error, or
        refused where it sent another number."""
        responses = await self._responses(req, name, version)
        got = [streamed async for streamed in responses if not streamed.empty]
        if len(got) != 1:  # Triton's words (with its 200; polystack's is 400), then how many
            raise InvalidRequest(
                "generate expects model to produce exactly 1 response, use generate stream for model that generates "
                f"various number of responses (model {name!r} sent {len(got)})"
            )
        if got[0].error is not None:
            try:
                raise _as_triton_generates(got[0].error)
            finally:  # its traceback holds this frame: naming it made a cycle, which kept the model's entry
                del got
        assert got[0].response is not None
        return got[0].response

    async def _generate_events(self, req: Request, name: str, version: str) -> Response:
        """A decoupled model's responses as Server-Sent Events, each sent as it comes (``Response.events``); one
        refused before the model ran is a JSON error, as for any model."""
        responses = await self._responses(req, name, version)
        try:
            first = await anext(responses)
        except BaseException:
            await responses.aclose()
            raise
        if first.error is not None and not first.error.in_run:
            await responses.aclose()
            try:
                raise first.error
            finally:  # its traceback holds this frame: naming it made a cycle, which kept the model's entry
                del first

        async def events() -> AsyncGenerator[bytes, None]:
            streamed = first
            try:
                while True:
                    if streamed.response is not None:
                        try:
                            payload = generate_codec.encode_generate(streamed.response)
                        except PolystackError as e:  # an answer JSON cannot carry: an error event, the stream goes on
                            payload = error_response(e).body
                        yield generate_codec.event(payload)
                    elif streamed.error is not None:
                        yield generate_codec.event(error_response(streamed.error).body)
                    if streamed.final:
                        return
                    streamed = await anext(responses)
            finally:
                await responses.aclose()

        code = status.http_status(_as_triton_generates(first.error)) if first.error is not None else 200
        return Response(code, b"", generate_codec.SSE_TYPE, events=events())

    async def _run(
        self, req: Request, name: str, version: str, decode: Callable[[], InferRequest], slow: bool
    ) -> tuple[InferRequest, InferResponse]:
        """A request of ``name``: decoded (on a codec thread when ``slow`` to read), then run, traced with the front
        end's times while tracing is on."""
        decode = self._forwarding(decode, req)
        request = await self._decode_off_loop(name, version, decode) if slow else self.plane.decode(name, version, decode)
        req.inference_id = request.id
        if self.plane.tracing.active:
            req.front = Front("HTTP", *req.received)
        self._refuse_when_draining(req, name, version, request)
        result = await self.plane.infer(
            name, version, request, self.loop, lambda: text_headers(req.headers), front=req.front, source=req.connection
        )
        return request, result

    def _forwarding(self, decode: Callable[[], InferRequest], req: Request) -> Callable[[], InferRequest]:
        """``decode``, with the headers --http-header-forward-pattern matches made the request's parameters."""
        forward = self.header_forward
        return decode if forward is None else functools.partial(_forwarded, forward, decode, req)

    def _refuse_when_draining(self, req: Request, name: str, version: str, request: InferRequest) -> None:
        """The drain's first part runs the requests of sequences alone (to sequence models), as Triton's newer
        schedulers do once its server stops: any other is refused, not run. Past it, a request whose first byte came
        after the drain began (on a connection kept alive) is refused, as gRPC refuses a call then (helper-265: it
        ran, and lengthened the drain); one begun before is in flight, and answered."""
        plane = self.plane
        if plane.taking_sequences:
            if not (request.parameters.get("sequence_id") and plane.serves_sequences(name, version or None)):
                raise ShuttingDown(
                    "the server is shutting down and runs only the requests of the sequences it holds; send this "
                    "request to another replica (it was not run)"
                )
        elif plane.draining and req.received[0] >= plane.drain_began_ns:
            raise ShuttingDown("the server is shutting down; send the request to another replica (it was not run)")

    async def _decode_off_loop(self, name: str, version: str, decode: Callable[[], _Decoded]) -> _Decoded:
        """``DataPlane.decode`` on a codec thread, for a body that may take long to read (``_slow_to_read``), which
        on the loop would hold every other client up meanwhile; other bodies decode on the loop, with no hop."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self.codec_pool, self.plane.decode, name, version, decode)

    # -- KServe's V1 protocol (v1_codec.py) --------------------------------------------------------
    def v1_live(self, req: Request, args: list[str]) -> Response:
        if not self.plane.live():
            raise ShuttingDown("the server is shutting down")
        return json_response(200, {"status": "alive"})

    def v1_models(self, req: Request, args: list[str]) -> Response:
        return json_response(200, {"models": self.plane.model_names()})

    def v1_model_ready(self, req: Request, args: list[str]) -> Response:
        self.plane.model_metadata(args[0], None)  # not served: 404
        if not self.plane.model_ready(args[0], None):
            raise ModelNotReady(f"model {args[0]!r} is not ready: the server drains, or a model it runs is not served")
        return json_response(200, {"name": args[0], "ready": True})

    async def v1_predict(self, req: Request, args: list[str]) -> Response:
        name = args[0]
        inputs = {t["name"]: DType(t["datatype"]) for t in self.plane.model_metadata(name, None)["inputs"]}

        def decode() -> v1_codec.Predict:
            return v1_codec.decode_predict(decoded_body(req, self.max_body_bytes), inputs)

        if not _slow_to_read(req):
            predict = self.plane.decode(name, "", decode)
        else:
            predict = await self._decode_off_loop(name, "", decode)
        self._refuse_when_draining(req, name, "", predict.request)
        result = await self.plane.infer(name, "", predict.request, self.loop, lambda: text_headers(req.headers))
        return Response(200, v1_codec.encode_predict(result.outputs, predict), JSON)


def _as_triton_generates(error: PolystackError) -> PolystackError:
    """A request's failure in its run as generate's status: 400, whatever its status elsewhere (an exception in
    execute: 500; a model's error response of code UNAVAILABLE: 503), as tritonserver 2.51 answers it there
    (helper-140, helper-194); a refusal before the run keeps its own."""
    return InvalidRequest(error.message).failed_in_run() if error.in_run else error


def _slow_to_read(req: Request) -> bool:
    """A body that may take long to read: a compressed one whatever its size (60 KB of gzip inflate to
    64 MB), and from ``DECODE_INLINE_BELOW`` bytes JSON to parse or a binary section that may hold BYTES
    elements (read one by one). Binary numbers of any size are read in place, at once: the hop to a thread
    would cost them more than it saves."""
    if req.headers.get(b"content-encoding", b"identity").strip().lower() not in (b"identity", b""):
        return True
    if len(req.body) < DECODE_INLINE_BELOW:
        return False
    try:
        json_bytes = _header_length(req.headers)
    except InvalidRequest:
        return False  # refused at once, on the loop
    if json_bytes is None or not 0 <= json_bytes <= len(req.body):
        return json_bytes is None
    return json_bytes >= DECODE_INLINE_BELOW or b'"BYTES"' in req.body[:json_bytes]


def _header(headers: dict[bytes, bytes], key: str) -> str | None:
    """A request header's value (``key`` lower case, as the parser keeps names) decoded as a command line's value
    is, so that a restricted API's compares byte for byte, as Triton compares them; None when not sent."""
    raw = headers.get(os.fsencode(key))
    return None if raw is None else os.fsdecode(raw)


def _forwarded(forward: HeaderForward, decode: Callable[[], InferRequest], req: Request) -> InferRequest:
    """``decode``'s request with the headers ``forward`` matches among its parameters, named as the client wrote
    them (Triton's HTTP front end keeps their case)."""
    names = req.names or {}
    headers = ((names.get(k, k).decode("latin-1"), v.decode("latin-1")) for k, v in req.headers.items())
    return forward.apply(decode(), headers)


def text_headers(headers: dict[bytes, bytes]) -> dict[str, str]:
    """The request's headers as text, for trace context propagation (only for a request traced)."""
    return {k.decode("latin-1"): v.decode("latin-1") for k, v in headers.items()}


def _response_encoding(headers: dict[bytes, bytes]) -> str | None:
    """gzip or deflate, whichever the client's Accept-Encoding weighs higher (q > 0; of two weighed alike, the one
    it lists first, as Triton picks; gzip where only ``*`` takes them); else None."""
    raw = headers.get(b"accept-encoding")
    if not raw:
        return None
    weights: dict[bytes, float] = {}  # in the order listed
    for part in raw.lower().split(b","):
        token, *params = part.split(b";")
        q = 1.0
        for param in params:  # q among other parameters, wherever it stands
            name, _, value = param.strip().partition(b"=")
            if name.strip() == b"q":
                try:
                    q = float(value.strip())
                except ValueError:
                    q = 0.0
        token = b"gzip" if token.strip() == b"x-gzip" else token.strip()  # x-gzip: gzip (RFC 9110 8.4.1.3)
        weights.setdefault(token, q)
    anything = weights.get(b"*", 0.0)
    listed = [t for t in weights if t in (b"gzip", b"deflate")] + [b"gzip", b"deflate"]
    best = max(listed, key=lambda t: weights.get(t, anything))  # max keeps the first of equals
    return best.decode() if weights.get(best, anything) > 0 else None


def _compress(body: bytes, encoding: str) -> bytes:
    """gzip, or HTTP's deflate (zlib-wrapped, RFC 9110); level 1: the point is the wire, not the ratio."""
    c = zlib.compressobj(1, zlib.DEFLATED, 31 if encoding == "gzip" else 15)
    return c.compress(body) + c.flush()


def _file_bytes(key: str, value: object) -> bytes:
    """A ``file:`` load parameter's contents: base64 text in JSON, as tritonclient sends them."""
    if isinstance(value, str):
        try:
            return base64.b64decode(value, validate=True)
        except (binascii.Error, ValueError):
            pass
    raise InvalidRequest(f"load parameter {key!r} must be the file's contents in base64")


def _encoded(request: InferRequest, result: InferResponse) -> tuple[bytes, list[bytes | memoryview]]:
    """The answer's JSON part and binary sections, with the outputs binary as the request asked."""
    binary = {o.name: bool(o.binary) for o in request.outputs} if request.outputs else {}
    default_binary = bool(request.parameters.get("binary_data_output", False))
    return http_codec.encode_infer_response(result, binary, default_binary)


def typed_length(content_type: bytes, mime: bytes, body_length: int) -> int | None:
    """The JSON part's length a request's content type gives as ``<mime><N>`` (None: the body is JSON alone), read
    as Triton reads it (``atoi`` of what follows), refused in its words."""
    at = content_type.find(mime)
    if at < 0:
        return None
    if at != 0:
        raise InvalidRequest(
            f"expect MIME type for binary data starts with '{mime.decode()}', got: {content_type.decode('latin-1')}; "
            "send the content type alone"
        )
    text = content_type[len(mime) :]
    value = _atoi(text)
    if not 0 <= value <= body_length:
        raise InvalidRequest(
            f"inference header size should be in range (0, {body_length}), got: {text.decode('latin-1')}; give the "
            "length in bytes of the body's JSON part"
        )
    return value


def _atoi(text: bytes) -> int:
    """C's atoi: leading spaces, a sign, then digits, the rest ignored; 0 where no digits come."""
    text = text.lstrip()
    sign = -1 if text[:1] == b"-" else 1
    if text[:1] in (b"+", b"-"):
        text = text[1:]
    digits = len(text) - len(text.lstrip(b"0123456789"))
    return sign * int(text[:digits]) if digits else 0


def _header_length(headers: dict[bytes, bytes]) -> int | None:
    raw = headers.get(b"inference-header-content-length")
    if raw is None:
        return None
    value = raw.strip()
    digits = value[1:] if value[:1] in (b"+", b"-") else value  # a sign, as Triton's atoi reads one
    if not (digits.isdigit() and len(digits) <= 18):  # bytes.isdigit: ASCII digits only, no "_"
        raise InvalidRequest(
            "Inference-Header-Content-Length must be an integer: the length in bytes of the body's JSON part"
        )
    return int(value)


def decoded_body(req: Request, limit: int) -> bytes:
    encoding = _coding(req)
    return req.body if encoding is None else _decompressed(req.body, encoding, limit)


def _coding(req: Request) -> str | None:
    """The body's content coding (None: as it is), once its content type and coding are ones the server reads."""
    ctype = req.headers.get(b"content-type", b"").split(b";", 1)[0].strip().lower()
    if ctype not in _ACCEPTED_TYPES:
        raise UnsupportedMediaType(
            f"content type {ctype.decode('latin-1')!r} is not supported; send application/json "
            "(or application/octet-stream with the binary tensor extension)"
        )
    encoding = req.headers.get(b"content-encoding", b"identity").strip().lower()
    if encoding in (b"identity", b""):
        return None
    if encoding == b"x-gzip":  # gzip's old name, which RFC 9110 says a recipient should take as gzip
        encoding = b"gzip"
    if encoding in (b"gzip", b"deflate"):
        return encoding.decode()
    raise UnsupportedMediaType(f"content encoding {encoding.decode('latin-1')!r} is not supported; use gzip or deflate")


def _decompressed(body: bytes, encoding: str, limit: int) -> bytes:
    """A gzip (every member, as RFC 1952 allows several, up to ``_MAX_GZIP_MEMBERS``) or deflate body,
    refused when it is truncated, followed by other bytes, or larger than ``limit`` once decompressed.

    The body is fed to zlib in slices of ``_INFLATE_SLICE``: what zlib leaves of its input after a
    member's end comes back as a copy (``unused_data``), and the whole rest of the body at every member
    made a body of many tiny members cost time quadratic in its size."""
    out = bytearray()
    view = memoryview(body)
    at = members = 0
    while True:
        members += 1
        if members > _MAX_GZIP_MEMBERS:
            raise InvalidRequest(
                f"the gzip body has more than {_MAX_GZIP_MEMBERS} gzip members; compress the request as one stream"
            )
        d = zlib.decompressobj(wbits=31 if encoding == "gzip" else 15)
        while not d.eof and at < len(view):
            piece = view[at : at + _INFLATE_SLICE]
            try:
                out += d.decompress(piece, limit + 1 - len(out))
            except zlib.error as e:
                raise InvalidRequest(
                    f"the {encoding} body does not decompress ({e}); send it whole, compressed with {encoding}"
                ) from None
            if len(out) > limit:
                raise PayloadTooLarge(f"the decompressed body exceeds the server's limit of {limit:,} bytes")
            at += len(piece) - len(d.unused_data)
        if not d.eof:
            raise InvalidRequest(f"the {encoding} body is truncated; send the whole compressed stream")
        if at == len(view) or encoding != "gzip" or view[at : at + 2] != b"\x1f\x8b":
            break
    if at < len(view):
        raise InvalidRequest(
            f"the {encoding} body has {len(view) - at:,} bytes after its end; send only the compressed stream"
        )
    return bytes(out)


def failed(req: Request, exc: BaseException) -> Response:
    """The answer to a request that raised ``exc``, logged as the server's failure when it is one (a 5xx
    as a warning, an unexpected error with its traceback)."""
    if isinstance(exc, PolystackError):
        if req.inference_id is None:  # refused while its body was read: the id it gave, where it gave one
            req.inference_id = exc.request_id
        if status.http_status(exc) >= 500 and exc.server_failure:
            log.warning("request failed", extra={**req.log_ids(), "path": req.path, "error": exc.message})
    else:
        log.exception("unexpected error", extra={**req.log_ids(), "path": req.path})
    return error_response(exc)


def log_request(app: HttpApp, req: Request, status_code: int) -> None:
    """The request's line in the log, when ``--access-log`` or the logging extension asks for one."""
    level = request_level(app.log_settings, app.access_log)
    if level is not None:
        log.log(
            level,
            "request",
            extra={
                **req.log_ids(),
                "method": req.method.decode(),
                "path": req.path,
                "status": status_code,
                "duration_ms": round((time.perf_counter() - req.started) * 1000, 3),
            },
        )
