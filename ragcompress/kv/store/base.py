"""Chunk stores: where encoded chunks live between queries.

:class:`ChunkStore` is the backend interface (``lookup``/``put``/``contains``/``remove``,
batched versions default to loops). ``lookup`` returns the chunk or the reason it could not
be used, so that caches report *why* a chunk was re-encoded (absent, corrupt, foreign
version, other model, …). Backends: :class:`~ragcompress.kv.store.memory.MemoryStore` (LRU by
bytes, on the generator's device), :class:`~ragcompress.kv.store.disk.DiskStore`
(safetensors files) and :class:`TieredStore` (memory in front of disk).

A tiered store degrades instead of failing: a tier that raises on a read is a miss for that
tier, a write it cannot take is logged and dropped, and a tier that keeps failing is skipped
for a while by its :class:`~ragcompress.kv.store.breaker.CircuitBreaker`.
"""

from __future__ import annotations

import logging
from abc import ABC, abstractmethod
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import TYPE_CHECKING, TypeVar

from ragcompress.kv.chunk import KVChunk
from ragcompress.kv.key import ChunkKey
from ragcompress.kv.store.breaker import CircuitBreaker
from ragcompress.kv.store.open import StoreUnavailableError

if TYPE_CHECKING:
    from ragcompress.kv.store.lease import Leases

__all__ = ["MISSING", "ChunkStore", "Lookup", "StoreStats", "TieredStore"]

MISSING = "absent"

log = logging.getLogger(__name__)
T = TypeVar("T")


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

    def leases(self) -> Leases | None:
        """Leases other processes sharing this store see (:mod:`ragcompress.kv.store.lease`); None
        for a store only this process sees."""
        return None

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
    hits into ``front``; puts go to both. Each tier sits behind its own copy of ``breaker``
    (``breakers["front"]``, ``breakers["back"]``); a tier that fails or is skipped is a miss on
    reads and is left out of writes, with a warning."""

    def __init__(self, front: ChunkStore, back: ChunkStore, breaker: CircuitBreaker | None = None) -> None:
        super().__init__()
        self.front, self.back = front, back
        template = breaker if breaker is not None else CircuitBreaker()
        self.breakers = {"front": template.copy("front"), "back": template.copy("back")}

    def _try(self, name: str, what: str, fn: Callable[[], T], default: T) -> T:
        """``fn()`` through tier ``name``'s breaker; ``default`` when the tier cannot answer
        (the breaker has logged why)."""
        try:
            return self.breakers[name].call(fn, what)
        except StoreUnavailableError:
            return default

    def lookup(self, key: ChunkKey) -> Lookup:
        front, back = self.front, self.back
        found = self._try("front", "lookup", lambda: front.lookup(key), Lookup(None, "front: unavailable"))
        if found.chunk is None:
            found = self._try("back", "lookup", lambda: back.lookup(key), Lookup(None, "back: unavailable"))
            if found.chunk is not None:
                found = Lookup(self._promote(key, found.chunk))
        return self._record(found)

    def _promote(self, key: ChunkKey, chunk: KVChunk) -> KVChunk:
        """The front tier's copy of ``chunk`` (moved to its device), or ``chunk`` when the front
        cannot take it."""
        front = self.front

        def put_and_get() -> KVChunk | None:
            front.put(key, chunk)
            return front.get(key)

        return self._try("front", "write", put_and_get, None) or chunk

    def put(self, key: ChunkKey, chunk: KVChunk) -> None:
        for name, tier in reversed(self._tiers()):  # back first: others may be waiting for it there
            self._try(name, "write", partial(tier.put, key, chunk), None)
        self.stats.puts += 1

    def contains(self, key: ChunkKey) -> bool:
        for name, tier in self._tiers():
            if self._try(name, "contains", partial(tier.contains, key), False):
                return True
        return False

    def remove(self, key: ChunkKey) -> bool:
        removed = False
        for name, tier in self._tiers():
            removed = self._try(name, "remove", partial(tier.remove, key), False) or removed
        return removed

    def _tiers(self) -> list[tuple[str, ChunkStore]]:
        return [("front", self.front), ("back", self.back)]

    def leases(self) -> Leases | None:
        """The shared tiers' leases, back first, each behind its breaker (see
        :func:`~ragcompress.kv.store.lease.tier_leases`)."""
        from ragcompress.kv.store.lease import tier_leases

        return tier_leases(self._tiers(), self.breakers)
