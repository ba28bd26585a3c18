"""Tiered chunk storage: GPU memory → pinned host memory → disk → Redis.

A lookup walks the tiers front to back; a hit in a slower tier is promoted into every faster
one. A put writes through to every tier, so that other processes sharing the back tiers see
the chunk. Each tier keeps its own hit/miss/byte counters (``tier_stats()``).

A tier that cannot answer (Redis down: :class:`~ragcompress.kv.store.open.StoreUnavailableError`;
a full or vanished disk: ``OSError``) is skipped for that call, counted and logged: the chunk
is looked up further back or re-encoded, which is slower but right, and a write it cannot
take is dropped. Each tier sits behind its own :class:`~ragcompress.kv.store.breaker.CircuitBreaker`,
so that a tier that keeps failing is skipped at once for a back-off period instead of costing
its timeouts and retries on every chunk of every request.

A tier that holds a damaged chunk reports a miss with the reason (memory tiers check a
device-side digest; disk and Redis check the serialized checksum and, with a secret, the
HMAC), and the re-encoded chunk overwrites it.
"""

from __future__ import annotations

import logging
import threading
from collections import Counter, OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import TYPE_CHECKING, Any, TypeVar

from ragcompress.kv.chunk import KVChunk
from ragcompress.kv.store.base import MISSING, ChunkStore, Lookup
from ragcompress.kv.store.breaker import CircuitBreaker
from ragcompress.kv.store.open import StoreUnavailableError

if TYPE_CHECKING:
    import torch

    from ragcompress.kv.key import ChunkKey
    from ragcompress.kv.store.lease import Leases

__all__ = ["MemoryTier", "MultiTierStore", "TierStats", "chunk_digest", "tiered_store"]

log = logging.getLogger(__name__)
T = TypeVar("T")


def _tensors(chunk: KVChunk) -> list[torch.Tensor]:
    return [chunk.token_ids, *(t for layer in chunk.layers for _, t in sorted(layer.tensors().items()))]


def chunk_digest(chunk: KVChunk) -> tuple[tuple[Any, ...], tuple[int, ...]]:
    """(dtypes and shapes, per-tensor byte sums) of a chunk, computed where its tensors live.

    Cheap (one reduction per tensor, one device sync) and enough to catch a tensor written in
    place or swapped for a shorter one while cached; not a cryptographic check (memory is ours).
    """
    import torch

    tensors = _tensors(chunk)
    layout = tuple((str(t.dtype), tuple(t.shape)) for t in tensors)
    sums = torch.stack([t.detach().reshape(-1).view(torch.uint8).sum(dtype=torch.int64) for t in tensors])
    return layout, tuple(int(s) for s in sums.tolist())


def _pinned(chunk: KVChunk) -> KVChunk:
    layers = [
        type(layer).from_tensors({k: t.cpu().pin_memory() for k, t in layer.tensors().items()}, layer.meta())
        for layer in chunk.layers
    ]
    return KVChunk(
        layers=layers,
        token_ids=chunk.token_ids.cpu().pin_memory(),
        base_offset=chunk.base_offset,
        length=chunk.length,
        key=chunk.key,
        model=chunk.model,
        kv_heads=chunk.kv_heads,
        head_dim=chunk.head_dim,
    )


class MemoryTier(ChunkStore):
    """At most ``max_bytes`` of chunks on ``device`` (LRU), each checked against its digest on hit.

    ``pin``: keep host copies in page-locked memory so they copy to the GPU asynchronously;
    defaults to True exactly when ``device`` is the CPU and CUDA is available.
    """

    def __init__(self, max_bytes: int, device: str = "cpu", pin: bool | None = None) -> None:
        super().__init__()
        import torch

        if max_bytes <= 0:
            raise ValueError(f"max_bytes must be positive, got {max_bytes}")
        self.max_bytes = int(max_bytes)
        self.device = str(device)
        on_cpu = torch.device(self.device).type == "cpu"
        self.pin = (on_cpu and torch.cuda.is_available()) if pin is None else bool(pin)
        if self.pin and not (on_cpu and torch.cuda.is_available()):
            raise ValueError("pinned memory needs a CPU tier on a machine with CUDA")
        self._items: OrderedDict[str, tuple[KVChunk, tuple[Any, ...]]] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()

    @property
    def nbytes(self) -> int:
        return self._bytes

    def __len__(self) -> int:
        return len(self._items)

    def peek(self, key: ChunkKey) -> KVChunk | None:
        """The stored chunk without touching LRU order, counters or the digest check."""
        item = self._items.get(key.digest)
        return None if item is None else item[0]

    def lookup(self, key: ChunkKey) -> Lookup:
        with self._lock:
            item = self._items.get(key.digest)
            if item is None:
                return self._record(Lookup(None, MISSING))
            self._items.move_to_end(key.digest)
        chunk, digest = item
        if chunk_digest(chunk) != digest:
            self.remove(key)
            return self._record(Lookup(None, "corrupt: changed in memory since stored"))
        return self._record(Lookup(chunk))

    def put(self, key: ChunkKey, chunk: KVChunk) -> None:
        if chunk.key != key:
            raise ValueError("MemoryTier.put: the chunk's own key differs from the key it is stored under")
        chunk = _pinned(chunk) if self.pin else chunk.to(self.device)
        size = chunk.nbytes
        item = (chunk, chunk_digest(chunk))
        with self._lock:
            old = self._items.pop(key.digest, None)
            if old is not None:
                self._bytes -= old[0].nbytes
            if size > self.max_bytes:
                return
            self._items[key.digest] = item
            self._bytes += size
            self.stats.puts += 1
            while self._bytes > self.max_bytes:
                _, (evicted, _) = self._items.popitem(last=False)
                self._bytes -= evicted.nbytes
                self.stats.evictions += 1

    def contains(self, key: ChunkKey) -> bool:
        return key.digest in self._items

    def remove(self, key: ChunkKey) -> bool:
        with self._lock:
            old = self._items.pop(key.digest, None)
            if old is None:
                return False
            self._bytes -= old[0].nbytes
            return True


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


class MultiTierStore(ChunkStore):
    """Named tiers, fastest first, e.g. ``[("gpu", MemoryTier(...)), ("disk", DiskStore(...))]``.

    ``breaker``: the settings of every tier's circuit breaker (each tier gets its own copy, in
    ``breakers[name]``); default :class:`~ragcompress.kv.store.breaker.CircuitBreaker()`.
    """

    def __init__(
        self, tiers: Sequence[tuple[str, ChunkStore]], breaker: CircuitBreaker | None = None
    ) -> None:
        super().__init__()
        if not tiers:
            raise ValueError("a MultiTierStore needs at least one tier")
        names = [name for name, _ in tiers]
        if len(set(names)) != len(names):
            raise ValueError(f"tier names must be unique, got {names}")
        self.tiers = list(tiers)
        self.tier_counters = {name: TierStats() for name in names}
        template = breaker if breaker is not None else CircuitBreaker()
        self.breakers = {name: template.copy(name) for name in names}

    def _call(self, name: str, what: str, fn: Callable[[], T]) -> T:
        """``fn()`` through tier ``name``'s breaker; a failure or refusal is counted and raised
        as StoreUnavailableError (the breaker has logged a failure)."""
        try:
            return self.breakers[name].call(fn, what)
        except StoreUnavailableError:
            self.tier_counters[name].unavailable += 1
            raise

    def lookup(self, key: ChunkKey) -> Lookup:
        reasons: list[str] = []
        for depth, (name, tier) in enumerate(self.tiers):
            counters = self.tier_counters[name]
            try:
                found = self._call(name, "lookup", partial(tier.lookup, key))
            except StoreUnavailableError:
                reasons.append(f"{name}: unavailable")
                continue
            if found.chunk is None:
                counters.misses += 1
                if found.reason != MISSING:
                    counters.rejected[found.reason] += 1
                    reasons.append(f"{name}: {found.reason}")
                continue
            counters.hits += 1
            counters.bytes_served += found.chunk.nbytes
            chunk = self._promote(key, found.chunk, depth)
            return self._record(Lookup(chunk))
        return self._record(Lookup(None, "; ".join(reasons) or MISSING))

    def _promote(self, key: ChunkKey, chunk: KVChunk, depth: int) -> KVChunk:
        for name, tier in reversed(self.tiers[:depth]):
            self._write(name, tier, key, chunk)
        front = self.tiers[0][1]
        if depth > 0 and isinstance(front, MemoryTier):
            return front.peek(key) or chunk
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


def tiered_store(
    url: str | None = None,
    disk: str | None = None,
    device: str | None = None,
    gpu_bytes: int = 2 << 30,
    host_bytes: int = 4 << 30,
    tenant: str | None = None,
    secret: bytes | str | None = None,
) -> MultiTierStore:
    """GPU memory (when ``device`` is CUDA) → host memory (pinned with CUDA) → ``disk`` →
    the store ``url`` names (``redis://…``, ``file://…``); tiers without a setting are left out."""
    import torch

    from ragcompress.kv.store.open import open_store

    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    tiers: list[tuple[str, ChunkStore]] = []
    if torch.device(device).type == "cuda":
        tiers.append(("gpu", MemoryTier(gpu_bytes, device)))
    tiers.append(("host", MemoryTier(host_bytes, "cpu")))
    if disk is not None:
        from ragcompress.kv.store.disk import DiskStore

        tiers.append(("disk", DiskStore(disk, secret=secret)))
    if url is not None:
        tiers.append(("remote", open_store(url, tenant=tenant, secret=secret)))
    return MultiTierStore(tiers)
