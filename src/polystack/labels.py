"""Class labels of a model's outputs: what the classification extension appends to ``value:index``.

A label file is Triton's: one label per line, line i naming class i. ``polystack register --labels
OUTPUT=FILE`` reads it once, checks it against the output's class count where the signature fixes it,
and keeps the labels in the model record's settings (``settings["labels"]``: output -> labels), so a
served model needs no file beside it. The file's name is kept too (``settings["label_files"]``) for the
model configuration's ``label_filename``, which tells a Triton client that an output has labels.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple

from polystack.errors import InvalidRequest, quote
from polystack.types import DType, Signature

MAX_LABEL_FILE_BYTES = 16 * 1024 * 1024  # labels live in the catalog's settings column


def read_label_file(path: Path) -> list[str]:
    """One label per line (trailing whitespace dropped, a final newline optional)."""
    try:
        size = path.stat().st_size
        if size > MAX_LABEL_FILE_BYTES:
            raise InvalidRequest(
                f"label file {path} holds {size:,} bytes, over the {MAX_LABEL_FILE_BYTES:,} polystack keeps per output"
            )
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise InvalidRequest(
            f"label file {path} does not exist; pass --labels OUTPUT=FILE with a file that does"
        ) from None
    except UnicodeDecodeError as e:
        raise InvalidRequest(f"label file {path} is not UTF-8 text ({e.reason} at byte {e.start})") from None
    except OSError as e:
        raise InvalidRequest(f"label file {path} cannot be read: {e.strerror}") from None
    labels = [line.rstrip() for line in text.split("\n")]  # "\n" only, as Triton: not str.splitlines' \f, \x1c...
    while labels and not labels[-1]:
        labels.pop()  # blank lines at the end name no class
    if not labels:
        raise InvalidRequest(f"label file {path} is empty; write one label per line, line i for class i")
    return labels


def class_count(signature: Signature, output: str) -> int | None:
    """How many classes ``output`` scores per item, when its shape fixes it (else None)."""
    spec = next(t for t in signature.outputs if t.name == output)
    dims = spec.shape[1:] if spec.batched else spec.shape
    return None if any(d == -1 for d in dims) else math.prod(dims)


class LabelFile(NamedTuple):
    """One ``--labels`` option, read: the file's name (Triton's ``label_filename``) and its labels."""

    name: str
    labels: list[str]


def parse_label_options(options: Sequence[str], signature: Signature, checked: bool = True) -> dict[str, LabelFile]:
    """``--labels`` values (``OUTPUT=FILE``, or ``FILE`` for a model with one output), by output (``checked``:
    ``labels_for``'s)."""
    outputs = [t.name for t in signature.outputs]
    found: dict[str, LabelFile] = {}
    for option in options:
        name, sep, file = option.partition("=")
        if not sep or (len(outputs) == 1 and name not in outputs and Path(option).is_file()):  # a path with "="
            if len(outputs) != 1:
                raise InvalidRequest(
                    f"--labels {option}: the model has outputs {', '.join(outputs)}; say which, as OUTPUT=FILE"
                )
            name, file = outputs[0], option
        if name not in outputs:
            raise InvalidRequest(f"--labels {option}: the model has no output {name!r}; it has {', '.join(outputs)}")
        found[name] = LabelFile(Path(file).name, labels_for(signature, name, Path(file), f"--labels {option}", checked))
    return found


def labels_for(signature: Signature, output: str, path: Path, where: str, checked: bool = True) -> list[str]:
    """The labels of the file at ``path`` for ``output`` (``where`` leads a refusal). ``checked`` (``polystack
    register --labels``): ``output`` must score classes, as many as the file names where its shape fixes that.
    Unchecked, a Triton config's ``label_filename``, read as Triton reads it whatever its output (a text output
    may name one, and a classification of it is refused when asked for), and however many labels it holds (an
    index past them gets none): Triton's own QA models do both, and a repository holding one must start."""
    spec = next(t for t in signature.outputs if t.name == output)
    if checked and spec.dtype in (DType.BYTES, DType.BOOL):
        raise InvalidRequest(f"{where}: output {output!r} is {spec.dtype.value}; labels name classes of scores")
    labels = read_label_file(path)
    count = class_count(signature, output) if checked else None
    if count is not None and count != len(labels):
        raise InvalidRequest(
            f"{where}: output {output!r} scores {count:,} classes but the file has {len(labels):,} labels"
        )
    return labels


def file_in(folder: Path, output: str, label: str) -> Path:
    """The label file ``label`` that ``output``'s config names, in the model's ``folder`` or a folder of it, as Triton
    reads it (a path out of the folder is refused)."""
    path = folder / label
    if not path.is_file() or not path.resolve().is_relative_to(folder.resolve()):
        raise InvalidRequest(
            f"its output {quote(output)} names label file {quote(label)}, which is not in {folder}; put it there, or "
            "leave label_filename out"
        )
    return path


def label_settings(found: Mapping[str, LabelFile]) -> dict[str, dict[str, Any]]:
    """What a model record keeps of ``parse_label_options``: the labels, and the files' names."""
    return {
        "labels": {output: f.labels for output, f in found.items()},
        "label_files": {output: f.name for output, f in found.items()},
    }


def labels_of(settings: Mapping[str, Any]) -> Mapping[str, list[str]]:
    """The labels a model record keeps, by output (empty when it has none); read on every classified request."""
    return settings.get("labels") or {}


def label_files_of(settings: Mapping[str, Any]) -> Mapping[str, str]:
    """The label files' names a model record keeps, by output: the model config's ``label_filename``.

    A record registered before the names were kept has labels but no names; its labelled outputs get
    ``<output>_labels.txt``, so a client reading the config still sees which outputs have labels."""
    names = settings.get("label_files") or {}
    return {output: names.get(output) or f"{output}_labels.txt" for output in labels_of(settings)}
