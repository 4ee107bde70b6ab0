"""Typed settings, validated once at the edge (environment variables with the POLYSTACK_ prefix).

One settings model per concern; code below the edge receives these objects, never dicts.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class StoreSettings(BaseSettings):
    """Where the model store lives: ``POLYSTACK_HOME`` (default ``~/.polystack``)."""

    model_config = SettingsConfigDict(env_prefix="POLYSTACK_", extra="ignore", env_ignore_empty=True)  # "": unset

    home: Path = Field(default_factory=lambda: Path.home() / ".polystack")
    sqlite_busy_timeout_s: float = Field(default=30.0, gt=0)

    @property
    def catalog_path(self) -> Path:
        return self.home / "catalog.db"

    @property
    def blobs_path(self) -> Path:
        return self.home / "blobs" / "sha256"
