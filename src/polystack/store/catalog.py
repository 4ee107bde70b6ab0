"""The catalog: one SQLite file in WAL mode, its schema versioned by forward migrations.

``PRAGMA user_version`` holds the schema version; ``MIGRATIONS[i]`` takes version i to i+1 and runs
inside the same ``BEGIN IMMEDIATE`` transaction that re-reads the version, so two processes opening
a new store at once migrate it exactly once. Writers use ``BEGIN IMMEDIATE`` and a busy timeout,
so concurrent registrations from several processes serialise instead of failing.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from polystack.errors import StoreError

MIGRATIONS: tuple[str, ...] = (
    # 0 -> 1: models
    """
    CREATE TABLE models (
        id INTEGER PRIMARY KEY,
        name TEXT NOT NULL,
        version INTEGER NOT NULL,
        format TEXT NOT NULL,
        signature TEXT NOT NULL,
        digest TEXT NOT NULL,
        size_bytes INTEGER NOT NULL,
        created_at REAL NOT NULL,
        tags TEXT NOT NULL DEFAULT '{}',
        source_filename TEXT NOT NULL DEFAULT '',
        UNIQUE (name, version)
    );
    CREATE INDEX models_by_digest ON models (digest);
    """,
    # 1 -> 2: variants built from a model, with the gate's verdict
    """
    CREATE TABLE variants (
        id TEXT PRIMARY KEY,
        model_id INTEGER NOT NULL REFERENCES models (id) ON DELETE CASCADE,
        backend TEXT NOT NULL,
        device TEXT NOT NULL,
        precision TEXT NOT NULL,
        options TEXT NOT NULL DEFAULT '{}',
        format TEXT NOT NULL,
        digest TEXT,
        size_bytes INTEGER,
        status TEXT NOT NULL,
        metrics TEXT NOT NULL DEFAULT '{}',
        error TEXT,
        build_time_s REAL,
        created_at REAL NOT NULL
    );
    CREATE INDEX variants_by_model ON variants (model_id);
    """,
    # 2 -> 3: plans, one per model x profile x machine fingerprint
    """
    CREATE TABLE plans (
        id INTEGER PRIMARY KEY,
        model_id INTEGER NOT NULL REFERENCES models (id) ON DELETE CASCADE,
        profile TEXT NOT NULL,
        fingerprint TEXT NOT NULL,
        variant_id TEXT REFERENCES variants (id) ON DELETE SET NULL,
        settings TEXT NOT NULL DEFAULT '{}',
        measurements TEXT NOT NULL DEFAULT '[]',
        explanation TEXT NOT NULL DEFAULT '',
        machine TEXT NOT NULL DEFAULT '{}',
        created_at REAL NOT NULL,
        UNIQUE (model_id, profile, fingerprint)
    );
    """,
    # 3 -> 4: sample inputs carried by a model (an .npz blob), and per-model settings
    """
    ALTER TABLE models ADD COLUMN samples_digest TEXT;
    ALTER TABLE models ADD COLUMN settings TEXT NOT NULL DEFAULT '{}';
    """,
    # 4 -> 5: how a variant's artifact was built from its source ("" = the source itself;
    # else converter steps joined by "+", e.g. "onnx+int8-static"); part of the variant's identity
    """
    ALTER TABLE variants ADD COLUMN recipe TEXT NOT NULL DEFAULT '';
    """,
)
SCHEMA_VERSION = len(MIGRATIONS)


def _switch_to_wal(conn: sqlite3.Connection, timeout_s: float) -> None:
    """Put the file in WAL mode, waiting out other processes doing the same.

    SQLite answers "database is locked" at once, without calling the busy handler, when another
    connection holds the lock while it creates the WAL (two processes opening a new store together),
    so the busy timeout alone does not cover this step: retry it until the same timeout.
    """
    deadline = time.monotonic() + timeout_s
    delay = 0.005
    while True:
        try:
            conn.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as e:
            if ("locked" not in str(e) and "busy" not in str(e)) or time.monotonic() + delay > deadline:
                raise
            time.sleep(delay)
            delay = min(delay * 2, 0.2)


class Catalog:
    def __init__(self, path: Path, busy_timeout_s: float = 30.0) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self._conn = sqlite3.connect(path, timeout=busy_timeout_s, isolation_level=None, check_same_thread=False)
            self._conn.row_factory = sqlite3.Row
            _switch_to_wal(self._conn, busy_timeout_s)
            self._conn.execute("PRAGMA synchronous=FULL")
            self._conn.execute("PRAGMA foreign_keys=ON")
        except sqlite3.DatabaseError as e:
            raise StoreError(
                f"cannot open the catalog {path}: {e}; check POLYSTACK_HOME points at a polystack store"
            ) from e
        self._lock = threading.RLock()
        self._migrate()

    def _migrate(self) -> None:
        if self.schema_version() == SCHEMA_VERSION:
            return
        with self.write() as conn:
            current = conn.execute("PRAGMA user_version").fetchone()[0]
            if current > SCHEMA_VERSION:
                raise StoreError(
                    f"the catalog {self.path} has schema {current}, newer than this polystack "
                    f"understands ({SCHEMA_VERSION}); upgrade polystack"
                )
            for script in MIGRATIONS[current:]:
                for statement in script.split(";"):
                    if statement.strip():
                        conn.execute(statement)
            conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")

    def schema_version(self) -> int:
        return int(self.query_one("PRAGMA user_version")[0])  # type: ignore[index]

    @contextmanager
    def write(self) -> Iterator[sqlite3.Connection]:
        """One write transaction, taken with BEGIN IMMEDIATE so writers queue on the busy timeout."""
        with self._lock:
            try:
                self._conn.execute("BEGIN IMMEDIATE")
            except sqlite3.OperationalError as e:
                raise StoreError(f"the catalog {self.path} is locked or unwritable: {e}") from e
            try:
                yield self._conn
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise
            else:
                self._conn.execute("COMMIT")

    def query(self, sql: str, params: Sequence[Any] = ()) -> list[sqlite3.Row]:
        with self._lock:
            return list(self._conn.execute(sql, params).fetchall())

    def query_one(self, sql: str, params: Sequence[Any] = ()) -> sqlite3.Row | None:
        with self._lock:
            row: sqlite3.Row | None = self._conn.execute(sql, params).fetchone()
            return row

    def integrity_check(self) -> str:
        row = self.query_one("PRAGMA integrity_check")
        return str(row[0]) if row else "no answer"

    def close(self) -> None:
        with self._lock:
            self._conn.close()
