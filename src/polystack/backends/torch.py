"""PyTorch: programs saved with ``torch.export.save``, run eagerly or through ``torch.compile``.

Devices come from torch itself: ``cpu``, ``cuda:N`` (NVIDIA and ROCm builds both answer through
``torch.cuda``), ``mps`` and ``xpu:N`` as this torch offers them.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from polystack.backends.base import Backend, LoadedModel, writable
from polystack.errors import BackendError, BackendUnavailable, InvalidModelFile, InvalidTensor, PolystackError
from polystack.types import DType, Signature


class TorchOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")

    compile: bool = Field(default=False, description="wrap the program in torch.compile (compiles per new shape)")
    compile_mode: Literal["default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs"] = "default"
    dtype: Literal["fp32", "bf16", "fp16"] = Field(
        default="fp32", description="cast weights and float inputs to this type (outputs come back as declared)"
    )
    num_threads: int | None = Field(default=None, ge=1, description="torch.set_num_threads (process-wide)")


_TORCH_DTYPES = {"bf16": "bfloat16", "fp16": "float16", "fp32": "float32"}
_FLOATS = {DType.BF16: "bfloat16", DType.FP16: "float16", DType.FP32: "float32", DType.FP64: "float64"}


class TorchModel:
    def __init__(self, module: Any, in_spec: Any, signature: Signature, device: Any, dtype: Any) -> None:
        self.module = module
        self.in_spec = in_spec
        self.signature = signature
        self.device = device
        self.dtype = dtype
        self._lock = threading.Lock()  # torch.compile's first call per shape is not re-entrant

    def infer(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        import torch
        from torch.utils import _pytree

        try:
            leaves = []
            for spec in self.signature.inputs:
                t = _to_torch(torch, np.ascontiguousarray(inputs[spec.name])).to(self.device)
                if t.is_floating_point() and t.dtype != self.dtype and self.dtype != torch.float32:  # the dtype
                    t = t.to(self.dtype)  # option converted the module's weights: its inputs go with them
                leaves.append(t)
            args, kwargs = _pytree.tree_unflatten(leaves, self.in_spec)
            with self._lock, torch.inference_mode():
                result = self.module(*args, **kwargs)
            flat = _pytree.tree_leaves(result)
            out: dict[str, np.ndarray] = {}
            for spec, value in zip(self.signature.outputs, flat, strict=True):
                value = value.detach().to("cpu")
                want = _FLOATS.get(spec.dtype)
                if value.is_floating_point() and want is not None and value.dtype != getattr(torch, want):
                    value = value.to(getattr(torch, want))  # as the signature says (the dtype option ran it in another)
                out[spec.name] = _to_numpy(torch, value)
            return out
        except PolystackError:
            raise
        except Exception as e:
            first = str(e).splitlines()[0] if str(e) else ""
            if "Guard failed" in first:  # the program's shape guards (torch.export's Dim bounds) refuse these inputs
                raise InvalidTensor(
                    f"the exported program refuses these inputs' shapes ({first}): torch.export bounded the sizes "
                    "it takes (its Dims' min and max); send inputs within them, or export it with wider bounds"
                ) from e
            raise BackendError(f"PyTorch failed: {type(e).__name__}: {first}") from e

    def close(self) -> None:
        self.module = None


class TorchBackend(Backend):
    name = "torch"
    Options = TorchOptions
    formats = frozenset({"torch.export"})
    requires = ("torch",)
    distribution = "torch"

    def devices(self) -> list[str]:
        import torch

        found = ["cpu"]
        if torch.cuda.is_available():
            found += [f"cuda:{i}" for i in range(torch.cuda.device_count())]
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            found.append("mps")
        xpu = getattr(torch, "xpu", None)
        if xpu is not None and xpu.is_available():
            found += [f"xpu:{i}" for i in range(xpu.device_count())]
        return found

    def load(self, artifact: Path, signature: Signature, options: BaseModel, device: str) -> LoadedModel:
        import torch

        from polystack.formats.pickle_guard import refuse_pickle
        from polystack.formats.torch_export import load_program

        assert isinstance(options, TorchOptions)
        if device not in self.devices():
            raise BackendUnavailable(f"torch cannot use device {device!r} here; it offers {self.devices()}")
        if options.num_threads:
            torch.set_num_threads(options.num_threads)
        refuse_pickle(artifact)  # the store's blob is re-checked: torch.export.load may unpickle
        ep = load_program(artifact)
        dtype = getattr(torch, _TORCH_DTYPES[options.dtype])
        try:
            module = ep.module().to(device)
            if options.dtype != "fp32":
                module = module.to(dtype)
            if options.compile:
                module = torch.compile(module, mode=options.compile_mode, dynamic=None)
        except Exception as e:
            raise InvalidModelFile(f"torch could not prepare the program for {device}: {type(e).__name__}: {e}") from e
        return TorchModel(module, ep.call_spec.in_spec, signature, torch.device(device), dtype)


def _to_torch(torch: Any, array: np.ndarray) -> Any:
    """``array`` as a tensor; bfloat16 (ml_dtypes', which torch.from_numpy does not know) through its bits."""
    array = writable(array)  # a program may write into its inputs
    if array.dtype == DType.BF16.numpy:
        return torch.from_numpy(array.view(np.uint16)).view(torch.bfloat16)
    return torch.from_numpy(array)


def _to_numpy(torch: Any, tensor: Any) -> np.ndarray:
    """``tensor`` (on the CPU) as an array; bfloat16 (which Tensor.numpy refuses) as ml_dtypes' through its bits."""
    if tensor.dtype == torch.bfloat16:
        return np.asarray(tensor.view(torch.uint16).numpy()).view(DType.BF16.numpy)
    return np.asarray(tensor.numpy())
