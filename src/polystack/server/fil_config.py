"""Triton's FIL backend settings in a model's config (``backend: "fil"``), read as that backend reads them.

Triton's FIL backend (fil_backend, ``src/shared_state.h``, through rapids-triton's ``get_config_param``) reads
these ``parameters``, each a ``string_value``: ``model_type`` (``xgboost``, the default, ``xgboost_json``,
``xgboost_ubj``, ``lightgbm`` or ``treelite_checkpoint``), ``is_classifier`` (required; ``output_class``, its
name before release 25.09, is read in its place, with a warning, when it is ``true`` or ``false``),
``predict_proba``, ``threshold`` (a classifier's; 0.5 where the config gives none, as FIL's documentation says),
``xgboost_allow_unknown_field``, ``cpu_nthread`` (threads; -1: every core), and settings that change how it
runs, not what it answers (``use_experimental_optimizations``, ``layout``, ``chunk_size``,
``transfer_threshold``; ``algo``, ``storage_type``, ``blocks_per_sm`` and ``threads_per_tree``, removed in
25.09, give a warning). A switch is the exact word ``true`` or ``false``, refused in FIL's words otherwise; a
number is read as a C++ stream reads one (its leading number), and where there is none the parameter's default
is taken, as FIL takes it (a threshold's is refused, as FIL's code has none). Other names are ignored, as FIL
ignores them. The config's ``input__0`` and ``output__0`` dims complete the settings a FIL model is registered with
(``formats/fil.py``); a load's config is read again and must give the same answers.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping, Sequence
from typing import Any

from polystack.errors import InvalidRequest, quote
from polystack.formats.fil import INPUT, MODEL_TYPES, OUTPUT, SHAP, FilSettings

log = logging.getLogger("polystack.server")

_SWITCHES = ("predict_proba", "xgboost_allow_unknown_field", "use_experimental_optimizations")
_LAYOUTS = ("depth_first", "breadth_first", "layered", "layered_children_together")
_REMOVED = {"algo": "layout", "threads_per_tree": "chunk_size", "output_class": "is_classifier"}
_GONE = ("storage_type", "blocks_per_sm")
_NUMBER = re.compile(r"\s*[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?")
_WHOLE = re.compile(r"\s*[+-]?\d+")


def parameters_of(doc: Mapping[str, Any]) -> dict[str, str]:
    """A config document's ``parameters`` as name -> string value."""
    given = doc.get("parameters") or {}
    if not isinstance(given, Mapping):
        raise InvalidRequest('parameters must be an object of {name: {"string_value": ...}}')
    out = {}
    for key, value in given.items():
        text = value.get("string_value", value.get("stringValue")) if isinstance(value, Mapping) else None
        if not isinstance(text, str):  # FIL reads each parameter's string_value
            raise InvalidRequest(
                f"parameter {quote(key)} has no string_value, which Triton's FIL backend reads; give one"
            )
        out[str(key)] = text
    return out


def _switch(given: Mapping[str, str], name: str, default: bool | None) -> bool:
    if name not in given:
        if default is None:
            raise InvalidRequest(f"Required parameter {name} not found in config; set it to true or false")
        return default
    text = given[name]
    if text not in ("true", "false"):  # FIL's words, then what to do
        raise InvalidRequest(f"Expected 'true' or 'false' for parameter '{name}', got: '{text}'; write true or false")
    return text == "true"


def _number(given: Mapping[str, str], name: str, default: float | None, whole: bool = False) -> float:
    """A number as FIL reads one (a C++ stream's leading number); where there is none, the default, and where
    the parameter has none, FIL's refusal."""
    found = (_WHOLE if whole else _NUMBER).match(given[name]) if name in given else None
    if found is not None:
        return int(found.group()) if whole else float(found.group())
    if default is None or (name in given and name == "threshold"):  # FIL's code requires a threshold
        raise InvalidRequest(f"Bad input for parameter {name}; give a number, not {quote(given.get(name, ''))}")
    return default


def read(pairs: Sequence[tuple[str, str]] | Mapping[str, str], warn: bool = True) -> tuple[dict[str, Any], int | None]:
    """The answering settings the parameters give (FilSettings' fields but the dims), and the threads
    (``cpu_nthread``; None: every core), refused in FIL's words where FIL refuses them; ``warn``: say which
    parameters Triton 25.09 removed (once, where the model is registered)."""
    given = dict(pairs.items() if isinstance(pairs, Mapping) else pairs)
    for old, new in _REMOVED.items():
        if given.get(old) and warn:
            log.warning(f"the FIL parameter {old} was removed in Triton 25.09; set {new} instead")
    for old in _GONE:
        if given.get(old) and warn:
            log.warning(f"the FIL parameter {old} was removed in Triton 25.09; it changes nothing")
    model_type = given.get("model_type", "xgboost")
    if model_type not in MODEL_TYPES:  # FIL's words, then what to do
        raise InvalidRequest(
            f"{model_type} not recognized as a valid serialization format.; set model_type to one of "
            f"{', '.join(MODEL_TYPES)}"
        )
    alias = given.get("output_class")  # before 25.09's name, which wins where it is a switch
    classifier = alias == "true" if alias in ("true", "false") else _switch(given, "is_classifier", None)
    switches = {name: _switch(given, name, False) for name in _SWITCHES}
    threshold = _number(given, "threshold", 0.5) if classifier else 0.5
    layout = given.get("layout", "depth_first")
    if layout not in _LAYOUTS:
        raise InvalidRequest(f"Unknown nvForest layout name: {layout}; FIL's are {', '.join(_LAYOUTS)}")
    _number(given, "chunk_size", 1, whole=True)
    _number(given, "transfer_threshold", 0, whole=True)
    threads = int(_number(given, "cpu_nthread", -1, whole=True))
    settings = {
        "model_type": model_type,
        "is_classifier": classifier,
        "predict_proba": switches["predict_proba"],
        "threshold": threshold,
        "allow_unknown_field": switches["xgboost_allow_unknown_field"],
    }
    return settings, (min(threads, 1024) if threads > 0 else None)


def _dims(doc: Mapping[str, Any], key: str, name: str) -> tuple[int, ...]:
    items = doc.get(key) or []
    found = [t for t in items if isinstance(t, Mapping) and t.get("name") == name]
    if not found:
        raise InvalidRequest(
            f"its config lists no {key} {name!r}, which Triton's FIL backend needs (it completes no config): list "
            f"{INPUT} (FP32, dims [features]) and {OUTPUT} (FP32, dims as its answers are)"
        )
    dims = found[0].get("dims") or []
    try:
        return tuple(int(d) for d in dims)
    except (TypeError, ValueError):
        raise InvalidRequest(f"{key} {name!r} has dims {quote(dims)}, not whole numbers") from None


def settings(doc: Mapping[str, Any]) -> FilSettings:
    """A FIL model folder's settings, from its config document (JSON)."""
    outputs = [t.get("name") for t in doc.get("output") or [] if isinstance(t, Mapping)]
    shap = _dims(doc, "output", SHAP) if SHAP in outputs else None  # FIL's SHAP values, where the config lists them
    answers, _ = read(parameters_of(doc))
    try:
        batch = int(doc.get("max_batch_size") or 0)  # protobuf's JSON may write it as a string
    except (TypeError, ValueError):
        raise InvalidRequest(f"max_batch_size {quote(doc.get('max_batch_size'))} is not a whole number") from None
    if batch < 1:  # FIL reads rows: its input's dims are [features], the batch before them
        raise InvalidRequest(
            "its config sets no max_batch_size, which Triton's FIL backend needs (its inputs are rows: "
            f"{INPUT} dims [features], the batch before them); set max_batch_size 1 or more"
        )
    features = _dims(doc, "input", INPUT)
    if len(features) != 1 or features[0] < 1:
        raise InvalidRequest(f"{INPUT} has dims {list(features)}; give [features], the model's feature count")
    return FilSettings(features=features[0], output_dims=_dims(doc, "output", OUTPUT), shap_dims=shap, **answers)


def options(pairs: Sequence[tuple[str, str]], registered: str | None) -> dict[str, Any]:
    """The fil backend's options for a load's config ``pairs``, whose answering settings must be those the
    model was registered with (``registered``, FilSettings' JSON): they decide its outputs."""
    answers, threads = read(pairs, warn=False)
    if registered:
        before = FilSettings.from_json(registered)
        changed = sorted(k for k, v in answers.items() if getattr(before, k) != v)
        if changed:
            raise InvalidRequest(
                f"the config's FIL parameters change {', '.join(changed)}, which the model was registered with and "
                "which decide its answers; change the repository folder's config.pbtxt and load the model by name"
            )
    return {"nthread": threads} if threads else {}
