"""Every error polystack raises, in one hierarchy with no transport imports.

    PolystackError                      anything polystack raises on purpose
    ├── InvalidRequest                  the caller sent something wrong            (HTTP 400, INVALID_ARGUMENT)
    │   ├── InvalidTensor               wrong input name, datatype, shape or data
    │   │   └── RuntimeRefused          values the runtime refused in its run (Triton's metrics: BACKEND)
    │   ├── InvalidName                 a model name with path characters, empty, too long
    │   ├── InvalidModelFile            not the claimed format, truncated, unreadable
    │   ├── UnsafeModel                 refused for safety: pickle, external data outside its folder
    │   ├── UnsupportedFormat           no importer recognises the file
    │   ├── AlreadyExists               a name already taken (Triton's ALREADY_EXISTS: HTTP 400, ALREADY_EXISTS)
    │   ├── NotUnique                   a model folder in two or more repositories
    │   └── StepNotServed               an ensemble step's model that no folder holds
    ├── NotFound                        names something that does not exist        (HTTP 404, NOT_FOUND)
    │   ├── ModelNotFound
    │   ├── VersionNotFound
    │   └── VariantNotFound
    ├── Conflict                        clashes with the current state             (HTTP 409, FAILED_PRECONDITION)
    ├── PermissionDenied                turned off or not allowed                  (HTTP 403, PERMISSION_DENIED)
    ├── PayloadTooLarge                 a request body over the limit              (HTTP 413, RESOURCE_EXHAUSTED)
    ├── UnsupportedMediaType            a content type the server does not speak   (HTTP 415, INVALID_ARGUMENT)
    ├── Unavailable                     try again later                            (HTTP 503, UNAVAILABLE)
    │   ├── ModelNotReady
    │   ├── QueueFull
    │   ├── ShuttingDown                refused because the server drains (not logged as its failure)
    │   ├── ModelControlOff             a load or unload where model control is off or polls (nor this)
    │   └── BackendUnavailable          the runtime is not installed or offers no such device
    ├── InternalRefusal                 a caller's mistake Triton answers INTERNAL (HTTP 500, INTERNAL: Triton's)
    │   └── PollFailed                  a load of nothing readable by that name
    ├── DeadlineExceeded                a request waited past its timeout          (HTTP 503, UNAVAILABLE: Triton's)
    ├── Cancelled                       ended by another's cancellation (its sequence's) (HTTP 400, CANCELLED)
    └── BackendError                    the runtime failed on valid input          (HTTP 500, INTERNAL)
        └── StoreError                  the model store is damaged or unwritable

The mapping to HTTP and gRPC codes lives in ``polystack.server.status``, and only there.
Messages say what was wrong and what to do next.
"""

from __future__ import annotations

from typing import ClassVar, Self


class PolystackError(Exception):
    """Base of every error polystack raises on purpose."""

    # False: a refusal that is the server working as it was set up (a drain, poll mode), which a 5xx status
    # alone would have logged as the server's failure
    server_failure: ClassVar[bool] = True
    # True: raised in a request's run (the runtime failed or refused its values, it timed out in its queue, its
    # answer could not be written), not a refusal before it; Triton reports those in the response, and a gRPC
    # stream asking for triton_grpc_error ends there (``failed_in_run`` marks an error of another kind)
    in_run: bool = False
    # a model's load that failed: the version it failed at, where one did (the repository index lists it so)
    failed_version: int | None = None
    # a load that failed before its model was read (its folder's config unreadable, the folder in two
    # repositories): Triton's poll of it fails then, and its strict readiness does not count the model
    unread: bool = False
    # the TritonError code of a Python model's own error response (None: polystack's error): a model calling it
    # (BLS) gets its words and code as they are, as newer Tritons hand them on
    model_code: int | None = None
    # the ``id`` the refused inference request gave, where it was refused while its body was read (before a request
    # existed to carry it): the request's lines in the log carry it
    request_id: str | None = None

    def of_request(self, request_id: object) -> Self:
        """This error, refusing the inference request whose ``id`` was ``request_id`` (a string; else none)."""
        if isinstance(request_id, str) and request_id:
            self.request_id = request_id
        return self

    def failed_in_run(self) -> Self:
        """This error, marked as raised in a request's run."""
        self.in_run = True
        return self

    def at_version(self, version: int | None) -> Self:
        """This error, marked as failing the load of ``version`` (the first version it is marked with stays)."""
        if self.failed_version is None:
            self.failed_version = version
        return self

    def before_model_read(self) -> Self:
        """This error, marked as failing a load before its model was read (``unread``)."""
        self.unread = True
        return self

    @property
    def message(self) -> str:
        return str(self.args[0]) if self.args else self.__class__.__name__

    def prefixed(self, context: str) -> PolystackError:
        """This error, its message led by ``context`` (what was being done): the same error, whatever its
        type, so that it keeps its status on every transport."""
        return self.framed(f"{context}: ")

    def framed(self, lead: str, tail: str = "") -> PolystackError:
        """This error, its message between ``lead`` and ``tail`` (where another server's words put the context
        first without a colon): the same error, as ``prefixed``."""
        self.args = (f"{lead}{self.message}{tail}", *self.args[1:])
        return self


class InvalidRequest(PolystackError):
    pass


class InvalidTensor(InvalidRequest):
    pass


class RuntimeRefused(InvalidTensor):
    """Values the runtime refused as it ran them (ONNX Runtime's InvalidArgument, an index out of range): the
    caller's to fix, so a 400, but a failure in the run, which Triton's backends report and its metrics count as
    ``BACKEND`` (helper-115)."""

    in_run = True


class InvalidName(InvalidRequest):
    pass


class InvalidModelFile(InvalidRequest):
    pass


class UnsafeModel(InvalidRequest):
    pass


class UnsupportedFormat(InvalidRequest):
    pass


class AlreadyExists(InvalidRequest):
    """A name already taken, say a shared memory region's: Triton answers ALREADY_EXISTS (HTTP 400)."""


class NotUnique(InvalidRequest):
    """A model folder in two or more repositories: its load fails before its model is read (Triton's poll fails)."""

    unread = True
    TRITON = "model appears in two or more repositories"  # Triton's words, the repository index's reason


class StepNotServed(InvalidRequest):
    """An ensemble's step whose model no repository folder holds: Triton's load of the ensemble fails after reading
    it (400, "load failed", not a failed poll), and its strict readiness does not count the ensemble."""

    unread = True


class NotFound(PolystackError):
    pass


class ModelNotFound(NotFound):
    pass


class VersionNotFound(NotFound):
    pass


class VariantNotFound(NotFound):
    pass


class Conflict(PolystackError):
    pass


class PermissionDenied(PolystackError):
    pass


class Restricted(PolystackError):
    """A request for an API the server restricts (``--http-restricted-api``) without the header it needs:
    Triton answers HTTP 403, gRPC UNAVAILABLE."""

    server_failure = False


class PayloadTooLarge(PolystackError):
    pass


class UnsupportedMediaType(PolystackError):
    pass


class Unsupported(PolystackError):
    """A request for something the protocol has and polystack does not do (Triton's UNSUPPORTED: HTTP 501)."""

    server_failure = False


class Unavailable(PolystackError):
    pass


class ModelNotReady(Unavailable):
    pass


class ModelClosed(Unavailable):
    """A request reached a model instance after it was unloaded or replaced (its batcher or runtime closed)."""


class QueueFull(Unavailable):
    pass


class ShuttingDown(Unavailable):
    """Refused because the server drains: what a drain is for, so not logged as a failure of the server."""

    server_failure = False


class ModelControlOff(Unavailable):
    """A load or unload refused because the server was started without explicit model control (Triton's
    default and its poll mode answer UNAVAILABLE): how it was started, not its failure."""

    server_failure = False


class BackendUnavailable(Unavailable):
    pass


class InternalRefusal(PolystackError):
    """A caller's mistake that Triton answers INTERNAL (HTTP 500), answered with its code for the clients that
    read it (a shared memory key that does not exist, an output region too small): not the server's failure."""

    server_failure = False


class PollFailed(InternalRefusal):
    """A load of a name that no repository or store holds, or whose model could not be read (its config
    unreadable, its folder in two repositories, file: parameters without their config): Triton's "failed to
    poll from model repository", which it answers INTERNAL (HTTP 500)."""

    unread = True


class DeadlineExceeded(PolystackError):
    in_run = True


class Cancelled(PolystackError):
    """A request that will not run because another was cancelled: a sequence ends with its cancelled request,
    as Triton's sequence batcher ends it."""


class BackendError(PolystackError):
    in_run = True


class StoreError(BackendError):
    pass


class UnknownError(BackendError):
    """A failure a model gave as Triton's UNKNOWN (``TritonError.UNKNOWN``): HTTP 400, as Triton's, and UNKNOWN
    over gRPC."""


_QUOTED_DEPTH = 100  # lists and dicts nested deeper are not shown, whatever Python's recursion limit is now


def quote(value: object, limit: int = 80) -> str:
    """``value`` as an error message quotes it: its repr, cut short, since it may come from a client."""
    if _deeper(value, _QUOTED_DEPTH):
        return f"<a {type(value).__name__} nested too deep to show>"
    try:
        text = repr(value)
    except RecursionError:  # other containers, nested deeper than repr goes
        return f"<a {type(value).__name__} nested too deep to show>"
    return text if len(text) <= limit else text[: limit - 3] + "..."


def load_failed(name: str, e: PolystackError) -> PolystackError:
    """``e``, a refused load of model ``name`` (at start, or a load request's own body), led by what was being
    done (``load_failed_words``): the same error, whatever its type, wherever it was raised."""
    e.args = (load_failed_words(name, e.message), *e.args[1:])
    return e


def load_failed_words(name: str, message: str) -> str:
    """``message``, of a refused load of model ``name``, led by ``failed to load NAME``; one that says so already
    (Triton's words for a load whose folder could not be read) as it is."""
    lead = f"failed to load {quote(name, 140)}"  # a URL's name may be 64 KiB; the store's <= 128
    return message if message.startswith(lead) else f"{lead}: {message}"


def _deeper(value: object, depth: int) -> bool:
    """Whether JSON-like ``value`` nests lists and dicts deeper than ``depth`` (without recursion: torch's compiler
    raises the process's limit, and repr would then show what it refused before)."""
    level = [value]
    for _ in range(depth + 1):
        level = [
            v
            for item in level
            if isinstance(item, (list, dict))
            for v in (item.values() if isinstance(item, dict) else item)
        ]
        if not level:
            return False
    return True
