"""model_config.read on its own: what a load's config decides, against the policy polystack would have used."""

from __future__ import annotations

from pathlib import Path

import pytest

from polystack.batching import BatchPolicy
from polystack.engine import LoadSpec
from polystack.errors import InvalidRequest
from polystack.server import model_config
from polystack.store import ModelRecord
from polystack.types import DType, Signature, TensorSpec

SIG = Signature(inputs=(TensorSpec("x", DType.FP32, (-1, 4)),), outputs=(TensorSpec("y", DType.FP32, (-1, 2)),))
RECORD = ModelRecord(
    id=1, name="m", version=1, format="onnx", signature=SIG, digest="0" * 64, size_bytes=1, created_at=0.0
)
SPEC = LoadSpec(artifact=Path("m.onnx"), format="onnx", backend="onnxruntime")
PLAN = BatchPolicy(max_batch_size=24, max_queue_delay_ms=1.5, instances=2, idle_gap_ms=0.1)


def test_what_the_config_leaves_out_means_what_it_means_to_triton_but_size_and_instances() -> None:
    chosen = model_config.read('{"dynamic_batching": {}}', RECORD, SPEC, PLAN)
    # max_batch_size and instances from the plan; the rest as Triton reads an empty dynamic_batching
    assert chosen.batching == BatchPolicy(
        max_batch_size=24, max_queue_delay_ms=0, instances=2, idle_gap_ms=0, max_queue_size=0, client_timeouts=False
    )


def test_without_dynamic_batching_the_plans_instances_are_not_asked_for() -> None:
    assert model_config.read('{"max_batch_size": 4}', RECORD, SPEC, PLAN) == model_config.LoadConfig(None, 4)
    assert model_config.read("{}", RECORD, SPEC, PLAN) == model_config.LoadConfig(None, None)


def test_without_dynamic_batching_the_count_is_how_many_requests_run_at_once() -> None:
    text = '{"instance_group": [{"count": 3}, {"kind": "KIND_CPU"}]}'  # a group without a count is one instance
    assert model_config.read(text, RECORD, SPEC, PLAN) == model_config.LoadConfig(None, None, 4)


def test_numbers_may_be_strings_as_protobuf_writes_64_bit_ones() -> None:
    text = (
        '{"maxBatchSize": "8", "dynamicBatching": {"preferredBatchSize": ["4", 8], "maxQueueDelayMicroseconds": "250"}}'
    )
    chosen = model_config.read(text, RECORD, SPEC, None)
    assert chosen.batching is not None
    assert chosen.batching.preferred_batch_sizes == (4, 8) and chosen.batching.max_queue_delay_ms == 0.25
    with pytest.raises(InvalidRequest, match="'8x' is not a whole number"):
        model_config.read('{"max_batch_size": "8x"}', RECORD, SPEC, None)


def test_a_gpu_instance_group_matches_a_cuda_device() -> None:
    """No GPU here: only the config's reading is checked, against a spec that names one."""
    cuda = LoadSpec(artifact=Path("m.onnx"), format="onnx", backend="onnxruntime", device="cuda:1")
    text = '{"dynamic_batching": {}, "instance_group": [{"kind": "KIND_GPU", "gpus": [1], "count": 3}]}'
    chosen = model_config.read(text, RECORD, cuda, None)
    assert chosen.batching is not None and chosen.batching.instances == 3
    with pytest.raises(InvalidRequest, match="gpus"):
        model_config.read('{"instance_group": [{"kind": "KIND_GPU", "gpus": [0]}]}', RECORD, cuda, None)
    with pytest.raises(InvalidRequest, match="KIND_CPU"):
        model_config.read('{"instance_group": [{"kind": "KIND_CPU"}]}', RECORD, cuda, None)


def test_label_files_are_named_by_output() -> None:
    text = '{"output": [{"name": "y", "label_filename": "classes.txt"}, {"name": "z", "label_filename": ""}]}'
    assert model_config.label_files(text) == {"y": "classes.txt"}
    with pytest.raises(InvalidRequest, match="no output"):
        model_config.label_files('{"output": [{"label_filename": "classes.txt"}]}')
