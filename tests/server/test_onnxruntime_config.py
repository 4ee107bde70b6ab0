"""onnxruntime_config on its own: the server-wide setting of Triton's ONNX Runtime backend (--backend-config).
Its model config parameters are tested with the config's reading (test_model_config.py)."""

from __future__ import annotations

import re

import pytest

from polystack.errors import InvalidRequest
from polystack.server.onnxruntime_config import default_max_batch_size, unread


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
        # Triton's words, which its L0_backend_config looks for (helper-176)
        ("default-max-batch-size=", "--backend-config option format is '<backend name>,<setting>=<value>'. Got "
         "default-max-batch-size=;"),
        ("default-max-batch-size", "option format is"),
        ("tensorflow,default-max-batch-size", "option format is"),
        ("onnxruntime,=3", "option format is"),
        ("default-max-batch-size=-1", "a whole number from 0"),
        ("default-max-batch-size=4x", "a whole number from 0"),
        ("default-max-batch-size=99999999999", "a whole number from 0"),
    ],
)
def test_a_backend_config_polystack_cannot_read_is_refused(item: str, says: str) -> None:
    with pytest.raises(InvalidRequest, match=re.escape(says) if "'" in says else says):
        default_max_batch_size([item])


def test_the_backends_other_settings_are_taken_and_said_to_change_nothing() -> None:
    """Triton starts with the ONNX Runtime backend's global thread pool settings, and ignores settings its backend
    does not know (L0_backend_config's general cases, helper-176); polystack exited 2 on both."""
    items = ["onnxruntime,enable-global-threadpool=1", "onnxruntime,intra_op_thread_count=4", "min-compute-capability=7",
             "onnxruntime,default-max-batch-size=2", "tensorflow,allow-soft-placement=0"]  # fmt: skip
    assert default_max_batch_size(items) == 2
    said = unread(items)
    assert [s.split(" (")[0] for s in said] == [
        "--backend-config onnxruntime,enable-global-threadpool=1", "--backend-config onnxruntime,intra_op_thread_count=4",
        "--backend-config min-compute-capability=7", "--backend-config tensorflow,allow-soft-placement=0",
    ]  # fmt: skip
    assert "threads of their own" in said[0] and "does not read either" in said[2]
    # another backend's setting is said too (helper-271: openvino's default-max-batch-size was taken in silence)
    assert unread(["openvino,default-max-batch-size=2"]) == [
        "--backend-config openvino,default-max-batch-size=2 (polystack reads no setting of Triton's openvino backend)"
    ]
