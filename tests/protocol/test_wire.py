"""Wire forms shared by both transports."""

from __future__ import annotations

import tracemalloc

import numpy as np
import pytest

from polystack.errors import InvalidTensor
from polystack.protocol.wire import decode_bytes, encode_bytes, raw_view, to_raw


@pytest.mark.parametrize(
    "arr",
    [
        np.arange(6, dtype=np.float32).reshape(2, 3),
        np.arange(3, dtype=np.float16),
        np.arange(5, dtype=np.uint8),
        np.arange(4, dtype=np.int64).reshape(1, 4),
        np.array([[True, False, True]]),
        np.arange(4, dtype=">i4"),  # big-endian: swapped, so copied
        np.arange(6, dtype=np.float64).reshape(2, 3)[:, ::2],  # strided: copied
        np.array([[b"ab", b"c"]], dtype=object),  # BYTES: length-prefixed, so copied
        np.zeros((0, 4), np.float32),
    ],
)
def test_raw_view_is_the_wire_form_without_a_copy_where_it_can(arr: np.ndarray) -> None:
    view = raw_view(arr)
    assert bytes(view) == to_raw(arr)
    if isinstance(view, memoryview):
        assert np.shares_memory(np.frombuffer(view, np.uint8), arr)  # the array's own bytes


def test_a_small_slice_of_a_large_array_is_copied_not_kept() -> None:
    """One request's rows of a merged batch: a view would hold the whole batch until its client reads."""
    batch = np.arange(32 * 256, dtype=np.float32).reshape(32, 256)
    assert isinstance(raw_view(batch[3:4]), bytes)
    assert bytes(raw_view(batch[3:4])) == batch[3:4].tobytes()
    assert isinstance(raw_view(batch), memoryview) and isinstance(raw_view(batch[:20]), memoryview)


def test_a_shape_of_more_dimensions_than_a_tensor_has_is_refused_before_numpy_sees_it() -> None:
    from polystack.protocol.wire import MAX_DIMS, parse_shape

    assert parse_shape([1] * MAX_DIMS, "x") == (1,) * MAX_DIMS
    with pytest.raises(InvalidTensor, match="shape has 65 dimensions; a tensor has at most 32"):
        parse_shape([1] * 65, "x")  # numpy's limit is 64: it raised ValueError later, a 500


def test_a_tensor_name_longer_than_any_models_is_refused_over_grpc_too() -> None:
    from polystack.protocol import grpc_codec
    from polystack.protocol.grpc_gen import inference_pb2 as pb

    req = pb.ModelInferRequest(model_name="m")
    t = req.inputs.add(name="x" * 5000, datatype="FP32", shape=[1])
    t.contents.fp32_contents.append(1.0)
    with pytest.raises(InvalidTensor, match="an input is named with 5,000 characters") as e:
        grpc_codec.decode_infer_request(req)
    assert len(e.value.message) < 400  # the name is quoted short, not echoed whole


def test_bytes_tensors_are_read_and_written_without_a_python_list_beside_them() -> None:
    """helper-274: a BYTES tensor of millions of short strings took 45-64x its size in the server; the write held a
    list of every element and its length prefix (420 MB for 2 million 2-byte strings) before joining them."""
    n = 200_000
    raw = (len(b"ab").to_bytes(4, "little") + b"ab") * n
    tracemalloc.start()
    try:
        arr = decode_bytes("s", (n,), raw)
        read = tracemalloc.get_traced_memory()[1]
        tracemalloc.reset_peak()
        written = encode_bytes(arr)
        wrote = tracemalloc.get_traced_memory()[1] - tracemalloc.get_traced_memory()[0]
    finally:
        tracemalloc.stop()
    assert written == raw and arr.tolist() == [b"ab"] * n
    assert read < 60 * n  # the array's pointers and its bytes objects (~56 bytes each): no list of them beside
    assert wrote < 3 * len(raw)  # the buffer as it grows, and its copy: no objects per element
    # a shape of a billion elements with the data of one is refused, not allocated first
    tracemalloc.start()
    try:
        with pytest.raises(InvalidTensor, match="needs 1,000,000,000 BYTES elements but the data holds 1"):
            decode_bytes("s", (10**9,), raw[:6])
        assert tracemalloc.get_traced_memory()[1] < 1 << 20
    finally:
        tracemalloc.stop()
