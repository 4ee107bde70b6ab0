"""Triton's restricted APIs: groups of endpoints that answer only requests carrying a header (HTTP) or a
metadata key (gRPC) with a given value, the rest refused (``--http-restricted-api`` and
``--grpc-restricted-protocol``, as tritonserver spells them: ``API[,API...]:KEY=VALUE``, once per group).

An API left out of every group stays open. A request for a restricted one without the key, or with another
value, is refused in Triton's words: HTTP 403, gRPC UNAVAILABLE (``Restricted``, ``status.py``). Which API an
endpoint belongs to is Triton's grouping: model readiness is ``health``, GET config is ``model-config``,
stream inference is ``inference``, and so on.
"""

from __future__ import annotations

import hmac
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

from polystack.errors import InvalidRequest, Restricted

APIS = (
    "health",
    "metadata",
    "inference",
    "shared-memory",
    "model-config",
    "model-repository",
    "statistics",
    "trace",
    "logging",
)

# the gRPC methods of each API (Triton's grpc_server.cc groups them so), by their names in the services
GRPC_METHODS: Mapping[str, str] = {
    "ServerLive": "health",
    "ServerReady": "health",
    "ModelReady": "health",
    "Check": "health",  # grpc.health.v1.Health
    "Watch": "health",
    "ServerMetadata": "metadata",
    "ModelMetadata": "metadata",
    "ModelInfer": "inference",
    "ModelStreamInfer": "inference",
    "ModelConfig": "model-config",
    "ModelStatistics": "statistics",
    "RepositoryIndex": "model-repository",
    "RepositoryModelLoad": "model-repository",
    "RepositoryModelUnload": "model-repository",
    "SystemSharedMemoryStatus": "shared-memory",
    "SystemSharedMemoryRegister": "shared-memory",
    "SystemSharedMemoryUnregister": "shared-memory",
    "CudaSharedMemoryStatus": "shared-memory",
    "CudaSharedMemoryRegister": "shared-memory",
    "CudaSharedMemoryUnregister": "shared-memory",
    "TraceSetting": "trace",
    "LogSettings": "logging",
}


@dataclass(frozen=True)
class Restrictions:
    """The restricted APIs of one protocol: API -> (key, value) a request must carry. ``what`` is Triton's
    word in its refusal: "API" (HTTP) or "protocol" (gRPC)."""

    keys: Mapping[str, tuple[str, str]] = field(default_factory=dict)
    what: str = "API"

    def __bool__(self) -> bool:
        return bool(self.keys)

    def check(self, api: str, header: Callable[[str], str | None]) -> None:
        """Refuse (``Restricted``) a request for ``api`` whose ``header(key)`` is not the value it needs."""
        needed = self.keys.get(api)
        if needed is None:
            return
        key, value = needed
        given = header(key)
        # the value without the white space around it (RFC 9110 5.5: not part of a field's value), compared in
        # constant time (helper-268: a trailing space refused the right key; a plain != tells how much matched)
        if given is None or not hmac.compare_digest(_bytes(given.strip(" \t")), _bytes(value)):
            raise Restricted(
                f"This {self.what} is restricted, expecting header '{key}'; send it with the value the server "
                "was started with"
            )


# the prefix of the metadata key a gRPC call carries for a restricted protocol (Triton's
# kRestrictedProtocolHeaderTemplate): --grpc-restricted-protocol inference:infer-key=v wants triton-grpc-protocol-infer-key
GRPC_KEY_PREFIX = "triton-grpc-protocol-"


def parse(values: Sequence[str], flag: str) -> Restrictions:
    """Restrictions from the flag's values, each ``API[,API...]:KEY=VALUE`` (split at the first ``:`` and the
    first ``=`` after it, so that a value may hold either, as Triton's ParseGenericConfigOption splits them);
    InvalidRequest (exit 2) naming the flag for a value of another form or with an empty part, an unknown
    API, or one in two groups, in Triton's words."""
    grpc = flag == "--grpc-restricted-protocol"
    what = "protocol" if grpc else "API"
    keys: dict[str, tuple[str, str]] = {}
    for given in values:
        apis, colon, pair = given.partition(":")
        key, equals, value = pair.partition("=")
        if not colon or not equals or not apis or not key or not value:
            raise InvalidRequest(
                f"{flag} option format is '<config name>:<setting>=<value>'. Got {given}; give "
                f"API[,API...]:KEY=VALUE, say inference,metadata:infer-key=secret, with the APIs of {', '.join(APIS)}"
            )
        for api in apis.split(","):
            if api not in APIS:
                raise InvalidRequest(
                    f"{flag}: unknown restricted {what.lower()} '{api}'; the {what}s are {', '.join(APIS)}"
                )
            if api in keys:
                raise InvalidRequest(
                    f"{flag}: restricted {what.lower()} '{api}' can not be specified in multiple config groups; "
                    "name it once"
                )
            # HTTP header names are case-insensitive, and gRPC metadata keys lower case: compared lower case
            keys[api] = ((GRPC_KEY_PREFIX if grpc else "") + key.lower(), value)
    return Restrictions(keys, what)


def _bytes(text: str) -> bytes:
    """``text`` as the bytes it was (a header's or a command line's value, decoded with surrogate escapes)."""
    return text.encode("utf-8", "surrogateescape")
