"""python_backend_config on its own: Triton's Python backend settings (``--backend-config python,...``), checked as
that backend checks them and said to change nothing, as polystack runs Python models in its own process."""

from __future__ import annotations

import pytest

from polystack.errors import InvalidRequest
from polystack.server import onnxruntime_config, python_backend_config


def test_the_python_backends_settings_are_taken_and_said_to_change_nothing() -> None:
    """helper-226 (L0_backend_python's test_shared_memory.sh): polystack took any value without a word, and said a
    setting given for every backend was one Triton's ONNX Runtime backend does not read, where its Python backend
    reads it."""
    items = ["python,shm-default-byte-size=1048576", "python,shm-growth-byte-size=1", "stub-timeout-seconds=30",
             "thread-pool-size=8",
             "python,shm-region-prefix-name=p", "python,shm_message_queue_size=1000", "onnxruntime,x=1",
             # a launch script's two settings in one flag: the backend reads the first's leading number, so starts
             "python,shm-default-byte-size=104857600,shm-growth-byte-size=10485760"]  # fmt: skip
    said = python_backend_config.unread(items)
    assert [s.split(" (")[0].removeprefix("--backend-config ") for s in said] == [
        item for item in items if item != "onnxruntime,x=1"
    ]
    assert all("in the server's process" in s for s in said)
    # a setting for every backend is said once, as the Python backend's
    assert onnxruntime_config.unread(items, python_backend_config.SETTINGS) == [
        "--backend-config onnxruntime,x=1 (a setting Triton's ONNX Runtime backend does not read either)"
    ]


@pytest.mark.parametrize(
    ("item", "says"),
    [  # the backend's words (tritonserver 2.51 exits 1 with them), then what to give
        ("python,shm-default-byte-size=abc", "stol: give a whole number of bytes, 1 MiB (1048576) or more"),
        ("python,shm-default-byte-size=1048575", "shm-default-byte-size can't be smaller than 1 MiB; give 1048576 or"),
        ("shm-default-byte-size=-1", "shm-default-byte-size can't be smaller than 1 MiB"),
        ("python,shm-default-byte-size=\u0661\u0662", "stol"),  # digits std::stol does not read
        ("python,thread-pool-size=0", "thread-pool-size must be at least 1"),
        ("python,shm-growth-byte-size=0", "shm-growth-byte-size can't be smaller than or equal to zero."),
        ("python,stub-timeout-seconds=x", "stol: give a whole number above 0"),
        ("python,shm_message_queue_size=99999999999999999999", "the number is out of range"),
    ],
)
def test_a_value_the_python_backend_refuses_is_refused_in_its_words(item: str, says: str) -> None:
    with pytest.raises(InvalidRequest) as caught:
        python_backend_config.unread([item])
    assert caught.value.message.startswith(f"--backend-config {item}: ") and says in caught.value.message


def test_a_server_that_serves_no_python_model_takes_any_value_as_triton_starts_with_it() -> None:
    """Triton checks them as its first Python model loads (helper-229): a server without --allow-python-models
    loads none, so it says they change nothing and starts."""
    said = python_backend_config.unread(["python,shm-default-byte-size=abc"], checked=False)
    assert said[0].startswith("--backend-config python,shm-default-byte-size=abc (")


def test_an_empty_region_prefix_is_refused_as_the_flags_format_is() -> None:
    with pytest.raises(InvalidRequest, match="--backend-config option format is"):
        python_backend_config.unread(["python,shm-region-prefix-name="])
