"""Per-model inference statistics, shaped like Triton's statistics extension ({count, ns} pairs)."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Any

DURATIONS = ("success", "fail", "queue", "compute_input", "compute_infer", "compute_output")


@dataclass
class Duration:
    count: int = 0
    ns: int = 0


@dataclass
class ModelStats:
    inference_count: int = 0  # items inferred (a batch of 8 counts 8)
    execution_count: int = 0  # runtime executions (a batch counts 1)
    last_inference_ms: int = 0
    durations: dict[str, Duration] = field(default_factory=lambda: {k: Duration() for k in DURATIONS})
    batch_stats: dict[int, dict[str, Duration]] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def add(self, kind: str, ns: int, count: int = 1) -> None:
        with self._lock:
            d = self.durations[kind]
            d.count += count
            d.ns += ns

    def executed(self, batch_size: int, infer_ns: int, requests: int = 1) -> None:
        """One runtime execution of ``batch_size`` items serving ``requests`` requests."""
        with self._lock:
            self.execution_count += 1
            self.inference_count += batch_size
            self.last_inference_ms = int(time.time() * 1000)
            d = self.durations["compute_infer"]
            d.count += requests
            d.ns += infer_ns * requests
            if batch_size < 1:
                return  # an empty request (dimension 0 is 0) ran, but there is no batch size to report it under
            per = self.batch_stats.setdefault(batch_size, {"compute_infer": Duration()})["compute_infer"]
            per.count += 1
            per.ns += infer_ns

    def to_dict(self) -> dict[str, Any]:
        with self._lock:
            return {
                "inference_count": self.inference_count,
                "execution_count": self.execution_count,
                "last_inference": self.last_inference_ms,
                "inference_stats": {k: {"count": d.count, "ns": d.ns} for k, d in self.durations.items()},
                "batch_stats": [
                    {
                        "batch_size": size,
                        "compute_infer": {"count": v["compute_infer"].count, "ns": v["compute_infer"].ns},
                    }
                    for size, v in sorted(self.batch_stats.items())
                ],
            }
