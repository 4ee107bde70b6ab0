"""What the config tests read a config against: a model of one batched input, its load spec and polystack's plan."""

from __future__ import annotations

from pathlib import Path

from polystack.batching import BatchPolicy
from polystack.engine import LoadSpec
from polystack.store import ModelRecord
from polystack.types import DType, Signature, TensorSpec

SIG = Signature(inputs=(TensorSpec("x", DType.FP32, (-1, 4)),), outputs=(TensorSpec("y", DType.FP32, (-1, 2)),))
RECORD = ModelRecord(
    id=1, name="m", version=1, format="onnx", signature=SIG, digest="0" * 64, size_bytes=1, created_at=0.0
)
SPEC = LoadSpec(artifact=Path("m.onnx"), format="onnx", backend="onnxruntime")
PLAN = BatchPolicy(max_batch_size=24, max_queue_delay_ms=1.5, instances=2, idle_gap_ms=0.1)
