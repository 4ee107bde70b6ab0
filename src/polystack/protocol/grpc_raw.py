"""Large gRPC inference messages read and written around their raw tensors, not through protobuf's copies.

protobuf's Python messages (upb) copy a ``bytes`` field at parse time and again at every access: a 400 MiB
``raw_input_contents`` entry took 0.3 s to parse and 0.3 s more each time it was read, all of it holding the
GIL, so every other request of the server (HTTP's too) waited a second and the request peaked at ~4.7x its
size (helper-274). A ``ModelInferRequest`` of ``VIEW_FROM_BYTES`` or more is read here instead: its top-level
fields are walked (a few varints; the tensors' bytes are not touched), the raw tensors kept as views of the
bytes grpc handed over, and the rest (names, shapes, parameters: small) parsed by protobuf as ever. What
protobuf would refuse is left to it: a message this walk cannot read is parsed whole, and protobuf's error is
the one the caller sees. A unary call's ``ModelInferResponse`` of as many bytes is written the same way: the
message without its raw outputs serialized by protobuf, the outputs' own buffers appended as field 6, joined
once (protobuf copied each into the message, then again to serialize it).

Written by hand: protobuf has no zero-copy access to a bytes field from Python.
"""

from __future__ import annotations

from typing import Any

from polystack.protocol.grpc_gen import inference_pb2 as pb

VIEW_FROM_BYTES = 256 * 1024
_RAW_INPUT_KEY = (7 << 3) | 2  # ModelInferRequest.raw_input_contents: field 7, length-delimited
_RAW_OUTPUT_TAG = bytes([(6 << 3) | 2])  # ModelInferResponse.raw_output_contents: field 6, length-delimited


class ViewedRequest:
    """A ``ModelInferRequest`` whose ``raw_input_contents`` are views of the bytes received (no copy); every other
    field is its message's."""

    __slots__ = ("_message", "raw_input_contents")

    def __init__(self, message: pb.ModelInferRequest, raw: list[memoryview]) -> None:
        self._message = message
        self.raw_input_contents = raw

    def __getattr__(self, name: str) -> Any:
        return getattr(self._message, name)

    def ByteSize(self) -> int:  # protobuf's name
        raw = sum(1 + len(_encode_varint(len(r))) + len(r) for r in self.raw_input_contents)  # tag, length, bytes
        return int(self._message.ByteSize()) + raw

    def release(self) -> None:
        """Let go of the raw tensors (once read: the arrays read from them hold what they need), so that the
        bytes received can be freed when the request's run is done, not once its answer is sent (grpc holds the
        request until then)."""
        self.raw_input_contents = []


class ViewedResponse:
    """A ``ModelInferResponse`` (``message``) and its ``raw_output_contents`` (``raw``), kept as the outputs' own
    buffers until ``serialize_infer_response`` writes them."""

    __slots__ = ("message", "raw")

    def __init__(self, message: pb.ModelInferResponse, raw: list[bytes | memoryview]) -> None:
        self.message = message
        self.raw = raw


def serialize_infer_response(response: pb.ModelInferResponse | ViewedResponse) -> bytes:
    """The wire form of ``response``: protobuf's, with a viewed one's raw outputs appended as field 6."""
    if not isinstance(response, ViewedResponse):
        return bytes(response.SerializeToString())
    parts: list[bytes | memoryview] = [response.message.SerializeToString()]
    for raw in response.raw:
        parts += (_RAW_OUTPUT_TAG, _encode_varint(len(raw)), raw)
    return b"".join(parts)


def _encode_varint(value: int) -> bytes:
    out = bytearray()
    while value >= 0x80:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def parse_infer_request(data: bytes) -> pb.ModelInferRequest | ViewedRequest:
    """``data`` as a ``ModelInferRequest``: a large one's raw tensors as views of ``data``."""
    if len(data) >= VIEW_FROM_BYTES:
        split = _split(data, _RAW_INPUT_KEY)
        if split is not None:
            rest, raw = split
            return ViewedRequest(pb.ModelInferRequest.FromString(rest), raw)
    return pb.ModelInferRequest.FromString(data)


def _split(data: bytes, key: int) -> tuple[bytes, list[memoryview]] | None:
    """The top-level fields of ``data`` other than ``key``'s, as bytes of the same wire format, and ``key``'s
    values as views of ``data``, in order; None where ``data`` is no well-formed message (protobuf says why)."""
    view = memoryview(data)
    n = len(data)
    rest: list[memoryview] = []
    found: list[memoryview] = []
    i = 0
    try:
        while i < n:
            start = i
            tag, i = _varint(data, i)
            wire = tag & 7
            if wire == 0:
                _, i = _varint(data, i)
            elif wire == 1:
                i += 8
            elif wire == 2:
                length, i = _varint(data, i)
                if tag == key:
                    if i + length > n:
                        return None
                    found.append(view[i : i + length])
                    i += length
                    continue
                i += length
            elif wire == 5:
                i += 4
            else:  # groups, or no wire type at all
                return None
            if i > n:
                return None
            rest.append(view[start:i])
    except IndexError:
        return None
    return b"".join(rest), found


def _varint(data: bytes, i: int) -> tuple[int, int]:
    """The base-128 varint at ``data[i]``, and the index after it (IndexError: it runs past the end, or past the
    ten bytes a 64-bit value takes)."""
    value = shift = 0
    while True:
        b = data[i]
        i += 1
        value |= (b & 0x7F) << shift
        if b < 0x80:
            return value, i
        shift += 7
        if shift >= 70:
            raise IndexError("varint too long")
