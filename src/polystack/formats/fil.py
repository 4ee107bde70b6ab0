"""Tree models of Triton's FIL backend (``backend: "fil"``): an XGBoost (JSON, UBJSON or legacy binary), LightGBM
(text) or Treelite checkpoint file with the settings its config gives (``server/fil_config.py`` reads them).

FIL answers its own way, not as polystack's tree runtimes do: one FP32 input ``input__0`` [batch, features] and
one FP32 output ``output__0`` whose values the settings decide (regression values; a binary classifier's class
0/1 by ``threshold``, or its positive class's probability, or both classes'; a multi-class model's class index,
or its probabilities), every dimension of 1 left out of the answer (dims [1]: [batch]); and, where the config
lists it, ``treeshap_output``, the rows' SHAP values (margin space, the bias last). The model file and its
settings are kept together as one zip (``fil.json`` and the file), registered from a repository folder; that
zip registers again as it is. Treelite loads every kind of file (the library FIL itself loads them with), and
its GTIL predicts (``backends/fil.py``).

Where Triton's FIL backend trusts the config (a feature count or output width other than the model's gives
rows read out of place, or values past the model's), the registration refuses it, naming the model's.
"""

from __future__ import annotations

import dataclasses
import json
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from polystack.errors import InvalidModelFile
from polystack.formats import ImportedModel, zip_holds
from polystack.types import DType, Signature, TensorSpec

NAME = "fil"
SETTINGS = "fil.json"
INPUT, OUTPUT, SHAP = "input__0", "output__0", "treeshap_output"
# Triton's FIL backend's serialization formats (``model_type``) and the file each reads in a version folder
MODEL_TYPES = {
    "xgboost": "xgboost.model",  # XGBoost's legacy binary format
    "xgboost_json": "xgboost.json",
    "xgboost_ubj": "xgboost.ubj",
    "lightgbm": "model.txt",
    "treelite_checkpoint": "checkpoint.tl",
}
NATIVE_TYPES = ("xgboost_json", "xgboost_ubj", "lightgbm")  # files whose framework predicts here too
_ZIP_TIME = (1980, 1, 1, 0, 0, 0)
_MULTI_CLASS = 2  # Treelite's TaskType kMultiClf


@dataclass(frozen=True)
class FilSettings:
    """What a FIL model's config says of its answers: the file's kind, classifier or not, probabilities or
    classes, the binary threshold, and the dims of ``input__0`` and ``output__0`` as the config lists them."""

    model_type: str
    is_classifier: bool
    features: int
    output_dims: tuple[int, ...]
    predict_proba: bool = False
    threshold: float = 0.5
    allow_unknown_field: bool = False
    shap_dims: tuple[int, ...] | None = None  # ``treeshap_output``'s dims where the config lists it

    @property
    def shap_answer_dims(self) -> tuple[int, ...]:
        return tuple(d for d in self.shap_dims or () if d != 1)

    @property
    def answer_dims(self) -> tuple[int, ...]:
        """``output__0``'s dims in an answer: the config's without its 1s, as FIL squeezes them."""
        return tuple(d for d in self.output_dims if d != 1)

    def to_json(self) -> str:
        doc = {**dataclasses.asdict(self), "output_dims": list(self.output_dims)}
        if self.shap_dims is None:
            doc.pop("shap_dims")  # as settings written before SHAP: the same bytes, the same registration
        else:
            doc["shap_dims"] = list(self.shap_dims)
        return json.dumps(doc, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> FilSettings:
        doc = json.loads(text)
        shap = doc.get("shap_dims")
        return cls(
            **{**doc, "output_dims": tuple(doc["output_dims"]), "shap_dims": None if shap is None else tuple(shap)}
        )


def pack(model_file: Path, settings: FilSettings, out: Path) -> Path:
    """The model file and its settings as one zip (deterministic: fixed names and times)."""
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as z:
        for name, data in (
            (SETTINGS, settings.to_json().encode()),
            (MODEL_TYPES[settings.model_type], model_file.read_bytes()),
        ):
            z.writestr(zipfile.ZipInfo(name, _ZIP_TIME), data)
    return out


def unpack(artifact: Path) -> tuple[FilSettings, bytes]:
    try:
        with zipfile.ZipFile(artifact) as z:
            settings = FilSettings.from_json(z.read(SETTINGS).decode())
            return settings, z.read(MODEL_TYPES[settings.model_type])
    except (zipfile.BadZipFile, KeyError, ValueError, TypeError) as e:
        raise InvalidModelFile(f"{artifact.name} is not a polystack FIL model archive ({e})") from None


def sniff(path: Path) -> bool:
    return zip_holds(path, SETTINGS)


def forest(settings: FilSettings, data: bytes) -> Any:
    """The Treelite model of ``data`` (a file of ``settings.model_type``), post-processed as FIL predicts:
    probabilities of a multi-class model, when asked for, by softmax (or the mean of its trees' class vectors)."""
    import treelite

    with tempfile.TemporaryDirectory(prefix="polystack-fil-") as work:
        path = Path(work) / MODEL_TYPES[settings.model_type]
        path.write_bytes(data)
        try:
            model = _load(treelite, settings, path)
        except treelite.TreeliteError as e:
            raise InvalidModelFile(_unreadable(settings, data, e)) from None
    header = model.get_header_accessor()  # its fields alone (a dump of the model as JSON would hold every tree)
    if settings.predict_proba and int(header.get_field("task_type")[0]) == _MULTI_CLASS:  # as FIL's TreeliteModel
        multi = "softmax" if int(header.get_field("leaf_vector_shape")[1]) == 1 else "identity_multiclass"
        header.set_field("postprocessor", multi)
    return model


def _load(treelite: Any, settings: FilSettings, path: Path) -> Any:
    kind = settings.model_type
    if kind == "xgboost":
        return treelite.frontend.load_xgboost_model_legacy_binary(str(path))
    if kind in ("xgboost_json", "xgboost_ubj"):
        choice = "json" if kind == "xgboost_json" else "ubjson"
        return treelite.frontend.load_xgboost_model(
            str(path), allow_unknown_field=settings.allow_unknown_field, format_choice=choice
        )
    if kind == "lightgbm":
        return treelite.frontend.load_lightgbm_model(str(path))
    return treelite.Model.deserialize(str(path))


def _unreadable(settings: FilSettings, data: bytes, error: Exception) -> str:
    lines = [line for line in str(error).splitlines() if line.strip()]
    why = " ".join(" ".join(lines).split("] ", 1)[-1].split())  # without Treelite's log time
    if len(why) > 500:
        why = why[:500].rsplit(" ", 1)[0] + " ..."
    hint = ""
    head = data[:32].lstrip()
    ubjson = head[:1] == b"{" and head[1:2] in (b"L", b"l", b"i", b"I", b"U", b"$", b"#") and b"learner" in head
    if settings.model_type != "xgboost_json" and head.startswith(b'{"'):
        hint = "; it is XGBoost JSON: set model_type xgboost_json"
    elif settings.model_type != "xgboost_ubj" and ubjson:
        hint = "; it is XGBoost UBJSON (what XGBoost 2 and later write for a .model file): set model_type xgboost_ubj"
    return f"Treelite cannot read it as model_type {settings.model_type} ({why}){hint}"


def classes(model: Any) -> int:
    """The values the forest gives a row: 1 (a regressor's, or a binary classifier's), or its classes."""
    counts = model.get_header_accessor().get_field("num_class")
    return max(int(n) for n in counts) if len(counts) else 1


def check(settings: FilSettings, model: Any) -> None:
    """Refuse settings Triton's FIL backend would answer wrongly with: another feature count than the model's,
    an output width other than what the model gives as asked."""
    features = int(model.num_feature)
    if settings.features != features:
        raise InvalidModelFile(
            f"the config gives {INPUT} dims [{settings.features}], but the model reads {features} features; give "
            f"dims [{features}] (Triton's FIL backend would read each row out of place)"
        )
    n = classes(model)
    width = 1
    for d in settings.output_dims:
        width *= d
    if settings.is_classifier and n == 1:
        wanted: tuple[int, ...] = (1, 2) if settings.predict_proba else (1,)
        kind = "a binary classifier's " + (
            "probabilities: [1] (the positive class) or [2]" if settings.predict_proba else "class: [1]"
        )
    elif settings.is_classifier:
        wanted = (n,) if settings.predict_proba else (1,)
        kind = f"a {n}-class classifier's " + (f"probabilities: [{n}]" if settings.predict_proba else "class: [1]")
    else:
        wanted = (n,)
        kind = f"a regressor's values: [{n}]"
    if width not in wanted or len(settings.answer_dims) > 1:
        raise InvalidModelFile(
            f"the config gives {OUTPUT} dims {list(settings.output_dims)}, but {kind}; give those dims (Triton's FIL "
            "backend would answer values past the model's)"
        )
    if settings.shap_dims is not None:
        if settings.model_type not in NATIVE_TYPES:
            raise InvalidModelFile(
                f"the config lists {SHAP}, whose values polystack computes with XGBoost's or LightGBM's own TreeSHAP, "
                f"which a {settings.model_type} file has none of here; leave it out"
            )
        shap = (features + 1,) if n == 1 else (n, features + 1)
        if tuple(d for d in settings.shap_dims if d != 1) != tuple(d for d in shap if d != 1):
            raise InvalidModelFile(
                f"the config gives {SHAP} dims {list(settings.shap_dims)}, but the model's SHAP values are "
                f"{list(shap)} (a value per feature and the bias{', per class' if n > 1 else ''}); give those dims"
            )


def signature_of(settings: FilSettings) -> Signature:
    outputs = [TensorSpec(OUTPUT, DType.FP32, (-1, *settings.answer_dims))]
    if settings.shap_dims is not None:
        outputs.append(TensorSpec(SHAP, DType.FP32, (-1, *settings.shap_answer_dims)))
    return Signature(inputs=(TensorSpec(INPUT, DType.FP32, (-1, settings.features)),), outputs=tuple(outputs))


def configured_dims(settings_json: str | None) -> dict[str, tuple[int, ...]]:
    """A FIL model's output dims as its config gives them (the 1s its answers leave out kept), by output (none for
    another model's settings, ``None``)."""
    if not settings_json:
        return {}
    settings = FilSettings.from_json(settings_json)
    return {OUTPUT: settings.output_dims} | ({SHAP: settings.shap_dims} if settings.shap_dims is not None else {})


def as_configured(signature: Signature, settings_json: str | None) -> Signature:
    """A FIL model's ``signature`` with its outputs' dims as its config gives them, as Triton checks an ensemble
    against its steps' configs; others' as they are."""
    dims = configured_dims(settings_json)
    if not dims:
        return signature
    outputs = tuple(
        dataclasses.replace(t, shape=(-1, *dims[t.name])) if t.name in dims and t.shape[:1] == (-1,) else t
        for t in signature.outputs
    )
    return dataclasses.replace(signature, outputs=outputs)


def load(path: Path, workdir: Path, **options: Any) -> ImportedModel:
    settings, data = unpack(path)
    check(settings, forest(settings, data))
    return ImportedModel(
        format=NAME, signature=signature_of(settings), artifact=path, settings={"fil": settings.to_json()}
    )
