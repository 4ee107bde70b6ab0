"""onnxruntime_config on its own: the server-wide setting of Triton's ONNX Runtime backend (--backend-config).
Its model config parameters are tested with the config's reading (test_model_config.py)."""

from __future__ import annotations

import pytest

from polystack.errors import InvalidRequest
from polystack.server.onnxruntime_config import default_max_batch_size


def test_default_max_batch_size_reads_tritons_backend_config_format() -> None:
    assert default_max_batch_size([]) is None
    assert default_max_batch_size(["default-max-batch-size=8"]) == 8
    # the backend's own wins over every backend's, whatever the order; the last wins among equals
    assert default_max_batch_size(["onnxruntime,default-max-batch-size=2", "default-max-batch-size=8"]) == 2
    assert default_max_batch_size(["default-max-batch-size=8", "default-max-batch-size=0"]) == 0
    # another backend's settings are not this backend's (polystack serves ONNX models)
    assert default_max_batch_size(["tensorflow,default-max-batch-size=16", "python,shm-default-byte-size=1"]) is None


@pytest.mark.parametrize(
    ("item", "says"),
    [
        (",default-max-batch-size=3", "No backend specified"),
        ("default-max-batch-size=", "option format is"),
        ("default-max-batch-size", "option format is"),
        ("onnxruntime,=3", "option format is"),
        ("onnxruntime,intra_op_thread_count=2", "polystack reads default-max-batch-size only"),
        ("enable-global-threadpool=1", "polystack reads default-max-batch-size only"),
        ("default-max-batch-size=-1", "a whole number from 0"),
        ("default-max-batch-size=4x", "a whole number from 0"),
        ("default-max-batch-size=99999999999", "a whole number from 0"),
    ],
)
def test_a_backend_config_polystack_cannot_read_is_refused(item: str, says: str) -> None:
    with pytest.raises(InvalidRequest, match=says):
        default_max_batch_size([item])
