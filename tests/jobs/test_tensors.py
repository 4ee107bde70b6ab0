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
