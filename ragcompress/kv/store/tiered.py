"""Tiered chunk storage: GPU memory → pinned host memory → disk → Redis, each tier optional.

A lookup walks the tiers front to back; a hit in a slower tier is promoted into every faster
one. A put writes through to every tier, back first, so that other processes sharing the back
tiers see the chunk (and those waiting on its lease find it). Each tier keeps its own
hit/miss/byte counters (``tier_stats()``).

A tier that cannot answer (Redis down: :class:`~ragcompress.kv.store.errors.StoreUnavailableError`;
a full or vanished disk: ``OSError``) is skipped for that call, counted and logged: the chunk
is looked up further back or re-encoded, which is slower but right, and a write it cannot
take is dropped. Each tier sits behind its own :class:`~ragcompress.kv.store.breaker.CircuitBreaker`,
so that a tier that keeps failing is skipped at once for a back-off period instead of costing
its timeouts and retries on every chunk of every request.

A tier that holds a damaged chunk reports a miss with the reason (memory tiers check a
device-side digest; disk and Redis check the serialized checksum and, with a secret, the
HMAC), and the re-encoded chunk overwrites it.

Build one from settings with :class:`~ragcompress.kv.store.spec.StoreSpec`.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import TYPE_CHECKING, Any, TypeVar

from ragcompress.kv.store.base import MISSING, ChunkStore, Lookup
from ragcompress.kv.store.breaker import CircuitBreaker
from ragcompress.kv.store.errors import StoreUnavailableError

if TYPE_CHECKING:
    from ragcompress.kv.chunk import KVChunk
    from ragcompress.kv.key import ChunkKey
    from ragcompress.kv.store.lease import Leases

__all__ = ["TierStats", "TieredStore"]

T = TypeVar("T")


@dataclass
class TierStats:
    hits: int = 0
    misses: int = 0
    rejected: Counter[str] = field(default_factory=Counter)  # damaged or forged chunks, by reason
    unavailable: int = 0  # calls that failed or that the tier's breaker refused
    bytes_served: int = 0  # bytes of chunks this tier answered with
    bytes_written: int = 0  # bytes of chunks written or promoted into it

    def as_dict(self) -> dict[str, Any]:
        return {
            "hits": self.hits,
            "misses": self.misses,
            "rejected": dict(self.rejected),
            "unavailable": self.unavailable,
            "bytes_served": self.bytes_served,
            "bytes_written": self.bytes_written,
        }


class TieredStore(ChunkStore):
    """Named tiers, fastest first, e.g. ``[("gpu", MemoryStore(...)), ("disk", DiskStore(...))]``.

    ``breaker``: the settings of every tier's circuit breaker (each tier gets its own copy, in
    ``breakers[name]``); default :class:`~ragcompress.kv.store.breaker.CircuitBreaker()`.
    """

    def __init__(
        self, tiers: Sequence[tuple[str, ChunkStore]], breaker: CircuitBreaker | None = None
    ) -> None:
        super().__init__()
        if not tiers:
            raise ValueError("a TieredStore needs at least one tier")
        names = [name for name, _ in tiers]
        if len(set(names)) != len(names) or not all(isinstance(n, str) and n for n in names):
            raise ValueError(f"tier names must be unique non-empty strings, got {names}")
        for name, tier in tiers:
            if not isinstance(tier, ChunkStore):
                raise TypeError(f"tier {name!r} is a {type(tier).__name__}, not a ChunkStore")
        self.tiers = list(tiers)
        self.tier_counters = {name: TierStats() for name in names}
        template = breaker if breaker is not None else CircuitBreaker()
        self.breakers = {name: template.copy(name) for name in names}

    def tier(self, name: str) -> ChunkStore:
        """The tier called ``name``."""
        for tier_name, tier in self.tiers:
            if tier_name == name:
                return tier
        raise KeyError(f"no tier {name!r}; tiers: {[n for n, _ in self.tiers]}")

    def _call(self, name: str, what: str, fn: Callable[[], T]) -> T:
        """``fn()`` through tier ``name``'s breaker; a failure or refusal is counted and raised
        as StoreUnavailableError (the breaker has logged a failure)."""
        try:
            return self.breakers[name].call(fn, what)
        except StoreUnavailableError:
            self.tier_counters[name].unavailable += 1
            raise

    def lookup(self, key: ChunkKey) -> Lookup:
        return self.lookup_many([key])[0]

    def _lookup_distinct(self, keys: list[ChunkKey]) -> list[Lookup]:
        """Each key's chunk from the fastest tier holding it (promoted into the faster ones), or
        every tier's reason. Tier by tier, front to back, each asked once for the keys still
        missing (a disk tier reads them several at a time)."""
        found: dict[ChunkKey, Lookup] = {}
        reasons: dict[ChunkKey, list[str]] = {k: [] for k in keys}
        todo = keys
        for depth, (name, tier) in enumerate(self.tiers):
            if not todo:
                break
            counters = self.tier_counters[name]
            try:
                got = self._call(name, "lookup", partial(tier.lookup_many, todo))
            except StoreUnavailableError:
                for key in todo:
                    reasons[key].append(f"{name}: unavailable")
                continue
            left = []
            for key, hit in zip(todo, got, strict=True):
                if hit.chunk is None:
                    counters.misses += 1
                    if hit.reason != MISSING:
                        counters.rejected[hit.reason] += 1
                        reasons[key].append(f"{name}: {hit.reason}")
                    left.append(key)
                    continue
                counters.hits += 1
                counters.bytes_served += hit.chunk.nbytes
                found[key] = self._record(Lookup(self._promote(key, hit.chunk, depth)))
            todo = left
        for key in todo:
            found[key] = self._record(Lookup(None, "; ".join(reasons[key]) or MISSING))
        return [found[k] for k in keys]

    def _promote(self, key: ChunkKey, chunk: KVChunk, depth: int) -> KVChunk:
        """Write ``chunk`` (found in tier ``depth``) into every faster tier; the fastest copy
        that took it (on the GPU tier's device when that tier kept it), else ``chunk``."""
        for name, tier in reversed(self.tiers[:depth]):
            self._write(name, tier, key, chunk)
        for _, tier in self.tiers[:depth]:
            copy = tier.peek(key)
            if copy is not None:
                return copy
        return chunk

    def _write(self, name: str, tier: ChunkStore, key: ChunkKey, chunk: KVChunk) -> None:
        try:
            self._call(name, "write", partial(tier.put, key, chunk))
        except StoreUnavailableError:
            return
        self.tier_counters[name].bytes_written += chunk.nbytes

    def put(self, key: ChunkKey, chunk: KVChunk) -> None:
        # Back to front: a process waiting on this chunk's lease polls the shared tiers.
        for name, tier in reversed(self.tiers):
            self._write(name, tier, key, chunk)
        self.stats.puts += 1

    def peek(self, key: ChunkKey) -> KVChunk | None:
        for _, tier in self.tiers:
            chunk = tier.peek(key)
            if chunk is not None:
                return chunk
        return None

    def contains(self, key: ChunkKey) -> bool:
        for name, tier in self.tiers:
            try:
                if self._call(name, "contains", partial(tier.contains, key)):
                    return True
            except StoreUnavailableError:
                continue
        return False

    def remove(self, key: ChunkKey) -> bool:
        removed = False
        for name, tier in self.tiers:
            try:
                removed = self._call(name, "remove", partial(tier.remove, key)) or removed
            except StoreUnavailableError:
                continue
        return removed

    def leases(self) -> Leases | None:
        """The shared tiers' leases, back first, each behind its breaker (see
        :func:`~ragcompress.kv.store.lease.tier_leases`)."""
        from ragcompress.kv.store.lease import tier_leases

        return tier_leases(self.tiers, self.breakers)

    def tier_stats(self) -> dict[str, dict[str, Any]]:
        """Per tier, front to back: hits, misses, rejected (by reason), unavailable, bytes, and
        its breaker's state and counters under ``"breaker"``."""
        return {
            name: {**self.tier_counters[name].as_dict(), "breaker": self.breakers[name].as_dict()}
            for name, _ in self.tiers
        }
