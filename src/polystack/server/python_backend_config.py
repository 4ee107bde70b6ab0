"""Triton's Python backend settings on tritonserver's command line (``--backend-config python,SETTING=VALUE``, or
``SETTING=VALUE`` for every backend): checked as that backend checks them, read for nothing.

Triton's Python backend runs each model instance in a stub process of its own, reached through a shared memory
region; its settings size those regions (``shm-default-byte-size``, ``shm-growth-byte-size``), name them
(``shm-region-prefix-name``), size their message queues (``shm_message_queue_size``), wait for a stub
(``stub-timeout-seconds``) and size its stubs' thread pools (``thread-pool-size``). polystack runs Python models
in the server's own process, so none of them changes anything; a launch script that sets them still starts, and
one with a value the backend refuses is refused here, at the start, in its words (where Python models may load).
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from polystack.errors import InvalidRequest
from polystack.server.backend_config import backend_setting

BACKEND = "python"
_MIB = 1024 * 1024
_LONG = 2**63 - 1
# what std::stol reads (its leading whitespace, a sign, digits: the rest is left unread, as the backend leaves it)
_STOL = re.compile(r"[ \t\n\v\f\r]*([+-]?[0-9]+)", re.ASCII)
_WHY = "polystack runs Python models in the server's process: no stub processes, no shared memory regions"


def unread(items: Sequence[str], checked: bool = True) -> list[str]:
    """The ``--backend-config`` values ``items`` that are Triton's Python backend settings, each with why it
    changes nothing (for the start's log line of flags that change nothing); where ``checked`` (a server that may
    load Python models, as Triton checks them as its first Python model loads), ``InvalidRequest`` for a value the
    backend refuses (its words, then what to give). A setting given for every backend is the Python backend's too."""
    said = []
    for item in items:
        backend, setting, value = backend_setting(item)
        if backend not in ("", BACKEND) or setting not in _CHECKS:
            continue
        if checked:
            _CHECKS[setting](item, setting, value)
        said.append(f"--backend-config {item} ({_WHY})")
    return said


def _whole(item: str, value: str, what: str) -> int:
    """``value`` read as std::stol reads it (its leading number), refused where it refuses it."""
    m = _STOL.match(value)
    if m is None:  # the backend's words (std::invalid_argument's), then what to give
        raise InvalidRequest(f"--backend-config {item}: stol: give {what}")
    number = int(m.group(1))
    if not -_LONG - 1 <= number <= _LONG:  # std::out_of_range, which the backend does not catch (it aborts)
        raise InvalidRequest(f"--backend-config {item}: the number is out of range: give {what}")
    return number


def _default_size(item: str, setting: str, value: str) -> None:
    # 1 MiB since Triton 23.09 (python_backend's own words still say 4: its check went down, its message did not)
    if _whole(item, value, "a whole number of bytes, 1 MiB (1048576) or more") < _MIB:
        raise InvalidRequest(f"--backend-config {item}: {setting} can't be smaller than 1 MiB; give 1048576 or more")


def _at_least_one(item: str, setting: str, value: str) -> None:
    if _whole(item, value, "a whole number of threads, 1 or more") < 1:
        raise InvalidRequest(f"--backend-config {item}: {setting} must be at least 1; give 1 or more")


def _positive(item: str, setting: str, value: str) -> None:
    if _whole(item, value, "a whole number above 0") <= 0:
        raise InvalidRequest(
            f"--backend-config {item}: {setting} can't be smaller than or equal to zero.; give a whole number above 0"
        )


def _prefix(item: str, setting: str, value: str) -> None:
    """Any name: an empty one, which the backend refuses, is refused as the flag's format is (no value)."""


def _queue_size(item: str, setting: str, value: str) -> None:
    _whole(item, value, "a whole number of messages")


_CHECKS = {
    "shm-default-byte-size": _default_size,
    "shm-growth-byte-size": _positive,
    "stub-timeout-seconds": _positive,
    "shm-region-prefix-name": _prefix,
    "shm_message_queue_size": _queue_size,
    "thread-pool-size": _at_least_one,  # the threads of an async execute's event loops
}
SETTINGS = frozenset(_CHECKS)
