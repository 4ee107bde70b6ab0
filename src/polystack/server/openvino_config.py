"""Triton's OpenVINO backend settings in a model's config, as polystack's openvino options.

Triton's OpenVINO backend (openvino_backend, ``src/openvino.cc``) reads these ``parameters`` of a config, their
values in any case: ``INFERENCE_NUM_THREADS``, ``COMPILATION_NUM_THREADS`` (whole numbers; the second is checked and not applied,
as OpenVINO's CPU plugin refuses it), ``HINT_BF16``
(``YES``), ``NUM_STREAMS`` (``AUTO``, ``NUMA`` or a number), ``PERFORMANCE_HINT`` (``LATENCY``,
``THROUGHPUT``, ``CUMULATIVE_THROUGHPUT``), the switches ``SKIP_OV_DYNAMIC_BATCHSIZE``,
``ENABLE_BATCH_PADDING`` and ``RESHAPE_IO_LAYERS`` (``YES`` turns one on, anything else leaves it off), and
``CPU_EXTENSION_PATH`` (a shared library of custom layers). This module reads the same names and values,
refuses what that backend refuses in its words, and gives the options of polystack's openvino backend
(``backends/openvino.py``) that do the same, so that a config written for Triton's OpenVINO backend loads
unchanged. The switches change nothing here: polystack runs each batch at the size it has (the IR's batch
dimension stays dynamic, where Triton's backend fixes it at max_batch_size and pads or refuses smaller
batches), and a config's dims are checked against the model's, as for every runtime. An extension library is
refused: polystack loads no shared library a config names.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from polystack.errors import InvalidRequest, quote
from polystack.server import onnxruntime_config
from polystack.server.backend_parameters import warn_unread

_HINTS = {"latency": "LATENCY", "throughput": "THROUGHPUT", "cumulative_throughput": "CUMULATIVE_THROUGHPUT"}
# COMPILATION_NUM_THREADS is checked, not applied: OpenVINO's CPU plugin here refuses it (Unsupported property)
_THREADS = {"INFERENCE_NUM_THREADS": "inference_num_threads", "COMPILATION_NUM_THREADS": ""}
# read as Triton's backend reads them ("yes" is on), and changing nothing here (the module's docstring says why)
_SWITCHES = frozenset({"SKIP_OV_DYNAMIC_BATCHSIZE", "ENABLE_BATCH_PADDING", "RESHAPE_IO_LAYERS"})
_EXTENSION = "CPU_EXTENSION_PATH"
PARAMETERS = frozenset({*_THREADS, "HINT_BF16", "NUM_STREAMS", "PERFORMANCE_HINT", *_SWITCHES, _EXTENSION})
_MAX_THREADS = 1024


def options(parameters: Sequence[tuple[str, str]], device: str) -> dict[str, Any]:
    """The options of polystack's openvino backend that do what Triton's OpenVINO backend does with these
    ``parameters`` (name, string value) for a model on ``device``. As in Triton, the device settings are read
    for a CPU only; elsewhere they are neither checked nor applied."""
    onnx_only = sorted(k for k, _ in parameters if k in onnxruntime_config.PARAMETERS)
    if onnx_only:
        raise InvalidRequest(
            f"the config sets {', '.join(f'parameter {quote(k)}' for k in onnx_only)} of Triton's ONNX Runtime "
            "backend, but polystack serves this model with 'openvino' (a config's backend openvino chose it, or else "
            "its plan for this profile: a backend onnxruntime leaves the runtime to the plan); leave them out, or set "
            "the OpenVINO backend's (NUM_STREAMS, INFERENCE_NUM_THREADS, PERFORMANCE_HINT, HINT_BF16)"
        )
    warn_unread(parameters, PARAMETERS, "Triton's OpenVINO backend")
    out: dict[str, Any] = {}
    for key, given in parameters:
        value = given.lower()
        if key == _EXTENSION and given:
            raise InvalidRequest(
                f"the config's parameter {_EXTENSION} names {quote(given)}, a library of custom layers, which "
                "polystack does not load (it runs no shared library a config names); save the model without them"
            )
        if key not in PARAMETERS or key in _SWITCHES or not value or not device.startswith("cpu"):
            continue
        if key in _THREADS:
            if not (value.isascii() and value.isdigit()):  # Triton's words, then what to do
                raise InvalidRequest(
                    f"expected the parameter '{key}' to be a non-negative number, got {value}; give a whole number "
                    "of threads (0: OpenVINO's choice)"
                )
            threads = int(value)
            if threads > _MAX_THREADS:
                raise InvalidRequest(f"parameter {key} is {threads}; polystack runs at most {_MAX_THREADS} threads")
            if threads and _THREADS[key]:
                out[_THREADS[key]] = threads
        elif key == "HINT_BF16":
            if value != "yes":
                raise InvalidRequest(f"expected the parameter '{key}' to be YES, got {value}; leave it out for f32")
            out["inference_precision"] = "bf16"
        elif key == "NUM_STREAMS":
            if value in ("auto", "numa"):
                out["num_streams"] = value.upper()
            elif value.isascii() and value.isdigit() and int(value) <= _MAX_THREADS:
                if int(value):  # 0: OpenVINO's own choice, as it takes it
                    out["num_streams"] = int(value)
            else:
                raise InvalidRequest(
                    f"expected the parameter '{key}' to be either AUTO/NUMA/<int_value>, got {value}; give a number "
                    f"of streams up to {_MAX_THREADS}, or AUTO"
                )
        elif key == "PERFORMANCE_HINT":
            if value not in _HINTS:
                raise InvalidRequest(  # Triton's words
                    f"expected the parameter '{key}' to be LATENCY/THROUGHPUT/CUMULATIVE_THROUGHPUT, got {value}"
                )
            out["performance_hint"] = _HINTS[value]
    return out
