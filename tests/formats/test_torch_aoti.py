"""AOTInductor packages (``formats/torch_aoti.py``): a config meets the compiled model by the names Triton's
PyTorch backend gives its call spec's leaves, refused in its words where it refuses; the shapes and types the
package was compiled for are read from its generated source, and a config that promises others is refused."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from polystack.errors import InvalidModelFile, InvalidRequest
from polystack.formats import detect
from polystack.formats.aoti_source import Compiled, Dim, read_source
from polystack.formats.torch_aoti import Binding, call_names, check_config, pack, unpack
from polystack.types import DType

LEAF: dict[str, Any] = {"type": None, "context": None, "children_spec": []}


def _node(kind: str, children: list[dict[str, Any]], keys: list[str] | None = None) -> dict[str, Any]:
    return {
        "type": f"builtins.{kind}",
        "context": json.dumps(keys) if keys is not None else "null",
        "children_spec": children,
    }


def _spec(node: dict[str, Any]) -> str:
    return json.dumps([1, node])


def _config(
    inputs: list[tuple[str, str, list[int]]], outputs: list[tuple[str, str, list[int]]], batch: int = 8
) -> dict[str, Any]:
    def tensors(items: list[tuple[str, str, list[int]]]) -> list[dict[str, Any]]:
        return [{"name": n, "data_type": t, "dims": d} for n, t, d in items]

    return {
        "name": "m",
        "platform": "torch_aoti",
        "max_batch_size": batch,
        "input": tensors(inputs),
        "output": tensors(outputs),
    }


def test_leaves_are_named_as_tritons_backend_names_them() -> None:
    args = _node("tuple", [LEAF, _node("tuple", [LEAF, LEAF]), _node("dict", [LEAF], ["k"])])
    kwargs = _node("dict", [LEAF], ["scale"])
    out = _node("dict", [LEAF, _node("tuple", [LEAF, LEAF])], ["sum", "parts"])
    ins, outs = call_names(_spec(_node("tuple", [args, kwargs])), _spec(out), "m")
    assert ins == [["ARGS[0]", "INPUT__0"], ["ARGS[1][0]", "INPUT__1"], ["ARGS[1][1]", "INPUT__2"],
                   ["ARGS[2][k]", "INPUT__3"], ["KWARGS[scale]", "KWARGSscale", "INPUT__4"]]  # fmt: skip
    assert outs == [["RESULT[sum]", "OUTPUT__0"], ["RESULT[parts][0]", "OUTPUT__1"], ["RESULT[parts][1]", "OUTPUT__2"]]
    _, lone = call_names(_spec(_node("tuple", [_node("tuple", [LEAF]), _node("dict", [], [])])), _spec(LEAF), "m")
    assert lone == [["RESULT", "OUTPUT__0"]]


def test_call_specs_triton_refuses_are_refused_in_its_words() -> None:
    ordered = {"type": "collections.OrderedDict", "context": '["a"]', "children_spec": [LEAF]}
    with pytest.raises(
        InvalidModelFile, match=r"Value of `type` property \('collections.OrderedDict'\) is unsupported"
    ):
        call_names(_spec(_node("tuple", [_node("tuple", [ordered]), _node("dict", [], [])])), _spec(LEAF), "m")
    with pytest.raises(InvalidModelFile, match=r"Failed to parse input call specification for model \"m\""):
        call_names("not json", _spec(LEAF), "m")
    with pytest.raises(InvalidModelFile, match=r"Expected structure to be tuple\[tuple, dict\]"):
        call_names(_spec(_node("tuple", [LEAF])), _spec(LEAF), "m")


def test_a_package_is_bound_to_its_config_with_the_shapes_it_was_compiled_for(aoti: Any, tmp_path: Path) -> None:
    config = _config([("ARGS[0]", "TYPE_FP32", [4]), ("ARGS[1][0]", "TYPE_FP32", [4]), ("INPUT__2", "TYPE_FP32", [2]),
                      ("KWARGS[c]", "TYPE_FP32", [4])],
                     [("RESULT[parts][1]", "TYPE_INT64", [4]), ("OUTPUT__0", "TYPE_FP32", [4])])  # fmt: skip
    _, binding, compiled = unpack(pack(aoti.structured, config, "m", tmp_path / "m.zip"))
    assert binding.inputs == ("ARGS[0]", "ARGS[1][0]", "INPUT__2", "KWARGS[c]")
    assert binding.outputs == (("RESULT[parts][1]", 2), ("OUTPUT__0", 0))
    assert compiled is not None and [d.shown() for d in compiled.dims[2]] == ["2..64", "2"]
    shapes = [("ARGS[0]", (2, 4)), ("ARGS[1][0]", (2, 4)), ("INPUT__2", (2, 2)), ("KWARGS[c]", (2, 4))]
    compiled.check(shapes)  # torch compiles a batch exported with min=1 for 2 and more: the backend pads 1 row
    with pytest.raises(
        InvalidRequest,
        match=r"input 'ARGS\[0\]' has shape \[65, 4\], but the AOTInductor package was compiled for \[2..64, 4\]",
    ):
        compiled.check([("ARGS[0]", (65, 4)), *shapes[1:]])


@pytest.mark.parametrize(
    ("change", "words"),
    [
        ({"input": [{"name": "x", "data_type": "TYPE_FP32", "dims": [4]}]}, 'Input "x" for model "m" is not found in model input map: name it ARGS[0] or INPUT__0'),
        ({"output": [{"name": "y", "data_type": "TYPE_FP32", "dims": [3]}]}, 'Output "y" for model "m" is not found in model output map: name it OUTPUT__0 or RESULT'),
        ({"input": [{"name": "INPUT__0", "data_type": "TYPE_FP64", "dims": [4]}]}, "input 'INPUT__0' is TYPE_FP64 in the config, but model 'm' was compiled for TYPE_FP32"),
        ({"input": [{"name": "INPUT__0", "data_type": "TYPE_FP32", "dims": [5]}]}, "input 'INPUT__0' has dims [-1, 5] in the config"),
        ({"max_batch_size": 128}, "the config's max_batch_size is 128, but model 'm' was compiled for at most 64 rows"),
        ({"input": [{"name": "INPUT__0", "data_type": "TYPE_STRING", "dims": [4]}]}, "input 'INPUT__0' is TYPE_STRING, but an AOTInductor model takes and gives tensors only"),
        ({"input": [{"name": "INPUT__0", "data_type": "TYPE_BF16", "dims": [4]}]}, 'Unsupported datatype TYPE_BF16 for input "INPUT__0" for model "m".'),
        ({"input": [{"name": "INPUT__0", "data_type": "TYPE_FP32", "dims": [4]}, {"name": "INPUT__1", "data_type": "TYPE_FP32", "dims": [4]}]},
         'Failed to load model "m" configuration expects 2 inputs, but model expects 1 inputs'),
        ({"sequence_batching": {}}, "sequence batching is not supported for AOTInductor models"),
        ({"input": [{"name": "INPUT__0", "data_type": "TYPE_FP32", "dims": [4], "optional": True}]}, "input 'INPUT__0' is optional"),
        ({"input": []}, "model configuration must contain at least one input, none were specified"),
    ],
    ids=["input-name", "output-name", "dtype", "dims", "max-batch", "string", "bf16", "count", "sequence", "optional", "no-inputs"],
)  # fmt: skip
def test_configs_that_do_not_fit_the_package_are_refused(
    aoti: Any, tmp_path: Path, change: dict[str, Any], words: str
) -> None:
    config = {**_config([("INPUT__0", "TYPE_FP32", [4])], [("OUTPUT__0", "TYPE_FP32", [3])], batch=8), **change}
    with pytest.raises(InvalidModelFile) as refused:
        pack(aoti.mlp, config, "m", tmp_path / "m.zip")
    assert words in str(refused.value)


def test_a_static_package_takes_only_the_shape_it_was_compiled_for(aoti: Any, tmp_path: Path) -> None:
    with pytest.raises(InvalidModelFile, match=r"has dims \[-1, 4\] in the config .*compiled for \[2, 4\]"):
        pack(
            aoti.static,
            _config([("INPUT__0", "TYPE_FP32", [4])], [("OUTPUT__0", "TYPE_FP32", [3])]),
            "m",
            tmp_path / "a.zip",
        )
    pack(
        aoti.static,
        _config([("INPUT__0", "TYPE_FP32", [2, 4])], [("OUTPUT__0", "TYPE_FP32", [2, 3])], batch=0),
        "m",
        tmp_path / "b.zip",
    )


def test_register_says_where_a_package_is_served_from(aoti: Any) -> None:
    with pytest.raises(
        InvalidModelFile, match=r"is an AOTInductor package.*platform: \"torch_aoti\".*--allow-torch-aoti-models"
    ):
        detect(aoti.mlp)


def test_inputs_whose_compiled_sizes_are_shared_must_agree(aoti: Any, tmp_path: Path) -> None:
    """AOTInductor takes a shared size from the first input that has it and checks no other: x[3, 5] with
    mask[1, 5] had its kernel read past the mask (a client read server memory, and crashed it with more rows)."""
    config = _config(
        [("ARGS[0]", "TYPE_FP32", [-1, -1]), ("ARGS[1]", "TYPE_FP32", [-1, -1])],
        [("RESULT", "TYPE_FP32", [-1, -1])],
        batch=0,
    )
    _, _, compiled = unpack(pack(aoti.pair, config, "m", tmp_path / "m.zip"))
    assert compiled is not None
    compiled.check([("ARGS[0]", (3, 5)), ("ARGS[1]", (3, 5))])
    for other in ((2, 5), (3, 4)):
        with pytest.raises(
            InvalidRequest,
            match=r"input 'ARGS\[1\]' has \d+ at dim \d, but the AOTInductor package was compiled to take \d there, as dim \d of input 'ARGS\[0\]'",
        ):
            compiled.check([("ARGS[0]", (3, 5)), ("ARGS[1]", other)])  # fmt: skip


def _source(checks: int, sizes: dict[str, str], strides: str = "4L, 1L") -> str:
    """Generated C++ as AOTInductor writes it, cut to what ``read_source`` reads."""
    functions = "".join(
        f"static void check_input_{i}(AtenTensorHandle* input_handles) {{\n"
        f"    int32_t arg{i}_1_expected_dtype = aoti_torch_dtype_float32();\n"
        f"    if (arg{i}_1_size[0] > 64) {{ }}\n    if (4 != arg{i}_1_size[1]) {{ }}\n}}\n"
        for i in range(checks)
    )
    body = "".join(f"    auto arg{i}_1 = std::move(inputs[{i}]);\n" for i in range(checks))
    asserts = "".join(
        f'    assert_size_stride(arg{i}_1, {{{s}}}, {{{strides}}}, "input");\n' for i, s in enumerate(sizes.values())
    )
    return functions + "static bool _check_aoti_runtime_check_inputs_env() {}\n" + body + asserts


def test_packages_whose_sizes_cannot_be_checked_are_refused() -> None:
    with pytest.raises(
        InvalidModelFile, match="takes 1 tensors, but its call spec has 2 arguments: an argument that is not a tensor"
    ):
        read_source(_source(1, {"a": "s0, 4L"}), 2, "m")
    with pytest.raises(InvalidModelFile, match=r"sizes its input 0's dim 0 as max\(s0, 2\)"):
        read_source(_source(1, {"a": "max(s0, 2), 4L"}), 1, "m")
    with pytest.raises(InvalidModelFile, match="sizes an input dim as 2\\*s1, whose symbols no input dim gives alone"):
        read_source(_source(2, {"a": "s0, 4L", "b": "2*s1, 4L"}), 2, "m")
    with pytest.raises(InvalidModelFile, match=r"laid out with strides .* not one row after another"):
        read_source(_source(1, {"a": "s0, 4L"}, strides="8L, 2L"), 1, "m")  # from x[:, ::2]: read past
    _, compiled = read_source(_source(2, {"a": "s0, 4L", "b": "2L*s0, 4L"}), 2, "m")
    assert compiled is not None
    compiled.check([("a", (3, 4)), ("b", (6, 4))])
    with pytest.raises(InvalidRequest, match="compiled to take 6 there"):
        compiled.check([("a", (3, 4)), ("b", (3, 4))])


def test_a_batch_compiled_for_more_rows_is_taken_and_its_bound_kept() -> None:
    """A batch exported with min=1 is compiled for 2 and more, as one that needs 2 is: 2 means 2 (a batching model's
    requests are padded up to it by the backend)."""
    compiled = Compiled((DType.FP32,), ((Dim(low=3, high=64), Dim(size=4)),))
    config = _config([("INPUT__0", "TYPE_FP32", [4])], [("OUTPUT__0", "TYPE_FP32", [3])])
    check_config(compiled, Binding(("INPUT__0",), (("OUTPUT__0", 0),)), config, "m")
    with pytest.raises(
        InvalidRequest, match=r"has shape \[2, 4\], but the AOTInductor package was compiled for \[3..64, 4\]"
    ):
        compiled.check([("INPUT__0", (2, 4))])
