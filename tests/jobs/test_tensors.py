"""Input columns as the model's tensors: text cells read as the column's fast cast reads them, cell by cell."""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from polystack.jobs.tensors import Binding, to_tensors
from polystack.types import DType, TensorSpec


def test_one_bad_text_cell_costs_its_row_alone_and_the_others_read_as_the_fast_cast_reads_them() -> None:
    """A column with one cell the fast cast refuses is read cell by cell; that read refused 'true' for BOOL and '5.0'
    for INT64, so one bad cell cost every row (helper-270: 1 written and 3 bad of 4)."""
    batch = pa.record_batch({"b": ["true", "FALSE", "1", "yes"], "i": ["5.0", "7", "-2", "5.5"]})
    bindings = [Binding(TensorSpec("b", DType.BOOL, (-1,)), ("b",)), Binding(TensorSpec("i", DType.INT64, (-1,)), ("i",))]
    converted = to_tensors(batch, bindings)
    assert converted.bad == {3: "input 'b': value 'yes' is not BOOL"}
    [(rows, tensors)] = converted.groups
    assert rows.tolist() == [0, 1, 2]
    np.testing.assert_array_equal(tensors["b"], [True, False, True])
    np.testing.assert_array_equal(tensors["i"], [5, 7, -2])


def test_a_number_past_its_datatype_costs_its_row_where_a_cast_would_wrap_it_or_make_it_infinite() -> None:
    """helper-270: 1e300 for an FP32 input was scored as inf; an INT8 input's 300 wrapped to 44."""
    types = {"f": DType.FP32, "i": DType.INT8, "u": DType.UINT8}
    bindings = [Binding(TensorSpec(n, t, (-1,)), (n,)) for n, t in types.items()]
    numbers = pa.record_batch(
        {"f": [1.5, 1e300, -1e300, float("inf"), 2.0], "i": [300, 5, -129, 7, 1], "u": [1, 2, 3, -1, 0]}
    )
    texts = pa.record_batch(
        {"f": ["1.5", "1e300", "2", "inf", "3"], "i": ["3", "5", "-129", "7", "1"], "u": ["1", "2", "3", "4", "0"]}
    )
    odd_text = pa.record_batch(
        {"f": ["abc", "1e300", "2", "inf", "3"], "i": ["3", "5", "7", "9", "1"], "u": ["1", "2", "3", "4", "0"]}
    )
    for batch, want in (
        (numbers, {
            0: "input 'i': value 300 does not fit INT8 (-128..127)",
            1: "input 'f': value 1e+300 does not fit FP32 (largest magnitude 3.40282e+38)",
            2: "input 'f': value -1e+300 does not fit FP32 (largest magnitude 3.40282e+38)",
            3: "input 'u': value -1 does not fit UINT8 (0..255)",
        }),
        (texts, {
            1: "input 'f': value 1e+300 does not fit FP32 (largest magnitude 3.40282e+38)",
            2: "input 'i': value -129 does not fit INT8 (-128..127)",
        }),
        (odd_text, {0: "input 'f': value 'abc' is not FP32", 1: "input 'f': value '1e300' is not FP32"}),
    ):  # fmt: skip
        converted = to_tensors(batch, bindings)
        assert converted.bad == want
        [(rows, tensors)] = converted.groups
        good = rows.tolist()
        assert good == [r for r in range(5) if r not in want]
        # what is scored is what was sent; infinity sent as such is infinity
        sent = [float(v) for k, v in enumerate(batch.column("f").to_pylist()) if k in good]
        np.testing.assert_array_equal(tensors["f"], np.asarray(sent, "f4"))
