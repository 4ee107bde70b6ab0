"""Triton's ``model_warmup`` in a model's config, both ways: its samples read into ``WarmupSample``s
(``warmup.py`` runs them), checked against the model (every input named once with the model's type and dims; zeros,
random values or a row of a file in the model directory's ``warmup/``; a batch that fits), and rendered back as
Triton's GET config shows them.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from polystack.errors import InvalidRequest, quote
from polystack.protocol import wire
from polystack.server.config_schema import (
    UINT32_MAX,
    config_dims,
    dtype_of,
    model_file,
    read_bool,
    read_enum,
    read_int,
    read_int_list,
    read_message,
    read_string,
    type_name,
)
from polystack.server.warmup import WarmupInput, WarmupSample
from polystack.store import ModelRecord
from polystack.types import DType, TensorSpec

_MAX_WARMUP_BYTES = 256 << 20  # one warm-up sample's inputs: a typo in its dims must not take the memory
_MAX_WARMUP_CALLS = 1000  # runtime calls of a load's warm-up: they hold a loader thread (the next load, a drain)


def render(sample: WarmupSample, max_batch: int) -> dict[str, Any]:
    """``sample`` as the config shows it; a batched sample of a model now shown without batching (its
    batcher stopped merging) has its batch in its dims, so that the config read back loads."""
    batch_size, lead = sample.batch_size, tuple[int, ...]()
    if sample.batched and not max_batch:
        batch_size, lead = min(batch_size, 1), (sample.batch_size,)  # 0 stays 0: a sample Triton skips
    inputs = {
        i.name: {
            "data_type": type_name(i.dtype),
            "dims": [*lead, *i.dims],
            **(
                {"input_data_file": i.data_file}
                if i.data is not None
                else {"random_data" if i.random else "zero_data": True}
            ),
        }
        for i in sample.inputs
    }
    return {"name": sample.name, "batch_size": batch_size, "inputs": inputs, "count": sample.count}


def read(
    value: Any, record: ModelRecord, max_batch: int, model_dir: Path | None, python: bool = False
) -> tuple[WarmupSample, ...]:
    """The config's ``model_warmup`` samples, checked against the model: every input named once with the
    model's type and dims, zeros, random values or a row from a file in ``model_dir``'s ``warmup/``, and a
    batch that fits ``max_batch`` (0: unbatched). A ``python`` model's sample may hold inputs its config does not
    declare, of the type and dims the sample gives: Triton hands its execute whatever the sample holds."""
    if value is None:
        return ()
    if not isinstance(value, list):
        raise InvalidRequest("model_warmup must be a list of warm-up samples")
    samples = []
    calls = 0
    for i, item in enumerate(value):
        where = f"model_warmup[{i}]"
        d = read_message(item, where, "model_warmup")
        given = read_string(d, "name", where)  # kept as given: the config read back is the config loaded
        name = given or f"sample {i}"
        batch_size = read_int(d, "batch_size", where, 0, UINT32_MAX)
        if batch_size > max(1, max_batch):
            raise InvalidRequest(
                f"{where} ({name}) has batch_size {batch_size}, over the model's max_batch_size {max_batch}; "
                + (f"use 1 to {max_batch}" if max_batch else "a model without batching takes samples of batch_size 1")
            )
        count = read_int(d, "count", where, 0, UINT32_MAX)
        inputs = d.get("inputs", {})
        if not isinstance(inputs, dict):
            raise InvalidRequest(f"{where}.inputs must be an object of {{input name: warm-up input}}")
        sig = record.signature
        takes = (*sig.inputs, *sig.optional)  # an optional input may be given or left out
        unknown = [k for k in inputs if k not in {t.name for t in takes}]
        if unknown and python:
            takes += tuple(_sample_spec(inputs[k], f"{where}.inputs[{k!r}]", k, max_batch) for k in unknown)
        elif unknown:
            raise InvalidRequest(
                f"{where} ({name}) names input {quote(unknown[0])}, which {record.name!r} does not take; its inputs "
                f"are {', '.join(t.name for t in takes)}"
            )
        missing = [n for n in sig.input_names if n not in inputs]
        if missing and batch_size:
            raise InvalidRequest(f"{where} ({name}) gives no data for input {missing[0]!r}; every input needs some")
        parsed = tuple(_warmup_input(inputs[t.name], f"{where}.inputs[{t.name!r}]", t, max_batch, model_dir)
                       for t in takes if t.name in inputs)  # fmt: skip
        sample = WarmupSample(given, batch_size, count, parsed, batched=max_batch > 0)
        if sample.input_bytes > _MAX_WARMUP_BYTES:
            raise InvalidRequest(
                f"{where} ({name}) would take {sample.input_bytes:,} bytes of inputs; polystack runs warm-up samples "
                f"of at most {_MAX_WARMUP_BYTES:,} bytes: use smaller dims or batch_size"
            )
        calls += sample.calls
        if calls > _MAX_WARMUP_CALLS:
            raise InvalidRequest(
                f"{where} ({name}) brings the warm-up to {calls:,} runtime calls; polystack runs at most "
                f"{_MAX_WARMUP_CALLS:,} for a load (its loads, unloads and shutdown wait for them): lower count"
            )
        samples.append(sample)
    return tuple(samples)


def _sample_spec(value: Any, where: str, name: str, max_batch: int) -> TensorSpec:
    """The tensor a warm-up sample's input the model does not declare is: of the type and dims the sample gives."""
    d = read_message(value, where, "model_warmup.input")
    dtype = dtype_of(read_enum(d, "data_type", where, "DataType"), where)
    dims = read_int_list(d.get("dims", []), f"{where}.dims", 0)
    return TensorSpec(name, dtype, ((-1,) if max_batch > 0 else ()) + tuple(dims))


def _warmup_input(value: Any, where: str, t: TensorSpec, max_batch: int, model_dir: Path | None) -> WarmupInput:
    d = read_message(value, where, "model_warmup.input")
    want = type_name(t.dtype)
    got = read_enum(d, "data_type", where, "DataType")
    if got != want:
        raise InvalidRequest(f"{where} has data_type {quote(got or None)}, but the model's input is {want}")
    dims = read_int_list(d.get("dims", []), f"{where}.dims", 0)  # Triton: every variable-size dimension given
    model_dims = config_dims(t, max_batch)
    if len(dims) != len(model_dims) or any(m not in (-1, g) for m, g in zip(model_dims, dims, strict=True)):
        raise InvalidRequest(
            f"{where} has dims {dims}, which the model's {model_dims} (max_batch_size {max_batch}) do not take; "
            "give every dimension, with a size for each -1"
        )
    # a oneof: the field set chooses, whatever its value (Triton: "the value ... will not be checked"),
    # input_data_file even when empty
    chosen = [k for k in ("zero_data", "random_data", "input_data_file") if k in d]
    if len(chosen) != 1:
        raise InvalidRequest(
            f"{where} must set one of zero_data, random_data or input_data_file, not "
            f"{' and '.join(chosen) or 'none of them'}"
        )
    if chosen[0] == "input_data_file":
        name = read_string(d, "input_data_file", where)
        data = _warmup_file(name, where, model_dir, t.dtype, tuple(dims))
        return WarmupInput(t.name, t.dtype, tuple(dims), data_file=name, data=data)
    read_bool(d, chosen[0], where)
    return WarmupInput(t.name, t.dtype, tuple(dims), chosen[0] == "random_data")


def _warmup_file(name: str, where: str, model_dir: Path | None, dtype: DType, dims: tuple[int, ...]) -> bytes:
    """The bytes of one row of a warm-up input, read as Triton reads ``input_data_file``: from the model
    directory's ``warmup/`` folder, raw and row-major, a fixed-size type's file at least one row long
    (the rest unread), a BYTES one holding the row's elements, each a 4-byte little-endian length and
    its bytes."""
    path, data = model_file(model_dir, "warmup", name, "input_data_file", where, "zero_data or random_data")
    if dtype.itemsize:
        need = math.prod(dims) * dtype.itemsize
        if len(data) < need:  # Triton's check, in its words
            raise InvalidRequest(
                f"{where}: warmup setting expects {need:,} bytes, but the data provided from {path} only has "
                f"{len(data):,} bytes"
            )
        data = data[:need]
    try:
        wire.from_raw(name, dtype, dims, data)
    except InvalidRequest as e:
        raise InvalidRequest(f"{where}: {path} does not hold one row of dims {list(dims)}: {e.message}") from None
    return data
