"""A directory of safetensors chunk files, one per chunk, named by the key's digest.

Writes go to a temp file in the same directory and are moved into place with
``os.replace``, so a reader (or a second writer of the same chunk) never sees a torn file.
A file that cannot be used (truncated, corrupt, foreign format, another model) is a miss
whose reason is recorded in ``stats.misses``; the file is moved to ``quarantine/`` so the
chunk is re-encoded and rewritten.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

from ragcompress.kv.chunk import KVChunk
from ragcompress.kv.key import ChunkKey
from ragcompress.kv.serialize import ChunkFormatError, chunk_from_bytes, chunk_to_bytes
from ragcompress.kv.store import MISSING, ChunkStore, Lookup

if TYPE_CHECKING:
    import torch

__all__ = ["DiskStore"]

_SUFFIX = ".safetensors"


class DiskStore(ChunkStore):
    """Chunks as files under ``directory`` (created if needed; must be writable)."""

    def __init__(self, directory: str | os.PathLike[str], device: torch.device | str = "cpu") -> None:
        super().__init__()
        self.directory = Path(directory).expanduser()
        self.device = device
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise PermissionError(f"chunk cache directory {self.directory} cannot be created: {err}") from err
        if not self.directory.is_dir():
            raise NotADirectoryError(f"chunk cache path {self.directory} is not a directory")
        # Probe with a real file: os.access lies for root and on some network filesystems.
        try:
            fd, probe = tempfile.mkstemp(prefix=".probe-", dir=self.directory)
            os.close(fd)
            os.unlink(probe)
        except OSError as err:
            raise PermissionError(f"chunk cache directory {self.directory} is not writable: {err}") from err
        self.quarantined: list[Path] = []

    def path(self, key: ChunkKey) -> Path:
        d = key.digest
        return self.directory / d[:2] / f"{d}{_SUFFIX}"

    def lookup(self, key: ChunkKey) -> Lookup:
        path = self.path(key)
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            return self._record(Lookup(None, MISSING))
        except OSError as err:
            return self._record(Lookup(None, f"unreadable file: {err.strerror}"))
        try:
            chunk = chunk_from_bytes(data, expected=key, device=self.device)
        except ChunkFormatError as err:
            self._quarantine(path)
            return self._record(Lookup(None, err.reason))
        return self._record(Lookup(chunk))

    def _quarantine(self, path: Path) -> None:
        target_dir = self.directory / "quarantine"
        try:
            target_dir.mkdir(exist_ok=True)
            target = target_dir / path.name
            os.replace(path, target)
            self.quarantined.append(target)
        except OSError:
            path.unlink(missing_ok=True)

    def put(self, key: ChunkKey, chunk: KVChunk) -> None:
        if chunk.key != key:
            raise ValueError("DiskStore.put: the chunk's own key differs from the key it is stored under")
        path = self.path(key)
        path.parent.mkdir(exist_ok=True)
        data = chunk_to_bytes(chunk)
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

    def contains(self, key: ChunkKey) -> bool:
        return self.path(key).exists()

    def remove(self, key: ChunkKey) -> bool:
        try:
            self.path(key).unlink()
            return True
        except FileNotFoundError:
            return False

    def __len__(self) -> int:
        return sum(1 for _ in self.directory.glob(f"??/*{_SUFFIX}"))
