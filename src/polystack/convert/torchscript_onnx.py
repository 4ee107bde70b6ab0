"""TorchScript -> ONNX with torch's TorchScript-based exporter (``dynamo=False``: the dynamo exporter takes
``torch.export`` programs, which a ScriptModule is not; nor can a module wrapping a loaded one be traced). The
graph's inputs are forward's arguments, named as the ``Binding`` names them; its outputs are what forward returns,
each named as the config output bound to it, and those no output is bound to are dropped. Scripted control flow
becomes ONNX's ``If`` and ``Loop``; the signature's dynamic dimensions (-1) stay dynamic. A model with
TYPE_STRING tensors (``List[str]``), a ``Dict[str, Tensor]`` input, or a dict returned has no ONNX form here."""

from __future__ import annotations

import warnings
from pathlib import Path

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
    returned = 1 if isinstance(result, torch.Tensor) else len(result)
    by_index = {index: name for name, index in binding.outputs}
    names = [by_index.get(i, f"unused__{i}") for i in range(returned)]  # each returned value, named
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
    kept = [o for o in model.graph.output if not o.name.startswith("unused__")]  # those the config serves
    del model.graph.output[:]
    model.graph.output.extend(kept)
    onnx.checker.check_model(model)
    onnx.save_model(model, str(path))
    return path
