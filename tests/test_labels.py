"""Class labels: Triton's label files read once, checked against the output they name."""

from __future__ import annotations

from pathlib import Path

import pytest

from polystack.errors import InvalidRequest
from polystack.labels import LabelFile, label_files_of, label_settings, labels_of, parse_label_options, read_label_file
from polystack.types import DType, Signature, TensorSpec

SIG = Signature(
    inputs=(TensorSpec("x", DType.FP32, (-1, 4)),),
    outputs=(
        TensorSpec("scores", DType.FP32, (-1, 3)),
        TensorSpec("free", DType.FP32, (-1, -1)),
        TensorSpec("names", DType.BYTES, (-1, 3)),
    ),
)


def write(tmp_path: Path, text: str | bytes, name: str = "labels.txt") -> Path:
    path = tmp_path / name
    path.write_bytes(text.encode() if isinstance(text, str) else text)
    return path


def test_one_label_per_line_trailing_space_and_blank_lines_at_the_end_dropped(tmp_path: Path) -> None:
    assert read_label_file(write(tmp_path, "cat \r\ndog\n\nfish\n\n\n")) == ["cat", "dog", "", "fish"]
    # lines end at "\n" only, as in Triton: a form feed or a Unicode line separator is part of a label
    assert read_label_file(write(tmp_path, "a\x0cb\nc\u2028d\n")) == ["a\x0cb", "c\u2028d"]


@pytest.mark.parametrize(
    ("content", "words"),
    [("", "is empty"), ("\n\n", "is empty"), (b"\xff\xfe", "not UTF-8")],
)
def test_unusable_label_files_are_refused(tmp_path: Path, content: str | bytes, words: str) -> None:
    with pytest.raises(InvalidRequest, match=words):
        read_label_file(write(tmp_path, content))
    with pytest.raises(InvalidRequest, match="does not exist"):
        read_label_file(tmp_path / "missing.txt")


def test_labels_are_checked_against_the_output_they_name(tmp_path: Path) -> None:
    three = write(tmp_path, "a\nb\nc\n")
    found = parse_label_options([f"scores={three}", f"free={three}"], SIG)
    assert found == {
        "scores": LabelFile("labels.txt", ["a", "b", "c"]),
        "free": LabelFile("labels.txt", ["a", "b", "c"]),  # a dynamic class dimension takes any count
    }
    # the record keeps the labels, and the files' names for the model config's label_filename
    assert label_settings(found) == {
        "labels": {"scores": ["a", "b", "c"], "free": ["a", "b", "c"]},
        "label_files": {"scores": "labels.txt", "free": "labels.txt"},
    }
    two = write(tmp_path, "a\nb\n", "two.txt")
    with pytest.raises(InvalidRequest, match="scores 3 classes but the file has 2 labels"):
        parse_label_options([f"scores={two}"], SIG)
    with pytest.raises(InvalidRequest, match="no output 'y'; it has scores, free, names"):
        parse_label_options([f"y={three}"], SIG)
    with pytest.raises(InvalidRequest, match="is BYTES"):
        parse_label_options([f"names={three}"], SIG)
    with pytest.raises(InvalidRequest, match="say which, as OUTPUT=FILE"):
        parse_label_options([str(three)], SIG)


def test_a_model_with_one_output_takes_the_file_alone(tmp_path: Path) -> None:
    one = Signature(inputs=SIG.inputs, outputs=SIG.outputs[:1])
    assert parse_label_options([str(write(tmp_path, "a\nb\nc"))], one) == {"scores": LabelFile("labels.txt", ["a", "b", "c"])}
    (tmp_path / "v=2").mkdir()
    odd = write(tmp_path, "x\ny\nz", "v=2/labels.txt")  # a path with "=" in it, not OUTPUT=FILE
    assert parse_label_options([str(odd)], one) == {"scores": LabelFile("labels.txt", ["x", "y", "z"])}


def test_a_record_without_labels_has_none() -> None:
    assert labels_of({}) == {} and labels_of({"labels": {"y": ["a"]}}) == {"y": ["a"]}
    assert label_files_of({}) == {}
    assert label_files_of({"labels": {"y": ["a"]}, "label_files": {"y": "a.txt"}}) == {"y": "a.txt"}
    # a record registered before the files' names were kept still shows which outputs have labels
    assert label_files_of({"labels": {"y": ["a"], "z": ["b"]}, "label_files": {"z": "b.txt"}}) == {
        "y": "y_labels.txt",
        "z": "b.txt",
    }
