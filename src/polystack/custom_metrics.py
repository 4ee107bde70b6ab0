"""The metrics the models a server hosts define themselves (Triton's custom metrics: a Python model's
``pb_utils.MetricFamily``), shown on ``/metrics`` after the server's own.

As in Triton, a family is the server's, not the model's: a family of the same name and kind is the same family
(its first description stays), a series of the same labels the same series, and both outlive the model that made
them, whose next load counts on where it left off. A series leaves when the last ``MetricFamily`` object that made
it is deleted (``release``), and a family with no series shows no lines, as tritonserver 2.51 shows them. Unlike
Triton, a call its kind does not take (``set`` on a counter, ``observe`` on a gauge) or a name Prometheus refuses is
refused in words, where tritonserver 2.51 aborts.

Written by hand: prometheus-client appends ``_total`` to a counter's name and fixes a family's label names when it
is made, where Triton's families keep the model's name and each series has labels of its own.
"""

from __future__ import annotations

import math
import re
import threading
from collections.abc import Mapping, Sequence

from polystack.errors import InvalidRequest

COUNTER, GAUGE, HISTOGRAM = "counter", "gauge", "histogram"
KINDS = (COUNTER, GAUGE, HISTOGRAM)
_TRITON_KIND = {COUNTER: "TRITONSERVER_METRIC_KIND_COUNTER", GAUGE: "TRITONSERVER_METRIC_KIND_GAUGE",
                HISTOGRAM: "TRITONSERVER_METRIC_KIND_HISTOGRAM"}  # fmt: skip
_NAME = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*\Z")
_LABEL = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*\Z")
_RESERVED = ("polystack_", "nv_")  # the server's own families' (and Triton's names of them)

Labels = tuple[tuple[str, str], ...]


class Series:
    """One series of a family: a counter's or gauge's value, or a histogram's bucket counts, sum and count."""

    def __init__(self, kind: str, buckets: tuple[float, ...], labels: Labels = ()) -> None:
        self.kind = kind
        self.buckets = buckets
        self.labels = labels
        self.holders = 0  # the times it was made and not released (``Family.release``)
        self._lock = threading.Lock()
        self._value = 0.0
        self._counts = [0] * len(buckets)  # observations <= each bucket's bound
        self._count = 0

    def _refuse(self, what: str) -> InvalidRequest:
        return InvalidRequest(f"{_TRITON_KIND[self.kind]} does not support {what}")

    def increment(self, by: float) -> None:
        if self.kind == HISTOGRAM:
            raise self._refuse("Increment")
        if self.kind == COUNTER and not by >= 0:
            raise InvalidRequest(
                "TRITONSERVER_METRIC_KIND_COUNTER can only be incremented monotonically by non-negative values."
            )
        with self._lock:
            self._value += by

    def set(self, value: float) -> None:
        if self.kind != GAUGE:
            raise self._refuse("Set")
        with self._lock:
            self._value = value

    def observe(self, value: float) -> None:
        if self.kind != HISTOGRAM:
            raise self._refuse("Observe")
        with self._lock:
            self._value += value
            self._count += 1
            for i, bound in enumerate(self.buckets):
                if value <= bound:
                    self._counts[i] += 1

    def value(self) -> float:
        if self.kind == HISTOGRAM:
            raise self._refuse("Value")
        return self._value

    def lines(self, name: str, labels: Labels) -> list[str]:
        with self._lock:
            if self.kind != HISTOGRAM:
                return [f"{name}{_labels(labels)} {_number(self._value)}"]
            # Triton's order: count and sum, then the cumulative buckets
            lines = [f"{name}_count{_labels(labels)} {self._count}", f"{name}_sum{_labels(labels)} {_number(self._value)}"]
            for bound, count in zip(self.buckets, self._counts, strict=True):
                lines.append(f"{name}_bucket{_labels((*labels, ('le', _number(bound))))} {count}")
            lines.append(f"{name}_bucket{_labels((*labels, ('le', '+Inf')))} {self._count}")
            return lines


class Room:
    """The series a server's models may make in all (each costs memory for good, and every scrape its lines)."""

    def __init__(self, most: int) -> None:
        self.most = most
        self._lock = threading.Lock()
        self.used = 0

    def take(self, family: str) -> None:
        with self._lock:
            if self.used >= self.most:
                raise InvalidRequest(
                    f"metric {family!r}: the models hold {self.most:,} custom metric series already, the most the "
                    "server keeps; give labels fewer values (one series per label set, kept until the MetricFamily "
                    "objects that made it are deleted)"
                )
            self.used += 1

    def give(self) -> None:
        with self._lock:
            self.used -= 1


class Family:
    def __init__(self, name: str, description: str, kind: str, room: Room) -> None:
        self.name, self.description, self.kind = name, description, kind
        self._room = room  # the server's, which each series made takes from
        self._lock = threading.Lock()
        self._series: dict[Labels, Series] = {}

    def series(self, labels: Mapping[str, str] | None = None, buckets: Sequence[float] | None = None) -> Series:
        """The series of ``labels`` (the same one for the same labels, with the buckets it was made with, as
        Triton's); a histogram's needs its bucket bounds."""
        if self.kind == HISTOGRAM and buckets is None:
            raise InvalidRequest("Failed to create metric. Missing required buckets.")
        if self.kind != HISTOGRAM and buckets is not None:
            raise InvalidRequest("Failed to create metric. Unexpected buckets found.")
        bounds = _bounds(buckets) if buckets is not None else ()
        key = _key(labels or {})
        with self._lock:
            series = self._series.get(key)
            if series is None:
                self._room.take(self.name)
                series = self._series[key] = Series(self.kind, bounds, key)
            series.holders += 1
            return series

    def release(self, series: Series) -> None:
        """One holder of ``series`` lets it go (Triton's ``Metric`` cleared as its ``MetricFamily`` object is
        deleted): with its last one it leaves the family and its room is free; a series already gone (one made
        again since has the same labels) is left as it is."""
        with self._lock:
            if self._series.get(series.labels) is not series:
                return
            series.holders -= 1
            if series.holders > 0:
                return
            del self._series[series.labels]
        self._room.give()

    def lines(self) -> list[str]:
        with self._lock:
            series = sorted(self._series.items())
        if not series:  # as tritonserver 2.51 shows a family with no series: not at all
            return []
        description = self.description.replace("\\", "\\\\").replace("\n", "\\n")
        lines = [f"# HELP {self.name} {description}", f"# TYPE {self.name} {self.kind}"]
        for labels, s in series:
            lines += s.lines(self.name, labels)
        return lines


MOST_SERIES = 100_000


class CustomMetrics:
    """A server's custom metric families, by name, with at most ``most`` series in all."""

    def __init__(self, most: int = MOST_SERIES) -> None:
        self._lock = threading.Lock()
        self._families: dict[str, Family] = {}
        self.room = Room(most)

    def family(self, name: str, description: str, kind: str) -> Family:
        """The family ``name`` of ``kind`` (the same one for the same name)."""
        if kind not in KINDS:
            raise InvalidRequest(f"metric family {name!r}: kind {kind!r} is none of {', '.join(KINDS)}")
        if not isinstance(name, str) or not _NAME.match(name):
            raise InvalidRequest(
                f"metric family name {name!r} is not a Prometheus metric name: letters, digits, '_' and ':', not "
                "starting with a digit"
            )
        if name.startswith(_RESERVED):
            raise InvalidRequest(
                f"metric family name {name!r} starts as the server's own metrics do ({' or '.join(_RESERVED)}): name "
                "it otherwise"
            )
        with self._lock:
            family = self._families.get(name)
            if family is None:
                family = self._families[name] = Family(name, str(description), kind, self.room)
            elif family.kind != kind:
                raise InvalidRequest("Family name already exists with different type")
            return family

    def render(self) -> bytes:
        with self._lock:
            families = sorted(self._families.items())
        lines = [line for _, f in families for line in f.lines()]
        return ("\n".join(lines) + "\n").encode() if lines else b""


def _key(labels: Mapping[str, str]) -> Labels:
    if not isinstance(labels, Mapping):
        raise InvalidRequest(f"a metric's labels are a dict of strings, got {type(labels).__name__}")
    for k, v in labels.items():
        if not isinstance(k, str) or not _LABEL.match(k) or k == "le" or k.startswith("__"):
            raise InvalidRequest(
                f"metric label name {k!r} is not a Prometheus label name (nor 'le', nor one starting with '__')"
            )
        if not isinstance(v, str):
            raise InvalidRequest(f"metric label {k!r}: its value is a string, got {type(v).__name__}")
    return tuple(sorted(labels.items()))


def _bounds(buckets: Sequence[float]) -> tuple[float, ...]:
    try:
        bounds = tuple(float(b) for b in buckets)
    except (TypeError, ValueError):
        raise InvalidRequest(f"a histogram's buckets are a list of numbers, got {buckets!r}") from None
    # none is a histogram of its +Inf bucket alone, as Triton takes it (helper-177)
    if any(not math.isfinite(b) for b in bounds) or list(bounds) != sorted(set(bounds)):
        raise InvalidRequest(f"a histogram's buckets are finite bounds in increasing order, got {list(bounds)}")
    return bounds


def _labels(labels: Labels) -> str:
    if not labels:
        return ""
    escaped = (v.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") for _, v in labels)
    return "{" + ",".join(f'{k}="{v}"' for (k, _), v in zip(labels, escaped, strict=True)) + "}"


def _number(value: float) -> str:
    """As Triton writes it: whole numbers without a fraction (``1``, ``10``), others in full (``3.5``)."""
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return str(int(value)) if value.is_integer() and abs(value) < 2**53 else repr(value)
