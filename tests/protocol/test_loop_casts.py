"""Casts and bounds that keep the GIL on an event loop: the same values as numpy's whole calls, in pieces there."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest

from polystack.protocol import loop_casts
from polystack.protocol.loop_casts import HELD_UP_TO
from polystack.protocol.wire import from_raw
from polystack.types import DType


def on_a_loop(fn: Callable[[], Any]) -> Any:
    async def call() -> Any:
        return fn()

    return asyncio.run(call())


SIZES = [1, HELD_UP_TO, HELD_UP_TO + 1, 3 * HELD_UP_TO + 7]


@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize(
    ("source", "target"), [(np.float64, np.float32), (np.int64, np.int32), (np.float32, np.float64)]
)
def test_a_cast_on_a_loop_or_off_it_gives_numpys_values_and_shape(size: int, source: type, target: type) -> None:
    data = (np.random.default_rng(size).standard_normal(size) * 1000).astype(source).reshape(-1, 1)
    expected = data.astype(target)
    for cast in (on_a_loop(lambda: loop_casts.cast(data, np.dtype(target))), loop_casts.cast(data, np.dtype(target))):
        assert cast.dtype == target and cast.shape == data.shape
        np.testing.assert_array_equal(cast, expected)


def test_on_a_loop_arrays_past_numpys_limit_go_in_pieces_and_others_whole() -> None:
    big = np.zeros(HELD_UP_TO + 1)
    assert on_a_loop(lambda: loop_casts._in_pieces(big))
    assert not loop_casts._in_pieces(big)  # off a loop: whole, letting the loop run meanwhile
    assert not on_a_loop(lambda: loop_casts._in_pieces(big[:HELD_UP_TO]))  # numpy holds the GIL for these
    assert not on_a_loop(lambda: loop_casts._in_pieces(np.zeros((HELD_UP_TO + 1, 2))[:, 0]))  # flat would copy
    same = np.zeros(HELD_UP_TO + 1, np.float32)
    assert on_a_loop(lambda: loop_casts.cast(same, np.dtype(np.float32))) is same  # nothing to cast: no copy


def test_an_overflow_in_any_piece_raises_as_a_whole_cast_does() -> None:
    data = np.ones(3 * HELD_UP_TO)
    data[2 * HELD_UP_TO + 3] = 1e300  # in the third piece

    def narrowed() -> Any:
        with np.errstate(over="raise"):
            return loop_casts.cast(data, np.dtype(np.float32))

    with pytest.raises(FloatingPointError):
        on_a_loop(narrowed)
    with pytest.raises(FloatingPointError):
        narrowed()


@pytest.mark.parametrize("size", SIZES)
def test_bounds_are_the_least_and_greatest_elements(size: int) -> None:
    data = np.random.default_rng(size).integers(-(10**12), 10**12, size)
    expected = (data.min(), data.max())
    assert on_a_loop(lambda: loop_casts.bounds(data)) == expected
    assert loop_casts.bounds(data) == expected


def test_raw_bool_bytes_are_true_where_not_zero_on_a_loop_or_off_it() -> None:
    """A BOOL tensor's raw bytes, read through a cast: any non-zero byte is true, held as 1."""
    raw = bytes([0, 1, 2, 255] * HELD_UP_TO)
    expected = np.array([False, True, True, True] * HELD_UP_TO).reshape(HELD_UP_TO, 4)
    for arr in (
        on_a_loop(lambda: from_raw("b", DType.BOOL, (HELD_UP_TO, 4), raw)),
        from_raw("b", DType.BOOL, (HELD_UP_TO, 4), raw),
    ):
        assert arr.dtype == np.bool_
        np.testing.assert_array_equal(arr, expected)
        assert set(arr.view(np.uint8).reshape(-1).tolist()) == {0, 1}  # true is 1, not the byte sent
