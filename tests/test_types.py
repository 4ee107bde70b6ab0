import numpy as np
import pytest

from polystack.errors import InvalidTensor
from polystack.types import DType, Signature, TensorSpec


@pytest.mark.parametrize("dtype", [d for d in DType if d is not DType.BYTES])
def test_every_oip_datatype_maps_to_numpy_and_back(dtype: DType) -> None:
    assert DType.from_numpy(dtype.numpy) is dtype
    assert dtype.itemsize == dtype.numpy.itemsize


@pytest.mark.parametrize("dtype", list(DType))
def test_parse_takes_the_protocols_spelling_and_any_case(dtype: DType) -> None:
    assert DType.parse(dtype.value) is dtype
    assert DType.parse(dtype.value.lower()) is dtype
    assert DType.parse(dtype.value.title()) is dtype


def test_parse_refuses_an_unknown_datatype_naming_the_known_ones() -> None:
    with pytest.raises(InvalidTensor, match=r"unknown datatype 'FP8'; expected one of BOOL, .*BYTES"):
        DType.parse("FP8")


def test_numpy_dtypes_are_numpys_own() -> None:
    assert DType.FP32.numpy is DType.FP32.numpy
    assert DType.FP32.numpy == np.dtype(np.float32)
    assert DType.BF16.numpy.name == "bfloat16"
    assert DType.BYTES.numpy == np.dtype(object)


def test_bytes_maps_to_object_arrays() -> None:
    assert DType.from_numpy(np.array([b"a"], dtype=object).dtype) is DType.BYTES
    assert DType.BYTES.itemsize == 0


def test_onnx_element_types_map_to_oip() -> None:
    assert DType.from_onnx(1) is DType.FP32
    assert DType.from_onnx(16) is DType.BF16
    assert DType.from_onnx(8) is DType.BYTES
    with pytest.raises(InvalidTensor, match="not supported"):
        DType.from_onnx(23)


SIG = Signature(
    inputs=(TensorSpec("x", DType.FP32, (-1, 4), ("batch", None)), TensorSpec("m", DType.INT64, (-1,))),
    outputs=(TensorSpec("y", DType.FP32, (-1, 2)),),
)


def test_signature_round_trips_through_dict_keeping_symbolic_names() -> None:
    again = Signature.from_dict(SIG.to_dict())
    assert again == SIG
    assert again.inputs[0].describe() == "x: FP32[batch, 4]"


def test_valid_inputs_pass() -> None:
    SIG.validate_inputs({"x": np.zeros((3, 4), np.float32), "m": np.zeros(3, np.int64)})


@pytest.mark.parametrize(
    ("inputs", "message"),
    [
        ({"x": np.zeros((3, 4), np.float32)}, "expected 2 inputs but got 1 inputs. Got input\\(s\\) \\['x'\\], but missing required input\\(s\\) \\['m'\\]"),
        ({"x": np.zeros((3, 4), np.float32), "q": np.zeros(3, np.int64)}, "unexpected inference input 'q'"),
        ({"x": np.zeros((3, 4), np.float32), "m": np.zeros(3, np.int64), "z": np.zeros(1)}, "unexpected inference input 'z'"),
        ({"x": np.zeros((3, 4), np.float64), "m": np.zeros(3, np.int64)}, "inference input 'x' data-type is 'FP64', but the model expects 'FP32'"),
        ({"x": np.zeros((3, 5), np.float32), "m": np.zeros(3, np.int64)}, r"unexpected shape for input 'x'. Expected \[-1,4\], got \[3,5\]"),
        ({"x": np.zeros((3, 4), np.float32), "m": np.zeros(2, np.int64)}, "input 'm' batch size does not match other inputs"),
    ],
)
def test_invalid_inputs_say_what_was_expected(inputs: dict, message: str) -> None:
    with pytest.raises(InvalidTensor, match=message):
        SIG.validate_inputs(inputs)


def test_optional_inputs_may_be_left_out_and_are_checked_when_given_without_counting_as_a_batch() -> None:
    sig = Signature(SIG.inputs, SIG.outputs, (TensorSpec("b", DType.FP32, (-1,)),))
    assert Signature.from_dict(sig.to_dict()) == sig and "optional" not in SIG.to_dict()
    given = {"x": np.zeros((3, 4), np.float32), "m": np.zeros(3, np.int64)}
    sig.validate_inputs(given)
    sig.validate_inputs({**given, "b": np.zeros(5, np.float32)})  # 5 values: no batch of 3 to agree with
    with pytest.raises(InvalidTensor, match="inference input 'b' data-type is 'FP64'"):
        sig.validate_inputs({**given, "b": np.zeros(5)})
    with pytest.raises(InvalidTensor, match=r"expected number of inputs between 2 and 3 .*missing required input\(s\) \['x'\].*b: FP32\[-1\] \(optional\)"):
        sig.validate_inputs({"m": given["m"]})
    assert sig.with_shapes({"b": (5,)}).optional == (TensorSpec("b", DType.FP32, (5,)),)
    with pytest.raises(InvalidTensor, match="input 'b' batch size does not match other inputs"):  # a batching model's
        sig.validate_inputs({**given, "b": np.zeros(5, np.float32)}, max_batch_size=8)


def test_batch_over_the_maximum_is_refused() -> None:
    with pytest.raises(InvalidTensor, match="batch-size must be <= 2, not 3"):
        SIG.validate_inputs({"x": np.zeros((3, 4), np.float32), "m": np.zeros(3, np.int64)}, max_batch_size=2)


def test_a_scalar_sent_to_a_batching_model_is_refused_in_tritons_words_first() -> None:
    """helper-204 (qa/L0_infer_reshape): tritonserver 2.51 says the input has no shape (Normalize) before any check of
    its dims; polystack said only that the shape was unexpected."""
    given = {"x": np.zeros((), np.float32), "m": np.zeros(3, np.int64)}
    with pytest.raises(InvalidTensor, match=r"^input 'x' has no shape but model requires batch dimension for 'm': "):
        SIG.validate_inputs(given, max_batch_size=8, model="m")
    with pytest.raises(InvalidTensor, match=r"^unexpected shape for input 'x'"):  # no batch dimension: the dims' words
        SIG.validate_inputs(given, max_batch_size=0, model="m")


def test_a_signature_is_batched_only_when_outputs_can_hold_one_row_per_input_row() -> None:
    x = TensorSpec("x", DType.FP32, (-1, 3))

    def sig(*outputs: tuple[int, ...]) -> Signature:
        return Signature(inputs=(x,), outputs=tuple(TensorSpec(f"o{i}", DType.FP32, s) for i, s in enumerate(outputs)))

    assert sig((-1, 4)).batched
    assert sig((-1,), ()).batched  # no declared rank (ONNX could not infer it) does not decide
    assert not sig((1, 3)).batched  # a fixed first dimension: it reduces over the batch
    assert not sig((-1, 4), (2,)).batched
    assert not Signature(inputs=(TensorSpec("x", DType.FP32, (2, 3)),), outputs=(x,)).batched


def test_a_request_missing_inputs_is_answered_with_the_string_tritons_qa_looks_for() -> None:
    """Triton's L0_input_validation checks this whole string, full stop included (helper-74)."""
    sig = Signature(tuple(TensorSpec(f"INPUT{i}", DType.FP32, (-1,)) for i in range(3)), SIG.outputs)
    with pytest.raises(InvalidTensor) as e:
        sig.validate_inputs({}, model="input_all_required")
    assert (
        "expected 3 inputs but got 0 inputs for model 'input_all_required'. Got input(s) [], but missing required "
        "input(s) ['INPUT0','INPUT1','INPUT2']. Please provide all required input(s)."
    ) in e.value.message
