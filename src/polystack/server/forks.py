"""What a process forked from the server's starts with (a Python model's ``multiprocessing`` pool, ``os.fork``).

A fork copies the server's whole state, two parts of which act on the server from the child:

- its signal handling: asyncio's no-op handler for SIGTERM and SIGINT and its wakeup fd, a socket the child shares
  with the server's event loop, into which the child's C handler writes every signal it gets, so the *server* took a
  signal sent to the child (a pool's ``terminate()``) as its own and drained, and the child did not end (CPython issue
  94454: asyncio does not undo them in a child);
- its sockets: a child holding the listening ports and the clients' connections keeps a port taken after the server
  exits (a server started again fails "address already in use") and a connection open after the server closed it.

So every child starts with SIGTERM's default (``terminate()`` ends it), no notice of SIGINT (a terminal's Ctrl-C
reaches the whole process group: the server drains and its models' ``finalize`` stop what they forked; a worker ended
by it mid-task would lose the request it ran), no wakeup fd, and /dev/null in place of the server's sockets.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
from collections.abc import Collection

_ports: frozenset[int] = frozenset()  # the server's bound ports: its sockets are those of these local ports
_registered = False


def _take_no_notice(signum: int, frame: object) -> None:
    """A child's SIGINT. A handler, not SIG_IGN, so that a program the child executes starts with Ctrl-C."""


def _reset_signals() -> None:
    try:
        signal.set_wakeup_fd(-1)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        signal.signal(signal.SIGINT, _take_no_notice)
    except (ValueError, OSError):  # not Python's main interpreter: it has none of the server's handlers
        pass


def _servers_socket(fd: int) -> bool:
    """Whether ``fd`` is a TCP socket on one of the server's ports (a listener, or a client's connection to it)."""
    try:
        copy = os.dup(fd)
    except OSError:
        return False
    try:
        sock = socket.socket(fileno=copy)
    except OSError:  # not a socket
        os.close(copy)
        return False
    with sock:
        if sock.family not in (socket.AF_INET, socket.AF_INET6) or sock.type != socket.SOCK_STREAM:
            return False
        try:
            return int(sock.getsockname()[1]) in _ports
        except OSError:
            return False


def _drop_sockets() -> None:
    """/dev/null in place of the server's sockets: the descriptor numbers stay valid for the socket objects the child
    holds (closing them would let a descriptor the child opens later be closed in their name)."""
    if not _ports:
        return
    try:
        fds = [int(name) for name in os.listdir("/proc/self/fd")]
    except OSError:  # no /proc (not Linux): the child keeps them
        return
    null = -1
    try:
        for fd in fds:
            if _servers_socket(fd):
                if null < 0:
                    null = os.open(os.devnull, os.O_RDWR)
                os.dup2(null, fd, inheritable=False)
    except OSError:
        pass
    finally:
        if null >= 0:
            with contextlib.suppress(OSError):
                os.close(null)


def _in_child() -> None:
    _reset_signals()
    _drop_sockets()


def prepare() -> None:
    """Give every process forked from this one from now on what the module's docstring says (once a process)."""
    global _registered
    if not _registered and hasattr(os, "register_at_fork"):
        os.register_at_fork(after_in_child=_in_child)
        _registered = True


def serving(ports: Collection[int | None]) -> None:
    """The server's bound ports, whose sockets a child does not keep."""
    global _ports
    _ports = frozenset(p for p in ports if p)
