"""Warm-up samples (Triton's ``model_warmup``): synthetic requests a model runs once it is loaded and
before anything is routed to it, so that its first clients do not pay for first-call allocations or
compilation (a JAX model, jitted, or a torch one under torch.compile compiles per shape on its first
call; OpenVINO's first call took 3-5 ms here against 0.2-0.4 ms warm).

As in Triton, a sample runs as one batch of ``batch_size`` rows of its ``dims`` when the model is
batched (``max_batch_size`` > 0), and as one request of its ``dims`` otherwise (batch size 1); a model that
takes a batch's requests apart (a Python model) gets it as Triton hands it, ``batch_size`` requests of one row
each. It runs ``count`` times (0: once) on each instance the model holds of its own (a Python model's
instances, TorchScript's copies), as Triton warms each instance; models whose instances share one runtime
session (ONNX Runtime, OpenVINO) warm it once. A sample of batch size 0 is skipped; a sample that fails fails
the load, and the instance it replaces keeps serving. Warm-up calls are not requests: they count in neither
statistics nor metrics.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from polystack.backends import hosting
from polystack.backends.base import CheckedModel
from polystack.errors import InvalidRequest, PolystackError, ShuttingDown, quote
from polystack.protocol import wire
from polystack.types import DType

log = logging.getLogger("polystack.server")
_BYTES_ELEMENT = 64  # what a BYTES element costs the runtime (a Python bytes object, then a std::string)


@dataclass(frozen=True)
class WarmupInput:
    """One input of a sample: its name, type and dims (without the batch dimension of a batched model),
    all zeros or random values (Triton's ``zero_data`` / ``random_data``), or one row read from a file
    (``input_data_file``: ``data`` holds its raw little-endian bytes, BYTES elements 4-byte
    length-prefixed, repeated for every row of the batch)."""

    name: str
    dtype: DType
    dims: tuple[int, ...]
    random: bool = False
    data_file: str = ""  # the file's name, as the config gave it
    data: bytes | None = field(default=None, repr=False)

    def row(self) -> np.ndarray:
        """The file's row, as the runtime takes it."""
        assert self.data is not None
        return wire.from_raw(self.name, self.dtype, self.dims, self.data)

    @property
    def element_bytes(self) -> int:
        """What one element takes to build (``WarmupSample.arrays``): BYTES are objects; random floats and
        bools are drawn as float64 or int64, then cast."""
        if not self.dtype.itemsize:
            return _BYTES_ELEMENT
        drawn_wider = self.random and self.dtype.numpy.kind not in "iu"
        return self.dtype.itemsize + (8 if drawn_wider else 0)

    @property
    def row_bytes(self) -> int:
        """What one row takes to build: its elements, and a BYTES file's row at its size."""
        from_file = len(self.data) if self.data is not None and not self.dtype.itemsize else 0
        return math.prod(self.dims) * self.element_bytes + from_file


@dataclass(frozen=True)
class WarmupSample:
    name: str  # as the config gave it, maybe empty
    batch_size: int
    count: int  # as the config gave it: 0 runs the sample once
    inputs: tuple[WarmupInput, ...]
    batched: bool  # the model takes a batch dimension (max_batch_size > 0): calls of batch_size rows

    def arrays(self, rng: np.random.Generator) -> dict[str, np.ndarray]:
        """The sample's inputs for one call: Triton's zeros (empty strings for BYTES), random values
        (uniform in [0, 1) for floats, where Triton's random bytes could be NaN; any value of the type for
        integers, as Triton's; empty strings for BYTES, as Triton's), or the file's row in every row."""
        out: dict[str, np.ndarray] = {}
        for i in self.inputs:
            shape = (self.batch_size, *i.dims) if self.batched else i.dims
            dtype = i.dtype.numpy
            if i.data is not None:
                arr = np.broadcast_to(i.row(), shape).copy() if self.batched else i.row()
            elif i.dtype is DType.BYTES:
                arr = np.full(shape, b"", dtype=object)
            elif not i.random:
                arr = np.zeros(shape, dtype)
            elif i.dtype is DType.BOOL:
                arr = rng.integers(0, 2, shape).astype(bool)
            elif dtype.kind in "iu":
                info = np.iinfo(dtype)
                arr = rng.integers(info.min, info.max, shape, dtype=dtype, endpoint=True)
            else:
                arr = rng.random(shape).astype(dtype)
            out[i.name] = arr
        return out

    @property
    def calls(self) -> int:
        """Runtime calls the sample makes: ``count``, at least one; none at batch size 0 (skipped)."""
        return max(1, self.count) if self.batch_size else 0

    @property
    def input_bytes(self) -> int:
        """What building the sample's inputs for one call takes (a file's BYTES elements at their size)."""
        return self.batch_size * sum(i.row_bytes for i in self.inputs)


def run(
    model: CheckedModel, samples: tuple[WarmupSample, ...], label: str, stopping: Callable[[], bool] = lambda: False
) -> None:
    """Run ``samples`` on ``model`` (of model ``label``), in order; the first that fails raises, in
    Triton's words, with the runtime's reason. A shutdown (``stopping``) ends it between two calls: the
    load fails, and the drain does not wait out the rest."""
    started = time.perf_counter()
    calls = sum(sample.calls for sample in samples) * model.instance_count
    if calls:  # a long one says what holds the load
        log.info("warming up model", extra={"model": label, "calls": calls})
    rng = np.random.default_rng(0)
    ran = []
    for n, sample in enumerate(samples):
        if not sample.calls:
            continue  # batch size 0: Triton skips these
        name = sample.name or f"sample {n}"
        inputs = sample.arrays(rng)
        for _ in range(sample.calls):
            for instance in range(model.instance_count):
                if stopping():
                    raise ShuttingDown("the server is shutting down; the warm-up stopped, and the model was not loaded")
                try:
                    _call(model, sample, inputs, instance)
                except PolystackError as e:
                    raise InvalidRequest(f"failed to run warmup sample {quote(name)}: {e.message}") from None
        ran.append(name)
    if ran:
        log.info(
            "model warmed up",
            extra={"model": label, "samples": ran, "seconds": round(time.perf_counter() - started, 3)},
        )


def _call(model: CheckedModel, sample: WarmupSample, inputs: dict[str, np.ndarray], instance: int) -> None:
    """One call of ``sample`` (``inputs``) on ``instance``: a model taking requests apart gets them on it, a batched
    sample's rows as requests of one row each; another model's instances take calls in turn, one each. A response a
    decoupled model sends apart from its run is dropped, its error raised."""
    if model.runs_apart:
        rows = range(sample.batch_size) if sample.batched else ()
        requests = [{k: v[i : i + 1] for k, v in inputs.items()} for i in rows] or [inputs]
        sinks = [_Responses() for _ in requests]
        facts = [hosting.RequestFacts(responses=sink) for sink in sinks]
        results = model.infer_apart([(r, None, f) for r, f in zip(requests, facts, strict=True)], instance=instance)
        errors = [r for r in results if isinstance(r, PolystackError)] + [s.error for s in sinks if s.error is not None]
    else:
        sink = _Responses()
        hosting.run_as(hosting.RequestFacts(responses=sink), model.infer, inputs)
        errors = [sink.error] if sink.error is not None else []
    if errors:
        raise errors[0]


class _Responses:
    """Where a decoupled model sends a warm-up sample's responses (``hosting.Responses``): dropped, the first error
    kept, which fails the sample (one sent after its run returned is not waited for)."""

    cancelled = False

    def __init__(self) -> None:
        self.error: PolystackError | None = None

    def send(self, outputs: dict[str, np.ndarray] | PolystackError | None, final: bool) -> None:
        if isinstance(outputs, PolystackError) and self.error is None:
            self.error = outputs
