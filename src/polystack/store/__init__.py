"""The model store: a SQLite catalog (facts) and content-addressed blobs (bytes).

The store keeps bytes and facts and runs no model. Blobs are written before the catalog row that
names them, so a crash leaves at worst an unreferenced blob (removed by ``gc``), never a row
without its blob.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from polystack.config import StoreSettings
from polystack.errors import StoreError
from polystack.store.blobs import BlobStore
from polystack.store.catalog import Catalog
from polystack.store.models import Added, ModelRecord, ModelTable, digests_in_use
from polystack.store.plans import PlanRecord, PlanTable
from polystack.store.refs import ModelRef, validate_name
from polystack.store.variants import VariantRecord, VariantTable
from polystack.types import Signature

__all__ = ["Added", "ModelRecord", "ModelRef", "PlanRecord", "Store", "VariantRecord", "validate_name"]


class Store:
    def __init__(self, settings: StoreSettings | None = None) -> None:
        self.settings = settings or StoreSettings()
        self.home = self.settings.home
        self.home.mkdir(parents=True, exist_ok=True)
        self.blobs = BlobStore(self.settings.blobs_path)
        self.catalog = Catalog(self.settings.catalog_path, self.settings.sqlite_busy_timeout_s)
        self.models = ModelTable(self.catalog)
        self.variants = VariantTable(self.catalog, self._retire)
        self.plans = PlanTable(self.catalog)

    @classmethod
    def at(cls, home: Path | str) -> Store:
        return cls(StoreSettings(home=Path(home)))

    def register(
        self,
        artifact: Path,
        *,
        name: str,
        format: str,
        signature: Signature,
        tags: Mapping[str, str] | None = None,
        source_filename: str = "",
        samples: Path | None = None,
        settings: Mapping[str, Any] | None = None,
        version: int | None = None,
        existing: bool = False,
    ) -> tuple[ModelRecord, bool]:
        """Store an imported artifact (and its samples) under ``name``; (record, created). ``version``: the
        version it must have (``ModelTable.add``), else the bytes' existing version or the next one; ``existing``:
        only a row there already takes them (``ModelTable.add``)."""
        added = self.add(
            artifact, name=name, format=format, signature=signature, tags=tags, source_filename=source_filename,
            samples=samples, settings=settings, version=version, existing=existing,
        )  # fmt: skip
        return added.record, added.created

    def add(
        self,
        artifact: Path,
        *,
        name: str,
        format: str,
        signature: Signature,
        tags: Mapping[str, str] | None = None,
        source_filename: str = "",
        samples: Path | None = None,
        settings: Mapping[str, Any] | None = None,
        version: int | None = None,
        replaceable: Callable[[ModelRecord], bool] | None = None,
        settings_if_new: Mapping[str, Any] | None = None,
        existing: bool = False,
    ) -> Added:
        """``register``, which may take ``version`` from a row holding other bytes where ``replaceable`` says
        it may go (``ModelTable.add``): that row is set aside, for ``restore`` if what replaced it is taken
        back, else for ``drop``."""
        validate_name(name)
        for _ in range(5):
            digest, size = self.blobs.put_file(artifact)
            samples_digest = self.blobs.put_file(samples)[0] if samples is not None else None
            wanted = [d for d in (digest, samples_digest) if d]
            result = self.models.add(
                name=name,
                format=format,
                signature=signature,
                digest=digest,
                size_bytes=size,
                tags=tags or {},
                source_filename=source_filename,
                samples_digest=samples_digest,
                settings=settings,
                blobs_present=lambda wanted=wanted: all(self.blobs.has(d) for d in wanted),  # type: ignore[misc]
                version=version,
                replaceable=replaceable,
                settings_if_new=settings_if_new,
                retire=self._retire,
                existing=existing,
            )
            if result is not None:
                return result
        raise StoreError(f"could not register {name!r}: its blobs kept being removed by a concurrent `remove`")

    def get(self, ref: ModelRef | str) -> ModelRecord:
        return self.models.get(ModelRef.parse(ref) if isinstance(ref, str) else ref)

    def artifact_path(self, record: ModelRecord) -> Path:
        return self.blobs.path(record.digest)

    def remove(self, ref: ModelRef | str) -> list[ModelRecord]:
        return self.models.delete(ModelRef.parse(ref) if isinstance(ref, str) else ref, self._release)

    def take_back(self, record: ModelRecord) -> bool:
        """Delete the row a registration created, if it is still there as it was (``ModelTable.delete_row``),
        with the blobs nothing else uses."""
        return self.models.delete_row(record, self._release)

    def restore(self, replaced: ModelRecord) -> bool:
        """Put back the row a registration set aside (``add``), its registration taken back first."""
        return self.models.restore(replaced)

    def drop(self, replaced: ModelRecord) -> None:
        """Delete the row a registration set aside (``add``), with the blobs nothing else uses."""
        self.models.drop(replaced, self._release)

    def _release(self, digests: set[str]) -> None:
        """Delete the bytes a committed removal unnamed that no row names now either: a registration of the same
        bytes may have named them since, and one that wrote them but has no row yet finds them gone under the write
        lock and writes them again (``register``'s ``blobs_present``, a variant build's re-put). Deleted only after
        the removal's COMMIT, so a process killed in between leaves bytes ``gc`` collects, not a row naming none."""
        if not digests:
            return
        with self.catalog.write() as conn:
            for d in digests - digests_in_use(conn):
                self.blobs.remove(d)

    def _retire(self, digests: set[str]) -> None:
        """Bytes a row stopped naming as something took their place (samples given again, a variant built again):
        kept an hour from now, for the commands that read them before (a tune loads its variants again and again),
        then deleted by ``gc`` (``remove`` and ``variants`` run it)."""
        for d in digests:
            self.blobs.touch(d)

    def gc(self, older_than_s: float = 3600.0) -> int:
        """Remove blobs no row names (retired by a replacement, ``_retire``, or left by killed writers) and stale
        temp files; return how many.

        Only files older than ``older_than_s`` go, so a registration between writing its blob and
        inserting its row is never robbed.
        """
        removed = 0
        with self.catalog.write() as conn:
            in_use = digests_in_use(conn)
            for digest in list(self.blobs.digests(older_than_s)):
                if digest not in in_use:
                    self.blobs.remove(digest)
                    removed += 1
        return removed + self.blobs.sweep_temp(older_than_s)

    def close(self) -> None:
        self.catalog.close()
