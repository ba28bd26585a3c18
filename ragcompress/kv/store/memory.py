"""An in-memory chunk store, LRU-bounded in bytes, holding tensors on one device: the GPU
tier (the generator's device, so that hot chunks never cross PCIe again) or the host tier
(CPU, page-locked when CUDA is present so that copies to the GPU run asynchronously).

Every hit is checked against a stamp taken when the chunk was stored (:func:`chunk_digest`),
so that a consumer writing into a cached tensor, or swapping it for a shorter one, turns the
next lookup into a miss instead of a silently wrong answer.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ragcompress.kv.chunk import KVChunk
from ragcompress.kv.key import ChunkKey
from ragcompress.kv.store.base import MISSING, ChunkStore, Lookup
from ragcompress.lru import ByteLRU

if TYPE_CHECKING:
    import torch

__all__ = ["Entry", "MemoryStore", "chunk_digest"]


def _tensors(chunk: KVChunk) -> list[torch.Tensor]:
    return [chunk.token_ids, *(t for layer in chunk.layers for _, t in sorted(layer.tensors().items()))]


def chunk_digest(chunk: KVChunk) -> tuple[tuple[Any, ...], tuple[int, ...]]:
    """(dtype, shape, storage address) and autograd version counter of every tensor of a chunk.

    Free: no tensor is read and no device syncs (a byte sum per tensor cost one reduction
    launch each, ~640 launches for a 10K-token context, on the hot GPU path). It catches a
    tensor written in place (``copy_``, ``add_``, index assignment, through any view: views
    share the counter) or swapped for another; like the model fingerprint, not writes through
    ``.data``, and not a cryptographic check (memory is ours).
    """
    tensors = _tensors(chunk)
    layout = tuple((str(t.dtype), tuple(t.shape), t.data_ptr()) for t in tensors)
    return layout, tuple(t._version for t in tensors)


def _pinned(chunk: KVChunk) -> KVChunk:
    return chunk.map_tensors(lambda t: t.cpu().pin_memory())


@dataclass(frozen=True)
class Entry:
    """A stored chunk and its digest at store time."""

    chunk: KVChunk
    digest: tuple[Any, ...]


class MemoryStore(ChunkStore):
    """At most ``max_bytes`` of chunks on ``device`` (None: where they come from), the least
    recently used evicted first (:class:`~ragcompress.lru.ByteLRU`). A chunk larger than the
    whole budget is not kept.

    ``pin``: keep host copies in page-locked memory so they copy to the GPU asynchronously;
    defaults to True exactly when ``device`` is the CPU and CUDA is available.
    """

    def __init__(
        self, max_bytes: int = 2 << 30, device: torch.device | str | None = None, pin: bool | None = None
    ) -> None:
        super().__init__()
        import torch

        if not isinstance(max_bytes, int) or max_bytes <= 0:
            raise ValueError(f"max_bytes must be a positive integer, got {max_bytes!r}")
        self.max_bytes = max_bytes
        self.device = None if device is None else torch.device(device)
        on_cpu = self.device is not None and self.device.type == "cpu"
        self.pin = (on_cpu and torch.cuda.is_available()) if pin is None else bool(pin)
        if self.pin and not (on_cpu and torch.cuda.is_available()):
            raise ValueError("pin=True (pinned memory) needs device='cpu' on a machine with CUDA")
        self.lru: ByteLRU[str, Entry] = ByteLRU(self.max_bytes, lambda e: e.chunk.nbytes)

    @property
    def nbytes(self) -> int:
        return self.lru.nbytes

    def __len__(self) -> int:
        return len(self.lru)

    def peek(self, key: ChunkKey) -> KVChunk | None:
        entry = self.lru.peek(key.digest)
        return None if entry is None else entry.chunk

    def lookup(self, key: ChunkKey) -> Lookup:
        entry = self.lru.get(key.digest)
        if entry is None:
            return self._record(Lookup(None, MISSING))
        if chunk_digest(entry.chunk) != entry.digest:
            self.remove(key)
            return self._record(Lookup(None, "corrupt: changed in memory since stored"))
        return self._record(Lookup(entry.chunk))

    def put(self, key: ChunkKey, chunk: KVChunk) -> None:
        if chunk.key != key:
            raise ValueError("MemoryStore.put: the chunk's own key differs from the key it is stored under")
        if self.pin:
            chunk = _pinned(chunk)
        elif self.device is not None:
            chunk = chunk.to(self.device)
        self.stats.evictions += self.lru.put(key.digest, Entry(chunk, chunk_digest(chunk)))
        if key.digest in self.lru:
            self.stats.puts += 1

    def contains(self, key: ChunkKey) -> bool:
        return key.digest in self.lru

    def remove(self, key: ChunkKey) -> bool:
        return self.lru.pop(key.digest) is not None

    def clear(self) -> None:
        self.lru.clear()
