"""Model names and references (``NAME`` or ``NAME:VERSION``), validated in one place."""

from __future__ import annotations

import re
from dataclasses import dataclass

from polystack.errors import InvalidName, quote

# A model name is a Triton model folder's name (Triton's own QA repositories have ``nop_TYPE_FP32_-1,-1``), but for
# what would make it a path (``/``, ``\``, ``..``, a leading ``.``), a reference's version (``:``), a flag's value
# (``NAME=...``), a quoted label (``"``), or a name a shell or a log splits (white space, control characters)
_NAME = re.compile(r'[^\s/\\:="\x00-\x1f\x7f.][^\s/\\:="\x00-\x1f\x7f]{0,127}')
MAX_VERSION = (1 << 63) - 1  # versions are SQLite integers, from 1


def validate_name(name: str) -> str:
    """Return ``name`` if it is a safe model name, else raise InvalidName saying what is allowed."""
    if not _NAME.fullmatch(name) or ".." in name:
        raise InvalidName(
            f"model name {quote(name, 200)} is not allowed; use 1-128 characters, none of them '/', '\\', ':', '=', '\"', "
            "white space or control characters, not starting with '.' and without '..' (rename the model or its "
            "folder)"
        )
    return name


@dataclass(frozen=True)
class ModelRef:
    name: str
    version: int | None = None  # None: the latest version

    def __str__(self) -> str:
        return self.name if self.version is None else f"{self.name}:{self.version}"

    @classmethod
    def parse(cls, text: str) -> ModelRef:
        name, sep, version = text.partition(":")
        validate_name(name)
        if not sep:
            return cls(name)
        digits = version.isascii() and version.isdigit() and len(version) <= len(str(MAX_VERSION))
        if not digits or not 1 <= int(version) <= MAX_VERSION:
            raise InvalidName(
                f"version {quote(version, 40)} in {quote(text, 180)} is not a positive integer up to {MAX_VERSION}; "
                "write NAME:VERSION"
            )
        return cls(name, int(version))
