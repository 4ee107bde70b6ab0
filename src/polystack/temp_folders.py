"""Folders a process owns while it runs (a Python model unpacked, a cloud repository's copy), marked by a locked file
beside each, so that the folders a process killed with SIGKILL (or out of memory) left behind can be told apart from
live ones and removed by a later process: the kernel releases the lock when its process ends, where a pid would not
tell a dead process from one in another container that shares the folder.

Written by hand: no library marks folders live across processes this way (tempfile's folders go only with their
process's own clean-up)."""

from __future__ import annotations

import contextlib
import shutil
import tempfile
import time
from pathlib import Path
from typing import IO

LOCK = ".lock"  # beside each folder: its name, then this
LEFT_AFTER_S = 60.0  # a folder this much older than its last change, unlocked, was left by a process that ended
_swept: dict[tuple[str, str], float] = {}  # by (parent, prefix): when this process last swept there (monotonic)


def lock_of(folder: Path) -> Path:
    return folder.with_name(folder.name + LOCK)


def hold(folder: Path) -> IO[str] | None:
    """Mark ``folder`` as this process's: an open file beside it, exclusively locked until it is closed or the process
    ends. None where there are no locks (not a POSIX system, a file system without them: the folder then goes at its
    owner's close alone); BlockingIOError where another live process holds it."""
    try:
        import fcntl
    except ImportError:
        return None
    owner = lock_of(folder).open("a")
    try:
        fcntl.flock(owner, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        owner.close()
        raise
    except OSError:  # ENOLCK: NFS mounted without locks, say
        owner.close()
        return None
    return owner


def make(prefix: str, parent: Path | None = None) -> tuple[Path, IO[str] | None]:
    """A new folder (``tempfile.mkdtemp``'s, in ``parent`` or the temporary folder) and the lock that marks it live;
    the folders left there by processes that ended are removed first (``sweep``)."""
    sweep(prefix, parent)
    folder = Path(tempfile.mkdtemp(prefix=prefix, dir=parent))
    owner = hold(folder)
    if owner is None:  # no locks here: no lock file, so that no sweep takes the folder for a dead process's
        lock_of(folder).unlink(missing_ok=True)
    return folder, owner


def release(folder: Path, owner: IO[str] | None, remove: bool = True) -> None:
    """Remove ``folder`` (unless ``remove`` is false: a copy kept) and give its lock up."""
    if remove:
        shutil.rmtree(folder, ignore_errors=True)
    if owner is not None:
        if remove:
            lock_of(folder).unlink(missing_ok=True)
        owner.close()


def sweep(prefix: str, parent: Path | None = None) -> None:
    """Remove the folders named ``prefix...`` in ``parent`` (the temporary folder) whose lock no live process holds and
    that did not change within ``LEFT_AFTER_S`` (a lock may be coming), once a minute at most in each process."""
    where = parent or Path(tempfile.gettempdir())
    key = (str(where), prefix)
    last = _swept.get(key)
    if last is not None and time.monotonic() - last < LEFT_AFTER_S:
        return
    _swept[key] = time.monotonic()
    try:
        import fcntl
    except ImportError:
        return
    with contextlib.suppress(OSError):
        for path in where.glob(f"{prefix}*"):
            lock = lock_of(path)
            with contextlib.suppress(OSError):  # another process's sweep, or one it cannot read
                if path.name.endswith(LOCK) or not path.is_dir() or not lock.is_file():
                    continue
                if time.time() - path.stat().st_mtime < LEFT_AFTER_S:
                    continue
                with lock.open("a") as held:
                    fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)  # raises while its process holds it
                    shutil.rmtree(path, ignore_errors=True)
                    lock.unlink(missing_ok=True)
