"""scikit-learn estimators and pipelines saved with ``skops.io.dump``.

skops reconstructs objects without unpickling, and only from types it trusts; any other type in the
file is refused unless the user names it (``--trust TYPE``). The trusted list is kept in the
model's settings so later loads trust exactly the same types.
"""

from __future__ import annotations

import zipfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from polystack.errors import InvalidModelFile, UnsafeModel
from polystack.formats import ImportedModel, tabular
from polystack.types import DType, Signature, TensorSpec

NAME = "skops"


def sniff(path: Path) -> bool:
    if not zipfile.is_zipfile(path):
        return False
    try:
        with zipfile.ZipFile(path) as zf:
            return "schema.json" in zf.namelist()
    except (zipfile.BadZipFile, OSError):
        return False


def untrusted_types(path: Path) -> list[str]:
    import skops.io as sio

    try:
        return list(sio.get_untrusted_types(file=str(path)))
    except Exception as e:
        raise InvalidModelFile(f"{path.name} is not a readable skops file ({type(e).__name__}: {e})") from e


def load_estimator(path: Path, trusted: Sequence[str]) -> Any:
    """Load with skops, trusting its defaults plus ``trusted``; refuse any other type unread."""
    import skops.io as sio

    needed = untrusted_types(path)
    missing = sorted(set(needed) - set(trusted))
    if missing:
        flags = " ".join(f"--trust {t}" for t in missing)
        raise UnsafeModel(
            f"{path.name} holds types skops does not trust by default: {', '.join(missing)}; if you trust "
            f"where this file came from, register it with {flags}"
        )
    try:
        return sio.load(str(path), trusted=needed or None)
    except Exception as e:
        raise InvalidModelFile(f"{path.name} could not be loaded by skops ({type(e).__name__}: {e})") from e


def signature_of(estimator: Any) -> Signature:
    from sklearn.base import is_classifier

    n = getattr(estimator, "n_features_in_", None)
    if n is None:
        raise InvalidModelFile(
            f"{type(estimator).__name__} has no n_features_in_; fit it on a 2-D array of numeric features before saving"
        )
    n = int(n)
    if is_classifier(estimator):
        classes = np.asarray(estimator.classes_)
        label = DType.BYTES if classes.dtype.kind in ("U", "S", "O") else DType.INT64
        if hasattr(estimator, "predict_proba"):
            return tabular.classifier(n, len(classes), label)
        return Signature(
            inputs=(TensorSpec(tabular.INPUT, DType.FP32, (-1, n)),), outputs=(TensorSpec("label", label, (-1,)),)
        )
    try:
        y = np.asarray(estimator.predict(np.zeros((1, n), dtype=np.float32)))
    except Exception as e:
        raise InvalidModelFile(f"{type(estimator).__name__} cannot predict on {n} features: {e}") from e
    return tabular.regressor(n, int(y.shape[1]) if y.ndim == 2 else 1)


def load(path: Path, workdir: Path, trusted: Sequence[str] = (), **options: Any) -> ImportedModel:
    estimator = load_estimator(path, trusted)
    needed = untrusted_types(path)
    return ImportedModel(
        format=NAME,
        signature=signature_of(estimator),
        artifact=path,
        settings={"trusted_types": needed} if needed else {},
    )
