"""An in-memory chunk store, LRU-bounded in bytes, holding tensors on one device (the
generator's GPU, so that hot chunks never cross PCIe again)."""

from __future__ import annotations

import threading
from collections import OrderedDict
from typing import TYPE_CHECKING

from ragcompress.kv.chunk import KVChunk
from ragcompress.kv.key import ChunkKey
from ragcompress.kv.store.base import MISSING, ChunkStore, Lookup

if TYPE_CHECKING:
    import torch

__all__ = ["MemoryStore"]


class MemoryStore(ChunkStore):
    """Keeps at most ``max_bytes`` of chunks on ``device``, evicting the least recently used.

    A chunk larger than the whole budget is not kept (counted in ``stats.misses`` as
    ``"larger than store"`` when looked up later as absent).
    """

    def __init__(self, max_bytes: int = 2 << 30, device: torch.device | str | None = None) -> None:
        super().__init__()
        if max_bytes <= 0:
            raise ValueError(f"max_bytes must be positive, got {max_bytes}")
        self.max_bytes = int(max_bytes)
        self.device = device
        self._items: OrderedDict[str, KVChunk] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()

    @property
    def nbytes(self) -> int:
        return self._bytes

    def __len__(self) -> int:
        return len(self._items)

    def lookup(self, key: ChunkKey) -> Lookup:
        with self._lock:
            chunk = self._items.get(key.digest)
            if chunk is None:
                return self._record(Lookup(None, MISSING))
            self._items.move_to_end(key.digest)
            return self._record(Lookup(chunk))

    def put(self, key: ChunkKey, chunk: KVChunk) -> None:
        if self.device is not None:
            chunk = chunk.to(self.device)
        size = chunk.nbytes
        with self._lock:
            old = self._items.pop(key.digest, None)
            if old is not None:
                self._bytes -= old.nbytes
            if size > self.max_bytes:
                return
            self._items[key.digest] = chunk
            self._bytes += size
            self.stats.puts += 1
            while self._bytes > self.max_bytes:
                _, evicted = self._items.popitem(last=False)
                self._bytes -= evicted.nbytes
                self.stats.evictions += 1

    def contains(self, key: ChunkKey) -> bool:
        return key.digest in self._items

    def remove(self, key: ChunkKey) -> bool:
        with self._lock:
            old = self._items.pop(key.digest, None)
            if old is None:
                return False
            self._bytes -= old.nbytes
            return True

    def clear(self) -> None:
        with self._lock:
            self._items.clear()
            self._bytes = 0
