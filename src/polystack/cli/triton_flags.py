"""tritonserver's flags for what a polystack server does not have: GPU memory pools, shared-library
directories, thread pools of Triton's C++ front ends. ``serve`` takes them (hidden from ``--help``), checks
their values as tritonserver does, and says in one log line at start that they change nothing and why, so that
a launch script written for tritonserver starts polystack.

Written by hand: these are tritonserver's own names, values and meanings, which no library holds."""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping
from dataclasses import dataclass

from polystack.errors import InvalidRequest

_DEVICES = "CUDA memory and devices are the runtimes' own (ONNX Runtime, OpenVINO, torch), set by their plans"
_LIBRARIES = "polystack loads no shared-library repository agents or caches: its own are built in"
_FRONT_END = "the HTTP and gRPC front ends run on one event loop (--frontend-cpus pins it; --workers sizes inference)"


@dataclass(frozen=True)
class Flag:
    """One of tritonserver's flags: its value's kind (``int``, ``float``, ``bool``, ``pair``: ``<a>:<b>``
    or ``str``), why it changes nothing here, and Triton's range for its value where it checks one."""

    kind: str
    why: str
    low: int | None = None  # Triton's range for a whole number, where it checks one
    high: int | None = None


FLAGS: Mapping[str, Flag] = {
    "--pinned-memory-pool-byte-size": Flag("int", "no pinned host memory is used: " + _DEVICES),
    "--cuda-memory-pool-byte-size": Flag("pair", _DEVICES),
    "--cuda-virtual-address-size": Flag("pair", _DEVICES),
    "--min-supported-compute-capability": Flag("float", _DEVICES),
    "--enable-peer-access": Flag("bool", _DEVICES),
    "--model-load-gpu-limit": Flag("pair", _DEVICES),
    "--repoagent-directory": Flag("str", _LIBRARIES),
    "--cache-directory": Flag("str", _LIBRARIES),
    "--buffer-manager-thread-count": Flag("int", _FRONT_END),
    "--http-thread-count": Flag("int", _FRONT_END),
    "--grpc-infer-allocation-pool-size": Flag("int", _FRONT_END),
    "--grpc-infer-thread-count": Flag("int", _FRONT_END, low=2, high=128),
    "--grpc-max-response-pool-size": Flag("int", _FRONT_END, low=1),
    "--sagemaker-thread-count": Flag("int", "the SageMaker port is answered by the event loop, as HTTP is", low=1),
    "--vertex-ai-thread-count": Flag("int", "the Vertex AI port is answered by the event loop, as HTTP is", low=1),
}  # fmt: skip


def check(given: Mapping[str, list[str]]) -> list[str]:
    """The flags ``given`` (by name, their values as given), checked: the flags that change nothing, with why
    (for the start's log line). ``InvalidRequest``, naming the flag, for a value tritonserver would refuse."""
    said = []
    for name, values in given.items():
        flag = FLAGS[name]
        for value in values:
            check_value(name, flag.kind, value)
            low, high = flag.low, flag.high
            if (low is not None and int(value) < low) or (high is not None and int(value) > high):
                span = f"from {low}" + (f" to {high}" if high is not None else "")
                raise InvalidRequest(f"invalid argument for {name}: {value}; Triton takes {span}")
        if values:
            said.append(f"{name} ({flag.why})")
    return said


def check_resource(value: str) -> None:
    """A --rate-limit-resource value as tritonserver 2.51 checks it: ``<name>:<count>`` or ``<name>:<count>:<device>``
    (helper-119: polystack took any string)."""
    parts = value.split(":")
    if len(parts) not in (2, 3) or not parts[0]:
        raise InvalidRequest(  # Triton's words
            "--rate-limit-resource option format is '<resource_name>:<count>:<device>' or '<resource_name>:<count>'. "
            f"Got {value}"
        )
    for number in parts[1:]:
        if not re.fullmatch(r"[0-9]+", number):  # Triton's words (helper-128), then what to do
            raise InvalidRequest(
                f"--rate-limit-resource {value}: Invalid option value. Got {number}; give a whole number of 0 or more"
            )


def log_unused(said: list[str]) -> None:
    if said:
        logging.getLogger("polystack.server").info(
            "tritonserver flags taken that change nothing here", extra={"flags": said}
        )


def check_value(name: str, kind: str, value: str) -> None:
    """``value`` of flag ``name`` read as tritonserver reads a value of that ``kind``; ``InvalidRequest`` if not."""
    text = value.strip()
    try:
        if kind == "int":
            int(text)
        elif kind == "float":
            float(text)
        elif kind == "bool":
            from polystack.server.onnxruntime_config import triton_bool

            triton_bool(text)
        elif kind == "pair":
            first, sep, second = text.partition(":")
            if not sep:
                raise ValueError
            int(first)
            float(second)
    except (ValueError, InvalidRequest):
        what = {
            "int": "a whole number",
            "float": "a number",
            "bool": "1 or 0 (true or false)",
            "pair": "<device>:<value>",
        }[kind]
        raise InvalidRequest(f"{name} takes {what}, not {value!r}") from None
