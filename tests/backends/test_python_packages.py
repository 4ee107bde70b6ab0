"""A Python model's package, importable by name in a process started anew, until it is withdrawn."""

from __future__ import annotations

import importlib
import multiprocessing
import sys
from pathlib import Path

from polystack.backends import python_packages


def _run(name: str) -> tuple[str, str, str]:
    """In the new process: the package's model's answer, its model_dir attribute and the utils module it got."""
    module = importlib.import_module(f"{name}.model")
    utils = importlib.import_module(python_packages.UTILS)
    return module.answer(), sys.modules[name].__model_dir__, utils.__name__


def _imports(name: str) -> bool:
    try:
        importlib.import_module(f"{name}.model")
    except ModuleNotFoundError:
        return False
    return True


def test_a_published_package_imports_in_a_spawned_process_with_its_folder_on_the_path(tmp_path: Path) -> None:
    folder = tmp_path / "1"
    folder.mkdir()
    (folder / "helper.py").write_text("WORD = 'beside'\n")
    (folder / "model.py").write_text("from helper import WORD\n\n\ndef answer():\n    return WORD\n")
    name = "polystack_python_model_test_packages"
    python_packages.publish(name, folder, tmp_path, "__model_dir__")
    spawn = multiprocessing.get_context("spawn")
    with spawn.Pool(1) as pool:
        said, model_dir, utils = pool.apply(_run, (name,))
    assert (said, model_dir) == ("beside", str(tmp_path))
    assert utils == "polystack.backends.triton_python_utils"  # polystack's own module, by Triton's name
    python_packages.withdraw(name)
    with spawn.Pool(1) as pool:
        assert pool.apply(_imports, (name,)) is False


UNWRITABLE = """
import resource, signal, sys
from pathlib import Path
from polystack.backends import python_packages

root = python_packages._made()
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails (EFBIG) instead of ending the process
resource.setrlimit(resource.RLIMIT_FSIZE, (16, 16))
python_packages.publish("polystack_python_model_unwritable", Path(sys.argv[1]), Path(sys.argv[1]), "__model_dir__")
print(sorted(p.name for p in root.iterdir()))
"""


def test_a_package_that_cannot_be_written_leaves_nothing_and_only_warns(tmp_path: Path) -> None:
    """helper-248: an ``__init__.py`` that could not be written left its package's folder empty, a namespace
    package of nothing; now nothing is left of it, the model loads, and the log says what to do."""
    import subprocess

    done = subprocess.run(
        [sys.executable, "-c", UNWRITABLE, str(tmp_path)], capture_output=True, text=True, timeout=60,
        env={"TMPDIR": str(tmp_path), "PATH": "/usr/bin:/bin"},
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "['triton_python_backend_utils.py']"  # the package's folder went
    assert "cannot write the files" in done.stderr and "give TMPDIR a writable folder" in done.stderr
