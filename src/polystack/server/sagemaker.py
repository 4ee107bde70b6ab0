"""Triton's SageMaker front end (``tritonserver --allow-sagemaker true``): the port Amazon SageMaker's real-time
endpoints call, ``serve --allow-sagemaker true [--sagemaker-port 8080]``, as tritonserver 2.51 serves it
(helper-122 took the ground truth from the real server):

- ``GET /ping``: 200 while the server is ready (``SAGEMAKER_TRITON_PING_MODE=live``: while it is live), else 400;
  an empty body either way;
- ``POST /invocations``: an inference request of the model ``SAGEMAKER_TRITON_DEFAULT_MODEL_NAME`` names (unset:
  Triton's placeholder name, which no model has, so that requests say so), in the Open Inference Protocol's JSON,
  or with its binary tensors after a JSON header whose length the content type gives
  (``application/vnd.sagemaker-triton.binary+json;json-header-size=N``; ``N`` 0: the whole body is the model's one
  input, and every output goes back binary). An answer with binary outputs carries that content type with the
  length of its JSON header; refusals are the HTTP port's statuses and words. The body is read as it came, whatever
its content type (but SageMaker's) or encoding says, as Triton's port reads it. The port is plain HTTP (SageMaker calls
its containers so; Triton's has no TLS), and during a drain it answers ``/ping`` 400 and refuses new invocations
(503) until the drain ends.

Every other path is 400 with an empty body, as Triton answers it. SageMaker's multi-model endpoints (``/models``:
a repository loaded from a URL under a hash) are not served: 501 saying so. The port serves the same data plane
as the HTTP one (its models, statistics, metrics and traces).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import orjson

from polystack.errors import ShuttingDown
from polystack.server.dataplane import DataPlane
from polystack.server.http import Handler, HttpApp, Request, Response

BINARY = b"application/vnd.sagemaker-triton.binary+json;json-header-size="
UNSPECIFIED = "unspecified_SAGEMAKER_TRITON_DEFAULT_MODEL_NAME"  # Triton's name where the variable is unset
_TEXT = b"text/plain"


@dataclass(frozen=True)
class SageMakerSettings:
    """What the SageMaker port serves: the model behind ``/invocations``, and whether ``/ping`` asks for liveness
    rather than readiness."""

    model: str = UNSPECIFIED
    ping_live: bool = False

    @classmethod
    def from_environment(cls) -> SageMakerSettings:
        """Triton's variables, as tritonserver reads them: ``SAGEMAKER_TRITON_PING_MODE`` ``live`` exactly, else
        readiness."""
        return cls(
            model=os.environ.get("SAGEMAKER_TRITON_DEFAULT_MODEL_NAME") or UNSPECIFIED,
            ping_live=os.environ.get("SAGEMAKER_TRITON_PING_MODE") == "live",
        )


class SageMakerApp(HttpApp):
    """The SageMaker port's routes, over the HTTP port's connections, limits and data plane."""

    def __init__(self, plane: DataPlane, settings: SageMakerSettings, **options: Any) -> None:
        """``options``: the HTTP port's (``max_body_bytes``, ``access_log``, ``idle_timeout_s``, ...)."""
        super().__init__(plane, **{**options, "metrics": False})
        self.settings = settings

    def _route(self, method: bytes, path: str) -> tuple[Handler, list[str]] | Response:
        if path == "/ping":
            return (self.ping, []) if method in (b"GET", b"HEAD") else _not_allowed("/ping takes GET")
        if path == "/invocations":
            return (self.invocations, []) if method == b"POST" else _not_allowed("/invocations takes POST")
        if path == "/models" or path.startswith("/models/"):
            return Response(
                501,
                orjson.dumps({
                    "error": "SageMaker multi-model endpoints (/models) are not served by polystack: deploy one "
                    "model per endpoint (SAGEMAKER_TRITON_DEFAULT_MODEL_NAME), or load models through the model "
                    "repository extension on the HTTP port"
                }),
            )
        return Response(400, b"", _TEXT)  # Triton's answer to any other path on this port

    def ping(self, req: Request, args: list[str]) -> Response:
        ok = self.plane.live() if self.settings.ping_live else self.plane.ready()
        return Response(200 if ok else 400, b"", _TEXT)

    async def invocations(self, req: Request, args: list[str]) -> Response:
        if self.plane.draining:  # the port answers /ping (400) until the drain ends, and runs nothing new meanwhile
            raise ShuttingDown("the server is shutting down; send the request to another instance (it was not run)")
        return await self.infer_typed(req, self.settings.model, "", BINARY)


def _not_allowed(what: str) -> Response:
    return Response(405, orjson.dumps({"error": f"Method Not Allowed; {what}"}), _TEXT)
