"""Large gRPC inference messages read and written around their raw tensors: the same messages as protobuf's, without
its copies of the tensors."""

from __future__ import annotations

import numpy as np
import pytest
from google.protobuf.message import DecodeError

from polystack.protocol import grpc_codec, grpc_raw
from polystack.protocol.grpc_gen import inference_pb2 as pb
from polystack.protocol.wire import InferResponse

BIG = grpc_raw.VIEW_FROM_BYTES


def _request(sizes: list[int]) -> pb.ModelInferRequest:
    m = pb.ModelInferRequest(model_name="m", model_version="2", id="r1")
    m.parameters["priority"].int64_param = 3
    m.parameters["note"].string_param = "x" * 300  # a length-delimited field of its own beside the tensors'
    for k, n in enumerate(sizes):
        t = m.inputs.add(name=f"in{k}", datatype="UINT8", shape=[n])
        t.parameters["p"].bool_param = True
        m.raw_input_contents.append(bytes([k + 1]) * n)
    m.outputs.add(name="out")
    return m


def test_a_large_requests_raw_tensors_are_views_of_the_bytes_received_and_its_other_fields_are_protobufs() -> None:
    message = _request([BIG, 5, 0, 70_000])
    data = message.SerializeToString()
    read = grpc_raw.parse_infer_request(data)
    assert isinstance(read, grpc_raw.ViewedRequest)
    assert [bytes(r) for r in read.raw_input_contents] == list(message.raw_input_contents)
    assert all(r.obj is data for r in read.raw_input_contents)  # views, not copies
    whole = pb.ModelInferRequest.FromString(data)
    for field in ("model_name", "model_version", "id", "parameters", "inputs", "outputs"):
        assert getattr(read, field) == getattr(whole, field), field
    assert read.ByteSize() == whole.ByteSize()
    read.release()
    assert read.raw_input_contents == []


def test_a_small_request_is_protobufs_own_message() -> None:
    data = _request([16]).SerializeToString()
    assert type(grpc_raw.parse_infer_request(data)) is pb.ModelInferRequest


def test_fields_in_any_order_unknown_fields_and_a_scalar_sent_twice_read_as_protobuf_reads_them() -> None:
    raw = b"\x3a" + grpc_raw._encode_varint(BIG) + b"\x07" * BIG  # field 7 first
    unknown = b"\xa0\x06\x05" + b"\xaa\x06\x03abc" + b"\xad\x06\x01\x02\x03\x04" + b"\xa9\x06" + b"\x00" * 8  # 100
    data = raw + b"\x0a\x01a" + unknown + b"\x0a\x01b" + b"\x1a\x02id"  # model_name "a", then "b": the last wins
    read = grpc_raw.parse_infer_request(data)
    whole = pb.ModelInferRequest.FromString(data)
    assert isinstance(read, grpc_raw.ViewedRequest)
    assert (read.model_name, read.id) == (whole.model_name, whole.id) == ("b", "id")
    assert [bytes(r) for r in read.raw_input_contents] == list(whole.raw_input_contents)
    assert read.ByteSize() == whole.ByteSize()


@pytest.mark.parametrize(
    "tail",
    [
        b"\x3a\xff\xff\xff\x0f",  # a tensor longer than what is left
        b"\x0a",  # a field cut before its length
        b"\x0b\x00",  # a group (wire type 3)
        b"\x0a\x05ab",  # a string longer than what is left
        b"\x80" * 11,  # a varint that never ends
    ],
)
def test_a_malformed_large_request_is_refused_in_protobufs_words(tail: bytes) -> None:
    data = _request([BIG]).SerializeToString() + tail
    with pytest.raises(DecodeError):
        pb.ModelInferRequest.FromString(data)
    with pytest.raises(DecodeError):
        grpc_raw.parse_infer_request(data)


def test_a_large_unary_answer_is_written_byte_for_byte_as_protobuf_writes_it_without_copying_its_outputs() -> None:
    x = np.arange(BIG // 4 + 10, dtype=np.float32).reshape(2, -1)
    names = np.array([b"a", b"bc"], dtype=object)
    response = InferResponse("m", "1", {"y": x, "n": names, "s": np.ones(3, np.int64)}, id="r", parameters=(("k", 1),))
    viewed = grpc_codec.encode_unary_response(response)
    assert isinstance(viewed, grpc_raw.ViewedResponse)
    assert isinstance(viewed.raw[0], memoryview) and np.shares_memory(np.asarray(viewed.raw[0]), x)
    whole = grpc_codec.encode_infer_response(response)
    assert grpc_raw.serialize_infer_response(viewed) == whole.SerializeToString()
    small = InferResponse("m", "1", {"s": np.ones(3, np.int64)})
    assert type(grpc_codec.encode_unary_response(small)) is pb.ModelInferResponse
    assert grpc_raw.serialize_infer_response(grpc_codec.encode_infer_response(small)) == (
        grpc_codec.encode_infer_response(small).SerializeToString()
    )


def test_an_answer_with_an_output_in_shared_memory_keeps_its_empty_place() -> None:
    x = np.zeros(BIG, np.uint8)
    response = InferResponse("m", "1", {"a": x, "b": x[:8]}, in_shared_memory=frozenset({"a"}))
    viewed = grpc_codec.encode_unary_response(response)
    assert grpc_raw.serialize_infer_response(viewed) == grpc_codec.encode_infer_response(response).SerializeToString()
