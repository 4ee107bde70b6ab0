"""The gRPC transport: ``inference.GRPCInferenceService`` on grpc.aio, each RPC a call into the data plane.

Runs on the same event loop as the HTTP server. Errors map through ``server.status`` to gRPC codes.
``ModelStreamInfer`` (tritonclient's ``start_stream`` / ``async_stream_infer``) runs the requests of a
stream at once, up to ``STREAM_IN_FLIGHT``, so that they batch together, and writes their answers in the
order the requests came, failures included, each with Triton's ``triton_final_response`` parameter (true), as
Triton answers a stream to a model that is not decoupled; it reads on while answers wait for earlier ones, up to
``STREAM_UNSENT`` answers not yet sent. A decoupled model's request (``server.decoupled``) gets an answer for each
of its responses as it comes (``triton_final_response`` false until the last), among the others' answers. When the
server drains, a stream stops reading, answers what it runs (and, saying it was not run, what it read but had not
started), and ends UNAVAILABLE. ``TraceSetting`` and ``LogSettings`` are
Triton's trace and logging extensions (see ``server.tracing`` and ``server.logs``); a ``traceparent``
in a call's metadata makes its span a child of the caller's. Triton's RPCs that polystack does not
implement (CUDA shared memory) answer UNIMPLEMENTED with a line saying what to use instead, not grpc's
bare "Method not found!". Every call, and every request of a stream, leaves a log line as an HTTP
request does (``_Calls``).

The standard health service (``grpc.health.v1.Health``, as Triton has it) answers Kubernetes'
gRPC probes, ``grpc_health_probe`` and clients' own health checking: ``""`` (the server) and
``inference.GRPCInferenceService`` are SERVING while the server is ready and NOT_SERVING once it
drains; ``Watch`` streams say so as it happens and then end, so they do not hold the shutdown up.

Both services are registered with lenient deserializers: bytes that are not the method's protobuf
become an ``Undecodable`` stand-in, answered INVALID_ARGUMENT (grpc's own handling answers a unary
call UNKNOWN, and ends a stream with OK, dropping the requests after the bad one unanswered); in a
``ModelStreamInfer`` stream the bad message gets its error answer and the stream goes on.
"""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import logging
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from concurrent.futures import Executor
from dataclasses import dataclass
from typing import Any, TypeVar

import grpc
from google.protobuf import json_format
from google.protobuf.message import DecodeError
from grpc_health.v1 import health_pb2, health_pb2_grpc

from polystack.batching.sequence import flags_of
from polystack.errors import BackendError, InvalidRequest, PolystackError, Restricted, ShuttingDown
from polystack.protocol import grpc_codec, grpc_raw
from polystack.protocol.grpc_gen import inference_pb2 as pb
from polystack.protocol.grpc_gen import inference_pb2_grpc as pb_grpc
from polystack.protocol.wire import InferRequest
from polystack.server import status
from polystack.server.dataplane import DataPlane
from polystack.server.header_forward import HeaderForward
from polystack.server.http import DECODE_INLINE_BELOW
from polystack.server.logs import request_level
from polystack.server.restricted import GRPC_METHODS, Restrictions
from polystack.server.tls import TlsConfig
from polystack.server.tracing import Front

log = logging.getLogger("polystack.server.grpc")
T = TypeVar("T")
STREAM_RPC = "/inference.GRPCInferenceService/ModelStreamInfer"
STREAM_IN_FLIGHT = 64  # requests of one stream being answered at once; the next is read when one finishes
# answers of one stream read and not yet handed to grpc (running, or done and waiting for those before them to
# go out): a client that stops reading stops the reading of its requests at this many
STREAM_UNSENT = 2 * STREAM_IN_FLIGHT
# a stream request's parameter (tritonclient's enable_empty_final_response): send a decoupled model's final flag
# alone as an answer of its own, with no outputs
EMPTY_FINAL = "triton_enable_empty_final_response"


@dataclass(frozen=True)
class Undecodable:
    """What a lenient deserializer hands on in place of bytes that are not the method's protobuf. The
    ``ModelInferRequest`` fields a stream's error answer echoes are empty."""

    method: str
    reason: str
    model_name: str = ""
    model_version: str = ""
    id: str = ""

    def error(self) -> InvalidRequest:
        return InvalidRequest(
            f"the {self.method} request is not a valid protobuf message ({self.reason}); "
            "send it serialized from the service's .proto (tritonclient does)"
        )


class _Calls:
    """What a call leaves in the log, as an HTTP request does: a line per call (``logs.request_level``:
    with ``--access-log`` at info, with the logging extension's ``log_verbose_level`` >= 1 at debug),
    and a warning for one that failed on the server's side (an HTTP 5xx)."""

    def __init__(self, plane: DataPlane, access_log: bool) -> None:
        self.settings = plane.log_settings
        self.access_log = access_log
        # ids of the calls in progress refused by an error that is no failure of the server (a drain's)
        self.not_failures: set[int] = set()

    def ended(
        self,
        rpc: str,
        context: Any,
        request_id: Callable[[], dict[str, str]],
        code: grpc.StatusCode | None,
        started: float,
        failure: str | None = None,
    ) -> None:
        """Log a call (or a request of a stream) that ended with ``code`` (None: OK); ``failure``: the
        error the server failed it with (an HTTP 5xx; not an unexpected error, which is logged with its
        traceback where it happened)."""
        level = request_level(self.settings, self.access_log)
        if level is None and failure is None:
            return
        ids = request_id()
        status_name = (code or grpc.StatusCode.OK).name
        if failure is not None:
            log.warning("request failed", extra={**ids, "rpc": rpc, "status": status_name, "error": failure})
        if level is not None:
            log.log(
                level,
                "request",
                extra={
                    **ids,
                    "rpc": rpc,
                    "status": status_name,
                    "duration_ms": round((time.perf_counter() - started) * 1000, 3),
                },
            )


# the codes of the errors the HTTP transport answers with a 5xx
_SERVER_SIDE = frozenset(code for http, code in status.TABLE.values() if http >= 500)
_ids = itertools.count(1)


def _request_id(context: Any, request: Any, own_first: bool = False) -> dict[str, str]:
    """The call's ``x-request-id`` metadata, else the inference request's id, else one made up here, as the log's
    ``request_id``; ``own_first``: the request's id first (each request of a stream has its own, the metadata is the
    stream's). The inference request's id beside it as ``inference_id`` where it is another (helper-265: the id the
    answer echoes was in no line)."""
    own = getattr(request, "id", "")
    own = own if isinstance(own, str) else ""
    if own_first and own:
        return {"request_id": own}
    for key, value in context.invocation_metadata() or ():
        if key == "x-request-id":
            rid = str(value)
            return {"request_id": rid, "inference_id": own} if own and own != rid else {"request_id": rid}
    return {"request_id": own or f"g{next(_ids)}"}


def _slow_to_read(request: pb.ModelInferRequest) -> bool:
    """A request whose tensors are read element by element (BYTES, or typed contents) and that holds
    ``DECODE_INLINE_BELOW`` bytes or more; raw numbers are read in place at once, whatever their size. A
    sequence's requests are read on the loop: they reach their sequence in the order the stream sent them."""
    if "sequence_id" in request.parameters:
        return False
    if not any(t.datatype == "BYTES" or grpc_codec.has_contents(t) for t in request.inputs):
        return False
    return request.ByteSize() >= DECODE_INLINE_BELOW


def _not_run(request: pb.ModelInferRequest) -> pb.ModelStreamInferResponse:
    """The answer to a stream's request read as the server began to drain, which it does not run."""
    return _failed(request, "the server is shutting down and did not run this request; send it to another replica")


def _failed(request: pb.ModelInferRequest, message: str, in_run: bool = False) -> pb.ModelStreamInferResponse:
    """A stream's answer to ``request`` that failed with ``message``: its id alone, as tritonserver 2.51 answers a
    request its checks refuse (helper-107: polystack named the model and version too); one that failed in its run
    names the model too (helper-284: the model raised, or answered an error) and is marked final, as Triton's
    response-complete path writes every answer."""
    if not in_run:
        return pb.ModelStreamInferResponse(error_message=message, infer_response=pb.ModelInferResponse(id=request.id))
    answer = pb.ModelInferResponse(id=request.id, model_name=request.model_name)
    return _final(pb.ModelStreamInferResponse(error_message=message, infer_response=answer))


def _final(msg: pb.ModelStreamInferResponse) -> pb.ModelStreamInferResponse:
    """``msg`` marked as its request's last answer (Triton's ``triton_final_response``, on every answer of a
    stream: stream clients read until it says so)."""
    msg.infer_response.parameters["triton_final_response"].bool_param = True
    return msg


# A client whose deadline passes cancels the call itself, and its cancel can reach the server before the
# server's own timer for the same deadline fires (that deadline counts from when the call arrived): a cancel
# this close to the deadline is the deadline (a 10 ms deadline was logged CANCELLED in 1 of 20 runs under load)
_DEADLINE_SLACK_S = 0.005


def _cut_short(context: Any) -> grpc.StatusCode:
    """Why a call's handler was cancelled: its deadline passed, or the client went away."""
    remaining = context.time_remaining()
    if remaining is not None and remaining <= _DEADLINE_SLACK_S:
        return grpc.StatusCode.DEADLINE_EXCEEDED
    return grpc.StatusCode.CANCELLED


# tritonserver's --grpc-infer-response-compression-level: grpcio's Python server takes an algorithm, not grpc
# core's levels, and only for the whole server (a call's set_compression has no effect: grpc/grpc#34690), so
# every level but none compresses every response with gzip, which every gRPC client takes
COMPRESSION_LEVELS = ("none", "low", "medium", "high")


class InferenceServicer(pb_grpc.GRPCInferenceServiceServicer):
    def __init__(
        self, plane: DataPlane, calls: _Calls, codec_pool: Executor | None = None,
        header_forward: HeaderForward | None = None,
    ) -> None:  # fmt: skip
        self.header_forward = header_forward  # metadata made request parameters (--grpc-header-forward-pattern)
        self.plane = plane
        self.calls = calls
        self.codec_pool = codec_pool  # the front end's threads for requests slow to read (None: the loop)

    async def _call(self, context: grpc.aio.ServicerContext, fn: Callable[[], Awaitable[T]]) -> T:
        try:
            return await fn()
        except PolystackError as e:
            if not e.server_failure:  # a drain's refusal, say: not logged as the server's failure
                self.calls.not_failures.add(id(context))
            failed = (status.grpc_code(e), status.grpc_details(e.message))
        except Exception:
            log.exception("unexpected error in a gRPC call")
            failed = (grpc.StatusCode.INTERNAL, status.INTERNAL_MESSAGE)
        # aborted past the except: the AbortError it raises, which grpc keeps with the call's state until its next
        # call, would have the error as its __context__, and the error's traceback the model's entry (helper-238)
        await context.abort(*failed)
        raise AssertionError("unreachable")  # context.abort raises

    async def _sync(self, context: grpc.aio.ServicerContext, fn: Callable[[], T]) -> T:
        async def run() -> T:
            return fn()

        return await self._call(context, run)

    async def ServerLive(self, request: pb.ServerLiveRequest, context: Any) -> pb.ServerLiveResponse:
        return pb.ServerLiveResponse(live=self.plane.live())

    async def ServerReady(self, request: pb.ServerReadyRequest, context: Any) -> pb.ServerReadyResponse:
        return pb.ServerReadyResponse(ready=self.plane.ready())

    async def ModelReady(self, request: pb.ModelReadyRequest, context: Any) -> pb.ModelReadyResponse:
        ready = await self._call(context, lambda: self.plane.model_ready_now(request.name, request.version))
        return pb.ModelReadyResponse(ready=ready)

    async def ServerMetadata(self, request: pb.ServerMetadataRequest, context: Any) -> pb.ServerMetadataResponse:
        md = self.plane.server_metadata()
        return pb.ServerMetadataResponse(name=md["name"], version=md["version"], extensions=md["extensions"])

    async def ModelMetadata(self, request: pb.ModelMetadataRequest, context: Any) -> pb.ModelMetadataResponse:
        md = await self._sync(context, lambda: self.plane.model_metadata(request.name, request.version))
        resp = pb.ModelMetadataResponse(name=md["name"], versions=md["versions"], platform=md["platform"])
        for key, target in (("inputs", resp.inputs), ("outputs", resp.outputs)):
            for t in md[key]:
                target.add(name=t["name"], datatype=t["datatype"], shape=t["shape"])
        return resp

    async def ModelConfig(self, request: pb.ModelConfigRequest, context: Any) -> pb.ModelConfigResponse:
        config = await self._sync(context, lambda: self.plane.model_config(request.name, request.version))
        # every field GET config shows is in the proto: a client sees over gRPC what it sees over HTTP
        return pb.ModelConfigResponse(config=json_format.ParseDict(config, pb.ModelConfig()))

    async def ModelStatistics(self, request: pb.ModelStatisticsRequest, context: Any) -> pb.ModelStatisticsResponse:
        stats = await self._sync(context, lambda: self.plane.model_stats(request.name or None, request.version))
        return json_format.ParseDict(stats, pb.ModelStatisticsResponse(), ignore_unknown_fields=True)

    async def _decode(self, request: pb.ModelInferRequest, context: Any) -> InferRequest:
        if isinstance(request, Undecodable):  # one bad message of a stream: answered, the stream goes on
            raise request.error()
        forward = self.header_forward

        def decode() -> InferRequest:
            decoded = grpc_codec.decode_infer_request(request, self.plane.shared_memory)
            if isinstance(request, grpc_raw.ViewedRequest):
                request.release()
            if forward is None:
                return decoded
            # a stream's requests each take its metadata, as Triton forwards it
            return forward.apply(decoded, ((k, v) for k, v in context.invocation_metadata() or () if isinstance(v, str)))

        if self.codec_pool is None or not _slow_to_read(request):
            return self.plane.decode(request.model_name, request.model_version, decode)
        # reading it on the loop would hold every other client up meanwhile
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(
            self.codec_pool, self.plane.decode, request.model_name, request.model_version, decode
        )

    async def _infer(self, request: pb.ModelInferRequest, context: Any, viewed: bool = False) -> Any:
        """The answer to ``request``: a ``ModelInferResponse``, or (``viewed``: a unary call's, which
        ``grpc_raw.serialize_infer_response`` writes) a large one's ``ViewedResponse``."""
        if self.plane.tracing.active:  # grpc hands the message over read: its WAITREAD_* are both this moment
            now = time.perf_counter_ns()
            front: Front | None = Front("GRPC", now, now)
        else:
            front = None
        encode = grpc_codec.encode_unary_response if viewed else grpc_codec.encode_infer_response
        decoded = await self._decode(request, context)
        decoded.parameters.pop(EMPTY_FINAL, None)  # a stream's (below): Triton's front end keeps it from the model
        if front is None:
            result = await self.plane.infer(
                request.model_name, request.model_version, decoded, None, lambda: _metadata(context),
                endpoint="ModelInfer RPC",
            )  # fmt: skip
            return encode(result)
        sending = 0
        try:
            result = await self.plane.infer(
                request.model_name, request.model_version, decoded, None, lambda: _metadata(context), front=front,
                endpoint="ModelInfer RPC",
            )  # fmt: skip
            sending = time.perf_counter_ns()
            return encode(result)  # GRPC_SEND_*: its encoding, handed to grpc
        finally:
            front.sent(sending or time.perf_counter_ns(), time.perf_counter_ns())

    async def _streamed(
        self, request: pb.ModelInferRequest, context: Any
    ) -> AsyncIterator[tuple[pb.ModelStreamInferResponse, PolystackError | None]]:
        """A decoupled model's request of a stream: its responses as the model sends them, each marked final or
        not (``triton_final_response``), as Triton's stream answers one; the final flag alone is sent only where the
        request asks for it (``triton_enable_empty_final_response``, tritonclient's
        ``enable_empty_final_response``). A response carrying an error is an answer with ``error_message``."""
        decoded = await self._decode(request, context)
        empty_final = decoded.parameters.pop(EMPTY_FINAL, False) is True
        responses = self.plane.infer_stream(
            request.model_name, request.model_version, decoded, None, lambda: _metadata(context)
        )
        try:
            async for streamed in responses:
                if streamed.response is not None:
                    msg = pb.ModelStreamInferResponse(infer_response=grpc_codec.encode_infer_response(streamed.response))
                elif streamed.error is not None:
                    msg = pb.ModelStreamInferResponse(  # as Triton's: the model's name and the request's id alone
                        error_message=status.message(streamed.error),
                        infer_response=pb.ModelInferResponse(model_name=request.model_name, id=request.id),
                    )
                elif empty_final:  # as Triton's: the model's name and the request's id, no version
                    msg = pb.ModelStreamInferResponse(
                        infer_response=pb.ModelInferResponse(model_name=request.model_name, id=request.id)
                    )
                else:
                    continue
                msg.infer_response.parameters["triton_final_response"].bool_param = streamed.final
                yield msg, streamed.error
        finally:
            await responses.aclose()

    async def ModelInfer(self, request: pb.ModelInferRequest, context: Any) -> pb.ModelInferResponse:
        return await self._call(context, lambda: self._infer_unless_draining(request, context))

    async def _infer_unless_draining(self, request: pb.ModelInferRequest, context: Any) -> pb.ModelInferResponse:
        # The gRPC server stops only once the drain is over: a call arriving meanwhile is refused here, where
        # grpc's own shutdown would answer it CANCELLED, a code clients and proxies do not retry.
        if self.plane.draining and not self._of_a_sequence(request):
            raise ShuttingDown("the server is shutting down; send the request to another replica (it was not run)")
        return await self._infer(request, context, viewed=True)

    def _of_a_sequence(self, request: pb.ModelInferRequest) -> bool:
        """A sequence's request to a sequence model, read in the drain's first part: taken, so that the sequences the
        server holds finish, as in Triton's exit; their sequence batcher answers the others in Triton's words (a START:
        UNAVAILABLE, ``Server is stopping``; a sequence it does not hold: INVALID_ARGUMENT, as at any time)."""
        if not self.plane.taking_sequences or "sequence_id" not in request.parameters:
            return False
        try:
            flags = flags_of(grpc_codec.request_params(request.parameters))
        except PolystackError:
            return False
        return flags is not None and self.plane.serves_sequences(request.model_name, request.model_version or None)

    async def ModelStreamInfer(
        self, request_iterator: AsyncIterator[pb.ModelInferRequest], context: Any
    ) -> AsyncIterator[pb.ModelStreamInferResponse]:
        # each request's answer to come, in the order the requests came (None: the last was read); the answers
        # are written in that order, as Triton writes a stream's answers to a model that is not decoupled
        answers: asyncio.Queue[asyncio.Future[pb.ModelStreamInferResponse] | None] = asyncio.Queue()
        loop = asyncio.get_running_loop()
        # a slot is held while a request runs (STREAM_IN_FLIGHT at once); a place among the unsent answers from
        # reading it until its answer is handed to grpc (STREAM_UNSENT), so a client that stops reading stops
        # the reading of its requests (HTTP/2 flow control does the rest), while answers that wait for an
        # earlier one free their slots: the stream reads on, up to STREAM_UNSENT, and the request that the
        # earlier one waits for (a sequence's END freeing its slot) can still come
        slots = asyncio.Semaphore(STREAM_IN_FLIGHT)
        unsent = asyncio.Semaphore(STREAM_UNSENT)
        running: set[asyncio.Task[None]] = set()
        # Triton's triton_grpc_error header: the first failure of a request's run (the model's error, a timeout in
        # its queue) ends the stream with its gRPC status; a request refused before it runs (unknown model, bad
        # tensors, a full queue) is answered in the stream (error_message) as without it, as Triton's are
        status_on_error = _header(context, "triton_grpc_error") == "true"
        codes: dict[asyncio.Future[pb.ModelStreamInferResponse], grpc.StatusCode] = {}  # of the failed answers

        async def answer(request: pb.ModelInferRequest, answered: asyncio.Future[pb.ModelStreamInferResponse]) -> None:
            started = time.perf_counter()
            code = None
            failure = None
            try:
                try:
                    msg = _final(pb.ModelStreamInferResponse(infer_response=await self._infer(request, context)))
                except Exception as e:
                    code = status.grpc_code(e)
                    if not isinstance(e, PolystackError):
                        log.exception("unexpected error in a gRPC stream")
                    elif code in _SERVER_SIDE and e.server_failure:  # (not a refusal in Triton's 500, say)
                        failure = e.message
                    msg = _failed(request, status.message(e), _in_the_run(e))
                    if status_on_error and _in_the_run(e):
                        codes[answered] = code
                answered.set_result(msg)
            except asyncio.CancelledError:
                code = _cut_short(context)
                raise
            finally:  # a line per request of the stream, as for a unary call
                slots.release()
                if not answered.done():  # cancelled: the answers after it are not held up by it
                    answered.set_result(_not_run(request))
                rid = lambda: _request_id(context, request, True)  # noqa: E731
                self.calls.ended(STREAM_RPC, context, rid, code, started, failure)

        async def stream(request: pb.ModelInferRequest) -> None:
            """A decoupled model's request: each of its answers queued as it comes (each with a place among the
            unsent answers: the first has the one its reading took)."""
            started = time.perf_counter()
            code = None
            failure = None
            held = True  # the place among the unsent answers its reading took, not used yet

            async def out(msg: pb.ModelStreamInferResponse, error: PolystackError | None) -> None:
                nonlocal held, code, failure
                if not held:
                    await unsent.acquire()
                held = False
                sent: asyncio.Future[pb.ModelStreamInferResponse] = loop.create_future()
                sent.set_result(msg)
                if error is not None:
                    code = status.grpc_code(error)
                    if code in _SERVER_SIDE and error.server_failure:
                        failure = error.message
                    if status_on_error and _in_the_run(error):
                        codes[sent] = code
                answers.put_nowait(sent)

            try:
                try:
                    async for msg, error in self._streamed(request, context):
                        await out(msg, error)
                except Exception as e:  # refused before its run: one answer, as any request's
                    if not isinstance(e, PolystackError):
                        log.exception("unexpected error in a gRPC stream")
                    error = e if isinstance(e, PolystackError) else BackendError(status.INTERNAL_MESSAGE)
                    await out(_failed(request, status.message(e), _in_the_run(e)), error)
            except asyncio.CancelledError:
                code = _cut_short(context)
                raise
            finally:
                slots.release()
                if held:  # it sent nothing: its place goes back
                    unsent.release()
                rid = lambda: _request_id(context, request, True)  # noqa: E731
                self.calls.ended(STREAM_RPC, context, rid, code, started, failure)

        async def take() -> None:
            async for request in request_iterator:
                answered: asyncio.Future[pb.ModelStreamInferResponse] = loop.create_future()
                if self.plane.draining and (isinstance(request, Undecodable) or not self._of_a_sequence(request)):
                    await unsent.acquire()  # read while the sequences held run on: theirs alone are run
                    answered.set_result(_not_run(request))
                    answers.put_nowait(answered)
                    continue
                try:
                    await unsent.acquire()
                except asyncio.CancelledError:  # read as the drain began: answered, not run
                    answered.set_result(_not_run(request))
                    answers.put_nowait(answered)
                    raise
                try:
                    await slots.acquire()
                except asyncio.CancelledError:
                    answered.set_result(_not_run(request))
                    answers.put_nowait(answered)
                    raise
                decoupled = not isinstance(request, Undecodable) and self.plane.decoupled(
                    request.model_name, request.model_version
                )
                if decoupled:  # its answers go out as they come, among those of the stream's other requests
                    task = asyncio.create_task(stream(request))
                else:
                    answers.put_nowait(answered)
                    task = asyncio.create_task(answer(request, answered))
                running.add(task)
                task.add_done_callback(running.discard)

        drained = False

        async def read() -> None:
            nonlocal drained
            try:
                # the drain stops the reading once the sequences held have ended (an open stream would otherwise
                # take requests, and hold the shutdown, for the whole drain timeout); what runs already is answered
                taking = asyncio.ensure_future(take())
                drain = asyncio.ensure_future(self.plane.wait_sequences_over())
                try:
                    await asyncio.wait((taking, drain), return_when=asyncio.FIRST_COMPLETED)
                finally:
                    drain.cancel()
                    if not taking.done():
                        drained = True
                        taking.cancel()  # a request read and waiting for a slot is answered as not run
                    # its failure once the stream was aborted (triton_grpc_error) or cut is the stream's end: taken
                    taking.add_done_callback(lambda t: t.cancelled() or t.exception())
                if not drained:
                    taking.result()  # a read that failed ends the stream as it did
                while running:
                    await asyncio.wait(set(running))
            finally:
                answers.put_nowait(None)  # the client closed its side and every answer is out (or it went away)

        reader = asyncio.create_task(read())
        try:
            while (answered := await answers.get()) is not None:
                msg = await answered
                code = codes.pop(answered, None)
                if code is not None:  # the answers after it are not sent, as Triton's are not
                    await context.abort(code, status.grpc_details(msg.error_message))
                yield msg
                unsent.release()
        finally:
            reader.cancel()
            for task in list(running):
                task.cancel()
        if drained:  # what the client sent and got no answer to was not run: it should go elsewhere
            await context.abort(
                grpc.StatusCode.UNAVAILABLE,
                "the server is shutting down; the requests of this stream that got no answer were not run: "
                "send them to another replica",
            )

    async def RepositoryIndex(self, request: pb.RepositoryIndexRequest, context: Any) -> pb.RepositoryIndexResponse:
        extension = self.plane.repository_extension
        models = await self._call(context, lambda: extension.index(request.ready, request.repository_name))
        resp = pb.RepositoryIndexResponse()
        for m in models:
            resp.models.add(**m)
        return resp

    async def RepositoryModelLoad(
        self, request: pb.RepositoryModelLoadRequest, context: Any
    ) -> pb.RepositoryModelLoadResponse:
        params = grpc_codec.params_dict(request.parameters)
        extension = self.plane.repository_extension
        await self._call(context, lambda: extension.load(request.model_name, params, request.repository_name))
        return pb.RepositoryModelLoadResponse()

    async def RepositoryModelUnload(
        self, request: pb.RepositoryModelUnloadRequest, context: Any
    ) -> pb.RepositoryModelUnloadResponse:
        params = grpc_codec.params_dict(request.parameters)
        extension = self.plane.repository_extension
        await self._call(context, lambda: extension.unload(request.model_name, params, request.repository_name))
        return pb.RepositoryModelUnloadResponse()

    async def SystemSharedMemoryStatus(
        self, request: pb.SystemSharedMemoryStatusRequest, context: Any
    ) -> pb.SystemSharedMemoryStatusResponse:
        regions = await self._sync(context, lambda: self.plane.regions().status(request.name or None))
        resp = pb.SystemSharedMemoryStatusResponse()
        for r in regions:
            resp.regions[r["name"]].CopyFrom(pb.SystemSharedMemoryStatusResponse.RegionStatus(**r))
        return resp

    async def SystemSharedMemoryRegister(
        self, request: pb.SystemSharedMemoryRegisterRequest, context: Any
    ) -> pb.SystemSharedMemoryRegisterResponse:
        await self._sync(
            context,
            lambda: self.plane.regions().register(request.name, request.key, request.offset, request.byte_size),
        )
        return pb.SystemSharedMemoryRegisterResponse()

    async def SystemSharedMemoryUnregister(
        self, request: pb.SystemSharedMemoryUnregisterRequest, context: Any
    ) -> pb.SystemSharedMemoryUnregisterResponse:
        await self._sync(context, lambda: self.plane.regions().unregister(request.name or None))
        return pb.SystemSharedMemoryUnregisterResponse()

    async def CudaSharedMemoryStatus(
        self, request: pb.CudaSharedMemoryStatusRequest, context: Any
    ) -> pb.CudaSharedMemoryStatusResponse:
        await self._sync(context, lambda: self.plane.cuda_shared_memory.status(request.name or None))
        return pb.CudaSharedMemoryStatusResponse()  # none is ever registered

    async def CudaSharedMemoryRegister(
        self, request: pb.CudaSharedMemoryRegisterRequest, context: Any
    ) -> pb.CudaSharedMemoryRegisterResponse:
        await self._sync(context, lambda: self.plane.cuda_shared_memory.register(request.name))
        return pb.CudaSharedMemoryRegisterResponse()

    async def CudaSharedMemoryUnregister(
        self, request: pb.CudaSharedMemoryUnregisterRequest, context: Any
    ) -> pb.CudaSharedMemoryUnregisterResponse:
        await self._sync(context, lambda: self.plane.cuda_shared_memory.unregister(request.name or None))
        return pb.CudaSharedMemoryUnregisterResponse()

    async def TraceSetting(self, request: pb.TraceSettingRequest, context: Any) -> pb.TraceSettingResponse:
        # no settings is a read (tritonclient's get_trace_settings); an empty value list clears one
        changes = {k: list(v.value) or None for k, v in request.settings.items()} if request.settings else None
        settings = await self._sync(context, lambda: self.plane.trace_settings(request.model_name, changes))
        resp = pb.TraceSettingResponse()
        for key, value in settings.items():
            resp.settings[key].value.extend(value if isinstance(value, list) else [value])
        return resp

    async def LogSettings(self, request: pb.LogSettingsRequest, context: Any) -> pb.LogSettingsResponse:
        changes = {k: _log_value(v) for k, v in request.settings.items()} if request.settings else None
        settings = await self._sync(context, lambda: self.plane.log_settings_of(changes))
        resp = pb.LogSettingsResponse()
        for key, value in settings.items():
            field = (
                "bool_param"
                if isinstance(value, bool)
                else "uint32_param"
                if isinstance(value, int)
                else "string_param"
            )
            setattr(resp.settings[key], field, value)
        return resp


def _in_the_run(e: BaseException) -> bool:
    """Whether a request failed in its run (the model's error, a timeout in its queue, an unexpected one), not
    refused before it (what Triton's stream answers from its InferAsync call)."""
    return not isinstance(e, PolystackError) or e.in_run


def _header(context: Any, name: str) -> str | None:
    """The value of a call's metadata ``name`` (its first), or None."""
    return next((str(value) for key, value in context.invocation_metadata() or () if key == name), None)


def _metadata(context: Any) -> dict[str, Any]:
    """A call's metadata, for trace context propagation (only for a request traced)."""
    return {key: value for key, value in context.invocation_metadata() or ()}


def _log_value(value: pb.LogSettingsRequest.SettingValue) -> Any:
    which = value.WhichOneof("parameter_choice")
    return None if which is None else getattr(value, which)


class HealthServicer(health_pb2_grpc.HealthServicer):
    """``grpc.health.v1.Health`` over the data plane's readiness."""

    SERVICES = ("", pb.DESCRIPTOR.services_by_name["GRPCInferenceService"].full_name)

    def __init__(self, plane: DataPlane) -> None:
        self.plane = plane

    def _status(self, service: str) -> health_pb2.HealthCheckResponse.ServingStatus.ValueType:
        if service not in self.SERVICES:
            return health_pb2.HealthCheckResponse.SERVICE_UNKNOWN
        return (
            health_pb2.HealthCheckResponse.SERVING if self.plane.ready() else health_pb2.HealthCheckResponse.NOT_SERVING
        )

    async def Check(self, request: health_pb2.HealthCheckRequest, context: Any) -> health_pb2.HealthCheckResponse:
        serving = self._status(request.service)
        if serving == health_pb2.HealthCheckResponse.SERVICE_UNKNOWN:
            await context.abort(
                grpc.StatusCode.NOT_FOUND,
                status.grpc_details(
                    f"unknown service {request.service!r}; ask for '' (the server) or {self.SERVICES[1]!r}"
                ),
            )
        return health_pb2.HealthCheckResponse(status=serving)

    async def Watch(
        self, request: health_pb2.HealthCheckRequest, context: Any
    ) -> AsyncIterator[health_pb2.HealthCheckResponse]:
        # The status now (SERVICE_UNKNOWN for a name not served, with the call kept open, as the
        # protocol asks); then, when the server drains, the final status, and the stream ends.
        now = self._status(request.service)
        yield health_pb2.HealthCheckResponse(status=now)
        # decided by the status sent, not by readiness when this resumes: a drain that began while the first
        # message was on its way ended the stream without its change (seen once under load)
        if now != health_pb2.HealthCheckResponse.NOT_SERVING:
            await self.plane.wait_draining()  # at once if it began meanwhile
            if self._status(request.service) != now:  # a new message only for a change, as the protocol says
                yield health_pb2.HealthCheckResponse(status=self._status(request.service))


@dataclass(frozen=True)
class Keepalive:
    """The server's HTTP/2 keepalive settings, Triton's ``--grpc-keepalive-*`` and ``--grpc-http2-*`` (its
    defaults, which are gRPC's own): its pings to idle clients, and how often clients may ping it before it
    closes their connection (GOAWAY ``too_many_pings``)."""

    time_ms: int = 7_200_000  # ping a connection idle this long
    timeout_ms: int = 20_000  # and close it when the answer takes longer
    permit_without_calls: bool = False  # take clients' pings on connections with no call in flight
    max_pings_without_data: int = 2  # pings the server sends without data between (0: no limit)
    min_recv_ping_interval_without_data_ms: int = 300_000  # a client's pings closer than this are strikes
    max_ping_strikes: int = 2  # strikes before GOAWAY (0: no limit)
    max_connection_age_ms: int = 0  # close a connection this old, once its calls end (0: never)
    max_connection_age_grace_ms: int = 0  # and past this more, whatever runs (0: gRPC's default, no limit)

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if not isinstance(value, bool) and not 0 <= value <= _MAX_INT32:
                flag = _KEEPALIVE_FLAGS[f.name]
                raise InvalidRequest(f"{flag} takes 0 to {_MAX_INT32}, not {value}")

    def options(self) -> list[tuple[str, int]]:
        return [
            ("grpc.keepalive_time_ms", self.time_ms),
            ("grpc.keepalive_timeout_ms", self.timeout_ms),
            ("grpc.keepalive_permit_without_calls", int(self.permit_without_calls)),
            ("grpc.http2.max_pings_without_data", self.max_pings_without_data),
            ("grpc.http2.min_recv_ping_interval_without_data_ms", self.min_recv_ping_interval_without_data_ms),
            ("grpc.http2.max_ping_strikes", self.max_ping_strikes),
            *([("grpc.max_connection_age_ms", self.max_connection_age_ms)] if self.max_connection_age_ms else []),
            *([("grpc.max_connection_age_grace_ms", g)] if (g := self.max_connection_age_grace_ms) else []),
        ]


_MAX_INT32 = (1 << 31) - 1
_KEEPALIVE_FLAGS = {  # the serve flags, named as Triton names them
    "time_ms": "--grpc-keepalive-time",
    "timeout_ms": "--grpc-keepalive-timeout",
    "permit_without_calls": "--grpc-keepalive-permit-without-calls",
    "max_pings_without_data": "--grpc-http2-max-pings-without-data",
    "min_recv_ping_interval_without_data_ms": "--grpc-http2-min-recv-ping-interval-without-data",
    "max_ping_strikes": "--grpc-http2-max-ping-strikes",
    "max_connection_age_ms": "--grpc-max-connection-age",
    "max_connection_age_grace_ms": "--grpc-max-connection-age-grace",
}


def create_server(
    plane: DataPlane,
    host: str,
    port: int,
    max_message_bytes: int,
    tls: TlsConfig | None = None,
    access_log: bool = False,
    codec_pool: Executor | None = None,
    keepalive: Keepalive = Keepalive(),
    restricted: Restrictions = Restrictions(what="protocol"),
    compress_infer: bool = False,
    reuse_port: bool = False,
    header_forward: HeaderForward | None = None,
) -> tuple[grpc.aio.Server, int]:
    """A grpc.aio server with the servicer added and the port bound (not started), over TLS when
    ``tls`` is given, logging every call with ``access_log``, reading requests slow to read on
    ``codec_pool`` (the HTTP front end's), with ``keepalive``'s settings, its responses gzip-compressed
    with ``compress_infer`` (``COMPRESSION_LEVELS``); (server, port)."""
    server = grpc.aio.server(
        compression=grpc.Compression.Gzip if compress_infer else None,
        options=[
            ("grpc.max_receive_message_length", max_message_bytes),
            ("grpc.max_send_message_length", -1),
            ("grpc.so_reuseport", int(reuse_port)),  # tritonserver's --reuse-grpc-port
            *keepalive.options(),
        ]
    )
    calls = _Calls(plane, access_log)
    servicer = InferenceServicer(plane, calls, codec_pool, header_forward)
    _add_service(pb_grpc.add_GRPCInferenceServiceServicer_to_server, servicer, server, calls, restricted)
    _add_service(health_pb2_grpc.add_HealthServicer_to_server, HealthServicer(plane), server, calls, restricted)
    address = f"[{host}]:{port}" if ":" in host and not host.startswith("[") else f"{host}:{port}"  # IPv6: [::1]
    why = "the port is taken or the address is not this machine's"
    try:  # grpcio raises RuntimeError("Failed to bind ...") where older releases returned 0
        bound = server.add_secure_port(address, tls.grpc_credentials()) if tls else server.add_insecure_port(address)
    except RuntimeError:  # its words point at GRPC_VERBOSITY; grpc's own log line, above, says why
        bound = 0
    if bound == 0:
        raise OSError(
            f"cannot serve gRPC on {address} (--grpc-port, --host): {why}; give a free port (0: any), or -1 for no gRPC"
        )
    return server, bound


class _Handlers:
    """Stands in for the server in a generated ``add_*Servicer_to_server``, to take its method handlers."""

    def __init__(self) -> None:
        self.service = ""
        self.methods: dict[str, grpc.RpcMethodHandler] = {}

    def add_generic_rpc_handlers(self, handlers: Any) -> None:
        pass  # the same handlers come to add_registered_method_handlers

    def add_registered_method_handlers(self, service: str, methods: dict[str, grpc.RpcMethodHandler]) -> None:
        self.service, self.methods = service, methods


def _add_service(
    add_to_server: Callable[[Any, Any], None],
    servicer: Any,
    server: grpc.aio.Server,
    calls: _Calls,
    restricted: Restrictions = Restrictions(what="protocol"),
) -> None:
    """Register a generated service as its ``add_*Servicer_to_server`` would, with lenient deserializers
    and a log line per unary call, its methods of restricted APIs answering only calls with their key."""
    taken = _Handlers()
    add_to_server(servicer, taken)
    methods = {
        name: _restricted(taken.service, name, _lenient(f"{taken.service}/{name}", h, calls), restricted, calls)
        for name, h in taken.methods.items()
    }
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(taken.service, methods),))
    server.add_registered_method_handlers(taken.service, methods)


def _restricted(service: str, name: str, handler: Any, restricted: Restrictions, calls: _Calls) -> Any:
    """``handler`` answering a call only when its metadata carries the key its API's restriction needs
    (``--grpc-restricted-protocol``); else UNAVAILABLE in Triton's words, before the servicer sees the call
    (a refusal, not logged as the server's failure), and before its request is read: a method taking one request is
    answered as one taking a stream of them, its one read once the key is checked, so that a call without the key
    cannot make the server take in a message of up to 2 GiB first (grpc reads a one-request call's whole message
    before its handler)."""
    api = GRPC_METHODS.get(name)
    if api is None or api not in restricted.keys:
        return handler
    rpc = f"/{service}/{name}"

    async def refuse_unless_allowed(context: grpc.aio.ServicerContext) -> None:
        metadata = dict(context.invocation_metadata() or ())
        try:
            restricted.check(api, lambda key: _text(metadata.get(key)))
        except Restricted as e:
            code = status.grpc_code(e)
            calls.ended(rpc, context, lambda: _request_id(context, None), code, time.perf_counter())
            await context.abort(code, e.message)

    if handler.unary_unary is not None:
        unary = handler.unary_unary

        async def read_when_allowed(requests: AsyncIterator[Any], context: grpc.aio.ServicerContext) -> Any:
            await refuse_unless_allowed(context)
            async for request in requests:  # a unary call's one message
                return await unary(request, context)
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"{rpc} takes one request message; none came")

        return grpc.stream_unary_rpc_method_handler(
            read_when_allowed, handler.request_deserializer, handler.response_serializer
        )

    if handler.unary_stream is not None:  # (the health service's Watch)
        answers = handler.unary_stream

        async def stream_when_allowed(requests: AsyncIterator[Any], context: grpc.aio.ServicerContext) -> Any:
            await refuse_unless_allowed(context)
            async for request in requests:  # the call's one message
                async for answer in answers(request, context):
                    yield answer
                return
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"{rpc} takes one request message; none came")

        return grpc.stream_stream_rpc_method_handler(
            stream_when_allowed, handler.request_deserializer, handler.response_serializer
        )
    if handler.stream_stream is not None:
        streamed = handler.stream_stream

        async def checked_first(requests: AsyncIterator[Any], context: grpc.aio.ServicerContext) -> Any:
            await refuse_unless_allowed(context)
            async for answer in streamed(requests, context):
                yield answer

        return handler._replace(stream_stream=checked_first)
    return handler


def _text(value: str | bytes | None) -> str | None:
    """A metadata value as text (a ``-bin`` key's comes as bytes), decoded as the flag's own value was read from
    the command line, so that the two compare byte for byte, as Triton compares them."""
    return os.fsdecode(value) if isinstance(value, bytes) else value


# requests whose raw tensors are read as views of what grpc received, not through protobuf's copies
_VIEWED = {"inference.GRPCInferenceService/ModelInfer", "inference.GRPCInferenceService/ModelStreamInfer"}


def _lenient(method: str, handler: Any, calls: _Calls) -> Any:
    parse = grpc_raw.parse_infer_request if method in _VIEWED else handler.request_deserializer
    if method == "inference.GRPCInferenceService/ModelInfer":  # its large answers written around their tensors too
        handler = handler._replace(response_serializer=grpc_raw.serialize_infer_response)
    rpc = f"/{method}"

    def parse_or_flag(data: bytes) -> Any:
        try:
            return parse(data)
        except DecodeError as e:
            return Undecodable(method, str(e) or "malformed")

    handler = handler._replace(request_deserializer=parse_or_flag)
    if handler.unary_unary is not None:
        unary = handler.unary_unary

        async def unary_unary(request: Any, context: grpc.aio.ServicerContext) -> Any:
            started = time.perf_counter()
            cut: grpc.StatusCode | None = None
            try:
                if isinstance(request, Undecodable):
                    await context.abort(grpc.StatusCode.INVALID_ARGUMENT, request.error().message)
                return await unary(request, context)
            except asyncio.CancelledError:
                cut = _cut_short(context)
                raise
            finally:
                code = cut or context.code()
                # a server-side failure, unless an unexpected error (already logged with its traceback)
                details = context.details() if cut is None and code in _SERVER_SIDE else None
                refused = id(context) in calls.not_failures
                calls.not_failures.discard(id(context))
                failure = details if details != status.INTERNAL_MESSAGE and not refused else None
                calls.ended(rpc, context, lambda: _request_id(context, request), code, started, failure)

        return handler._replace(unary_unary=unary_unary)
    if handler.unary_stream is not None:
        streaming = handler.unary_stream

        async def unary_stream(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
            if isinstance(request, Undecodable):
                await context.abort(grpc.StatusCode.INVALID_ARGUMENT, request.error().message)
            async for answer in streaming(request, context):
                yield answer

        return handler._replace(unary_stream=unary_stream)
    return handler  # streamed requests: the servicer answers an Undecodable one in the stream
