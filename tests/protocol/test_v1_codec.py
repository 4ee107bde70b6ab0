"""KServe's V1 protocol bodies (TensorFlow Serving's REST API): rows and columns in, predictions and outputs
out, each malformed body refused saying what is wrong."""

from __future__ import annotations

import json

import numpy as np
import orjson
import pytest

from polystack.errors import InvalidRequest, InvalidTensor
from polystack.protocol import v1_codec
from polystack.types import DType

ONE = {"x": DType.FP32}
TWO = {"ids": DType.INT64, "text": DType.BYTES}


def body(doc: object) -> bytes:
    return json.dumps(doc).encode()


def test_rows_of_a_one_input_model_stack_on_a_new_first_dimension() -> None:
    p = v1_codec.decode_predict(body({"instances": [[1, 2], [3, 4], [5, 6]]}), ONE)
    assert p.form == "row" and p.items == 3
    np.testing.assert_array_equal(p.request.inputs["x"], np.array([[1, 2], [3, 4], [5, 6]], np.float32))
    assert p.request.inputs["x"].dtype == np.float32
    # scalars per instance, and an instance as an object of the one input
    assert v1_codec.decode_predict(body({"instances": [1, 2]}), ONE).request.inputs["x"].shape == (2,)
    named = v1_codec.decode_predict(body({"instances": [{"x": [1, 2]}]}), ONE)
    np.testing.assert_array_equal(named.request.inputs["x"], [[1, 2]])


def test_rows_of_several_inputs_are_objects_and_bytes_may_be_base64() -> None:
    doc = {"instances": [{"ids": [1, 2], "text": "a"}, {"text": {"b64": "/wA="}, "ids": [3, 4]}]}
    p = v1_codec.decode_predict(body(doc), TWO)
    np.testing.assert_array_equal(p.request.inputs["ids"], np.array([[1, 2], [3, 4]], np.int64))
    assert p.request.inputs["text"].tolist() == [b"a", b"\xff\x00"]


def test_columns_are_whole_tensors_by_name_or_the_one_input() -> None:
    p = v1_codec.decode_predict(body({"inputs": {"ids": [[1]], "text": [["z"]]}}), TWO)
    assert p.form == "columnar" and p.request.inputs["ids"].shape == (1, 1)
    one = v1_codec.decode_predict(body({"inputs": [[1.5, 2.5]]}), ONE)
    np.testing.assert_array_equal(one.request.inputs["x"], np.array([[1.5, 2.5]], np.float32))


@pytest.mark.parametrize(
    ("doc", "inputs", "words"),
    [
        ([1, 2], ONE, "must be a JSON object"),
        ({}, ONE, 'as "instances" .* or "inputs"'),
        ({"instances": [[1]], "inputs": [[1]]}, ONE, "not both"),
        ({"instances": []}, ONE, "non-empty list"),
        ({"instances": [[1, 2], [3]]}, ONE, "different lengths at depth 1"),
        ({"instances": [[1, [2]], [3, 4]]}, ONE, "values and lists side by side at depth 2"),
        ({"instances": [[1, 2]]}, TWO, "takes 2 inputs .*an object of them by name"),
        ({"instances": [{"ids": [1], "text": "a"}, {"ids": [2]}]}, TWO, "every instance gives the same inputs"),
        ({"instances": [{"x": 1}, 2]}, ONE, "an object of inputs by name, or none is"),
        ({"inputs": [[1]]}, TWO, "an object of the model's inputs by name"),
        ({"instances": [{"ids": [1], "text": 5}]}, TWO, 'BYTES values are strings or {"b64"'),
        ({"instances": [{"ids": [1], "text": {"b64": "%%"}}]}, TWO, "is not base64"),
        ({"instances": [{"ids": [1.5], "text": "a"}]}, TWO, "INT64 data must hold integers only"),
        ({"instances": [["a"]]}, ONE, "FP32 data must hold numbers only"),
    ],
)
def test_malformed_bodies_are_refused_saying_what_is_wrong(doc: object, inputs: dict, words: str) -> None:
    with pytest.raises((InvalidRequest, InvalidTensor), match=words):
        v1_codec.decode_predict(body(doc), inputs)


def test_deep_nesting_is_a_clean_refusal() -> None:
    deep = "[" * 10_000 + "]" * 10_000
    with pytest.raises(InvalidRequest, match="not valid JSON"):
        v1_codec.decode_predict(f'{{"instances": {deep}}}'.encode(), ONE)


def test_predictions_are_the_one_output_or_objects_of_every_output() -> None:
    rows = v1_codec.decode_predict(body({"instances": [[1], [2]]}), ONE)
    one = orjson.loads(v1_codec.encode_predict({"y": np.array([[0.5], [1.5]], np.float32)}, rows))
    assert one == {"predictions": [[0.5], [1.5]]}
    outputs = {"label": np.array([b"cat", b"\xff"], dtype=object), "score": np.array([0.9, np.nan], np.float16)}
    many = orjson.loads(v1_codec.encode_predict(outputs, rows))
    # BYTES as text where it is UTF-8, else base64; NaN as null, as KServe's servers write it
    assert many == {"predictions": [{"label": "cat", "score": 0.89990234375}, {"label": {"b64": "/w=="}, "score": None}]}


def test_every_answer_is_predictions_as_kserves_servers_answer() -> None:
    """helper-77: KServe answers {"predictions": ...} whatever the request's form (TensorFlow Serving answers the
    columnar form {"outputs": ...}), and an output without a row per instance was a 400 after the model ran."""
    cols = v1_codec.decode_predict(body({"inputs": [[1], [2]]}), ONE)
    assert orjson.loads(v1_codec.encode_predict({"n": np.array(2, np.int64)}, cols)) == {"predictions": 2}
    rows = v1_codec.decode_predict(body({"instances": [[1], [2]]}), ONE)
    assert orjson.loads(v1_codec.encode_predict({"n": np.array([3], np.int64)}, rows)) == {"predictions": [3]}
    both = {"n": np.array(2, np.int64), "y": np.array([[1.0], [2.0]], np.float32)}
    assert orjson.loads(v1_codec.encode_predict(both, rows)) == {"predictions": {"n": 2, "y": [[1.0], [2.0]]}}


@pytest.mark.parametrize("datatype", [DType.FP32, DType.BYTES])
def test_nesting_past_a_tensors_dimensions_is_refused_in_one_line(datatype: DType) -> None:
    """helper-77: BYTES nested 65 deep was a 500 (numpy's 64 dimensions), FP32 a 400 listing every dimension."""
    deep = "[" * 70 + ('"a"' if datatype is DType.BYTES else "1") + "]" * 70
    with pytest.raises(InvalidTensor, match="nest deeper than 64 levels") as e:
        v1_codec.decode_predict(f'{{"instances": {deep}}}'.encode(), {"x": datatype})
    assert len(str(e.value)) < 200


def test_an_input_the_model_does_not_take_is_left_unread_to_the_models_checks() -> None:
    """helper-77, helper-78: its values were read in a guessed datatype, and refused for them before the model's
    check could name the input as one it does not take."""
    doc = {"instances": [{"x": [1.0], "z": [0, 0.5], "on": [True, 2], "n": [18446744073709551615], "b": {"b64": 5}}]}
    p = v1_codec.decode_predict(body(doc), ONE)
    assert p.request.inputs["x"].tolist() == [[1.0]]
    assert all(p.request.inputs[k].size == 0 for k in ("z", "on", "n", "b"))
