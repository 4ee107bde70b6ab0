"""Triton's trace files: what tritonserver writes in its ``triton`` trace mode, for the tools and scripts that read
them (Triton's ``trace_summary.py``, dashboards fed from them).

A file is one JSON array. A sampled request adds objects to it, written once its answer has gone:

    {"id":1,"model_name":"mlp","model_version":1,"request_id":"r7"}      (request_id when the request has one;
                                                                          "parent_id":N for an ensemble's step)
    {"id":1,"timestamps":[{"name":"REQUEST_START","ns":2356425054779273}]}    (one object a timestamp, level
                                                                               TIMESTAMPS)
    {"id":1,"activity":"TENSOR_QUEUE_INPUT","tensor":{"name":"x","data":"0.5,1","shape":"1,2","dtype":"FP32"}}
                                                                              (one object a tensor, level TENSORS)

The timestamps are the monotonic clock's nanoseconds (``time.perf_counter_ns``, Triton's steady clock): the front
end's receipt (``HTTP_RECV_START``/``_END``, or ``GRPC_WAITREAD_START``/``_END``), ``REQUEST_START``, ``QUEUE_START``,
``COMPUTE_START``, ``COMPUTE_INPUT_END``, ``COMPUTE_OUTPUT_START``, ``COMPUTE_END``, ``INFER_RESPONSE_COMPLETE`` (the
answer back at the front end), ``REQUEST_END``, and the front end's answer (``HTTP_SEND_START``/``_END``, or
``GRPC_SEND_*``), written in the order tritonserver 2.51 writes them (``_ORDER``), which is not quite the order they
happened in. A batched request's compute timestamps are its batch's. An ensemble's steps are traces of their own (new
ids) whose objects name the ensemble's trace as ``parent_id``, written just before it. A request refused before its
model runs is not traced.

When they are written is ``Collector``'s: as their answers go, or ``log_frequency`` at a time into ``<file>.0``,
``<file>.1``, ..., each a whole JSON array, or all at once when a ``trace_count`` is spent.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import logging
import os
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np

from polystack.server.request_trace import TIMESTAMPS, RequestTrace
from polystack.types import DType

log = logging.getLogger("polystack.server.trace_files")



class TraceFile:
    """One trace file and its numbered siblings, written by one thread of their own (``submit``): a trace's text
    (a trace at level TENSORS may hold millions of numbers) is made and written off the event loop, in the order
    its work was handed over. A failed write is logged, as Triton logs it, and the requests go on."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._main: Any = None  # the file itself, opened at its first trace
        self._index = itertools.count()
        self._writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="trace-file")
        self._closed = False

    @staticmethod
    def check(path: str) -> None:
        """Raise OSError when ``path`` cannot be written (its folder missing, a folder itself, no permission), so
        that a server refuses it at start instead of losing every trace."""
        if os.path.isdir(path):
            raise IsADirectoryError(f"{path} is a folder")
        folder = os.path.dirname(os.path.abspath(path))
        if not os.path.isdir(folder):
            raise FileNotFoundError(f"its folder {folder} does not exist")
        if not os.access(folder, os.W_OK) or (os.path.exists(path) and not os.access(path, os.W_OK)):
            raise PermissionError(f"{path} cannot be written")

    def submit(self, work: Callable[..., None], *args: Any) -> None:
        """Run ``work`` on the writer thread, after what was handed over before it (nothing once closed)."""
        with contextlib.suppress(RuntimeError):  # closed: the server is stopping, and later traces are dropped
            self._writer.submit(self._logged, work, *args)

    @staticmethod
    def _logged(work: Callable[..., None], *args: Any) -> None:
        try:
            work(*args)
        except Exception:
            log.exception("writing a trace failed")

    def append(self, text: str) -> None:
        """Traces (objects, comma-separated) into the file itself (the writer thread's)."""
        if self._closed:
            return
        try:
            if self._main is None:
                self._main = open(self.path, "w", encoding="utf-8")  # noqa: SIM115 - open until close()
                self._main.write("[")
            else:
                self._main.write(",")
            self._main.write(text)
            self._main.flush()  # a trace is in the file once written, not only once the server stops
        except OSError as e:
            log.error("failed writing trace file: %s", e, extra={"trace_file": self.path})

    def numbered(self, text: str) -> None:
        """Traces into the next numbered file, ``<file>.<n>``, as a whole JSON array (the writer thread's)."""
        if self._closed:
            return
        name = f"{self.path}.{next(self._index)}"
        try:  # whole or not at all: a reader never sees half of one
            with open(f"{name}.part", "w", encoding="utf-8") as f:
                f.write(f"[{text}]")
            os.replace(f"{name}.part", name)
        except OSError as e:
            log.error("failed writing trace file: %s", e, extra={"trace_file": name})

    def close(self) -> None:
        """End the file's array once what was handed over is written (at shutdown); later traces are dropped."""
        self.submit(self._close)
        self._writer.shutdown(wait=True)

    def _close(self) -> None:
        self._closed = True
        if self._main is not None:
            try:
                self._main.write("]")
                self._main.close()
            except OSError as e:
                log.error("failed writing trace file: %s", e, extra={"trace_file": self.path})
            self._main = None


class Collector:
    """The traces a scope (the global settings, or a model's own) took, on their way into its file, as Triton's
    settings write them:

    - ``log_frequency`` N: N at a time into numbered files;
    - a ``trace_count`` (``spent`` says when it is): held until the count is spent and every trace taken is written,
      then into a numbered file at once;
    - else straight into the file (Triton holds them until its settings change or it stops; the file ends the
      same, and nothing is held meanwhile).

    A scope whose settings an update replaces ``retire``s its collector: what it holds goes out (into numbered files
    with a ``log_frequency``, else into the file), and so do the traces of its requests still running, each as it
    comes, as Triton's replaced settings write theirs. Its state changes on the file's writer thread alone (``took``
    counts on the event loop, under a lock)."""

    def __init__(self, file: TraceFile, log_frequency: int, spent: Callable[[], bool] | None = None) -> None:
        self.file = file
        self.log_frequency = log_frequency
        self._spent = spent
        self._taken = 0  # traces taken for it (``took``), and written into it (``add``)
        self._added = 0
        self._held: list[str] = []
        self._retired = False
        self._lock = threading.Lock()

    def took(self) -> None:
        with self._lock:
            self._taken += 1

    def add(self, trace: RequestTrace) -> None:
        """A request's trace, once it is answered."""
        self.file.submit(self._add, trace)

    def dropped(self) -> None:
        """A trace taken will not come (its request was refused before its run)."""
        self.file.submit(self._dropped)

    def poke(self) -> None:
        """The count it draws on may be spent now: what it holds goes out if it is."""
        self.file.submit(self._due)

    def retire(self) -> None:
        self.file.submit(self._retire)

    def flush(self) -> None:
        """What it holds, out (at shutdown)."""
        self.file.submit(self._flush)

    def _add(self, trace: RequestTrace) -> None:
        text = objects(trace)
        if not text:  # nothing it records at its level: as if it had not come
            self._dropped()
            return
        if self._retired or (not self.log_frequency and self._spent is None):
            self._write(text)
            return
        self._held.append(text)
        self._added += 1
        self._due()

    def _dropped(self) -> None:
        with self._lock:
            self._taken -= 1
        self._due()

    def _due(self) -> None:
        """Into a numbered file: ``log_frequency`` traces, or all of them once the count is spent and every trace it
        took is here (at once, as Triton writes them)."""
        with self._lock:
            taken = self._taken
        full = bool(self.log_frequency) and len(self._held) >= self.log_frequency
        spent = self._spent is not None and self._spent() and self._added >= taken
        if self._held and (full or spent):
            held, self._held = self._held, []
            self.file.numbered(",".join(held))

    def _retire(self) -> None:
        self._retired = True
        self._flush()

    def _flush(self) -> None:
        held, self._held = self._held, []
        if held:
            self._write(",".join(held))

    def _write(self, text: str) -> None:
        if self.log_frequency:
            self.file.numbered(text)
        else:
            self.file.append(text)


_HEAD = "model"  # the request's own object, among the timestamp names that order a trace's objects
_RUN = ("QUEUE_START", "TENSOR_QUEUE_INPUT", "TENSOR_BACKEND_OUTPUT")
_COMPUTE = ("COMPUTE_START", "COMPUTE_INPUT_END", "COMPUTE_OUTPUT_START", "COMPUTE_END", "REQUEST_END")
# the order of a trace's objects, as tritonserver 2.51 writes a request's when its answer goes out after its model
# call (helper-120): the HTTP front end's receipt first and its INFER_RESPONSE_COMPLETE among the run's; the gRPC
# front end's all after REQUEST_END; an ensemble's step (no front end) without either
_ORDER = {
    "HTTP": (
        "HTTP_RECV_START", "HTTP_RECV_END", _HEAD, "REQUEST_START", *_RUN, "INFER_RESPONSE_COMPLETE", *_COMPUTE,
        "HTTP_SEND_START", "HTTP_SEND_END",
    ),
    "GRPC": (
        _HEAD, "REQUEST_START", *_RUN, *_COMPUTE, "GRPC_WAITREAD_START", "GRPC_WAITREAD_END",
        "INFER_RESPONSE_COMPLETE", "GRPC_SEND_START", "GRPC_SEND_END",
    ),
    "": (_HEAD, "REQUEST_START", *_RUN, "INFER_RESPONSE_COMPLETE", *_COMPUTE),
}  # fmt: skip
_RANKS = {protocol: {name: rank for rank, name in enumerate(order)} for protocol, order in _ORDER.items()}


def objects(root: RequestTrace) -> str:
    """A request's trace and its steps' as Triton writes them: each trace's objects in Triton's order, the steps
    last-started first and the request's own last (as Triton releases them)."""
    texts = []
    for trace in reversed(root.group):
        head: dict[str, Any] = {"id": trace.id, "model_name": trace.model, "model_version": trace.version}
        if trace.request_id:
            head["request_id"] = trace.request_id
        if trace.parent is not None:
            head["parent_id"] = trace.parent.id
        entries = [(_HEAD, _dumps(head))] if trace.level & TIMESTAMPS else []  # TENSORS alone: Triton's, none
        entries += [
            (name, f'{{"id":{trace.id},"timestamps":[{{"name":"{name}","ns":{ns}}}]}}') for name, ns in trace.stamps
        ]
        for activity, name, array in trace.tensors:
            tensor = {
                "name": name,
                "data": _data(array),
                "shape": ",".join(str(d) for d in array.shape),
                "dtype": DType.from_numpy(array.dtype).value,
            }
            entries.append((activity, _dumps({"id": trace.id, "activity": activity, "tensor": tensor})))
        ranks = _RANKS[trace.protocol]
        texts += [text for _, text in sorted(entries, key=lambda e: ranks.get(e[0], len(ranks)))]
    return ",".join(texts)


def _dumps(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


def _data(array: np.ndarray) -> str:
    """A tensor's elements as Triton writes them: comma-separated, floats as C++ streams print them (``%g``),
    booleans 1 and 0, strings in quotes."""
    flat = array.reshape(-1)
    kind = flat.dtype.kind
    if kind == "f":
        return ",".join(f"{v:g}" for v in flat.astype(np.float64).tolist())
    if kind == "b":
        return ",".join("1" if v else "0" for v in flat.tolist())
    if kind in "iu":
        return ",".join(str(v) for v in flat.tolist())
    return ",".join(f'"{_text(v)}"' for v in flat.tolist())


def _text(value: Any) -> str:
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace")
    return str(value)
