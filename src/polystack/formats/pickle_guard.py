"""Refuse pickle-family files (pickle, joblib, torch.save checkpoints, cloudpickle) unread.

Unpickling runs arbitrary code, so these are recognised by their bytes alone and refused with
the safe format to use instead. Nothing here ever calls ``pickle.load``.

``torch.export.save`` archives (``.pt2``) are zips too, but store weights as raw bytes described by
JSON. They may still carry pickles that ``torch.export.load`` would run: weights or constants saved
with ``use_pickle``, custom or opaque objects, and the sample inputs (loaded with
``weights_only=True`` but retried with ``weights_only=False`` when that fails). ``check_pt2``
accepts an archive only when every pickle in it is a plain tensor container: its opcodes are
walked with ``pickletools`` (which decodes, never executes) and every global it names must be on
the short list that ``torch.load(weights_only=True)`` itself needs for tensors.
"""

from __future__ import annotations

import io
import json
import pickletools
import zipfile
from pathlib import Path

from polystack.errors import InvalidModelFile, UnsafeModel
from polystack.formats import torchscript_guard

_PICKLE_SUFFIXES = {".pkl", ".pickle", ".joblib", ".pt", ".pth", ".ckpt", ".bin", ".cloudpickle", ".sav"}
_ADVICE = (
    "use a format that stores no code: torch.export.save (.pt2) or ONNX for PyTorch, skops for "
    "scikit-learn, the native JSON/UBJ or text model for XGBoost/LightGBM"
)
# Globals a tensor-only torch.save pickle names (what torch.load(weights_only=True) allows for tensors).
_TENSOR_GLOBALS = frozenset(
    {
        "torch._utils._rebuild_tensor_v2",
        "torch._utils._rebuild_tensor_v3",
        "torch._utils._rebuild_parameter",
        "torch._utils._rebuild_parameter_with_state",
        "collections.OrderedDict",
        "torch.Size",
        "torch.device",
        "builtins.set",
        "builtins.frozenset",
        "builtins.slice",
        "torch.storage.UntypedStorage",
    }
)
_STORAGE_SUFFIX = "Storage"  # torch.FloatStorage, torch.BFloat16Storage, ...
_PT2_MAX_PICKLE_BYTES = 64 << 20


def looks_like_pickle(path: Path, head: bytes) -> bool:
    # Protocol 2+ starts with PROTO (0x80) and the protocol number.
    if len(head) >= 2 and head[0] == 0x80 and 2 <= head[1] <= 5:
        return True
    # Protocol 0/1 streams start with an opcode such as '(' MARK, 'c' GLOBAL, ']' or '}': walk the
    # opcodes with pickletools (which decodes, never executes) and see whether they reach STOP.
    if head[:1] in (b"(", b"c", b"]", b"}", b"l", b"d", b"I", b"S", b"V") and path.stat().st_size < (64 << 20):
        with open(path, "rb") as f:
            try:
                for opcode, _arg, _pos in pickletools.genops(f):
                    if opcode.name == "STOP":
                        return True
            except Exception:
                return False
    return False


def pickle_globals(data: bytes) -> list[str]:
    """Every ``module.name`` a pickle stream refers to (GLOBAL, STACK_GLOBAL), found without running it.

    STACK_GLOBAL takes its module and name from the two strings pushed before it; a stream that
    builds them any other way (memo tricks) yields ``"?"``, which no allow-list accepts.
    """
    found: list[str] = []
    strings: list[str | None] = []
    memo: dict[int, str | None] = {}
    for opcode, arg, _pos in pickletools.genops(io.BytesIO(data)):
        name = opcode.name
        if name == "GLOBAL":
            module, _, attr = str(arg).partition(" ")
            found.append(f"{module}.{attr}")
        elif name == "STACK_GLOBAL":
            if len(strings) >= 2 and strings[-1] is not None and strings[-2] is not None:
                found.append(f"{strings[-2]}.{strings[-1]}")
            else:
                found.append("?")
        elif name in ("SHORT_BINUNICODE", "BINUNICODE", "BINUNICODE8", "UNICODE", "SHORT_BINSTRING", "BINSTRING"):
            strings.append(str(arg))
        elif name in ("MEMOIZE", "PUT", "BINPUT", "LONG_BINPUT"):
            key = len(memo) if name == "MEMOIZE" else int(arg)  # type: ignore[arg-type]
            memo[key] = strings[-1] if strings else None
        elif name in ("GET", "BINGET", "LONG_BINGET"):
            strings.append(memo.get(int(arg)))  # type: ignore[arg-type]
        elif name not in ("FRAME", "PROTO", "MARK"):
            strings.append(None)
    return found


def _unsafe_globals(data: bytes) -> list[str]:
    try:
        names = pickle_globals(data)
    except Exception:
        return ["<an undecodable pickle stream>"]
    return [
        n for n in names if n not in _TENSOR_GLOBALS and not (n.startswith("torch.") and n.endswith(_STORAGE_SUFFIX))
    ]


def _zip_holds_pickle(names: list[str]) -> bool:
    return any(n.endswith(".pkl") or n == "data.pkl" for n in names)


def is_pt2_archive(names: list[str]) -> bool:
    return any(n == "archive_format" or n.endswith("/archive_format") for n in names) and any(
        "/models/" in n or n.startswith("models/") for n in names
    )


def check_pt2(path: Path, zf: zipfile.ZipFile) -> None:
    """Refuse a ``.pt2`` archive that holds anything ``torch.export.load`` would unpickle unsafely."""
    why = f"{path.name} is a torch.export archive carrying pickled objects, refused unread"
    for info in zf.infolist():
        name = info.filename
        if name.endswith(("model_weights_config.json", "model_constants_config.json")):
            try:
                config = json.loads(zf.read(info)).get("config", {})
            except (ValueError, AttributeError) as e:
                raise UnsafeModel(f"{why}: {name} is not readable JSON ({e})") from e
            for fqn, meta in config.items():
                path_name = str(meta.get("path_name", ""))
                if meta.get("use_pickle") or path_name.startswith(("custom_obj", "opaque_obj")):
                    raise UnsafeModel(
                        f"{why}: {fqn!r} is stored as a pickle; save plain tensors (no custom objects) "
                        "with torch.export.save, or export to ONNX"
                    )
        elif name.endswith(".pt") and ("/data/weights/" in name or "/data/constants/" in name):
            raise UnsafeModel(f"{why}: {name} is a legacy pickled weights file; re-save with a current torch")
        elif "/data/sample_inputs/" in name or name.endswith(".pt"):
            _check_inner_torch_save(path, name, zf.read(info) if info.file_size < _PT2_MAX_PICKLE_BYTES else b"")


def _check_inner_torch_save(path: Path, name: str, data: bytes) -> None:
    """A torch.save zip inside a .pt2 (its sample inputs): allowed when its pickle holds tensors only."""
    why = f"{path.name} is a torch.export archive whose {name} "
    if not data.startswith(b"PK\x03\x04"):
        raise UnsafeModel(why + "is not a tensor archive torch can load without unpickling code; refused unread")
    with zipfile.ZipFile(io.BytesIO(data)) as inner:
        for pkl in (n for n in inner.namelist() if n.endswith(".pkl")):
            bad = _unsafe_globals(inner.read(pkl))
            if bad:
                raise UnsafeModel(
                    why + f"names {', '.join(sorted(set(bad))[:5])} (code, not tensors); refused unread. "
                    "Re-export the model with tensor sample inputs"
                )


def refuse_pickle(path: Path) -> None:
    """Raise UnsafeModel if ``path`` is a pickle-family file; reads at most a few bytes and a zip index."""
    if path.is_dir():
        return
    with open(path, "rb") as f:
        head = f.read(16)
    is_zip = head[:4] == b"PK\x03\x04"
    if looks_like_pickle(path, head):
        raise UnsafeModel(f"{path.name} is a pickle-family file, refused unread (unpickling runs code); {_ADVICE}")
    if is_zip:
        try:
            with zipfile.ZipFile(path) as zf:
                names = zf.namelist()
                if is_pt2_archive(names):
                    check_pt2(path, zf)
                    return
                if torchscript_guard.is_archive(names):
                    raise InvalidModelFile(
                        f"{path.name} is a TorchScript module (torch.jit.save), whose file does not say what it takes "
                        "and gives: serve it from a Triton model repository, as <name>/1/model.pt beside a "
                        "<name>/config.pbtxt (platform: \"pytorch_libtorch\") that lists its inputs and outputs, with "
                        "serve --allow-torchscript-models, or save it with torch.export.save (.pt2) or as ONNX to "
                        "register it here"
                    )
                if _zip_holds_pickle(names):
                    raise UnsafeModel(
                        f"{path.name} is a pickle-family file (a zip holding a pickle, as torch.save writes), "
                        f"refused unread (unpickling runs code); {_ADVICE}"
                    )
        except (zipfile.BadZipFile, OSError):
            pass
    if path.suffix.lower() in _PICKLE_SUFFIXES and not is_zip:
        raise UnsafeModel(f"{path.name} has a pickle-family suffix ({path.suffix}) and is refused; {_ADVICE}")
