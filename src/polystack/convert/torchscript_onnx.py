"""TorchScript -> ONNX with torch's TorchScript-based exporter (``dynamo=False``: the dynamo exporter takes
``torch.export`` programs, which a ScriptModule is not; nor can a module wrapping a loaded one be traced). The
graph's inputs are forward's arguments, named as the ``Binding`` names them; its outputs are what forward returns,
each named as the config output bound to it (a second output bound to one value gets a copy of it), and those no
output is bound to are dropped; an input forward does not use, which the exporter drops, is kept. Scripted control flow
becomes ONNX's ``If`` and ``Loop``; the signature's dynamic dimensions (-1) stay dynamic. A model with
TYPE_STRING tensors (``List[str]``), a ``Dict[str, Tensor]`` input, or a dict returned has no ONNX form here."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np

from polystack.convert import ConversionError, ConvertContext, quiet
from polystack.types import DType

OPSET = 17  # the TorchScript exporter's newest well-trodden opset


def convert(src: Path, ctx: ConvertContext) -> Path:
    import onnx
    import torch

    from polystack.formats.torchscript import load_module, unpack

    sig = ctx.signature
    strings = [t.name for t in (*sig.inputs, *sig.outputs) if t.dtype is DType.BYTES]
    if strings:
        raise ConversionError(
            f"{', '.join(map(repr, strings))} {'is' if len(strings) == 1 else 'are'} TYPE_STRING (List[str]), which "
            "the TorchScript exporter does not take"
        )
    _, binding, data = unpack(src)
    if binding.dict_input:
        raise ConversionError("forward takes a Dict[str, Tensor], which the TorchScript exporter does not take")
    module = load_module(data, src.name)
    module.eval()
    samples = {t.name: torch.from_numpy(ctx.samples[t.name][:2].copy()) for t in sig.inputs}
    example = tuple(samples[n] for n in binding.arguments)  # forward's order; the graph's inputs by name
    with torch.no_grad():
        result = module(*example)
    if not isinstance(result, (torch.Tensor, tuple)):
        raise ConversionError(
            f"forward returns a {type(result).__name__}, which the TorchScript exporter does not take"
        )
    values = [result] if isinstance(result, torch.Tensor) else list(result)
    if not all(isinstance(v, torch.Tensor) for v in values):
        raise ConversionError(
            "forward returns a List[str] among its values, which the TorchScript exporter does not take"
        )
    returned = len(values)
    by_index: dict[int, list[str]] = {}
    for name, index in binding.outputs:
        by_index.setdefault(index, []).append(name)
    names = [by_index[i][0] if i in by_index else f"unused__{i}" for i in range(returned)]  # each value, named
    dynamic = {
        t.name: {axis: f"{t.name}_dim{axis}" for axis, size in enumerate(t.shape) if size == -1}
        for t in (*sig.inputs, *sig.outputs)
    }
    path = ctx.workdir / "model.onnx"
    with quiet() as log, warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the exporter's deprecation and "no signature found" notes
        try:
            torch.onnx.export(
                module, example, str(path), dynamo=False, input_names=list(binding.arguments), output_names=names,
                dynamic_axes={k: v for k, v in dynamic.items() if v}, opset_version=OPSET,
            )  # fmt: skip
        except Exception as e:
            tail = " ".join(log.getvalue().split()[-40:])
            raise ConversionError(
                f"torch.onnx.export (TorchScript) failed: {type(e).__name__}: {str(e)[:400]} {tail}"
            ) from e
    model = onnx.load(str(path))
    if len(model.graph.output) != returned:
        raise ConversionError(f"the ONNX graph has {len(model.graph.output)} outputs, forward returns {returned}")
    graph = model.graph
    outputs = {o.name: o for o in graph.output}
    kept = [o for o in graph.output if not o.name.startswith("unused__")]  # those the config serves
    for more in by_index.values():  # a value two config outputs are bound to: the others as copies of it
        for name in more[1:]:
            graph.node.append(onnx.helper.make_node("Identity", [more[0]], [name], name=f"copy_{name}"))
            copy = onnx.ValueInfoProto()
            copy.CopyFrom(outputs[more[0]])
            copy.name = name
            kept.append(copy)
    del graph.output[:]
    graph.output.extend(sorted(kept, key=lambda o: sig.output_names.index(o.name)))
    present = {i.name for i in graph.input}
    for t in sig.inputs:  # an input forward does not use: the exporter drops it, the signature keeps it
        if t.name not in present:
            shape = [None if d == -1 else d for d in t.shape]
            kind = onnx.helper.np_dtype_to_tensor_dtype(np.dtype(t.dtype.numpy))
            graph.input.append(onnx.helper.make_tensor_value_info(t.name, kind, shape))
    onnx.checker.check_model(model)
    onnx.save_model(model, str(path))
    return path
