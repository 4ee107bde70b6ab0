"""The output folder of a batch job: numbered Parquet parts, an errors file and a manifest.

A part covers a contiguous range of input rows. Committing one is: write ``part-NNNNN.parquet.tmp``,
fsync, rename it into place, append its bad rows to ``errors.jsonl`` (fsync), then replace
``_manifest.json`` atomically (temp file, fsync, rename, fsync the folder). The manifest is the
truth: on the next run, part files it does not list are deleted and the errors file is cut back to
the length it records, so a job killed at any instant resumes at the first row no committed part
holds and the output ends with every input row exactly once (in a part or in the errors file).

A finished job is never touched again unless ``--restart`` says so; a restart first commits an
empty manifest, then deletes the old parts, so the folder never mixes two runs' rows.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import IO, Any

import pyarrow as pa

from polystack.errors import Conflict, InvalidRequest

MANIFEST = "_manifest.json"
ERRORS = "_errors.jsonl"  # leading "_": Arrow and Spark skip it when reading the folder as a dataset
LOCK = ".polystack-batch.lock"
SUMMARY = "_summary.json"
ROW_GROUP_ROWS = 65_536  # Parquet row groups: at most this many rows...
ROW_GROUP_BYTES = 32 << 20  # ...or this many bytes of Arrow data, whichever comes first
FORMAT_VERSION = 1


@dataclass
class Part:
    file: str
    first_row: int  # index of the first input row it covers
    rows_in: int  # input rows covered (written + bad)
    rows_out: int  # rows written to the file
    errors: int


@dataclass
class Manifest:
    job: dict[str, Any]
    status: str = "running"  # running | done
    parts: list[Part] = field(default_factory=list)
    errors_bytes: int = 0
    started_at: float = field(default_factory=time.time)
    finished_at: float | None = None
    seconds: float = 0.0  # time spent running, summed over resumed runs
    version: int = FORMAT_VERSION
    # what scores its rows (backend, device, variant): a resume by another would mix two runtimes' outputs
    runtime: dict[str, Any] | None = None

    @property
    def next_row(self) -> int:
        return self.parts[-1].first_row + self.parts[-1].rows_in if self.parts else 0

    @property
    def rows_out(self) -> int:
        return sum(p.rows_out for p in self.parts)

    @property
    def errors(self) -> int:
        return sum(p.errors for p in self.parts)

    def to_json(self) -> bytes:
        return json.dumps(asdict(self), indent=1, default=str).encode()

    @classmethod
    def from_json(cls, raw: bytes) -> Manifest:
        d = json.loads(raw)
        d["parts"] = [Part(**p) for p in d.get("parts", [])]
        return cls(**d)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    _fsync_dir(path.parent)


def read_manifest(folder: Path) -> Manifest | None:
    path = folder / MANIFEST
    if not path.is_file():
        return None
    try:
        return Manifest.from_json(path.read_bytes())
    except (ValueError, TypeError, KeyError) as e:
        raise Conflict(f"{path} is not a polystack batch manifest ({e}); choose another --output") from e


def _runtime(runtime: Mapping[str, Any] | None) -> str:
    """A manifest's runtime as its refusal names it: ``onnxruntime/cpu (variant v-3f2a)``."""
    if runtime is None:
        return "an unknown runtime"
    variant = runtime.get("variant")
    where = f"{runtime.get('backend')}/{runtime.get('device')}"
    return where + (f" (variant {variant})" if variant else " (the model)")


def part_name(index: int) -> str:
    return f"part-{index:05d}.parquet"


class JobOutput:
    """Owns an output folder for one job: opens or resumes it, commits parts, finishes it."""

    def __init__(
        self, folder: Path, job: Mapping[str, Any], *, restart: bool = False, runtime: Mapping[str, Any] | None = None
    ) -> None:
        self.folder = folder
        self.job = dict(job)
        runtime = dict(runtime) if runtime is not None else None
        self._lock: IO[bytes] | None = None
        if folder.exists() and not folder.is_dir():
            raise InvalidRequest(f"--output {folder} is a file; give a folder (it will hold Parquet parts)")
        if folder.is_dir() and not (folder / MANIFEST).exists():
            self._refuse_strangers()  # before the lock file: a folder it refuses is left as it was (helper-270)
        folder.mkdir(parents=True, exist_ok=True)
        self._take_lock()
        existing = read_manifest(folder)
        if existing is None:
            try:
                self._refuse_strangers()
            except Conflict:
                self.close()
                raise
        elif existing.job != self.job and not restart:
            self.close()
            changed = sorted(k for k in set(existing.job) | set(self.job) if existing.job.get(k) != self.job.get(k))
            raise Conflict(
                f"--output {folder} holds a different job (it differs in {', '.join(changed)}); "
                "pass --restart to replace it, or choose another --output"
            )
        elif (
            existing.parts and existing.status != "done" and not restart
            and None not in (existing.runtime, runtime) and existing.runtime != runtime
        ):  # fmt: skip
            self.close()
            raise Conflict(
                f"--output {folder} holds {existing.next_row:,} rows scored by {_runtime(existing.runtime)}; this "
                f"run would score the rest by {_runtime(runtime)}, and the output would mix two runtimes' "
                "answers: run it as it began (its --backend, or the plan it ran), or pass --restart to score "
                "every row again"
            )
        if existing is None or restart:
            self.manifest = Manifest(job=self.job, runtime=runtime)
            _write_atomic(folder / MANIFEST, self.manifest.to_json())  # commit "empty" before deleting anything
            self.resumed = False
        else:
            self.manifest = existing
            self.resumed = bool(existing.parts) and existing.status != "done"
            if not existing.parts and runtime is not None:  # no row scored yet: this run's runtime scores them all
                existing.runtime = runtime
        if self.manifest.status != "done":
            self._clean()

    # -- state ---------------------------------------------------------------------------------
    @property
    def done(self) -> bool:
        return self.manifest.status == "done"

    @property
    def errors_path(self) -> Path:
        return self.folder / ERRORS

    def _refuse_strangers(self) -> None:
        strangers = [p.name for p in self.folder.iterdir() if p.name != LOCK]
        if strangers:
            raise Conflict(
                f"--output {self.folder} already holds files that are not a polystack batch job "
                f"({', '.join(sorted(strangers)[:3])}); give an empty or new folder"
            )

    def _take_lock(self) -> None:
        self._lock = open(self.folder / LOCK, "ab")  # noqa: SIM115  (held for the job's lifetime)
        try:
            fcntl.flock(self._lock.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self._lock.close()
            self._lock = None
            raise Conflict(
                f"another batch job is writing to {self.folder}; wait for it or choose another --output"
            ) from None

    def _clean(self) -> None:
        """Remove what no committed part owns: later parts, temp files, errors past the mark."""
        listed = {p.file for p in self.manifest.parts}
        for p in self.folder.iterdir():
            if p.name.endswith(".tmp") or p.name == SUMMARY or (p.name.startswith("part-") and p.name not in listed):
                p.unlink()
        if self.errors_path.exists() or self.manifest.errors_bytes:
            with open(self.errors_path, "ab") as f:
                f.truncate(self.manifest.errors_bytes)
                os.fsync(f.fileno())

    # -- writing -------------------------------------------------------------------------------
    def new_part(self, schema: pa.Schema) -> PartWriter:
        return PartWriter(self, len(self.manifest.parts), self.manifest.next_row, schema)

    def commit(self, part: Part, error_lines: Sequence[bytes], seconds: float) -> None:
        if error_lines:
            with open(self.errors_path, "ab") as f:
                f.seek(0, os.SEEK_END)
                if f.tell() != self.manifest.errors_bytes:
                    f.truncate(self.manifest.errors_bytes)
                f.writelines(error_lines)
                f.flush()
                os.fsync(f.fileno())
                self.manifest.errors_bytes = f.tell()
        self.manifest.parts.append(part)
        self.manifest.seconds += seconds
        _write_atomic(self.folder / MANIFEST, self.manifest.to_json())

    def finish(self, summary: Mapping[str, Any]) -> None:
        self.manifest.status = "done"
        self.manifest.finished_at = time.time()
        _write_atomic(self.folder / MANIFEST, self.manifest.to_json())
        with contextlib.suppress(OSError):
            (self.folder / SUMMARY).write_text(json.dumps(dict(summary), indent=1, default=str))

    def summary(self) -> dict[str, Any]:
        """What the finished run wrote in ``_summary.json`` (empty where it could not be read)."""
        try:
            found = json.loads((self.folder / SUMMARY).read_text())
        except (OSError, ValueError):
            return {}
        return found if isinstance(found, dict) else {}

    def close(self) -> None:
        if self._lock is not None:
            self._lock.close()
            self._lock = None


class PartWriter:
    """One part being written: Parquet to a temp file, bad rows kept in memory until commit."""

    def __init__(self, out: JobOutput, index: int, first_row: int, schema: pa.Schema) -> None:
        import pyarrow.parquet as pq

        self.out = out
        self.name = part_name(index)
        self.first_row = first_row
        self.rows_in = 0
        self.rows_out = 0
        self.error_lines: list[bytes] = []
        self._pending: list[pa.Table] = []
        self._pending_rows = 0
        self._pending_bytes = 0
        self._tmp = out.folder / (self.name + ".tmp")
        self._writer = pq.ParquetWriter(self._tmp, schema, compression="zstd")

    def write(self, batch: pa.RecordBatch | pa.Table, rows_in: int, error_lines: Sequence[bytes]) -> None:
        if batch.num_rows:  # buffered into row groups of a useful size (one per batch is slow to read back)
            self._pending.append(batch if isinstance(batch, pa.Table) else pa.Table.from_batches([batch]))
            self._pending_rows += batch.num_rows
            self._pending_bytes += batch.nbytes
            if self._pending_rows >= ROW_GROUP_ROWS or self._pending_bytes >= ROW_GROUP_BYTES:
                self._flush()
        self.rows_in += rows_in
        self.rows_out += batch.num_rows
        self.error_lines.extend(error_lines)

    def _flush(self) -> None:
        if self._pending:
            self._writer.write_table(pa.concat_tables(self._pending), row_group_size=self._pending_rows)
        self._pending, self._pending_rows, self._pending_bytes = [], 0, 0

    def commit(self, seconds: float) -> Part:
        self._flush()
        self._writer.close()
        with open(self._tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(self._tmp, self.out.folder / self.name)
        part = Part(self.name, self.first_row, self.rows_in, self.rows_out, len(self.error_lines))
        self.out.commit(part, self.error_lines, seconds)
        return part

    def abandon(self) -> None:
        with contextlib.suppress(Exception):
            self._writer.close()
        with contextlib.suppress(OSError):
            self._tmp.unlink()
