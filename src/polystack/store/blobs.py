"""Content-addressed blobs: ``blobs/sha256/<hex>``, written atomically, stored once.

A blob is written to a temporary file in the same folder, fsynced, renamed onto its digest and the
folder fsynced, so a reader sees either the whole blob or none; a process killed mid-write leaves
only a ``.tmp-*`` file, which no reader ever treats as a blob and ``sweep_temp`` removes.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

from polystack.errors import StoreError

_CHUNK = 1 << 20
_HEX = re.compile(r"^[0-9a-f]{64}$")
TEMP_PREFIX = ".tmp-"


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class BlobStore:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.root.mkdir(parents=True, exist_ok=True)

    def path(self, digest: str) -> Path:
        if not _HEX.match(digest):
            raise StoreError(f"{digest!r} is not a sha256 hex digest")
        return self.root / digest

    def has(self, digest: str) -> bool:
        return self.path(digest).is_file()

    def put_file(self, src: Path) -> tuple[str, int]:
        """Store a file's bytes; return (sha256 hex, size). Identical content is stored once."""
        with open(src, "rb") as f:
            return self.put_stream(f)

    def put_bytes(self, data: bytes) -> tuple[str, int]:
        import io

        return self.put_stream(io.BytesIO(data))

    def put_stream(self, stream: BinaryIO) -> tuple[str, int]:
        h = hashlib.sha256()
        size = 0
        fd, tmp_name = tempfile.mkstemp(prefix=TEMP_PREFIX, dir=self.root)
        tmp = Path(tmp_name)
        try:
            with os.fdopen(fd, "wb") as out:
                while chunk := stream.read(_CHUNK):
                    h.update(chunk)
                    out.write(chunk)
                    size += len(chunk)
                out.flush()
                os.fsync(out.fileno())
            digest = h.hexdigest()
            final = self.path(digest)
            if self.touch(digest):  # fresh mtime: gc leaves recently (re)written blobs alone
                tmp.unlink()
            else:  # (also where it went between a look and the touch)
                os.chmod(tmp, 0o444)
                os.replace(tmp, final)
                _fsync_dir(self.root)
            return digest, size
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
            raise

    def touch(self, digest: str) -> bool:
        """Give the blob a fresh modification time (``gc`` leaves it alone for its grace); False: there is none."""
        try:
            os.utime(self.path(digest))
        except FileNotFoundError:
            return False
        return True

    def remove(self, digest: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.path(digest).unlink()
            _fsync_dir(self.root)

    def digests(self, older_than_s: float = 0.0) -> Iterator[str]:
        cutoff = time.time() - older_than_s
        for p in self.root.iterdir():
            if _HEX.match(p.name):
                with contextlib.suppress(FileNotFoundError):
                    if p.stat().st_mtime <= cutoff:
                        yield p.name

    def sweep_temp(self, older_than_s: float = 3600.0) -> int:
        """Remove temporary files left by writers that died; return how many."""
        cutoff = time.time() - older_than_s
        removed = 0
        for p in self.root.glob(TEMP_PREFIX + "*"):
            with contextlib.suppress(FileNotFoundError):
                if p.stat().st_mtime < cutoff:
                    p.unlink()
                    removed += 1
        return removed

    def verify(self, digest: str) -> bool:
        """Recompute a blob's digest; False if it was altered on disk."""
        h = hashlib.sha256()
        with open(self.path(digest), "rb") as f:
            while chunk := f.read(_CHUNK):
                h.update(chunk)
        return h.hexdigest() == digest
