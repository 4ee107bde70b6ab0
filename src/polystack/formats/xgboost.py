"""XGBoost models saved with ``save_model`` as JSON or UBJSON (``.json`` / ``.ubj``)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from polystack.errors import InvalidModelFile
from polystack.formats import ImportedModel, tabular
from polystack.types import Signature

NAME = "xgboost"
CLASSIFIER_OBJECTIVES = ("binary:logistic", "multi:softprob", "multi:softmax")


def sniff(path: Path) -> bool:
    with open(path, "rb") as f:
        head = f.read(256)
    if path.suffix.lower() == ".ubj" and head[:1] == b"{":
        return True
    if head[:1] != b"{":
        return False
    # JSON: {"learner": ...; UBJSON: {L<8 bytes>\x07learner or {i\x07learner
    return b"learner" in head[:32] and (b'"learner"' in head[:32] or head[1:2] in (b"L", b"i", b"U", b"l", b"I"))


def load_booster(data: bytes) -> Any:
    import xgboost

    booster = xgboost.Booster()
    try:
        booster.load_model(bytearray(data))
    except Exception as e:  # xgboost.core.XGBoostError and friends
        raise InvalidModelFile(
            f"not a readable XGBoost model ({str(e).splitlines()[0][:200]}); save it with model.save_model('model.json')"
        ) from e
    return booster


def objective(booster: Any) -> tuple[str, int, int]:
    """(objective name, number of classes, number of targets)."""
    learner = json.loads(booster.save_config())["learner"]
    params = learner.get("learner_model_param", {})
    return (
        str(learner["objective"]["name"]),
        int(params.get("num_class", "0") or 0),
        int(params.get("num_target", "1") or 1),
    )


def signature_of(booster: Any) -> Signature:
    name, num_class, num_target = objective(booster)
    n = int(booster.num_features())
    if name == "binary:logistic":
        return tabular.classifier(n, 2)
    if name in ("multi:softprob", "multi:softmax"):
        return tabular.classifier(n, num_class)
    return tabular.regressor(n, num_target)


def load(path: Path, workdir: Path, **options: Any) -> ImportedModel:
    booster = load_booster(path.read_bytes())
    name, _, _ = objective(booster)
    return ImportedModel(format=NAME, signature=signature_of(booster), artifact=path, settings={"objective": name})
