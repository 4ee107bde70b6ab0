"""Small models polystack builds itself (no downloads): for the demo, the tests and benchmarks."""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np


def mlp_onnx(
    path: Path,
    sizes: tuple[int, ...] = (16, 32, 4),
    seed: int = 0,
    input_name: str = "x",
    output_name: str = "y",
    opset: int = 17,
) -> Path:
    """Write an MLP (MatMul + Add + Relu layers, softmax-free logits) as ONNX with a dynamic batch."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    nodes = []
    inits = []
    prev = input_name
    for i, (fan_in, fan_out) in enumerate(itertools.pairwise(sizes)):
        w = (rng.standard_normal((fan_in, fan_out)) / np.sqrt(fan_in)).astype(np.float32)
        b = (rng.standard_normal(fan_out) * 0.1).astype(np.float32)
        inits += [numpy_helper.from_array(w, f"w{i}"), numpy_helper.from_array(b, f"b{i}")]
        last = i == len(sizes) - 2
        mm, add = f"mm{i}", (output_name if last else f"add{i}")
        nodes += [helper.make_node("MatMul", [prev, f"w{i}"], [mm]), helper.make_node("Add", [mm, f"b{i}"], [add])]
        prev = add
        if not last:
            nodes.append(helper.make_node("Relu", [add], [f"relu{i}"]))
            prev = f"relu{i}"
    graph = helper.make_graph(
        nodes,
        "mlp",
        [helper.make_tensor_value_info(input_name, TensorProto.FLOAT, ["batch", sizes[0]])],
        [helper.make_tensor_value_info(output_name, TensorProto.FLOAT, ["batch", sizes[-1]])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], producer_name="polystack")
    model.ir_version = 8
    onnx.checker.check_model(model)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save_model(model, str(path))
    return path
