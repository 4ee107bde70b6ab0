"""Triton's classification extension: top-k classes as "value:index" strings, as Triton formats them."""

from __future__ import annotations

import numpy as np
import pytest

from polystack.errors import InvalidRequest
from polystack.protocol.classification import classify, parse_count, top_classes


def test_each_item_gets_its_top_classes_highest_first() -> None:
    values = np.array([[0.1, 0.7, 0.2], [0.5, -1.0, 3.25]], np.float32)
    got = top_classes("y", values, 2, batched=True)
    assert got.shape == (2, 2) and got.dtype == object
    assert got.tolist() == [[b"0.700000:1", b"0.200000:2"], [b"3.250000:2", b"0.500000:0"]]


def test_equal_values_keep_index_order_and_k_past_the_classes_returns_them_all() -> None:
    got = top_classes("y", np.array([[1, 5, 5, 0]], np.int64), 10, batched=True)
    assert got.tolist() == [[b"5:1", b"5:2", b"1:0", b"0:3"]]


def test_nan_ranks_below_every_number_and_equal_floats_keep_index_order() -> None:
    # a NaN score is no class at all: it ranked first before (an ascending sort puts NaN last, read backwards)
    nan, inf = float("nan"), float("inf")
    values = np.array([[nan, 0.5, -inf, nan, 0.0, -0.0, 0.5], [nan, nan, nan, 1.0, nan, nan, nan]], np.float32)
    got = top_classes("y", values, 7, batched=True)
    assert got.tolist() == [
        [b"0.500000:1", b"0.500000:6", b"0.000000:4", b"-0.000000:5", b"-inf:2", b"nan:0", b"nan:3"],
        [b"1.000000:3", b"nan:0", b"nan:1", b"nan:2", b"nan:4", b"nan:5", b"nan:6"],
    ]
    assert top_classes("y", values, 1, batched=True).tolist() == [[b"0.500000:1"], [b"1.000000:3"]]


def test_a_model_without_a_batch_dimension_classifies_the_whole_output() -> None:
    got = top_classes("y", np.array([[1.0, 4.0], [3.0, 2.0]]), 3, batched=False)
    assert got.shape == (3,) and got.tolist() == [b"4.000000:1", b"3.000000:2", b"2.000000:3"]


def test_unsigned_and_extreme_integers_order_correctly() -> None:
    got = top_classes("y", np.array([[0, 255, 7]], np.uint8), 2, batched=True)
    assert got.tolist() == [[b"255:1", b"7:2"]]
    got = top_classes("y", np.array([[-128, 127, 0]], np.int8), 1, batched=True)
    assert got.tolist() == [[b"127:1"]]


def test_non_numeric_outputs_and_bad_counts_are_refused() -> None:
    with pytest.raises(InvalidRequest, match="numeric"):
        top_classes("t", np.array([[b"a"]], dtype=object), 1, batched=True)
    for bad in (-2, True, "3", 1.5):
        with pytest.raises(InvalidRequest, match="non-negative integer"):
            parse_count(bad, "y")
    assert parse_count(3, "y") == 3
    assert parse_count(0, "y") == 0  # Triton's "no classification" (tritonserver 2.51, helper-106)


def test_labels_follow_the_index_where_the_model_has_one() -> None:
    values = np.array([[0.1, 0.7, 0.2, 0.9]], np.float32)
    got = top_classes("y", values, 3, batched=True, labels=["cat", "dog", "fish"])  # none for class 3
    assert got.tolist() == [[b"0.900000:3", b"0.700000:1:dog", b"0.200000:2:fish"]]
    blank = top_classes("y", values, 2, batched=True, labels=["cat", "dog", "fish", ""])  # a blank line: none
    assert blank.tolist() == [[b"0.900000:3", b"0.700000:1:dog"]]
    both = classify({"y": values, "z": values}, {"y": 1}, batched=True, labels={"z": ["a", "b", "c", "d"]})
    assert both["y"].tolist() == [[b"0.900000:3"]]  # labels of another output do not apply
    assert both["z"] is values  # not classified: returned as it was


def test_an_empty_batch_gets_an_empty_answer() -> None:
    got = top_classes("y", np.zeros((0, 4), np.float32), 2, batched=True)
    assert got.shape == (0, 2) and got.dtype == object
