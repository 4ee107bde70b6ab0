"""tritonserver's --model-load-retry-count: a load that fails once its model is read is tried that many more
times before it fails, each failure logged; a real ONNX file onnxruntime refuses (an op no runtime has), served
from a repository by a real ``polystack serve``."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import onnx
from onnx import TensorProto
from onnx import helper as h
from servekit import refused_at_start


def _refused_model(root: Path) -> Path:
    """A repository whose model ``bad`` imports (a valid graph) and which onnxruntime cannot load."""
    graph = h.make_graph(
        [h.make_node("Foo", ["x"], ["y"], domain="com.example")], "g",
        [h.make_tensor_value_info("x", TensorProto.FLOAT, ["b", 4])],
        [h.make_tensor_value_info("y", TensorProto.FLOAT, ["b", 4])],
    )  # fmt: skip
    model = h.make_model(graph, opset_imports=[h.make_opsetid("", 17), h.make_opsetid("com.example", 1)])
    model.ir_version = 8
    (root / "bad" / "1").mkdir(parents=True)
    onnx.save(model, str(root / "bad" / "1" / "model.onnx"))
    (root / "bad" / "config.pbtxt").write_text("max_batch_size: 4\n")
    return root


def _start(tmp_path: Path, *flags: str) -> tuple[int, list[dict[str, object]], str]:
    """``polystack serve`` of the repository, which fails: its exit code, log lines and last stderr line."""
    cmd = [sys.executable, "-m", "polystack", "--home", str(tmp_path / "home"), "serve", "--model-repository",
           str(_refused_model(tmp_path / "models")), "--http-port", "0", "--grpc-port", "-1", *flags]  # fmt: skip
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    lines = out.stderr.strip().splitlines()
    return out.returncode, [json.loads(ln) for ln in lines if ln.startswith("{")], lines[-1]


def test_a_failed_load_is_tried_again_as_many_times_as_asked(tmp_path: Path) -> None:
    code, logs, last = _start(tmp_path, "--model-load-retry-count", "2")
    assert code == 2
    assert last.startswith("error: failed to load 'bad:1': ONNX Runtime cannot load this model"), last
    retries = [ln for ln in logs if ln["msg"] == "load failed; trying again (--model-load-retry-count)"]
    assert [(r["model"], r["retry"], r["of"]) for r in retries] == [("bad", 1, 2), ("bad", 2, 2)]
    assert all("ONNX Runtime cannot load this model" in str(r["error"]) for r in retries)


def test_by_default_a_failed_load_is_not_tried_again(tmp_path: Path) -> None:
    code, logs, _ = _start(tmp_path)
    assert code == 2
    assert not [ln for ln in logs if str(ln["msg"]).startswith("load failed; trying again")]


def test_the_count_is_a_whole_number_of_0_or_more(tmp_path: Path) -> None:
    line = refused_at_start(tmp_path, ["--model-load-retry-count", "two"])
    assert line == "error: --model-load-retry-count takes a whole number, not 'two'", line
    line = refused_at_start(tmp_path, ["--model-load-retry-count", "-1"])
    assert line == "error: --model-load-retry-count takes a whole number of 0 or more, not '-1'", line
