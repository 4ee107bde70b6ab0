"""TorchScript modules for Triton's PyTorch backend (``formats/torchscript.py``): how a config's tensors meet
forward (its argument names, ``<name>__<index>``, the config's order, a dict), the configs Triton's backend
refuses, in its words, and code that reaches outside the model, refused before torch reads it."""

from __future__ import annotations

import copy
import re
import zipfile
from pathlib import Path
from typing import Any

import pytest
import torch

from polystack.errors import InvalidModelFile, UnsafeModel
from polystack.formats import import_model
from polystack.formats.pickle_guard import refuse_pickle
from polystack.formats.torchscript import bind, pack, signature
from polystack.formats.torchscript_guard import check_code, check_ops


class _Two(torch.nn.Module):
    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return x * 2, mask + 1


class _Dict(torch.nn.Module):
    def forward(self, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        return inputs["a"] + inputs["b"]


class _Words(torch.nn.Module):
    def forward(self, words: list[str], x: torch.Tensor) -> torch.Tensor:
        return x + len(words)


class _ReadsFiles(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + torch.from_file("/etc/hostname", False, 1, dtype=torch.uint8).to(x.dtype)


def _tensor(name: str, dtype: str = "TYPE_FP32", dims: list[int] | None = None, **more: Any) -> dict[str, Any]:
    return {"name": name, "data_type": dtype, "dims": dims if dims is not None else [4], **more}


def _config(inputs: list[dict[str, Any]], outputs: list[dict[str, Any]] | None = None, **more: Any) -> dict[str, Any]:
    return {"max_batch_size": 8, "input": inputs, "output": outputs or [_tensor("OUTPUT__0")], **more}


TWO = torch.jit.script(_Two())


def test_inputs_named_as_forwards_arguments_go_to_them_in_any_order() -> None:
    binding = bind(TWO, _config([_tensor("mask"), _tensor("x")]), "m")
    assert binding.arguments == ("x", "mask")


def test_inputs_named_by_index_go_to_that_argument() -> None:
    binding = bind(TWO, _config([_tensor("B__1"), _tensor("A__0")]), "m")
    assert binding.arguments == ("A__0", "B__1")


def test_other_names_go_in_the_configs_order() -> None:
    binding = bind(TWO, _config([_tensor("second"), _tensor("first")]), "m")
    assert binding.arguments == ("second", "first")


def test_outputs_go_by_index_where_every_one_has_one_else_by_the_configs_order() -> None:
    outputs = [_tensor("OUT__1"), _tensor("OUT__0")]
    assert bind(TWO, _config([_tensor("x"), _tensor("mask")], outputs), "m").outputs == (("OUT__1", 1), ("OUT__0", 0))
    outputs = [_tensor("doubled"), _tensor("OUT__0")]
    assert bind(TWO, _config([_tensor("x"), _tensor("mask")], outputs), "m").outputs == (("doubled", 0), ("OUT__0", 1))


def test_a_dict_argument_takes_every_input_by_name() -> None:
    binding = bind(torch.jit.script(_Dict()), _config([_tensor("a"), _tensor("b")]), "m")
    assert binding.dict_input and binding.arguments == ("a", "b")


def test_sequence_controls_and_states_go_by_index() -> None:
    class Acc(torch.nn.Module):
        def forward(self, x: torch.Tensor, start: torch.Tensor, state: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            total = state * (1 - start) + x
            return total, total

    sequence = {
        "control_input": [{"name": "START__1", "control": [{"kind": "CONTROL_SEQUENCE_START", "int32_false_true": [0, 1]}]}],
        "state": [{"input_name": "STATE__2", "output_name": "STATE_OUT__1", "data_type": "TYPE_FP32", "dims": [1]}],
    }  # fmt: skip
    config = _config([_tensor("X__0", dims=[1])], [_tensor("OUT__0", dims=[1])], sequence_batching=sequence)
    binding = bind(torch.jit.script(Acc()), config, "acc")
    assert binding.arguments == ("X__0", "START__1", "STATE__2")
    assert binding.outputs == (("OUT__0", 0), ("STATE_OUT__1", 1))
    assert [t.name for t in signature(config).outputs] == ["OUT__0", "STATE_OUT__1"]
    plain = copy.deepcopy(config)
    plain["input"][0]["name"] = "x"
    with pytest.raises(InvalidModelFile, match="sequence batching with state but not all inputs and outputs follow"):
        bind(torch.jit.script(Acc()), plain, "acc")


@pytest.mark.parametrize(
    ("config", "words"),
    [
        (_config([_tensor("x")]), "unable to load model 'm', configuration expects 1 inputs, model provides 2"),
        (_config([_tensor("A__0"), _tensor("B__2")]), "names forward's argument 2, which forward has not: it takes 2"),
        (_config([_tensor("A__0"), _tensor("B__0")]), "names forward's argument 0, which 'A__0' names too"),
        (_config([_tensor("x", "TYPE_BF16"), _tensor("mask")]), "unsupported datatype TYPE_BF16 for input 'x' for model 'm'"),
        (_config([_tensor("x"), _tensor("mask")], [_tensor("OUTPUT__0", "TYPE_UINT32")]), "unsupported datatype TYPE_UINT32 for output"),
        (_config([_tensor("x"), _tensor("mask", "TYPE_STRING")]), "Triton only supports 1 dimensional List of String as input for 'mask'"),
        (_config([_tensor("x"), _tensor("mask", optional=True)]), "input 'mask' is optional"),
        (_config([], []), "model configuration must contain at least one input, none were specified"),
        # a sequence control of a type torch lacks: its check's words (helper-201's L0_libtorch_io_names run)
        ({**_config([_tensor("x"), _tensor("mask")]), "sequence_batching": {"control_input": [
            {"name": "CORRID__2", "control": [{"kind": "CONTROL_SEQUENCE_CORRID", "data_type": "TYPE_UINT32"}]}]}},
         "input 'CORRID__2' type 'TYPE_UINT32' is not supported by PyTorch. It is a sequence control of model 'm'"),
    ],
    ids=["count", "index-past", "index-twice", "bf16", "uint32-out", "string-dims", "optional", "none", "control"],
)  # fmt: skip
def test_configs_that_do_not_fit_forward_are_refused_in_tritons_words(config: dict[str, Any], words: str) -> None:
    with pytest.raises(InvalidModelFile, match=words.replace("(", r"\(").replace("[", r"\[")):
        bind(TWO, config, "m")


def _batch_input(kind: str, target: str, source: str, dtype: str = "TYPE_INT32") -> dict[str, Any]:
    return {"kind": kind, "target_name": [target], "data_type": dtype, "source_input": [source]}


def _ragged(name: str, *batch_inputs: dict[str, Any], more: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    """A config of ragged input ``name`` (dims [-1]), the inputs ``more`` and ``batch_inputs``."""
    return _config([_tensor(name, dims=[-1], allow_ragged_batch=True), *(more or [])], batch_input=list(batch_inputs))


class _Lengths(torch.nn.Module):
    def forward(self, counts: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return x.sum() + counts.sum()


class _Three(torch.nn.Module):
    def forward(self, a: torch.Tensor, b: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        return a.sum() + b.sum() + c.sum()


def test_a_ragged_input_is_one_dimension_and_each_batch_input_a_model_input_of_its_type_and_rank() -> None:
    """As Triton's PyTorch backend hands them: a ragged input flattened over the whole batch ([total elements]),
    each batch input's target after the config's inputs, of the batch input's data_type."""
    kinds = [
        ("BATCH_ELEMENT_COUNT", "TYPE_INT32", (-1,)),
        ("BATCH_ACCUMULATED_ELEMENT_COUNT", "TYPE_FP32", (-1,)),
        ("BATCH_ACCUMULATED_ELEMENT_COUNT_WITH_ZERO", "TYPE_INT32", (-1,)),
        ("BATCH_MAX_ELEMENT_COUNT_AS_SHAPE", "TYPE_INT32", (-1,)),
        ("BATCH_ITEM_SHAPE", "TYPE_INT32", (-1, -1)),
        ("BATCH_ITEM_SHAPE_FLATTEN", "TYPE_FP32", (-1,)),
    ]
    fills = [_batch_input(kind, f"B{i}", "x", dtype) for i, (kind, dtype, _) in enumerate(kinds)]
    config = _ragged("x", *fills, more=[_tensor("y", dims=[2])])
    sig = signature(config)
    assert [(t.name, t.dtype.value, t.shape) for t in sig.inputs] == [
        ("x", "FP32", (-1,)), ("y", "FP32", (-1, 2)),
        *((f"B{i}", dtype[5:], shape) for i, (_, dtype, shape) in enumerate(kinds)),
    ]  # fmt: skip


@pytest.mark.parametrize(
    ("module", "config", "arguments"),
    [
        # FORWARD_ARGUMENT: every config input is an argument's name; a batch input goes by its name too
        (_Lengths(), _ragged("x", _batch_input("BATCH_ELEMENT_COUNT", "counts", "x")), ("counts", "x")),
        # NAMED_INDEX: <name>__<index>, a batch input's too
        (_Lengths(), _ragged("INPUT__1", _batch_input("BATCH_ELEMENT_COUNT", "COUNT__0", "INPUT__1")), ("COUNT__0", "INPUT__1")),
        # STRICT_CONFIG_ORDERING: the config's inputs, then the batch inputs in their order
        (
            _Three(),
            _ragged("data", _batch_input("BATCH_ACCUMULATED_ELEMENT_COUNT", "ends", "data"),
                    _batch_input("BATCH_ELEMENT_COUNT", "lengths", "data")),
            ("data", "ends", "lengths"),
        ),
        # a dict argument: every input by name, the batch inputs' too
        (_Dict(), _ragged("a", _batch_input("BATCH_ELEMENT_COUNT", "b", "a")), ("a", "b")),
    ],
    ids=["forward-argument", "named-index", "config-order", "dict"],
)  # fmt: skip
def test_batch_inputs_reach_forward_where_tritons_backend_puts_them(
    module: torch.nn.Module, config: dict[str, Any], arguments: tuple[str, ...]
) -> None:
    assert bind(torch.jit.script(module), config, "m").arguments == arguments


@pytest.mark.parametrize(
    ("module", "config", "words"),
    [
        (_Lengths(), _ragged("x", _batch_input("BATCH_ELEMENT_COUNT", "lengths", "x")),
         "batch input 'lengths' is not an argument of forward (counts, x)"),
        (_Lengths(), _ragged("INPUT__1", _batch_input("BATCH_ELEMENT_COUNT", "COUNT", "INPUT__1")),
         "input 'COUNT' does not follow <name>__<index> naming convention."),
        (_Lengths(), _ragged("INPUT__0", _batch_input("BATCH_ELEMENT_COUNT", "COUNT__0", "INPUT__0")),
         "names forward's argument 0, which 'INPUT__0' names too"),
        (TWO, _ragged("x"), "unable to load model 'm', configuration expects 1 inputs, model provides 2"),
        (_Three(), _ragged("x", _batch_input("BATCH_ELEMENT_COUNT", "n", "x")), "configuration expects 2 inputs, model provides 3"),
        (TWO, _ragged("x", _batch_input("BATCH_ELEMENT_COUNT", "mask", "x", "TYPE_INT64")),
         "batch_input[0] has data_type TYPE_INT64; a batch input is TYPE_INT32 or TYPE_FP32"),
        (TWO, _ragged("x", {**_batch_input("BATCH_ELEMENT_COUNT", "mask", "x"), "target_name": ["mask", "n"]}),
         "batch_input[0] must name one target_name and one source_input"),
    ],
    ids=["not-an-argument", "not-indexed", "index-twice", "count", "count-with-batch-input", "type", "two-targets"],
)  # fmt: skip
def test_batch_inputs_that_do_not_fit_forward_are_refused(module: torch.nn.Module, config: dict[str, Any], words: str) -> None:
    with pytest.raises(InvalidModelFile, match=re.escape(words)):
        bind(module if isinstance(module, torch.jit.ScriptModule) else torch.jit.script(module), config, "m")


def test_a_dict_argument_takes_no_strings() -> None:
    config = _config([_tensor("a"), _tensor("b", "TYPE_STRING", [1], reshape={"shape": []})])
    with pytest.raises(InvalidModelFile, match=r"forward takes a Dict.*but input .b. is TYPE_STRING"):
        bind(torch.jit.script(_Dict()), config, "m")


def test_strings_go_to_list_arguments_and_tensors_to_tensor_arguments() -> None:
    words = torch.jit.script(_Words())
    ok = _config([_tensor("words", "TYPE_STRING", [1], reshape={"shape": []}), _tensor("x", dims=[1])])
    assert bind(words, ok, "m").arguments == ("words", "x")
    crossed = _config([_tensor("x", "TYPE_STRING", [1], reshape={"shape": []}), _tensor("words", dims=[1])])
    with pytest.raises(InvalidModelFile, match="input 'words' is TYPE_FP32, but forward's argument 'words' takes a List"):
        bind(words, crossed, "m")


def _saved(module: torch.nn.Module, path: Path) -> Path:
    torch.jit.save(torch.jit.script(module), str(path))
    return path


def test_code_that_reads_the_servers_files_is_refused_before_torch_reads_it(tmp_path: Path) -> None:
    path = _saved(_ReadsFiles(), tmp_path / "model.pt")
    with pytest.raises(UnsafeModel, match=r"calls torch\.from_file .* reaches the server's files"):
        check_code(path.read_bytes(), "model.pt")
    with pytest.raises(UnsafeModel, match="from_file"):
        pack(path, _config([_tensor("x")]), "m", tmp_path / "m.zip")


@pytest.mark.parametrize(
    ("line", "words"),
    [
        ('torch.save(x, "/tmp/out")', r"torch\.save .* reaches the server's files"),
        ("ops.c10d.barrier(x)", "outside torch's own operators \\(namespace 'c10d'\\)"),
        ("torch.classes.dist_c10d.TCPStore(x)", "namespace 'dist_c10d'"),
        ("ops.aten.from_file(x)", "from_file"),
        ("ops.aten.from_file.default(x)", "from_file"),
        ('getattr(torch, "from_file")(x)', "looks up an operator by getattr"),
        ("t = torch", "uses 'torch' itself"),
        ('getattr(ops.aten, "from_file")(x)', "looks up an operator by getattr"),
        ("t = torch.ops", r"uses torch\.ops as a value .* a namespace of operators"),
        ("t = ops.aten", r"uses ops\.aten as a value"),
        ('hasattr(math, "inf")', "looks up an operator by hasattr"),
        ("f = math.sqrt", None),  # an operator as a value is no namespace: the loaded module's check has it
    ],
)
def test_code_reaching_outside_torchs_numeric_operators_is_refused(tmp_path: Path, line: str, words: str | None) -> None:
    # the archive's code as torch.jit.save writes it, with one line another tool could have put there: a call, or a
    # way to reach an operator without naming it in full (getattr with a literal name, a module bound to a local)
    path = _saved(_Two(), tmp_path / "model.pt")
    edited = tmp_path / "edited.pt"
    with zipfile.ZipFile(path) as src, zipfile.ZipFile(edited, "w") as out:
        for item in src.infolist():
            data = src.read(item)
            if "/code/" in item.filename and item.filename.endswith(".py"):
                data = data.replace(b"    return ", f"    _ = {line}\n    return ".encode(), 1)
            out.writestr(item, data)
    if words is None:
        check_code(edited.read_bytes(), "edited.pt")
        return
    with pytest.raises(UnsafeModel, match=words):
        check_code(edited.read_bytes(), "edited.pt")
    check_code(path.read_bytes(), "model.pt")  # the module as saved calls torch's own operators only


def test_an_archive_holding_a_code_file_twice_is_refused(tmp_path: Path) -> None:
    # Python's zip reader takes the last of two entries of a name, torch's the first
    path = _saved(_Two(), tmp_path / "model.pt")
    doubled = tmp_path / "doubled.pt"
    with zipfile.ZipFile(path) as src, zipfile.ZipFile(doubled, "w") as out:
        for item in src.infolist():
            out.writestr(item.filename, src.read(item))
            if "/code/" in item.filename and item.filename.endswith(".py"):
                out.writestr(item.filename, src.read(item))
    with pytest.raises(UnsafeModel, match=r"holds .* twice"):
        check_code(doubled.read_bytes(), "doubled.pt")


@pytest.mark.parametrize(
    ("edit", "words"),
    [
        (lambda name, data: (name, data.replace(b"    return ", b"    _ = 0 #\r    return ", 1)), "control character"),
        (lambda name, data: (name.removesuffix(".py") + ".PY", data), None),  # checked whatever its case
    ],
    ids=["carriage-return", "upper-case"],
)
def test_code_a_python_parser_reads_otherwise_than_torchs_is_refused(tmp_path: Path, edit: Any, words: str | None) -> None:
    # Python ends a comment at a lone carriage return, TorchScript at a newline; torch finds entries in any case
    path = _saved(_ReadsFiles(), tmp_path / "model.pt")
    edited = tmp_path / "edited.pt"
    with zipfile.ZipFile(path) as src, zipfile.ZipFile(edited, "w") as out:
        for item in src.infolist():
            name, data = item.filename, src.read(item)
            if "/code/" in name and name.endswith(".py"):
                name, data = edit(name, data)
            out.writestr(name, data)
    with pytest.raises(UnsafeModel, match=words or "from_file"):
        check_code(edited.read_bytes(), "edited.pt")


def test_the_loaded_modules_operators_are_checked_whatever_the_code_says() -> None:
    class Outside(torch.nn.Module):  # inductor::_alloc_from_pool: a view of a pool at any offset
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.ops.inductor._alloc_from_pool(x, 0, torch.float32, [1], [1])

    with pytest.raises(UnsafeModel, match=r"forward runs aten::from_file, which reaches the server's files"):
        check_ops(torch.jit.script(_ReadsFiles()), "m")
    with pytest.raises(UnsafeModel, match="runs inductor::_alloc_from_pool, outside torch's own"):
        check_ops(torch.jit.script(Outside()), "m")
    check_ops(torch.jit.script(_Two()), "m")


def test_a_bare_torchscript_file_is_told_to_come_with_its_config(tmp_path: Path) -> None:
    path = _saved(_Two(), tmp_path / "model.pt")
    with pytest.raises(InvalidModelFile, match=r"TorchScript module .*config\.pbtxt \(platform: \"pytorch_libtorch\"\)"):
        refuse_pickle(path)


def test_the_packed_module_imports_with_the_configs_signature(tmp_path: Path) -> None:
    config = _config([_tensor("x"), _tensor("mask", "TYPE_INT64", [-1])], [_tensor("OUTPUT__0")])
    packed = pack(_saved(_Two(), tmp_path / "model.pt"), config, "m", tmp_path / "m.zip")
    imported = import_model(packed, tmp_path)
    assert imported.format == "torchscript"
    assert [(t.name, t.shape) for t in imported.signature.inputs] == [("x", (-1, 4)), ("mask", (-1, -1))]
