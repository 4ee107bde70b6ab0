"""Triton's host policies (``serve --host-policy <name>,<setting>=<value>``): the cores a model instance's threads
run on (``cpu-cores``) and the NUMA node its memory comes from (``numa-node``), as tritonserver sets them on each
instance's thread.

polystack applies one policy to every model instance: the one Triton applies to CPU instances whose instance group
names none, ``cpu``. Its ``cpu-cores`` are the runtime side of the server's CPU placement (``placement.py``, as
``--runtime-cpus``: batch workers, inference threads and the runtimes' own pools); its ``numa-node`` binds the
memory of the server's threads to that node (``set_mempolicy(MPOL_BIND)``, as Triton binds an instance thread's;
polystack's instances share one process, so the process's threads started from then on are bound). Policies of
other names (per instance group, or ``gpu_<n>`` for GPU instances) would need instances placed apart: refused.

Everything is checked at start, in Triton's words where it has some (Triton finds a bad value only when a model
loads), and a node this machine lacks is refused there too.
"""

from __future__ import annotations

import ctypes
import os
import platform
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from polystack.errors import InvalidRequest

DEFAULT = "cpu"  # the policy Triton applies to CPU instances whose group names none
SETTINGS = ("numa-node", "cpu-cores")
_NODES = Path("/sys/devices/system/node")
_MPOL_BIND = 2
_SET_MEMPOLICY = {"x86_64": 238, "aarch64": 237, "ppc64le": 261, "s390x": 237}  # the syscall's number by machine
_GET_MEMPOLICY = {"x86_64": 239, "aarch64": 236, "ppc64le": 260, "s390x": 236}


@dataclass(frozen=True)
class HostPolicy:
    """The ``cpu`` policy's settings: None where it gives none."""

    cpu_cores: frozenset[int] | None = None
    numa_node: int | None = None


def parse(values: Sequence[str]) -> HostPolicy | None:
    """``--host-policy`` values, as tritonserver reads them (a setting given twice: the last); None: none given."""
    if not values:
        return None
    policies: dict[str, dict[str, str]] = {}
    for value in values:
        name, comma, rest = value.partition(",")
        setting, equals, given = rest.partition("=")
        if not (comma and equals and name and setting and given):
            raise InvalidRequest(f"--host-policy option format is '<policy name>,<setting>=<value>'. Got {value}")
        if setting not in SETTINGS:  # Triton's words
            raise InvalidRequest(
                f"Unsupported host policy setting '{setting}' is specified, supported settings are 'numa-node', "
                "'cpu-cores'"
            )
        policies.setdefault(name, {})[setting] = given
    for name in policies:
        if name != DEFAULT:
            raise InvalidRequest(
                f"--host-policy {name},...: polystack applies one host policy to every model instance, the one Triton "
                f"applies to CPU instances, {DEFAULT!r}: give --host-policy {DEFAULT},<setting>=<value> (policies per "
                "instance group, or for GPU instances, are not in polystack)"
            )
    settings = policies[DEFAULT]
    cores = _cores(settings["cpu-cores"]) if "cpu-cores" in settings else None
    node = _node(settings["numa-node"]) if "numa-node" in settings else None
    return HostPolicy(cores, node)


def _int(what: str, text: str) -> int:
    """A number as Triton's ``std::stoi`` reads it (leading blanks and a sign; what follows the digits ignored)."""
    digits = text.lstrip()
    end = 1 if digits[:1] in ("+", "-") else 0
    while end < len(digits) and digits[end].isdigit():
        end += 1
    try:
        return int(digits[:end])
    except ValueError:
        raise InvalidRequest(f"Parsing '{what}' value: Can't parse '{text}' to integer") from None


def _cores(text: str) -> frozenset[int]:
    """``cpu-cores``: ranges ``<lower>-<upper>`` separated by commas, as Triton reads them (a single core is
    ``3-3``)."""
    cores: set[int] = set()
    for part in text.split(","):
        low, dash, high = part.partition("-")
        if not dash:
            raise InvalidRequest(  # Triton's words, then what to do
                f"host policy setting 'cpu-cores' format is '<lower_cpu_core_id>-<upper_cpu_core_id>'. Got {part}; "
                "write one core as 3-3"
            )
        first, last = _int("cpu-cores", low), _int("cpu-cores", high)
        if first < 0 or last < first:
            raise InvalidRequest(f"host policy setting 'cpu-cores' {part}: give a range of cores, low to high")
        cores.update(range(first, last + 1))
    return frozenset(cores)


def nodes() -> list[int]:
    """This machine's NUMA nodes (Linux); [0] where it says none."""
    found = sorted(int(p.name[4:]) for p in _NODES.glob("node[0-9]*")) if _NODES.is_dir() else []
    return found or [0]


def _node(text: str) -> int:
    node = _int("numa-node", text)
    known = nodes()
    if node not in known:
        raise InvalidRequest(
            f"host policy setting 'numa-node' {node}: this machine's NUMA nodes are {', '.join(map(str, known))}; "
            "give one of them (numactl --hardware lists them)"
        )
    return node


def bind_memory(node: int) -> None:
    """Bind the memory the calling thread allocates from now on, and that of the threads it starts, to NUMA node
    ``node`` (``set_mempolicy(MPOL_BIND)``, as Triton binds an instance thread's)."""
    mask = _mask(node)
    number = _SET_MEMPOLICY.get(platform.machine())
    if number is None or not hasattr(os, "sched_setaffinity"):
        raise InvalidRequest(f"--host-policy {DEFAULT},numa-node needs Linux on {', '.join(_SET_MEMPOLICY)}")
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.syscall(number, _MPOL_BIND, mask, ctypes.c_ulong(len(mask) * 64)) != 0:  # Triton's words
        raise InvalidRequest(f"Unable to set NUMA memory policy: {os.strerror(ctypes.get_errno())}")


def memory_policy() -> tuple[int, frozenset[int]]:
    """The calling thread's memory policy: its mode (0 default, 2 bind) and its nodes."""
    number = _GET_MEMPOLICY[platform.machine()]
    mode, mask = ctypes.c_int(0), (ctypes.c_ulong * (max(nodes()) // 64 + 1))()
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.syscall(number, ctypes.byref(mode), mask, ctypes.c_ulong(len(mask) * 64), None, ctypes.c_ulong(0)) != 0:
        raise OSError(ctypes.get_errno(), os.strerror(ctypes.get_errno()))
    return mode.value, frozenset(i for i in range(len(mask) * 64) if mask[i // 64] >> (i % 64) & 1)


def _mask(node: int) -> ctypes.Array[ctypes.c_ulong]:
    """A node mask with ``node`` set, as the kernel reads one (unsigned longs, lowest node first)."""
    mask = (ctypes.c_ulong * (node // 64 + 1))()
    mask[node // 64] = 1 << (node % 64)
    return mask
