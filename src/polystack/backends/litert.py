"""LiteRT (TensorFlow Lite): flatbuffers run by the LiteRT interpreter on CPU (XNNPACK).

Input tensors are resized when the batch changes. LiteRT's accelerators (GPU, NPU) are reached
through its CompiledModel API and vendor plugins, which this backend does not drive yet: it offers
``cpu`` only.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from polystack.backends.base import Backend, LoadedModel
from polystack.errors import BackendError, BackendUnavailable
from polystack.types import Signature


class LiteRtOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")

    num_threads: int | None = Field(default=None, ge=1)


class LiteRtModel:
    def __init__(self, interp: Any, signature: Signature) -> None:
        from polystack.formats.litert import tensor_names

        self.interp = interp
        self.signature = signature
        in_names, out_names = tensor_names(interp)
        self._inputs = {in_names[int(d["index"])]: int(d["index"]) for d in interp.get_input_details()}
        self._outputs = {out_names[int(d["index"])]: int(d["index"]) for d in interp.get_output_details()}
        self._shapes: dict[str, tuple[int, ...]] = {}
        self._lock = threading.Lock()  # one interpreter: calls must not overlap

    def infer(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        try:
            with self._lock:
                shapes = {name: tuple(inputs[name].shape) for name in self._inputs}
                if shapes != self._shapes:
                    for name, index in self._inputs.items():
                        self.interp.resize_tensor_input(index, list(shapes[name]))
                    self.interp.allocate_tensors()
                    self._shapes = shapes
                for name, index in self._inputs.items():
                    self.interp.set_tensor(index, np.ascontiguousarray(inputs[name]))
                self.interp.invoke()
                return {s.name: np.array(self.interp.get_tensor(self._outputs[s.name])) for s in self.signature.outputs}
        except Exception as e:
            raise BackendError(f"LiteRT failed: {type(e).__name__}: {str(e)[:300]}") from e

    def close(self) -> None:
        self.interp = None


class LiteRtBackend(Backend):
    name = "litert"
    Options = LiteRtOptions
    formats = frozenset({"litert"})
    requires = ("ai_edge_litert",)
    distribution = "ai-edge-litert"

    def load(self, artifact: Path, signature: Signature, options: BaseModel, device: str) -> LoadedModel:
        from polystack.formats.litert import interpreter

        assert isinstance(options, LiteRtOptions)
        if device != "cpu":
            raise BackendUnavailable(f"litert runs on cpu here, not {device!r}")
        return LiteRtModel(interpreter(artifact.read_bytes(), options.num_threads), signature)
