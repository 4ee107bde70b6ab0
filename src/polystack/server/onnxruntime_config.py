"""Triton's ONNX Runtime backend settings in a model's config, as polystack's onnxruntime options.

Triton's ONNX Runtime backend (onnxruntime_backend, ``src/onnxruntime.cc``) reads some of a config's
``parameters`` (threads, execution mode, memory arena and pattern, CUDA provider settings) and its
``optimization`` (the graph optimization level, and execution accelerators: OpenVINO on CPU, TensorRT and
CUDA settings on GPU). This module reads the same names and values, refuses what that backend refuses in its
words, and gives the options of polystack's onnxruntime backend (``backends/onnxruntime.py``) that do the
same, so that an ONNX model's config from a Triton model repository loads unchanged. ``model_config`` reads
the messages; this module decides what they mean for ONNX Runtime. It also reads the one server-wide
setting of that backend polystack has, ``serve --backend-config``'s ``default-max-batch-size``.
"""

from __future__ import annotations

import json
import re
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from typing import Any

from polystack.errors import InvalidRequest, quote
from polystack.server.backend_config import backend_setting
from polystack.server.backend_parameters import warn_unread

_CPU_PROVIDERS = {"openvino": "OpenVINOExecutionProvider"}  # Triton's cpu_execution_accelerator names
_TENSORRT = "TensorrtExecutionProvider"
_CUDA = "CUDAExecutionProvider"
_NVIDIA_DEVICES = ("cuda", "tensorrt")  # polystack's device prefixes that run ONNX Runtime's CUDA provider
_INT32 = (-(1 << 31), (1 << 31) - 1)  # std::stoi's range
_UINT64 = (0, (1 << 64) - 1)  # std::stoull's
_WHOLE = re.compile(r"\s*[+-]?[0-9]+\s*")


@dataclass(frozen=True)
class Accelerator:
    """One entry of ``optimization.execution_accelerators``: Triton's name and its string parameters."""

    name: str
    parameters: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True)
class Optimization:
    """The ``optimization`` message of a config, as far as it changes what polystack runs or shows.
    ``graph_level`` is Triton's (None: not set, the runtime's default of every optimization)."""

    graph_level: int | None = None
    cpu_accelerators: tuple[Accelerator, ...] = ()
    gpu_accelerators: tuple[Accelerator, ...] = ()
    # staging buffers for device copies (polystack's runtimes copy to a device themselves), and what only Triton's
    # TensorRT backend reads: kept to show, as Triton shows them; ``cuda`` as JSON (its message, normalised)
    input_pinned_memory: bool = True
    output_pinned_memory: bool = True
    priority: str = "PRIORITY_DEFAULT"
    cuda: str = ""
    gather_kernel_buffer_threshold: int = 0
    eager_batching: bool = False

    def render(self) -> dict[str, Any]:
        """As Triton shows it in GET config: every field at its value or default."""
        shown: dict[str, Any] = {
            "priority": self.priority,
            "input_pinned_memory": {"enable": self.input_pinned_memory},
            "output_pinned_memory": {"enable": self.output_pinned_memory},
            "gather_kernel_buffer_threshold": self.gather_kernel_buffer_threshold,
            "eager_batching": self.eager_batching,
        }
        if self.graph_level is not None:
            shown["graph"] = {"level": self.graph_level}
        if self.cuda:
            shown["cuda"] = json.loads(self.cuda)
        if self.cpu_accelerators or self.gpu_accelerators:
            shown["execution_accelerators"] = {
                "gpu_execution_accelerator": [_render(a) for a in self.gpu_accelerators],
                "cpu_execution_accelerator": [_render(a) for a in self.cpu_accelerators],
            }
        return shown


def _render(accelerator: Accelerator) -> dict[str, Any]:
    return {"name": accelerator.name, "parameters": dict(accelerator.parameters)}


# Triton's graph levels (optimization.graph.level) -> polystack's graph_optimization_level; any other: "all"
_GRAPH_LEVELS = {-1: "basic", 1: "extended", 2: "disable"}

# the parameters Triton's ONNX Runtime backend reads, and what they set
_THREADS = {"intra_op_thread_count": "intra_op_threads", "inter_op_thread_count": "inter_op_threads"}
_MODES = {0: "sequential", 1: "parallel"}
_SWITCHES = {"enable_mem_arena": "enable_cpu_mem_arena", "enable_mem_pattern": "enable_mem_pattern"}
_SESSION_ENTRIES = {"session.use_device_allocator_for_initializers"}
_RUN_ENTRIES = {"memory.enable_memory_arena_shrinkage"}  # set on each run (Triton's RunOptions)
# polystack's instances of a model always share one session, whatever this says (Triton's default: one each)
_SHARED_SESSION = "share_session_between_instances"
# its deprecated CUDA provider parameters: read on a GPU only, as Triton reads them for GPU instances
_CUDA_CHOICES = {
    "cudnn_conv_algo_search": {"0": "EXHAUSTIVE", "1": "HEURISTIC", "2": "DEFAULT"},
    "arena_extend_strategy": {"0": "kNextPowerOfTwo", "1": "kSameAsRequested"},
}
_CUDA_TEXT = {"gpu_mem_limit", "do_copy_in_default_stream"}
PARAMETERS = frozenset(
    {*_THREADS, "execution_mode", *_SWITCHES, *_SESSION_ENTRIES, *_RUN_ENTRIES, _SHARED_SESSION, *_CUDA_CHOICES}
    | _CUDA_TEXT
)

# TensorRT accelerator parameters -> (ONNX Runtime's TensorRT provider option, kind of value), as Triton maps them
_TENSORRT_PARAMETERS: dict[str, tuple[str, str]] = {
    "max_workspace_size_bytes": ("trt_max_workspace_size", "count"),
    "int8_calibration_table_name": ("trt_int8_calibration_table_name", "text"),
    "int8_use_native_calibration_table": ("trt_int8_use_native_calibration_table", "bool"),
    **{
        f"trt_{name}": (f"trt_{name}", kind)
        for name, kind in (
            ("max_partition_iterations", "int"), ("min_subgraph_size", "int"), ("dla_enable", "bool"),
            ("dla_core", "int"), ("engine_cache_enable", "bool"), ("engine_cache_path", "text"),
            ("engine_cache_prefix", "text"), ("dump_subgraphs", "bool"), ("force_sequential_engine_build", "bool"),
            ("context_memory_sharing_enable", "bool"), ("layer_norm_fp32_fallback", "bool"),
            ("timing_cache_enable", "bool"), ("timing_cache_path", "text"), ("force_timing_cache", "bool"),
            ("detailed_build_log", "bool"), ("build_heuristics_enable", "bool"), ("sparsity_enable", "bool"),
            ("builder_optimization_level", "int"), ("auxiliary_streams", "int"), ("tactic_sources", "text"),
            ("extra_plugin_lib_paths", "text"), ("profile_min_shapes", "text"), ("profile_max_shapes", "text"),
            ("profile_opt_shapes", "text"), ("cuda_graph_enable", "bool"), ("dump_ep_context_model", "bool"),
            ("ep_context_file_path", "text"), ("ep_context_embed_mode", "int"),
        )
    },
}  # fmt: skip
_CUDA_SWITCHES = {"do_copy_in_default_stream", "use_ep_level_unified_stream"}  # cuda accelerator booleans


def options(
    parameters: Sequence[tuple[str, str]], optimization: Optimization, backend: str, device: str
) -> dict[str, Any]:
    """The options of polystack's onnxruntime backend that do what Triton's ONNX Runtime backend does with
    these ``parameters`` (name, string value) and ``optimization``, for a model served by ``backend`` on
    ``device``. GPU settings (``gpu_execution_accelerator``, the CUDA parameters) are read on an NVIDIA device
    only, as Triton reads them for GPU instances only: elsewhere they are neither checked nor applied."""
    warn_unread(parameters, PARAMETERS, "Triton's ONNX Runtime backend")
    parameters = [(key, given) for key, given in parameters if key in PARAMETERS]
    onnx_only = [f"parameter {quote(k)}" for k, _ in parameters]
    if optimization.graph_level is not None:
        onnx_only.append("optimization.graph")
    if optimization.cpu_accelerators or optimization.gpu_accelerators:
        onnx_only.append("optimization.execution_accelerators")
    if onnx_only and backend != "onnxruntime":
        raise InvalidRequest(
            f"the config sets {', '.join(onnx_only)} of Triton's ONNX Runtime backend, but polystack serves this "
            f"model with {backend!r} (its plan, or the default variant); leave them out"
        )
    gpu = device.partition(":")[0] in _NVIDIA_DEVICES
    out: dict[str, Any] = {}
    session: dict[str, str] = {}
    run: dict[str, str] = {}
    cuda: dict[str, str] = {}  # the deprecated parameters': they win over the cuda accelerator's, as in Triton
    for key, given in parameters:
        if key == "execution_mode":
            mode = _int(given, "parameter execution_mode", _INT32)
            if mode not in _MODES:  # Triton's words
                raise InvalidRequest(
                    f"Invalid configuration value provided. Expected values for execution_mode are 0 or 1 but got "
                    f"{mode}: 0 runs operators one after another, 1 in parallel"
                )
            out["execution_mode"] = _MODES[mode]
        elif key in _THREADS:
            threads = _int(given, f"parameter {key}", _INT32)
            if threads > 1024:
                raise InvalidRequest(f"parameter {key} is {threads}; polystack runs at most 1024 threads")
            if threads > 0:  # 0 or less: the runtime's own choice, which polystack's plan makes
                out[_THREADS[key]] = threads
        elif key in _SWITCHES:
            out[_SWITCHES[key]] = triton_bool(given)
        elif key == _SHARED_SESSION:
            triton_bool(given)  # either way one session: polystack's instances share it
        elif key in _SESSION_ENTRIES:
            session[key] = given
        elif key in _RUN_ENTRIES:
            run[key] = given
        elif not gpu:
            continue  # a CUDA parameter: Triton reads them for GPU instances only
        elif key in _CUDA_CHOICES:
            number = str(_int(given, f"parameter {key}", _INT32))
            if number not in _CUDA_CHOICES[key]:
                raise InvalidRequest(f"unsupported {key} value '{number}' is requested")  # Triton's words
            cuda[key] = _CUDA_CHOICES[key][number]
        else:
            cuda[key] = given
    if session:
        out["session_config"] = session
    if run:
        out["run_config"] = run
    if optimization.graph_level is not None:
        out["graph_optimization_level"] = _GRAPH_LEVELS.get(optimization.graph_level, "all")
    providers: dict[str, dict[str, str]] = {}
    ahead: list[str] = []  # before the device's own provider (a GPU's: TensorRT before CUDA)
    behind: list[str] = []  # after it, before ONNX Runtime's CPU provider (OpenVINO), as Triton appends them
    for a in optimization.cpu_accelerators:
        provider = _CPU_PROVIDERS.get(a.name)
        if provider is None:
            raise _unknown(a.name, "cpu_execution_accelerator", "openvino")
        behind.append(provider)  # its parameters: none read, as Triton reads none
        providers[provider] = {"device_type": "CPU"}
    accelerated: dict[str, str] = {}  # the cuda accelerator's parameters
    for a in optimization.gpu_accelerators if gpu else ():
        if a.name == "tensorrt":
            ahead.append(_TENSORRT)
            providers[_TENSORRT] = dict(_tensorrt(a.parameters))
        elif a.name == "cuda":
            for key, given in a.parameters:
                if key in _CUDA_SWITCHES:
                    triton_bool(given)
                accelerated[key] = given
        else:
            raise _unknown(a.name, "gpu_execution_accelerator", "tensorrt and cuda")
    if accelerated or cuda:
        providers[_CUDA] = {**accelerated, **cuda}
    if ahead:
        out["accelerators"] = list(dict.fromkeys(ahead))
    if behind:
        out["cpu_accelerators"] = list(dict.fromkeys(behind))
    if providers:
        out["provider_options"] = providers
    return out


def _tensorrt(parameters: Sequence[tuple[str, str]]) -> list[tuple[str, str]]:
    """ONNX Runtime's TensorRT provider options for Triton's TensorRT accelerator ``parameters``."""
    out: list[tuple[str, str]] = []
    for key, given in parameters:
        if key == "precision_mode":
            if given in ("FP16", "BF16", "INT8"):
                out.append((f"trt_{given.lower()}_enable", "1"))
            elif given != "FP32":
                raise InvalidRequest(
                    f"unsupported precision mode '{given}' is requested; give FP32, FP16, BF16 or INT8"
                )
            continue
        option = _TENSORRT_PARAMETERS.get(key)
        if option is None:
            raise InvalidRequest(
                f"unknown parameter '{key}' is provided for TensorRT Execution Accelerator; Triton's are "
                f"precision_mode, {', '.join(sorted(_TENSORRT_PARAMETERS))}"
            )
        name, kind = option
        if kind == "bool":
            value = "1" if triton_bool(given) else "0"
        elif kind in ("int", "count"):
            value = str(_int(given, f"TensorRT parameter {key}", _UINT64 if kind == "count" else _INT32))
        else:
            value = given
        if value:
            out.append((name, value))
    return out


def _unknown(name: str, where: str, known: str) -> InvalidRequest:
    return InvalidRequest(  # Triton's words, then what it takes
        f"unknown Execution Accelerator '{name}' is requested; Triton's ONNX Runtime backend takes {known} as {where}"
    )


def triton_bool(given: str) -> bool:
    """A boolean as Triton reads one, in its backends' parameters (``ParseBoolValue``) and tritonserver's flags."""
    lowered = given.lower()
    if lowered in ("true", "on", "1"):
        return True
    if lowered in ("false", "off", "0"):
        return False
    raise InvalidRequest(f"failed to convert {quote(given)} to boolean; give true or false (or on/off, 1/0)")


def _int(given: str, what: str, within: tuple[int, int]) -> int:
    """A whole number as Triton's backend reads one (std::stoi, std::stoull: spaces and a sign allowed), in
    the range those take."""
    if not _WHOLE.fullmatch(given) or len(given) > 32:
        raise InvalidRequest(f"{what} is {quote(given)}, not a whole number")
    number = int(given)
    if not within[0] <= number <= within[1]:
        raise InvalidRequest(f"{what} is {number}, out of range: from {within[0]} to {within[1]}")
    return number


_BACKEND = "onnxruntime"  # the one Triton backend polystack stands in for (a repository's ONNX models)
_MAX_BATCH = "default-max-batch-size"
# the backend's settings polystack takes without reading them: its global thread pool (sessions keep their own)
_THREAD_POOL = ("enable-global-threadpool", "intra_op_thread_count", "inter_op_thread_count")


def default_max_batch_size(items: Sequence[str]) -> int | None:
    """The ``default-max-batch-size`` that Triton's ``--backend-config`` values ``items`` give the ONNX
    Runtime backend (None: none does): ``[BACKEND,]SETTING=VALUE``, in Triton's format, where a
    setting without a backend is every backend's and one for ``onnxruntime`` wins over it (the last given
    wins among equals). A setting for another backend is ignored, as Triton's ONNX Runtime backend ignores
    it: polystack serves a repository's ONNX models only; so is every other setting (``unread`` says why)."""
    general: int | None = None
    own: int | None = None
    for item in items:
        backend, setting, value = backend_setting(item)
        if (backend and backend != _BACKEND) or setting != _MAX_BATCH:
            continue
        if not (value.isascii() and value.isdigit() and len(value) <= 10 and int(value) <= _INT32[1]):
            raise InvalidRequest(
                f"--backend-config {item}: default-max-batch-size is a whole number from 0 (no batching) to "
                f"{_INT32[1]}, e.g. 8"
            )
        if backend:
            own = int(value)
        else:
            general = int(value)
    return own if own is not None else general


def unread(items: Sequence[str], others: Collection[str] = ()) -> list[str]:
    """The ``--backend-config`` values ``items`` that polystack takes without reading, each with why (for the start's
    log line of flags that change nothing): the ONNX Runtime backend's global thread pool, and settings that backend
    does not read either (Triton's ignores them, and starts), and any other backend's but Python's (its module says
    of its own); ``others``: settings another backend's module says, given for every backend."""
    said = []
    for item in items:
        backend, setting, _ = backend_setting(item)
        if backend and backend not in (_BACKEND, "python"):  # (the Python backend's module says of its own)
            # helper-271: an openvino default-max-batch-size was taken in silence
            said.append(f"--backend-config {item} (polystack reads no setting of Triton's {backend} backend)")
            continue
        if backend == "python" or setting == _MAX_BATCH or (not backend and setting in others):
            continue  # the Python backend's, or read
        why = (
            "ONNX Runtime sessions keep threads of their own, as without the global thread pool (set them per model)"
            if setting in _THREAD_POOL
            else "a setting Triton's ONNX Runtime backend does not read either"
        )
        said.append(f"--backend-config {item} ({why})")
    return said
