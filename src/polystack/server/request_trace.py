"""One sampled inference request's trace: Triton's timestamps (and, at its level TENSORS, the request's tensors) as
it passes the front end, the queue and the model, with its ensemble steps' traces as children, kept until it is
answered and then handed to its ``Sink``: Triton's trace files (trace_files.py) or OpenTelemetry spans (tracing.py).

The timestamps are ``time.perf_counter_ns()`` readings: the monotonic clock, Triton's steady clock. Their names are
Triton's: the front end's (``HTTP_RECV_START``/``_END``, ``HTTP_SEND_START``/``_END``, ``GRPC_WAITREAD_*``,
``GRPC_SEND_*``, ``INFER_RESPONSE_COMPLETE``), the request's (``REQUEST_START``, ``QUEUE_START``, ``REQUEST_END``) and
its model call's (``COMPUTE_START``, ``COMPUTE_INPUT_END``, ``COMPUTE_OUTPUT_START``, ``COMPUTE_END``).
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping
from typing import Any, Protocol

import numpy as np

TIMESTAMPS, TENSORS = 1, 2  # Triton's trace level bits
_ids = itertools.count(1)  # trace ids, as Triton's: one count for the process, from 1


class Sink(Protocol):
    """Where finished traces go."""

    def add(self, trace: RequestTrace) -> None:
        """A request's trace (its steps' in ``trace.group``), once it is answered."""

    def dropped(self) -> None:
        """A trace taken will not come: its request was refused before its model ran (Triton traces none)."""


class RequestTrace:
    """One request's trace: what it recorded, in the order it recorded it. ``end`` on the request's own trace hands
    it, its steps' with it, to the sink; ``drop`` instead hands nothing; either is idempotent."""

    __slots__ = (
        "_ended",
        "context",
        "error",
        "group",
        "handed",
        "id",
        "level",
        "model",
        "parent",
        "protocol",
        "request_id",
        "sink",
        "spans",
        "stamps",
        "tensors",
        "version",
    )  # fmt: skip

    def __init__(self, level: int, sink: Sink, parent: RequestTrace | None = None) -> None:
        self.id = next(_ids)
        self.level = level
        self.sink = sink
        self.parent = parent  # the ensemble's trace whose step this is
        self.group: list[RequestTrace] = parent.group if parent is not None else []  # the request's own, then its steps'
        self.group.append(self)
        self.model, self.version, self.request_id = "", 0, ""
        self.stamps: list[tuple[str, int]] = []
        self.tensors: list[tuple[str, str, np.ndarray]] = []  # (activity, name, array)
        self.protocol = ""  # the front end's ("HTTP", "GRPC") that received the request, if one did
        self.error: BaseException | None = None  # what its run failed with
        self.context: object = None  # the caller's trace context (OpenTelemetry), for the request's own trace
        # its OpenTelemetry spans, started as it begins (the front end's, None for a step's; its run's; and the
        # offset of the wall clock they started on), which the sink ends once it is answered (None: it makes none)
        self.spans: tuple[Any, Any, int] | None = None
        self.handed: str | None = None  # the context of its run's span a Python model gets (``get_context()``)
        self._ended = False

    @property
    def root(self) -> RequestTrace:
        return self.group[0]

    def child(self) -> RequestTrace:
        """The trace of a step of this (ensemble) request."""
        return RequestTrace(self.level, self.sink, self)

    def begin(self, model: str, version: int, request_id: str, ns: int) -> None:
        self.model, self.version, self.request_id = model, version, request_id
        self.stamp("REQUEST_START", ns)

    def stamp(self, name: str, ns: int) -> None:
        if self.level & TIMESTAMPS:
            self.stamps.append((name, ns))

    def stages(
        self,
        queued: int,
        compute_start: int,
        compute_end: int,
        inputs: Mapping[str, np.ndarray],
        outputs: Mapping[str, np.ndarray],
    ) -> None:
        """The request's run: QUEUE_START, its inputs as queued, its outputs, and the COMPUTE_ timestamps of the
        model call that answered it (a batched request's are its batch's). polystack hands the runtime the tensors
        as they are (no copy in or out, which Triton's backends time): the input end is the call's start and the
        output start its end, as the statistics count them."""
        self.stamp("QUEUE_START", queued)
        self.inputs(inputs)
        self.outputs(outputs)
        self.stamp("COMPUTE_START", compute_start)
        self.stamp("COMPUTE_INPUT_END", compute_start)
        self.stamp("COMPUTE_OUTPUT_START", compute_end)
        self.stamp("COMPUTE_END", compute_end)

    def inputs(self, inputs: Mapping[str, np.ndarray]) -> None:
        """The request's inputs as queued (at level TENSORS): Triton records them as it enqueues a request, an
        ensemble's too."""
        if self.level & TENSORS:
            self.tensors += [("TENSOR_QUEUE_INPUT", name, a) for name, a in inputs.items()]

    def outputs(self, outputs: Mapping[str, np.ndarray]) -> None:
        """A response's outputs (at level TENSORS): Triton records them as it sends a response, an ensemble's and
        each of a stream's too."""
        if self.level & TENSORS:
            self.tensors += [("TENSOR_BACKEND_OUTPUT", name, a) for name, a in outputs.items()]

    def end(self) -> None:
        """The request is answered: its trace goes to the sink (a step's own end does nothing)."""
        root = self.root
        if self is root and not root._ended:
            root._ended = True
            root.sink.add(root)

    def drop(self) -> None:
        """The request was refused before its model ran: Triton traces no such request (a step's is left out of its
        ensemble's)."""
        root = self.root
        if self is not root:
            if self in self.group:
                self.group.remove(self)
        elif not root._ended:
            root._ended = True
            root.sink.dropped()
