"""Batched lookups: a disk store reads several files at once, a tiered store asks each tier once
for the keys still missing, and the cache looks a request's passages up in one batch. Each must
answer exactly what the one-key lookups answer, in order, with the same counters."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from ragcompress.kv.cache import ChunkCache
from ragcompress.kv.store.disk import DiskStore
from ragcompress.kv.store.memory import MemoryStore
from ragcompress.kv.store.tiered import TieredStore
from tests.support.faults import damage


@pytest.mark.parametrize("ahead", [0, 1, 2])
def test_disk_lookup_many_answers_what_lookup_answers(
    tmp_path: Path, chunks: list[Any], same: Any, ahead: int
) -> None:
    store = DiskStore(tmp_path, read_ahead=ahead)
    for c in chunks[:3]:
        store.put(c.key, c)
    damage(store, chunks[1].key, "flip")
    absent = chunks[3].key
    keys = [chunks[2].key, chunks[0].key, absent, chunks[1].key, chunks[0].key]
    got = store.lookup_many(keys)
    assert [g.chunk is not None for g in got] == [True, True, False, False, True]
    assert same(got[0].chunk, chunks[2]) and same(got[1].chunk, chunks[0]) and same(got[4].chunk, chunks[0])
    assert got[2].reason == "absent" and "checksum" in got[3].reason
    # each distinct key read once: two hits, one absent, one damaged (and quarantined)
    assert store.stats.hits == 2 and sum(store.stats.misses.values()) == 2
    assert len(store.quarantined) == 1
    assert [g.reason for g in store.lookup_many(keys)] == [g.reason for g in map(store.lookup, keys)]


def test_disk_read_ahead_must_not_be_negative(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="read_ahead"):
        DiskStore(tmp_path, read_ahead=-1)
    assert DiskStore(tmp_path).read_ahead == 2


def test_tiered_lookup_many_promotes_and_counts_like_lookup(
    tmp_path: Path, chunks: list[Any], same: Any
) -> None:
    host, disk = MemoryStore(1 << 24, device="cpu"), DiskStore(tmp_path, read_ahead=2)
    store = TieredStore([("host", host), ("disk", disk)])
    host.put(chunks[0].key, chunks[0])
    for c in chunks[1:3]:
        disk.put(c.key, c)
    damage(disk, chunks[2].key, "truncate")
    keys = [c.key for c in chunks[:4]]
    got = store.lookup_many(keys)
    assert same(got[0].chunk, chunks[0]) and same(got[1].chunk, chunks[1])
    assert got[2].chunk is None and got[2].reason.startswith("disk: truncated")
    assert got[3].chunk is None and got[3].reason == "absent"
    assert host.contains(chunks[1].key)  # promoted from disk
    stats = store.tier_stats()
    assert (stats["host"]["hits"], stats["host"]["misses"]) == (1, 3)
    assert (stats["disk"]["hits"], stats["disk"]["misses"]) == (1, 2)
    assert store.stats.hits == 2 and sum(store.stats.misses.values()) == 2
    again = store.lookup_many(keys)  # now served by the host tier where promoted
    assert [g.chunk is not None for g in again] == [True, True, False, False]
    assert store.tier_stats()["host"]["hits"] == 3


def test_cache_looks_a_request_up_in_one_batch(tmp_path: Path, encoder: Any, same: Any) -> None:
    store = DiskStore(tmp_path, read_ahead=2)
    calls: list[int] = []
    many = store.lookup_many

    def counted(keys: Any) -> Any:
        calls.append(len(keys))
        return many(keys)

    store.lookup_many = counted  # type: ignore[method-assign]
    cache = ChunkCache(encoder, store)
    passages = ["one passage here.", "another passage.", "one passage here.", "a third one."]
    first, stats = cache.get_or_encode(passages)
    assert calls == [3] and stats.encoded == 3 and stats.hits == 0
    second, stats = cache.get_or_encode(passages)
    assert calls == [3, 3] and stats.hits == 3 and stats.encoded == 0
    assert all(same(a, b) for a, b in zip(first, second, strict=True))
    assert first[0].key == first[2].key


def test_redis_lookup_many_is_one_round_trip(redis_url: str, chunks: list[Any], same: Any) -> None:
    from ragcompress.kv.store.redis import RedisStore

    store = RedisStore(redis_url, retries=1, backoff_s=0.01)
    for c in chunks[:3]:
        store.put(c.key, c)
    damage(store, chunks[1].key, "flip")
    executes: list[int] = []
    pipeline = store.client.pipeline

    def counted(*args: Any, **kwargs: Any) -> Any:
        pipe = pipeline(*args, **kwargs)
        run = pipe.execute
        pipe.execute = lambda *a, **k: (executes.append(len(pipe.command_stack)), run(*a, **k))[1]
        return pipe

    store.client.pipeline = counted  # type: ignore[method-assign]
    keys = [chunks[2].key, chunks[0].key, chunks[3].key, chunks[1].key, chunks[0].key]
    got = store.lookup_many(keys)
    assert executes == [4]  # one pipeline of the four distinct keys' GETs
    assert same(got[0].chunk, chunks[2]) and same(got[1].chunk, chunks[0]) and same(got[4].chunk, chunks[0])
    assert got[2].reason == "absent" and got[3].reason.startswith("rejected: ")
    assert [g.reason for g in got] == [store.lookup(k).reason for k in keys]
    assert store.stats.hits == 2 + 3 and store.stats.misses["absent"] == 1 + 1
