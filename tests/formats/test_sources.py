"""Each source format registers from a file saved with its framework's own save call; pickles never load."""

from __future__ import annotations

import io
import json
import os
import pickle
import zipfile
from collections.abc import Callable
from pathlib import Path

import pytest

from polystack import zoo
from polystack.errors import UnsafeModel
from polystack.formats import detect, import_model
from polystack.formats.pickle_guard import pickle_globals, refuse_pickle
from polystack.types import DType

CASES: dict[str, tuple[Callable[[Path], Path], str, str, tuple[int, ...], str]] = {
    # file -> (builder, expected format, first input name, its shape, first output name)
    "mlp.pt2": (zoo.mlp_pt2, "torch.export", "input", (-1, 16), "output_0"),
    "pipeline.skops": (zoo.sklearn_pipeline_skops, "skops", "input", (-1, 6), "label"),
    "model.json": (zoo.xgboost_model, "xgboost", "input", (-1, 6), "label"),
    "model.ubj": (zoo.xgboost_model, "xgboost", "input", (-1, 6), "label"),
    "model.txt": (zoo.lightgbm_model, "lightgbm", "input", (-1, 6), "variable"),
    "fn.jax": (zoo.jax_mlp, "jax.export", "input_0", (-1, 8), "output_0"),
    "model.tflite": (zoo.litert_mlp, "litert", "x", (-1, 8), "y"),
    "model.xml": (zoo.openvino_ir, "openvino", "x", (-1, 8), "y"),
}


@pytest.mark.parametrize("filename", list(CASES))
def test_a_file_saved_by_its_framework_is_detected_and_imported(filename: str, tmp_path: Path) -> None:
    build, fmt, input_name, shape, output_name = CASES[filename]
    path = build(tmp_path / filename)
    assert detect(path) == fmt
    imported = import_model(path, tmp_path)
    assert imported.format == fmt
    first = imported.signature.inputs[0]
    assert (first.name, first.shape, first.dtype) == (input_name, shape, DType.FP32)
    assert imported.signature.outputs[0].name == output_name


def test_detection_does_not_depend_on_the_file_name(tmp_path: Path) -> None:
    for name, (build, fmt, *_rest) in CASES.items():
        path = build(tmp_path / name)
        renamed = path.rename(tmp_path / f"renamed-{fmt.replace('.', '-')}")
        assert detect(renamed) == fmt, name


def test_skops_types_it_does_not_trust_are_refused_until_the_user_trusts_them(tmp_path: Path) -> None:
    path = zoo.sklearn_forest_skops(tmp_path / "forest.skops")
    with pytest.raises(UnsafeModel, match=r"--trust sklearn\.tree\._tree\.Tree"):
        import_model(path, tmp_path)
    imported = import_model(path, tmp_path, trusted=["sklearn.tree._tree.Tree"])
    assert imported.settings["trusted_types"] == ["sklearn.tree._tree.Tree"]
    assert [o.name for o in imported.signature.outputs] == ["label", "probabilities"]


class Payload:
    """Unpickling this runs ``touch <marker>``: the attack a pickle-family model file can carry."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (os.system, (f"touch {self.marker}",))


def _torch_save_zip(obj: object, path: Path) -> Path:
    import torch

    torch.save(obj, str(path))
    return path


@pytest.mark.parametrize("suffix", [".pkl", ".joblib", ".pt", ".model", ""])
def test_a_pickle_with_an_os_system_payload_is_refused_without_running_it(tmp_path: Path, suffix: str) -> None:
    marker = tmp_path / "pwned"
    path = tmp_path / f"model{suffix}"
    path.write_bytes(pickle.dumps(Payload(marker), protocol=4))
    with pytest.raises(UnsafeModel, match="pickle") as err:
        import_model(path, tmp_path)
    assert "skops" in str(err.value) and "torch.export.save" in str(err.value)  # names the safe format
    assert not marker.exists()


def test_a_torch_save_checkpoint_is_refused_while_a_torch_export_archive_passes(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    checkpoint = _torch_save_zip({"w": Payload(marker)}, tmp_path / "checkpoint.pt")
    with pytest.raises(UnsafeModel, match="pickle"):
        import_model(checkpoint, tmp_path)
    assert not marker.exists()
    import torch

    state = _torch_save_zip(zoo.torch_mlp().state_dict(), tmp_path / "weights.pth")
    with pytest.raises(UnsafeModel):
        refuse_pickle(state)
    archive = zoo.mlp_pt2(tmp_path / "mlp.pt2")
    refuse_pickle(archive)  # a real torch.export.save archive (it holds a tensor-only sample-inputs file)
    assert torch.__version__  # the archive above was written by this torch


def _rewrite_zip(src: Path, dst: Path, change: Callable[[str, bytes], bytes]) -> Path:
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w") as zout:
        for info in zin.infolist():
            zout.writestr(info, change(info.filename, zin.read(info)))
    return dst


def test_a_pt2_whose_weights_are_pickled_is_refused_unread(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    archive = zoo.mlp_pt2(tmp_path / "mlp.pt2")
    evil = pickle.dumps(Payload(marker))

    def change(name: str, data: bytes) -> bytes:
        if name.endswith("model_weights_config.json"):
            config = json.loads(data)
            first = next(iter(config["config"].values()))
            first["use_pickle"] = True
            return json.dumps(config).encode()
        if name.endswith("/data/weights/weight_0"):
            return evil
        return data

    bad = _rewrite_zip(archive, tmp_path / "evil.pt2", change)
    with pytest.raises(UnsafeModel, match="stored as a pickle"):
        import_model(bad, tmp_path)
    assert not marker.exists()


def test_a_pt2_whose_sample_inputs_name_code_is_refused_unread(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    archive = zoo.mlp_pt2(tmp_path / "mlp.pt2")
    buf = io.BytesIO()
    import torch

    torch.save(Payload(marker), buf)

    def change(name: str, data: bytes) -> bytes:
        return buf.getvalue() if "/data/sample_inputs/" in name else data

    bad = _rewrite_zip(archive, tmp_path / "evil.pt2", change)
    with pytest.raises(UnsafeModel, match=r"posix\.system|os\.system|nt\.system"):
        import_model(bad, tmp_path)
    assert not marker.exists()


def test_pickle_globals_are_found_without_unpickling() -> None:
    data = pickle.dumps(Payload(Path("/nonexistent/never")), protocol=4)
    assert any(g.endswith(".system") for g in pickle_globals(data))
    assert pickle_globals(pickle.dumps({"a": [1, 2.0, "x"]})) == []


def test_openvino_ir_keeps_its_weights_and_is_refused_without_them(tmp_path: Path) -> None:
    from polystack.errors import InvalidModelFile

    xml = zoo.openvino_ir(tmp_path / "ir" / "model.xml")
    imported = import_model(xml, tmp_path)
    assert imported.artifact.suffix == ".tar"  # the pair as one file, which registers again as it is
    assert import_model(imported.artifact, tmp_path).signature == imported.signature
    xml.with_suffix(".bin").unlink()
    with pytest.raises(InvalidModelFile, match=r"model\.bin beside it, which is not there"):
        import_model(xml, tmp_path)
    (tmp_path / "broken.xml").write_text('<?xml version="1.0"?>\n<net name="x" version="11"><layers>')
    (tmp_path / "broken.bin").write_bytes(b"")
    with pytest.raises(InvalidModelFile, match=r"OpenVINO cannot read broken\.xml"):
        import_model(tmp_path / "broken.xml", tmp_path)
