"""Triton's ``sequence_batching`` in a model's config, both ways: read into a ``SequencePolicy``
(``batching/sequence.py``), checked as Triton checks it (its words first) and against the model (every control and
state names a model input, and a state an output, of its type and shape; an initial state's file read from the
model directory), and rendered back as Triton's GET config shows it.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from polystack.batching.sequence import Control, SequencePolicy, State
from polystack.errors import InvalidRequest, InvalidTensor, quote
from polystack.protocol import wire
from polystack.server.config_schema import (
    MAX_MICROSECONDS,
    dtype_of,
    model_file,
    read_bool,
    read_enum,
    read_int,
    read_int_list,
    read_message,
    read_string,
    type_name,
    whole,
)
from polystack.store import ModelRecord
from polystack.types import DType, TensorSpec

# Triton's control kinds (ModelSequenceBatching.Control.Kind; "" is 0, START) -> sequence.py's
_CONTROL_KINDS = {"": "start", "CONTROL_SEQUENCE_START": "start", "CONTROL_SEQUENCE_READY": "ready",
                  "CONTROL_SEQUENCE_END": "end", "CONTROL_SEQUENCE_CORRID": "corrid"}  # fmt: skip
_CONTROL_VALUES = (("int32_false_true", DType.INT32), ("fp32_false_true", DType.FP32), ("bool_false_true", DType.BOOL))
_CORRID_TYPES = ("TYPE_UINT64", "TYPE_INT64", "TYPE_UINT32", "TYPE_INT32", "TYPE_STRING")
_MAX_STATE_BYTES = 64 << 20  # one sequence's state: a typo in its dims must not take the memory


def render(p: SequencePolicy) -> dict[str, Any]:
    """``p`` as Triton's ``sequence_batching``: what reads back (``read``) as ``p``."""
    strategy: dict[str, Any] = {"max_queue_delay_microseconds": round(p.max_queue_delay_ms * 1000)}
    if p.strategy == "oldest":
        strategy.update(
            max_candidate_sequences=p.max_candidate_sequences,
            preferred_batch_size=list(p.preferred_batch_sizes),
            preserve_ordering=p.preserve_ordering,
        )
    else:
        strategy["minimum_slot_utilization"] = p.minimum_slot_utilization
    kinds = {v: k or "CONTROL_SEQUENCE_START" for k, v in _CONTROL_KINDS.items()}
    keys = {dtype: key for key, dtype in _CONTROL_VALUES}
    controls = []
    for c in p.controls:
        # every field, as Triton's GET config prints them (the value lists not used empty; data_type a CORRID's alone)
        control: dict[str, Any] = {"kind": kinds[c.kind], **{key: [] for key, _ in _CONTROL_VALUES}}
        if c.kind == "corrid":
            control["data_type"] = type_name(c.dtype)
        else:
            control[keys[c.dtype]] = [c.false, c.true]
            control["data_type"] = "TYPE_INVALID"
        controls.append({"name": c.input, "control": [control]})
    states = []
    for st in p.states:
        state: dict[str, Any] = {
            "input_name": st.input,
            "output_name": st.output,
            "data_type": type_name(st.dtype),
            "dims": list(st.dims),
            "initial_state": [],
            "use_same_buffer_for_input_output": False,
            "use_growable_memory": False,
        }
        if st.initial_name:
            data = {"data_file": st.initial_file} if st.initial_file else {"zero_data": True}
            state["initial_state"] = [
                {"data_type": type_name(st.dtype), "dims": list(st.initial_dims or st.dims), "name": st.initial_name,
                 **data}
            ]
        states.append(state)
    shown: dict[str, Any] = {p.strategy: strategy} if p.strategy_given else {}  # none given: Triton shows none
    return {
        **shown,
        "max_sequence_idle_microseconds": round(p.idle_s * 1e6),
        "control_input": controls,
        "state": states,
        "iterative_sequence": p.iterative,
    }


def read(
    value: Any,
    record: ModelRecord,
    max_batch: int,
    instances: int,
    model_dir: Path | None,
    config: dict[str, Any],
    python: bool,
) -> SequencePolicy:
    """The ``sequence_batching`` of a config, checked as Triton checks it (its words first) and against the
    model: every control and state names a model input (and state output) of its type and shape."""
    where = "sequence_batching"
    d = read_message(value, where, "sequence_batching")
    if "direct" in d and "oldest" in d:
        raise InvalidRequest(f"{where} sets both direct and oldest; Triton's strategy is one of them (default: direct)")
    strategy = "oldest" if "oldest" in d else "direct"
    s = read_message(d.get(strategy, {}), f"{where}.{strategy}", strategy)
    delay_us = read_int(s, "max_queue_delay_microseconds", f"{where}.{strategy}", 0, MAX_MICROSECONDS)
    idle_us = read_int(d, "max_sequence_idle_microseconds", where, 0, MAX_MICROSECONDS) or 1_000_000
    extra: dict[str, Any] = {}
    if strategy == "oldest":
        preferred = read_int_list(s.get("preferred_batch_size", []), f"{where}.oldest.preferred_batch_size", 1)
        if not preferred and max_batch:  # Triton fills in the max batch size, as for dynamic batching
            preferred = [max_batch]
        if any(p > max(max_batch, 1) for p in preferred):
            raise InvalidRequest(
                f"sequence batching preferred batch size must be <= max batch size for {record.name!r}: "
                f"{where}.oldest.preferred_batch_size {preferred} against max_batch_size {max_batch}"
            )
        extra = {
            "preferred_batch_sizes": tuple(preferred),
            "max_candidate_sequences": read_int(s, "max_candidate_sequences", f"{where}.oldest", 0, 1 << 20),
            "preserve_ordering": read_bool(s, "preserve_ordering", f"{where}.oldest"),
        }
    else:
        share = s.get("minimum_slot_utilization", 0)
        if isinstance(share, str):
            share = _float(share)
        if isinstance(share, bool) or not isinstance(share, (int, float)) or not 0 <= share <= 1:
            raise InvalidRequest(
                f"sequence batching minimum slot utilization must be in range (0.0, 1.0] for {record.name!r}, not "
                f"{quote(share)}"
            )
        extra = {"minimum_slot_utilization": float(share)}
    sig = record.signature
    listed = {read_string(t, "name", "input") for t in config.get("input", []) if isinstance(t, dict)}
    shown = {t.get("name") for t in config.get("output", []) if isinstance(t, dict)}
    controls = _controls(d.get("control_input", []), record, max_batch, listed)
    if python and d.get("state"):  # before its tensors are looked for among the model's (helper-207)
        raise InvalidRequest(
            f"{where}.state: {record.name!r} is a Python model, whose implicit state polystack does not keep "
            "(tritonserver 2.51 hands such a model its initial state on every request and never keeps the state it "
            "returns); keep "
            "each sequence's state in the model, by request.correlation_id(), or serve a framework model (ONNX, "
            "TorchScript) with this state"
        )
    states = _states(d.get("state", []), record, max_batch, listed, shown, model_dir)
    names = [c.input for c in controls] + [s.input for s in states]
    twice = next((n for n in names if names.count(n) > 1), None)
    if twice is not None:
        raise InvalidRequest(f"{where} sets model input {quote(twice)} twice (as a control and a state, or two states)")
    if len(names) == len(sig.inputs):
        raise InvalidRequest(
            f"{where} sets every input of {record.name!r}, leaving clients none to send; a request needs one"
        )
    iterative = read_bool(d, "iterative_sequence", where)
    if iterative and not python:  # only a Python model's execute releases a request to run again
        raise InvalidRequest(
            f"{where}.iterative_sequence: model {record.name!r} is not a Python model, whose execute alone asks to run "
            "a request again (set_release_flags), which an iterative sequence is for; leave it out"
        )
    return SequencePolicy(
        strategy, max_batch, delay_us / 1000, idle_us / 1e6, tuple(controls), tuple(states), instances,
        strategy_given="direct" in d or "oldest" in d, iterative=iterative, **extra,
    )  # fmt: skip


def _float(text: str) -> Any:
    try:
        return float(text)
    except ValueError:
        return text


def _model_tensor(record: ModelRecord, name: str, key: str, where: str) -> TensorSpec:
    specs = record.signature.inputs if key == "input" else record.signature.outputs
    found = next((t for t in specs if t.name == name), None)
    if found is None:
        raise InvalidRequest(
            f"{where} names {quote(name)}, which is not an {key} of {record.name!r}; its {key}s are "
            f"{', '.join(t.name for t in specs)}"
        )
    return found


def _fits(t: TensorSpec, dtype: DType, dims: tuple[int, ...], max_batch: int, where: str) -> None:
    """Model tensor ``t`` takes ``dtype`` and one request's ``dims`` (with a batch of one when batched)."""
    shape = ((1,) if max_batch else ()) + dims
    if t.dtype is not dtype:
        raise InvalidRequest(f"{where}: model tensor {t.name!r} is {t.dtype.value}, but the config gives {dtype.value}")
    if not t.accepts(shape) or (max_batch and not t.batched):
        raise InvalidRequest(
            f"{where}: model tensor {t.name!r} has shape {list(t.shape)}, which does not take {list(dims)}"
            + (f" with a batch dimension (max_batch_size {max_batch})" if max_batch else " (max_batch_size 0)")
            + "; fix the config's dims or max_batch_size"
        )


def _controls(value: Any, record: ModelRecord, max_batch: int, listed: set[str]) -> list[Control]:
    """Triton's checks of ``control_input``, in its words, then against the model's inputs."""
    if not isinstance(value, list):
        raise InvalidRequest("sequence_batching.control_input must be a list")
    m = record.name  # unquoted, as Triton names it in these words
    controls: list[Control] = []
    for i, item in enumerate(value):
        where = f"sequence_batching.control_input[{i}]"
        ci = read_message(item, where, "control_input")
        name = read_string(ci, "name", where)
        if not name:
            raise InvalidRequest(f"sequence batching control tensor must have a name for {m} ({where})")
        items = ci.get("control", [])
        if not isinstance(items, list) or not items:
            raise InvalidRequest(f"{where} ({name}) must list one control")
        if len(items) > 1 or any(c.input == name for c in controls):
            raise InvalidRequest(f"sequence batching control tensor {name!r} is specified for multiple control kinds for {m}")
        c = read_message(items[0], f"{where}.control[0]", "control")
        kind_name = read_enum(c, "kind", f"{where}.control[0]", "ModelSequenceBatching.Control.Kind")
        kind = _CONTROL_KINDS.get(kind_name)
        if kind is None:
            raise InvalidRequest(
                f"{where}.control[0].kind {quote(kind_name)} is not one of Triton's: "
                f"{', '.join(k for k in _CONTROL_KINDS if k)}"
            )
        shown_kind = kind_name or "CONTROL_SEQUENCE_START"
        if any(other.kind == kind for other in controls):
            raise InvalidRequest(f"sequence batching specifies multiple {shown_kind} tensors for {m}")
        given = [(key, dtype) for key, dtype in _CONTROL_VALUES if c.get(key)]
        if kind == "corrid":
            if given:
                raise InvalidRequest(
                    "sequence batching must not specify either 'int32_false_true', 'fp32_false_true' or "
                    f"'bool_false_true' for CONTROL_SEQUENCE_CORRID for {m}"
                )
            type_ = read_enum(c, "data_type", f"{where}.control[0]", "DataType")
            if type_ not in _CORRID_TYPES:
                raise InvalidRequest(
                    f"unexpected data type for control CONTROL_SEQUENCE_CORRID for {m}. Allowed data types are "
                    "TYPE_UINT64, TYPE_INT64, TYPE_UINT32, TYPE_INT32 and TYPE_STRING"
                )
            dtype = dtype_of(type_, f"{where}.control[0]")
            false: Any = 0
            true: Any = 0
        else:
            if not given:
                raise InvalidRequest(
                    "sequence batching must specify either 'int32_false_true', 'fp32_false_true' or "
                    f"'bool_false_true' for {shown_kind} for {m}"
                )
            if len(given) > 1:
                raise InvalidRequest(
                    "sequence batching specifies more than one from 'int32_false_true', 'fp32_false_true' and "
                    f"'bool_false_true' for {shown_kind} for {m}"
                )
            key, dtype = given[0]
            values = c[key]
            if not isinstance(values, list) or len(values) != 2:
                raise InvalidRequest(
                    f"sequence batching control {key!r} must have exactly 2 entries for {shown_kind} for {m}"
                )
            false, true = (_control_value(v, dtype, f"{where}.control[0].{key}") for v in values)
        if name in listed:
            raise InvalidRequest(f"{where} sets input {name!r}, which the config lists among its inputs too; the server "
                                 "sets a control input on every request: take it out of input")
        _fits(_model_tensor(record, name, "input", where), dtype, (1,), max_batch, where)
        controls.append(Control(kind, name, dtype, false, true))
    return controls


def _control_value(v: Any, dtype: DType, where: str) -> Any:
    if dtype is DType.BOOL:
        if not isinstance(v, bool):
            raise InvalidRequest(f"{where} must hold true or false, not {quote(v)}")
        return v
    if dtype is DType.INT32:
        return whole(v, where, -(1 << 31), (1 << 31) - 1)
    if isinstance(v, str):
        v = _float(v)
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise InvalidRequest(f"{where} must hold numbers, not {quote(v)}")
    return float(v)


def _states(
    value: Any,
    record: ModelRecord,
    max_batch: int,
    listed: set[str],
    shown: set[Any],
    model_dir: Path | None,
) -> list[State]:
    """``state``: each an input and an output of the model, of its type and fixed dims; its initial state
    as Triton reads it (zero_data, or data_file in the model's initial_state/ folder)."""
    if not isinstance(value, list):
        raise InvalidRequest("sequence_batching.state must be a list")
    states: list[State] = []
    for i, item in enumerate(value):
        where = f"sequence_batching.state[{i}]"
        st = read_message(item, where, "state")
        names = [read_string(st, key, where) for key in ("input_name", "output_name")]
        if not all(names):
            raise InvalidRequest(f"{where} must set input_name and output_name: the model's state input and output")
        dtype = dtype_of(read_enum(st, "data_type", where, "DataType"), where)
        dims = tuple(read_int_list(st.get("dims", []), f"{where}.dims"))
        if any(d < 1 and d != -1 for d in dims):
            raise InvalidRequest(
                f"{where}.dims {list(dims)}: each is 1 or more, or -1 (a size the model's state output sets, as it "
                "grows)"
            )
        # the fixed part: a variable one is the model's to bound; TYPE_STRING: its elements' objects at least
        if math.prod(d for d in dims if d != -1) * (dtype.itemsize or 8) > _MAX_STATE_BYTES:
            raise InvalidRequest(f"{where}.dims {list(dims)} is over {_MAX_STATE_BYTES >> 20} MiB a sequence; check them")
        if names[0] in listed:
            raise InvalidRequest(f"{where} sets input {names[0]!r}, which the config lists among its inputs too; the "
                                 "server sets a state input on every request: take it out of input")
        read_bool(st, "use_same_buffer_for_input_output", where)
        _fits(_model_tensor(record, names[0], "input", where), dtype, dims, max_batch, where)
        _fits(_model_tensor(record, names[1], "output", where), dtype, dims, max_batch, where)
        initial, initial_name, initial_file, initial_dims = initial_state(st.get("initial_state", []), names[0],
                                                                           dtype, dims, where, model_dir)
        states.append(State(names[0], names[1], dtype, dims, initial, initial_name, initial_file, names[1] in shown,
                            initial_dims))
    return states


def initial_state(
    value: Any, name: str, dtype: DType, dims: tuple[int, ...], where: str, model_dir: Path | None
) -> tuple[bytes | None, str, str, tuple[int, ...]]:
    """A state's ``initial_state`` (Triton's checks, in its words): its bytes (None: zeros), name, file and dims
    (the state's, with a size where the state's is -1)."""
    if not isinstance(value, list) or len(value) > 1:
        count = len(value) if isinstance(value, list) else "not a list of"
        raise InvalidRequest(
            f"initial_state field for state input {name!r} must contain exactly one or zero element. Found "
            f"'{count}' elements."
        )
    if not value:
        return None, "", "", ()
    at = f"{where}.initial_state[0]"
    init = read_message(value[0], at, "initial_state")
    if read_enum(init, "data_type", at, "DataType") != type_name(dtype):
        raise InvalidRequest(
            f"The data type used for 'initial_state' field of state {name!r} does not match the state data type."
        )
    label = read_string(init, "name", at)
    if not label:
        raise InvalidRequest(f"Field 'name' must be set when using initial_state for state input {name!r}.")
    got = tuple(read_int_list(init.get("dims", []), f"{at}.dims"))
    if len(got) != len(dims) or any(g < 1 or d not in (-1, g) for g, d in zip(got, dims, strict=False)):
        raise InvalidRequest(
            f"{at}.dims {list(got)} do not match the dims of state {name!r}, {list(dims)} (a size of 1 or more for "
            "each, where the state's is -1)"
        )
    if math.prod(got) * (dtype.itemsize or 8) > _MAX_STATE_BYTES:  # each sequence starts with it
        raise InvalidRequest(f"{at}.dims {list(got)} is over {_MAX_STATE_BYTES >> 20} MiB a sequence; check them")
    dims = got
    zero = read_bool(init, "zero_data", at)
    file = read_string(init, "data_file", at)
    if zero == bool(file):
        raise InvalidRequest(f"initial_state setting expects state {name!r} to have state_data set (zero_data or data_file)")
    if zero:
        return None, label, "", got
    path, data = model_file(model_dir, "initial_state", file, "data_file", at, "zero_data")
    if dtype is DType.BYTES:  # its elements as Triton's BYTES wire form: each a 4-byte length, then its bytes
        count = math.prod(dims)
        try:
            first = wire.decode_bytes(name, (count,), _first_elements(data, count))
        except InvalidTensor as e:
            raise InvalidRequest(
                f"{at}: state {name!r} is TYPE_STRING: {path} holds its {count:,} elements each as a 4-byte "
                f"little-endian length and its bytes ({e.message.removeprefix(f'input {name!r}: ')})"
            ) from None
        return wire.encode_bytes(first), label, file, got
    need = math.prod(dims) * dtype.itemsize
    if len(data) < need:
        raise InvalidRequest(
            f"{at}: state {name!r} expects {need:,} bytes, but the data provided from {path} only has {len(data):,} bytes"
        )
    return data[:need], label, file, got


def _first_elements(data: bytes, count: int) -> bytes:
    """The bytes of the first ``count`` BYTES elements of ``data`` (what follows them is left, as the bytes past a
    numeric state's size are); all of it where it holds fewer (their decoding says so)."""
    pos = 0
    for _ in range(count):
        if pos + 4 > len(data):
            return data
        pos += 4 + int.from_bytes(data[pos : pos + 4], "little")
    return data[:pos]
