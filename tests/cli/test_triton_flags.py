"""tritonserver's flags for what polystack does not have (``polystack.cli.triton_flags``): taken and said to
change nothing, values checked as tritonserver checks them, features polystack lacks refused by name."""

from __future__ import annotations

import pytest

from polystack.cli import triton_flags
from polystack.errors import InvalidRequest


def test_flags_that_change_nothing_are_said_with_why() -> None:
    said = triton_flags.check({
        "--pinned-memory-pool-byte-size": ["268435456"],
        "--cuda-memory-pool-byte-size": ["0:67108864", "1:0"],
        "--repoagent-directory": ["/opt/tritonserver/repoagents"],
        "--http-thread-count": [],
    })  # fmt: skip
    assert [s.split(" (")[0] for s in said] == [
        "--pinned-memory-pool-byte-size", "--cuda-memory-pool-byte-size", "--repoagent-directory",
    ]  # fmt: skip
    assert "CUDA memory and devices are the runtimes' own" in said[1]


@pytest.mark.parametrize(
    ("flag", "value", "words"),
    [
        ("--pinned-memory-pool-byte-size", "lots", "takes a whole number, not 'lots'"),
        ("--cuda-memory-pool-byte-size", "67108864", "takes <device>:<value>, not '67108864'"),
        ("--enable-peer-access", "maybe", "takes 1 or 0 (true or false)"),
        ("--vertex-ai-thread-count", "0", "invalid argument for --vertex-ai-thread-count: 0; Triton takes from 1"),
        ("--sagemaker-thread-count", "0", "invalid argument for --sagemaker-thread-count: 0; Triton takes from 1"),
        ("--grpc-infer-thread-count", "1", "invalid argument for --grpc-infer-thread-count: 1; Triton takes from 2 to 128"),
        ("--grpc-max-response-pool-size", "0", "Triton takes from 1"),
    ],
)
def test_values_tritonserver_refuses_or_features_polystack_lacks_are_refused(flag: str, value: str, words: str) -> None:
    with pytest.raises(InvalidRequest, match=words.replace("(", r"\(").replace(")", r"\)")):
        triton_flags.check({flag: [value]})
