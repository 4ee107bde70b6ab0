"""The ONE table from polystack errors to HTTP statuses and gRPC codes.

Every transport maps errors here and nowhere else. The lookup walks the error's class hierarchy,
so a subclass (ModelNotFound) takes its parent's entry (NotFound) unless it has its own. Anything
that is not a PolystackError is an internal error (500 / INTERNAL) and its message is not leaked.
"""

from __future__ import annotations

import asyncio

import grpc

from polystack import errors as E

TABLE: dict[type[E.PolystackError], tuple[int, grpc.StatusCode]] = {
    E.InvalidRequest: (400, grpc.StatusCode.INVALID_ARGUMENT),
    E.AlreadyExists: (400, grpc.StatusCode.ALREADY_EXISTS),  # Triton's HTTP front end answers it 400
    E.NotFound: (404, grpc.StatusCode.NOT_FOUND),
    E.Conflict: (409, grpc.StatusCode.FAILED_PRECONDITION),
    E.PermissionDenied: (403, grpc.StatusCode.PERMISSION_DENIED),
    E.Restricted: (403, grpc.StatusCode.UNAVAILABLE),  # Triton's restricted APIs: 403, and UNAVAILABLE over gRPC
    E.PayloadTooLarge: (413, grpc.StatusCode.RESOURCE_EXHAUSTED),
    E.UnsupportedMediaType: (415, grpc.StatusCode.INVALID_ARGUMENT),
    E.Unsupported: (501, grpc.StatusCode.UNIMPLEMENTED),  # Triton's HTTP front end answers UNSUPPORTED 501
    E.Unavailable: (503, grpc.StatusCode.UNAVAILABLE),
    # Triton's code for a load whose model it could not poll, a shared memory key it cannot open, ...
    E.InternalRefusal: (500, grpc.StatusCode.INTERNAL),
    # Triton's words and code for a request whose queue timeout passed ("Request timeout expired")
    E.DeadlineExceeded: (503, grpc.StatusCode.UNAVAILABLE),
    # Triton's code for a request cancelled with its sequence (its HTTP front end answers CANCELLED 400)
    E.Cancelled: (400, grpc.StatusCode.CANCELLED),
    # a Python model's TritonError.UNKNOWN, as tritonserver 2.51 answers it (its HTTP codes put UNKNOWN with 400s)
    E.UnknownError: (400, grpc.StatusCode.UNKNOWN),
    E.BackendError: (500, grpc.StatusCode.INTERNAL),
    E.PolystackError: (500, grpc.StatusCode.INTERNAL),
}

INTERNAL_MESSAGE = "internal server error; the server log has the details"


def _entry(exc: BaseException) -> tuple[int, grpc.StatusCode] | None:
    for cls in type(exc).__mro__:
        hit = TABLE.get(cls)
        if hit is not None:
            return hit
    return None


def http_status(exc: BaseException) -> int:
    hit = _entry(exc)
    return hit[0] if hit else 500


def grpc_code(exc: BaseException) -> grpc.StatusCode:
    hit = _entry(exc)
    return hit[1] if hit else grpc.StatusCode.INTERNAL


def message(exc: BaseException) -> str:
    """What the client is told: the polystack message, or a generic line for anything unexpected."""
    return exc.message if isinstance(exc, E.PolystackError) else INTERNAL_MESSAGE


GRPC_DETAILS_BYTES = 1024


def grpc_details(text: str) -> str:
    """``text`` cut to fit a gRPC status: grpc-message travels percent-encoded in the trailers, whose
    hard limit (16 KiB) a message echoing a 20,000-character model name would break, and the client
    would then see RESOURCE_EXHAUSTED "Stream removed" instead of the error."""
    raw = text.encode()
    if len(raw) <= GRPC_DETAILS_BYTES:
        return text
    return raw[: GRPC_DETAILS_BYTES - 40].decode(errors="ignore") + f" ... ({len(raw):,} bytes, cut)"


def reason(exc: BaseException) -> str:
    """A short label for metrics: the error's class name (``QueueFull``), or ``Internal``."""
    if isinstance(exc, E.PolystackError):
        return type(exc).__name__
    return "Cancelled" if isinstance(exc, asyncio.CancelledError) else "Internal"
