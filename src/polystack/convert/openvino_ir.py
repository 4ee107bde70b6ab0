"""ONNX -> OpenVINO IR: ``openvino.convert_model`` then ``save_model`` (weights kept in fp32).

The IR is two files (``model.xml``, ``model.bin``); the store keeps them as one uncompressed tar,
which the openvino backend reads from memory.
"""

from __future__ import annotations

from pathlib import Path

from polystack.backends.openvino import pack_ir
from polystack.convert import ConversionError, ConvertContext, quiet


def convert(src: Path, ctx: ConvertContext) -> Path:
    import openvino as ov

    folder = ctx.workdir / "ir"
    folder.mkdir(parents=True, exist_ok=True)
    with quiet():
        try:
            model = ov.convert_model(str(src))
            ov.save_model(model, str(folder / "model.xml"), compress_to_fp16=False)
        except Exception as e:
            raise ConversionError(f"OpenVINO could not convert the ONNX model: {str(e).splitlines()[0][:400]}") from e
    return pack_ir(folder / "model.xml", folder / "model.bin", ctx.workdir / "model.openvino.tar")
