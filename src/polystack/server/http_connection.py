"""One HTTP/1.1 connection of the HTTP transport: an ``asyncio.Protocol`` feeding httptools (the C parser uvicorn
uses), its requests answered in order through the server's ``HttpApp`` (``http.py``: routes and handlers).

What no library does for us is here: HTTP/1.1 pipelining honoured and bounded; reading paused while requests queue
or the client does not read; a body refused with 413 as soon as its headers arrive (before it is read); a request
that trickles in timed out by its own clock (a minimum rate); one ``transport.write`` per response; after an error
that ends the connection, the answer sent with a FIN and what the client still sends read and dropped, so that a
client writing its whole body first reads the answer. A client that disconnects mid-request loses only its own
connection. Why by hand rather than uvicorn: see ``http.py``; what a connection logs, ``http.py`` logs (``failed``,
``log_request``), under the transport's one logger name.
"""

from __future__ import annotations

import asyncio
import collections
import contextvars
import dataclasses
import email.utils
import inspect
import time
from collections.abc import Awaitable
from typing import Any, cast

import httptools
import orjson

from polystack.server import eager
from polystack.server.http import HttpApp, Request, Response, failed, log_request

_DATE: list[Any] = [0, b""]  # (second, its Date header line): formatted once a second


def _date_line() -> bytes:
    """The ``date`` header line an origin server with a clock sends (RFC 9110 6.6.1), for this second."""
    now = int(time.time())
    if now != _DATE[0]:
        _DATE[0], _DATE[1] = now, b"date: %s\r\n" % email.utils.formatdate(now, usegmt=True).encode()
    return cast(bytes, _DATE[1])


_REASONS = {
    200: b"OK",
    400: b"Bad Request",
    403: b"Forbidden",
    404: b"Not Found",
    405: b"Method Not Allowed",
    408: b"Request Timeout",
    409: b"Conflict",
    413: b"Payload Too Large",
    414: b"URI Too Long",
    415: b"Unsupported Media Type",
    431: b"Request Header Fields Too Large",
    500: b"Internal Server Error",
    501: b"Not Implemented",
    503: b"Service Unavailable",
    504: b"Gateway Timeout",
}


_MAX_PIPELINED = 32
_MAX_URL_BYTES = 64 * 1024  # longer: 414 (a 50 MB URL was otherwise read, kept and echoed in the 404)
_MAX_HEADER_BYTES = 64 * 1024  # all header names and values of one request together; more: 431
# A request must arrive whole within the idle timeout of its first byte, plus a second for each this
# many bytes received (Apache mod_reqtimeout's MinRate): a client trickling a byte at a time resets the
# idle clock with every byte, and held its connection (and a file descriptor) for as long as it liked.
_MIN_REQUEST_RATE = 500
# After an error that ends the connection (413, malformed HTTP), the answer goes out with a FIN and
# what the client is still sending is read and dropped, for at most this long or until it pauses this
# long: closing with unread bytes makes the kernel send a reset that destroys the answer before a
# client that writes its whole body first (tritonclient, urllib) reads it.
_LINGER_S = 30.0
_LINGER_QUIET_S = 2.0


def _origin_form(target: str) -> str:
    """The path of a request target in absolute form (``http://host:port/v2/...``, what a client sends to a
    proxy, which RFC 9112 has servers accept); any other target as it is (it matches no route)."""
    scheme, sep, rest = target.partition("://")
    if not sep or scheme.lower() not in ("http", "https"):
        return target
    slash = rest.find("/")
    return "/" if slash < 0 else rest[slash:]


def _parser(protocol: HttpProtocol) -> httptools.HttpRequestParser:
    """A request parser for ``protocol``'s connection. A body framed both chunked and by Content-Length is read
    chunked, as RFC 9112 6.3 has it and Triton reads it (python-requests sends both when its caller sets
    Transfer-Encoding), where llhttp refuses it; its connection then closes after the answer."""
    parser = httptools.HttpRequestParser(protocol)
    parser.set_dangerous_leniencies(lenient_chunked_length=True)
    return parser


class HttpProtocol(asyncio.Protocol):
    """One client connection: parse with httptools, answer requests in order."""

    def __init__(self, app: HttpApp) -> None:
        self.app = app
        self.transport: asyncio.Transport | None = None
        self.parser = _parser(self)
        self._url = b""
        self._headers: dict[bytes, bytes] = {}
        self._names: dict[bytes, bytes] | None = None  # the headers' names as written, while headers are forwarded
        self._body: list[bytes] = []
        self._size = 0
        self._header_bytes = 0
        self._in_head = False  # between a request's first byte and the end of its headers
        self._receiving_since: float | None = None  # loop time of the first byte of a request not yet whole
        self._head_bytes = 0
        self._begun_ns = 0  # perf_counter_ns at the first byte of the request being read
        self._expecting = False  # an Expect: 100-continue waits for its interim answer
        self._refused = False  # an error ends this connection: what the client still sends is dropped
        # a request was framed both chunked and by Content-Length: its answer closes the connection (RFC 9112 6.3),
        # and nothing the client sent after it is taken for a request (it could be smuggled past a proxy)
        self._last = False
        self._final: Response | None = None  # that error's answer, held until the requests before it are answered
        self._busy = False
        self._queue: collections.deque[Request] = collections.deque()
        self._queued_bytes = 0  # the bodies in ``_queue``: reading pauses at one --max-body-bytes of them
        self._paused = False  # reading paused: too many requests queued, or the client is not reading
        self._write_paused = False  # the transport holds more than its high-water mark of our answers
        self._task: asyncio.Future[None] | None = None
        self._pending: Awaitable[Response] | None = None  # what the task awaits: the handler's coroutine
        self._upgrading: Request | None = None  # a request with an Upgrade header, answered as plain HTTP/1.1
        self._upgrade_body: tuple[Request, int, list[bytes]] | None = None  # (it, bytes still due, parts)
        self._loop = asyncio.get_running_loop()  # once a connection: each lookup costs a getpid() system call
        self._linger_until = 0.0
        self.last_active = self._loop.time()
        app.loop = self._loop

    # -- asyncio.Protocol ----------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's transports do not subclass it
        self.app.connections.add(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        self._queue.clear()
        self._queued_bytes = 0
        if self._task is not None and not self._task.done():
            self._task.cancel()  # nobody is waiting for the answer; a queued request leaves the queue
            pending = self._pending
            if inspect.iscoroutine(pending) and inspect.getcoroutinestate(pending) == inspect.CORO_CREATED:
                pending.close()  # its task never ran: left unawaited, Python writes a warning (not a JSON line)
        # the task keeps its CancelledError, whose traceback holds _finish's frame and so this connection (and the
        # frames of the request it ran, its model's entry among them): a cycle, freed only by the collector (helper-238)
        self._task = None
        self._pending = None
        # the connection and its parser hold each other (a cycle the collector alone frees, and no ordinary traffic
        # made it run): what they hold goes now, a body the client cut off or sent whole (helper-268: 16 MiB kept for
        # each upload a client dropped, 3 GB after a few hundred)
        self._body, self._headers, self._names = [], {}, None
        self._upgrading = self._upgrade_body = None
        self._final = None
        self.app.connections.discard(self)

    def pause_writing(self) -> None:
        """The client reads slower than we answer: start nothing new for it until it catches up. Without
        this a client that pipelines and never reads made the server hold every answer (and with binary
        outputs written uncopied, the arrays behind them)."""
        self._write_paused = True
        self._update_reading()

    def resume_writing(self) -> None:
        self._write_paused = False
        self._advance()

    @property
    def waiting_on_client(self) -> bool:
        """Answers are backed up because the client is not reading them (``pause_writing``)."""
        return self._write_paused

    @property
    def busy(self) -> bool:
        """A request of this connection is being answered or waits its turn."""
        return self._busy or bool(self._queue)

    @property
    def receiving(self) -> bool:
        """A request has begun to arrive and is not whole yet (one being refused is only read and dropped)."""
        return self._receiving_since is not None and not self._refused

    def data_received(self, data: bytes) -> None:
        self.last_active = self._loop.time()
        while data and not self._refused:  # a loop, not recursion: one read may hold many Upgrade requests
            if self._upgrade_body is not None:
                data = self._take_upgrade_body(data)
                continue
            try:
                self.parser.feed_data(data)
            except httptools.HttpParserUpgrade as e:
                data = self._ignore_upgrade(data[e.args[0] :] if e.args else b"")
                continue
            except httptools.HttpParserError as e:
                self._fail(400, f"malformed HTTP request: {e}")
                return
            if self._in_head:
                # httptools hands a header over only when its line ends: a header that never ends is
                # counted here, read by read, so it cannot grow without bound
                self._head_bytes += len(data)
                if self._head_bytes > _MAX_URL_BYTES + _MAX_HEADER_BYTES:
                    self._fail(431, f"the request head exceeds {_MAX_URL_BYTES + _MAX_HEADER_BYTES:,} bytes")
            return

    def _ignore_upgrade(self, rest: bytes) -> bytes:
        """Answer a request that asked to switch protocols (curl --http2 sends ``Upgrade: h2c``) as plain
        HTTP/1.1, as RFC 9110 lets a server do. httptools stops at its headers, before any body, so the
        body (by Content-Length) is read here and the parser starts afresh after it (also after a
        CONNECT, which httptools treats the same way). Returns the bytes that follow, to parse next."""
        req, self._upgrading = self._upgrading, None
        self.parser = _parser(self)
        if req is None:
            return rest
        if b"transfer-encoding" in req.headers:
            self._fail(400, "a chunked body with an Upgrade header is not supported; send it without Upgrade")
            return b""
        length = int(req.headers.get(b"content-length", b"0") or b"0")  # httptools checked it is a number
        if length:
            self._upgrade_body = (req, length, [])  # data_received feeds it the next bytes
            self._receiving_since = self.last_active  # still arriving: the same deadline as any request
            self._size = 0
        else:
            self._complete(req)
        return rest

    def _take_upgrade_body(self, data: bytes) -> bytes:
        """Feed an Upgrade request its body; what is left of ``data`` belongs to the next request."""
        assert self._upgrade_body is not None
        req, due, parts = self._upgrade_body
        parts.append(data[:due])
        due -= len(parts[-1])
        self._size += len(parts[-1])
        if due:
            self._upgrade_body = (req, due, parts)
            return b""
        self._upgrade_body = None
        self._receiving_since = None
        req.body = b"".join(parts)
        req.received = (req.received[0], time.perf_counter_ns())  # its body's last byte
        self._complete(req)
        return data[len(parts[-1]) :]

    # -- httptools callbacks --------------------------------------------------------------------
    def on_message_begin(self) -> None:
        if self._last:
            self._refused = True  # read and dropped until the answer before it closes the connection
            return
        self._url = b""
        self._headers = {}
        self._names = {} if self.app.header_forward is not None else None
        self._body = []
        self._size = 0
        self._header_bytes = 0
        self._in_head = True
        self._head_bytes = 0
        self._expecting = False
        self._receiving_since = self.last_active  # data_received set it just now
        self._begun_ns = time.perf_counter_ns()

    def on_url(self, url: bytes) -> None:
        self._url += url
        if len(self._url) > _MAX_URL_BYTES:
            self._fail(414, f"the URL is longer than {_MAX_URL_BYTES:,} bytes; OIP paths are short")

    def on_header(self, name: bytes, value: bytes) -> None:
        if self._refused:
            return
        key = name.lower()
        if self._names is not None:  # forwarded as written (--http-header-forward-pattern)
            self._names[key] = name
        if key == b"transfer-encoding" and key in self._headers:  # codings over several lines are one list
            value = self._headers[key] + b", " + value
        elif key == b"inference-header-content-length" and self._headers.get(key, value) != value:
            # two lengths of the JSON part: which one the client meant is unknown (the last one was taken)
            self._fail(400, "the request gives Inference-Header-Content-Length twice, with different values; give one")
            return
        self._headers[key] = value
        self._header_bytes += len(name) + len(value)
        if self._header_bytes > _MAX_HEADER_BYTES:
            self._fail(431, f"the request headers exceed {_MAX_HEADER_BYTES:,} bytes; send fewer or shorter headers")

    def on_headers_complete(self) -> None:
        self._in_head = False
        if self._refused:
            return
        coding = self._headers.get(b"transfer-encoding")
        if coding is not None and coding.strip().lower() != b"chunked":
            self._fail(
                501,
                f"Transfer-Encoding {coding.decode('latin-1')!r} is not supported; send the body as it is, or "
                "chunked, and compress it with Content-Encoding: gzip",
            )
            return
        length = self._headers.get(b"content-length")
        if length is not None and length.isdigit() and int(length) > self.app.max_body_bytes:
            self._refuse_too_large(int(length))
        elif self._headers.get(b"expect", b"").lower() == b"100-continue" and self.parser.get_http_version() != "1.0":
            # curl and libcurl ask before sending a body over 1 MB, and wait 1 s for this answer; it
            # goes out now, or once the answers to the requests before this one have (an HTTP/1.0 client's
            # expectation is ignored: RFC 9110 10.1.1)
            self._expecting = True
            self._continue_if_due()

    def _continue_if_due(self) -> None:
        if self._expecting and not self.busy and self.transport is not None:
            self._expecting = False
            # a request its headers alone refuse gets its refusal instead, decided now, after the requests before
            # it (a load before it may serve its model), and the connection ends
            path = self._url.split(b"?", 1)[0].decode("latin-1")
            path = path if path.startswith("/") else _origin_form(path)
            req = Request(self.parser.get_method(), path, self._headers, b"", False, started=self._begun_ns / 1e9)
            refused = self.app.refused_unread(req)
            if refused is not None:
                rid = req.headers.get(b"x-request-id")
                headers = [*refused.headers, (b"x-request-id", rid)] if rid else refused.headers
                log_request(self.app, req, refused.status)
                self._fail_with(dataclasses.replace(refused, headers=headers))
                return
            self.transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")
            self._restart_request_clock()  # the client waited for this before sending the body

    def on_body(self, body: bytes) -> None:
        if self._refused:
            return
        self._size += len(body)
        if self._size > self.app.max_body_bytes:
            self._refuse_too_large(self._size)
            return
        self._body.append(body)

    def on_message_complete(self) -> None:
        self._expecting = False  # the body came: no interim answer is due any more
        self._receiving_since = None
        if self._refused:
            return
        body = self._body[0] if len(self._body) == 1 else b"".join(self._body)
        self._body = []  # the request holds it now: its parts, joined, would be held twice until the next request
        path = self._url.split(b"?", 1)[0].decode("latin-1")
        if not path.startswith("/"):
            path = _origin_form(path)
        if b"upgrade" in self._headers and self.parser.should_upgrade():
            connection = self._headers.get(b"connection", b"").lower()
            http10 = self.parser.get_http_version() == "1.0"
            # HTTP/1.0 closes unless it asks to keep alive (it was kept open, and a client reading to the end waited
            # for the idle timeout)
            keep = b"keep-alive" in connection if http10 else b"close" not in connection
            self._upgrading = Request(self.parser.get_method(), path, self._headers, body, keep)
            self._upgrading.http10 = http10 and keep
            self._upgrading.received = (self._begun_ns, time.perf_counter_ns())
            return  # httptools raises HttpParserUpgrade next; _ignore_upgrade reads its body
        keep_alive = self.parser.should_keep_alive()
        if b"content-length" in self._headers and b"transfer-encoding" in self._headers:
            keep_alive, self._last = False, True
        req = Request(
            self.parser.get_method(), path, self._headers, body, keep_alive, names=self._names, connection=self
        )
        req.received = (self._begun_ns, time.perf_counter_ns())
        if req.keep_alive and self.parser.get_http_version() == "1.0":
            req.http10 = True  # kept open only because it asked: the answer says it is (HTTP/1.0's rule)
        self._complete(req)

    def _complete(self, req: Request) -> None:
        if self._busy or self._write_paused or self._queue:
            self._queue.append(req)
            self._queued_bytes += len(req.body)
            self._update_reading()
            return
        self._dispatch(req)

    def _update_reading(self) -> None:
        """Read while there is room: pause with ``_MAX_PIPELINED`` requests queued or their bodies at
        ``--max-body-bytes`` (32 of the largest were held per connection), or while the client is not reading its
        answers; resume when all clear. A connection being refused keeps reading (and dropping) what the client
        still sends."""
        if self.transport is None:
            return
        full = len(self._queue) >= _MAX_PIPELINED or self._queued_bytes >= self.app.max_body_bytes
        hold = not self._refused and (full or self._write_paused)
        if hold and not self._paused:
            self.transport.pause_reading()
            self._paused = True
        elif not hold and self._paused:
            self.transport.resume_reading()
            self._paused = False
            self._restart_request_clock()  # the rest of a request waited on us, not on the client

    # -- handling ------------------------------------------------------------------------------
    def _dispatch(self, req: Request) -> None:
        routed = self.app.resolve(req)
        if isinstance(routed, Response):
            self._send(req, routed)
            return
        handler, args = routed
        try:
            result = handler(req, args)
        except Exception as e:
            self._send(req, self._error(req, e))
            return
        if isinstance(result, Response):
            self._send(req, result)
            return
        self._busy = True
        self._pending = result
        finish = self._finish(req, result)
        if not self.app.starts_now(self):  # answers due go first: a task starts on a later turn of the loop
            self._task = self._loop.create_task(finish)
            return
        # one client's, nothing else in flight: the request starts now, not a turn of the loop later (``eager.py``)
        context = contextvars.copy_context()
        continued = eager.start(finish, context)
        if continued is None:  # answered already
            self._pending = None
        else:
            self._task = self._loop.create_task(continued, context=context)

    async def _finish(self, req: Request, pending: Awaitable[Response]) -> None:
        try:
            response = await pending
        except Exception as e:
            response = self._error(req, e)
        except BaseException:  # cancelled: the client went away; its trace still goes to its sink
            if req.front is not None:
                req.front.abandon()
            raise
        if response.events is not None:  # the connection's next request waits for its end
            await self._send_events(req, response)
        self._busy = False
        if response.events is None:
            self._send(req, response)
        self._advance()

    async def _send_events(self, req: Request, resp: Response) -> None:
        """``resp`` with its body sent as it comes (``Response.events``): chunked, or to the close for HTTP/1.0. A
        client that goes away ends it (its generator is closed: the request is cancelled)."""
        assert resp.events is not None
        transport = self.transport
        # chunked on a connection kept alive (HTTP/1.1's); else the body runs to the close (HTTP/1.0's, and a
        # request's own, not the parser's: it may have read the next pipelined request already)
        events, chunked = resp.events, req.keep_alive and not req.http10
        try:
            if transport is None or transport.is_closing():
                return
            head = [
                b"HTTP/1.1 %d %s\r\ncontent-type: %s\r\n%s"
                % (resp.status, _REASONS.get(resp.status, b"Unknown"), resp.content_type, _date_line())
            ]
            head += [b"%s: %s\r\n" % (k, v) for k, v in resp.headers]
            rid = req.headers.get(b"x-request-id")
            if rid is not None:  # echoed, as on any answer
                head.append(b"x-request-id: %s\r\n" % rid)
            head.append(b"transfer-encoding: chunked\r\n" if chunked else b"connection: close\r\n")
            head.append(b"\r\n")
            transport.write(b"".join(head))
            async for chunk in events:
                if transport.is_closing():
                    return
                if chunk:
                    transport.write(b"%x\r\n%s\r\n" % (len(chunk), chunk) if chunked else chunk)
                while self._write_paused and not transport.is_closing():  # the client reads slower than the model
                    await asyncio.sleep(0.01)  # sends: the next event waits (and the model with it, in time)
            if chunked:
                transport.write(b"0\r\n\r\n")
            self.last_active = self._loop.time()
            log_request(self.app, req, resp.status)
            if not chunked or not req.keep_alive or self.app.closing:
                transport.close()
        finally:
            await events.aclose()

    def _advance(self) -> None:
        """After an answer (or the client catching up): the next queued requests, then what is due."""
        while self._queue and not self._busy and not self._write_paused and self.transport is not None:
            req = self._queue.popleft()
            self._queued_bytes -= len(req.body)
            self._dispatch(req)
        if self._final is not None and not self.busy:
            final, self._final = self._final, None
            self._end_with(final)
            return
        self._update_reading()
        self._continue_if_due()

    def _error(self, req: Request, exc: BaseException) -> Response:
        return failed(req, exc)

    def _send(self, req: Request, resp: Response) -> None:
        transport = self.transport
        if transport is None or transport.is_closing():
            if req.front is not None:
                req.front.abandon()
            return  # the client went away; nothing to answer
        if req.front is not None:
            sending = time.perf_counter_ns()
        self.last_active = self._loop.time()  # idle time counts from the last answer, not the last request
        keep_alive = req.keep_alive and not self.app.closing
        parts = [
            b"HTTP/1.1 %d %s\r\ncontent-type: %s\r\ncontent-length: %d\r\n%s"
            % (resp.status, _REASONS.get(resp.status, b"Unknown"), resp.content_type, resp.length, _date_line())
        ]
        for k, v in resp.headers:
            parts.append(b"%s: %s\r\n" % (k, v))
        rid = req.headers.get(b"x-request-id")
        if rid is not None:
            parts.append(b"x-request-id: %s\r\n" % rid)
        if not keep_alive:
            parts.append(b"connection: close\r\n")
        elif req.http10:
            parts.append(b"connection: keep-alive\r\n")
        parts.append(b"\r\n")
        if req.method != b"HEAD":
            parts.append(resp.body)
            if resp.tail:  # binary tensor data: handed to the socket as it is, header and all in one writev
                transport.writelines([b"".join(parts), *resp.tail])
                parts = []
        if parts:
            transport.write(b"".join(parts))
        if req.front is not None:
            req.front.sent(sending, time.perf_counter_ns())
        log_request(self.app, req, resp.status)
        if not keep_alive:
            transport.close()

    def _fail(self, code: int, message: str) -> None:
        """End the connection with an error, after the answers to the requests before it."""
        self._fail_with(Response(code, orjson.dumps({"error": message})))

    def _fail_with(self, response: Response) -> None:
        """End the connection with ``response``, after the answers to the requests before it."""
        if self._refused:
            return
        self._refused = True
        self._body = []  # what came of the refused request's body is dropped, as what still comes will be
        self.last_active = self._loop.time()
        if self.busy:
            self._final = response
            self._update_reading()  # keep draining the client while the others finish
        else:
            self._end_with(response)

    def _end_with(self, resp: Response) -> None:
        transport = self.transport
        if transport is None:
            return
        extra = b"".join(b"%s: %s\r\n" % kv for kv in resp.headers)  # a 405's Allow
        transport.write(
            b"HTTP/1.1 %d %s\r\ncontent-type: %s\r\ncontent-length: %d\r\n%s%sconnection: close\r\n\r\n%s"
            % (resp.status, _REASONS.get(resp.status, b"Error"), resp.content_type, resp.length, extra, _date_line(),
               resp.whole())
        )  # fmt: skip
        if not transport.can_write_eof():
            transport.close()
            return
        transport.write_eof()  # the answer, then a FIN; the client's remaining bytes are read and dropped
        self._linger_until = self._loop.time() + _LINGER_S
        self._linger()

    def _linger(self) -> None:
        transport = self.transport
        if transport is None:
            return
        now = self._loop.time()
        if now >= self._linger_until or now - self.last_active >= _LINGER_QUIET_S:
            transport.close()
        else:
            self._loop.call_later(_LINGER_QUIET_S / 4, self._linger)

    def _refuse_too_large(self, size: int) -> None:
        self._fail(
            413,
            f"the request body ({size:,} bytes) exceeds the server's limit of {self.app.max_body_bytes:,} bytes; "
            "send smaller batches or raise --max-body-bytes",
        )

    def request_overdue(self, now: float, idle_timeout_s: float) -> bool:
        """A request has been arriving for longer than the idle timeout plus a second per _MIN_REQUEST_RATE
        bytes. Its clock stops while the server holds the client back: reading paused, or a 100 Continue
        not sent yet because the requests before it are still being answered."""
        since = self._receiving_since
        if since is None or self._refused or self._paused or self._expecting:
            return False
        return now - since > idle_timeout_s + (self._head_bytes + self._size) / _MIN_REQUEST_RATE

    def _restart_request_clock(self) -> None:
        if self._receiving_since is not None:
            self._receiving_since = self._loop.time()

    def time_out_request(self, idle_timeout_s: float) -> None:
        self._receiving_since = None
        self._fail(
            408,
            f"the request did not arrive whole within {idle_timeout_s:g} s of its first byte (plus 1 s per "
            f"{_MIN_REQUEST_RATE} bytes received); send requests at once, or raise --idle-timeout-s",
        )

    def unsent(self) -> int:
        """Bytes of answers the transport still holds (the client has not read them yet)."""
        return self.transport.get_write_buffer_size() if self.transport is not None else 0

    def close_if_idle(self) -> None:
        if self.transport is not None and not self.busy and not self.receiving:
            self.transport.close()
