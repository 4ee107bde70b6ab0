"""Registered models: the ``ModelRecord`` and the catalog queries that read and write it."""

from __future__ import annotations

import builtins
import json
import sqlite3
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from polystack.errors import Conflict, InvalidRequest, ModelNotFound, VersionNotFound
from polystack.store.catalog import Catalog
from polystack.store.refs import MAX_VERSION, ModelRef, validate_name
from polystack.types import Signature


@dataclass(frozen=True)
class ModelRecord:
    id: int
    name: str
    version: int
    format: str
    signature: Signature
    digest: str
    size_bytes: int
    created_at: float
    tags: dict[str, str] = field(default_factory=dict)
    source_filename: str = ""
    samples_digest: str | None = None
    settings: dict[str, Any] = field(default_factory=dict)

    @property
    def ref(self) -> ModelRef:
        return ModelRef(self.name, self.version)

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "version": self.version,
            "format": self.format,
            "digest": f"sha256:{self.digest}",
            "size_bytes": self.size_bytes,
            "created_at": self.created_at,
            "tags": self.tags,
            "source_filename": self.source_filename,
            "signature": self.signature.to_dict(),
            "has_samples": self.samples_digest is not None,
            "settings": self.settings,
        }

    @classmethod
    def from_row(cls, row: sqlite3.Row) -> ModelRecord:
        return cls(
            id=row["id"],
            name=row["name"],
            version=row["version"],
            format=row["format"],
            signature=Signature.from_dict(json.loads(row["signature"])),
            digest=row["digest"],
            size_bytes=row["size_bytes"],
            created_at=row["created_at"],
            tags=json.loads(row["tags"]),
            source_filename=row["source_filename"],
            samples_digest=row["samples_digest"],
            settings=json.loads(row["settings"]),
        )


SYNTHESIZED = "samples_synthesized"  # a record's setting: its samples were made up, not given (samples.py)


class Added(NamedTuple):
    record: ModelRecord
    created: bool
    replaced: ModelRecord | None = None  # the row whose version it took, set aside (``ModelTable.add``)
    samples_replaced: bool = False  # the bytes were there: samples given now took the place of theirs


class ModelTable:
    def __init__(self, catalog: Catalog) -> None:
        self.catalog = catalog

    def add(
        self,
        *,
        name: str,
        format: str,
        signature: Signature,
        digest: str,
        size_bytes: int,
        tags: Mapping[str, str],
        source_filename: str,
        samples_digest: str | None = None,
        settings: Mapping[str, Any] | None = None,
        blobs_present: Callable[[], bool] = lambda: True,
        version: int | None = None,
        replaceable: Callable[[ModelRecord], bool] | None = None,
        settings_if_new: Mapping[str, Any] | None = None,
        retire: Callable[[set[str]], None] = lambda digests: None,
        existing: bool = False,
    ) -> Added | None:
        """Insert a new version, or return the existing one holding the same bytes (idempotent).

        ``version``, when given, is the version the bytes must have (a Triton model repository's version
        directory): the row there if it holds them, a new row there if the name has no such version (even if
        another version holds the same bytes), and ``Conflict`` if it holds other bytes, unless
        ``replaceable`` says that row may be replaced: then it is set aside, with its variants and plans
        (``restore`` puts it back, ``drop`` deletes it), and the new row takes its version.
        ``settings_if_new`` are settings a new row gets and an existing one does not. ``existing``: only the row
        holding these bytes under ``version`` takes them (what was added to a record read before: samples made for
        it), ``Conflict`` where a removal took it meanwhile, which a new row would undo.

        Returns the record and whether it was created (and the row it set aside), or None when
        ``blobs_present()`` says, inside the transaction, that a concurrent removal took the blobs away
        (the caller writes them again and retries). Samples given again take the place of the row's:
        ``retire`` receives the old samples' digest where no row names it any more (``Store._retire``).
        """
        validate_name(name)
        if version is not None and not 1 <= version <= MAX_VERSION:
            raise InvalidRequest(f"version {version} of {name!r} is out of range; versions run from 1 to {MAX_VERSION}")
        with self.catalog.write() as conn:
            if not blobs_present():
                return None
            replaced = None
            if version is None:
                row = conn.execute(
                    "SELECT * FROM models WHERE name = ? AND digest = ? AND version > 0 ORDER BY version LIMIT 1",
                    (name, digest),
                ).fetchone()
            else:
                row = conn.execute("SELECT * FROM models WHERE name = ? AND version = ?", (name, version)).fetchone()
            if existing and (row is None or row["digest"] != digest):
                raise Conflict(removed_meanwhile(name, version))
            # (other bytes under the name: only where a version was given, the row being that version's)
            if row is not None and row["digest"] != digest and replaceable is not None:
                old = ModelRecord.from_row(row)
                if replaceable(old):  # set aside under a version no one asks for (-id, unique), saying whence
                    aside = json.dumps({**old.settings, SET_ASIDE_FROM: version})
                    conn.execute("UPDATE models SET version = ?, settings = ? WHERE id = ?", (-old.id, aside, old.id))
                    replaced, row = old, None
            if row is not None and row["digest"] != digest:
                raise Conflict(
                    f"{name}:{version} is already in the store with other bytes ({row['source_filename'] or 'a model'},"
                    f" sha256 {row['digest'][:12]}...); remove it (`polystack remove {name}:{version}`) to put these"
                    " in its place, or give the model another name or version"
                )
            if row is not None:
                merged = {**json.loads(row["tags"]), **tags}
                updates: dict[str, Any] = {"tags": json.dumps(merged, sort_keys=True)}
                old_settings = json.loads(row["settings"])
                new_settings = _merge_settings(old_settings, settings or {})
                # samples given (not synthesized) take the place of those the row has: the user's, given again
                given = bool(samples_digest) and not (settings or {}).get(SYNTHESIZED)
                swapped = given and row["samples_digest"] not in (None, samples_digest)
                taken = bool(samples_digest) and (row["samples_digest"] is None or swapped)
                if taken:
                    updates["samples_digest"] = samples_digest
                # the mark follows the samples the row keeps: those given now, or its own
                marked = bool((settings or {}).get(SYNTHESIZED)) if taken or given else bool(old_settings.get(SYNTHESIZED))
                new_settings.pop(SYNTHESIZED, None)
                if marked:
                    new_settings[SYNTHESIZED] = True
                if new_settings != old_settings:
                    updates["settings"] = json.dumps(new_settings)
                assignments = ", ".join(f"{k} = ?" for k in updates)
                conn.execute(f"UPDATE models SET {assignments} WHERE id = ?", (*updates.values(), row["id"]))
                if swapped:
                    retire({row["samples_digest"]} - digests_in_use(conn))
                row = conn.execute("SELECT * FROM models WHERE id = ?", (row["id"],)).fetchone()
                return Added(ModelRecord.from_row(row), False, samples_replaced=swapped)
            if version is None:
                version = conn.execute(
                    "SELECT COALESCE(MAX(version), 0) + 1 FROM models WHERE name = ? AND version > 0", (name,)
                ).fetchone()[0]
            cur = conn.execute(
                "INSERT INTO models (name, version, format, signature, digest, size_bytes, created_at, tags,"
                " source_filename, samples_digest, settings) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    name,
                    version,
                    format,
                    json.dumps(signature.to_dict()),
                    digest,
                    size_bytes,
                    time.time(),
                    json.dumps(dict(tags), sort_keys=True),
                    source_filename,
                    samples_digest,
                    json.dumps({**(settings or {}), **(settings_if_new or {})}),
                ),
            )
            row = conn.execute("SELECT * FROM models WHERE id = ?", (cur.lastrowid,)).fetchone()
            return Added(ModelRecord.from_row(row), True, replaced)

    def restore(self, record: ModelRecord) -> bool:
        """Put back a row ``add`` set aside (with its variants and plans), once the row that took its version
        is gone; False when it is not set aside any more or its version is taken again."""
        with self.catalog.write() as conn:
            taken = conn.execute("SELECT 1 FROM models WHERE name = ? AND version = ?", (record.name, record.version))
            if taken.fetchone() is not None:
                return False
            cur = conn.execute(
                "UPDATE models SET version = ?, settings = ? WHERE id = ? AND version = ?",
                (record.version, json.dumps(record.settings), record.id, -record.id),
            )
            return cur.rowcount == 1

    def drop(self, record: ModelRecord, release: Callable[[set[str]], None]) -> None:
        """Delete a row ``add`` set aside (its variants and plans with it), and any other row of its version
        a load that never finished set aside (a killed server); ``release`` receives the blob digests no row
        names any more, once that is committed (as ``delete``'s)."""
        with self.catalog.write() as conn:
            before = digests_in_use(conn)
            conn.execute("DELETE FROM models WHERE id = ? AND version = ?", (record.id, -record.id))
            _delete_set_aside(conn, record.name, record.version)
            unnamed = before - digests_in_use(conn)
        release(unnamed)

    def delete_row(self, record: ModelRecord, release: Callable[[set[str]], None]) -> bool:
        """Delete the row ``record`` is, if it is still there as it was (not a row another writer put at its
        version since); ``release`` as for ``drop``. Whether it was there."""
        with self.catalog.write() as conn:
            before = digests_in_use(conn)
            cur = conn.execute(
                "DELETE FROM models WHERE id = ? AND version = ? AND digest = ?", (record.id, record.version, record.digest)
            )
            unnamed = before - digests_in_use(conn)
        release(unnamed)
        return cur.rowcount == 1

    def list(self, name: str | None = None) -> list[ModelRecord]:
        if name is None:
            rows = self.catalog.query("SELECT * FROM models WHERE version > 0 ORDER BY name, version")
        else:
            rows = self.catalog.query("SELECT * FROM models WHERE name = ? AND version > 0 ORDER BY version", (name,))
        return [ModelRecord.from_row(r) for r in rows]

    def get(self, ref: ModelRef) -> ModelRecord:
        if ref.version is None:
            row = self.catalog.query_one(
                "SELECT * FROM models WHERE name = ? AND version > 0 ORDER BY version DESC LIMIT 1", (ref.name,)
            )
        else:
            row = self.catalog.query_one("SELECT * FROM models WHERE name = ? AND version = ?", (ref.name, ref.version))
        if row is not None:
            return ModelRecord.from_row(row)
        versions = [r.version for r in self.list(ref.name)]
        if not versions:
            raise ModelNotFound(f"no model named {ref.name!r}; `polystack models` lists the registered ones")
        raise VersionNotFound(f"model {ref.name!r} has no version {ref.version}; it has versions {versions}")

    def get_by_id(self, model_id: int) -> ModelRecord:
        row = self.catalog.query_one("SELECT * FROM models WHERE id = ?", (model_id,))
        if row is None:
            raise ModelNotFound(f"no model with id {model_id}")
        return ModelRecord.from_row(row)

    def update_settings(self, record: ModelRecord, settings: Mapping[str, Any]) -> ModelRecord:
        with self.catalog.write() as conn:
            conn.execute(
                "UPDATE models SET settings = ? WHERE id = ?",
                (json.dumps({**record.settings, **settings}), record.id),
            )
        return self.get_by_id(record.id)

    def delete(self, ref: ModelRef, release: Callable[[set[str]], None]) -> builtins.list[ModelRecord]:
        """Delete one version, or every version when ref has none; return what was deleted.

        ``release`` receives the blob digests no row names any more once the deletion is committed (``Store._release``
        deletes those still unnamed then), so a process killed meanwhile leaves bytes ``gc`` collects, never a row
        naming bytes that are gone.
        """
        # none: only rows set aside from it (a killed server's) may be left, removed below
        doomed = [r for r in self.list(ref.name) if ref.version is None or r.version == ref.version]
        with self.catalog.write() as conn:
            before = digests_in_use(conn)
            conn.executemany("DELETE FROM models WHERE id = ?", [(r.id,) for r in doomed])
            # rows of that version (or name) a load that never finished set aside (a killed server)
            left = _delete_set_aside(conn, ref.name, ref.version)
            unnamed = before - digests_in_use(conn)
        release(unnamed)
        if not doomed and not left:
            self.get(ref)  # raises ModelNotFound or VersionNotFound, saying what there is
        return doomed


# a model record's setting while it is set aside (``ModelTable.add``): the version it was
SET_ASIDE_FROM = "set_aside_from"


def _delete_set_aside(conn: sqlite3.Connection, name: str, version: int | None) -> int:
    """Delete the rows of ``name`` set aside from ``version`` (None: any); how many."""
    rows = conn.execute("SELECT id, settings FROM models WHERE name = ? AND version < 0", (name,)).fetchall()
    ids = [r["id"] for r in rows if version is None or json.loads(r["settings"]).get(SET_ASIDE_FROM) == version]
    conn.executemany("DELETE FROM models WHERE id = ?", [(i,) for i in ids])
    return len(ids)


def require_row(conn: sqlite3.Connection, model: ModelRecord) -> None:
    """``Conflict`` where ``model``'s row is gone (in the caller's write transaction): what a command made for a
    model it read (a variant, a plan) is not stored for a model a `remove` took meanwhile (the catalog's foreign key
    would refuse it in sqlite's words)."""
    if conn.execute("SELECT 1 FROM models WHERE id = ?", (model.id,)).fetchone() is None:
        raise Conflict(removed_meanwhile(model.name, model.version))


def removed_meanwhile(name: str, version: int | None) -> str:
    """Why what was made for a model read before is not stored: a removal (or a replacement) took it meanwhile."""
    model = name if version is None else f"{name}:{version}"
    return f"model {model} was removed while this ran (polystack remove); register it again and run this again"


def digests_in_use(conn: sqlite3.Connection) -> set[str]:
    rows = conn.execute(
        "SELECT digest FROM models UNION SELECT samples_digest FROM models WHERE samples_digest IS NOT NULL"
        " UNION SELECT digest FROM variants WHERE digest IS NOT NULL"
    ).fetchall()
    return {r[0] for r in rows}


def _merge_settings(old: Mapping[str, Any], new: Mapping[str, Any]) -> dict[str, Any]:
    """Settings given again update the old ones; a mapping (labels by output, tolerances by name) is
    updated key by key, so labels given for one output keep those of the others."""
    merged = dict(old)
    for key, value in new.items():
        before = merged.get(key)
        merged[key] = {**before, **value} if isinstance(before, dict) and isinstance(value, dict) else value
    return merged
