"""The response cache on its own: what its keys tell apart, how it stays within its size, and the
``--cache-config`` values it takes."""

from __future__ import annotations

import threading
import tracemalloc
from typing import Any

import numpy as np
import pytest

from polystack.errors import InvalidRequest
from polystack.server.response_cache import ENTRY_OVERHEAD, OUTPUT_OVERHEAD, CacheConfig, ResponseCache

X = {"x": np.arange(6, dtype=np.float32).reshape(2, 3)}


def key(inputs: dict[str, np.ndarray], outputs: list[str] | None = None, load: int = 1) -> bytes:
    return ResponseCache.key(load, inputs, outputs)


def test_keys_tell_apart_every_part_of_a_request() -> None:
    base = key(X)
    assert key({"x": X["x"].copy()}) == base  # the same request, another array
    assert key({"x": np.asfortranarray(X["x"])}) == base  # the same values in another memory order
    different = [
        key(X, load=2),  # another load of the model
        key({"y": X["x"]}),  # another input name
        key({"x": X["x"].reshape(3, 2)}),  # another shape, the same bytes
        key({"x": X["x"].view(np.int32)}),  # another datatype, the same bytes
        key({"x": X["x"] + 1}),  # other values
        key(X, ["y"]),  # one output asked for
        key(X, ["y", "z"]),
        key({**X, "w": np.zeros(0, np.float32)}),  # one more input, even empty
    ]
    assert len({base, *different}) == len(different) + 1
    assert key(X, ["z", "y"]) == key(X, ["y", "z"])  # the order outputs are asked in does not matter
    assert key(X) != key(X, ["*"]) and key(X, ["a", "b"]) != key(X, ["a\0b"])  # names are not joined


def test_parameters_a_model_reads_are_part_of_the_key_by_their_json_values() -> None:
    with_ = lambda parameters: ResponseCache.key(1, X, None, parameters)  # noqa: E731
    assert with_(None) == with_({}) == key(X)  # none read, or none sent: the inputs' key
    spelled = [with_({"a": 1}), with_({"a": "1"}), with_({"a": True}), with_({"a": 1.5}), with_({"b": 1})]
    assert len({key(X), *spelled}) == 6  # 1, "1" and true are three requests
    assert with_({"a": 1, "b": "x"}) == with_({"b": "x", "a": 1})  # the order they came in does not matter
    assert with_({"a": 1 << 70}) is None  # past what JSON spells exactly: not cached


def test_object_tensors_other_than_bytes_and_text_are_not_cached() -> None:
    """Only a caller in this process can send them (the codecs give bytes); their bytes do not say what they are."""
    numbers = np.empty(2, dtype=object)
    numbers[:] = [np.int64(1), np.int64(2)]
    arrays = np.empty(1, dtype=object)
    arrays[0] = np.arange(3)
    assert key({"s": numbers}) is None and key({"s": arrays}) is None


def test_bytes_keys_count_each_elements_boundaries() -> None:
    def strings(*values: bytes) -> dict[str, np.ndarray]:
        a = np.empty(len(values), dtype=object)
        a[:] = list(values)
        return {"s": a}

    assert key(strings(b"ab", b"c")) != key(strings(b"a", b"bc"))
    assert key(strings(b"ab", b"c")) == key(strings(b"ab", b"c"))
    assert key(strings(b"ab")) != key(strings("ab"))  # type: ignore[arg-type]  # text is not its bytes
    assert key(strings(b"ab", "c")) != key(strings(b"a", "bc"))  # type: ignore[arg-type]  # mixed, too


def test_the_cache_keeps_the_most_recently_used_answers_within_its_size(caplog: pytest.LogCaptureFixture) -> None:
    answer = {"y": np.zeros(100, np.float32)}  # 400 bytes
    one = ENTRY_OVERHEAD + OUTPUT_OVERHEAD + 400
    evicted: list[int] = []
    cache = ResponseCache(2 * one, on_evict=evicted.append)
    assert cache.put(b"a", 1, answer) and cache.put(b"b", 1, answer)
    assert cache.get(b"a") is not None  # a is now the most recent
    assert cache.put(b"c", 1, answer)
    assert cache.get(b"b") is None and cache.get(b"a") is not None and cache.get(b"c") is not None
    assert evicted == [1] and cache.entries == 2 and cache.used == 2 * one
    with caplog.at_level("WARNING", logger="polystack.server"):
        assert not cache.put(b"big", 1, {"y": np.zeros(1000, np.float32)})  # larger than the whole cache
    assert cache.get(b"big") is None and cache.entries == 2
    # Triton's words, which its L0_response_cache looks for (helper-177: polystack said nothing)
    big = ENTRY_OVERHEAD + OUTPUT_OVERHEAD + 4000
    assert (f"Failed to insert key [{b'big'.hex()}] into response cache: Requested byte_size: {big} is greater than "
            f"total cache size: {2 * one}") in caplog.text  # fmt: skip


def test_kept_answers_are_read_only_copies_handed_out_in_dicts_of_their_own() -> None:
    batch = np.arange(8, dtype=np.float32)
    cache = ResponseCache(1 << 20)
    cache.put(b"k", 1, {"y": batch[:4]})  # a request's share of a batch's output: a view
    batch[:] = -1  # the batch's array is reused
    first = cache.get(b"k")
    assert first is not None
    assert first["y"].tolist() == [0, 1, 2, 3] and not first["y"].flags.writeable
    first.pop("y")  # what writing an output to shared memory does to a result
    second = cache.get(b"k")
    assert second is not None and "y" in second


def test_forget_drops_one_loads_answers_only() -> None:
    cache = ResponseCache(1 << 20)
    cache.put(b"a", 1, {"y": np.zeros(4)})
    cache.put(b"b", 2, {"y": np.zeros(4)})
    assert cache.forget(1) == 1
    assert cache.get(b"a") is None and cache.get(b"b") is not None and cache.used == ENTRY_OVERHEAD + OUTPUT_OVERHEAD + 32


def test_cache_config_reads_tritons_flag() -> None:
    assert CacheConfig.parse([]) is None
    assert CacheConfig.parse(["local,size=1048576"]) == CacheConfig(1048576)


def test_tritons_deprecated_byte_size_flag_gives_a_local_cache_of_that_size_and_0_none() -> None:
    assert CacheConfig.from_flags([], "1048576") == CacheConfig(1048576)
    assert CacheConfig.from_flags([], "0") is None  # Triton's default: no cache
    assert CacheConfig.from_flags(["local,size=4096"], None) == CacheConfig(4096)
    assert CacheConfig.from_flags([], None) is None


@pytest.mark.parametrize(
    ("items", "byte_size", "says"),
    [
        # Triton's words, which its L0_response_cache looks for (helper-177)
        (["local,size=4096"], "4096", "Incompatible flags --response-cache-byte-size and --cache-config both provided"),
        ([], "1MB", "whole number of bytes"),
        ([], "-1", "whole number of bytes"),
        ([], "99999999999999999999", "whole number of bytes"),
    ],
)
def test_the_deprecated_flag_refuses_a_bad_size_and_the_new_flag_beside_it(
    items: list[str], byte_size: str, says: str
) -> None:
    with pytest.raises(InvalidRequest, match=says):
        CacheConfig.from_flags(items, byte_size)


@pytest.mark.parametrize(
    ("items", "says"),
    [
        (["redis,host=localhost"], "one cache implementation, local"),
        (["local,size=8192", "redis,key=value"], "found multiple cache configurations, but only a single cache"),
        (["local"], "local,size=BYTES"),
        (["local,size=0"], "from 1 to"),
        (["local,size=1MB"], "whole number of bytes"),
        (["local,size=-5"], "whole number of bytes"),
        (["local,size=99999999999999999999"], "whole number of bytes"),
        (["local,capacity=5"], "size=BYTES only"),
    ],
)
def test_cache_config_refuses_what_it_cannot_use(items: list[str], says: str) -> None:
    with pytest.raises(InvalidRequest, match=says):
        CacheConfig.parse(items)


@pytest.mark.parametrize(
    "answer",
    [
        lambda i: {"y": np.full((1, 4), i, np.float32)},
        lambda i: {"a": np.full((1, 1), i, np.float32), "b": np.zeros((1, 1), np.int64), "c": np.ones(1, bool)},
        lambda i: {"y": np.full((8, 1000), i, np.float32)},
        lambda i: {"t": np.array([b"%d" % (i * 1000 + k) for k in range(50)], dtype=object)},
        lambda i: {"t": np.array([f"\u00e9t\u00e9 {i * 1000 + k} \U0001f600" for k in range(50)], dtype=object)},
    ],
    ids=["small", "three-outputs", "large", "bytes", "text"],
)
def test_what_the_cache_counts_is_the_memory_its_answers_take(answer: Any) -> None:
    """Within a quarter of what tracemalloc sees it take, so that a cache of N bytes takes about N bytes."""
    cache = ResponseCache(1 << 40)
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        answers = [answer(i) for i in range(2000)]  # the model's answers, then the cache's copies of them
        for i, a in enumerate(answers):
            cache.put(i.to_bytes(16, "little"), 1, a)
        del answers  # the cache's copies (and the BYTES elements they share) are all that is left
        taken = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert 0.75 < cache.used / taken < 1.25, (cache.used, taken)


def test_an_answer_put_after_its_load_was_forgotten_is_not_kept() -> None:
    """A request that ran on a load being retired finishes after its answers were dropped: its put keeps
    nothing (no key can reach it, and it held cache room until the LRU evicted it)."""
    cache = ResponseCache(1 << 20)
    assert cache.put(b"a", 1, {"y": np.ones(4, np.float32)})
    assert cache.forget(1) == 1
    assert not cache.put(b"b", 1, {"y": np.ones(4, np.float32)})
    assert cache.get(b"b") is None and cache.used == 0
    assert cache.put(b"b", 2, {"y": np.ones(4, np.float32)})  # the load that replaced it caches as before


def test_forgetting_a_load_drops_all_its_answers_batch_by_batch_and_no_others() -> None:
    cache = ResponseCache(1 << 30)
    for i in range(5000):  # several of forget's batches
        cache.put(b"a%d" % i, 1, {"y": np.zeros(2, np.float32)})
    cache.put(b"b", 2, {"y": np.zeros(2, np.float32)})
    assert cache.forget(3) == 0  # a load with no answers
    assert cache.forget(1) == 5000 and cache.entries == 1 and cache.get(b"b") is not None
    assert cache.forget(1) == 0
    cache.put(b"b", 4, {"y": np.zeros(2, np.float32)})  # the same key under another load (3 was forgotten)
    assert cache.forget(2) == 0 and cache.get(b"b") is not None


def test_a_put_that_evicts_a_load_being_forgotten_keeps_the_cache_whole() -> None:
    """forget lets the lock go between its batches: a put in between may evict (or replace) one of the
    answers it is dropping, and neither may fail."""
    answer = {"y": np.zeros(100, np.float32)}
    one = ENTRY_OVERHEAD + OUTPUT_OVERHEAD + 400
    cache = ResponseCache(3 * one)
    for k in (b"a", b"b", b"c"):
        cache.put(k, 1, answer)

    class Gap:  # the cache's lock, running puts just after forget first lets it go
        def __init__(self) -> None:
            self.lock, self.held = threading.Lock(), 0

        def __enter__(self) -> None:
            self.lock.acquire()

        def __exit__(self, *exc: object) -> None:
            self.lock.release()
            self.held += 1
            if self.held == 1:
                assert cache.put(b"d", 2, answer)  # evicts a, an answer of load 1
                assert cache.put(b"b", 2, answer)  # replaces b under load 2

    cache._lock = Gap()  # type: ignore[assignment]
    assert cache.forget(1) == 3
    assert cache.get(b"b") is not None and cache.get(b"d") is not None
    assert cache.get(b"a") is None and cache.get(b"c") is None
    assert cache.entries == 2 and cache.used == 2 * one
    assert cache.forget(2) == 2 and cache.entries == 0 and cache.used == 0
