"""Tensor types: DType (the OIP datatypes), TensorSpec and Signature.

The mapping between numpy, ONNX and the Open Inference Protocol datatype names lives here and
nowhere else. Dynamic dimensions are -1; a symbolic dimension name (``"batch"``) is kept beside it.
"""

from __future__ import annotations

import dataclasses
import enum
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from polystack.errors import InvalidTensor


def _bfloat16() -> np.dtype[Any]:
    import ml_dtypes  # small, and a dependency of onnx; numpy itself has no bfloat16

    return np.dtype(ml_dtypes.bfloat16)


class DType(str, enum.Enum):
    """A tensor element type, named as the Open Inference Protocol names it."""

    BOOL = "BOOL"
    UINT8 = "UINT8"
    UINT16 = "UINT16"
    UINT32 = "UINT32"
    UINT64 = "UINT64"
    INT8 = "INT8"
    INT16 = "INT16"
    INT32 = "INT32"
    INT64 = "INT64"
    FP16 = "FP16"
    BF16 = "BF16"
    FP32 = "FP32"
    FP64 = "FP64"
    BYTES = "BYTES"

    @property
    def numpy(self) -> np.dtype[Any]:
        """The numpy dtype that holds this type (BYTES: object arrays of ``bytes``)."""
        if self is DType.BF16:
            return _bfloat16()
        return _NUMPY[self]  # built once: np.dtype() from a name costs microseconds on the request path

    @property
    def itemsize(self) -> int:
        """Bytes per element in the raw little-endian wire form; 0 for BYTES (variable length)."""
        return 0 if self is DType.BYTES else self.numpy.itemsize

    @classmethod
    def from_numpy(cls, dtype: np.dtype[Any] | type) -> DType:
        dt = np.dtype(dtype)
        found = _FROM_NUMPY.get(dt)  # the common case first: dt.name is slow enough to show in profiles
        if found is not None:
            return found
        if dt.kind in ("O", "S", "U"):
            return DType.BYTES
        if dt.name == "bfloat16":
            return DType.BF16
        try:
            return _FROM_NUMPY[dt]
        except KeyError:
            raise InvalidTensor(
                f"numpy dtype {dt.str} has no Open Inference Protocol equivalent; use a native-endian "
                f"{', '.join(d.value for d in DType)} array"
            ) from None

    @classmethod
    def from_onnx(cls, elem_type: int) -> DType:
        try:
            return _FROM_ONNX[elem_type]
        except KeyError:
            raise InvalidTensor(
                f"ONNX element type {elem_type} is not supported; polystack serves {', '.join(d.value for d in DType)}"
            ) from None

    @classmethod
    def parse(cls, name: str) -> DType:
        found = _BY_VALUE.get(name)  # the protocol's own spelling, as every client sends it
        if found is not None:
            return found
        try:
            return cls(name.upper())
        except ValueError:
            raise InvalidTensor(
                f"unknown datatype {name!r}; expected one of {', '.join(d.value for d in DType)}"
            ) from None


_TO_NUMPY: dict[DType, str] = {
    DType.BOOL: "bool",
    DType.UINT8: "uint8",
    DType.UINT16: "uint16",
    DType.UINT32: "uint32",
    DType.UINT64: "uint64",
    DType.INT8: "int8",
    DType.INT16: "int16",
    DType.INT32: "int32",
    DType.INT64: "int64",
    DType.FP16: "float16",
    DType.FP32: "float32",
    DType.FP64: "float64",
    DType.BYTES: "object",
}
_NUMPY: dict[DType, np.dtype[Any]] = {k: np.dtype(v) for k, v in _TO_NUMPY.items()}
_BY_VALUE: dict[str, DType] = {d.value: d for d in DType}
_FROM_NUMPY: dict[np.dtype[Any], DType] = {np.dtype(v): k for k, v in _TO_NUMPY.items() if k is not DType.BYTES}
# onnx.TensorProto.DataType values, written out so that this module needs no onnx import.
_FROM_ONNX: dict[int, DType] = {
    1: DType.FP32,
    2: DType.UINT8,
    3: DType.INT8,
    4: DType.UINT16,
    5: DType.INT16,
    6: DType.INT32,
    7: DType.INT64,
    8: DType.BYTES,  # STRING
    9: DType.BOOL,
    10: DType.FP16,
    11: DType.FP64,
    12: DType.UINT32,
    13: DType.UINT64,
    16: DType.BF16,
}

Dim = int  # -1 means dynamic


@dataclass(frozen=True)
class TensorSpec:
    """One named input or output: datatype and shape (-1 for a dynamic dimension)."""

    name: str
    dtype: DType
    shape: tuple[Dim, ...]
    dim_names: tuple[str | None, ...] = ()  # symbolic names of dynamic dims, where the model gives them

    def __post_init__(self) -> None:
        if self.dim_names and len(self.dim_names) != len(self.shape):
            raise ValueError("dim_names must have one entry per dimension")

    @property
    def batched(self) -> bool:
        """True when the first dimension is dynamic, i.e. the model takes a batch on dim 0."""
        return bool(self.shape) and self.shape[0] == -1

    def accepts(self, shape: Sequence[int]) -> bool:
        return len(shape) == len(self.shape) and all(
            want == -1 or want == got for want, got in zip(self.shape, shape, strict=True)
        )

    def describe(self) -> str:
        dims = []
        for i, d in enumerate(self.shape):
            name = self.dim_names[i] if self.dim_names else None
            dims.append(name if (d == -1 and name) else str(d))
        return f"{self.name}: {self.dtype.value}[{', '.join(dims)}]"

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"name": self.name, "datatype": self.dtype.value, "shape": list(self.shape)}
        if any(self.dim_names):
            out["dim_names"] = list(self.dim_names)
        return out

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> TensorSpec:
        return cls(
            name=str(d["name"]),
            dtype=DType.parse(str(d["datatype"])),
            shape=tuple(int(x) for x in d["shape"]),
            dim_names=tuple(d.get("dim_names") or ()),
        )


@dataclass(frozen=True)
class Signature:
    """What a model takes and returns."""

    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    # inputs a request may leave out: graph inputs with a default (an ONNX initializer) that a Triton config
    # marks ``optional``; never batched (Triton allows them only without batching)
    optional: tuple[TensorSpec, ...] = ()
    _by_name: dict[str, TensorSpec] = field(default_factory=dict, compare=False, repr=False)

    def __post_init__(self) -> None:
        self._by_name.update({t.name: t for t in (*self.inputs, *self.optional)})

    def input(self, name: str) -> TensorSpec:
        return self._by_name[name]

    def with_shapes(self, shapes: Mapping[str, tuple[int, ...]]) -> Signature:
        """This signature with the tensors ``shapes`` names given those shapes (a config's fixed dims)."""

        def shaped(t: TensorSpec) -> TensorSpec:
            if t.name not in shapes:
                return t
            shape = shapes[t.name]  # a dim fixed loses its symbolic name; other dims, or a reshape, lose them all
            if len(shape) != len(t.dim_names):
                return dataclasses.replace(t, shape=shape, dim_names=())
            names = tuple(n if d == -1 else None for n, d in zip(t.dim_names, shape, strict=True))
            return dataclasses.replace(t, shape=shape, dim_names=names)

        return Signature(
            tuple(map(shaped, self.inputs)), tuple(map(shaped, self.outputs)), tuple(map(shaped, self.optional))
        )

    @property
    def input_names(self) -> list[str]:
        return [t.name for t in self.inputs]

    @property
    def output_names(self) -> list[str]:
        return [t.name for t in self.outputs]

    @property
    def takes_nothing(self) -> bool:
        """True for a model that takes no inputs (a Python model: a generator, a self-test)."""
        return not (self.inputs or self.optional)

    @property
    def may_batch(self) -> bool:
        """Whether a config's max_batch_size may give the model a batch dimension: it is ``batched``, or takes no
        inputs (a batched Python model's requests, carrying no batch, are then all refused, as Triton's are)."""
        return self.batched or self.takes_nothing

    @property
    def batched(self) -> bool:
        """True when every input takes a batch on its first dimension and no output declares a fixed
        first dimension, which could not hold one row per input row (Triton's max_batch_size > 0).
        An output of unknown or no rank does not decide it: ONNX leaves both without dimensions."""
        return self.batches_with(self.output_names)

    def batches_with(self, outputs: Collection[str]) -> bool:
        """``batched``, of the ``outputs`` named alone (those a config lists: the others are never asked for,
        so that a fixed first dimension of theirs stops no batch, as in Triton's ONNX Runtime backend)."""
        inputs = self.inputs or self.optional  # a model whose inputs are all optional (Triton's Python models)
        shown = [t for t in self.outputs if t.name in outputs]
        return bool(inputs) and all(t.batched for t in inputs) and all(t.batched or not t.shape for t in shown)

    def check_outputs(self, outputs: Sequence[str], model: str = "") -> None:
        """Raise InvalidTensor unless every output asked for is the model's (Triton's words first)."""
        unknown = [o for o in outputs if o not in self.output_names]
        if unknown:
            raise InvalidTensor(
                f"unexpected inference output {unknown[0]!r}{_for(model)}; the model returns "
                f"{', '.join(self.output_names)}"
            )

    def validate_inputs(
        self, inputs: Mapping[str, np.ndarray], max_batch_size: int | None = None, model: str = ""
    ) -> None:
        """Raise InvalidTensor unless inputs fit: Triton's words first (its clients and tests look for them), then
        what the model expects. ``model``: its name, which Triton's words carry."""
        missing = [n for n in self.input_names if n not in inputs]
        unexpected = [n for n in inputs if n not in self._by_name]
        of = _for(model) if missing or unexpected else ""  # for error messages only: valid requests skip it
        if missing and not (len(self.inputs) <= len(inputs) <= len(self._by_name)):  # Triton's count check
            want = (
                f"{len(self.inputs)} inputs"
                if not self.optional
                else f"number of inputs between {len(self.inputs)} and {len(self._by_name)}"
            )
            got = ",".join(f"'{n}'" for n in inputs)
            raise InvalidTensor(
                f"expected {want} but got {len(inputs)} inputs{of}. Got input(s) [{got}], but missing required "
                f"input(s) [{','.join(f'{n!r}' for n in missing)}]. Please provide all required input(s). The model "
                f"expects {self._expected()}"
            )
        if unexpected:
            raise InvalidTensor(
                f"unexpected inference input {unexpected[0]!r}{of}; the model expects {self._expected()}"
            )
        if missing:  # as many inputs as it may take, a required one left out for an optional one
            raise InvalidTensor(
                f"missing required input(s) [{','.join(f'{n!r}' for n in missing)}]{of}. Please provide all required "
                f"input(s). The model expects {self._expected()}"
            )
        # none given where none is required: Triton counts a request's batch from its first input (its words)
        if max_batch_size and not inputs:
            named = f"model {model!r}" if model else "the model"
            raise InvalidTensor(
                f"out of bounds index 0: request has 0 inputs; {named} has a batch dimension (max_batch_size "
                f"{max_batch_size}), which a request's first input carries: "
                + ("send its inputs" if self.optional else f"it takes none, so serve {named} with max_batch_size 0")
            )
        batch: int | None = None
        # optional inputs given follow: they carry the batch where the model batches (a Python model's, whose
        # max_batch_size is given: Triton checks every input given); ONNX Runtime's are of models that do not batch
        required = len(self.inputs)
        given = [t for t in self.optional if t.name in inputs] if self.optional else []
        for i, spec in enumerate((*self.inputs, *given)):
            arr = inputs[spec.name]
            got_type = DType.from_numpy(arr.dtype)
            if got_type is not spec.dtype:
                raise InvalidTensor(
                    f"inference input {spec.name!r} data-type is {got_type.value!r}, but "
                    f"{f'model {model!r}' if model else 'the model'} expects {spec.dtype.value!r}; convert it before sending"
                )
            if not arr.shape and max_batch_size and spec.batched:  # Triton's words (Normalize), then what to do
                raise InvalidTensor(
                    f"input {spec.name!r} has no shape but model requires batch dimension"
                    + (f" for {model!r}" if model else "")
                    + f": it takes {_dims(spec.shape)}, the batch first; send a shape of [1, ...] for one row"
                )
            if not spec.accepts(arr.shape):
                raise InvalidTensor(  # Triton's words, its note where the model batches
                    f"unexpected shape for input {spec.name!r}{_for(model)}. Expected {_dims(spec.shape)}, got "
                    f"{_dims(arr.shape)}"
                    + (_BATCH_NOTE if max_batch_size and spec.batched else ". " + ("(-1: any size)" if -1 in spec.shape else ""))
                )
            if spec.batched and max_batch_size != 0 and (i < required or max_batch_size):  # 0: no batch dimension
                if batch is None:
                    batch = arr.shape[0]
                elif arr.shape[0] != batch:
                    raise InvalidTensor(  # Triton's words, then what to do
                        f"input {spec.name!r} batch size does not match other inputs"
                        + (f" for {model!r}" if model else "")
                        + f": it has {arr.shape[0]}, another input {batch}; every input carries the same batch size "
                        "on dimension 0"
                    )
        if max_batch_size and batch == 0:  # Triton refuses an empty batch before its model runs
            raise InvalidTensor(
                "inference request batch-size must be >= 1"
                + (f" for {model!r}" if model else "")
                + ", not 0: the inputs have no rows; send at least one"
            )
        if max_batch_size and batch is not None and batch > max_batch_size:
            raise InvalidTensor(
                f"inference request batch-size must be <= {max_batch_size}"
                + (f" for {model!r}" if model else "")
                + f", not {batch}; split the request"
            )

    def _expected(self) -> str:
        # built only for an error message: every valid request used to pay for it (py-spy, serving)
        described = [t.describe() for t in self.inputs] + [f"{t.describe()} (optional)" for t in self.optional]
        return ", ".join(described) or "no inputs"

    def to_dict(self) -> dict[str, Any]:
        out = {"inputs": [t.to_dict() for t in self.inputs], "outputs": [t.to_dict() for t in self.outputs]}
        if self.optional:
            out["optional"] = [t.to_dict() for t in self.optional]
        return out

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Signature:
        return cls(
            inputs=tuple(TensorSpec.from_dict(t) for t in d["inputs"]),
            outputs=tuple(TensorSpec.from_dict(t) for t in d["outputs"]),
            optional=tuple(TensorSpec.from_dict(t) for t in d.get("optional", ())),
        )


# what Triton adds to a shape refused by a model that batches (its request checks' words)
_BATCH_NOTE = (
    ". NOTE: Setting a non-zero max_batch_size in the model config requires a batch dimension to be prepended to "
    "each input shape. If you want to specify the full shape including the batch dim in your input dims config, "
    "try setting max_batch_size to zero. See the model configuration docs for more info on max_batch_size."
)


def _dims(shape: Sequence[int]) -> str:
    """A shape as Triton's messages write it: ``[-1,16]``."""
    return "[" + ",".join(str(d) for d in shape) + "]"


def _for(model: str) -> str:
    """`` for model 'm'`` as Triton's messages name a model ("": none to name)."""
    return f" for model {model!r}" if model else ""
