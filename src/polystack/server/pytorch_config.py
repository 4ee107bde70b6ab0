"""Triton's PyTorch backend settings in a model's config, as polystack's torchscript options.

Triton's PyTorch backend (pytorch_backend, ``ModelState::ParseParameters``) reads these ``parameters``: the
switches ``DISABLE_OPTIMIZED_EXECUTION``, ``INFERENCE_MODE`` (on unless turned off), ``ENABLE_TENSOR_FUSER``,
``ENABLE_JIT_PROFILING``, ``ENABLE_JIT_EXECUTOR`` (the last three leave torch's own setting where the config
does not give them), ``DISABLE_CUDNN``, ``ENABLE_WEIGHT_SHARING`` and ``ENABLE_CACHE_CLEANING``; and the thread
counts ``INTRA_OP_THREAD_COUNT`` and ``INTER_OP_THREAD_COUNT`` (torch's, process-wide; ``backends/torchscript.py``
says which holds).
A switch is ``true``, ``on`` or ``1``, or ``false``, ``off`` or ``0``, in any case; a count is a whole number, read
as C's ``stoi`` reads it (``4x`` is 4), and 0 or less leaves torch's. This module reads the same names and values,
refuses what that backend refuses in its words, and gives the options of polystack's torchscript backend
(``backends/torchscript.py``). ``DISABLE_CUDNN`` and ``ENABLE_CACHE_CLEANING`` change nothing here: cuDNN and
CUDA's cache are a GPU's. A model's instances each run their own copy of the module unless ``ENABLE_WEIGHT_SHARING``
is on, as in Triton. Other names are ignored, as Triton ignores them, with a warning.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

from polystack.errors import InvalidRequest
from polystack.server.backend_parameters import warn_unread

# switch -> (option, whether the option is the switch's opposite)
_SWITCHES = {
    "DISABLE_OPTIMIZED_EXECUTION": ("optimized_execution", True),
    "INFERENCE_MODE": ("inference_mode", False),
    "ENABLE_TENSOR_FUSER": ("tensor_fuser", False),
    "ENABLE_JIT_PROFILING": ("jit_profiling", False),
    "ENABLE_JIT_EXECUTOR": ("jit_executor", False),
    "DISABLE_CUDNN": ("", False),  # a GPU's
    "ENABLE_WEIGHT_SHARING": ("weight_sharing", False),  # one module for every instance
    "ENABLE_CACHE_CLEANING": ("", False),  # CUDA's cache
}
_THREADS = {"INTRA_OP_THREAD_COUNT": "intra_op_threads", "INTER_OP_THREAD_COUNT": "inter_op_threads"}
PARAMETERS = frozenset({*_SWITCHES, *_THREADS})
_MAX_THREADS = 1024
_STOI = re.compile(r"\s*([+-]?\d+)")


def switch(key: str, given: str) -> bool:
    """A switch's value, as Triton's ``ParseBoolValue`` reads it."""
    value = given.lower()
    if value in ("true", "on", "1"):
        return True
    if value in ("false", "off", "0"):
        return False
    raise InvalidRequest(f"failed to convert '{given}' to boolean (parameter {key}); give true or false")


def count(key: str, given: str) -> int:
    """A thread count, as Triton's ``ParseIntValue`` (C's ``stoi``) reads it."""
    match = _STOI.match(given)
    if match is None:
        raise InvalidRequest(f"failed to convert '{given}' to integral number (parameter {key}); give a whole number")
    return int(match.group(1))


# what the backend reads for AOTInductor packages (pt2/model_state.cc): the same switches and counts but the JIT's,
# cache cleaning by another name, and a library to load first, which polystack refuses
_AOTI_SWITCHES = {
    "INFERENCE_MODE": "inference_mode",
    "DISABLE_OPTIMIZED_EXECUTION": "",  # read and unused by the backend
    "DISABLE_CUDNN": "",  # a GPU's
    "ENABLE_WEIGHT_SHARING": "",  # a package's runners share its weights anyway
    "CACHE_CLEANING_ENABLED": "",  # CUDA's cache
}
_INIT_LIBRARY = "MODEL_INIT_LIBRARY"
AOTI_PARAMETERS = frozenset({*_AOTI_SWITCHES, *_THREADS, _INIT_LIBRARY})


def aoti_options(parameters: Sequence[tuple[str, str]]) -> dict[str, Any]:
    """The options of polystack's torch_aoti backend that do what Triton's PyTorch backend does with these
    ``parameters`` for an AOTInductor package; a library to load before the package (``MODEL_INIT_LIBRARY``) is
    refused."""
    warn_unread(parameters, AOTI_PARAMETERS, "Triton's PyTorch backend for AOTInductor packages")
    out: dict[str, Any] = {}
    for key, given in parameters:
        if key == _INIT_LIBRARY:
            raise InvalidRequest(
                f"parameter {key} names a library for the server to load and run ({given!r}), which polystack does not "
                "do; take it out, and do its set-up in the package's model"
            )
        if key in _AOTI_SWITCHES:
            value = switch(key, given)
            if _AOTI_SWITCHES[key]:
                out[_AOTI_SWITCHES[key]] = value
        elif key in _THREADS:
            out |= _threads(key, given)
    return out


def _threads(key: str, given: str) -> dict[str, int]:
    threads = count(key, given)
    if threads > _MAX_THREADS:
        raise InvalidRequest(f"parameter {key} is {threads}; polystack runs at most {_MAX_THREADS} threads")
    return {_THREADS[key]: threads} if threads > 0 else {}


def options(parameters: Sequence[tuple[str, str]], applied: bool = True) -> dict[str, Any]:
    """The options of polystack's torchscript backend that do what Triton's PyTorch backend does with these
    ``parameters`` (name, string value); each is checked whether or not it is ``applied`` (a TorchScript model a
    plan serves with another runtime: none is)."""
    warn_unread(parameters, PARAMETERS, "Triton's PyTorch backend")
    out: dict[str, Any] = {}
    for key, given in parameters:
        if key in _SWITCHES:
            option, opposite = _SWITCHES[key]
            value = switch(key, given)
            if option:
                out[option] = not value if opposite else value
        elif key in _THREADS:
            out |= _threads(key, given)
    return out if applied else {}
