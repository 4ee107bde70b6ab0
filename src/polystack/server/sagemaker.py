"""Triton's SageMaker front end (``tritonserver --allow-sagemaker true``): the port Amazon SageMaker's real-time
endpoints call, ``serve --allow-sagemaker true [--sagemaker-port 8080]``, as tritonserver 2.51 serves it
(helper-122 took the ground truth from the real server):

- ``GET /ping``: 200 while the server is ready (``SAGEMAKER_TRITON_PING_MODE=live``: while it is live), else 400;
  an empty body either way;
- ``POST /invocations``: what ``SAGEMAKER_TRITON_INFERENCE_TYPE`` says (Triton's newer releases; ``infer``, the
  default, as 2.51 has it alone; ``generate`` and ``generate_stream``: Triton's generate extension, its JSON object
  in and its answer out, as one object or as Server-Sent Events) for the model ``SAGEMAKER_TRITON_DEFAULT_MODEL_NAME``
  names. An ``infer`` is an inference request of that model (unset:
  Triton's placeholder name, which no model has, so that requests say so), in the Open Inference Protocol's JSON,
  or with its binary tensors after a JSON header whose length the content type gives
  (``application/vnd.sagemaker-triton.binary+json;json-header-size=N``; ``N`` 0: the whole body is the model's one
  input, and every output goes back binary). An answer with binary outputs carries that content type with the
  length of its JSON header; refusals are the HTTP port's statuses and words. The body is read as it came, whatever
its content type (but SageMaker's) or encoding says, as Triton's port reads it. The port is plain HTTP (SageMaker calls
its containers so; Triton's has no TLS), and during a drain it answers ``/ping`` 400 and refuses new invocations
(503) until the drain ends.

SageMaker's multi-model endpoints (``sagemaker_models.py``), routed as Triton routes them: ``GET /models`` lists
the models loaded (``{"models": [{"modelName", "modelUrl"}]}``), ``GET /models/<name>`` shows one, ``POST /models``
loads one (``{"model_name", "url"}``, the ``X-Amzn-SageMaker-Target-Model`` header naming it), ``POST
/models/<name>/invoke`` runs it as ``/invocations`` runs the default model, ``DELETE /models/<name>`` unloads it;
a name not loaded is 404 with an empty body. Refusals there are Triton's statuses: 409 for what is loaded already,
507 where memory ran out, 400 for the rest, with the error as JSON. The model repository restriction
(``--http-restricted-api model-repository:...``) covers them all but invoke, as in Triton.

Every other path is 400 with an empty body, as Triton answers it. The port serves the same data plane as the HTTP
one (its models, statistics, metrics and traces).
"""

from __future__ import annotations

import logging
import os
import re
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote

import orjson

from polystack.errors import AlreadyExists, InvalidRequest, NotFound, PolystackError, ShuttingDown, quote
from polystack.server.dataplane import DataPlane
from polystack.server.http import Handler, HttpApp, Request, Response
from polystack.server.sagemaker_models import MultiModels, out_of_memory

log = logging.getLogger("polystack.server")

BINARY = b"application/vnd.sagemaker-triton.binary+json;json-header-size="
UNSPECIFIED = "unspecified_SAGEMAKER_TRITON_DEFAULT_MODEL_NAME"  # Triton's name where the variable is unset
_TEXT = b"text/plain"
_MODELS = re.compile(r"/models(?:/)?([^/]+)?(/invoke)?")  # Triton's route of the multi-model endpoints
INFERENCE_TYPES = ("infer", "generate", "generate_stream")  # Triton's handlers /invocations may run


@dataclass(frozen=True)
class SageMakerSettings:
    """What the SageMaker port serves: the model behind ``/invocations``, and whether ``/ping`` asks for liveness
    rather than readiness."""

    model: str = UNSPECIFIED
    ping_live: bool = False
    inference_type: str = "infer"  # what /invocations runs: infer, generate or generate_stream

    @classmethod
    def from_environment(cls) -> SageMakerSettings:
        """Triton's variables, as tritonserver reads them: ``SAGEMAKER_TRITON_PING_MODE`` ``live`` exactly, else
        readiness; ``SAGEMAKER_TRITON_INFERENCE_TYPE`` one of ``INFERENCE_TYPES`` (checked by ``check``)."""
        return cls(
            model=os.environ.get("SAGEMAKER_TRITON_DEFAULT_MODEL_NAME") or UNSPECIFIED,
            ping_live=os.environ.get("SAGEMAKER_TRITON_PING_MODE") == "live",
            inference_type=os.environ.get("SAGEMAKER_TRITON_INFERENCE_TYPE", "infer"),
        )

    def check(self) -> None:
        """Refuse an inference type Triton does not know, in its words, once the SageMaker port is served."""
        if self.inference_type not in INFERENCE_TYPES:
            raise InvalidRequest(
                f"SAGEMAKER_TRITON_INFERENCE_TYPE={self.inference_type!r}: Server has invalid inference type "
                f"'{self.inference_type}'. Must be one of: infer, generate, generate_stream."
            )


class SageMakerApp(HttpApp):
    """The SageMaker port's routes, over the HTTP port's connections, limits and data plane."""

    def __init__(self, plane: DataPlane, settings: SageMakerSettings, **options: Any) -> None:
        """``options``: the HTTP port's (``max_body_bytes``, ``access_log``, ``idle_timeout_s``, ...)."""
        super().__init__(plane, **{**options, "metrics": False})
        self.settings = settings
        self.models = MultiModels(plane)
        # Triton restricts the multi-model endpoints but invoke as its model repository API (--http-restricted-api)
        self._apis.update({h: "model-repository" for h in (self.list_models, self.get_model, self.load_model, self.unload_model)})

    def _route(self, method: bytes, path: str) -> tuple[Handler, list[str]] | Response:
        if path == "/ping":
            return (self.ping, []) if method in (b"GET", b"HEAD") else _not_allowed("/ping takes GET")
        if path == "/invocations":
            return (self.invocations, []) if method == b"POST" else _not_allowed("/invocations takes POST")
        found = _MODELS.fullmatch(path)
        if found is not None:  # SageMaker's multi-model endpoints, routed as Triton routes them
            # the name as loaded: percent-decoded (a name with a space loaded, and no request could reach it)
            name, invoke = unquote(found.group(1) or ""), bool(found.group(2))
            if method == b"GET":  # not HEAD: 400, as Triton's
                return (self.get_model, [name]) if name else (self.list_models, [])
            if method == b"POST":
                return (self.invoke, [name]) if invoke else (self.load_model, [])
            if method == b"DELETE":
                return self.unload_model, [name]
        return Response(400, b"", _TEXT)  # Triton's answer to any other path on this port

    # -- multi-model endpoints (sagemaker_models.py) ----------------------------------------------
    def list_models(self, req: Request, args: list[str]) -> Response:
        listed = [{"modelName": a.name, "modelUrl": str(a.repository)} for a in self.models.listed()]
        return Response(200, orjson.dumps({"models": listed}))

    def get_model(self, req: Request, args: list[str]) -> Response:
        archive = self.models.get(args[0])
        if archive is None or not self.plane.model_ready(archive.model, None):  # as the list (unloaded over v2)
            return Response(404, b"", _TEXT)
        return Response(200, orjson.dumps({"modelName": archive.name, "modelUrl": str(archive.repository)}))

    async def load_model(self, req: Request, args: list[str]) -> Response:
        try:
            doc = self._json_body(req)
            name, url = doc.get("model_name", ""), doc.get("url", "")
            for key, value in (("model_name", name), ("url", url)):
                if not isinstance(value, str):
                    raise InvalidRequest(f'"{key}" must be a string, not {quote(value)}')
            await self.models.load(name, url, _target(req))
        except PolystackError as e:
            return _refused(e)
        return Response(200, b"", _TEXT)

    async def unload_model(self, req: Request, args: list[str]) -> Response:
        if self.models.get(args[0]) is None:
            return Response(404, b"", _TEXT)
        try:
            await self.models.unload(args[0])
        except PolystackError as e:
            return _refused(e)
        return Response(200, b"", _TEXT)

    async def invoke(self, req: Request, args: list[str]) -> Response:
        archive = self.models.get(args[0])
        if archive is None:
            return Response(404, b"", _TEXT)
        log.debug("invoking a SageMaker model", extra={"model": archive.model, "sagemaker_name": archive.name})
        # its failures answered as /invocations' and the HTTP port's are (Triton's infer handler), not with the
        # statuses of loads: 507 for a model's out-of-memory while it ran made SageMaker unload other models, and 400
        # for a model unloaded over v2 (404 makes SageMaker load it again) told it the request was at fault
        return await self.invocations_of(req, archive.model)

    def ping(self, req: Request, args: list[str]) -> Response:
        ok = self.plane.live() if self.settings.ping_live else self.plane.ready()
        return Response(200 if ok else 400, b"", _TEXT)

    async def invocations(self, req: Request, args: list[str]) -> Response:
        kind = self.settings.inference_type
        if kind == "infer":
            try:
                return await self.invocations_of(req, self.settings.model)
            except NotFound as e:
                if self.settings.model == UNSPECIFIED:  # what to do is the container's, not the client's
                    e.framed("", "; set SAGEMAKER_TRITON_DEFAULT_MODEL_NAME to the model /invocations runs")
                raise
        if self.plane.draining:
            raise ShuttingDown("the server is shutting down; send the request to another instance (it was not run)")
        handler = self.generate if kind == "generate" else self.generate_stream
        return await handler(req, [self.settings.model, ""])

    async def invocations_of(self, req: Request, model: str) -> Response:
        if self.plane.draining:  # the port answers /ping (400) until the drain ends, and runs nothing new meanwhile
            raise ShuttingDown("the server is shutting down; send the request to another instance (it was not run)")
        return await self.infer_typed(req, model, "", BINARY)


def _target(req: Request) -> str | None:
    """The model SageMaker names in ``X-Amzn-SageMaker-Target-Model`` (its archive's key), if it does."""
    value = req.headers.get(b"x-amzn-sagemaker-target-model")
    return value.decode("utf-8", "replace") if value else None


def _refused(e: PolystackError) -> Response:
    """A multi-model endpoint's refusal of a load or unload, with Triton's statuses there: 409 for a name or folder
    loaded already, 507 for memory run out (SageMaker then unloads other models and tries again), 503 while the
    server drains, 400 otherwise."""
    if isinstance(e, ShuttingDown):
        code = 503
    else:
        code = 409 if isinstance(e, AlreadyExists) else 507 if out_of_memory(e.message) else 400
    return Response(code, orjson.dumps({"error": e.message}))


def _not_allowed(what: str) -> Response:
    return Response(405, orjson.dumps({"error": f"Method Not Allowed; {what}"}))  # JSON, labelled so
