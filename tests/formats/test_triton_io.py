"""Signatures from Triton configs (``formats/triton_io.py``), for models whose files do not say what they take:
the batch dimension where the config batches, a reshape's shape (what Triton hands the backend), and the
control inputs of sequence batching."""

from __future__ import annotations

import re

import pytest

from polystack.errors import InvalidModelFile, InvalidRequest
from polystack.formats.triton_io import signature
from polystack.types import DType


def test_a_batching_configs_tensors_take_the_batch_first_and_a_reshape_is_what_the_model_sees() -> None:
    config = {
        "max_batch_size": 4,
        "input": [{"name": "words", "data_type": "TYPE_STRING", "dims": [1], "reshape": {"shape": []}}],
        "output": [{"name": "y", "data_type": "TYPE_FP32", "dims": [2, 3]}],
        "sequence_batching": {
            "control_input": [{"name": "START", "control": [{"kind": "CONTROL_SEQUENCE_START", "int32_false_true": [0, 1]}]}]
        },
    }
    sig = signature(config, "a model")
    assert [(t.name, t.dtype, t.shape) for t in sig.inputs] == [
        ("words", DType.BYTES, (-1,)), ("START", DType.INT32, (-1, 1)),
    ]  # fmt: skip
    assert sig.outputs[0].shape == (-1, 2, 3)
    unbatched = signature({**config, "max_batch_size": 0}, "a model")
    assert unbatched.outputs[0].shape == (2, 3)


def test_a_control_inputs_type_is_that_of_its_values_not_of_the_empty_lists_get_config_shows() -> None:
    """GET config shows every control field, those not used as empty lists (as Triton prints them); an FP32 control
    read back from it was taken as INT32 (its empty int32_false_true listed first), and the load refused."""
    shown = {"kind": "CONTROL_SEQUENCE_START", "int32_false_true": [], "fp32_false_true": [0.0, 1.0],
             "bool_false_true": [], "data_type": "TYPE_INVALID"}  # fmt: skip
    corrid = {"kind": "CONTROL_SEQUENCE_CORRID", "int32_false_true": [], "fp32_false_true": [], "bool_false_true": [],
              "data_type": "TYPE_STRING"}  # fmt: skip
    config = {
        "max_batch_size": 0,
        "input": [{"name": "x", "data_type": "TYPE_FP32", "dims": [1]}],
        "output": [{"name": "y", "data_type": "TYPE_FP32", "dims": [1]}],
        "sequence_batching": {
            "control_input": [{"name": "START", "control": [shown]}, {"name": "CORRID", "control": [corrid]}]
        },
    }
    sig = signature(config, "a model")
    assert [(t.name, t.dtype) for t in sig.inputs] == [("x", DType.FP32), ("START", DType.FP32), ("CORRID", DType.BYTES)]


def test_a_config_without_its_tensors_says_what_it_lacks() -> None:
    with pytest.raises(InvalidModelFile, match="a TorchScript model's config lists its outputs"):
        signature({"input": [{"name": "x", "data_type": "TYPE_FP32", "dims": [1]}]}, "a TorchScript model")


@pytest.mark.parametrize(
    ("config", "says"),
    [
        ({"input": [5]}, "is not a tensor"),
        ({"input": [{"name": "S", "data_type": ["TYPE_STRING"], "dims": [1]}]}, "needs a name, a data_type"),
        ({"input": [{"name": "S", "data_type": {"a": 1}, "dims": [1]}]}, "needs a name, a data_type"),
        ({"input": [{"name": "S", "data_type": "TYPE_STRING", "dims": [{}]}]}, "dims: {} is not a whole number"),
        ({"input": [{"name": "S", "data_type": "TYPE_STRING", "dims": [[1]]}]}, "is not a whole number"),
        ({"input": [{"name": "S", "data_type": "TYPE_STRING", "dims": ["a"]}]}, "'a' is not a whole number"),
        ({"input": [{"name": "S", "data_type": "TYPE_STRING", "dims": [1.5]}]}, "1.5 is not a whole number"),
        ({"input": [{"name": "S", "data_type": "TYPE_FP32", "dims": [1], "reshape": {"shape": [True]}}]}, "reshape"),
        ({"input": "x"}, "must be a list of tensors"),
        ({"max_batch_size": [1]}, "max_batch_size: [1] is not a whole number"),
        ({"max_batch_size": "+-5"}, "'+-5' is not a whole number"),
        ({"max_batch_size": "9" * 5000}, "is not a whole number"),
        (
            {"input": [{"name": "S", "data_type": "TYPE_FP32", "dims": [1e300]}]},
            "is not a whole number from -9223372036854775808 to 9223372036854775807",
        ),
    ],
)
def test_a_config_whose_fields_hold_the_wrong_kind_of_value_is_refused_saying_which(config: dict, says: str) -> None:
    """helper-282: a load's config reached these as an AttributeError, TypeError or ValueError (a 500)."""
    with pytest.raises(InvalidRequest, match=re.escape(says)):  # InvalidModelFile, or a number's (whole's)
        signature({"backend": "python", **config}, "a Python model")


def test_whole_numbers_read_as_protobufs_json_reads_them_and_odd_controls_are_left_to_the_checks() -> None:
    config = {"max_batch_size": "4", "input": {"name": "x", "data_type": "TYPE_FP32", "dims": ["16", 2.0]},
              "sequence_batching": {"control_input": [5, {"name": "S", "control": "x"}]}}  # fmt: skip
    sig = signature(config, "a Python model")
    assert [(t.name, t.shape) for t in sig.inputs] == [("x", (-1, 16, 2)), ("S", (-1, 1))]
    assert signature({"sequence_batching": [1]}, "a Python model").inputs == ()
