"""Refuse pickle-family files (pickle, joblib, torch.save checkpoints, cloudpickle) unread.

Unpickling runs arbitrary code, so these are recognised by their bytes alone and refused with
the safe format to use instead. Nothing here ever calls ``pickle.load``.
"""

from __future__ import annotations

import pickletools
import zipfile
from pathlib import Path

from polystack.errors import UnsafeModel

_PICKLE_SUFFIXES = {".pkl", ".pickle", ".joblib", ".pt", ".pth", ".ckpt", ".bin", ".cloudpickle", ".sav"}
_ADVICE = (
    "use a format that stores no code: torch.export.save (.pt2) or ONNX for PyTorch, skops for "
    "scikit-learn, the native JSON/UBJ or text model for XGBoost/LightGBM"
)


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


def _zip_holds_pickle(path: Path) -> bool:
    try:
        with zipfile.ZipFile(path) as zf:
            return any(n.endswith((".pkl", "/data.pkl")) or n == "data.pkl" for n in zf.namelist())
    except (zipfile.BadZipFile, OSError):
        return False


def refuse_pickle(path: Path) -> None:
    """Raise UnsafeModel if ``path`` is a pickle-family file; reads at most a few bytes and a zip index."""
    if path.is_dir():
        return
    with open(path, "rb") as f:
        head = f.read(16)
    is_zip = head[:4] == b"PK\x03\x04"
    if looks_like_pickle(path, head) or (is_zip and _zip_holds_pickle(path)):
        raise UnsafeModel(f"{path.name} is a pickle-family file, refused unread (unpickling runs code); {_ADVICE}")
    if path.suffix.lower() in _PICKLE_SUFFIXES and not is_zip:
        raise UnsafeModel(f"{path.name} has a pickle-family suffix ({path.suffix}) and is refused; {_ADVICE}")
