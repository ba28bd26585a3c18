"""Chunk stores: where encoded chunks live between queries.

:class:`ChunkStore` is the backend interface (``lookup``/``put``/``contains``/``remove``,
batched versions default to loops). ``lookup`` returns the chunk or the reason it could not
be used, so that caches report *why* a chunk was re-encoded (absent, corrupt, foreign
version, other model, …). Backends: :class:`~ragcompress.kv.memory_store.MemoryStore` (LRU by
bytes, on the generator's device), :class:`~ragcompress.kv.disk_store.DiskStore`
(safetensors files) and :class:`TieredStore` (memory in front of disk).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field

from ragcompress.kv.chunk import KVChunk
from ragcompress.kv.key import ChunkKey

__all__ = ["MISSING", "ChunkStore", "Lookup", "StoreStats", "TieredStore"]

MISSING = "absent"


@dataclass(frozen=True, slots=True)
class Lookup:
    """A chunk, or ``None`` with the reason it is a miss."""

    chunk: KVChunk | None
    reason: str = ""


@dataclass
class StoreStats:
    hits: int = 0
    misses: Counter[str] = field(default_factory=Counter)  # reason -> count
    evictions: int = 0
    puts: int = 0

    def as_dict(self) -> dict[str, object]:
        return {
            "hits": self.hits,
            "misses": dict(self.misses),
            "evictions": self.evictions,
            "puts": self.puts,
        }


class ChunkStore(ABC):
    """A key → chunk store."""

    def __init__(self) -> None:
        self.stats = StoreStats()

    @abstractmethod
    def lookup(self, key: ChunkKey) -> Lookup:
        """The chunk under ``key`` or the reason there is none usable."""

    @abstractmethod
    def put(self, key: ChunkKey, chunk: KVChunk) -> None: ...

    @abstractmethod
    def contains(self, key: ChunkKey) -> bool: ...

    @abstractmethod
    def remove(self, key: ChunkKey) -> bool:
        """Drop the chunk; True when there was one."""

    def get(self, key: ChunkKey) -> KVChunk | None:
        return self.lookup(key).chunk

    def lookup_many(self, keys: Sequence[ChunkKey]) -> list[Lookup]:
        return [self.lookup(k) for k in keys]

    def put_many(self, items: Sequence[tuple[ChunkKey, KVChunk]]) -> None:
        for key, chunk in items:
            self.put(key, chunk)

    def _record(self, found: Lookup) -> Lookup:
        if found.chunk is None:
            self.stats.misses[found.reason] += 1
        else:
            self.stats.hits += 1
        return found


class TieredStore(ChunkStore):
    """A fast store in front of a slow one: lookups try ``front`` then ``back`` and promote
    hits into ``front``; puts go to both."""

    def __init__(self, front: ChunkStore, back: ChunkStore) -> None:
        super().__init__()
        self.front, self.back = front, back

    def lookup(self, key: ChunkKey) -> Lookup:
        found = self.front.lookup(key)
        if found.chunk is None:
            found = self.back.lookup(key)
            if found.chunk is not None:
                self.front.put(key, found.chunk)
                found = Lookup(self.front.get(key) or found.chunk)
        return self._record(found)

    def put(self, key: ChunkKey, chunk: KVChunk) -> None:
        self.back.put(key, chunk)
        self.front.put(key, chunk)
        self.stats.puts += 1

    def contains(self, key: ChunkKey) -> bool:
        return self.front.contains(key) or self.back.contains(key)

    def remove(self, key: ChunkKey) -> bool:
        a = self.front.remove(key)
        b = self.back.remove(key)
        return a or b
