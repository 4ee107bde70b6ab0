"""A config's model_warmup: samples read against the model and the dims clients see, their files, rendered back."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
from configkit import PLAN, RECORD, SPEC

from polystack.errors import InvalidRequest
from polystack.server import model_config, warmup_config
from polystack.server.warmup import WarmupInput, WarmupSample
from polystack.types import DType, Signature, TensorSpec


def test_warmup_samples_are_read_with_the_batch_left_out_of_their_dims() -> None:
    def config(dims: list[int], **more: object) -> str:
        inputs = {"x": {"data_type": "TYPE_FP32", "dims": dims, "random_data": True}}
        return json.dumps({**more, "model_warmup": [{"name": "w", "batch_size": 8, "count": 2, "inputs": inputs}]})

    batched = model_config.read(config([4], dynamic_batching={}), RECORD, SPEC, PLAN).additions.warmup
    assert batched == (WarmupSample("w", 8, 2, (WarmupInput("x", DType.FP32, (4,), True),), batched=True),)
    assert batched[0].calls == 2  # one batch of 8 rows, twice
    # max_batch_size 0 (Triton's: no batching): the dims hold the whole shape, in samples of batch size 1
    unbatched = model_config.read(config([8, 4], max_batch_size=0).replace('"batch_size": 8', '"batch_size": 1'),
                                  RECORD, SPEC, PLAN).additions.warmup  # fmt: skip
    assert unbatched[0].calls == 2 and unbatched[0].arrays(np.random.default_rng(0))["x"].shape == (8, 4)


def test_a_warmup_inputs_data_is_the_field_it_sets_whatever_its_value() -> None:
    """Triton's oneof: ``"zero_data": false`` still asks for zeros ("the value ... will not be checked")."""
    inputs = {"x": {"data_type": "TYPE_FP32", "dims": [4], "zero_data": False}}
    text = json.dumps({"dynamic_batching": {}, "model_warmup": [{"batch_size": 1, "inputs": inputs}]})
    (chosen,) = model_config.read(text, RECORD, SPEC, PLAN).additions.warmup
    assert chosen.inputs[0].random is False and chosen.name == ""  # kept as given: rendered back the same


def test_a_warmup_sample_too_large_to_allocate_is_refused() -> None:
    """Within every dimension the model takes, a sample can still ask for gigabytes: it is refused."""
    wide = Signature(inputs=(TensorSpec("x", DType.FP32, (-1, -1)),), outputs=(TensorSpec("y", DType.FP32, (-1, 2)),))
    record = dataclasses.replace(RECORD, signature=wide)
    inputs = {"x": {"data_type": "TYPE_FP32", "dims": [1 << 26], "zero_data": True}}
    text = json.dumps({"dynamic_batching": {}, "model_warmup": [{"batch_size": 2, "inputs": inputs}]})
    with pytest.raises(InvalidRequest, match="at most 268,435,456 bytes"):
        model_config.read(text, record, SPEC, PLAN)


def test_a_warmup_sample_of_bytes_counts_what_its_objects_cost() -> None:
    """A BYTES element is a Python object and then a std::string in the runtime, not 4 bytes."""
    strings = Signature(inputs=(TensorSpec("s", DType.BYTES, (-1, -1)),), outputs=(TensorSpec("t", DType.BYTES, (-1, -1)),))
    record = dataclasses.replace(RECORD, signature=strings)
    inputs = {"s": {"data_type": "TYPE_STRING", "dims": [5_000_000], "zero_data": True}}
    text = json.dumps({"dynamic_batching": {}, "model_warmup": [{"batch_size": 1, "inputs": inputs}]})
    with pytest.raises(InvalidRequest, match="320,000,000 bytes"):
        model_config.read(text, record, SPEC, PLAN)


def test_a_batched_sample_shown_without_batching_carries_its_batch_in_its_dims() -> None:
    """A batcher that stopped merging shows max_batch_size 0: its samples must load back as shown."""
    inputs = {"x": {"data_type": "TYPE_FP32", "dims": [4], "zero_data": True}}
    text = json.dumps({"dynamic_batching": {}, "model_warmup": [{"batch_size": 3, "inputs": inputs, "count": 2}]})
    (batched,) = model_config.read(text, RECORD, SPEC, PLAN).additions.warmup
    shown = warmup_config.render(batched, 0)
    assert shown == {"name": "", "batch_size": 1, "count": 2,
                     "inputs": {"x": {"data_type": "TYPE_FP32", "dims": [3, 4], "zero_data": True}}}  # fmt: skip
    (back,) = model_config.read(json.dumps({"max_batch_size": 0, "model_warmup": [shown]}), RECORD, SPEC, PLAN).additions.warmup
    assert back.arrays(np.random.default_rng(0))["x"].shape == batched.arrays(np.random.default_rng(0))["x"].shape


def test_a_skipped_batched_sample_shown_without_batching_loads_back_skipped() -> None:
    inputs = {"x": {"data_type": "TYPE_FP32", "dims": [4], "zero_data": True}}
    text = json.dumps({"dynamic_batching": {}, "model_warmup": [{"batch_size": 0, "inputs": inputs}]})
    (skipped,) = model_config.read(text, RECORD, SPEC, PLAN).additions.warmup
    shown = warmup_config.render(skipped, 0)
    assert shown["batch_size"] == 0 and shown["inputs"]["x"]["dims"] == [0, 4]
    (back,) = model_config.read(json.dumps({"max_batch_size": 0, "model_warmup": [shown]}), RECORD, SPEC, PLAN).additions.warmup
    assert back.batch_size == 0  # still skipped


def _file_config(inputs: dict[str, object], batch_size: int = 3) -> str:
    return json.dumps({"dynamic_batching": {}, "model_warmup": [{"name": "f", "batch_size": batch_size, "inputs": inputs}]})


def test_a_warmup_input_from_a_file_repeats_its_row_in_every_row_of_the_batch(tmp_path: Path) -> None:
    """Triton's input_data_file: raw row-major bytes in the model directory's warmup/ folder."""
    (tmp_path / "warmup").mkdir()
    row = np.array([1.5, -2, 3, 4], np.float32)
    (tmp_path / "warmup" / "x.bin").write_bytes(row.tobytes() + b"ignored past one row, as Triton")
    text = _file_config({"x": {"data_type": "TYPE_FP32", "dims": [4], "input_data_file": "x.bin"}})
    (sample,) = model_config.read(text, RECORD, SPEC, PLAN, tmp_path).additions.warmup
    arrays = sample.arrays(np.random.default_rng(0))
    np.testing.assert_array_equal(arrays["x"], np.stack([row] * 3))
    rendered = warmup_config.render(sample, 8)["inputs"]["x"]
    assert rendered == {"data_type": "TYPE_FP32", "dims": [4], "input_data_file": "x.bin"}


def test_a_bytes_warmup_file_holds_length_prefixed_elements(tmp_path: Path) -> None:
    strings = Signature(inputs=(TensorSpec("s", DType.BYTES, (-1, 2)),), outputs=(TensorSpec("t", DType.BYTES, (-1, 2)),))
    record = dataclasses.replace(RECORD, signature=strings)
    (tmp_path / "warmup").mkdir()
    (tmp_path / "warmup" / "s.bin").write_bytes(b"\x02\x00\x00\x00hi\x05\x00\x00\x00there")
    text = _file_config({"s": {"data_type": "TYPE_STRING", "dims": [2], "input_data_file": "s.bin"}}, batch_size=2)
    (sample,) = model_config.read(text, record, SPEC, PLAN, tmp_path).additions.warmup
    assert sample.arrays(np.random.default_rng(0))["s"].tolist() == [[b"hi", b"there"], [b"hi", b"there"]]
    (tmp_path / "warmup" / "s.bin").write_bytes(b"\x02\x00\x00\x00hi")
    with pytest.raises(InvalidRequest, match=r"does not hold one row of dims \[2\]: .*needs 2 BYTES elements"):
        model_config.read(text, record, SPEC, PLAN, tmp_path)


@pytest.mark.parametrize(
    ("file", "content", "model_dir", "says"),
    [
        ("x.bin", b"\0" * 12, True, "warmup setting expects 16 bytes, but the data provided from"),
        ("missing.bin", None, True, "missing.bin is not a file; put it there"),
        ("", None, True, "is not a file"),
        ("x.bin", b"\0" * 16, False, "the model has no model directory"),
    ],
)
def test_a_warmup_file_that_cannot_give_a_row_is_refused(
    tmp_path: Path, file: str, content: bytes | None, model_dir: bool, says: str
) -> None:
    (tmp_path / "warmup").mkdir()
    if content is not None:
        (tmp_path / "warmup" / file).write_bytes(content)
    text = _file_config({"x": {"data_type": "TYPE_FP32", "dims": [4], "input_data_file": file}})
    with pytest.raises(InvalidRequest, match=r"input_data_file|warmup setting") as e:
        model_config.read(text, RECORD, SPEC, PLAN, tmp_path if model_dir else None)
    assert says in str(e.value)


def test_a_warmup_file_named_outside_the_warmup_folder_is_refused(tmp_path: Path) -> None:
    (tmp_path / "warmup").mkdir()
    (tmp_path / "x.bin").write_bytes(b"\0" * 16)
    for name in ("../x.bin", str(tmp_path / "x.bin")):
        text = _file_config({"x": {"data_type": "TYPE_FP32", "dims": [4], "input_data_file": name}})
        with pytest.raises(InvalidRequest, match="inside the model directory's warmup/ folder"):
            model_config.read(text, RECORD, SPEC, PLAN, tmp_path)


def test_a_bytes_warmup_file_counts_its_size_in_every_row(tmp_path: Path) -> None:
    strings = Signature(inputs=(TensorSpec("s", DType.BYTES, (-1, 1)),), outputs=(TensorSpec("t", DType.BYTES, (-1, 1)),))
    record = dataclasses.replace(RECORD, signature=strings)
    (tmp_path / "warmup").mkdir()
    big = 8 << 20  # one 8 MiB string: 64 rows of it are 512 MiB
    (tmp_path / "warmup" / "s.bin").write_bytes(big.to_bytes(4, "little") + b"a" * big)
    text = _file_config({"s": {"data_type": "TYPE_STRING", "dims": [1], "input_data_file": "s.bin"}}, batch_size=64)
    with pytest.raises(InvalidRequest, match="at most 268,435,456 bytes"):
        model_config.read(text, record, SPEC, dataclasses.replace(PLAN, max_batch_size=64), tmp_path)
    # a fixed-size file row counts as the zeros it stands for, once
    wide = Signature(inputs=(TensorSpec("x", DType.FP32, (-1, -1)),), outputs=(TensorSpec("y", DType.FP32, (-1, 2)),))
    (tmp_path / "warmup" / "x.bin").write_bytes(b"\0" * (8 << 20))
    for data in ({"zero_data": True}, {"input_data_file": "x.bin"}):
        text = _file_config({"x": {"data_type": "TYPE_FP32", "dims": [2 << 20], **data}}, batch_size=24)  # 192 MiB
        model_config.read(text, dataclasses.replace(RECORD, signature=wide), SPEC, PLAN, tmp_path)


def test_warmup_samples_are_checked_against_the_dims_clients_see() -> None:
    """Triton normalizes a warm-up request as a client's: against the config's dims (helper-52's review: a
    sample of the model's wider dims loaded and warmed a shape no client may send)."""
    dynamic = Signature(inputs=(TensorSpec("x", DType.FP32, (-1, -1)),), outputs=(TensorSpec("y", DType.FP32, (-1, -1)),))
    record = dataclasses.replace(RECORD, signature=dynamic)

    def config(dims: list[int]) -> str:
        sample = {"name": "w", "batch_size": 1, "inputs": {"x": {"data_type": "TYPE_FP32", "dims": dims, "zero_data": True}}}
        return json.dumps({"max_batch_size": 4, "input": [{"name": "x", "dims": [3]}], "model_warmup": [sample]})

    assert model_config.read(config([3]), record, SPEC, PLAN).additions.warmup[0].name == "w"
    with pytest.raises(InvalidRequest, match="dims"):
        model_config.read(config([5]), record, SPEC, PLAN)
