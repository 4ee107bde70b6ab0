"""The packages a Python model's ``model.py`` is imported in, made importable by name in the processes the model
starts anew (a ``multiprocessing`` pool of the ``spawn`` or ``forkserver`` start method: Python 3.14's default).

polystack imports each instance's ``model.py`` as a module of a package of its own (``polystack_python_model_<hex>``,
python.py's ``_import``), which no file on ``sys.path`` names: a process started anew unpickles a function of the
model by its module's name, failed to import it, and its pool lost the task (the request waited for good). Each such
package gets a folder here, in one folder of the process's on ``sys.path`` (which such a process inherits), whose
``__init__.py`` points the package at the model's folder and adds that folder to the new process's path, as
Triton's stub does (``import helper``); ``triton_python_backend_utils`` is polystack's module there too (its
``Logger`` logs nowhere there: the server's log handlers are the server's).

Written by hand: the import system needs the files, and no library writes them."""

from __future__ import annotations

import atexit
import logging
import os
import shutil
import sys
import threading
from pathlib import Path
from typing import IO

from polystack import temp_folders

log = logging.getLogger(__name__)

PREFIX = "polystack-model-packages-"
UTILS = "triton_python_backend_utils"

_UTILS_SOURCE = '''"""polystack's triton_python_backend_utils, in a process a Python model started anew (in
polystack's own process a model's import of this name gets that module already)."""
import sys

from polystack.backends import triton_python_utils

sys.modules[__name__] = triton_python_utils
'''

_PACKAGE_SOURCE = '''"""The package of a Python model's model.py in polystack, in a process the model started anew."""
import sys as _sys

__path__ = [{folder!r}]
{attribute} = {model_dir!r}
if {folder!r} not in _sys.path:  # last, as Triton's stub adds it: a model's file shadows no library's module
    _sys.path.append({folder!r})
'''

_lock = threading.Lock()
_root: Path | None = None  # the folder on sys.path, once made


def publish(package: str, folder: Path, model_dir: Path, attribute: str) -> None:
    """Make ``package`` importable by name in processes started from this one from now on: its modules are those of
    ``folder``, and ``model_dir`` its ``attribute`` (what ``get_model_dir`` reads). Where nothing can be written,
    a warning (and nothing left half written): the model serves, and only a process it starts anew cannot import
    its code."""
    root = _made()
    if root is None:
        return
    try:
        (root / package).mkdir(exist_ok=True)
        (root / package / "__init__.py").write_text(
            _PACKAGE_SOURCE.format(folder=str(folder), model_dir=str(model_dir), attribute=attribute),
            encoding="utf-8",
        )
    except OSError as e:
        withdraw(package)  # an empty folder would be a namespace package of nothing
        _unwritable(e)


def withdraw(package: str) -> None:
    """``package``'s folder goes (its model was unloaded, or its import failed)."""
    if _root is not None:
        shutil.rmtree(_root / package, ignore_errors=True)


def _made() -> Path | None:
    """The folder on ``sys.path``, made the first time it is needed (None: it could not be now; a later model's
    import tries again, a full disk being freed meanwhile)."""
    global _root
    with _lock:
        if _root is not None:
            return _root
        try:
            root, owner = temp_folders.make(PREFIX)
        except OSError as e:
            _unwritable(e)
            return None
        try:
            (root / f"{UTILS}.py").write_text(_UTILS_SOURCE, encoding="utf-8")
        except OSError as e:
            temp_folders.release(root, owner)
            _unwritable(e)
            return None
        sys.path.append(str(root))  # last: it shadows nothing of the server's own
        atexit.register(_remove, root, owner, os.getpid())
        _root = root
        return root


def _unwritable(e: OSError) -> None:
    log.warning(
        "cannot write the files that make a Python model's code importable in the processes it starts anew (%s): "
        "tasks its spawn or forkserver pool is given are lost, and wait for good unless the model sets a timeout; "
        "give TMPDIR a writable folder with room and load the model again",
        e,
    )


def _remove(root: Path, owner: IO[str] | None, pid: int) -> None:
    if os.getpid() == pid:  # not in a forked child that exits through the interpreter's exit
        temp_folders.release(root, owner)
