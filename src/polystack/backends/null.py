"""A backend that needs no runtime: zeros of the declared shape, optionally after a delay.

It tests everything above the runtimes (engine, batching, servers, jobs) without one.
Dynamic dimensions take the batch size on dim 0 and 1 elsewhere.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from pathlib import Path

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from polystack.backends.base import Backend, LoadedModel
from polystack.errors import BackendError
from polystack.types import DType, Signature


class NullOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    delay_ms: float = Field(default=0.0, ge=0, description="sleep this long per infer call (simulated compute)")
    load_delay_ms: float = Field(default=0.0, ge=0, description="sleep this long in load (a large model)")


class NullModel:
    def __init__(self, signature: Signature, delay_ms: float) -> None:
        self.signature = signature
        self.delay_s = delay_ms / 1000.0
        self.calls = 0
        self.closed = False

    def infer(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        self.calls += 1
        if self.delay_s:
            time.sleep(self.delay_s)
        if self.closed:  # as a real runtime fails once its session is gone (and did, under a reload)
            raise BackendError("the null model was closed while this call ran, or before it")
        batch = next((inputs[t.name].shape[0] for t in self.signature.inputs if t.batched), 1)
        out: dict[str, np.ndarray] = {}
        for spec in self.signature.outputs:
            shape = [batch if (i == 0 and d == -1) else (1 if d == -1 else d) for i, d in enumerate(spec.shape)]
            if spec.dtype is DType.BYTES:
                out[spec.name] = np.full(shape, b"", dtype=object)
            else:
                out[spec.name] = np.zeros(shape, dtype=spec.dtype.numpy)
        return out

    def close(self) -> None:
        self.closed = True


class NullBackend(Backend):
    name = "null"
    Options = NullOptions
    formats = frozenset({"*"})

    def load(self, artifact: Path, signature: Signature, options: BaseModel, device: str) -> LoadedModel:
        assert isinstance(options, NullOptions)
        if options.load_delay_ms:
            time.sleep(options.load_delay_ms / 1000.0)
        return NullModel(signature, options.delay_ms)
