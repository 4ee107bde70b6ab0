"""The packages a Python model's ``model.py`` is imported in, made importable by name in the processes the model
starts anew (a ``multiprocessing`` pool of the ``spawn`` or ``forkserver`` start method: Python 3.14's default).

polystack imports each instance's ``model.py`` as a module of a package of its own (``polystack_python_model_<hex>``,
python.py's ``_import``), which no file on ``sys.path`` names: a process started anew unpickles a function of the
model by its module's name, failed to import it, and its pool lost the task (the request waited for good). Each such
package gets a folder here, in one folder of the process's on ``sys.path`` (which such a process inherits), whose
``__init__.py`` points the package at the model's folder and puts that folder first on the new process's path, as
Triton's stub does for ``import helper``; ``triton_python_backend_utils`` is polystack's module there too.

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

_UTILS_SOURCE = '''"""polystack's triton_python_backend_utils, in a process a Python model started anew (in polystack's own
process a model's import of this name gets that module already)."""
import sys

from polystack.backends import triton_python_utils

sys.modules[__name__] = triton_python_utils
'''

_PACKAGE_SOURCE = '''"""The package of a Python model's model.py in polystack, in a process the model started anew."""
import sys as _sys

__path__ = [{folder!r}]
{attribute} = {model_dir!r}
if {folder!r} not in _sys.path:
    _sys.path.insert(0, {folder!r})
'''

_lock = threading.Lock()
_root: list[Path] = []  # the folder on sys.path, once made (none: not yet, or it could not be)
_tried: list[bool] = []


def publish(package: str, folder: Path, model_dir: Path, attribute: str) -> None:
    """Make ``package`` importable by name in processes started from this one from now on: its modules are those of
    ``folder``, and ``model_dir`` its ``attribute`` (what ``get_model_dir`` reads). Where no folder can be written, only a warning: the model
    serves, and only a process it starts anew cannot import its code."""
    root = _made()
    if root is None:
        return
    where = root / package
    where.mkdir(exist_ok=True)
    (where / "__init__.py").write_text(
        _PACKAGE_SOURCE.format(folder=str(folder), model_dir=str(model_dir), attribute=attribute)
    )


def withdraw(package: str) -> None:
    """``package``'s folder goes (its model was unloaded, or its import failed)."""
    if _root:
        shutil.rmtree(_root[0] / package, ignore_errors=True)


def _made() -> Path | None:
    with _lock:
        if _root or _tried:
            return _root[0] if _root else None
        _tried.append(True)
        try:
            root, owner = temp_folders.make(PREFIX)
            (root / f"{UTILS}.py").write_text(_UTILS_SOURCE)
        except OSError as e:
            log.warning(
                "cannot write the folder that makes Python models' code importable in the processes they start "
                "anew (%s): a spawn or forkserver pool of a model cannot run its functions; give TMPDIR a writable "
                "folder to have them", e
            )
            return None
        sys.path.append(str(root))  # last: it shadows nothing of the server's own
        atexit.register(_remove, root, owner, os.getpid())
        _root.append(root)
        return root


def _remove(root: Path, owner: IO[str] | None, pid: int) -> None:
    if os.getpid() == pid:  # not in a forked child that exits through the interpreter's exit
        temp_folders.release(root, owner)
