"""The HTTP body codec: JSON and binary tensors in both directions, and clear errors for bad bodies."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest

from polystack.errors import InvalidRequest, InvalidTensor
from polystack.protocol import http_codec
from polystack.protocol.wire import InferResponse, ShmRef, decode_bytes, encode_bytes, from_raw
from polystack.types import DType


def binary_body(inputs: list[tuple[str, str, list[int], bytes]], **extra: object) -> tuple[bytes, int]:
    head = json.dumps(
        {
            "inputs": [
                {"name": n, "datatype": d, "shape": s, "parameters": {"binary_data_size": len(b)}}
                for n, d, s, b in inputs
            ],
            **extra,
        }
    ).encode()
    return head + b"".join(b for *_, b in inputs), len(head)


def test_binary_and_json_inputs_mix() -> None:
    x = np.arange(6, dtype=np.float32).reshape(2, 3)
    s = np.array([b"a", b"", b"xyz"], dtype=object)
    body, n = binary_body([("x", "FP32", [2, 3], x.tobytes()), ("s", "BYTES", [3], encode_bytes(s))], id="7")
    req = http_codec.decode_infer_request(body, n)
    np.testing.assert_array_equal(req.inputs["x"], x)
    np.testing.assert_array_equal(req.inputs["s"], s)
    assert req.id == "7" and req.outputs is None
    req = http_codec.decode_infer_request(
        json.dumps({"inputs": [{"name": "b", "datatype": "BOOL", "shape": [2], "data": [True, False]}]}).encode()
    )
    assert req.inputs["b"].dtype == np.bool_ and req.inputs["b"].tolist() == [True, False]


def test_nested_json_data_is_row_major() -> None:
    req = http_codec.decode_infer_request(
        json.dumps({"inputs": [{"name": "x", "datatype": "INT64", "shape": [2, 2], "data": [[1, 2], [3, 4]]}]}).encode()
    )
    assert req.inputs["x"].tolist() == [[1, 2], [3, 4]]


@pytest.mark.parametrize("nested", [False, True])
def test_json_arrays_past_simdjsons_16_million_count_are_read_whole(nested: bool) -> None:
    # helper-154: pysimdjson counts an array's items in 24 bits (len() stops at 16,777,215) and its as_list writes
    # past the list it made for that many: 20 million values crashed the server (free(): invalid size), and a
    # check of the count made 16,777,216 flat values a 400
    n = (1 << 24) + 3
    values = b",".join([b"1"] * (n - 1) + [b"2"])
    data = b"[[" + values + b"]]" if nested else b"[" + values + b"]"
    body = b'{"inputs": [{"name": "x", "datatype": "INT64", "shape": [1, %d], "data": %s}]}' % (n, data)
    x = http_codec.decode_infer_request(body).inputs["x"]
    assert x.shape == (1, n) and x[0, 0] == 1 and x[0, -1] == 2 and int(x.sum()) == n + 1


@pytest.mark.parametrize(("datatype", "leaf"), [("INT64", 7), ("FP32", 0.5), ("BOOL", True), ("BYTES", "s")])
def test_json_data_of_any_depth_is_read_by_its_leaves_and_uneven_rows_are_refused(datatype: str, leaf: object) -> None:
    # helper-153: numbers nested past numpy's 64 dimensions were refused in numpy's words, where BYTES were read
    # (tritonserver reads the leaves in order, however deep); and BYTES rows of uneven lengths were read, where
    # numbers' are refused (rows of 15 and 17 values are no [2, 16] tensor)
    deep: object = [leaf, leaf, leaf]
    for _ in range(70):
        deep = [deep]
    doc = {"inputs": [{"name": "x", "datatype": datatype, "shape": [3], "data": deep}]}
    want = leaf.encode() if isinstance(leaf, str) else leaf
    assert http_codec.decode_infer_request(json.dumps(doc).encode()).inputs["x"].tolist() == [want] * 3
    for ragged in ([[leaf, leaf], [leaf]], [leaf, [leaf, leaf]]):
        doc = {"inputs": [{"name": "x", "datatype": datatype, "shape": [3], "data": ragged}]}
        with pytest.raises(InvalidTensor, match="its nested lists are of uneven lengths"):
            http_codec.decode_infer_request(json.dumps(doc).encode())


@pytest.mark.parametrize("datatype", ["FP32", "INT8", "UINT16"])
def test_nested_rows_of_numbers_read_in_c_are_what_flat_data_gives_and_refused_alike(datatype: str) -> None:
    """Rows of numbers are read by as_buffer and numpy (4x slower than flat data, read one by one, before): the same
    tensor as flat data; a list hidden among a row's numbers, a number of another kind, or one out of range is refused
    as before."""
    values = np.arange(24).reshape(2, 3, 4)

    def decode(data: object) -> np.ndarray:
        doc = {"inputs": [{"name": "x", "datatype": datatype, "shape": [2, 3, 4], "data": data}]}
        return http_codec.decode_infer_request(json.dumps(doc).encode()).inputs["x"]

    nested, flat = decode(values.tolist()), decode(values.reshape(-1).tolist())
    assert nested.dtype == flat.dtype and nested.tolist() == flat.tolist() == values.tolist()
    rows = values.reshape(6, 4).tolist()
    hidden = [[*row[:3], [row[3]]] for row in rows]  # as many leaves, one of them a list
    with pytest.raises(InvalidTensor, match="uneven lengths"):
        decode([[[], *rows[0][1:]], *rows[1:]] if datatype == "FP32" else hidden)
    with pytest.raises(InvalidTensor, match="must hold"):
        decode([[True, *rows[0][1:]], *rows[1:]])
    if datatype != "FP32":
        with pytest.raises(InvalidTensor, match="does not fit datatype"):
            decode([[-1 if datatype == "UINT16" else 300, *rows[0][1:]], *rows[1:]])


@pytest.mark.parametrize(
    ("raw", "words"),
    [
        (b"\x05\x00\x00\x00abc", "claims 5 bytes"),
        (b"\x01\x00", "length prefix"),
        # Triton's words (its core's, as tritonserver 2.51 answers them over HTTP and gRPC), then polystack's
        (b"\x01\x00\x00\x00a", r"^expected 2 string elements for inference input 's' for model 'm', got 1: .*needs 2"),
        (b"\x01\x00\x00\x00a\x01\x00\x00\x00b\x01\x00\x00\x00c\x00\x00\x00\x00",  # Triton counts to the first too many
         r"^unexpected number of string elements 3 for inference input 's' for model 'm', expecting 2: .*holds 4"),
    ],
)
def test_bad_bytes_tensors_are_refused(raw: bytes, words: str) -> None:
    with pytest.raises(InvalidTensor, match=words):
        decode_bytes("s", (2,), raw, "m")


def test_json_bytes_of_another_count_than_the_shape_are_refused_in_tritons_words() -> None:
    for data, words in ((["a"], "expected 2 string elements for inference input 'IN' for model 'm', got 1; "),
                        (["a", "b", "c", "d"], "unexpected number of string elements 3 for inference input 'IN' for "
                                          "model 'm', expecting 2; ")):  # fmt: skip
        body = json.dumps({"inputs": [{"name": "IN", "datatype": "BYTES", "shape": [2], "data": data}]}).encode()
        with pytest.raises(InvalidTensor, match=f"^{re.escape(words)}"):
            http_codec.decode_infer_request(body, model="m")


@pytest.mark.parametrize(
    ("item", "words"),
    [
        ({"datatype": "FP32", "data": [1.0]}, "input 'x' has no 'shape': give its dimensions as a list of integers"),
        ({"datatype": "FP32", "shape": "1", "data": [1.0]}, "'shape' must be a list of integers, not a string"),
        ({"datatype": "FP32", "shape": {"a": 1}, "data": [1.0]}, "not an object"),
        ({"datatype": "BYTES", "shape": [1], "data": [None]}, "BYTES data must be strings, not null"),
        ({"datatype": "BYTES", "shape": [1], "data": [{}]}, "BYTES data must be strings, not an object"),
    ],
)
def test_a_value_of_the_wrong_kind_is_named_in_jsons_words(item: dict, words: str) -> None:
    """helper-282: such refusals named Python's types (``got NoneType``, ``got dict``) to a JSON client."""
    body = json.dumps({"inputs": [{"name": "x", **item}]}).encode()
    with pytest.raises(InvalidTensor, match=re.escape(words)):
        http_codec.decode_infer_request(body)


def test_raw_tensor_must_match_shape_times_itemsize() -> None:
    with pytest.raises(InvalidTensor, match="needs 24 bytes"):
        from_raw("x", DType.FP64, (3,), b"\0" * 16)
    # Triton's words first, with the model's name where the request's is known
    words = r"^input byte size mismatch for input 'x' for model 'm'\. Expected 24, got 16: "
    with pytest.raises(InvalidTensor, match=words):
        from_raw("x", DType.FP64, (3,), b"\0" * 16, "m")
    assert from_raw("x", DType.FP16, (2,), b"\0" * 4).dtype == np.float16


def test_bool_data_must_be_booleans() -> None:
    body = json.dumps({"inputs": [{"name": "b", "datatype": "BOOL", "shape": [2], "data": [1, 0]}]}).encode()
    with pytest.raises(InvalidTensor, match="true/false"):
        http_codec.decode_infer_request(body)


def test_binary_size_without_binary_section_is_refused() -> None:
    body, _ = binary_body([("x", "FP32", [1], b"\0" * 4)])
    with pytest.raises(InvalidRequest, match="no Inference-Header-Content-Length"):
        http_codec.decode_infer_request(body[: body.index(b"}]}") + 3])


def test_response_binary_and_json() -> None:
    out = {"y": np.array([[1.5, 2.5]], np.float32), "s": np.array([b"hi", "ü".encode()], dtype=object)}
    resp = InferResponse("m", "1", out, id="r")
    body, n = _joined(*http_codec.encode_infer_response(resp, {"y": True}, default_binary=False))
    assert n is not None
    head = json.loads(body[:n])
    assert head["id"] == "r" and head["outputs"][0]["parameters"] == {"binary_data_size": 8}
    assert head["outputs"][1]["data"] == ["hi", "ü"]
    assert np.frombuffer(body[n:], np.float32).tolist() == [1.5, 2.5]
    body, n = _joined(*http_codec.encode_infer_response(resp, {}, default_binary=False))
    assert n is None and json.loads(body)["outputs"][0]["data"] == [1.5, 2.5]


def _joined(head: bytes, blobs: list[bytes | memoryview]) -> tuple[bytes, int | None]:
    """The body as sent, and the JSON header's length when binary outputs follow it."""
    return b"".join([head, *blobs]), (len(head) if blobs else None)


def json_body(datatype: str, shape: list[int], data: object) -> bytes:
    return json.dumps({"inputs": [{"name": "x", "datatype": datatype, "shape": shape, "data": data}]}).encode()


@pytest.mark.parametrize(
    ("datatype", "data", "want"),
    [
        ("FP32", [[1, 2.5], [-3e-3, 4]], np.array([[1, 2.5], [-3e-3, 4]], np.float32)),
        ("FP64", [0.1, 1e300], np.array([0.1, 1e300])),
        ("INT64", [2**62 + 1, -(2**63)], np.array([2**62 + 1, -(2**63)], np.int64)),
        ("UINT64", [2**64 - 1, 0], np.array([2**64 - 1, 0], np.uint64)),
        ("INT8", [-128, 127], np.array([-128, 127], np.int8)),
        ("FP16", [0.5, 2], np.array([0.5, 2], np.float16)),
    ],
)
def test_json_numbers_keep_their_exact_values(datatype: str, data: list, want: np.ndarray) -> None:
    got = http_codec.decode_infer_request(json_body(datatype, list(want.shape), data)).inputs["x"]
    assert got.dtype == want.dtype and got.shape == want.shape
    np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize(
    ("datatype", "data", "words"),
    [
        ("INT8", [1, 300], "outside -128..127"),
        ("UINT8", [-1, 2], "does not fit datatype UINT8"),
        ("INT32", [1.5, 2], "INT32 data must hold integers only, not 1.5"),
        ("FP32", [1, "2"], "FP32 data must hold numbers only, not '2'"),
        ("INT32", [1, None], "integers only, not None"),
        ("FP64", [True, 1.0], "numbers only, not True"),
        # the same words however numpy would have failed: out of its range, or read as a float past 64 bits
        ("UINT64", [-1, 2], "values run from -1 to 2, outside 0..18446744073709551615"),
        ("INT64", [2**63, 0], r"values run from 0 to 9223372036854775808, outside -9223372036854775808\.\."),
        ("UINT64", [2**64, 1], "a value of about 1.845e\\+19 is past the 64-bit integers"),
        ("INT64", [-(2**63) - 1, 1], "about -9.223e\\+18 is past the 64-bit integers"),  # not rounded to -2**63
        ("INT64", [float("inf"), 1], "INT64 data must hold integers only, not inf"),
    ],
)
def test_json_numbers_of_the_wrong_kind_are_refused(datatype: str, data: list, words: str) -> None:
    with pytest.raises(InvalidTensor, match=words):
        http_codec.decode_infer_request(json_body(datatype, [2], data))


@pytest.mark.parametrize("datatype", ["FP16", "BF16", "FP32", "FP64"])
def test_a_null_among_floating_point_json_values_is_nan_as_kserve_reads_it(datatype: str) -> None:
    """KServe's REST client writes NaN and the infinities as null (orjson; JSON spells none of them), and KServe's
    server reads null as NaN: it was refused, "numbers only, not None" (helper-267)."""
    got = http_codec.decode_infer_request(json_body(datatype, [3], [1.5, None, 2])).inputs["x"]
    assert got.shape == (3,) and np.isnan(got.astype(np.float32)[1])
    np.testing.assert_array_equal(got.astype(np.float32)[[0, 2]], [1.5, 2.0])


def test_json_integers_over_64_bits_still_parse_and_are_checked() -> None:
    # simdjson refuses them; the body falls back to orjson, which reads them.
    req = http_codec.decode_infer_request(json_body("FP64", [1], [10**30]))
    assert req.inputs["x"].tolist() == [1e30]
    with pytest.raises(InvalidTensor, match="INT64"):
        http_codec.decode_infer_request(json_body("INT64", [1], [10**30]))


def test_a_header_length_that_cuts_the_json_is_named_as_what_may_be_wrong() -> None:
    # a client counting the JSON part in characters: "café" is five bytes, four characters
    x = {"name": "x", "datatype": "FP32", "shape": [4], "parameters": {"binary_data_size": 16}}
    doc = {"id": "café", "inputs": [x]}
    head = json.dumps(doc, ensure_ascii=False).encode()
    body, n = head + np.arange(4, dtype=np.float32).tobytes(), len(head)
    assert len(head.decode()) == n - 1
    for length in (n - 1, n + 1, len(body)):
        with pytest.raises(InvalidRequest) as refused:
            http_codec.decode_infer_request(body, length)
        said = refused.value.message
        assert said.startswith("the request body is not valid JSON (") and "; send a JSON object" not in said
        assert f"in the body's first {length:,} bytes, its JSON part as the Inference-Header-Content-Length " in said
        assert "count the bytes of the JSON part as sent (UTF-8, not characters)" in said
    assert http_codec.decode_infer_request(body, n).id == "café"
    # JSON alone (no header): the words it always had
    with pytest.raises(InvalidRequest, match=r"not valid JSON \(.*\); send a JSON object$"):
        http_codec.decode_infer_request(b'{"inputs": [')


def test_a_request_refused_as_its_body_is_read_carries_the_id_it_gave() -> None:
    short = {"id": "short-1", "inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 4], "data": [1.0, 2.0]}]}
    with pytest.raises(InvalidTensor) as refused:
        http_codec.decode_infer_request(json.dumps(short).encode())
    assert refused.value.request_id == "short-1"
    body, n = binary_body([("x", "FP32", [4], bytes(8))], id="bin-1", parameters={"binary_data_output": "yes"})
    with pytest.raises(InvalidRequest) as refused:
        http_codec.decode_infer_request(body, n)
    assert refused.value.request_id == "bin-1"
    for rid in ("", 7, None):  # none given, or one that is not a string: none
        doc = {**short, "id": rid}
        with pytest.raises(InvalidRequest) as refused:
            http_codec.decode_infer_request(json.dumps(doc).encode())
        assert refused.value.request_id is None


def test_a_large_body_and_then_a_small_one_both_decode() -> None:
    big = np.arange(300_000, dtype=np.float32)  # over 1 MiB of JSON: a parser of its own
    req = http_codec.decode_infer_request(json_body("FP32", [300_000], big.tolist()))
    np.testing.assert_array_equal(req.inputs["x"], big)
    with pytest.raises(InvalidRequest, match="not valid JSON"):
        http_codec.decode_infer_request(b'{"inputs": [')
    assert http_codec.decode_infer_request(json_body("FP32", [1], [7])).inputs["x"].tolist() == [7.0]


def test_headers_without_a_literal_data_key_decode_the_same() -> None:
    # Such headers skip simdjson (binary tensors only, or a "data" key written with an escape):
    # the result, and every check on it, is the same as through simdjson.
    x = np.arange(6, dtype=np.float32).reshape(2, 3)
    body, n = binary_body([("x", "FP32", [2, 3], x.tobytes())], outputs=[{"name": "y"}], id="a")
    req = http_codec.decode_infer_request(body, n)
    np.testing.assert_array_equal(req.inputs["x"], x)
    assert req.id == "a" and req.output_names == ["y"]
    escaped = b'{"inputs": [{"name": "x", "datatype": "INT32", "shape": [2], "\\u0064ata": [1, 2]}]}'
    req = http_codec.decode_infer_request(escaped)
    assert req.inputs["x"].dtype == np.int32 and req.inputs["x"].tolist() == [1, 2]
    with pytest.raises(InvalidTensor, match="INT8"):
        http_codec.decode_infer_request(escaped.replace(b"INT32", b"INT8").replace(b"[1, 2]", b"[1, 999]"))
    with pytest.raises(InvalidRequest, match="not valid JSON"):
        http_codec.decode_infer_request(b'{"inputs": [{"name": "x"')


def test_a_key_given_twice_takes_its_last_value_whichever_parser_reads_the_body() -> None:
    # simdjson's lookup took the first value and orjson the last: the same body meant two requests
    body = (
        b'{"id": "first", "inputs": [{"name": "x", "datatype": "INT32", "shape": [2], "data": [1, 2]}], '
        b'"id": "second", "inputs": [{"name": "x", "datatype": "INT8", "datatype": "INT32", "shape": [1], '
        b'"shape": [3], "data": [9], "data": [3, 4, 5]}], "parameters": {"timeout": "x"}, "parameters": {}}'
    )
    escaped = body.replace(b'"data"', b'"\\u0064ata"')  # no literal "data" key: orjson reads it
    for text in (body, escaped):
        req = http_codec.decode_infer_request(text)
        assert req.id == "second" and req.parameters == {}
        assert req.inputs["x"].dtype == np.int32 and req.inputs["x"].tolist() == [3, 4, 5]


class _Regions:
    """A RegionReader over one in-memory region, recording what was read."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.reads: list[ShmRef] = []

    def read(self, ref: ShmRef, what: str) -> bytes:
        self.reads.append(ref)
        return self.data[ref.offset : ref.offset + ref.byte_size]


def test_shared_memory_parameters_name_where_a_tensor_lies() -> None:
    x = np.arange(4, dtype=np.float32).reshape(1, 4)
    regions = _Regions(b"\0" * 8 + x.tobytes())
    shm = {"shared_memory_region": "r", "shared_memory_byte_size": 16, "shared_memory_offset": 8}
    body = json.dumps(
        {"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 4], "parameters": shm}],
         "outputs": [{"name": "y", "parameters": {"shared_memory_region": "o", "shared_memory_byte_size": 64}}]}
    ).encode()  # fmt: skip
    req = http_codec.decode_infer_request(body, None, regions)
    np.testing.assert_array_equal(req.inputs["x"], x)
    assert regions.reads == [ShmRef("r", 16, 8)]
    assert req.outputs is not None and req.outputs[0].shm == ShmRef("o", 64, 0)


@pytest.mark.parametrize(
    ("params", "says"),
    [
        # tritonserver 2.51's words (helper-116)
        ({"shared_memory_region": "r"}, "'shared_memory_byte_size' must be specified along with 'shared_memory_region'"),
        # an HTTP input's shared memory parameters count where a region is named: without one it has no data
        ({"shared_memory_byte_size": 16}, "Input must set only one of the following fields: .* But no field is set"),
        ({"shared_memory_region": 5, "shared_memory_byte_size": 16}, "'shared_memory_region' parameter for tensor 'x', expected string_param"),
        ({"shared_memory_region": "r", "shared_memory_byte_size": -1}, "Invalid offset \\+ byte size for shared memory region: 'r'"),
        ({"shared_memory_region": "r", "shared_memory_byte_size": 16, "shared_memory_offset": True}, "expected int64_param"),
        ({"shared_memory_region": "r", "shared_memory_byte_size": 16, "shared_memory_offset": -4}, "Invalid offset for shared memory region: 'r'"),
        ({"shared_memory_region": "r", "shared_memory_byte_size": 16, "binary_data_size": 16},
         "Input must set only one of the following fields: .* But set 'binary_data_size' 'shared_memory_region'"),
    ],
)  # fmt: skip
def test_bad_shared_memory_parameters_say_what_is_wrong(params: dict[str, object], says: str) -> None:
    body = json.dumps({"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 4], "parameters": params}]})
    with pytest.raises(InvalidRequest, match=says):
        http_codec.decode_infer_request(body.encode(), None, _Regions(b"\0" * 16))


def test_a_shared_memory_input_whose_byte_size_does_not_fit_its_shape_is_refused_before_it_is_read() -> None:
    # the whole byte size was read first: a sparse object of a gigabyte named for a 16-byte tensor took the memory
    regions = _Regions(b"")
    shm = {"shared_memory_region": "r", "shared_memory_byte_size": 1 << 30}
    body = json.dumps({"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 4], "parameters": shm}]})
    with pytest.raises(InvalidTensor, match="needs 16 bytes but 1,073,741,824 were sent"):
        http_codec.decode_infer_request(body.encode(), None, regions)
    assert regions.reads == []


def test_shared_memory_tensors_are_refused_without_regions() -> None:
    shm = {"shared_memory_region": "r", "shared_memory_byte_size": 16}
    body = json.dumps({"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 4], "parameters": shm}]})
    with pytest.raises(InvalidRequest, match="--allow-shared-memory"):
        http_codec.decode_infer_request(body.encode())


def test_classes_into_shared_memory_are_refused() -> None:
    outputs = [{"name": "y", "parameters": {"classification": 2, "shared_memory_region": "o",
                                            "shared_memory_byte_size": 64}}]  # fmt: skip
    body = json.dumps({"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 1], "data": [1.0]}], "outputs": outputs})
    with pytest.raises(InvalidRequest, match="Output can't set both 'shared_memory_region' and 'classification'"):
        http_codec.decode_infer_request(body.encode(), None, _Regions(b""))


def test_an_output_asked_for_twice_is_answered_once_as_first_asked() -> None:
    """Refused once; tritonserver 2.51 answers the output once (helper-106, -107)."""
    outputs = [{"name": "y"}, {"name": "z"}, {"name": "y", "parameters": {"binary_data": True}}]
    body = json.dumps({"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 1], "data": [1.0]}], "outputs": outputs})
    req = http_codec.decode_infer_request(body.encode())
    assert [(o.name, o.binary) for o in req.outputs or []] == [("y", False), ("z", False)]


def _config(dims: list[int], data_type: str = "TYPE_FP32", max_batch_size: int = 0, inputs: int = 1) -> dict:
    spec = [{"name": f"in{i}" if i else "INPUT0", "data_type": data_type, "dims": dims} for i in range(inputs)]
    return {"max_batch_size": max_batch_size, "input": spec}


def test_a_raw_request_is_the_one_inputs_data_shaped_as_tritons_core_deduces_it() -> None:
    """Triton's raw binary request (Inference-Header-Content-Length: 0): a batch of 1 where the model batches,
    the config's dims, one variable-sized dim sized to the body; every output back binary."""
    x = np.arange(8, dtype=np.float32)
    batched = http_codec.decode_raw_request(x.tobytes(), "m", _config([8], max_batch_size=4))
    np.testing.assert_array_equal(batched.inputs["INPUT0"], x.reshape(1, 8))
    assert batched.outputs is None and batched.parameters == {"binary_data_output": True}
    variable = http_codec.decode_raw_request(x.tobytes(), "m", _config([-1, 4]))
    np.testing.assert_array_equal(variable.inputs["INPUT0"], x.reshape(2, 4))
    text = http_codec.decode_raw_request(b"\x00raw bytes", "m", _config([1], "TYPE_STRING", max_batch_size=8))
    assert text.inputs["INPUT0"].shape == (1, 1) and text.inputs["INPUT0"][0, 0] == b"\x00raw bytes"


@pytest.mark.parametrize(
    ("config", "body", "words"),
    [
        (_config([8], inputs=3), b"\0" * 32, "Raw request must only have 1 input (found 1) to be deduced but got 3 inputs in 'm' model configuration"),
        (_config([-1, -1]), b"\0" * 32, "The shape of the raw input 'INPUT0' can not be deduced because there are more than one variable-sized dimension"),
        (_config([2], "TYPE_STRING"), b"ab", "For BYTE datatype raw input 'INPUT0', the model must have input shape [1]"),
        (_config([8]), b"\0" * 31, "INPUT0"),  # not the 32 bytes 8 FP32 take
        (_config([-1, 4]), b"\0" * 20, "the body's 20 bytes are not a whole number of FP32 tensors of shape [-1, 4]"),
    ],
)  # fmt: skip
def test_a_raw_request_that_cannot_be_deduced_is_refused_in_tritons_words(config: dict, body: bytes, words: str) -> None:
    with pytest.raises((InvalidRequest, InvalidTensor)) as refused:
        http_codec.decode_raw_request(body, "m", config)
    assert words in refused.value.message, refused.value.message


@pytest.mark.parametrize("dtype", [np.float32, np.float16])
def test_float_outputs_are_written_as_the_float64_each_value_is(dtype: type) -> None:
    """As tritonserver 2.51 writes them (helper-106): 1.1 in float32 is 1.100000023841858, which a JSON
    reader's float64 holds exactly; the shortest float32 text, 1.1, read as float64 is another number."""
    y = np.array([[1.1, -3.3, 1e-3]], dtype)
    head, _ = http_codec.encode_infer_response(InferResponse("m", "1", {"y": y}), {}, False)
    data = json.loads(head)["outputs"][0]["data"]
    assert data == [float(v) for v in y.ravel()]  # float() of a float32/16: the exact value, as float64
    if dtype is np.float32:
        assert b"1.100000023841858" in head


def test_an_empty_request_id_is_no_id() -> None:
    """Triton leaves an empty id out of its answer (tritonserver 2.51, helper-106); polystack echoed ""."""
    body = json.dumps({"id": "", "inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 1], "data": [1.0]}]})
    req = http_codec.decode_infer_request(body.encode())
    assert req.id is None
    head, _ = http_codec.encode_infer_response(InferResponse("m", "1", {"y": np.ones((1, 1), np.float32)}, id=req.id), {}, False)
    assert "id" not in json.loads(head)


def test_an_output_into_shared_memory_cannot_also_be_binary() -> None:
    """tritonserver 2.51 refuses it in these words (helper-116); polystack wrote the region and ignored binary_data."""
    outputs = [{"name": "y", "parameters": {"binary_data": True, "shared_memory_region": "o",
                                            "shared_memory_byte_size": 64}}]  # fmt: skip
    body = json.dumps({"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 1], "data": [1.0]}], "outputs": outputs})
    with pytest.raises(InvalidRequest, match="Output can't set both 'shared_memory_region' and 'binary_data'"):
        http_codec.decode_infer_request(body.encode(), None, _Regions(b""))


def test_shared_memory_parameters_of_an_output_without_a_region_are_left_unread() -> None:
    """tritonserver 2.51's HTTP front end answers such an output in the response (helper-116); polystack refused it."""
    body = json.dumps({"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 1], "data": [1.0]}],
                       "outputs": [{"name": "y", "parameters": {"shared_memory_byte_size": 64}}]})  # fmt: skip
    req = http_codec.decode_infer_request(body.encode(), None, None)
    assert req.outputs is not None and req.outputs[0].shm is None


def test_bytes_that_are_not_utf8_are_refused_in_json_saying_to_ask_for_binary_data() -> None:
    """helper-165 (Triton's L0_string_io): polystack wrote U+FFFD in their place, a 200 with the data changed;
    tritonserver writes the raw bytes, which tritonclient refuses to read ("Please use binary_data=True")."""
    arr = np.array([b"ok", b"\xfa\xff"], dtype=object)
    response = InferResponse("m", "1", {"s": arr})
    with pytest.raises(InvalidTensor, match=r"output 's' holds bytes that are not UTF-8 text \(element 1\).*binary_data=True"):
        http_codec.encode_infer_response(response, {}, False)
    head, blobs = http_codec.encode_infer_response(response, {"s": True}, False)  # binary carries them as they are
    assert json.loads(head)["outputs"][0]["parameters"]["binary_data_size"] == len(b"".join(blobs))
    assert http_codec.json_data(np.array([b"caf\xc3\xa9"], dtype=object), DType.BYTES) == ["café"]


@pytest.mark.parametrize(
    ("params", "says"),
    [
        ({"sequence_id": True}, "Unable to parse 'sequence_id': attempt to access JSON non-string as string"),
        ({"sequence_id": 1.5}, "'sequence_id' parameter is 1.5; give a whole number or a string"),
        ({"sequence_id": [1]}, "'sequence_id' parameter is [1]"),
        ({"sequence_id": None}, "'sequence_id' parameter is null"),
        ({"sequence_id": -1}, "'sequence_id' -1 is not an unsigned 64-bit integer"),
        ({"sequence_start": "yes"}, "Unable to parse 'sequence_start': attempt to access JSON non-boolean as boolean"),
        ({"sequence_end": 1}, "'sequence_end' parameter is 1; give true or false"),
    ],
)
def test_sequence_parameters_of_the_wrong_type_are_refused_whatever_the_model(params: dict, says: str) -> None:
    """Triton's HTTP front end reads them for every request, sequence model or not (helper-232: a model without
    sequence batching was handed ``True`` as its correlation ID)."""
    doc = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [1], "data": [1.0]}], "parameters": params}
    with pytest.raises(InvalidRequest, match=re.escape(says)):
        http_codec.decode_infer_request(json.dumps(doc).encode())
    fine = {"sequence_id": "s", "sequence_start": True, "sequence_end": False}
    assert http_codec.decode_infer_request(json.dumps({**doc, "parameters": fine}).encode()).parameters == fine
