"""Variants: a model built for one backend x device x precision x options, with the gate's verdict.

A variant's id is derived from what defines it (model digest, backend, device, precision, options),
so building the same variant twice updates one row.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from polystack.errors import VariantNotFound
from polystack.store.catalog import Catalog
from polystack.store.models import ModelRecord, digests_in_use, require_row

Status = Literal["verified", "rejected", "failed", "pending"]


def variant_id(
    model_digest: str,
    backend: str,
    device: str,
    precision: str,
    options: Mapping[str, Any],
    recipe: str = "",
    model_id: int | None = None,
) -> str:
    """A variant's id: its source's bytes and how it is built; ``model_id`` for a model whose bytes another
    registered model has too, whose variant of the same build holds the plain id."""
    parts: list[Any] = [model_digest, backend, device, precision, dict(options)]
    if recipe:  # "" (the source artifact itself) keeps the ids variants had before recipes existed
        parts.append(recipe)
    if model_id is not None:
        parts.append(model_id)
    key = json.dumps(parts, sort_keys=True)
    return hashlib.sha256(key.encode()).hexdigest()[:12]


def build_key(backend: str, device: str, precision: str, options: Mapping[str, Any], recipe: str) -> str:
    """How a variant is built, whatever its id: what a model's variant for one recipe is found by."""
    return json.dumps([backend, device, precision, dict(options), recipe], sort_keys=True)


@dataclass(frozen=True)
class VariantRecord:
    id: str
    model_id: int
    backend: str
    device: str
    precision: str  # fp32, bf16, fp16, int8, ...
    options: dict[str, Any]
    format: str  # format of the artifact the backend loads
    digest: str | None  # artifact blob; None when the build failed
    size_bytes: int | None
    status: Status
    metrics: dict[str, Any] = field(default_factory=dict)  # the gate's figures
    error: str | None = None  # why it failed or was rejected
    build_time_s: float | None = None
    created_at: float = 0.0
    recipe: str = ""  # converter steps from the source ("" = the source artifact itself)

    @property
    def build_key(self) -> str:
        return build_key(self.backend, self.device, self.precision, self.options, self.recipe)

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "backend": self.backend,
            "device": self.device,
            "precision": self.precision,
            "options": self.options,
            "format": self.format,
            "digest": f"sha256:{self.digest}" if self.digest else None,
            "size_bytes": self.size_bytes,
            "status": self.status,
            "metrics": self.metrics,
            "error": self.error,
            "build_time_s": self.build_time_s,
            "recipe": self.recipe,
        }

    @classmethod
    def from_row(cls, row: sqlite3.Row) -> VariantRecord:
        return cls(
            id=row["id"],
            model_id=row["model_id"],
            backend=row["backend"],
            device=row["device"],
            precision=row["precision"],
            options=json.loads(row["options"]),
            format=row["format"],
            digest=row["digest"],
            size_bytes=row["size_bytes"],
            status=row["status"],
            metrics=json.loads(row["metrics"]),
            error=row["error"],
            build_time_s=row["build_time_s"],
            created_at=row["created_at"],
            recipe=row["recipe"] if "recipe" in row.keys() else "",  # noqa: SIM118 (sqlite3.Row)
        )


class VariantTable:
    def __init__(self, catalog: Catalog, retire: Callable[[set[str]], None] = lambda digests: None) -> None:
        self.catalog = catalog
        self._retire = retire  # receives the blob digests no row names any more (a build's old bytes)

    def upsert(
        self,
        model: ModelRecord,
        *,
        backend: str,
        device: str,
        precision: str,
        options: Mapping[str, Any],
        format: str,
        digest: str | None,
        size_bytes: int | None,
        status: Status,
        metrics: Mapping[str, Any] | None = None,
        error: str | None = None,
        build_time_s: float | None = None,
        recipe: str = "",
    ) -> VariantRecord:
        opts = json.dumps(dict(options), sort_keys=True)
        with self.catalog.write() as conn:
            require_row(conn, model)
            # this model's row for this build, whatever its id; else a new one, under the plain id unless
            # the same bytes registered as another model hold it (the upsert then kept that model's row,
            # and `variants` of the second found none)
            mine = conn.execute(
                "SELECT id FROM variants WHERE model_id = ? AND backend = ? AND device = ? AND precision = ?"
                " AND options = ? AND recipe = ?",
                (model.id, backend, device, precision, opts, recipe),
            ).fetchone()
            vid = mine[0] if mine is not None else variant_id(model.digest, backend, device, precision, options, recipe)
            owner = conn.execute("SELECT model_id, digest FROM variants WHERE id = ?", (vid,)).fetchone()
            if owner is not None and owner[0] != model.id:
                vid = variant_id(model.digest, backend, device, precision, options, recipe, model_id=model.id)
                owner = conn.execute("SELECT model_id, digest FROM variants WHERE id = ?", (vid,)).fetchone()
            before = owner[1] if owner is not None else None  # the bytes a build of it made before
            conn.execute(
                "INSERT INTO variants (id, model_id, backend, device, precision, options, format, digest,"
                " size_bytes, status, metrics, error, build_time_s, created_at, recipe)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
                " ON CONFLICT (id) DO UPDATE SET format = excluded.format, digest = excluded.digest,"
                " size_bytes = excluded.size_bytes, status = excluded.status, metrics = excluded.metrics,"
                " error = excluded.error, build_time_s = excluded.build_time_s",
                (
                    vid,
                    model.id,
                    backend,
                    device,
                    precision,
                    opts,
                    format,
                    digest,
                    size_bytes,
                    status,
                    json.dumps(dict(metrics or {})),
                    error,
                    build_time_s,
                    time.time(),
                    recipe,
                ),
            )
            if before is not None and before != digest:  # built again (--rebuild): its old bytes go, unless used
                self._retire({before} - digests_in_use(conn))
        return self.get(vid)

    def get(self, vid: str) -> VariantRecord:
        row = self.catalog.query_one("SELECT * FROM variants WHERE id = ?", (vid,))
        if row is None:
            raise VariantNotFound(f"no variant {vid!r}; `polystack variants NAME` lists a model's variants")
        return VariantRecord.from_row(row)

    def for_model(self, model: ModelRecord, status: Status | None = None) -> list[VariantRecord]:
        sql = "SELECT * FROM variants WHERE model_id = ?"
        params: list[Any] = [model.id]
        if status is not None:
            sql += " AND status = ?"
            params.append(status)
        return [VariantRecord.from_row(r) for r in self.catalog.query(sql + " ORDER BY created_at, id", params)]
