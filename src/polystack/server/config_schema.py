"""Triton's model configuration as polystack reads it: the fields of each message of model_config.proto
(``TRITON_FIELDS``), those polystack reads (the rest are accepted at Triton's defaults only, and a name that is not
Triton's is refused), Triton's defaults, the fields refused and why; and the readers of protobuf's JSON against them
(``read_message``, ``read_int``, ``read_enum``, ...), which take both field spellings (``max_batch_size``,
``maxBatchSize``) and 64-bit integers as numbers or strings, as Triton's JSON reading does; and the bounded reading of
a file a config names (``model_file``: warm-up inputs, initial states).

``model_config.py`` reads a model's config with them (``sequence_config.py`` its sequence_batching,
``warmup_config.py`` its model_warmup), ``ensemble.py`` an ensemble's.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Any

from polystack.errors import InvalidRequest, quote
from polystack.formats.triton_io import whole
from polystack.server import repository_agents
from polystack.types import DType, TensorSpec

log = logging.getLogger("polystack.server")

INT32_MAX = (1 << 31) - 1
UINT32_MAX = (1 << 32) - 1
UINT64_MAX = (1 << 64) - 1
MAX_DEPTH = 32  # Triton's own configs nest 6 deep
MAX_MICROSECONDS = 10**12  # 11.6 days: delays and timeouts past it are refused (and stay exact as floats)
MAX_FILE_BYTES = 256 << 20  # a file a config names (warm-up input, initial state)

# Triton's fields, by message (model_config.proto), where polystack reads some of them; a name outside
# these is refused as not Triton's
TRITON_FIELDS = {
    "config": {
        "name", "platform", "backend", "runtime", "version_policy", "max_batch_size", "input", "output",
        "batch_input", "batch_output", "optimization", "dynamic_batching", "sequence_batching",
        "ensemble_scheduling", "instance_group", "default_model_filename", "cc_model_filenames", "metric_tags",
        "parameters", "model_warmup", "model_operations", "model_transaction_policy", "model_repository_agents",
        "response_cache", "model_metrics",
    },
    "dynamic_batching": {
        "preferred_batch_size", "max_queue_delay_microseconds", "preserve_ordering", "priority_levels",
        "default_priority_level", "default_queue_policy", "priority_queue_policy",
    },
    "default_queue_policy": {"timeout_action", "default_timeout_microseconds", "allow_timeout_override", "max_queue_size"},
    "rate_limiter": {"resources", "priority"},
    "resource": {"name", "global", "count"},
    "instance_group": {
        "name", "kind", "count", "rate_limiter", "gpus", "secondary_devices", "profile", "passive", "host_policy",
    },
    "input": {
        "name", "data_type", "format", "dims", "reshape", "is_shape_tensor", "allow_ragged_batch", "optional",
        "is_non_linear_format_io",
    },
    "output": {"name", "data_type", "dims", "reshape", "label_filename", "is_shape_tensor", "is_non_linear_format_io"},
    "batch_input": {"kind", "target_name", "data_type", "source_input"},
    "batch_output": {"target_name", "kind", "source_input"},
    "reshape": {"shape"},
    "model_warmup": {"name", "batch_size", "inputs", "count"},
    "model_warmup.input": {"data_type", "dims", "zero_data", "random_data", "input_data_file"},
    "parameters.value": {"string_value"},
    "response_cache": {"enable"},
    "model_transaction_policy": {"decoupled"},
    "ensemble_scheduling": {"step"},
    "step": {"model_name", "model_version", "input_map", "output_map", "model_namespace"},
    "sequence_batching": {
        "direct", "oldest", "max_sequence_idle_microseconds", "control_input", "state", "iterative_sequence",
    },
    "direct": {"max_queue_delay_microseconds", "minimum_slot_utilization"},
    "oldest": {"max_candidate_sequences", "preferred_batch_size", "max_queue_delay_microseconds", "preserve_ordering"},
    "control_input": {"name", "control"},
    "control": {"kind", "int32_false_true", "fp32_false_true", "bool_false_true", "data_type"},
    "state": {
        "input_name", "output_name", "data_type", "dims", "initial_state", "use_same_buffer_for_input_output",
        "use_growable_memory",
    },
    "initial_state": {"data_type", "dims", "zero_data", "data_file", "name"},
    "optimization": {
        "graph", "priority", "cuda", "execution_accelerators", "input_pinned_memory", "output_pinned_memory",
        "gather_kernel_buffer_threshold", "eager_batching",
    },
    "graph": {"level"},
    "cuda": {"graphs", "busy_wait_events", "graph_spec", "output_copy_stream"},
    "execution_accelerators": {"gpu_execution_accelerator", "cpu_execution_accelerator"},
    "accelerator": {"name", "parameters"},
    "pinned_memory": {"enable"},
}  # fmt: skip
TRITON_FIELDS["ensemble"] = TRITON_FIELDS["config"]  # an ensemble's config (ensemble.py), read as a model's is
# what polystack reads of them; the others are accepted at Triton's defaults only
_READ = {
    "config": {"name", "platform", "backend", "max_batch_size", "input", "output", "instance_group",
               "dynamic_batching", "sequence_batching", "parameters", "model_warmup", "response_cache", "optimization",
               "batch_input", "batch_output", "model_transaction_policy"},
    "model_transaction_policy": {"decoupled"},
    "dynamic_batching": {"preferred_batch_size", "max_queue_delay_microseconds", "preserve_ordering",
                         "default_queue_policy", "priority_levels", "default_priority_level", "priority_queue_policy"},
    "default_queue_policy": TRITON_FIELDS["default_queue_policy"],
    "instance_group": {"name", "kind", "count", "gpus", "rate_limiter", "passive"},
    # Triton's rate limiter reads it only when started with --rate-limit (off by default): checked, then ignored
    "rate_limiter": TRITON_FIELDS["rate_limiter"],
    "resource": TRITON_FIELDS["resource"],
    "input": {"name", "data_type", "dims", "format", "reshape", "optional", "allow_ragged_batch"},
    "output": {"name", "data_type", "dims", "label_filename", "reshape"},
    "batch_input": TRITON_FIELDS["batch_input"],
    "batch_output": TRITON_FIELDS["batch_output"],
    "reshape": {"shape"},
    "model_warmup": TRITON_FIELDS["model_warmup"],
    "model_warmup.input": TRITON_FIELDS["model_warmup.input"],
    "parameters.value": TRITON_FIELDS["parameters.value"],
    "response_cache": TRITON_FIELDS["response_cache"],
    # an ensemble's (ensemble.py); the rest of its config at Triton's defaults, as for a model
    "ensemble": {
        "name", "platform", "backend", "max_batch_size", "input", "output", "ensemble_scheduling", "response_cache",
    },
    "ensemble_scheduling": {"step"},
    "step": {"model_name", "model_version", "input_map", "output_map"},
    # a sequence model's (sequence_config.py); use_same_buffer_for_input_output asks Triton's backends to save a copy,
    # which polystack's state (numpy arrays handed from one call to the next) never makes: read, changes nothing
    "sequence_batching": {
        "direct", "oldest", "max_sequence_idle_microseconds", "control_input", "state", "iterative_sequence",
    },
    "direct": TRITON_FIELDS["direct"],
    "oldest": TRITON_FIELDS["oldest"],
    "control_input": TRITON_FIELDS["control_input"],
    "control": TRITON_FIELDS["control"],
    "state": {"input_name", "output_name", "data_type", "dims", "initial_state", "use_same_buffer_for_input_output"},
    "initial_state": TRITON_FIELDS["initial_state"],
    # read whole (onnxruntime_config.py); cuda, gather_kernel_buffer_threshold and eager_batching are read by
    # Triton's TensorRT backend only: for other models Triton accepts and ignores them, and so does polystack
    "optimization": TRITON_FIELDS["optimization"],
    "graph": TRITON_FIELDS["graph"],
    "cuda": TRITON_FIELDS["cuda"],
    "execution_accelerators": TRITON_FIELDS["execution_accelerators"],
    "accelerator": TRITON_FIELDS["accelerator"],
    "pinned_memory": TRITON_FIELDS["pinned_memory"],
}  # fmt: skip
# Triton's defaults that are not empty values (a config Triton printed carries them)
_DEFAULTS: dict[str, Any] = {
    "version_policy": {"latest": {"num_versions": 1}},
    "optimization.input_pinned_memory": {"enable": True},
    "optimization.output_pinned_memory": {"enable": True},
    "optimization.priority": "PRIORITY_DEFAULT",
}
# oneof choices whose mere presence, even empty, asks for something
_CHOICES = {"sequence_batching", "ensemble_scheduling", "version_policy", "input.reshape", "output.reshape"}
# maps, whose keys (with empty values) ask for something
_MAPS = {"metric_tags", "dynamic_batching.priority_queue_policy"}
# fields that name files in Triton's repository layout: polystack loads its stored artifact whatever they say
_FILE_NAMES = {"default_model_filename", "cc_model_filenames"}
# fields polystack reads past, with a warning saying what it does not do, where Triton's repositories set them
# and refusing the model would be worse (helper-269: a repository with metric_tags did not load)
_IGNORED: dict[str, str] = {
    "metric_tags": "polystack's metrics are labelled by model and version only: the tags are not added to them",
    "instance_group.host_policy": (
        "polystack applies the cpu host policy (--host-policy cpu,...) to every instance, whatever its group names"
    ),
}
# field -> why polystack refuses it, or (why, what to do) where "leave it out" is not all there is to say
_UNSUPPORTED: dict[str, str | tuple[str, str]] = {
    "state.use_growable_memory": "polystack keeps sequence state in host memory, which needs no growable buffers",
    "ensemble_scheduling": (
        "a model's config cannot make it an ensemble: ensembles are folders of their own in a --model-repository "
        '(platform "ensemble" and an empty version folder), served beside the models they run'
    ),
    "version_policy": (
        "a model's versions come from the command line (NAME:VERSION, or the latest), its repository folder's "
        "config, or a load's config"
    ),
    "model_metrics": (
        "polystack's histograms (request, queue and compute durations, batch sizes) have the same buckets for every "
        "model"
    ),
    "model_repository_agents": repository_agents.WHERE,
}


_CAMEL = re.compile(r"(?<=[a-z0-9])([A-Z])")
_ENUM_NUMBER = re.compile(r"\s*[+-]?[0-9]+\s*")  # an enum's number given as a string ("2", " 2", "+2")


def read_message(value: Any, where: str, kind: str) -> dict[str, Any]:
    """``value`` as a message of ``kind`` with snake_case keys; Triton's fields outside ``_READ[kind]``
    must be at their defaults, and names that are not Triton's are refused."""
    if not isinstance(value, dict):
        raise InvalidRequest(f"{where} must be a JSON object")
    out: dict[str, Any] = {}
    seen: set[str] = set()
    for key, v in value.items():
        snake = _snake(key)
        if snake in seen:
            raise InvalidRequest(f"{where} sets {snake} twice")
        seen.add(snake)
        if snake not in TRITON_FIELDS[kind]:
            raise InvalidRequest(
                f"{where} sets {quote(key)}, which is not a field of Triton's model configuration there; "
                f"polystack reads {', '.join(sorted(_READ[kind]))}"
            )
        if v is None:
            continue  # protobuf's JSON: null is the field's default
        if snake in _READ[kind]:
            out[snake] = v
            continue
        path = snake if kind in ("config", "ensemble") else f"{kind}.{snake}"
        if path in _FILE_NAMES:
            _file_names(v, path)
            if path == "default_model_filename":  # shown in GET config as given (Triton fills it only when empty)
                out[snake] = v
            continue
        if _is_default(v, path, 0):
            continue
        if path in _IGNORED:
            log.warning(f"{where} sets {path}, which polystack reads past: {_IGNORED[path]}", extra={"value": v})
            continue
        why = _UNSUPPORTED.get(path)
        if why:
            why, todo = (why, "leave it out") if isinstance(why, str) else why
            raise InvalidRequest(f"the config sets {path}, which polystack cannot honour: {why}; {todo}")
        raise InvalidRequest(
            f"{where} sets {quote(key)}, which polystack does not read (it reads {', '.join(sorted(_READ[kind]))}); "
            "leave it out, or set it to Triton's default"
        )
    return out


def _snake(key: str) -> str:
    return _CAMEL.sub(r"_\1", key).lower()


def _is_default(value: Any, path: str, depth: int) -> bool:
    """Whether ``value`` is what Triton has at ``path`` when the config does not set it."""
    if depth > MAX_DEPTH:
        raise InvalidRequest(f"the config nests deeper than {MAX_DEPTH} levels at {path}")
    if path in _DEFAULTS and _normal(value) == _DEFAULTS[path]:
        return True
    if path in _CHOICES:  # even empty, these choose something: Triton's sequence batcher, all versions, ...
        return value is None
    if path in _MAPS:
        return value is None or value == {}
    if isinstance(value, dict):
        return all(_is_default(v, f"{path}.{_snake(k)}", depth + 1) for k, v in value.items())
    if isinstance(value, list):
        return not value
    return _normal(value) in (None, False, 0, "")


def _normal(value: Any, depth: int = 0) -> Any:
    """``value`` with snake_case keys and whole numbers as ints, however protobuf's JSON wrote them."""
    if depth > MAX_DEPTH:
        raise InvalidRequest(f"the config nests deeper than {MAX_DEPTH} levels")
    if isinstance(value, dict):
        return {_snake(k): _normal(v, depth + 1) for k, v in value.items()}
    if isinstance(value, list):
        return [_normal(v, depth + 1) for v in value]
    if isinstance(value, str) and len(value) <= 20 and value.isascii() and value.isdigit():
        return int(value)
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


def _file_names(value: Any, path: str) -> None:
    """Triton's file names: polystack loads its stored artifact whatever they say, but they must be names."""
    names = value.values() if isinstance(value, dict) else [value]
    if not all(isinstance(n, str) for n in names):
        raise InvalidRequest(f"{path} must hold file names (strings), not {quote(value)}")


def read_string(d: dict[str, Any], key: str, where: str) -> str:
    v = d.get(key, "")
    if not isinstance(v, str):
        raise InvalidRequest(f"{where}.{key} must be a string, not {quote(v)}")
    return v


def read_enum(d: dict[str, Any], key: str, where: str, enum: str) -> str:
    """An enum field's value name ("": unset, as its number 0 is); protobuf's JSON, which Triton reads
    configs with, gives the name or the number (a number, or digits in a string). The caller checks names."""
    v = d.get(key, "")
    if isinstance(v, str):
        if not _ENUM_NUMBER.fullmatch(v):
            return v
        if len(v) <= 24:  # digits past it are refused by whole, as not a whole number in range
            v = int(v)  # as protobuf reads them: spaces around, a sign
    if isinstance(v, bool) or not isinstance(v, (str, int, float)):
        raise InvalidRequest(
            f"{where}.{key} must be a name such as those GET config shows, or its number, not {quote(v)}"
        )
    from tritonclient.grpc import model_config_pb2  # Triton's model_config.proto, generated

    values = model_config_pb2.DESCRIPTOR.enum_types_by_name.get(enum) or _nested_enum(model_config_pb2, enum)
    number = whole(v, f"{where}.{key}", -(1 << 31), (1 << 31) - 1)
    if number not in values.values_by_number:
        raise InvalidRequest(
            f"{where}.{key} {number} is not a value of Triton's {enum}; its values are "
            f"{', '.join(f'{n.number} ({n.name})' for n in values.values)}"
        )
    return "" if number == 0 else str(values.values_by_number[number].name)


def _nested_enum(module: Any, path: str) -> Any:
    """The descriptor of enum ``Message.Enum`` (or ``Message.Nested.Enum``) in ``module``."""
    *messages, name = path.split(".")
    found = module.DESCRIPTOR.message_types_by_name[messages[0]]
    for nested in messages[1:]:
        found = found.nested_types_by_name[nested]
    return found.enum_types_by_name[name]


def read_bool(d: dict[str, Any], key: str, where: str) -> bool:
    v = d.get(key, False)
    if not isinstance(v, bool):
        raise InvalidRequest(f"{where}.{key} must be true or false, not {quote(v)}")
    return v


def read_int(d: dict[str, Any], key: str, where: str, lo: int, hi: int) -> int:
    return whole(d.get(key, 0), f"{where}.{key}", lo, hi)


def read_int_list(value: Any, where: str, lo: int = -1) -> list[int]:
    if not isinstance(value, list):
        raise InvalidRequest(f"{where} must be a list of whole numbers")
    return [whole(v, where, lo, (1 << 63) - 1) for v in value]


def io_dims(value: Any, where: str, key: str, name: str, model: str) -> list[int]:
    """A config's input's or output's dims, each 1 or more, or -1 (any size), as Triton's ValidateIOShape takes
    them (its words)."""
    dims = read_int_list(value, f"{where}.dims", -(1 << 63))
    if any(d < 1 and d != -1 for d in dims):
        raise InvalidRequest(
            f"model {key} {quote(name)} dimension must be integer >= 1, or -1 to indicate a variable-size dimension "
            f"for {model} (its dims are {dims})"
        )
    return dims


def type_name(dtype: DType) -> str:
    return "TYPE_STRING" if dtype is DType.BYTES else f"TYPE_{dtype.value}"


def dtype_of(name: str, where: str) -> DType:
    """The datatype a config's ``data_type`` (``read_enum``: TYPE_FP32, ...) names."""
    found = {type_name(d): d for d in DType}.get(name)
    if found is None:
        raise InvalidRequest(
            f"{where}.data_type {quote(name or None)} is not a type polystack serves; give one of "
            f"{', '.join(type_name(d) for d in DType)}"
        )
    return found


def model_file(
    model_dir: Path | None, folder: str, name: str, field: str, where: str, instead: str
) -> tuple[Path, bytes]:
    """The path and bytes of the file a config's ``field`` names, in the model directory's ``folder`` (Triton's
    ``warmup/``, ``initial_state/``): named relative to it and staying inside it, at most 256 MiB."""
    if model_dir is None:
        raise InvalidRequest(
            f"{where} reads {field} {quote(name)}, but the model has no model directory to read it from (no "
            "repository folder or --model-config file); give its config at start (serve --model-config "
            f"NAME=DIR/config.pbtxt, the file in DIR/{folder}/), or use {instead}"
        )
    inside = (model_dir / folder).resolve()
    path = model_dir / folder / name
    if Path(name).is_absolute() or ".." in Path(name).parts or not path.resolve().is_relative_to(inside):
        raise InvalidRequest(
            f"{where} reads {field} {quote(name)}; name a file inside the model directory's {folder}/ folder "
            f"({model_dir / folder}), relative to it"
        )
    try:
        if not name or not path.is_file():
            raise InvalidRequest(f"{where} reads {field} {quote(name)}, but {path} is not a file; put it there")
        size = path.stat().st_size
        if size > MAX_FILE_BYTES:
            raise InvalidRequest(
                f"{where} reads {field} {path} of {size:,} bytes; polystack reads model files of at most "
                f"{MAX_FILE_BYTES:,} bytes"
            )
        return path, path.read_bytes()
    except OSError as e:
        raise InvalidRequest(f"{where} cannot read {field} {path}: {e.strerror}") from None


def config_dims(t: TensorSpec, max_batch: int) -> list[int]:
    """``t``'s dims as a config gives them: without the batch dimension of a model that batches."""
    return list(t.shape[1:] if max_batch > 0 else t.shape)
