"""Model names and references (``NAME`` or ``NAME:VERSION``), validated in one place."""

from __future__ import annotations

import re
from dataclasses import dataclass

from polystack.errors import InvalidName

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
MAX_VERSION = (1 << 63) - 1  # versions are SQLite integers, from 1


def validate_name(name: str) -> str:
    """Return ``name`` if it is a safe model name, else raise InvalidName saying what is allowed."""
    if not name or not _NAME.match(name) or ".." in name:
        raise InvalidName(
            f"model name {name!r} is not allowed; use 1-128 letters, digits, '.', '_' or '-', "
            "starting with a letter or digit (no '/', '\\', ':' or '..')"
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
        if not version.isdigit() or int(version) < 1:
            raise InvalidName(f"version {version!r} in {text!r} is not a positive integer; write NAME:VERSION")
        return cls(name, int(version))
