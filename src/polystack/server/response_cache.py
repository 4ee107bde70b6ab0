"""Triton's response cache: the answers of earlier requests, found again by a hash of what decides them.

A model whose config enables ``response_cache`` answers a request whose inputs (names, datatypes,
shapes and bytes) and requested outputs match an earlier successful one from here, without running
the model, as Triton's does. Like Triton's local cache it is one per server
(``serve --cache-config local,size=BYTES``), shared by every model, and keeps the most recently used
answers within its size: tensor bytes plus the memory of the objects holding them; an answer larger
than the whole cache is not kept.

What differs from Triton's, on purpose: keys are 128-bit BLAKE2b digests (Triton's are 64-bit hashes,
where a collision hands one request another's answer), the requested outputs are part of the key
(a request for one output never gets an answer cut to another's), and so are the request's parameters
for a model that reads them (a Python model's ``request.parameters()``, headers forwarded among them), where
Triton hands a request the answer computed for other parameters. Entries belong to one load of a
model: a reload (new files, another config) never answers from what the instance before it computed,
and an unload frees them.

Written here rather than taken from a library: what it needs (a byte budget with tensors' sizes,
entries dropped by owner, a lock for the loops and threads that share it) is an OrderedDict's work;
``cachetools`` would add a dependency for its LRU alone.
"""

from __future__ import annotations

import collections
import hashlib
import logging
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import orjson

from polystack.backends.hosting import answered, parameters_of
from polystack.errors import InvalidRequest

log = logging.getLogger("polystack.server")
# bytes counted besides the tensors' data, measured with tracemalloc (Python 3.11, numpy 2): per answer its key,
# entry, dict and place in the LRU order; per output its array object and place in the dict
ENTRY_OVERHEAD = 440
OUTPUT_OVERHEAD = 136
_BYTES_HEADER = sys.getsizeof(b"")  # a bytes object's size besides its bytes (33 on 64-bit CPython)
_FORGET_BATCH = 1024  # answers dropped per hold of the lock when a load goes
_MAX_SIZE = 1 << 50  # 1 PiB: a size past it is a typo


@dataclass(frozen=True)
class CacheConfig:
    """The server's response cache, as ``--cache-config`` gives it (Triton's flag): its size in bytes."""

    size: int

    @classmethod
    def parse(cls, items: Sequence[str]) -> CacheConfig | None:
        """``--cache-config`` values (``local,size=BYTES``, repeatable as Triton's) as a config; None for none."""
        if not items:
            return None
        settings: dict[str, str] = {}
        if len({item.partition(",")[0] for item in items}) > 1:  # Triton's words, then what to do
            raise InvalidRequest(
                "found multiple cache configurations, but only a single cache is currently supported; give "
                "--cache-config local,size=BYTES alone"
            )
        for item in items:
            name, _, rest = item.partition(",")
            if name != "local":
                raise InvalidRequest(
                    f"--cache-config {item!r}: polystack has one cache implementation, local (in this process's "
                    "memory); give --cache-config local,size=BYTES"
                )
            key, eq, value = rest.partition("=")
            if not (key and eq):
                raise InvalidRequest(f"--cache-config {item!r}: give the local cache's setting as local,size=BYTES")
            if key != "size":
                raise InvalidRequest(f"--cache-config {item!r}: the local cache takes size=BYTES only, not {key!r}")
            settings[key] = value
        raw = settings.get("size", "")
        if not _whole(raw) or not 1 <= int(raw) <= _MAX_SIZE:
            raise InvalidRequest(
                f"--cache-config local,size={raw}: the size is a whole number of bytes from 1 to {_MAX_SIZE:,}, "
                "e.g. size=268435456 for 256 MiB"
            )
        return cls(int(raw))

    @classmethod
    def from_flags(cls, items: Sequence[str], byte_size: str | None) -> CacheConfig | None:
        """``--cache-config`` values, or Triton's deprecated ``--response-cache-byte-size BYTES`` (a local
        cache of that size; 0, its default, for none); never both, which would say the size twice."""
        if byte_size is None:
            return cls.parse(items)
        if items:
            raise InvalidRequest(
                "Incompatible flags --response-cache-byte-size and --cache-config both provided. Please provide one "
                "or the other; --cache-config local,size=BYTES is the current one"
            )
        raw = byte_size.strip()
        if not _whole(raw) or int(raw) > _MAX_SIZE:
            raise InvalidRequest(
                f"--response-cache-byte-size {byte_size}: the size is a whole number of bytes up to {_MAX_SIZE:,} "
                "(0: no cache), e.g. 268435456 for 256 MiB"
            )
        return cls(int(raw)) if int(raw) else None


def _whole(raw: str) -> bool:
    """A size as the flags take it: ASCII digits, at most 16 of them."""
    return raw.isascii() and raw.isdigit() and len(raw) <= 16


@dataclass(frozen=True)
class _Entry:
    owner: int
    outputs: dict[str, np.ndarray]  # read-only copies
    size: int


@dataclass
class CacheCounts:
    """What the cache did since it was made, as Triton's server-wide cache gauges count it (``nv_cache_num_*``)."""

    lookups: int = 0
    hits: int = 0
    misses: int = 0
    evictions: int = 0
    lookup_ns: int = 0  # time in ``get`` (hits and misses)
    insertion_ns: int = 0  # time in ``put`` of the answers kept


class ResponseCache:
    """Answers by key, least recently used first out, within ``size`` bytes; safe across threads."""

    def __init__(self, size: int, on_evict: Callable[[int], None] | None = None) -> None:
        self.size = size
        self._entries: collections.OrderedDict[bytes, _Entry] = collections.OrderedDict()
        self._by_owner: dict[int, set[bytes]] = {}  # each load's keys, so that forgetting one never scans all
        self._forgotten: set[int] = set()  # loads retired: an answer of theirs that comes late is not kept
        self._used = 0
        self._lock = threading.Lock()
        self.on_evict = on_evict  # told how many answers each insert evicted (a metric)
        self.counts = CacheCounts()  # changed under the lock

    @staticmethod
    def key(
        owner: int,
        inputs: Mapping[str, np.ndarray],
        outputs: Sequence[str] | None,
        parameters: Mapping[str, Any] | None = None,
    ) -> bytes | None:
        """The digest of a request to the model load ``owner``: every input's name, datatype, shape and
        bytes, the outputs it asked for (None: all), and ``parameters``, the request's parameters where its
        model reads them (None: it reads none). Every field is length-prefixed, so no two
        requests write the same bytes into the hash. hashlib lets go of the GIL over large inputs.
        None for a request that cannot be told apart by its bytes (an object tensor holding other than
        bytes or text, which only a caller in this process can send, or parameters JSON cannot spell): it is
        not cached."""
        h = hashlib.blake2b(digest_size=16)

        def field(data: bytes | memoryview) -> None:
            h.update(len(data).to_bytes(8, "little"))
            h.update(data)

        field(str(owner).encode())
        for name in sorted(inputs):
            a = inputs[name]
            field(name.encode("utf-8", "surrogatepass"))
            field(a.dtype.str.encode())
            field(repr(a.shape).encode())
            if not a.dtype.hasobject:
                field(np.ascontiguousarray(a).reshape(-1).view(np.uint8).data)
                continue
            flat = a.reshape(-1).tolist()
            types = set(map(type, flat))
            if types <= {bytes}:  # BYTES as the codecs give them: their lengths, then their bytes joined, in C
                field(b"joined")
                field(np.fromiter(map(len, flat), np.int64, len(flat)).data)
                field(b"".join(flat))
            elif types <= {bytes, str}:  # text among them: element by element, each tagged with its type
                field(b"elements")
                for v in flat:
                    field(b"b" + v if type(v) is bytes else b"s" + v.encode("utf-8", "surrogatepass"))
            else:
                return None
        if outputs is None:
            field(b"all outputs")
        else:
            field(b"outputs")
            for output in sorted(outputs):
                field(output.encode("utf-8", "surrogatepass"))
        if parameters:  # JSON's values (text, numbers, booleans), each typed by its JSON spelling
            try:
                spelled = orjson.dumps(parameters, option=orjson.OPT_SORT_KEYS)
            except orjson.JSONEncodeError:  # past what JSON spells exactly (an integer over 64 bits): not cached
                return None
            field(b"parameters")
            field(spelled)
        return h.digest()

    def get(self, key: bytes) -> dict[str, np.ndarray] | None:
        """The answer kept under ``key`` (a dict of its own; the arrays are shared and read-only), or None."""
        started = time.perf_counter_ns()
        with self._lock:
            entry = self._entries.get(key)
            counts = self.counts
            counts.lookups += 1
            if entry is None:
                counts.misses += 1
            else:
                self._entries.move_to_end(key)
                counts.hits += 1
            counts.lookup_ns += time.perf_counter_ns() - started
            return None if entry is None else answered(dict(entry.outputs), parameters_of(entry.outputs))

    def put(self, key: bytes, owner: int, outputs: Mapping[str, np.ndarray]) -> bool:
        """Keep a copy of ``outputs`` under ``key``, evicting the least recently used answers to make room;
        False when it is not kept: the answer alone is larger than the cache, or its load ``owner`` was
        forgotten (a request that ran on it as it was retired)."""
        started = time.perf_counter_ns()
        size = ENTRY_OVERHEAD + sum(OUTPUT_OVERHEAD + nbytes(a) for a in outputs.values())
        if size > self.size:  # Triton's words (its L0_response_cache looks for them), then what to do
            log.warning(
                f"Failed to insert key [{key.hex()}] into response cache: Requested byte_size: {size} is greater than "
                f"total cache size: {self.size}; give --cache-config local,size=N more room, or leave this model's "
                "response cache off"
            )
            return False
        kept = answered({name: _frozen(a) for name, a in outputs.items()}, parameters_of(outputs))  # parameters too
        evicted = 0
        with self._lock:
            if owner in self._forgotten:
                return False
            self._drop(key)
            while self._entries and self._used + size > self.size:
                self._drop(next(iter(self._entries)))
                evicted += 1
            self._entries[key] = _Entry(owner, kept, size)
            self._by_owner.setdefault(owner, set()).add(key)
            self._used += size
            self.counts.evictions += evicted
            self.counts.insertion_ns += time.perf_counter_ns() - started
        if evicted and self.on_evict is not None:
            self.on_evict(evicted)
        return True

    def _drop(self, key: bytes) -> None:
        """Take ``key``'s answer out (the lock held); nothing if there is none."""
        entry = self._entries.pop(key, None)
        if entry is None:
            return
        self._used -= entry.size
        keys = self._by_owner.get(entry.owner)  # None: its load is being forgotten (``forget``)
        if keys is not None:
            keys.discard(key)
            if not keys:
                del self._by_owner[entry.owner]

    def forget(self, owner: int) -> int:
        """Drop every answer of the model load ``owner`` (it was unloaded or replaced); how many there were.
        The lock is let go between batches, so that a large cache never holds up requests for long."""
        with self._lock:
            self._forgotten.add(owner)  # an int a retired load: puts of its answers from now on keep nothing
            taken = self._by_owner.pop(owner, set())  # evictions meanwhile find no set, and skip it
        keys = list(taken)  # copied outside the lock: nothing else holds the set now
        for start in range(0, len(keys), _FORGET_BATCH):
            with self._lock:
                for k in keys[start : start + _FORGET_BATCH]:
                    entry = self._entries.get(k)
                    if entry is not None and entry.owner == owner:
                        self._drop(k)
        return len(keys)

    @property
    def entries(self) -> int:
        return len(self._entries)

    @property
    def used(self) -> int:
        """Bytes the kept answers count for (tensors and the objects that hold them)."""
        return self._used


def nbytes(a: np.ndarray) -> int:
    """The memory ``a``'s data takes: BYTES elements are Python objects, each with its header and pointer."""
    if not a.dtype.hasobject:
        return int(a.nbytes)
    flat = a.reshape(-1).tolist()
    if set(map(type, flat)) <= {bytes}:  # as the codecs give them: a 33-byte header and a pointer each, in C
        return sum(map(len, flat)) + (_BYTES_HEADER + 8) * len(flat)
    return sum(map(sys.getsizeof, flat)) + 8 * len(flat)  # text takes 1, 2 or 4 bytes a character


def _frozen(a: np.ndarray) -> np.ndarray:
    """A read-only copy of ``a`` that owns its memory (a batch's output share is a view into the whole)."""
    copy = np.array(a, copy=True)
    copy.flags.writeable = False
    return copy
