"""A request's place in its model's statistics: counted once, as its caller saw it, and counts never go down."""

from __future__ import annotations

from polystack.stats import ModelStats, Outcome, ran_and_failed


def _figures(stats: ModelStats) -> tuple[int, int, int, int]:
    d = stats.to_dict()["inference_stats"]
    return d["success"]["count"], d["success"]["ns"], d["fail"]["count"], d["fail"]["ns"]


def test_a_held_success_counts_when_confirmed_and_a_caller_gone_before_is_a_failure_alone() -> None:
    stats = ModelStats()
    answered, gone = Outcome(stats, held=True), Outcome(stats, held=True)
    answered.settle("success", 100)
    gone.settle("success", 200)
    assert _figures(stats) == (0, 0, 0, 0)  # held: its answer is not ready yet
    answered.confirm()
    gone.abandon(300)  # its caller went away between the run and the answer
    gone.confirm()  # (a server does not confirm it then; nothing would change if it did)
    assert _figures(stats) == (1, 100, 1, 300)


def test_a_success_counted_stays_one_whatever_its_caller_does_after() -> None:
    """helper-272: an abandon after the success took it back (the count down by one, its duration kept)."""
    stats = ModelStats()
    plain, confirmed = Outcome(stats), Outcome(stats, held=True)
    plain.settle("success", 100)
    confirmed.settle("success", 50)
    confirmed.confirm()
    for outcome in (plain, confirmed):
        outcome.abandon(999)
        outcome.settle("fail", 999)
    assert _figures(stats) == (2, 150, 0, 0)


def test_a_failure_settled_in_the_run_counts_at_once_held_or_not() -> None:
    stats = ModelStats()
    held = Outcome(stats, held=True)
    held.settle("fail", 70)
    held.confirm()
    held.abandon(80)
    assert _figures(stats) == (0, 0, 1, 70)


def test_an_execution_that_raised_counts_where_tritons_backend_reports_it() -> None:
    """Triton's Python backend reports an execute that raised (helper-275); its ONNX Runtime and PyTorch backends
    report none for a batch whose every response failed. A refusal before the run, a model closed under it or a
    deadline passed first is no execution on any."""
    from polystack.errors import BackendError, DeadlineExceeded, InvalidRequest, InvalidTensor, ModelClosed

    assert ran_and_failed(ValueError("in execute"))
    assert ran_and_failed(BackendError("its run failed"))
    assert ran_and_failed(InvalidRequest("its own INVALID_ARG error").failed_in_run())
    for refused in (InvalidTensor("bad shape"), ModelClosed("unloaded"), DeadlineExceeded("too late")):
        assert not ran_and_failed(refused)
    onnx = ModelStats()  # an ONNX Runtime model's (failures_execute False, as the engine leaves it)
    onnx.failed(BackendError("its run failed"), 4, 1_000)
    assert onnx.to_dict()["execution_count"] == 0
    stats = ModelStats(failures_execute=True)  # a Python model's
    stats.failed(InvalidTensor("bad shape"), 4, 1_000)
    assert stats.to_dict()["execution_count"] == 0
    stats.failed(BackendError("its run failed"), 4, 1_000)
    counted = stats.to_dict()
    assert (counted["execution_count"], counted["inference_count"]) == (1, 0)
    assert counted["batch_stats"][0]["batch_size"] == 4 and counted["batch_stats"][0]["compute_infer"] == {
        "count": 1, "ns": 1_000}
    assert counted["inference_stats"]["compute_infer"]["count"] == 0  # a request's compute counts successes
