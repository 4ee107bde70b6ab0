"""Error messages quote what a client sent (``errors.quote``) short and safely."""

from __future__ import annotations

import sys

from polystack.errors import InvalidRequest, load_failed, quote


def test_a_deeply_nested_value_is_not_shown_whatever_the_recursion_limit() -> None:
    """torch's compiler raises the process's recursion limit (to 2000): a server that had compiled a model showed
    a list 1,000 deep where it had said it was nested too deep."""
    deep: list[object] = [1]
    for _ in range(1000):
        deep = [deep]
    was = sys.getrecursionlimit()
    try:
        for limit in (1000, 5000):
            sys.setrecursionlimit(limit)
            assert quote(deep) == "<a list nested too deep to show>"
    finally:
        sys.setrecursionlimit(was)
    assert quote([[1, 2], {"a": [3]}]) == "[[1, 2], {'a': [3]}]"
    assert quote("t" * 200) == repr("t" * 200)[:77] + "..."


def test_a_failed_load_is_led_by_its_name_once() -> None:
    assert load_failed("m", InvalidRequest("no such file")).message == "failed to load 'm': no such file"
    polled = InvalidRequest("failed to load 'm', failed to poll from model repository: unreadable")
    assert load_failed("m", polled).message == "failed to load 'm', failed to poll from model repository: unreadable"
