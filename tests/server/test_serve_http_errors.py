"""Every bad HTTP request gets a clear 4xx with {"error": ...}, and the server keeps serving."""

from __future__ import annotations

import contextlib
import email.utils
import gzip
import json
import socket
import struct
import threading
import time

import numpy as np
import pytest
import tritonclient.http as httpclient
from conftest import MAX_BODY, Raw
from servekit import register_like, start, until
from tritonclient.utils import InferenceServerException

from polystack.server.app import ServerThread
from polystack.store import ModelRecord, Store

INFER = "/v2/models/mlp/infer"


def good_input(**over: object) -> dict:
    return {"name": "x", "datatype": "FP32", "shape": [1, 16], "data": [0.0] * 16, **over}


def check_error(raw: Raw, status: int, doc: object, want_status: int, *words: str) -> None:
    assert status == want_status, doc
    assert isinstance(doc, dict) and set(doc) == {"error"}, doc
    for w in words:
        assert w in doc["error"], doc["error"]
    raw.infer_ok()


@pytest.mark.parametrize(
    ("body", "words"),
    [
        (b"{not json", ["not valid JSON"]),
        (b"[" * 10_000 + b"]" * 10_000, ["not valid JSON"]),
        (b'{"inputs": ' + b'{"a": ' * 10_000 + b"1" + b"}" * 10_001, ["not valid JSON"]),
        (b"[1, 2]", ["JSON object"]),
        (b'{"inputs": []}', ["expected 1 inputs but got 0 inputs for model 'mlp'"]),
        (b"", ["not valid JSON"]),
    ],
    ids=["invalid", "nested-10000-lists", "nested-10000-objects", "not-an-object", "no-inputs", "empty"],
)
def test_malformed_json_is_400(raw: Raw, body: bytes, words: list[str]) -> None:
    status, _, data = raw.request("POST", INFER, body, {"Content-Type": "application/json"})
    check_error(raw, status, json.loads(data), 400, *words)


@pytest.mark.parametrize(
    ("doc", "words"),
    [
        ({"inputs": [good_input(parameters=[1, 2])]}, ["input 'x'", "'parameters' must be an object"]),
        ({"inputs": [good_input(parameters="x")]}, ["'parameters' must be an object"]),
        ({"inputs": [good_input()], "outputs": [{"name": "y", "parameters": "abc"}]}, ["output 'y'", "object"]),
        ({"inputs": [good_input()], "parameters": {"binary_data_output": "false"}}, ["binary_data_output", "'false'"]),
        ({"inputs": [good_input()], "outputs": [{"name": "y", "parameters": {"binary_data": "false"}}]},
         ["binary_data", "true or false"]),
        ({"inputs": [good_input()], "outputs": [{"name": "y", "parameters": {"binary_data": 1}}]}, ["binary_data"]),
        ({"inputs": [good_input()], "parameters": {"timeout": "soon"}}, ["timeout", "microseconds"]),
        ({"inputs": [good_input()], "parameters": {"timeout": -5}}, ["timeout"]),
        ({"inputs": [good_input()], "parameters": {"timeout": 1500.5}}, ["Unable to parse 'timeout'", "integer"]),
        ({"inputs": [good_input()], "parameters": {"timeout": 1e6}}, ["Unable to parse 'timeout'", "integer"]),
        ({"inputs": [good_input()], "parameters": {"timeout": 2**64}}, ["Unable to parse 'timeout'"]),
        ({"inputs": [good_input()], "parameters": {"priority": "high"}}, ["Unable to parse 'priority'", "integer"]),
        ({"inputs": [good_input()], "parameters": {"priority": -1}}, ["Unable to parse 'priority'"]),
        # null is refused as Triton refuses it (helper-114: it was taken as absent)
        ({"inputs": [good_input()], "parameters": {"timeout": None}}, ["Unable to parse 'timeout': null"]),
        ({"inputs": [good_input()], "parameters": {"priority": None}}, ["Unable to parse 'priority': null"]),
        ({"inputs": [good_input()], "parameters": {"priority": 1.0}}, ["Unable to parse 'priority'"]),
        ({"inputs": [good_input()], "parameters": {"priority": True}}, ["Unable to parse 'priority'"]),
        # Triton's own keys a request may not set, and custom values it cannot hand a backend (helper-87)
        ({"inputs": [good_input()], "parameters": {"triton_enable_empty_final_response": True}},
         ["parameter keys starting with 'triton_' are reserved for Triton usage"]),
        ({"inputs": [good_input()], "parameters": {"my_list": [1]}},
         ["parameter 'my_list' has invalid type. It should be either 'int', 'bool', or 'string'."]),
        ({"inputs": [good_input()], "parameters": {"my_none": None}}, ["parameter 'my_none' has invalid type"]),
    ],
)  # fmt: skip
def test_parameters_of_the_wrong_type_are_400_not_ignored_or_misread(raw: Raw, doc: dict, words: list[str]) -> None:
    # "false" was read as true (binary answers to a client asking for JSON); non-objects were ignored
    status, got = raw.json("POST", INFER, doc)
    check_error(raw, status, got, 400, *words)


@pytest.mark.parametrize("count", [15, 18])
def test_data_not_matching_the_shape_is_refused_in_tritons_words(raw: Raw, count: int) -> None:
    # Triton's L0_http looks for its words (helper-96); then which input and by how much
    status, got = raw.json("POST", INFER, {"inputs": [good_input(data=[0.0] * count)]})
    check_error(raw, status, got, 400, "needs 16 elements but 'data' holds")
    assert got["error"].startswith("Unable to parse 'data': Shape does not match true shape of 'data' field"), got


def test_custom_parameters_of_the_types_triton_takes_are_served(raw: Raw) -> None:
    params = {"my_string": "a", "my_int": 3, "my_double": 0.5, "my_bool": False, "binary_data_output": False}
    status, got = raw.json("POST", INFER, {"inputs": [good_input()], "parameters": params})
    assert status == 200 and got["outputs"][0]["name"] == "y", got


def test_integer_priority_and_timeout_are_served_as_tritonclient_sends_them(server: ServerThread) -> None:
    # Triton reads both as unsigned integers; without priority levels a request's priority changes nothing
    with httpclient.InferenceServerClient(server.http_url) as client:
        x = httpclient.InferInput("x", [1, 16], "FP32")
        x.set_data_from_numpy(np.zeros((1, 16), np.float32))
        for kwargs in ({"priority": 3}, {"timeout": 10_000_000}, {"priority": 2**63, "timeout": 0}):
            assert client.infer("mlp", [x], **kwargs).get_response()["outputs"][0]["shape"] == [1, 4]


def test_a_nan_timeout_is_400_not_an_expired_deadline(raw: Raw) -> None:
    body = json.dumps({"inputs": [good_input()], "parameters": {"timeout": float("nan")}})  # the NaN token
    status, _, data = raw.request("POST", INFER, body, {"Content-Type": "application/json"})
    check_error(raw, status, json.loads(data), 400, "timeout")


def test_unknown_model_and_version_are_404(raw: Raw) -> None:
    # in Triton's words, which its client examples look for, then what to do
    status, doc = raw.json("POST", "/v2/models/nope/infer", {"inputs": [good_input()]})
    check_error(raw, status, doc, 404, "nope")
    assert doc["error"].startswith("Request for unknown model: 'nope' is not found; "), doc
    status, doc = raw.json("POST", "/v2/models/mlp/versions/9/infer", {"inputs": [good_input()]})
    check_error(raw, status, doc, 404, "version")
    assert doc["error"].startswith("Request for unknown model: 'mlp' version 9 is not found; "), doc
    status, doc = raw.json("GET", "/v2/models/nope")
    assert status == 404 and doc["error"].startswith("Request for unknown model: 'nope'")
    # a version that is not a number is the request's fault, as in Triton
    status, doc = raw.json("GET", "/v2/models/mlp/versions/abc")
    check_error(raw, status, doc, 400, "version")
    assert doc["error"].startswith("failed to get model version from specified version string 'abc'"), doc
    status, doc = raw.json("GET", "/v2/models/nope/config")
    check_error(raw, status, doc, 404)
    status, doc = raw.json("GET", "/v2/nowhere")
    check_error(raw, status, doc, 404, "no route")
    for path in (
        "/v2/models/mlp/versions/99999999999999999999999",
        "/v2/models/mlp/versions/9223372036854775808/config",
        "/v2/models/mlp/versions/" + "9" * 5000,  # past Python's 4,300 digits for int(): was a 500
    ):
        status, doc = raw.json("GET", path)
        check_error(raw, status, doc, 404, "version", "is not found")
    assert raw.json("GET", "/v2/models/mlp/versions/" + "0" * 5000 + "1")[0] == 200  # leading zeros: version 1
    status, doc = raw.json("GET", "/v2/models/mlp/versions/" + "x" * 5000)
    check_error(raw, status, doc, 400, "'" + "x" * 40 + "...'")
    assert len(doc["error"]) < 300  # not the whole string back


def test_a_request_for_an_unknown_model_is_404_whatever_its_body(raw: Raw) -> None:
    # Triton looks the model up before it reads the body: a client probing for a model learns it is not
    # there, not that its test tensor was malformed
    for path, words in (("/v2/models/nope/infer", "'nope' is not found"), ("/v2/models/mlp/versions/9/infer", "version 9")):
        for body, headers in (
            (b"{not json", {"Content-Type": "application/json"}),
            (json.dumps({"inputs": [good_input(shape=[1, 3])]}).encode(), {}),
            (b"\x1f\x8b broken gzip", {"Content-Encoding": "gzip"}),
            (b"<xml/>", {"Content-Type": "text/xml"}),
        ):
            status, _, payload = raw.request("POST", path, body, headers)
            check_error(raw, status, json.loads(payload), 404, words)


def test_missing_and_unexpected_inputs_are_400(raw: Raw) -> None:
    status, doc = raw.json("POST", INFER, {"inputs": []})
    check_error(raw, status, doc, 400, "expected 1 inputs but got 0 inputs", "missing required input(s) ['x']")
    status, doc = raw.json("POST", INFER, {"inputs": [good_input(name="z")]})  # as many as it takes: a wrong name
    check_error(raw, status, doc, 400, "unexpected inference input 'z'")
    status, doc = raw.json("POST", INFER, {"inputs": [good_input(), good_input(name="z")]})
    check_error(raw, status, doc, 400, "unexpected inference input 'z'")
    status, doc = raw.json("POST", INFER, {"inputs": [good_input(), good_input()]})
    check_error(raw, status, doc, 400, "input 'x' already exists in request")  # Triton's words


def test_wrong_datatype_is_400(raw: Raw) -> None:
    status, doc = raw.json("POST", INFER, {"inputs": [good_input(datatype="INT64", data=[0] * 16)]})
    check_error(raw, status, doc, 400, "INT64", "FP32")
    status, doc = raw.json("POST", INFER, {"inputs": [good_input(datatype="FLOAT128")]})
    check_error(raw, status, doc, 400, "invalid datatype for input x: unknown datatype")  # Triton's words first
    status, doc = raw.json("POST", INFER, {"inputs": [good_input(data=["a"] * 16)]})
    check_error(raw, status, doc, 400, "numbers only")
    # the protocol spells datatypes in upper case, and Triton refuses any other spelling
    status, doc = raw.json("POST", INFER, {"inputs": [good_input(datatype="fp32")]})
    check_error(raw, status, doc, 400, "invalid datatype for input x: 'fp32' is spelled 'FP32'")


def test_numbers_out_of_a_float_datatypes_range_are_400(raw: Raw) -> None:
    status, doc = raw.json("POST", INFER, {"inputs": [good_input(data=[0.0] * 15 + [-1e39])]})
    check_error(raw, status, doc, 400, "-1e+39 does not fit datatype FP32")
    # nested rows, and bodies holding NaN (read by the standard library), take another path: the same check
    status, doc = raw.json("POST", INFER, {"inputs": [good_input(shape=[2, 16], data=[[0.0] * 16, [1e39] * 16])]})
    check_error(raw, status, doc, 400, "1e+39 does not fit datatype FP32")
    body = b'{"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 16], "data": [NaN, 1e39' + b", 0" * 14 + b"]}]}"
    status, _, data = raw.request("POST", INFER, body, {"Content-Type": "application/json"})
    check_error(raw, status, json.loads(data), 400, "1e+39 does not fit datatype FP32")
    # infinities sent as such are values, not overflow (tritonclient writes them as Infinity)
    body = b'{"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 16], "data": [Infinity' + b", 1e38" * 15 + b"]}]}"
    status, _, data = raw.request("POST", INFER, body, {"Content-Type": "application/json"})
    assert status == 200, data


def test_ragged_nested_data_is_400_even_when_the_count_matches(raw: Raw) -> None:
    status, doc = raw.json("POST", INFER, {"inputs": [good_input(shape=[2, 16], data=[[0.0] * 15, [0.0] * 17])]})
    check_error(raw, status, doc, 400, "does not fit")
    status, doc = raw.json("POST", INFER, {"inputs": [good_input(shape=[2, 16], data=[[0.5] * 16, [0.25] * 16])]})
    assert status == 200 and doc["outputs"][0]["shape"] == [2, 4], doc


def test_shape_times_dtype_not_matching_data_is_400(raw: Raw) -> None:
    status, doc = raw.json("POST", INFER, {"inputs": [good_input(data=[0.0] * 15)]})
    check_error(raw, status, doc, 400, "16 elements", "15")
    status, doc = raw.json("POST", INFER, {"inputs": [good_input(shape=[1, 8])]})
    check_error(raw, status, doc, 400, "8 elements")
    # binary: 60 bytes for [1, 16] FP32 (64 needed)
    head = json.dumps({"inputs": [good_input(data=None, parameters={"binary_data_size": 60})]}).encode()
    status, _, data = raw.request(
        "POST", INFER, head + b"\0" * 60, {"Inference-Header-Content-Length": str(len(head))}
    )
    check_error(raw, status, json.loads(data), 400, "64 bytes", "60")
    # binary section longer than the sizes add up to
    head = json.dumps({"inputs": [{**good_input(), "parameters": {"binary_data_size": 64}}]}).encode()
    head = json.dumps({"inputs": [{k: v for k, v in json.loads(head)["inputs"][0].items() if k != "data"}]}).encode()
    status, _, data = raw.request(
        "POST", INFER, head + b"\0" * 72, {"Inference-Header-Content-Length": str(len(head))}
    )
    check_error(raw, status, json.loads(data), 400, "add up to")


@pytest.mark.parametrize(
    ("shape", "words"),
    [
        ([1, -16], "negative"),
        ([2**62, 2**62], "over the limit"),
        ([0, 2**62], "over the limit"),
        ([10**30], "integers"),
        ([1, "16"], "integers"),
    ],
    ids=["negative", "huge", "huge-times-zero", "huger", "not-int"],
)
def test_negative_or_huge_dims_are_400(raw: Raw, shape: list, words: str) -> None:
    status, doc = raw.json("POST", INFER, {"inputs": [good_input(shape=shape)]})
    check_error(raw, status, doc, 400, words)


DEEP = "[" * 1000 + "1" + "]" * 1000  # within the JSON readers' depth, past Python's recursion
GOOD = json.dumps(good_input())


def _body(inputs: str, rest: str = "") -> str:
    return '{"inputs": [' + inputs + "]" + rest + "}"


def _x(datatype: str = "FP32", shape: str = "[1, 16]", data: str = "[0]") -> str:
    return '{"name": "x", "datatype": "' + datatype + '", "shape": ' + shape + ', "data": ' + data + "}"


@pytest.mark.parametrize(
    ("body", "words"),
    [
        (_body(GOOD, ', "parameters": {"binary_data_output": ' + DEEP + "}"), ["binary_data_output", "nested too deep"]),
        (_body(GOOD, ', "parameters": {"priority": ' + DEEP + "}"), ["Unable to parse 'priority'"]),
        (_body(GOOD, ', "outputs": [{"name": "y", "parameters": {"binary_data": ' + DEEP + "}}]"), ["binary_data"]),
        (_body(_x(shape=DEEP)), ["integers only"]),
        (_body(_x(data="[" + ", ".join([DEEP] * 15 + ["[[1]]"]) + "]")), ["data does not fit", "uneven lengths"]),
        (_body(_x(datatype="BOOL", data=DEEP)), ["BOOL data"]),
        (_body(_x(data='[{"a": ' + DEEP + "}]")), ["numbers only"]),
        (_body(_x(shape=str([1] * 65))), ["65 dimensions", "at most 32"]),
        (_body(GOOD, ', "parameters": {"binary_data_output": "' + "t" * 1_000_000 + '"}'), ["binary_data_output", "..."]),
        (_body(json.dumps(good_input(name="n" * 1_000_000))), ["1,000,000 characters", "at most 1,024"]),
        (_body(GOOD, ', "outputs": [{"name": "' + "o" * 1_000_000 + '"}]'), ["an output is named", "at most 1,024"]),
    ],
    ids=[
        "binary-data-output", "priority", "output-binary-data", "shape", "data", "bool-data", "data-object", "65-dims",
        "long-value", "long-input-name", "long-output-name",
    ],
)  # fmt: skip
def test_values_nested_past_pythons_recursion_or_too_long_are_400_with_short_words(
    raw: Raw, body: str, words: list[str]
) -> None:
    """Nesting the JSON readers take but Python's recursion does not (data, a parameter, a shape), and a tensor of
    65 dimensions (numpy's limit is 64), were 500s; a 1 MB value came back whole in the error."""
    status, _, data = raw.request("POST", INFER, body.encode(), {"Content-Type": "application/json"})
    check_error(raw, status, json.loads(data), 400, *words)
    assert len(data) < 2000


def test_data_nested_past_numpys_64_dimensions_is_read_by_its_leaves_as_triton_reads_it(raw: Raw) -> None:
    body = _body(_x(data="[" + ", ".join([DEEP] * 16) + "]"))  # numpy's words, a 400, where Triton answers
    status, _, data = raw.request("POST", INFER, body.encode(), {"Content-Type": "application/json"})
    assert status == 200 and json.loads(data)["outputs"][0]["shape"] == [1, 4], data[:300]


def test_huge_dims_in_binary_are_400(raw: Raw) -> None:
    head = json.dumps(
        {"inputs": [{"name": "x", "datatype": "FP32", "shape": [2**31, 16], "parameters": {"binary_data_size": 8}}]}
    ).encode()
    status, _, data = raw.request("POST", INFER, head + b"\0" * 8, {"Inference-Header-Content-Length": str(len(head))})
    check_error(raw, status, json.loads(data), 400, "over the limit")


def test_batch_over_the_maximum_is_400(raw: Raw) -> None:
    status, doc = raw.json("POST", INFER, {"inputs": [good_input(shape=[65, 16], data=[0.0] * 65 * 16)]})
    check_error(raw, status, doc, 400, "inference request batch-size must be <= 64", "not 65")


def test_a_binary_header_length_given_twice_is_refused_unless_both_agree(raw: Raw) -> None:
    """Two different lengths of the JSON part: which one the client meant is unknown; the last was taken (helper-254).
    The same length twice (a proxy repeating a header) is one length."""
    head = json.dumps({"inputs": [{**good_input(data=None), "parameters": {"binary_data_size": 64}}]}).encode()
    body = head + np.zeros(16, np.float32).tobytes()

    def sent(*lengths: int) -> bytes:
        extra = "".join(f"Inference-Header-Content-Length: {n}\r\n" for n in lengths)
        with socket.create_connection(("127.0.0.1", raw.port), timeout=5) as sock:
            sock.sendall(_request(body, extra=extra + "Connection: close\r\n"))
            return _read_response(sock)

    refused = sent(len(head) + 1, len(head))
    assert refused.startswith(b"HTTP/1.1 400") and b"Inference-Header-Content-Length twice" in refused, refused[:300]
    assert sent(len(head), len(head)).startswith(b"HTTP/1.1 200")
    raw.infer_ok()


def test_binary_header_length_larger_than_body_is_400(raw: Raw) -> None:
    body = json.dumps({"inputs": [good_input()]}).encode()
    status, _, data = raw.request("POST", INFER, body, {"Inference-Header-Content-Length": str(len(body) + 100)})
    check_error(raw, status, json.loads(data), 400, "Inference-Header-Content-Length")
    # tritonserver 2.51's words lead (bench/triton_parity.py), for a length past the body and a negative one
    check_error(raw, status, json.loads(data), 400, f"inference header size should be in range (0, {len(body)}), got: {len(body) + 100}")
    status, _, data = raw.request("POST", INFER, body, {"Inference-Header-Content-Length": "-5"})
    check_error(raw, status, json.loads(data), 400, f"inference header size should be in range (0, {len(body)}), got: -5")
    status, _, data = raw.request("POST", INFER, body, {"Inference-Header-Content-Length": "lots"})
    check_error(raw, status, json.loads(data), 400, "integer")


def test_binary_size_past_the_end_is_400(raw: Raw) -> None:
    head = json.dumps(
        {"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 16], "parameters": {"binary_data_size": 64}}]}
    ).encode()
    status, _, data = raw.request("POST", INFER, head + b"\0" * 10, {"Inference-Header-Content-Length": str(len(head))})
    check_error(raw, status, json.loads(data), 400, "past the end")


def _read_response(sock: socket.socket, limit_s: float = 5.0) -> bytes:
    sock.settimeout(limit_s)
    chunks = []
    try:
        while True:
            chunk = sock.recv(65536)
            if not chunk:
                break
            chunks.append(chunk)
    except (TimeoutError, ConnectionResetError):
        pass
    return b"".join(chunks)


def _send_until_answered(sock: socket.socket, chunk: bytes, times: int, pause_s: float = 0.0) -> bytes:
    """Send ``chunk`` up to ``times`` times, stopping when the server stops reading; then its answer."""
    try:
        for _ in range(times):
            sock.sendall(chunk)
            time.sleep(pause_s)
    except (BrokenPipeError, ConnectionResetError):
        pass
    return _read_response(sock)


def test_oversized_body_is_413_before_it_is_read(server: ServerThread, raw: Raw) -> None:
    size = MAX_BODY * 100
    with socket.create_connection(("127.0.0.1", server.http_port), timeout=5) as sock:
        sock.sendall(
            f"POST {INFER} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            f"Content-Length: {size}\r\n\r\n".encode()
            + b"{" * 1000
        )
        started = time.monotonic()
        answer = _read_response(sock)
        assert time.monotonic() - started < 5
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 413"), answer[:200]
    assert b"connection: close" in head.lower()
    assert "exceeds the server's limit" in json.loads(body)["error"]
    raw.infer_ok()


def test_oversized_body_413_reaches_a_client_that_sends_its_whole_body_first(server: ServerThread, raw: Raw) -> None:
    client = httpclient.InferenceServerClient(server.http_url, network_timeout=20)
    big = httpclient.InferInput("x", [(MAX_BODY * 6) // 64, 16], "FP32")  # 6 MiB of binary data
    big.set_data_from_numpy(np.zeros(big.shape(), np.float32))
    for _ in range(3):  # a reset instead of the answer was a race: more than one try shows it
        with pytest.raises(InferenceServerException) as e:
            client.infer("mlp", [big])
        assert e.value.status() == "413" and "exceeds the server's limit" in e.value.message()
    raw.infer_ok()


def test_oversized_chunked_body_is_413(server: ServerThread, raw: Raw) -> None:
    with socket.create_connection(("127.0.0.1", server.http_port), timeout=5) as sock:
        sock.sendall(f"POST {INFER} HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n".encode())
        chunk = b"a" * 65536
        answer = _send_until_answered(sock, b"%x\r\n%s\r\n" % (len(chunk), chunk), MAX_BODY // len(chunk) + 2)
    assert answer.startswith(b"HTTP/1.1 413"), answer[:200]
    raw.infer_ok()


def test_unsupported_content_type_is_415(raw: Raw) -> None:
    body = json.dumps({"inputs": [good_input()]})
    status, _, data = raw.request("POST", INFER, body, {"Content-Type": "text/xml"})
    check_error(raw, status, json.loads(data), 415, "text/xml")
    status, _, data = raw.request("POST", INFER, body, {"Content-Type": "application/json", "Content-Encoding": "br"})
    check_error(raw, status, json.loads(data), 415, "br")


@pytest.mark.parametrize("ctype", ["text/plain", "text/plain;charset=UTF-8", "application/x-www-form-urlencoded"])
def test_bodies_sent_as_text_or_form_are_read_as_json(raw: Raw, ctype: str) -> None:
    """A browser's fetch() of a string body sends text/plain, and curl -d form-urlencoded: tritonserver 2.51
    reads both (helper-106), where polystack answered text/plain with a 415."""
    body = json.dumps({"inputs": [good_input()]})
    status, _, data = raw.request("POST", INFER, body, {"Content-Type": ctype})
    assert status == 200, data


@pytest.mark.parametrize("coding", ["gzip", "x-gzip", "GZip"])
def test_gzip_body_is_accepted(raw: Raw, coding: str) -> None:
    """``x-gzip`` is gzip (RFC 9110: a recipient should take it so); polystack answered it 415 (helper-175)."""
    body = gzip.compress(json.dumps({"inputs": [good_input()]}).encode())
    status, _, data = raw.request("POST", INFER, body, {"Content-Type": "application/json", "Content-Encoding": coding})
    assert status == 200, data


@pytest.mark.parametrize(
    ("body", "words"),
    [
        (gzip.compress(json.dumps({"inputs": [good_input()]}).encode())[:-12], "truncated"),
        (gzip.compress(json.dumps({"inputs": [good_input()]}).encode()) + b"junk", "after its end"),
        (gzip.compress(b"{}")[:10] + b"\xff" * 20, "does not decompress"),
    ],
    ids=["truncated", "trailing-bytes", "corrupt"],
)
def test_broken_gzip_bodies_are_400_saying_why(raw: Raw, body: bytes, words: str) -> None:
    status, _, data = raw.request("POST", INFER, body, {"Content-Type": "application/json", "Content-Encoding": "gzip"})
    check_error(raw, status, json.loads(data), 400, words)


def test_gzip_body_of_several_members_is_read_whole(raw: Raw) -> None:
    text = json.dumps({"id": "multi", "inputs": [good_input()]}).encode()
    body = gzip.compress(text[:20]) + gzip.compress(text[20:])
    status, _, data = raw.request("POST", INFER, body, {"Content-Type": "application/json", "Content-Encoding": "gzip"})
    assert status == 200 and json.loads(data)["id"] == "multi", data


def test_gzip_body_of_too_many_members_is_400_at_once(raw: Raw) -> None:
    """Each member was read by copying the rest of the body: 200,000 empty members (4 MB) held the event
    loop, and every other client, for 18 s. Bodies have one member, or a few."""
    body = gzip.compress(json.dumps({"inputs": [good_input()]}).encode()) + gzip.compress(b"") * 5_000
    status, _, data = raw.request("POST", INFER, body, {"Content-Type": "application/json", "Content-Encoding": "gzip"})
    check_error(raw, status, json.loads(data), 400, "more than 64 gzip members")


def test_gzip_bomb_is_413(raw: Raw) -> None:
    body = gzip.compress(b" " * (MAX_BODY * 4))
    status, _, data = raw.request("POST", INFER, body, {"Content-Type": "application/json", "Content-Encoding": "gzip"})
    check_error(raw, status, json.loads(data), 413)


def test_wrong_method_is_405(raw: Raw) -> None:
    status, headers, _ = raw.request("GET", INFER)
    assert status == 405 and headers["allow"] == "POST"
    status, headers, _ = raw.request("POST", "/v2/health/live", "")  # HEAD answers where GET does (helper-85)
    assert status == 405 and headers["allow"] == "GET, HEAD"
    # an origin server with a clock sends Date (RFC 9110 6.6.1; helper-85: none was sent)
    sent = email.utils.parsedate_to_datetime(headers["date"]).timestamp()
    assert abs(sent - time.time()) < 5
    raw.infer_ok()


def test_client_disconnecting_mid_request_leaves_the_server_serving(server: ServerThread, raw: Raw) -> None:
    body = json.dumps({"inputs": [good_input()]}).encode()
    for cut in (5, len(body) // 2, len(body) - 1):
        with socket.create_connection(("127.0.0.1", server.http_port), timeout=5) as sock:
            sock.sendall(
                f"POST {INFER} HTTP/1.1\r\nHost: x\r\nContent-Length: {len(body)}\r\n\r\n".encode() + body[:cut]
            )
    # half a request line, then gone
    with socket.create_connection(("127.0.0.1", server.http_port), timeout=5) as sock:
        sock.sendall(b"POST /v2/mod")
    # a complete request whose client leaves before the answer
    with socket.create_connection(("127.0.0.1", server.http_port), timeout=5) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))  # RST on close
        sock.sendall(f"POST {INFER} HTTP/1.1\r\nHost: x\r\nContent-Length: {len(body)}\r\n\r\n".encode() + body)
    raw.infer_ok()


def test_a_closed_connection_holds_none_of_its_bodies_until_the_collector_runs(server: ServerThread, raw: Raw) -> None:
    """A connection and its parser hold each other: a cycle only the collector frees, which no ordinary traffic
    made run, so every body a connection had read stayed in memory after it closed (helper-268: 16 MiB for each
    upload a client cut off, 3 GB after a few hundred; a body read whole stayed twice, its parts and the join)."""
    import gc

    from polystack.server.http_connection import HttpProtocol

    def held() -> list[int]:
        return [sum(map(len, p._body)) for p in gc.get_objects() if isinstance(p, HttpProtocol) and p.transport is None]

    chunk = b"x" * (MAX_BODY // 8)
    gc.collect()
    gc.disable()  # what the test looks for is what is held without it
    try:
        with socket.create_connection(("127.0.0.1", server.http_port), timeout=5) as sock:  # cut off mid-body
            sock.sendall(f"POST {INFER} HTTP/1.1\r\nHost: x\r\nContent-Length: {MAX_BODY}\r\n\r\n".encode())
            for _ in range(6):
                sock.sendall(chunk)
            time.sleep(0.3)  # read by the server
        with socket.create_connection(("127.0.0.1", server.http_port), timeout=5) as sock:  # sent whole, refused
            sock.sendall(f"POST {INFER} HTTP/1.1\r\nHost: x\r\nContent-Length: {6 * len(chunk)}\r\n\r\n".encode())
            for _ in range(6):
                sock.sendall(chunk)
            assert sock.recv(12) == b"HTTP/1.1 400"
        assert until(lambda: not server.server.http.connections, 5)
        assert sum(held()) == 0, held()
    finally:
        gc.enable()
    raw.infer_ok()


class _Transport:
    """Enough of an asyncio transport for HttpProtocol, on the server's own loop."""

    def __init__(self) -> None:
        self.written: list[bytes] = []
        self.closed = False

    def write(self, data: bytes) -> None:
        self.written.append(bytes(data))

    def writelines(self, parts: list[bytes]) -> None:
        self.written.append(b"".join(parts))

    def close(self) -> None:
        self.closed = True

    def is_closing(self) -> bool:
        return self.closed

    def get_write_buffer_size(self) -> int:
        return 0

    def pause_reading(self) -> None: ...
    def resume_reading(self) -> None: ...


def test_a_connection_lost_before_its_request_started_leaves_no_coroutine_unawaited(server: ServerThread) -> None:
    """The handler's coroutine was made before its task ran: a connection lost in between dropped it unawaited,
    and Python wrote a RuntimeWarning, not a JSON line, to the log."""
    import asyncio
    import gc
    import warnings

    from polystack.server.http_connection import HttpProtocol

    body = json.dumps({"inputs": [good_input()]}).encode()
    request = f"POST {INFER} HTTP/1.1\r\nHost: x\r\nContent-Length: {len(body)}\r\n\r\n".encode() + body

    async def lose_it() -> list[str]:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            conn = HttpProtocol(server.server.http)
            conn.connection_made(_Transport())  # type: ignore[arg-type]
            conn.data_received(request)  # dispatched: its task made, not yet run
            assert conn._task is not None and not conn._task.done()
            conn.connection_lost(ConnectionResetError())
            for _ in range(3):
                await asyncio.sleep(0)
            del conn  # what still held the request's coroutine
            gc.collect()
        return [str(w.message) for w in caught if issubclass(w.category, RuntimeWarning)]

    assert server._loop is not None
    assert asyncio.run_coroutine_threadsafe(lose_it(), server._loop).result(10) == []
    Raw(server.http_port).infer_ok()


def test_garbage_instead_of_http_is_400(server: ServerThread, raw: Raw) -> None:
    with socket.create_connection(("127.0.0.1", server.http_port), timeout=5) as sock:
        sock.sendall(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03 not http at all\r\n\r\n")
        answer = _read_response(sock)
    assert answer.startswith(b"HTTP/1.1 400"), answer[:100]
    raw.infer_ok()


def test_pipelined_requests_are_answered_in_order(server: ServerThread) -> None:
    one = json.dumps({"id": "A", "inputs": [good_input()]}).encode()
    two = json.dumps({"id": "B", "inputs": [good_input()]}).encode()
    req = b""
    for b in (one, two):
        req += f"POST {INFER} HTTP/1.1\r\nHost: x\r\nContent-Length: {len(b)}\r\n\r\n".encode() + b
    req += b"GET /v2/health/ready HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    with socket.create_connection(("127.0.0.1", server.http_port), timeout=5) as sock:
        sock.sendall(req)
        answer = _read_response(sock)
    assert answer.count(b"HTTP/1.1 200") == 3
    assert answer.index(b'"id":"A"') < answer.index(b'"id":"B"') < answer.index(b'"ready":true')


def test_pipelined_requests_behind_a_slow_one_are_held_to_about_one_body_of_memory(
    model_store: tuple[Store, dict[str, ModelRecord]],
) -> None:
    """Requests a client pipelines behind one the server is still answering wait, read, in the connection's
    queue. The queue held up to 32 of them whatever their size: 32 bodies of --max-body-bytes each, per
    connection (2 GiB at the 64 MiB default). Now reading stops once the queued bodies reach one
    --max-body-bytes, and resumes as they are answered."""
    store, records = model_store
    register_like(store, records["mlp"], "slow2s", tags={"delay_ms": "2000"})
    st = start(store, max_body_bytes=MAX_BODY, models=["slow2s"])
    try:
        slow = json.dumps({"inputs": [good_input()]}).encode()
        big = b"x" * (MAX_BODY - 1000)  # each under the limit; refused 404 at once once read
        req = b"POST /v2/models/slow2s/infer HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % len(slow) + slow
        req += (b"POST /v2/models/nosuch/infer HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % len(big) + big) * 30
        with socket.create_connection(("127.0.0.1", st.http_port), timeout=30) as sock:
            sender = threading.Thread(target=sock.sendall, args=(req,), daemon=True)
            sender.start()
            time.sleep(1.0)  # the slow request runs for 2 s: what the client sent meanwhile waits
            [conn] = [c for c in list(st.server.http.connections) if c.transport]
            queued = sum(len(r.body) for r in list(conn._queue))
            assert 0 < queued <= 2 * MAX_BODY, queued
            sock.settimeout(30)
            answers = b""
            while answers.count(b"HTTP/1.1 ") < 31:
                chunk = sock.recv(1 << 16)
                assert chunk, answers[-300:]
                answers += chunk
            sender.join(10)
        assert answers.startswith(b"HTTP/1.1 200") and answers.count(b"HTTP/1.1 404") == 30
    finally:
        st.stop()


def test_a_ready_check_of_a_version_that_is_not_a_number_is_refused_not_false(raw: Raw) -> None:
    """As Triton refuses it (its gRPC ModelReady: INVALID_ARGUMENT); a number no version has is not ready."""
    status, doc = raw.json("GET", "/v2/models/mlp/versions/x/ready")
    check_error(raw, status, doc, 400, "failed to get model version from specified version string 'x'")
    status, doc = raw.json("GET", "/v2/models/mlp/versions/99999999999999999999999/ready")
    assert status == 400 and doc == {"error": "Model version not ready", "name": "mlp", "ready": False}, doc
    status, doc = raw.json("GET", "/v2/models/mpl2/ready")  # an unknown model (helper-86: no error in the body)
    assert status == 400 and doc == {"error": "Model version not ready", "name": "mpl2", "ready": False}, doc


def test_without_model_control_the_index_answers_and_loads_are_refused_as_in_triton(raw: Raw) -> None:
    """Triton answers its index whatever its model control, and refuses a load or unload without explicit
    control 503 in its words (LoadUnloadModel); polystack refused the index too, and both 403."""
    status, doc = raw.json("POST", "/v2/repository/index", {})
    assert status == 200 and {"name": "mlp", "version": "1", "state": "READY"} in doc, doc
    for action in ("load", "unload"):
        status, doc = raw.json("POST", f"/v2/repository/models/mlp/{action}", {})
        check_error(raw, status, doc, 503, "explicit model load / unload is not allowed if polling is enabled")
        assert "--allow-model-control" in doc["error"]


def test_unsupported_request_features_are_refused_not_ignored(raw: Raw) -> None:
    shm = {"shared_memory_region": "r0", "shared_memory_byte_size": 64}
    status, doc = raw.json("POST", INFER, {"inputs": [good_input(data=None, parameters=shm)]})
    check_error(raw, status, doc, 400, "shared memory")
    status, doc = raw.json("POST", INFER, {"inputs": [good_input()], "outputs": [{"name": "y", "parameters": shm}]})
    check_error(raw, status, doc, 400, "shared memory")
    # sequence parameters to a model without sequence batching are ignored, as tritonserver 2.51 ignores them
    status, doc = raw.json("POST", INFER, {"inputs": [good_input()], "parameters": {"sequence_id": 7}})
    assert status == 200, doc
    head = json.dumps({"inputs": [good_input(parameters={"binary_data_size": 64})]}).encode()
    status, _, data = raw.request("POST", INFER, head + b"\0" * 64, {"Inference-Header-Content-Length": str(len(head))})
    # tritonserver 2.51's words (helper-116), then what to do
    check_error(raw, status, json.loads(data), 400, "Input must set only one of the following fields", "But set 'data' 'binary_data_size'")
    status, doc = raw.json("POST", INFER, {"inputs": [good_input(data=None)]})
    check_error(raw, status, doc, 400, "But no field is set: input 'x' has no data")
    # the NaN-tolerant reading path refuses what orjson refuses besides NaN: a lone surrogate escape
    body = b'{"id": "\\ud800", "inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 16], "data": [NaN' + b", 0" * 15 + b"]}]}"
    status, _, data = raw.request("POST", INFER, body, {"Content-Type": "application/json"})
    check_error(raw, status, json.loads(data), 400, "not valid JSON")


def _failures(raw: Raw) -> dict[str, float]:
    text = raw.request("GET", "/metrics")[2].decode()
    return {
        line.split("{", 1)[1].split("}", 1)[0]: float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith("polystack_inference_request_failure_total{")
    }


def test_failures_are_counted_without_growing_metrics_from_client_strings(raw: Raw) -> None:
    before = _failures(raw)
    for i in range(5):
        raw.json("POST", f"/v2/models/made-up-{i}/infer", {"inputs": [good_input()]})
        raw.json("POST", f"/v2/models/mlp/versions/{i + 50}/infer", {"inputs": [good_input()]})
    raw.request("POST", INFER, b"{not json", {"Content-Type": "application/json"})
    after = _failures(raw)
    assert not [k for k in after if "made-up" in k or 'version="5' in k], after
    unknown = 'model="",reason="ModelNotFound",version=""'
    assert after[unknown] - before.get(unknown, 0) == 5
    bad_version = 'model="mlp",reason="VersionNotFound",version=""'
    assert after[bad_version] - before.get(bad_version, 0) == 5
    undecoded = 'model="mlp",reason="InvalidRequest",version="1"'  # the version that serves it, as it counts it
    assert after[undecoded] - before.get(undecoded, 0) == 1


def _request(body: bytes, path: str = INFER, extra: str = "") -> bytes:
    return f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Length: {len(body)}\r\n{extra}\r\n".encode() + body


def test_expect_100_continue_behind_a_request_in_flight_is_answered_after_it(
    model_store: tuple[Store, dict[str, ModelRecord]],
) -> None:
    st = start(model_store[0], models=["mlp", "slow"])
    try:
        body = json.dumps({"inputs": [good_input()]}).encode()
        with socket.create_connection(("127.0.0.1", st.http_port), timeout=5) as sock:
            waiting = _request(b"", extra="Expect: 100-continue\r\n").replace(b"Length: 0", b"Length: %d" % len(body))
            sock.sendall(_request(body, "/v2/models/slow/infer") + waiting)
            sock.settimeout(5)
            got = b""
            while b"100 Continue" not in got:
                chunk = sock.recv(65536)
                assert chunk, got
                got += chunk
            assert got.startswith(b"HTTP/1.1 200") and got.endswith(b"HTTP/1.1 100 Continue\r\n\r\n"), got[-200:]
            sock.sendall(body)
            assert sock.recv(65536).startswith(b"HTTP/1.1 200")
    finally:
        st.stop()


def test_expect_100_continue_is_refused_only_once_the_requests_before_it_are_answered(
    model_store: tuple[Store, dict[str, ModelRecord]],
) -> None:
    """The refusal is decided when the 100 Continue would go, after the requests pipelined before it (one of them
    may load or unload its model: helper-260), and comes after their answers."""
    st = start(model_store[0], models=["mlp", "slow"])
    try:
        body = json.dumps({"inputs": [good_input()]}).encode()
        waiting = _request(b"", "/v2/models/nope/infer", extra="Expect: 100-continue\r\n").replace(
            b"Length: 0", b"Length: %d" % len(body)
        )
        with socket.create_connection(("127.0.0.1", st.http_port), timeout=5) as sock:
            sock.sendall(_request(body, "/v2/models/slow/infer") + waiting)
            answer = _read_response(sock)
        assert answer.startswith(b"HTTP/1.1 200"), answer[:200]
        second = answer.index(b"HTTP/1.1 404")
        assert second > 0 and b"100 Continue" not in answer and b"'nope' is not found" in answer[second:]
    finally:
        st.stop()


def test_expect_100_continue_is_answered_before_the_body(server: ServerThread) -> None:
    body = json.dumps({"inputs": [good_input()]}).encode()
    with socket.create_connection(("127.0.0.1", server.http_port), timeout=5) as sock:
        sock.sendall(_request(b"", extra="Expect: 100-continue\r\n").replace(b"Length: 0", b"Length: %d" % len(body)))
        assert sock.recv(100) == b"HTTP/1.1 100 Continue\r\n\r\n"
        sock.sendall(body + b"GET /v2/health/ready HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        answer = _read_response(sock)
    assert answer.startswith(b"HTTP/1.1 200") and answer.count(b"HTTP/1.1 200") == 2, answer[:300]


@pytest.mark.parametrize(
    ("path", "method", "extra", "status", "said"),
    [
        ("/v2/models/no-such-model/infer", "POST", "", 404, "Request for unknown model: 'no-such-model' is not found"),
        ("/v2/models/mlp/versions/9/infer", "POST", "", 404, "version 9"),
        (INFER, "PUT", "", 405, "use POST here"),
        (INFER, "POST", "Content-Encoding: br\r\n", 415, "content encoding 'br' is not supported"),
        (INFER, "POST", "Content-Type: image/png\r\n", 415, "content type 'image/png' is not supported"),
        ("/v2/nowhere", "POST", "", 404, "no route '/v2/nowhere'"),
    ],
)
def test_expect_100_continue_of_a_request_its_headers_refuse_gets_the_refusal_instead(
    raw: Raw, path: str, method: str, extra: str, status: int, said: str
) -> None:
    """curl asks before sending a body over 1 MB: a typo in the model's name no longer costs the upload (helper-254:
    100 Continue, the whole body read, then 404), and the refusal is the one the request gets once read."""
    before = sum(_failures(raw).values())
    head = (
        f"{method} {path} HTTP/1.1\r\nHost: x\r\nContent-Length: 900000\r\nExpect: 100-continue\r\n"
        f"X-Request-ID: asked-{status}\r\n{extra}\r\n"
    )
    with socket.create_connection(("127.0.0.1", raw.port), timeout=5) as sock:
        sock.sendall(head.encode())
        answer = _read_response(sock)  # the server closes after it: the body it refused is never sent
    assert answer.startswith(b"HTTP/1.1 %d " % status) and b"100 Continue" not in answer, answer[:300]
    assert b"\r\nx-request-id: asked-%d\r\n" % status in answer  # echoed, as every answer echoes it
    assert said in json.loads(answer.split(b"\r\n\r\n", 1)[1])["error"]
    if status == 405:
        assert b"\r\nallow: POST\r\n" in answer
    if path.endswith("/infer") and method == "POST":  # counted as the request would have been
        assert sum(_failures(raw).values()) == before + 1
    raw.infer_ok()


def test_an_upgrade_request_is_answered_as_plain_http(server: ServerThread) -> None:
    """curl --http2 asks for h2c on every request; the answer is HTTP/1.1, and nothing extra follows."""
    upgrade = "Connection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABkAAQAoAAAAAIAAAAA\r\n"
    body = json.dumps({"id": "up", "inputs": [good_input()]}).encode()
    with socket.create_connection(("127.0.0.1", server.http_port), timeout=5) as sock:
        sock.sendall(f"GET /v2/health/ready HTTP/1.1\r\nHost: x\r\n{upgrade}\r\n".encode())
        sock.sendall(_request(body, extra=upgrade)[:-10])  # the body arrives in two reads
        time.sleep(0.05)
        sock.sendall(body[-10:] + b"GET /v2/health/live HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        answer = _read_response(sock)
    assert answer.count(b"HTTP/1.1 ") == 3 and answer.count(b"HTTP/1.1 200") == 3, answer[:600]
    assert answer.index(b'"ready":true') < answer.index(b'"id":"up"') < answer.index(b'"live":true')


def test_http10_clients_get_no_interim_answer_and_an_upgrade_is_closed_after(server: ServerThread) -> None:
    """HTTP/1.0 has no 100 Continue (RFC 9110 10.1.1: the expectation is ignored), and closes after the answer
    unless it asks to keep alive, an Upgrade request too (it was kept open until the idle timeout)."""
    body = json.dumps({"inputs": [good_input()]}).encode()
    head = b"POST /v2/models/mlp/infer HTTP/1.0\r\nExpect: 100-continue\r\nContent-Length: %d\r\n\r\n" % len(body)
    with socket.create_connection(("127.0.0.1", server.http_port), timeout=5) as sock:
        sock.sendall(head)
        time.sleep(0.1)  # time for an interim answer that must not come
        sock.sendall(body)
        answer = _read_response(sock)
    assert answer.startswith(b"HTTP/1.1 200") and b"100 Continue" not in answer, answer[:300]
    started = time.monotonic()
    with socket.create_connection(("127.0.0.1", server.http_port), timeout=5) as sock:
        sock.sendall(b"GET /v2/health/ready HTTP/1.0\r\nConnection: Upgrade\r\nUpgrade: foo\r\n\r\n")
        answer = _read_response(sock)
    assert answer.startswith(b"HTTP/1.1 200") and b"connection: close" in answer, answer[:300]
    assert time.monotonic() - started < 4  # closed after the answer, not at a read's timeout


def test_requests_before_a_malformed_one_are_answered_first(server: ServerThread) -> None:
    body = json.dumps({"id": "first", "inputs": [good_input()]}).encode()
    with socket.create_connection(("127.0.0.1", server.http_port), timeout=5) as sock:
        sock.sendall(_request(body) + b"GARBAGE\r\n\r\n")
        answer = _read_response(sock)
    assert answer.startswith(b"HTTP/1.1 200") and b'"id":"first"' in answer, answer[:300]
    assert b"HTTP/1.1 400" in answer and answer.index(b'"id":"first"') < answer.index(b"HTTP/1.1 400")


def test_a_header_that_never_ends_is_refused_before_it_grows(server: ServerThread, raw: Raw) -> None:
    with socket.create_connection(("127.0.0.1", server.http_port), timeout=5) as sock:
        sock.sendall(b"GET /v2 HTTP/1.1\r\nHost: x\r\nX-Big: ")
        answer = _send_until_answered(sock, b"b" * 65536, 40, pause_s=0.005)  # 2.5 MB at most, never a line end
    assert answer.startswith(b"HTTP/1.1 431"), answer[:200]
    raw.infer_ok()


def test_many_pipelined_upgrade_and_connect_requests_are_all_answered(server: ServerThread) -> None:
    one = b"GET /v2/health/live HTTP/1.1\r\nHost: x\r\nUpgrade: h2c\r\nConnection: Upgrade\r\n\r\n"
    connect = b"CONNECT a:80 HTTP/1.1\r\nHost: x\r\n\r\n"
    last = b"GET /v2/health/ready HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    with socket.create_connection(("127.0.0.1", server.http_port), timeout=5) as sock:
        sock.sendall(one * 800 + connect + last)
        answer = _read_response(sock, limit_s=10)
    assert answer.count(b'"live":true') == 800, answer.count(b'"live":true')
    assert answer.count(b"HTTP/1.1 ") == 802 and answer.endswith(b'{"ready":true}'), answer[-300:]


def test_huge_urls_and_headers_are_refused(server: ServerThread, raw: Raw) -> None:
    with socket.create_connection(("127.0.0.1", server.http_port), timeout=5) as sock:
        sock.sendall(b"GET /v2/" + b"a" * 100_000 + b" HTTP/1.1\r\nHost: x\r\n\r\n")
        answer = _read_response(sock)
    assert answer.startswith(b"HTTP/1.1 414") and len(answer) < 1000, answer[:200]
    with socket.create_connection(("127.0.0.1", server.http_port), timeout=5) as sock:
        sock.sendall(b"GET /v2 HTTP/1.1\r\nHost: x\r\n" + b"X-Pad: " + b"p" * 100_000 + b"\r\n\r\n")
        answer = _read_response(sock)
    assert answer.startswith(b"HTTP/1.1 431"), answer[:200]
    raw.infer_ok()


def _send_quietly(sock: socket.socket, data: bytes) -> None:
    with contextlib.suppress(OSError):  # the server closes the connection mid-send
        sock.sendall(data)


def test_idle_and_stalled_connections_are_closed(model_store: tuple[Store, dict[str, ModelRecord]]) -> None:
    store, records = model_store
    register_like(store, records["mlp"], "slow600", tags={"delay_ms": "600"})
    st = start(store, models=["mlp", "slow600", "two"], idle_timeout_s=0.4)
    try:
        # idle time counts from the last answer: a request longer than the timeout keeps its connection
        body = json.dumps({"inputs": [good_input()]}).encode()
        with socket.create_connection(("127.0.0.1", st.http_port), timeout=5) as sock:
            sock.sendall(_request(body, "/v2/models/slow600/infer"))
            sock.settimeout(5)
            assert sock.recv(65536).startswith(b"HTTP/1.1 200")
            time.sleep(0.25)
            sock.sendall(b"GET /v2/health/ready HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            assert _read_response(sock).startswith(b"HTTP/1.1 200")
        with socket.create_connection(("127.0.0.1", st.http_port), timeout=5) as stalled:
            stalled.sendall(b"POST /v2/models/mlp/infer HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{")
            started = time.monotonic()
            assert _read_response(stalled).startswith(b"HTTP/1.1 408")  # told why, then closed
            assert time.monotonic() - started < 3
        # a client that pipelines requests and never reads their answers is stalled too, though requests
        # of it still wait (flow control holds them back, so the connection is busy): closed as well
        x = np.zeros((60000, 4), np.float32)  # answers of 1.8 MiB: a few fill the kernel's buffers
        head = json.dumps(
            {"inputs": [{"name": "x", "datatype": "FP32", "shape": [60000, 4], "parameters": {"binary_data_size": x.nbytes}}],
             "parameters": {"binary_data_output": True}}
        ).encode()  # fmt: skip
        ask = (
            b"POST /v2/models/two/infer HTTP/1.1\r\nHost: x\r\nContent-Type: application/octet-stream\r\n"
            b"Inference-Header-Content-Length: %d\r\nContent-Length: %d\r\n\r\n" % (len(head), len(head) + x.nbytes)
        ) + head + x.tobytes()
        before = set(st.server.http.connections)
        with socket.create_connection(("127.0.0.1", st.http_port), timeout=5) as reader:
            reader.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
            sender = threading.Thread(target=_send_quietly, args=(reader, ask * 12))
            sender.start()
            mine = None
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline and (mine is None or mine.transport is not None):
                mine = mine or next(iter(set(st.server.http.connections) - before), None)
                time.sleep(0.05)
            assert mine is not None and mine.transport is None and mine.busy is False  # closed by the server
            sender.join(10)
        Raw(st.http_port).infer_ok()
    finally:
        st.stop()


@pytest.mark.parametrize("where", ["head", "body", "upgrade-body"])
def test_a_client_trickling_a_request_gets_408_when_its_time_is_up(
    model_store: tuple[Store, dict[str, ModelRecord]], where: str
) -> None:
    # every byte resets the idle clock: without a deadline for the whole request, one byte a tenth of a
    # second kept a connection open for ever (slowloris)
    store, _ = model_store
    st = start(store, models=["mlp"], grpc_port=None, idle_timeout_s=0.4)
    head = b"POST /v2/models/mlp/infer HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n"
    if where == "upgrade-body":
        head += b"Connection: Upgrade\r\nUpgrade: h2c\r\n"
    sent_at_once = b"" if where == "head" else head + b"\r\n"
    try:
        with socket.create_connection(("127.0.0.1", st.http_port), timeout=5) as sock:
            sock.sendall(sent_at_once)
            started = time.monotonic()
            stop = threading.Event()

            def trickle() -> None:
                for byte in (head if where == "head" else b"x" * 1000)[:60]:
                    if stop.wait(0.1):
                        return
                    with contextlib.suppress(OSError):
                        sock.send(bytes([byte]))

            sender = threading.Thread(target=trickle)
            sender.start()
            try:
                answer = _read_response(sock)
            finally:
                stop.set()
                sender.join(10)
            assert answer.startswith(b"HTTP/1.1 408"), answer
            assert b'"error"' in answer and b"--idle-timeout-s" in answer
            assert time.monotonic() - started < 3  # 0.4 s and 1 s per 500 bytes, not the 6 s of trickling
        Raw(st.http_port).infer_ok()
    finally:
        st.stop()


def test_the_request_clock_stops_while_the_server_holds_the_client_back(
    model_store: tuple[Store, dict[str, ModelRecord]],
) -> None:
    # a client waiting for its 100 Continue behind a slow request, and requests left unread while 32 are
    # queued, are held back by the server: they got 408 once their first byte was older than the timeout
    store, records = model_store
    register_like(store, records["mlp"], "slow1500", tags={"delay_ms": "1500"})
    register_like(store, records["mlp"], "slow60", tags={"delay_ms": "60"})
    st = start(store, models=["slow1500", "slow60"], grpc_port=None, idle_timeout_s=0.4)
    body = json.dumps({"inputs": [good_input()]}).encode()
    try:
        with socket.create_connection(("127.0.0.1", st.http_port), timeout=10) as sock:
            sock.sendall(_request(body, "/v2/models/slow1500/infer"))
            sock.sendall(
                b"POST /v2/models/slow1500/infer HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\n"
                b"Content-Length: %d\r\n\r\n" % len(body)
            )
            sock.settimeout(10)
            seen = b""
            while b"100 Continue" not in seen:  # the first answer, then the interim one, before any body
                chunk = sock.recv(65536)
                assert chunk, seen
                seen += chunk
            assert seen.startswith(b"HTTP/1.1 200") and b"408" not in seen
            sock.sendall(body + b"GET /v2/health/live HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            rest = _read_response(sock, 10)
            assert rest.count(b"HTTP/1.1 200") == 2 and b"408" not in rest, rest
        get = b"GET /v2/health/live HTTP/1.1\r\nHost: x\r\n\r\n"
        last = _request(body, "/v2/models/slow60/infer", "Connection: close\r\n")
        with socket.create_connection(("127.0.0.1", st.http_port), timeout=10) as sock:
            sock.sendall(_request(body, "/v2/models/slow1500/infer") + get * 31)  # one answering, 31 queued
            time.sleep(0.1)
            sock.sendall(get + last[:10])  # 32 queued: reading pauses, and the 34th has begun
            time.sleep(0.02)
            sock.sendall(last[10:])  # unread until the slow answer is out, past the 34th's first deadline
            answers = _read_response(sock, 15)
            assert answers.count(b"HTTP/1.1 200") == 34 and b"408" not in answers, answers[-300:]
    finally:
        st.stop()


def test_binary_tensors_without_their_header_length_are_400_naming_the_header(raw: Raw) -> None:
    head = json.dumps({"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 16],
                                   "parameters": {"binary_data_size": 64}}]}).encode()  # fmt: skip
    status, _, data = raw.request("POST", INFER, head + bytes(64), {"Content-Type": "application/octet-stream"})
    check_error(raw, status, json.loads(data), 400, "Inference-Header-Content-Length")


@pytest.mark.parametrize("value", ["1_0", "+-10", " 1 0", "\u0661\u0660", "9" * 5000])
def test_a_header_length_that_is_not_plain_digits_is_400(raw: Raw, value: str) -> None:
    head = json.dumps({"inputs": [good_input()]}).encode()
    status, _, data = raw.request("POST", INFER, head, {"Inference-Header-Content-Length": value.encode()})  # type: ignore[dict-item]
    check_error(raw, status, json.loads(data), 400, "Inference-Header-Content-Length must be")


def test_a_header_length_with_a_plus_sign_is_read_as_triton_reads_it(raw: Raw) -> None:
    """tritonserver 2.51 reads the header with atoi: "+104" is 104 (bench/triton_parity.py; polystack refused it)."""
    head = json.dumps({"inputs": [good_input(data=None, parameters={"binary_data_size": 64})]}).encode()
    status, _, data = raw.request(
        "POST", INFER, head + bytes(64), {"Inference-Header-Content-Length": f"+{len(head)}".encode()}  # type: ignore[dict-item]
    )
    assert status == 200, data


def test_a_request_in_absolute_form_is_routed_by_its_path(server: ServerThread) -> None:
    """RFC 9112: a server must accept a request target in absolute form (what a client sends to a proxy)."""
    body = json.dumps({"inputs": [good_input()]}).encode()
    with socket.create_connection(("127.0.0.1", server.http_port), timeout=5) as sock:
        sock.sendall(
            f"POST http://127.0.0.1:{server.http_port}{INFER} HTTP/1.1\r\nHost: x\r\nContent-Length: {len(body)}\r\n"
            "Connection: close\r\n\r\n".encode() + body
        )
        answer = _read_response(sock)
    assert answer.startswith(b"HTTP/1.1 200"), answer[:200]


def test_an_http_1_0_client_asking_to_keep_alive_is_told_it_is_kept(server: ServerThread) -> None:
    with socket.create_connection(("127.0.0.1", server.http_port), timeout=5) as sock:
        sock.sendall(b"GET /v2/health/live HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
        sock.settimeout(5)
        head = sock.recv(65536)
        assert head.startswith(b"HTTP/1.1 200") and b"\r\nconnection: keep-alive\r\n" in head.lower(), head
        sock.sendall(b"GET /v2/health/live HTTP/1.0\r\n\r\n")  # the same connection, then closed (1.0's default)
        rest = _read_response(sock)
    assert rest.startswith(b"HTTP/1.1 200") and b"connection: close" in rest.lower(), rest


@pytest.mark.parametrize("codings", ["Transfer-Encoding: gzip, chunked", "Transfer-Encoding: gzip\r\nTransfer-Encoding: chunked"])
def test_a_transfer_coding_other_than_chunked_is_501(server: ServerThread, raw: Raw, codings: str) -> None:
    body = gzip.compress(json.dumps({"inputs": [good_input()]}).encode())
    chunked = b"%x\r\n%s\r\n0\r\n\r\n" % (len(body), body)
    with socket.create_connection(("127.0.0.1", server.http_port), timeout=5) as sock:
        sock.sendall(f"POST {INFER} HTTP/1.1\r\nHost: x\r\n{codings}\r\n\r\n".encode() + chunked)
        answer = _read_response(sock)
    assert answer.startswith(b"HTTP/1.1 501"), answer[:200]
    assert b"Content-Encoding" in answer
    raw.infer_ok()


def test_a_chunked_body_with_a_content_length_too_is_read_chunked_and_the_connection_closed(
    server: ServerThread, raw: Raw
) -> None:
    # helper-153: python-requests sends both when its caller sets Transfer-Encoding: chunked (Triton's
    # test_content_encoding_chunked_manually); tritonserver 2.51 answers it, polystack refused it 400. RFC 9112 6.3:
    # the chunked coding wins, and the connection closes after the answer (a request smuggled behind it is not read)
    body = json.dumps({"inputs": [good_input()]}).encode()
    chunked = b"%x\r\n%s\r\n0\r\n\r\n" % (len(body), body)
    smuggled = b"GET /v2/health/live HTTP/1.1\r\nHost: x\r\n\r\n"
    with socket.create_connection(("127.0.0.1", server.http_port), timeout=5) as sock:
        sock.sendall(
            f"POST {INFER} HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nContent-Length: {len(body)}\r\n\r\n".encode()
            + chunked + smuggled
        )  # fmt: skip
        sock.settimeout(5)
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    assert answer.startswith(b"HTTP/1.1 200") and b"connection: close" in answer.lower(), answer[:300]
    assert answer.count(b"HTTP/1.1 ") == 1, answer  # the bytes after it were not taken for a request
    raw.infer_ok()
