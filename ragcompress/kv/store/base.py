"""Chunk stores: where encoded chunks live between queries.

:class:`ChunkStore` is the backend interface (``lookup``/``put``/``contains``/``remove``,
batched versions default to loops). ``lookup`` returns the chunk or the reason it could not
be used, so that caches report *why* a chunk was re-encoded (absent, corrupt, foreign
version, other model, …). Backends: :class:`~ragcompress.kv.store.memory.MemoryStore` (LRU by
bytes, on one device), :class:`~ragcompress.kv.store.disk.DiskStore` (safetensors files),
:class:`~ragcompress.kv.store.redis.RedisStore` (shared), and
:class:`~ragcompress.kv.store.tiered.TieredStore`, which chains them (GPU → host → disk →
Redis) and degrades instead of failing when a tier does.
"""

from __future__ import annotations

import threading
from abc import ABC, abstractmethod
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from ragcompress.kv.chunk import KVChunk
from ragcompress.kv.key import ChunkKey

if TYPE_CHECKING:
    from ragcompress.kv.store.lease import Leases

__all__ = ["MISSING", "ChunkStore", "Lookup", "StoreStats"]

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
        # lookups may run on several threads (a batch's reads, a cache shared by threads)
        self._stats_lock = threading.Lock()

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

    def leases(self) -> Leases | None:
        """Leases other processes sharing this store see (:mod:`ragcompress.kv.store.lease`); None
        for a store only this process sees."""
        return None

    def peek(self, key: ChunkKey) -> KVChunk | None:
        """The chunk held under ``key`` when the store has it at hand (in memory), without
        checks, counters or LRU order; None otherwise (a store that would have to read it)."""
        return None

    def get(self, key: ChunkKey) -> KVChunk | None:
        return self.lookup(key).chunk

    def lookup_many(self, keys: Sequence[ChunkKey]) -> list[Lookup]:
        """Each key's :meth:`lookup`, in order; a key repeated in ``keys`` is looked up once
        (:meth:`_lookup_distinct` gets each key once)."""
        unique = list(dict.fromkeys(keys))
        found = dict(zip(unique, self._lookup_distinct(unique), strict=True))
        return [found[k] for k in keys]

    def _lookup_distinct(self, keys: list[ChunkKey]) -> list[Lookup]:
        """:meth:`lookup_many` of distinct keys; a store that can read several at once (one
        round trip, reads ahead) overrides this."""
        return [self.lookup(k) for k in keys]

    def put_many(self, items: Sequence[tuple[ChunkKey, KVChunk]]) -> None:
        for key, chunk in items:
            self.put(key, chunk)

    def _record(self, found: Lookup) -> Lookup:
        with self._stats_lock:
            if found.chunk is None:
                self.stats.misses[found.reason] += 1
            else:
                self.stats.hits += 1
        return found
