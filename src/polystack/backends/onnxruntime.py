"""ONNX Runtime: typed session options, devices through its execution providers."""

from __future__ import annotations

import ctypes
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from polystack.backends.base import Backend, LoadedModel
from polystack.errors import (
    BackendError,
    BackendUnavailable,
    InvalidModelFile,
    InvalidRequest,
    InvalidTensor,
    RuntimeRefused,
)
from polystack.types import DType, Signature

# device prefix -> execution provider that runs it
_DEVICE_PROVIDERS = {
    "cuda": "CUDAExecutionProvider",
    "tensorrt": "TensorrtExecutionProvider",
    "rocm": "ROCMExecutionProvider",
    "migraphx": "MIGraphXExecutionProvider",
    "dml": "DmlExecutionProvider",
    "coreml": "CoreMLExecutionProvider",
    "openvino": "OpenVINOExecutionProvider",
}


class OnnxRuntimeOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")

    intra_op_threads: int | None = Field(default=None, ge=1, description="threads inside one operator")
    inter_op_threads: int | None = Field(default=None, ge=1, description="threads across operators")
    graph_optimization_level: Literal["disable", "basic", "extended", "all"] = "all"
    execution_mode: Literal["sequential", "parallel"] = "sequential"
    execution_providers: list[str] | None = Field(
        default=None,
        description="providers in preference order; those absent here are skipped (CPU always last)",
    )
    accelerators: list[str] = Field(
        default_factory=list,
        description="providers put ahead of the device's own, in this order; a load fails where one is absent",
    )
    cpu_accelerators: list[str] = Field(
        default_factory=list,
        description="providers put after the device's own and before the CPU's; a load fails where one is absent",
    )
    provider_options: dict[str, dict[str, str]] = Field(
        default_factory=dict, description="each provider's options, by provider name (device_id: the device's)"
    )
    enable_cpu_mem_arena: bool = True
    enable_mem_pattern: bool = True
    session_config: dict[str, str] = Field(
        default_factory=dict, description="session configuration entries (SessionOptions.add_session_config_entry)"
    )
    run_config: dict[str, str] = Field(
        default_factory=dict, description="configuration entries of every run (RunOptions.add_run_config_entry)"
    )


def _to_runtime_input(name: str, arr: np.ndarray) -> np.ndarray:
    if arr.dtype == object:  # BYTES: ONNX Runtime takes str for STRING tensors
        try:
            return np.vectorize(lambda v: v.decode("utf-8") if isinstance(v, bytes) else str(v), otypes=[object])(arr)
        except UnicodeDecodeError as e:
            raise InvalidTensor(
                f"input {name!r} holds bytes that are not UTF-8 ({e.reason} at byte {e.start}); "
                "ONNX string tensors carry UTF-8 text"
            ).failed_in_run() from e
    return arr


def _from_runtime_output(arr: Any) -> np.ndarray:
    arr = np.asarray(arr)
    if arr.dtype.kind in ("U", "O"):
        return np.vectorize(lambda v: v.encode("utf-8") if isinstance(v, str) else v, otypes=[object])(arr)
    return arr


_CUDA = "CUDAExecutionProvider"
_BFLOAT16 = 16  # ONNX's element type of bfloat16 (TensorProto.BFLOAT16)
# what ONNX Runtime says refusing a run's inputs (its INVALID_ARGUMENT), which a bound run raises as a plain error
_REFUSALS = ("Got invalid dimensions", "Unexpected input data type", "Invalid rank for input")


def _bfloat16_input(arr: np.ndarray) -> Any:
    """A bfloat16 array as ONNX Runtime takes it, which its numpy API cannot: its 16-bit patterns, typed bfloat16."""
    import onnxruntime as ort

    return ort.OrtValue.ortvalue_from_numpy_with_onnx_type(np.ascontiguousarray(arr).view(np.uint16), _BFLOAT16)


def _output_of(value: Any) -> np.ndarray:
    """An output ONNX Runtime gave (an OrtValue on the CPU) as numpy: a bfloat16 one, which its ``numpy()`` cannot
    give, copied from its memory as 16-bit patterns and viewed as ml_dtypes' bfloat16 (the protocol's BF16)."""
    if value.element_type() != _BFLOAT16:
        return _from_runtime_output(value.numpy())
    shape = tuple(value.shape())
    out = np.empty(shape, np.uint16)
    if out.size:
        ctypes.memmove(out.ctypes.data, value.data_ptr(), out.nbytes)
    return out.view(DType.BF16.numpy)


def _name(provider: Any) -> str:
    return provider if isinstance(provider, str) else str(provider[0])


def _with_options(provider: Any, given: dict[str, str]) -> Any:
    """``provider`` (a name, or a name and its options) with ``given`` options over its own, but the device it
    runs on (``device_id``), which is the model's device, as Triton sets the instance's GPU over a config's."""
    if not given:
        return provider
    own = {} if isinstance(provider, str) else dict(provider[1])
    return (_name(provider), {**own, **given, **({"device_id": own["device_id"]} if "device_id" in own else {})})


class OnnxRuntimeModel:
    def __init__(self, session: Any, signature: Signature, run_options: Any = None) -> None:
        self.session = session
        self.signature = signature
        self._outputs = signature.output_names
        self._run_options = run_options
        # bfloat16 tensors, which ONNX Runtime's numpy API neither takes nor gives: such a model runs bound (``_bound``)
        every = (*signature.inputs, *signature.optional, *signature.outputs)
        self._bf16 = any(t.dtype is DType.BF16 for t in every)
        # what a run raises, imported with the session (onnxruntime is there) rather than at each call
        from onnxruntime.capi.onnxruntime_pybind11_state import Fail, InvalidArgument

        self._refused, self._failed = InvalidArgument, Fail

    def infer(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        feed = {name: _to_runtime_input(name, arr) for name, arr in inputs.items()}
        try:
            if self._bf16:
                return dict(zip(self._outputs, self._bound(feed), strict=True))
            results = self.session.run(self._outputs, feed, self._run_options)
        except RuntimeRefused:
            raise
        except self._refused as e:
            raise RuntimeRefused(f"ONNX Runtime refused the inputs: {e}") from e
        except self._failed as e:
            raise BackendError(f"ONNX Runtime failed: {e}") from e
        except Exception as e:
            raise BackendError(f"ONNX Runtime failed: {type(e).__name__}: {e}") from e
        return {n: _from_runtime_output(r) for n, r in zip(self._outputs, results, strict=True)}

    def _bound(self, feed: Mapping[str, np.ndarray]) -> list[np.ndarray]:
        """A run through an IO binding, its inputs and outputs on the CPU (a GPU's outputs copied back by ONNX
        Runtime), bfloat16 ones as their 16-bit patterns."""
        binding = self.session.io_binding()
        held = []  # what the binding reads, alive until the run ends
        for name, arr in feed.items():
            if arr.dtype == DType.BF16.numpy:
                held.append(_bfloat16_input(arr))
                binding.bind_ortvalue_input(name, held[-1])
            else:
                held.append(np.ascontiguousarray(arr))
                binding.bind_cpu_input(name, held[-1])
        for name in self._outputs:
            binding.bind_output(name, "cpu")
        try:
            self.session.run_with_iobinding(binding, self._run_options)
        except RuntimeError as e:  # a bound run words away ONNX Runtime's status: its refusals told by their words
            if any(words in str(e) for words in _REFUSALS):
                raise RuntimeRefused(f"ONNX Runtime refused the inputs: {e}") from e
            raise
        return [_output_of(v) for v in binding.get_outputs()]

    def close(self) -> None:
        self.session = None


class OnnxRuntimeBackend(Backend):
    name = "onnxruntime"
    Options = OnnxRuntimeOptions
    formats = frozenset({"onnx"})
    requires = ("onnxruntime",)
    distribution = "onnxruntime"

    def providers(self) -> list[str]:
        import onnxruntime as ort

        return list(ort.get_available_providers())

    def devices(self) -> list[str]:
        present = set(self.providers())
        found = ["cpu"]
        for prefix, provider in _DEVICE_PROVIDERS.items():
            if provider in present:
                found.append(f"{prefix}:0")
        return found

    def _providers_for(self, device: str, options: OnnxRuntimeOptions) -> list[Any]:
        present = self.providers()
        if options.execution_providers:
            chosen: list[Any] = [p for p in options.execution_providers if p in present]
            if not chosen:
                raise BackendUnavailable(
                    f"none of the execution providers {options.execution_providers} is present; "
                    f"this onnxruntime offers {present}"
                )
        elif device == "cpu":
            chosen = ["CPUExecutionProvider"]
        else:
            prefix, _, index = device.partition(":")
            provider = _DEVICE_PROVIDERS.get(prefix)
            if provider is None or provider not in present:
                raise BackendUnavailable(f"onnxruntime cannot use device {device!r} here; it offers {self.devices()}")
            chosen = [(provider, {"device_id": int(index or 0)})]
            if prefix == "tensorrt" and _CUDA in present:  # what TensorRT cannot run, on the same GPU
                chosen.append((_CUDA, {"device_id": int(index or 0)}))
        missing = [p for p in (*options.accelerators, *options.cpu_accelerators) if p not in present]
        if missing:  # asked for by a config: refused as Triton refuses an accelerator its build lacks
            raise InvalidRequest(
                f"this onnxruntime has no {', '.join(missing)} (it offers {present}); install the onnxruntime build "
                "that has it (onnxruntime-openvino for OpenVINO, onnxruntime-gpu for CUDA and TensorRT) in place of "
                "onnxruntime, or leave the execution accelerator out"
            )
        _, _, index = device.partition(":")
        ahead: list[Any] = [(p, {"device_id": int(index)}) if index else p for p in options.accelerators]
        extra = {*options.accelerators, *options.cpu_accelerators}
        extra.add("CPUExecutionProvider")  # always last
        chosen = [*ahead, *(c for c in chosen if _name(c) not in extra), *options.cpu_accelerators]
        chosen.append("CPUExecutionProvider")
        return [_with_options(c, options.provider_options.get(_name(c), {})) for c in chosen]

    def load(self, artifact: Path, signature: Signature, options: BaseModel, device: str) -> LoadedModel:
        import onnxruntime as ort

        assert isinstance(options, OnnxRuntimeOptions)
        so = ort.SessionOptions()
        if options.intra_op_threads:
            so.intra_op_num_threads = options.intra_op_threads
        if options.inter_op_threads:
            so.inter_op_num_threads = options.inter_op_threads
        so.graph_optimization_level = {
            "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
            "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
            "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
            "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
        }[options.graph_optimization_level]
        so.execution_mode = (
            ort.ExecutionMode.ORT_PARALLEL if options.execution_mode == "parallel" else ort.ExecutionMode.ORT_SEQUENTIAL
        )
        so.log_severity_level = 3
        so.enable_cpu_mem_arena = options.enable_cpu_mem_arena
        so.enable_mem_pattern = options.enable_mem_pattern
        for key, value in options.session_config.items():
            so.add_session_config_entry(key, value)
        run_options = None
        if options.run_config:
            run_options = ort.RunOptions()
            for key, value in options.run_config.items():
                run_options.add_run_config_entry(key, value)
        bf16 = [t.name for t in (*signature.inputs, *signature.optional, *signature.outputs) if t.dtype is DType.BF16]
        text = [t.name for t in (*signature.inputs, *signature.optional) if t.dtype is DType.BYTES]
        if bf16 and text:  # its bfloat16 tensors run bound, and ONNX Runtime binds no string input
            raise InvalidModelFile(
                f"{', '.join(map(repr, bf16))} are bfloat16, which ONNX Runtime's Python API takes only through an IO "
                f"binding, and that binds no string input ({', '.join(map(repr, text))}): give the model FP32 (or "
                "FP16) inputs and outputs, with Casts to bfloat16 inside it, or its text as numbers"
            )
        providers = self._providers_for(device, options)
        try:
            # no fallback: ONNX Runtime would otherwise retry a session its providers refuse (or a run they fail)
            # on the CPU, or on GPU 0, while the server says the model runs where it was asked to
            session = ort.InferenceSession(str(artifact), sess_options=so, providers=providers, enable_fallback=0)
        except Exception as e:
            raise InvalidModelFile(f"ONNX Runtime cannot load this model: {str(e).splitlines()[0]}") from e
        return OnnxRuntimeModel(session, signature, run_options)
