"""In-flight dedup: concurrent requests for the same chunk encode it once, across threads of one
process and across processes sharing a disk or Redis store; a lease left by a dead holder
expires and the others proceed (issue #13, item 9)."""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import random
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import torch

from ragcompress.kv.cache import CacheStats, ChunkCache
from ragcompress.kv.encode.encoder import ChunkEncoder
from ragcompress.kv.presses.protocol import KVPress
from ragcompress.kv.store.base import ChunkStore
from ragcompress.kv.store.disk import DiskStore
from ragcompress.kv.store.lease import DiskLeases
from ragcompress.kv.store.memory import MemoryStore
from ragcompress.kv.store.redis import RedisStore
from ragcompress.kv.store.spec import StoreSpec
from tests.support.tiny import chunks_close

CORPUS = [
    "The Eiffel Tower was completed in 1889 for the World's Fair in Paris.",
    "Photosynthesis turns light, water and carbon dioxide into sugar and oxygen.",
    "The Danube flows through ten countries before reaching the Black Sea.",
    "Ada Lovelace wrote what is often called the first computer program.",
    "Honey found in ancient Egyptian tombs was still edible after thousands of years.",
    "Octopuses have three hearts and blue, copper-based blood.",
]


@dataclass
class CountingEncoder(ChunkEncoder):
    """The real encoder, counting how many times each passage (by its token ids) was encoded."""

    counts: Counter[tuple[int, ...]] = field(default_factory=Counter, init=False, repr=False)
    _count_lock: threading.Lock = field(default_factory=threading.Lock, init=False, repr=False)

    def encode_ids(self, items: Sequence[tuple[str, Sequence[int]]], presses: Sequence[KVPress] = ()) -> Any:
        with self._count_lock:
            self.counts.update(tuple(ids) for _, ids in items)
        return super().encode_ids(items, presses)


STORES: dict[str, Callable[[Path], ChunkStore]] = {
    "memory": lambda _: MemoryStore(1 << 26),
    "disk": lambda tmp: DiskStore(tmp / "chunks"),
    "memory+disk": lambda tmp: StoreSpec(gpu_bytes=1 << 26, disk_dir=tmp / "chunks").build("cpu"),
}


@pytest.mark.parametrize("kind", sorted(STORES))
def test_eight_threads_encode_each_chunk_once(
    kind: str, tmp_path: Path, tiny_llama: Any, tokenizer: Any, encoder: Any
) -> None:
    counting = CountingEncoder(tiny_llama, tokenizer)
    cache = ChunkCache(counting, STORES[kind](tmp_path), poll_s=0.01)
    start = threading.Barrier(8)
    results: list[tuple[list[Any], CacheStats]] = []
    errors: list[BaseException] = []

    def worker(seed: int) -> None:
        order = random.Random(seed).sample(CORPUS, len(CORPUS))
        start.wait()
        try:
            results.append(cache.get_or_encode(order[:4]))
            results.append(cache.get_or_encode(order))
        except BaseException as err:
            errors.append(err)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors and not any(t.is_alive() for t in threads), errors
    assert len(counting.counts) == len(CORPUS) and set(counting.counts.values()) == {1}
    assert sum(s.encoded for _, s in results) == len(CORPUS)
    assert sum(s.hits + s.encoded + s.waited for _, s in results) == 8 * (4 + len(CORPUS))
    reference = {c.key: c for c in encoder.encode(CORPUS)}
    assert all(chunks_close(c, reference[c.key]) for chunks, _ in results for c in chunks)


@pytest.mark.parametrize("deadline", [-1.0, 1e6])
def test_stale_disk_lease_of_a_dead_process_is_broken(tmp_path: Path, encoder: Any, deadline: float) -> None:
    store = DiskStore(tmp_path / "chunks")
    cache = ChunkCache(encoder, store, lease_s=30.0, poll_s=0.01)
    key = cache.keys(CORPUS[:1])[0]
    lock = DiskLeases(store.directory).path(key)
    lock.parent.mkdir(parents=True)
    # As a killed process leaves it: its lease ran out a second ago and nobody released it; or
    # a deadline no holder could have set (a skewed clock), on a lock written a minute ago.
    lock.write_text(json.dumps({"token": "4242-dead", "deadline": time.time() + deadline, "pid": 4242}))
    written = time.time() - 60.0
    os.utime(lock, (written, written))
    _, stats = cache.get_or_encode(CORPUS[:1])
    assert (stats.encoded, stats.waited) == (1, 0) and store.contains(key)
    assert not lock.exists()  # broken, then ours, then released
    assert not list(lock.parent.glob("*.gone"))


def test_redis_lease_of_a_dead_process_expires(redis_url: str, encoder: Any) -> None:
    store = RedisStore(redis_url)
    cache = ChunkCache(encoder, store, poll_s=0.01)
    key = cache.keys(CORPUS[:1])[0]
    # As a killed process leaves it: a lease with a short time to live, never released.
    assert store.client.set(store.lease_key(key), "4242-dead", nx=True, px=300)
    _, stats = cache.get_or_encode(CORPUS[:1])
    assert (stats.encoded, stats.waited) == (1, 0) and store.contains(key)
    assert not store.client.exists(store.lease_key(key))
    assert len(store) == 1  # the lease never counts as a chunk


@pytest.mark.parametrize("kind", ["disk", "redis"])
def test_a_live_holder_is_waited_for_not_duplicated(
    kind: str, tmp_path: Path, redis_url: str, tiny_llama: Any, tokenizer: Any, encoder: Any
) -> None:
    store: ChunkStore = DiskStore(tmp_path / "chunks") if kind == "disk" else RedisStore(redis_url)
    counting = CountingEncoder(tiny_llama, tokenizer)
    cache = ChunkCache(counting, store, poll_s=0.01)
    assert cache.leases is not None
    key = cache.keys(CORPUS[:1])[0]
    lease = cache.leases.acquire(key, 60.0)  # another process has started encoding the chunk
    assert lease is not None and cache.leases.acquire(key, 60.0) is None
    out: list[tuple[list[Any], CacheStats]] = []
    waiter = threading.Thread(target=lambda: out.append(cache.get_or_encode(CORPUS[:1])))
    waiter.start()
    while store.stats.misses["absent"] == 0 and waiter.is_alive():  # until the waiter has missed it
        time.sleep(0.005)
    chunk = encoder.encode(CORPUS[:1])[0]
    store.put(key, chunk)  # the holder stores the chunk and lets go
    lease.release()
    waiter.join(60)
    assert not waiter.is_alive() and out
    chunks, stats = out[0]
    assert (stats.hits, stats.encoded, stats.waited) == (0, 0, 1) and not counting.counts
    assert chunks_close(chunks[0], chunk)


def test_lease_settings_are_checked(encoder: Any) -> None:
    with pytest.raises(ValueError, match="lease_s"):
        ChunkCache(encoder, MemoryStore(), lease_s=0)
    with pytest.raises(ValueError, match="poll_s"):
        ChunkCache(encoder, MemoryStore(), lease_s=1.0, poll_s=2.0)


# -- processes ----------------------------------------------------------------------------
def _process(index: int, disk: str, redis_url: str, start: Any, results: Any) -> None:
    """One spawned worker: the tiny model rebuilt from its config and seed (same weights, same
    chunk keys as every other worker), then the whole corpus asked in its own order, two
    passages a request, over the shared disk store and then over the shared Redis."""
    torch.set_num_threads(1)
    from ragcompress.models.load import load_tokenizer
    from tests.support.tiny import make_tiny_llama

    tokenizer = load_tokenizer()
    encoder = CountingEncoder(make_tiny_llama(len(tokenizer)), tokenizer)
    out: dict[str, Any] = {}
    for name, store in (("disk", DiskStore(disk)), ("redis", RedisStore(redis_url))):
        cache = ChunkCache(encoder, store, poll_s=0.01)
        order = random.Random(index).sample(CORPUS, len(CORPUS))
        before = sum(encoder.counts.values())
        start.wait(120)
        stats = [cache.get_or_encode(order[i : i + 2])[1] for i in range(0, len(order), 2)]
        out[name] = {
            "encoder_calls": sum(encoder.counts.values()) - before,
            "encoded": sum(s.encoded for s in stats),
            "served": sum(s.hits + s.encoded + s.waited for s in stats),
        }
    results.put((index, out))


def test_four_processes_sharing_disk_and_redis_encode_each_chunk_once(tmp_path: Path, redis_url: str) -> None:
    ctx = mp.get_context("spawn")
    start, results = ctx.Barrier(4), ctx.Queue()
    procs = [
        ctx.Process(
            target=_process, args=(i, str(tmp_path / "shared"), redis_url, start, results), daemon=True
        )
        for i in range(4)
    ]
    for p in procs:
        p.start()
    try:
        got = dict(results.get(timeout=300) for _ in procs)
    finally:
        for p in procs:
            p.join(30)
            if p.is_alive():
                p.kill()
    assert sorted(got) == [0, 1, 2, 3]
    for name in ("disk", "redis"):
        assert sum(r[name]["encoder_calls"] for r in got.values()) == len(CORPUS), (name, got)
        assert sum(r[name]["encoded"] for r in got.values()) == len(CORPUS), (name, got)
        assert all(r[name]["served"] == len(CORPUS) for r in got.values()), (name, got)
    assert len(DiskStore(tmp_path / "shared")) == len(CORPUS)
    assert len(RedisStore(redis_url)) == len(CORPUS)


def test_a_lease_recreates_a_deleted_cache_directory_private(tmp_path) -> None:
    import shutil
    import stat

    from ragcompress.kv.key import ChunkKey
    from ragcompress.kv.store.lease import DiskLeases

    store = DiskStore(tmp_path / "deep" / "chunks")
    shutil.rmtree(tmp_path / "deep")
    key = ChunkKey(model="m", layout="l", presses="", tokens="t")
    lease = DiskLeases(store.directory).acquire(key, 5.0)
    assert lease is not None
    for folder in (store.directory, store.directory / ".leases"):
        assert stat.S_IMODE(folder.stat().st_mode) == 0o700
