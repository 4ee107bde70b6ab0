"""CheckedModel's closing: a model closed while a call runs closes when that call returns, and a runtime
that fails to close then does not fail the call, whose answer is already made."""

from __future__ import annotations

import logging
import threading
from collections.abc import Mapping

import numpy as np
import pytest

from polystack.backends.base import CheckedModel
from polystack.errors import ModelClosed
from polystack.types import DType, Signature, TensorSpec

SIG = Signature(inputs=(TensorSpec("x", DType.FP32, (-1, 2)),), outputs=(TensorSpec("y", DType.FP32, (-1, 2)),))


class SlowModel:
    """A runtime whose call waits for ``release``, and whose close fails: no real runtime does either on demand."""

    signature = SIG

    def __init__(self) -> None:
        self.started = threading.Event()
        self.release = threading.Event()
        self.close_calls = 0

    def infer(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        self.started.set()
        self.release.wait(10)
        return {"y": inputs["x"] * 2}

    def close(self) -> None:
        self.close_calls += 1
        raise RuntimeError("the runtime would not let go")


def test_a_close_that_fails_after_the_last_call_is_logged_not_the_calls_failure(
    caplog: pytest.LogCaptureFixture,
) -> None:
    inner = SlowModel()
    model = CheckedModel(inner)
    answers: list[np.ndarray] = []
    call = threading.Thread(target=lambda: answers.append(model.infer({"x": np.ones((1, 2), np.float32)})["y"]))
    call.start()
    assert inner.started.wait(10)
    model.close()  # a call runs: the runtime closes when it returns
    assert inner.close_calls == 0
    with caplog.at_level(logging.ERROR, logger="polystack.backends"):
        inner.release.set()
        call.join(10)
    assert [a.tolist() for a in answers] == [[[2.0, 2.0]]]
    assert inner.close_calls == 1 and "closing a runtime failed" in caplog.text
    with pytest.raises(ModelClosed):
        model.infer({"x": np.ones((1, 2), np.float32)})
