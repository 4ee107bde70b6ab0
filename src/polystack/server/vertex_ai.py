"""Triton's Vertex AI front end (``tritonserver --allow-vertex-ai true``): the port Google Cloud's Vertex AI prediction
endpoints call, ``serve --allow-vertex-ai true`` (on by itself where ``AIP_MODE=PREDICTION``), as tritonserver 2.51
serves it:

- the health route (``AIP_HEALTH_ROUTE``, a regular expression the whole path must match): ``GET`` answers 200
  while the server is ready, else 400, with an empty body;
- the predict route (``AIP_PREDICT_ROUTE``): ``POST`` is an inference request of the default model
  (``--vertex-ai-default-model``, else the one model served), in the Open Inference Protocol's JSON, or with binary
  tensors after a JSON part whose length the content type gives
  (``application/vnd.vertex-ai-triton.binary+json;json-header-size=N``); an answer with binary outputs is the
  binary extension's (``application/octet-stream`` and ``Inference-Header-Content-Length``), as Triton's is;
- the predict route with ``X-Vertex-Ai-Triton-Redirect: <path>``: the protocol's endpoint at ``/<path>``, as the
  HTTP port answers it (Vertex AI sends POST alone: ``v2/models/m/infer`` is an inference request of ``m``, read as
  above; ``v2``, ``v2/health/ready``, ``v2/models/m[/versions/v][/ready|/config|/stats]``, ``v2/models/stats`` and
  ``metrics`` are their GETs; system shared memory and the model repository extension, when the server allows them,
  their own methods).

Every other path is 400 with an empty body, as Triton answers it; a method other than the route's is 405. A redirect
is held to the HTTP port's ``--http-restricted-api`` (Triton's skips it). The routes are Python regular expressions
(Triton's are RE2: the common ones read the same). The port is plain HTTP, on the HTTP address, and serves the same
data plane as the HTTP one.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import orjson

from polystack.errors import InvalidRequest, ShuttingDown
from polystack.server.dataplane import DataPlane
from polystack.server.http import Handler, HttpApp, Request, Response

BINARY = b"application/vnd.vertex-ai-triton.binary+json;json-header-size="
REDIRECT = b"x-vertex-ai-triton-redirect"
_TEXT = b"text/plain"
# the endpoints a redirect reaches, as Triton's Vertex AI server dispatches them
_REDIRECTED = re.compile(
    r"/metrics|/v2|/v2/health/(live|ready)|/v2/models/stats"
    r"|/v2/models/[^/]+(/versions/[0-9]+)?(/(ready|infer|config|stats))?"
    r"|/v2/(system|cuda)sharedmemory(/region/[^/]+)?/(status|register|unregister)"
    r"|/v2/repository(/[^/]+)?/(index|models/[^/]+/(load|unload))"
)
# the endpoints reached with POST (the others with GET, as Triton's redirect sets the method)
_POSTED = re.compile(
    r"/v2/models/[^/]+(/versions/[0-9]+)?/infer|/v2/(system|cuda)sharedmemory(/region/[^/]+)?/(register|unregister)"
    r"|/v2/repository(/[^/]+)?/(index|models/[^/]+/(load|unload))"
)


@dataclass(frozen=True)
class VertexAiSettings:
    """What the Vertex AI port serves: its two routes (whole-path regular expressions), and the default model as
    given (empty: the one model served)."""

    predict: re.Pattern[str]
    health: re.Pattern[str]
    model: str = ""

    @classmethod
    def from_environment(cls, model: str) -> VertexAiSettings:
        """The routes Vertex AI gives the container (``AIP_PREDICT_ROUTE``, ``AIP_HEALTH_ROUTE``), refused in Triton's
        words where it refuses them."""
        routes = []
        for variable, triton_name in (("AIP_PREDICT_ROUTE", "API_PREDICT_ROUTE"), ("AIP_HEALTH_ROUTE", "AIP_HEALTH_ROUTE")):
            value = os.environ.get(variable, "")
            if not value:
                raise InvalidRequest(
                    f"{triton_name} is not defined for Vertex AI endpoint; set {variable} (Vertex AI sets it in its "
                    "containers, e.g. /v1/endpoints/1/deployedModels/2:predict)"
                )
            try:
                routes.append(re.compile(value))
            except re.error as e:
                raise InvalidRequest(f"{variable}={value!r} is not a regular expression: {e}") from None
        return cls(routes[0], routes[1], model)

    def default_model(self, served: Sequence[str]) -> str:
        """The model behind the predict route, once the models are loaded, refused in Triton's words."""
        if not self.model:
            if len(served) != 1:
                raise InvalidRequest(
                    "Expect the model repository contains only a single model if default model is not specified; "
                    f"give --vertex-ai-default-model (served: {', '.join(served) or 'none'})"
                )
            return served[0]
        if self.model not in served:
            raise InvalidRequest(f"Expect the default model '{self.model}' is loaded; serve it, or name another")
        return self.model


class VertexAiApp(HttpApp):
    """The Vertex AI port's routes, over the HTTP port's connections, limits, handlers and data plane."""

    def __init__(self, plane: DataPlane, settings: VertexAiSettings, **options: Any) -> None:
        """``options``: the HTTP port's (``max_body_bytes``, ``restricted``, ``metrics``, ...)."""
        super().__init__(plane, **options)
        self.settings = settings
        self.model = settings.model  # the default model: settled at start, once the models are loaded

    def resolve(self, req: Request) -> tuple[Handler, list[str]] | Response:
        """By the routes Vertex AI gave, and for a redirect by its header: not cached by path, as the HTTP port's
        routes are (one path leads to many endpoints)."""
        path = req.path
        if self.settings.health.fullmatch(path):
            return (self.health, []) if req.method in (b"GET", b"HEAD") else _not_allowed("the health route takes GET")
        if not self.settings.predict.fullmatch(path):
            return Response(400, b"", _TEXT)  # Triton's answer to any other path on this port
        if req.method != b"POST":
            return _not_allowed("the predict route takes POST")
        target = req.headers.get(REDIRECT)
        if target is None:
            return self.predict, []
        redirected = "/" + target.decode("latin-1").strip()
        if not _REDIRECTED.fullmatch(redirected):
            return Response(400, b"", _TEXT)
        req.path = redirected  # what the access log names
        # the HTTP port's route, and its API's restriction (--http-restricted-api), which Triton's redirect skips
        routed = self.restrict(req, self.route(b"POST" if _POSTED.fullmatch(redirected) else b"GET", redirected))
        if not isinstance(routed, Response) and routed[0] == self.infer:
            return self.redirected_infer, routed[1]  # read as this port reads an inference request
        return routed

    def health(self, req: Request, args: list[str]) -> Response:
        return Response(200 if self.plane.ready() else 400, b"", _TEXT)

    async def predict(self, req: Request, args: list[str]) -> Response:
        return await self._infer(req, self.model, "")

    async def redirected_infer(self, req: Request, args: list[str]) -> Response:
        return await self._infer(req, args[0], args[1])

    async def _infer(self, req: Request, name: str, version: str) -> Response:
        if self.plane.draining:  # the health route answers 400 until the drain ends, and nothing new runs meanwhile
            raise ShuttingDown("the server is shutting down; send the request to another instance (it was not run)")
        return await self.infer_typed(req, name, version, BINARY, answer_typed=False)


def _not_allowed(what: str) -> Response:
    return Response(405, orjson.dumps({"error": f"Method Not Allowed; {what}"}))  # JSON, labelled so
