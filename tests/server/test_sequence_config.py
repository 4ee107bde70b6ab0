"""A config's sequence_batching read on its own: the initial states a model directory gives."""

from __future__ import annotations

import pytest

from polystack.errors import InvalidRequest
from polystack.server import sequence_config
from polystack.types import DType


def test_a_variable_states_initial_dims_are_its_first_size_and_bounded() -> None:
    zero = {"data_type": "TYPE_FP32", "name": "s", "zero_data": True}
    assert sequence_config.initial_state([{**zero, "dims": [3]}], "S", DType.FP32, (-1,), "state", None)[3] == (3,)
    with pytest.raises(InvalidRequest, match=r"do not match the dims of state 'S', \[2, -1\]"):
        sequence_config.initial_state([{**zero, "dims": [3, 3]}], "S", DType.FP32, (2, -1), "state", None)
    with pytest.raises(InvalidRequest, match="is over 64 MiB a sequence"):
        sequence_config.initial_state([{**zero, "dims": [1 << 30]}], "S", DType.FP32, (-1,), "state", None)
