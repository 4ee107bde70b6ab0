"""torch.export -> ONNX with the dynamo exporter; dynamic dimensions of the program stay dynamic.

Outputs are renamed after export (the exporter's own ``output_names`` can produce a graph that
fails ONNX's SSA check when an output value is also used inside the graph).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from polystack.convert import ConversionError, ConvertContext, quiet

OPSET = 20


def rename_outputs(model: Any, names: Sequence[str]) -> None:
    """Rename the graph's outputs to ``names`` in place, everywhere the values are used."""
    graph = model.graph
    if len(graph.output) != len(names):
        raise ConversionError(f"the ONNX graph has {len(graph.output)} outputs, the model {len(names)}")
    taken = {v for n in graph.node for v in (*n.input, *n.output)} | {i.name for i in graph.input}
    taken |= {i.name for i in graph.initializer}

    def rename(old: str, new: str) -> None:
        for node in graph.node:
            node.input[:] = [new if v == old else v for v in node.input]
            node.output[:] = [new if v == old else v for v in node.output]
        for vi in (*graph.value_info, *graph.output):
            if vi.name == old:
                vi.name = new

    for out, new in zip(list(graph.output), names, strict=True):
        old = out.name
        if old == new:
            continue
        if new in taken:  # move the clashing value out of the way first
            rename(new, f"{new}__renamed")
        rename(old, new)


def export(
    program: Any, example: tuple[Any, ...], path: Path, input_names: Sequence[str], output_names: Sequence[str]
) -> Path:
    """Export a torch.export program (or module) to ONNX at ``path`` with the given tensor names."""
    import onnx
    import torch

    with quiet() as log:
        try:
            onnx_program = torch.onnx.export(
                program, example, dynamo=True, input_names=list(input_names), opset_version=OPSET, verbose=False
            )
        except Exception as e:
            tail = " ".join(log.getvalue().split()[-40:])
            raise ConversionError(
                f"torch.onnx.export (dynamo) failed: {type(e).__name__}: {str(e)[:400]} {tail}"
            ) from e
    if onnx_program is None:
        raise ConversionError("torch.onnx.export returned no program")
    model = onnx_program.model_proto
    rename_outputs(model, output_names)
    onnx.checker.check_model(model)
    onnx.save_model(model, str(path))
    return path


def convert(src: Path, ctx: ConvertContext) -> Path:
    import torch

    from polystack.formats.torch_export import load_program

    ep = load_program(src)
    sig = ctx.signature
    example = tuple(torch.from_numpy(ctx.samples[s.name][:2].copy()) for s in sig.inputs)
    return export(ep, example, ctx.workdir / "model.onnx", sig.input_names, sig.output_names)
