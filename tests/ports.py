"""Ports for the servers the tests start, chosen below the kernel's ephemeral range.

A port the kernel picks for ``bind(0)`` lies in its ephemeral range, where every outgoing connection takes its
source port as well: between the test choosing such a port and its server binding it, a client's connection
can take it (CI once saw a gRPC server fail to bind one so). Below that range only listeners bind; this
process never hands out one port twice, and the start is random so that two test runs rarely meet.
"""

from __future__ import annotations

import os
import random
import socket
from pathlib import Path

_LOWEST = 20000
_handed: set[int] = set()
_pick = random.Random()


def _ephemeral_low() -> int:
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768  # Linux's default; elsewhere the range is above it too (49152 on macOS and Windows)


def _bindable(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _share(low: int, high: int) -> tuple[int, int]:
    """This pytest-xdist worker's part of ``[low, high)`` (``make test`` runs two): workers hand out ports apart, so
    one never binds a port another chose and has not bound yet."""
    worker, count = os.environ.get("PYTEST_XDIST_WORKER", ""), os.environ.get("PYTEST_XDIST_WORKER_COUNT", "")
    if not (worker.startswith("gw") and worker[2:].isdigit() and count.isdigit() and int(count) > 1):
        return low, high
    size = (high - low) // int(count)
    start = low + int(worker[2:]) % int(count) * size
    return start, start + size


def free_port() -> int:
    """A port on 127.0.0.1 that nothing holds now and no outgoing connection will take."""
    high = _ephemeral_low()
    if high - _LOWEST < 1000:  # a machine whose ephemeral range starts low: the kernel's choice is all there is
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = int(s.getsockname()[1])
        _handed.add(port)
        return port
    low, high = _share(_LOWEST, high)
    for _ in range(200):
        port = _pick.randrange(low, high)
        if port not in _handed and _bindable(port):
            _handed.add(port)
            return port
    raise RuntimeError(f"no free port on 127.0.0.1 between {_LOWEST} and {high} after 200 tries")
