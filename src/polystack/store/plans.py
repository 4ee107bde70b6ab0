"""Plans: for one model x profile x machine fingerprint, the chosen variant, settings and evidence."""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from polystack.store.catalog import Catalog
from polystack.store.models import ModelRecord, require_row


@dataclass(frozen=True)
class PlanRecord:
    id: int
    model_id: int
    profile: str  # realtime, server, batch, edge
    fingerprint: str  # the machine it was measured on
    variant_id: str | None
    settings: dict[str, Any]  # threads, batch policy, instances, ...
    measurements: list[dict[str, Any]] = field(default_factory=list)
    explanation: str = ""
    machine: dict[str, Any] = field(default_factory=dict)
    created_at: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "profile": self.profile,
            "fingerprint": self.fingerprint,
            "variant_id": self.variant_id,
            "settings": self.settings,
            "explanation": self.explanation,
            "measurements": self.measurements,
            "machine": self.machine,
            "created_at": self.created_at,
        }

    @classmethod
    def from_row(cls, row: sqlite3.Row) -> PlanRecord:
        return cls(
            id=row["id"],
            model_id=row["model_id"],
            profile=row["profile"],
            fingerprint=row["fingerprint"],
            variant_id=row["variant_id"],
            settings=json.loads(row["settings"]),
            measurements=json.loads(row["measurements"]),
            explanation=row["explanation"],
            machine=json.loads(row["machine"]),
            created_at=row["created_at"],
        )


class PlanTable:
    def __init__(self, catalog: Catalog) -> None:
        self.catalog = catalog

    def put(
        self,
        model: ModelRecord,
        *,
        profile: str,
        fingerprint: str,
        variant_id: str | None,
        settings: Mapping[str, Any],
        measurements: Sequence[Mapping[str, Any]],
        explanation: str,
        machine: Mapping[str, Any],
    ) -> PlanRecord:
        with self.catalog.write() as conn:
            require_row(conn, model)
            conn.execute(
                "INSERT INTO plans (model_id, profile, fingerprint, variant_id, settings, measurements,"
                " explanation, machine, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)"
                " ON CONFLICT (model_id, profile, fingerprint) DO UPDATE SET variant_id = excluded.variant_id,"
                " settings = excluded.settings, measurements = excluded.measurements,"
                " explanation = excluded.explanation, machine = excluded.machine, created_at = excluded.created_at",
                (
                    model.id,
                    profile,
                    fingerprint,
                    variant_id,
                    json.dumps(dict(settings)),
                    json.dumps([dict(m) for m in measurements]),
                    explanation,
                    json.dumps(dict(machine)),
                    time.time(),
                ),
            )
        found = self.get(model, profile, fingerprint)
        assert found is not None
        return found

    def get(self, model: ModelRecord, profile: str, fingerprint: str) -> PlanRecord | None:
        row = self.catalog.query_one(
            "SELECT * FROM plans WHERE model_id = ? AND profile = ? AND fingerprint = ?",
            (model.id, profile, fingerprint),
        )
        return PlanRecord.from_row(row) if row else None

    def for_model(self, model: ModelRecord) -> list[PlanRecord]:
        rows = self.catalog.query("SELECT * FROM plans WHERE model_id = ? ORDER BY profile, created_at", (model.id,))
        return [PlanRecord.from_row(r) for r in rows]
