"""Headers forwarded as request parameters (tritonserver's ``--http-header-forward-pattern`` and
``--grpc-header-forward-pattern``): a request's headers (gRPC: its metadata) whose names the pattern matches become
string parameters of the request, which a Python model reads in ``request.parameters()``.

As in Triton, the pattern matches anywhere in the name (a search, not a full match) and ignores case unless it
starts with ``(?-i)``; a header named as a parameter Triton reserves for itself is refused, since it would change
how the server runs the request."""

from __future__ import annotations

import re
from collections.abc import Iterable

from polystack.errors import InvalidRequest, quote
from polystack.protocol.wire import InferRequest

# the parameters Triton reserves (its extension_parameters.md): a client sets them through its own fields
RESERVED = frozenset({
    "sequence_id", "sequence_start", "sequence_end", "priority", "timeout", "headers", "binary_data_output",
    "triton_enable_empty_final_response", "triton_final_response", "triton_injected_via_header",
})  # fmt: skip


class HeaderForward:
    def __init__(self, pattern: str, flag: str) -> None:
        self.flag = flag
        sensitive = pattern.startswith("(?-i)")  # RE2's: case matters from here on (Python's re has no such flag)
        try:
            self.regex = re.compile(pattern[5:] if sensitive else pattern, 0 if sensitive else re.IGNORECASE)
        except re.error as e:
            raise InvalidRequest(f"{flag} {quote(pattern)} is not a regular expression ({e}); give one") from None

    def apply(self, request: InferRequest, headers: Iterable[tuple[str, str]]) -> InferRequest:
        """``request`` with the matching headers among its parameters (a header's value over the body's, as
        Triton sets it after them); a reserved name is refused."""
        for name, value in headers:
            if not self.regex.search(name):
                continue
            if name.lower() in RESERVED:
                raise InvalidRequest(
                    f"header {quote(name)} is forwarded as a request parameter ({self.flag}), but parameter "
                    f"{quote(name.lower())} is reserved for Triton usage; rename the header, or narrow the pattern"
                )
            request.parameters[name] = value
        return request
