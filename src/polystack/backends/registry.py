"""Backend discovery through the ``polystack.backends`` entry-point group, imported lazily.

Importing a backend module never imports its runtime; a runtime that is not installed makes its
backend report ``available() == False``, never an import error.
"""

from __future__ import annotations

import functools
import importlib.metadata

from polystack.backends.base import Backend
from polystack.errors import BackendUnavailable

GROUP = "polystack.backends"


@functools.cache
def _entry_points() -> dict[str, importlib.metadata.EntryPoint]:
    return {ep.name: ep for ep in importlib.metadata.entry_points(group=GROUP)}


def names() -> list[str]:
    """Every backend known to this installation, installed runtime or not."""
    return sorted(_entry_points())


@functools.cache
def get(name: str) -> Backend:
    try:
        ep = _entry_points()[name]
    except KeyError:
        raise BackendUnavailable(f"no backend named {name!r}; known backends: {', '.join(names())}") from None
    cls = ep.load()
    if not (isinstance(cls, type) and issubclass(cls, Backend)):
        raise BackendUnavailable(f"entry point {name!r} in {GROUP} is not a polystack Backend")
    return cls()


def require(name: str) -> Backend:
    """The backend ``name``, which must be installed and usable here."""
    backend = get(name)
    if not backend.available():
        raise BackendUnavailable(
            f"backend {name!r} is not installed here; install its runtime "
            f"(pip install 'polystack[{name}]' or its package) and retry"
        )
    return backend


def available() -> list[Backend]:
    return [get(n) for n in names() if get(n).available()]


def for_format(format: str) -> list[Backend]:
    """Installed backends that load ``format``, in the registry's preference order (null last)."""
    found = [b for b in available() if b.accepts(format) and b.name != "null"]
    return sorted(found, key=lambda b: PREFERENCE.index(b.name) if b.name in PREFERENCE else len(PREFERENCE))


# Used when no plan says otherwise: the runtime most likely to be fast and exact for a format.
PREFERENCE = ["onnxruntime", "openvino", "torch", "torchscript", "torch_aoti", "jax", "xgboost", "lightgbm", "sklearn", "litert"]
