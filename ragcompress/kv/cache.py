"""The chunk cache: passages → chunks, from the store when possible, encoding only the misses
(all of them in one batched call) and storing them."""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from ragcompress.kv.chunk import KVChunk
from ragcompress.kv.encode import ChunkEncoder
from ragcompress.kv.key import ChunkKey
from ragcompress.kv.press import KVPress
from ragcompress.kv.store import ChunkStore
from ragcompress.types import Passage, validate_passages

__all__ = ["CacheStats", "ChunkCache"]


@dataclass(frozen=True, slots=True)
class CacheStats:
    """What one ``get_or_encode`` call did."""

    hits: int
    encoded: int
    misses: dict[str, str] = field(default_factory=dict)  # passage id -> why it was not usable
    bytes: int = 0  # stored size of the returned chunks
    bytes_fp16: int = 0  # what they would take uncompressed in fp16
    lookup_ms: float = 0.0
    encode_ms: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        return {
            "chunks_hit": self.hits,
            "chunks_encoded": self.encoded,
            "chunk_misses": dict(self.misses),
            "chunk_bytes": self.bytes,
            "chunk_bytes_fp16": self.bytes_fp16,
            "lookup_ms": self.lookup_ms,
            "encode_ms": self.encode_ms,
        }


class ChunkCache:
    """``get_or_encode(passages)`` over an encoder and a store; ``presses`` (instances or
    registry specs) compress chunks before they are stored and are part of their keys."""

    def __init__(self, encoder: ChunkEncoder, store: ChunkStore, presses: Sequence[Any] = ()) -> None:
        from ragcompress.registry import build

        self.encoder = encoder
        self.store = store
        self.presses: tuple[KVPress, ...] = tuple(build(p) for p in presses)

    def keys(self, passages: Sequence[Passage] | Sequence[str]) -> list[ChunkKey]:
        ids = [self.encoder.passage_ids(p) for p in validate_passages(passages)]
        return self.encoder.keys(ids, self.presses)

    def get_or_encode(self, passages: Sequence[Passage] | Sequence[str]) -> tuple[list[KVChunk], CacheStats]:
        """One chunk per passage, in order. A passage repeated in the list is encoded once."""
        t0 = time.perf_counter()
        items = validate_passages(passages)
        ids = [self.encoder.passage_ids(p) for p in items]
        keys = self.encoder.keys(ids, self.presses)
        found: dict[str, KVChunk] = {}
        misses: dict[str, str] = {}
        todo: dict[str, int] = {}  # digest -> first index needing it
        hits = 0
        for idx, key in enumerate(keys):
            d = key.digest
            if d in found or d in todo:  # repeated in this call: served once, counted once
                continue
            got = self.store.lookup(key)
            if got.chunk is not None:
                found[d] = got.chunk
                hits += 1
            else:
                misses[items[idx].id] = got.reason
                todo[d] = idx
        t1 = time.perf_counter()
        if todo:
            order = list(todo.values())
            chunks = self.encoder.encode_ids([(items[i].id, ids[i]) for i in order], self.presses)
            for i, chunk in zip(order, chunks, strict=True):
                # chunk.key, not keys[i]: should the weights change between lookup and encoding,
                # the chunk is stored under the key of the weights that made it
                self.store.put(chunk.key, chunk)
                found[keys[i].digest] = chunk
        t2 = time.perf_counter()
        out = [found[k.digest] for k in keys]
        stats = CacheStats(
            hits=hits,
            encoded=len(todo),
            misses=misses,
            bytes=sum(c.nbytes for c in out),
            bytes_fp16=sum(c.nbytes_fp16 for c in out),
            lookup_ms=(t1 - t0) * 1e3,
            encode_ms=(t2 - t1) * 1e3,
        )
        return out, stats
