"""A directory of chunk files, one per chunk, named by the key's digest.

Writes go to a temp file in the same directory and are moved into place with
``os.replace``, so a reader (or a second writer of the same chunk) never sees a torn file.
A file that cannot be used (truncated, corrupt, foreign format, another model, unsigned, not a
regular file) is a miss whose reason is recorded in ``stats.misses``; it is moved to
``quarantine/`` (removed when that fails; left and logged when even that fails) so the chunk
is re-encoded and rewritten.
"""

from __future__ import annotations

import contextlib
import logging
import os
import tempfile
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING

from ragcompress.kv.chunk import KVChunk
from ragcompress.kv.key import ChunkKey
from ragcompress.kv.serialize import (
    ChunkFormatError,
    blob_size,
    chunk_to_bytes,
    header_length,
)
from ragcompress.kv.store.base import MISSING, ChunkStore, Lookup
from ragcompress.kv.store.disk_guard import UnusableFile, ensure_private_dir, inside, open_regular
from ragcompress.kv.store.disk_sweep import sweep
from ragcompress.kv.store.integrity import (
    HEADER_PREFIX_BYTES,
    IntegrityError,
    Signer,
    envelope_size,
    is_signed,
    open_stored,
    resolve_secret,
)

if TYPE_CHECKING:
    import torch

    from ragcompress.kv.store.lease import Leases

__all__ = ["DEFAULT_MAX_CHUNK_BYTES", "DiskStore"]

log = logging.getLogger(__name__)

_SUFFIX = ".safetensors"
# One passage of 32k tokens of an 8B model (~128 KiB per token in bf16) is 4 GiB.
DEFAULT_MAX_CHUNK_BYTES = 4 << 30
# Puts between two real scans of the directory when a byte cap is set (other processes write too).
_RESCAN_EVERY = 32


class DiskStore(ChunkStore):
    """Chunks as files under ``directory`` (created 0o700 with its parents if needed, and again
    if it is deleted while in use; must be writable).

    Integrity: every file carries a SHA-256 digest of its header and tensors, and its token ids
    must hash to the key's: damage (flipped bits, a cut file, a header edited onto another
    passage's tensors) is a miss. That digest is not keyed, so it does not stop a deliberate
    forger who can write the directory. With a ``secret`` (or ``$RAGCOMPRESS_STORE_SECRET``
    when none is passed) every file is an HMAC-SHA256 envelope bound to its key, and unsigned
    or foreign-signed files are misses: use one whenever others can write the directory.

    ``max_bytes``: cap on all files (chunks, quarantine, temp files); least recently used
    chunks are removed after a write until it fits. None (default): unbounded.
    ``max_chunk_bytes``: a file larger than this is a miss without being read.
    ``allow_shared_dir``: accept a world-writable directory, or one owned by another user
    (refused by default, see :mod:`ragcompress.kv.store.disk_guard`).
    ``read_ahead``: threads that read the next files of a :meth:`lookup_many` while the
    earlier ones are verified and decoded (0: each file read when its turn comes).
    """

    def __init__(
        self,
        directory: str | os.PathLike[str],
        device: torch.device | str = "cpu",
        *,
        secret: bytes | str | None = None,
        max_bytes: int | None = None,
        max_chunk_bytes: int = DEFAULT_MAX_CHUNK_BYTES,
        allow_shared_dir: bool = False,
        read_ahead: int = 2,
    ) -> None:
        super().__init__()
        if read_ahead < 0:
            raise ValueError(f"read_ahead must be 0 or more, got {read_ahead}")
        if max_bytes is not None and max_bytes <= 0:
            raise ValueError(f"max_bytes must be positive or None, got {max_bytes}")
        if max_chunk_bytes <= 0:
            raise ValueError(f"max_chunk_bytes must be positive, got {max_chunk_bytes}")
        self.directory = Path(directory).expanduser()
        self.device = device
        self.max_bytes = max_bytes
        self.max_chunk_bytes = max_chunk_bytes
        self.allow_shared_dir = allow_shared_dir
        self.read_ahead = read_ahead
        key = resolve_secret(secret)
        self.signer = Signer(key, {"store": "disk"}) if key is not None else None
        ensure_private_dir(self.directory, allow_shared_dir)
        self._root = self.directory.resolve()
        # Probe with a real file: os.access lies for root and on some network filesystems.
        try:
            fd, probe = tempfile.mkstemp(prefix=".probe-", dir=self.directory)
            os.close(fd)
            os.unlink(probe)
        except OSError as err:
            raise PermissionError(f"chunk cache directory {self.directory} is not writable: {err}") from err
        self.quarantined: list[Path] = []
        self._total: int | None = None  # bytes at the last scan plus our writes since (None: not scanned)
        self._puts_since_scan = 0

    def path(self, key: ChunkKey) -> Path:
        d = key.digest
        return self.directory / d[:2] / f"{d}{_SUFFIX}"

    # -- reading ---------------------------------------------------------------------------
    def lookup(self, key: ChunkKey) -> Lookup:
        return self._decode(key, self._fetch(key))

    def _lookup_distinct(self, keys: list[ChunkKey]) -> list[Lookup]:
        """With ``read_ahead``, threads read the next files while this thread checks and builds
        the earlier ones. The checks stay on this thread: moved onto the reading threads they
        ran slower on the 2-core VM (``benchmarks/results/store_read/not_kept_2026-12-04/``),
        and eight threads checking and building at once ran slower than one on an H200 host."""
        if self.read_ahead == 0 or len(keys) < 2:
            return [self.lookup(k) for k in keys]
        # at most two files a thread read and not yet built: a long request is not held
        # twice in memory when the disk outruns the building
        window = 2 * self.read_ahead
        found = []
        with ThreadPoolExecutor(max_workers=self.read_ahead, thread_name_prefix="disk-read") as pool:
            reads = deque(pool.submit(self._fetch, k) for k in keys[:window])
            for i, key in enumerate(keys):
                data = reads.popleft().result()
                if i + window < len(keys):
                    reads.append(pool.submit(self._fetch, keys[i + window]))
                found.append(self._decode(key, data))
        return found

    def _fetch(self, key: ChunkKey) -> bytes | Lookup:
        """The bytes of ``key``'s file (its size checked), or the miss (not yet counted; an
        unusable file quarantined)."""
        path = self.path(key)
        if not inside(path.parent, self._root):
            log.warning("chunk %s: shard directory %s leads outside the cache", key.digest[:12], path.parent)
            return Lookup(None, "shard directory leads outside the cache")
        try:
            return self._read(path)
        except FileNotFoundError:
            return Lookup(None, MISSING)
        except UnusableFile as err:
            if err.reason.startswith("not a regular file"):
                self._quarantine(path)
            return Lookup(None, err.reason)
        except OSError as err:
            return Lookup(None, f"unreadable file: {err.strerror or err}")
        except (ChunkFormatError, IntegrityError) as err:  # the size check reads either header
            self._quarantine(path)
            return Lookup(None, err.reason)

    def _decode(self, key: ChunkKey, data: bytes | Lookup) -> Lookup:
        """The chunk in ``data``, checked and built (:func:`open_stored`), counted; a file
        that fails is quarantined."""
        if isinstance(data, Lookup):
            return self._record(data)
        path = self.path(key)
        try:
            chunk = open_stored(data, key, self.signer, self.device)
        except (ChunkFormatError, IntegrityError) as err:
            self._quarantine(path)
            return self._record(Lookup(None, err.reason))
        with contextlib.suppress(OSError):  # the byte cap's LRU order: a hit counts as a use
            os.utime(path)
        return self._record(Lookup(chunk))

    def _read(self, path: Path) -> bytes:
        """The file's bytes, after checking its size against ``max_chunk_bytes`` and against
        what its own header declares, so a huge or cut file is refused without reading it."""
        fd, size = open_regular(path)
        with os.fdopen(fd, "rb") as f:
            if size > self.max_chunk_bytes:
                raise ChunkFormatError(f"too large: {size} bytes (max_chunk_bytes={self.max_chunk_bytes})")
            head = f.read(min(size, HEADER_PREFIX_BYTES))
            if is_signed(head):
                declared = envelope_size(head)
            else:
                need = min(size, 8 + header_length(head))  # our headers fit the prefix; others may not
                head += f.read(max(0, need - len(head)))
                declared = blob_size(head)
            if declared != size:
                what = "truncated" if size < declared else "oversized"
                raise ChunkFormatError(f"{what}: file of {size} bytes, its header declares {declared}")
            # the whole file in one read into one buffer: head + rest would copy it once more
            f.seek(0)
            data = f.read(size)
            if len(data) != size:  # cut while we read it (writers replace files, never edit them)
                raise ChunkFormatError(f"truncated: {len(data)} of {size} bytes read")
            return data

    def _quarantine(self, path: Path) -> None:
        """Move an unusable entry aside; remove it if that fails; never raise (a read-only
        filesystem leaves it in place: every lookup is then a miss with the same reason)."""
        target = self.directory / "quarantine" / f"{path.name}.{time.time_ns()}-{os.getpid()}"
        try:
            target.parent.mkdir(mode=0o700, exist_ok=True)
            if not inside(target.parent, self._root):
                raise OSError("quarantine directory leads outside the cache")
            os.replace(path, target)
            self.quarantined.append(target)
            return
        except OSError as err:
            first = err
        try:
            path.rmdir() if path.is_dir() and not path.is_symlink() else path.unlink(missing_ok=True)
        except OSError as err:
            log.warning("cannot quarantine (%s) nor remove (%s) unusable chunk file %s", first, err, path)

    # -- writing ---------------------------------------------------------------------------
    def put(self, key: ChunkKey, chunk: KVChunk) -> None:
        if chunk.key != key:
            raise ValueError("DiskStore.put: the chunk's own key differs from the key it is stored under")
        data = chunk_to_bytes(chunk)
        if self.signer is not None:
            data = self.signer.sign(key.digest, data)
        limit = min(self.max_chunk_bytes, self.max_bytes or self.max_chunk_bytes)
        if len(data) > limit:  # readers would refuse it: do not write it
            log.info("chunk %s (%d bytes) exceeds the byte limits; not stored", key.digest[:12], len(data))
            return
        path = self.path(key)
        if not self.directory.is_dir():  # deleted while in use: recreate, private again
            ensure_private_dir(self.directory, self.allow_shared_dir)
        path.parent.mkdir(mode=0o700, exist_ok=True)
        if not inside(path.parent, self._root):
            raise PermissionError(
                f"DiskStore.put: shard directory {path.parent} leads outside the cache {self._root} "
                "(a symlink?); refusing to write there"
            )
        fd, tmp = tempfile.mkstemp(prefix=f".{path.stem[:16]}-", suffix=".tmp", dir=path.parent)
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        self.stats.puts += 1
        self._enforce_cap(path, len(data))

    def _enforce_cap(self, written: Path, size: int) -> None:
        if self.max_bytes is None:
            return
        self._puts_since_scan += 1
        # Between scans, only count what this process wrote; rescan when that alone could
        # overflow the cap, and every few puts for what other processes wrote.
        if self._total is not None and self._puts_since_scan < _RESCAN_EVERY:
            self._total += size
            if self._total <= self.max_bytes:
                return
        evicted, total = sweep(self.directory, self.max_bytes, _SUFFIX, keep=written)
        self.stats.evictions += evicted
        self._total, self._puts_since_scan = total, 0

    # -- the rest of ChunkStore -------------------------------------------------------------
    def leases(self) -> Leases:
        """Lock files beside the chunks (``<directory>/.leases``), seen by every process sharing
        the directory."""
        from ragcompress.kv.store.lease import DiskLeases

        return DiskLeases(self.directory)

    def contains(self, key: ChunkKey) -> bool:
        return self.path(key).is_file()

    def remove(self, key: ChunkKey) -> bool:
        try:
            self.path(key).unlink()
            return True
        except FileNotFoundError:
            return False

    def __len__(self) -> int:
        return sum(1 for _ in self.directory.glob(f"??/*{_SUFFIX}"))
