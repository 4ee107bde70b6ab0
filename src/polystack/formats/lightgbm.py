"""LightGBM models saved as text with ``booster.save_model('model.txt')``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from polystack.errors import InvalidModelFile
from polystack.formats import ImportedModel, tabular
from polystack.types import Signature

NAME = "lightgbm"


def sniff(path: Path) -> bool:
    with open(path, "rb") as f:
        head = f.read(64)
    return head.startswith(b"tree\n") and b"version=" in head


def load_booster(text: str) -> Any:
    import lightgbm

    try:
        return lightgbm.Booster(model_str=text)
    except Exception as e:  # lightgbm.basic.LightGBMError
        raise InvalidModelFile(
            f"not a readable LightGBM text model ({str(e).splitlines()[0][:200]}); save it with "
            "booster.save_model('model.txt')"
        ) from e


def header(text: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for line in text.splitlines():
        if line.startswith("Tree="):
            break
        key, sep, value = line.partition("=")
        if sep:
            out[key.strip()] = value.strip()
    return out


def signature_of(booster: Any, text: str) -> Signature:
    head = header(text)
    objective = head.get("objective", "regression").split()[0]
    n = int(booster.num_feature())
    if objective == "binary":
        return tabular.classifier(n, 2)
    if objective in ("multiclass", "multiclassova"):
        return tabular.classifier(n, int(head.get("num_class", booster.num_model_per_iteration())))
    return tabular.regressor(n, 1)


def load(path: Path, workdir: Path, **options: Any) -> ImportedModel:
    try:
        text = path.read_text()
    except UnicodeDecodeError as e:
        raise InvalidModelFile(f"{path.name} is not a LightGBM text model (not text)") from e
    booster = load_booster(text)
    objective = header(text).get("objective", "regression")
    return ImportedModel(
        format=NAME, signature=signature_of(booster, text), artifact=path, settings={"objective": objective}
    )
