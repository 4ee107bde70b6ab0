"""Casts and bounds of numpy arrays that keep the GIL on an event loop's thread.

numpy lets other threads run while it casts, compares or reduces more than 500 elements: it releases the GIL. On a
server's event loop, beside inference threads that wait for the GIL as their runtime calls return, taking it back
costs far more than the work: one thread of Python beside it made a 3,072-value float64 -> float32 cast take 210 us
instead of 1 us here. The serving benchmark's CNN request (3,072 values in JSON, concurrency 32, unbatched) spent 10%
of the loop's time in that cast, waiting (py-spy). In pieces, the server answered 6% more requests a second in the
median of 12 alternating pairs of runs beside the server before (11 of them faster, by up to 21%; 2026-12-07). Shorter
runs ranged from 8% fewer to 22% more: the MLP's 256 values, cast whole either way, differed by 10% between two
identical servers then.

So on an event loop's thread a cast or bound goes in pieces of at most 500 elements, which numpy makes holding the
GIL (a few microseconds more for the Python around them); elsewhere (a codec or an inference thread) it goes whole,
letting the loop run meanwhile. What numpy raises under ``np.errstate`` is raised the same either way.
"""

from __future__ import annotations

import asyncio
from typing import Any

import numpy as np

# numpy's NPY_BEGIN_THREADS_THRESHOLDED: loops over more elements than this release the GIL
HELD_UP_TO = 500


def _in_pieces(data: np.ndarray) -> bool:
    """Whether work on ``data`` goes in pieces here: more elements than numpy holds the GIL for, contiguous (a view
    of it flat is no copy), on a thread running an event loop."""
    return data.size > HELD_UP_TO and data.flags.c_contiguous and asyncio._get_running_loop() is not None


def cast(data: np.ndarray, target: np.dtype) -> np.ndarray:
    """``data.astype(target, copy=False)``, holding the GIL on an event loop's thread."""
    if data.dtype == target or not _in_pieces(data):
        return data.astype(target, copy=False)
    flat = data.reshape(-1)
    out = np.empty(flat.shape, target)
    for i in range(0, flat.size, HELD_UP_TO):
        out[i : i + HELD_UP_TO] = flat[i : i + HELD_UP_TO]
    return out.reshape(data.shape)


def bounds(data: np.ndarray) -> tuple[Any, Any]:
    """``data``'s least and greatest elements (it has some), holding the GIL on an event loop's thread."""
    if not _in_pieces(data):
        return data.min(), data.max()
    flat = data.reshape(-1)
    pieces = [flat[i : i + HELD_UP_TO] for i in range(0, flat.size, HELD_UP_TO)]
    return min(p.min() for p in pieces), max(p.max() for p in pieces)
