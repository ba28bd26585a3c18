"""TieredStore: host memory → disk → Redis; promotion, counters, damage in each tier, outages.
The four-tier store users build from a StoreSpec is in test_store_spec.py."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from ragcompress.kv.cache import ChunkCache
from ragcompress.kv.serialize import chunk_from_bytes, chunk_to_bytes
from ragcompress.kv.store.disk import DiskStore
from ragcompress.kv.store.memory import MemoryStore
from ragcompress.kv.store.redis import RedisStore
from ragcompress.kv.store.tiered import TieredStore
from tests.support.faults import damage


def _close(a: Any, b: Any) -> bool:
    """Same key and tensors equal up to float noise (a passage re-encoded alone vs in a batch)."""
    if a.key != b.key:
        return False
    return all(
        torch.allclose(x.float(), y.float(), atol=1e-5)
        for la, lb in zip(a.layers, b.layers, strict=True)
        for x, y in zip(la.tensors().values(), lb.tensors().values(), strict=True)
    )


def _stack(redis_url: str, tmp_path: Path, host_bytes: int = 1 << 24) -> TieredStore:
    return TieredStore(
        [
            ("host", MemoryStore(host_bytes, device="cpu")),
            ("disk", DiskStore(tmp_path / "disk")),
            ("remote", RedisStore(redis_url, retries=1, backoff_s=0.01)),
        ]
    )


def test_hit_in_back_tier_is_promoted_with_counters(
    redis_url: str, tmp_path: Path, chunks: list[Any], same: Any
) -> None:
    store = _stack(redis_url, tmp_path)
    host, disk, remote = (t for _, t in store.tiers)
    c = chunks[0]
    remote.put(c.key, c)  # written by another process
    first = store.lookup(c.key).chunk
    assert first is not None and same(first, c)
    assert host.contains(c.key) and disk.contains(c.key)
    second = store.lookup(c.key).chunk
    assert second is not None and same(second, c)
    stats = store.tier_stats()
    assert list(stats) == ["host", "disk", "remote"]
    assert (stats["host"]["hits"], stats["host"]["misses"]) == (1, 1)
    assert (stats["disk"]["hits"], stats["disk"]["misses"]) == (0, 1)
    assert (stats["remote"]["hits"], stats["remote"]["misses"]) == (1, 0)
    assert stats["remote"]["bytes_served"] == c.nbytes == stats["host"]["bytes_served"]
    assert stats["host"]["bytes_written"] == c.nbytes == stats["disk"]["bytes_written"]
    assert store.stats.hits == 2


def test_put_writes_through_and_miss_reports_absent(
    redis_url: str, tmp_path: Path, chunks: list[Any]
) -> None:
    store = _stack(redis_url, tmp_path)
    c = chunks[1]
    assert store.lookup(c.key).reason == "absent"
    store.put(c.key, c)
    assert all(t.contains(c.key) for _, t in store.tiers)
    assert store.remove(c.key) and not store.contains(c.key)


def test_memory_tier_is_lru_in_bytes(chunks: list[Any]) -> None:
    budget = chunks[0].nbytes + chunks[1].nbytes
    tier = MemoryStore(budget, device="cpu")
    tier.put(chunks[0].key, chunks[0])
    tier.put(chunks[1].key, chunks[1])
    assert tier.lookup(chunks[0].key).chunk is not None
    tier.put(chunks[2].key, chunks[2])
    assert tier.contains(chunks[0].key) and not tier.contains(chunks[1].key)
    assert tier.nbytes <= budget and tier.stats.evictions >= 1
    with pytest.raises(ValueError, match="pinned memory"):
        if not torch.cuda.is_available():
            MemoryStore(1000, device="cpu", pin=True)
        else:
            raise ValueError("pinned memory: CUDA present, nothing to check")


@pytest.mark.parametrize("kind", ["flip", "truncate"])
def test_damage_in_every_tier_is_detected_and_reencoded(
    redis_url: str, tmp_path: Path, encoder: Any, passages: list[str], kind: str
) -> None:
    store = _stack(redis_url, tmp_path)
    cache = ChunkCache(encoder, store)
    fresh, stats = cache.get_or_encode(passages[:1])
    assert stats.encoded == 1
    key = fresh[0].key
    reference = encoder.encode(passages[:1])[0]
    for name in ("host", "disk", "remote"):
        damage(store.tier(name), key, kind)
    got, stats = cache.get_or_encode(passages[:1])
    assert stats.encoded == 1 and stats.hits == 0
    reason = next(iter(stats.misses.values()))
    assert "host: corrupt" in reason and "disk:" in reason and "remote: rejected" in reason
    assert _close(got[0], reference)
    for name, tier in store.tiers:
        assert tier.lookup(key).chunk is not None, f"{name} was not rewritten"
        assert store.tier_stats()[name]["rejected"], name


@pytest.mark.parametrize("tier_name", ["host", "disk", "remote"])
def test_damage_in_one_tier_falls_through_to_a_good_copy(
    redis_url: str, tmp_path: Path, chunks: list[Any], same: Any, tier_name: str
) -> None:
    store = _stack(redis_url, tmp_path)
    c = chunks[2]
    store.put(c.key, chunk_from_bytes(chunk_to_bytes(c)))  # a copy: the damage must not reach `chunks`
    for other, tier in store.tiers:  # only the damaged tier and those behind it hold the chunk
        if other == tier_name:
            break
        tier.remove(c.key)
    damage(store.tier(tier_name), c.key, "flip")
    found = store.lookup(c.key)
    if tier_name == "remote":
        assert found.chunk is None and "rejected" in found.reason
        return
    assert found.chunk is not None and same(found.chunk, c)
    assert sum(store.tier_stats()[tier_name]["rejected"].values()) == 1


def test_redis_outage_is_skipped_counted_and_recovers(
    redis_server: Any, redis_url: str, tmp_path: Path, encoder: Any, passages: list[str]
) -> None:
    store = TieredStore(
        [
            ("host", MemoryStore(1 << 24, device="cpu")),
            ("remote", RedisStore(redis_url, retries=1, backoff_s=0.01)),
        ]
    )
    cache = ChunkCache(encoder, store)
    reference = encoder.encode(passages[1:2])[0]
    redis_server.stop()
    try:
        got, stats = cache.get_or_encode(passages[1:2])
        assert stats.encoded == 1 and "remote: unavailable" in next(iter(stats.misses.values()))
        assert _close(got[0], reference)
        assert store.tier_stats()["remote"]["unavailable"] == 2  # the lookup and the write-through
    finally:
        redis_server.start()
    store.tier("host").remove(reference.key)
    got, stats = cache.get_or_encode(passages[1:2])
    assert stats.encoded == 1 and _close(got[0], reference)  # the restarted server was empty
    assert store.tier("remote").contains(reference.key)
