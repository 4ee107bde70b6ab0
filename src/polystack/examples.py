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


def accumulator_onnx(path: Path, corrid: int | None = None, batched: bool = True) -> Path:
    """A stateful model for sequence batching: INPUT FP32[batch, 1] -> OUTPUT = (START ? 0 : STATE_IN) + INPUT,
    fed back as STATE_OUT (its implicit state); ENDED echoes END x READY and ID the correlation ID (with
    ``corrid``, an ONNX element type, an input CORRID cast to FP32), so a caller sees what the server set.
    Not ``batched``: every tensor is [1]."""
    import onnx
    from onnx import TensorProto, helper

    row: list[str | int] = ["batch", 1] if batched else [1]
    inputs = [
        helper.make_tensor_value_info(n, t, row)
        for n, t in (("INPUT", TensorProto.FLOAT), ("START", TensorProto.INT32), ("END", TensorProto.INT32),
                     ("READY", TensorProto.INT32), ("STATE_IN", TensorProto.FLOAT))
    ]  # fmt: skip
    nodes = [
        helper.make_node("Cast", ["START"], ["s"], to=TensorProto.FLOAT),
        helper.make_node("Sub", ["one", "s"], ["keep"]),
        helper.make_node("Mul", ["STATE_IN", "keep"], ["kept"]),
        helper.make_node("Add", ["kept", "INPUT"], ["OUTPUT"]),
        helper.make_node("Identity", ["OUTPUT"], ["STATE_OUT"]),
        helper.make_node("Mul", ["END", "READY"], ["ENDED"]),
    ]
    outputs = [
        helper.make_tensor_value_info(n, t, row)
        for n, t in (("OUTPUT", TensorProto.FLOAT), ("STATE_OUT", TensorProto.FLOAT), ("ENDED", TensorProto.INT32))
    ]
    if corrid is not None:
        inputs.append(helper.make_tensor_value_info("CORRID", corrid, row))
        nodes.append(helper.make_node("Cast", ["CORRID"], ["ID"], to=TensorProto.FLOAT))
        outputs.append(helper.make_tensor_value_info("ID", TensorProto.FLOAT, row))
    one = helper.make_tensor("one", TensorProto.FLOAT, [], [1.0])
    graph = helper.make_graph(nodes, "accumulator", inputs, outputs, initializer=[one])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="polystack")
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save_model(model, str(path))
    return path
