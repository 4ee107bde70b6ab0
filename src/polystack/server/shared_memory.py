"""System shared memory regions: Triton's shared memory extension, for clients on the server's host.

A client creates a POSIX shared memory object (``tritonclient.utils.shared_memory``), registers a
region of it under a name, and then names that region in place of a tensor's data: the server reads
inputs from it and writes outputs into it, and only the tensors' metadata crosses the socket.

Regions are files under ``/dev/shm``, which is where Linux keeps POSIX shared memory (``shm_open``).
A key is one POSIX shared memory name, ``/name`` with no other slash, opened without following
symbolic links and only if it is a regular file: it cannot reach other files. Data moves with
``pread``/``pwrite`` on the object's descriptor, not through a mapping: touching a mapped page the
object no longer has (a client shrank it) or cannot get (a sparse object on a full tmpfs) is a
SIGBUS that kills the whole server, where a system call fails with an error this module reports.
Inputs are copied out as they are decoded, so a client may reuse its region as soon as the answer
arrives, and a request waiting in a batch queue never sees the region change under it. An output's region
is held from the moment its request is taken until its answer is written (``hold`` / ``release``), and
unregistering it meanwhile is refused, as tritonserver 2.51 refuses it ("Cannot unregister shared memory region
'o', it is currently in use."; helper-116), so an answer never lands in memory registered since under that name.
A server that closes lets go of every region, those still held once their requests are answered.

Off unless the server is started with ``--allow-shared-memory`` (Triton: ``--allow-client-shm``):
any client that can reach the server could otherwise make it read and write the host's shared
memory objects. CUDA shared memory needs a GPU runtime polystack does not drive: `CudaRegions`
answers its extension as a Triton built without GPUs does (nothing registered, registering refused).
"""

from __future__ import annotations

import errno
import os
import stat
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from polystack.errors import AlreadyExists, InternalRefusal, InvalidRequest, NotFound
from polystack.protocol.wire import ShmRef

SHM_DIR = Path("/dev/shm")


@dataclass
class Region:
    name: str
    key: str
    offset: int
    byte_size: int
    fd: int
    users: int = 0  # requests holding it for their outputs
    unregistered: bool = False  # the server closed while it was held: it goes when its last holder lets go

    def status(self) -> dict[str, Any]:
        return {"name": self.name, "key": self.key, "offset": self.offset, "byte_size": self.byte_size}


def _default_max_regions() -> int:
    import resource

    soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    return max(16, (65536 if soft == resource.RLIM_INFINITY else soft) // 4)


class SharedMemoryRegions:
    """The regions clients registered, by name; safe to use from several threads."""

    def __init__(self, shm_dir: Path = SHM_DIR, max_regions: int | None = None) -> None:
        self._dir = shm_dir
        self._regions: dict[str, Region] = {}
        self._lock = threading.Lock()
        # each region holds a descriptor: unbounded, one client could take them all (then no connection is
        # accepted); a quarter of the process's open-file limit leaves the rest to connections and models
        self.max_regions = max_regions if max_regions is not None else _default_max_regions()

    # -- registration ----------------------------------------------------------------------------
    def register(self, name: str, key: Any, offset: Any, byte_size: Any) -> None:
        """Register ``byte_size`` bytes at ``offset`` of the shared memory object ``key`` as region ``name``."""
        path = self._path(key)  # first, as Triton opens it first: an empty key is its INTERNAL, whatever the name
        if not isinstance(name, str) or not name:
            raise InvalidRequest("a shared memory region needs a non-empty name")
        for field, value in (("offset", offset), ("byte_size", byte_size)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise InvalidRequest(f"shared memory region {name!r}: {field} must be a non-negative integer")
        if byte_size == 0:
            raise InvalidRequest(f"failed to register shared memory region '{name}': invalid args: byte_size must be above 0")
        with self._lock:
            held = self._regions.get(name)
            if held is not None:
                raise AlreadyExists(
                    f"shared memory region '{name}' already in manager (Triton's words); unregister it first, or pick "
                    "another name"
                )
            if len(self._regions) >= self.max_regions:
                raise InvalidRequest(
                    f"{len(self._regions):,} system shared memory regions are registered, the most this server takes "
                    "(a quarter of its open-file limit, ulimit -n); unregister regions no longer in use, or register "
                    "one region and name parts of it by offset"
                )
            try:
                fd = os.open(path, os.O_RDWR | os.O_NOFOLLOW | os.O_CLOEXEC)
            except FileNotFoundError:
                raise InternalRefusal(  # Triton's words and code (tritonserver 2.51: INTERNAL, helper-107)
                    f"Unable to open shared memory region: {key!r}: no shared memory object of that key exists on the "
                    "server's host; create it (tritonclient.utils.shared_memory.create_shared_memory_region) before "
                    "registering it"
                ) from None
            except OSError as e:
                why = "it is a symbolic link" if e.errno == errno.ELOOP else e.strerror
                raise InvalidRequest(f"cannot open shared memory object {key!r}: {why}") from None
            try:
                info = os.fstat(fd)
                if not stat.S_ISREG(info.st_mode):
                    raise InvalidRequest(f"{key!r} is not a shared memory object (not a regular file)")
                size = info.st_size
                if offset + byte_size > size:
                    raise InvalidRequest(  # Triton's words, then why
                        f"failed to register shared memory region '{name}': invalid args: offset {offset:,} + "
                        f"byte_size {byte_size:,} runs past the end of {key!r}, which holds {size:,} bytes"
                    )
            except BaseException:
                os.close(fd)
                raise
            self._regions[name] = Region(name, key, offset, byte_size, fd)

    def unregister(self, name: str | None = None) -> None:
        """Forget region ``name`` (every region when None); a name that is not registered is no error. A region a
        request in flight holds is refused, as tritonserver 2.51 refuses it (500 / INTERNAL); of all, those not
        held go and the refusal names the others, in Triton's words."""
        with self._lock:
            gone = list(self._regions.values()) if name is None else [r for r in [self._regions.get(name)] if r]
            busy = [region.name for region in gone if region.users]
            for region in gone:
                if not region.users:
                    self._forget(region)
        if busy and name is not None:
            raise InternalRefusal(
                f"Cannot unregister shared memory region '{name}', it is currently in use. A request in flight writes "
                "its answer there; unregister it once that request is answered"
            )
        if busy:
            raise InternalRefusal(
                "Failed to unregister the following system shared memory regions: "
                + "".join(f"{n} ," for n in busy)
                + " (requests in flight write their answers there; the others were unregistered; unregister these "
                "once those requests are answered)"
            )

    def close(self) -> None:
        """Let go of every region: at once where no request holds it, else as its last holder lets go."""
        with self._lock:
            for region in list(self._regions.values()):
                if region.users:
                    region.unregistered = True
                else:
                    self._forget(region)

    def _forget(self, region: Region) -> None:
        """Take ``region`` out and close its descriptor (the lock held; no request holds it)."""
        if self._regions.get(region.name) is region:
            del self._regions[region.name]
        os.close(region.fd)

    def status(self, name: str | None = None) -> list[dict[str, Any]]:
        """Every region's name, key, offset and byte size, by name as Triton lists them (a std::map), or region
        ``name``'s alone."""
        with self._lock:
            if name is None:
                return [self._regions[n].status() for n in sorted(self._regions)]
            region = self._regions.get(name)
            if region is None:  # Triton's words
                raise NotFound(f"Unable to find system shared memory region: '{name}'; it is not registered")
            return [region.status()]

    # -- tensors -------------------------------------------------------------------------------
    def read(self, ref: ShmRef, what: str) -> bytes:
        """A copy of the bytes ``ref`` names: a request keeps its inputs whatever the client does next."""
        with self._lock:
            region = self._region(ref, what)
            start = region.offset + ref.offset
            parts: list[bytes] = []
            got = 0
            while got < ref.byte_size:  # one call reads at most ~2 GiB
                part = os.pread(region.fd, ref.byte_size - got, start + got)
                if not part:
                    raise InvalidRequest(
                        f"{what}: shared memory object {region.key!r} ends before region {ref.region!r} does (it "
                        "shrank since it was registered); unregister the region and register it again"
                    )
                parts.append(part)
                got += len(part)
            return parts[0] if len(parts) == 1 else b"".join(parts)

    def hold(self, ref: ShmRef, what: str) -> Region:
        """The region of output ``ref``, held for its request until ``release``: refused now if it is not
        registered or too small, before a model runs for it (a byte size of 0 too, as Triton refuses it)."""
        if ref.byte_size == 0:
            raise InvalidRequest(
                f"Invalid offset + byte size for shared memory region: '{ref.region}': {what} gives "
                "shared_memory_byte_size 0; give the bytes its answer takes"
            )
        with self._lock:
            region = self._region(ref, what)
            region.users += 1
            return region

    def release(self, regions: list[Region]) -> None:
        """Let go of regions ``hold`` gave; one the closing server let go of goes with its last holder."""
        with self._lock:
            for region in regions:
                region.users -= 1
                if region.unregistered and region.users == 0:  # the server closed meanwhile
                    self._forget(region)

    def write(self, ref: ShmRef, data: bytes | memoryview, what: str, region: Region | None = None) -> None:
        """Put ``data`` where ``ref`` points (in ``region``, held for it, else the region registered now under
        its name); refused when it does not fit the byte size the client gave."""
        if len(data) > ref.byte_size:
            raise InternalRefusal(  # Triton's words and code (tritonserver 2.51: INTERNAL, helper-107), then ours
                f"shared memory size specified with the request for {what} ({ref.byte_size} bytes) should be at "
                f"least {len(data)} bytes to hold the results: {what} holds {len(data):,} bytes but its "
                f"shared_memory_byte_size is {ref.byte_size:,}; give it a larger region"
            ).failed_in_run()
        with self._lock:
            if region is None:
                region = self._region(ref, what)
            start = region.offset + ref.offset
            view = memoryview(data)
            done = 0
            try:
                while done < len(view):
                    done += os.pwrite(region.fd, view[done:], start + done)
            except OSError as e:
                hint = "check the object" if e.errno != errno.ENOSPC else "free some of /dev/shm, it is full"
                raise InvalidRequest(
                    f"{what}: cannot write into shared memory object {region.key!r}: {e.strerror}; {hint}"
                ) from None

    def _region(self, ref: ShmRef, what: str) -> Region:
        region = self._regions.get(ref.region)
        if region is None:
            raise NotFound(
                f"Unable to find shared memory region: '{ref.region}' (Triton's words): {what} refers to it, and it is "
                "not registered; register it first"
            )
        if ref.offset >= region.byte_size and ref.byte_size:
            raise InvalidRequest(  # Triton's words, then where
                f"Invalid offset for shared memory region: '{ref.region}': {what} gives shared_memory_offset "
                f"{ref.offset:,}, at or past the end of the region ({region.byte_size:,} bytes)"
            )
        if ref.offset + ref.byte_size > region.byte_size:
            raise InvalidRequest(
                f"Invalid offset + byte size for shared memory region: '{ref.region}': {what} gives "
                f"shared_memory_offset {ref.offset:,} + shared_memory_byte_size {ref.byte_size:,}, past the end of "
                f"the region ({region.byte_size:,} bytes)"
            )
        return region

    def _path(self, key: Any) -> Path:
        """The file of POSIX shared memory object ``key`` (``/name``: one name, no other slash)."""
        if not isinstance(key, str):
            raise InvalidRequest('a shared memory region\'s key must be a string such as "/my_region"')
        name = key[1:] if key.startswith("/") else key
        if not name or "/" in name or "\0" in name or name in (".", "..") or len(name) > 255:
            raise InternalRefusal(  # Triton's code and words (it fails to open one), then why
                f"Unable to open shared memory region: {key!r}: it is not a POSIX shared memory name; use \"/name\" "
                "with no other slash"
            )
        return self._dir / name


class CudaRegions:
    """Triton's CUDA shared memory extension, as a Triton built without GPUs answers it: no region is
    ever registered, so the status is empty and unregistering (all, or one by name) succeeds, while
    registering one is refused. Triton's own shared memory examples unregister every CUDA region before
    they start; answering that with an error failed them before they reached system shared memory."""

    def __init__(self, system_on: bool = False) -> None:
        self.system_on = system_on  # whether the server takes system shared memory: what to advise instead

    def status(self, name: str | None = None) -> list[dict[str, Any]]:
        if name:
            raise NotFound(
                f"no CUDA shared memory region {name!r} is registered; polystack takes system shared memory only"
            )
        return []

    def register(self, name: str) -> None:
        system = "use system shared memory" + ("" if self.system_on else " (start the server with --allow-shared-memory)")
        raise InvalidRequest(
            f"failed to register CUDA shared memory region: {name!r}, polystack does not take CUDA shared "
            f"memory; {system} or send tensors in the request"
        )

    def unregister(self, name: str | None = None) -> None:
        """Nothing to forget: none is ever registered."""
