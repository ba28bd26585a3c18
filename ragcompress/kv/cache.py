"""The chunk cache: passages → chunks, from the store when possible, encoding only the misses
(all of them in one batched call) and storing them.

Concurrent requests for the same chunk encode it once. Threads of one process share a future
per chunk: the first thread to miss it encodes it, the others wait for its result. Processes
sharing a disk or Redis store take a lease on the chunk (:mod:`ragcompress.kv.store.lease`): the
holder encodes and stores it, the others poll the store every ``poll_s`` until it appears or
the lease (``lease_s``) expires, so a holder that died delays them by at most its lease.

A chunk that cannot be stored (a tier down, a full disk) is logged and the request is
answered all the same; the next request encodes it again.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

from ragcompress.kv.chunk import KVChunk
from ragcompress.kv.encode.encoder import ChunkEncoder
from ragcompress.kv.key import ChunkKey
from ragcompress.kv.presses.protocol import KVPress, build_presses
from ragcompress.kv.store.base import ChunkStore
from ragcompress.kv.store.breaker import TIER_ERRORS
from ragcompress.kv.store.lease import Lease
from ragcompress.types import Passage, validate_passages

__all__ = ["CacheStats", "ChunkCache"]

log = logging.getLogger(__name__)

# What encoding a missed chunk needs: its key, the passage id (for error messages), its tokens.
_Need = tuple[ChunkKey, str, Sequence[int]]


@dataclass(frozen=True, slots=True)
class CacheStats:
    """What one ``get_or_encode`` call did."""

    hits: int
    encoded: int
    waited: int = 0  # missed chunks another thread or process was encoding: waited for, not encoded
    misses: dict[str, str] = field(default_factory=dict)  # passage id -> why it was not usable
    bytes: int = 0  # stored size of the returned chunks
    bytes_fp16: int = 0  # what they would take uncompressed in fp16
    lookup_ms: float = 0.0
    encode_ms: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        return {
            "chunks_hit": self.hits,
            "chunks_encoded": self.encoded,
            "chunks_waited": self.waited,
            "chunk_misses": dict(self.misses),
            "chunk_bytes": self.bytes,
            "chunk_bytes_fp16": self.bytes_fp16,
            "lookup_ms": self.lookup_ms,
            "encode_ms": self.encode_ms,
        }


class ChunkCache:
    """``get_or_encode(passages)`` over an encoder and a store; ``presses`` (instances or
    registry specs) compress chunks before they are stored and are part of their keys.

    ``lease_s``: how long a process may hold a chunk's lease (encoding it) before others stop
    waiting for it; ``poll_s``: how often a waiting process looks for the chunk in the store.
    """

    def __init__(
        self,
        encoder: ChunkEncoder,
        store: ChunkStore,
        presses: Sequence[Any] = (),
        lease_s: float = 30.0,
        poll_s: float = 0.05,
    ) -> None:
        if not lease_s > 0:
            raise ValueError(f"lease_s must be positive, got {lease_s!r}")
        if not 0 < poll_s <= lease_s:
            raise ValueError(f"poll_s must be positive and at most lease_s, got {poll_s!r}")
        self.encoder = encoder
        self.store = store
        # One press (a list composes into one, as in every other entry point): the chunks and
        # keys of a list and of its ComposedPress are the same.
        press = build_presses(presses)
        self.presses: tuple[KVPress, ...] = () if press is None else (press,)
        self.lease_s, self.poll_s = float(lease_s), float(poll_s)
        self.leases = store.leases()
        self._claims: dict[str, Future[KVChunk]] = {}  # digest -> the chunk a thread is encoding
        self._claims_lock = threading.Lock()

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
        todo: dict[str, _Need] = {}  # digest -> what encoding it needs (first passage needing it)
        first: dict[str, int] = {}  # digest -> its first passage (a repeat is served once, counted once)
        for idx, key in enumerate(keys):
            first.setdefault(key.digest, idx)
        # one batch: a store that reads (disk) reads several chunks at once
        looked = self.store.lookup_many([keys[i] for i in first.values()])
        hits = 0
        for (d, idx), got in zip(first.items(), looked, strict=True):
            if got.chunk is not None:
                found[d] = got.chunk
                hits += 1
            else:
                misses[items[idx].id] = got.reason
                todo[d] = (keys[idx], items[idx].id, ids[idx])
        t1 = time.perf_counter()
        encoded = waited = 0
        if todo:
            made, encoded, waited = self._fill(todo)
            found.update(made)
        t2 = time.perf_counter()
        out = [found[k.digest] for k in keys]
        stats = CacheStats(
            hits=hits,
            encoded=encoded,
            waited=waited,
            misses=misses,
            bytes=sum(c.nbytes for c in out),
            bytes_fp16=sum(c.nbytes_fp16 for c in out),
            lookup_ms=(t1 - t0) * 1e3,
            encode_ms=(t2 - t1) * 1e3,
        )
        return out, stats

    # -- threads of this process: one future per chunk being encoded -----------------------
    def _fill(self, todo: dict[str, _Need]) -> tuple[dict[str, KVChunk], int, int]:
        """The missed chunks, and how many of them this call encoded and waited for."""
        with self._claims_lock:
            theirs = {d: self._claims[d] for d in todo if d in self._claims}
            mine = {d: need for d, need in todo.items() if d not in theirs}
            for d in mine:
                self._claims[d] = Future()
        made: dict[str, KVChunk] = {}
        try:
            encoded, waited = self._produce(mine, made)
        finally:
            with self._claims_lock:
                futures = [(d, self._claims.pop(d)) for d in mine]
            for d, future in futures:
                if d in made:
                    future.set_result(made[d])
                else:
                    future.set_exception(RuntimeError(f"the thread encoding chunk {d[:12]} failed"))
        for d, future in theirs.items():
            try:
                made[d] = future.result()
                waited += 1
            except RuntimeError:
                # The owner failed (its error went to its caller): try here, raising our own error.
                made[d] = self._encode_and_put([todo[d]])[0]
                encoded += 1
        return made, encoded, waited

    # -- processes sharing the store: one lease per chunk being encoded ----------------------
    def _produce(self, todo: dict[str, _Need], made: dict[str, KVChunk]) -> tuple[int, int]:
        """Fill ``made`` with ``todo``'s chunks: encode those whose lease this process gets,
        poll the store for those another process holds. Returns (encoded, waited for)."""
        pending = dict(todo)
        encoded = waited = 0
        give_up = time.monotonic() + 2 * self.lease_s  # a lease outlives no holder by more
        first = True
        while pending:
            leases: list[Lease] = []
            try:
                ready = []
                for d, (key, _, _) in list(pending.items()):
                    if not first and (chunk := self._present(key)) is not None:
                        made[d], waited = chunk, waited + 1
                        del pending[d]
                        continue
                    lease = self._lease(key)
                    if lease is True and time.monotonic() < give_up:
                        continue  # another process is encoding it
                    if isinstance(lease, Lease):
                        leases.append(lease)
                    # Another worker may have stored it between our lookup and our claim on it
                    # (not asked when the lease tier is down: the store is likely down as well).
                    ask = isinstance(lease, Lease) or self.leases is None
                    if ask and (chunk := self._present(key)) is not None:
                        made[d], waited = chunk, waited + 1
                        del pending[d]
                    else:
                        ready.append(d)
                if ready:
                    chunks = self._encode_and_put([pending[d] for d in ready])
                    for d, chunk in zip(ready, chunks, strict=True):
                        made[d] = chunk
                        del pending[d]
                    encoded += len(ready)
            finally:
                for taken in leases:
                    self._release(taken)
            if pending:
                time.sleep(self.poll_s)
            first = False
        return encoded, waited

    def _lease(self, key: ChunkKey) -> Lease | bool:
        """Our lease on ``key``; True when another process holds it; False when there is no
        lease to be had (none for this store, or its tier cannot answer): encode without one."""
        if self.leases is None:
            return False
        try:
            lease = self.leases.acquire(key, self.lease_s)
        except TIER_ERRORS as err:
            log.debug("no lease on chunk %s: %s", key.digest[:12], err)
            return False
        return True if lease is None else lease

    def _release(self, lease: Lease) -> None:
        try:
            lease.release()
        except TIER_ERRORS as err:  # it expires by itself
            log.debug("lease on chunk %s not released: %s", lease.key.digest[:12], err)

    def _present(self, key: ChunkKey) -> KVChunk | None:
        """The chunk when the store has a usable one now; a store that cannot answer has none."""
        try:
            return self.store.lookup(key).chunk if self.store.contains(key) else None
        except TIER_ERRORS as err:
            log.debug("chunk %s: store cannot answer: %s", key.digest[:12], err)
            return None

    def _encode_and_put(self, needs: Sequence[_Need]) -> list[KVChunk]:
        chunks = self.encoder.encode_ids([(pid, ids) for _, pid, ids in needs], self.presses)
        for chunk in chunks:
            try:
                # chunk.key, not the lookup key: should the weights change between lookup and
                # encoding, the chunk is stored under the key of the weights that made it
                self.store.put(chunk.key, chunk)
            except TIER_ERRORS as err:
                # Degrade: the request has its chunk; the next one encodes it again.
                name = type(self.store).__name__
                log.warning(
                    "chunk %s not stored in %s: %s: %s", chunk.key.digest[:12], name, type(err).__name__, err
                )
        return chunks
