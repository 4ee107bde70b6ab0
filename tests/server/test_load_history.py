"""What a server keeps of each name's loads: the repository index's failures, bounded, and what an unload forgets."""

from __future__ import annotations

import pytest

from polystack.errors import InvalidName, InvalidRequest, NotUnique, PollFailed
from polystack.server.load_history import MAX_LOAD_FAILURES, LoadHistory
from polystack.store.refs import validate_name


def test_a_failure_is_kept_with_its_version_and_words_and_the_newest_replaces_it() -> None:
    history = LoadHistory()
    history.failed("m", InvalidRequest("load failed for model 'm': bad config").at_version(3))
    history.failed("other", InvalidRequest("load failed for model 'other': no file"))
    assert history.failures == {
        "m": (3, "load failed for model 'm': bad config"),
        "other": (None, "load failed for model 'other': no file"),
    }
    history.failed("m", InvalidRequest("load failed for model 'm': still bad").at_version(4))
    assert history.failures["m"] == (4, "load failed for model 'm': still bad")
    assert list(history.failures) == ["other", "m"]  # the newest last: the first to go is the oldest


def test_a_model_in_two_repositories_is_listed_in_tritons_words_and_as_unread_until_a_read_failure() -> None:
    history = LoadHistory()
    history.failed("twice", NotUnique("failed to load 'twice': in /a and /b"))
    assert history.failures["twice"] == (None, NotUnique.TRITON)
    assert "twice" in history.unread  # its model was never read: strict readiness does not count it
    history.failed("twice", InvalidRequest("load failed for model 'twice': bad weights"))
    assert "twice" not in history.unread
    history.failed("twice", PollFailed("failed to load 'twice', failed to poll").before_model_read())
    assert "twice" in history.unread


def test_only_the_newest_failures_are_kept_whatever_names_loads_try() -> None:
    history = LoadHistory()
    for i in range(MAX_LOAD_FAILURES + 2):
        history.failed(f"name{i}", InvalidRequest("no such model"))
    assert len(history.failures) == MAX_LOAD_FAILURES
    assert "name0" not in history.failures and "name1" not in history.failures
    assert f"name{MAX_LOAD_FAILURES + 1}" in history.failures


def test_the_unread_names_are_bounded_with_the_failures_and_a_name_no_model_can_have_is_not_kept() -> None:
    """helper-268: 300 loads of distinct 1 MiB names kept 660 MB (each name twice: the key and the message), and
    the names never read grew without bound."""
    history = LoadHistory()
    for i in range(MAX_LOAD_FAILURES + 2):
        history.failed(f"name{i}", PollFailed("failed to load, failed to poll").before_model_read())
    assert len(history.unread) == MAX_LOAD_FAILURES and "name0" not in history.unread
    long = "x" * (1 << 20)
    with pytest.raises(InvalidName) as refused:
        validate_name(long)
    history.failed(long, refused.value)
    assert long not in history.failures and len(refused.value.message) < 1000  # the name shown cut short


def test_an_unload_by_name_forgets_its_failure_its_wait_and_its_policy_but_not_the_versions_it_stopped() -> None:
    history = LoadHistory()
    history.failed("e", InvalidRequest("load failed for model 'e': a step is missing"))
    history.unmet.add("e")
    history.policies["e"] = {"latest": {"num_versions": 2}}
    history.stopped.add(("e", 1))
    history.unloaded("e")
    assert "e" not in history.failures and "e" not in history.unmet and "e" not in history.policies
    assert ("e", 1) in history.stopped  # the index lists it unloaded, as Triton's does
