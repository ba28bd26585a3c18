"""RedisStore against a real redis-server on loopback: round trip, isolation, policies, errors."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest
import redis

from ragcompress.kv.serialize import DIGEST_FIELD, chunk_from_bytes, read_header
from ragcompress.kv.store.base import MISSING
from ragcompress.kv.store.disk import DiskStore
from ragcompress.kv.store.open import StoreUnavailableError, open_store
from ragcompress.kv.store.redis import RedisStore


def _raw(store: RedisStore, key: Any) -> bytes:
    return bytes(store.client.get(store.redis_key(key)))


def test_round_trip_is_bit_exact_and_disk_compatible(
    redis_url: str, chunks: list[Any], same: Any, tmp_path: Path
) -> None:
    store = RedisStore(redis_url)
    disk = DiskStore(tmp_path)
    for c in chunks:
        store.put(c.key, c)
        disk.put(c.key, c)
    for c in chunks:
        found = store.lookup(c.key)
        assert found.chunk is not None, found.reason
        assert same(found.chunk, c)
        # The value is the disk store's format with the same checksum: either store can read it.
        raw = _raw(store, c.key)
        assert read_header(raw)[DIGEST_FIELD] == read_header(disk.path(c.key).read_bytes())[DIGEST_FIELD]
        assert same(chunk_from_bytes(raw, expected=c.key), c)
    assert len(store) == len(chunks)
    assert store.nbytes == sum(len(_raw(store, c.key)) for c in chunks)
    assert store.stats.hits == len(chunks)


def test_absent_contains_remove(redis_url: str, chunks: list[Any]) -> None:
    store = RedisStore(redis_url)
    c = chunks[0]
    assert store.lookup(c.key).reason == MISSING
    assert not store.contains(c.key)
    store.put(c.key, c)
    assert store.contains(c.key)
    assert store.remove(c.key)
    assert not store.remove(c.key)
    assert store.lookup(c.key).chunk is None
    assert store.nbytes == 0


def test_put_refuses_a_chunk_under_another_key(redis_url: str, chunks: list[Any]) -> None:
    with pytest.raises(ValueError, match="differs"):
        RedisStore(redis_url).put(chunks[1].key, chunks[0])


def test_tenants_and_namespaces_are_isolated(redis_url: str, chunks: list[Any], same: Any) -> None:
    a = RedisStore(redis_url, tenant="acme")
    b = RedisStore(redis_url, tenant="globex")
    other_ns = RedisStore(redis_url, namespace="staging", tenant="acme")
    c = chunks[0]
    a.put(c.key, c)
    assert not b.contains(c.key) and b.lookup(c.key).reason == MISSING
    assert other_ns.lookup(c.key).reason == MISSING
    b.put(chunks[1].key, chunks[1])
    assert a.clear() == 1
    assert a.lookup(c.key).chunk is None
    found = b.lookup(chunks[1].key).chunk
    assert found is not None and same(found, chunks[1])
    assert len(b) == 1


def test_url_query_sets_tenant_and_policies(redis_url: str, chunks: list[Any]) -> None:
    store = open_store(redis_url + "?tenant=acme&ttl_s=60&max_bytes=100000000")
    assert isinstance(store, RedisStore)
    assert (store.tenant, store.ttl_ms, store.max_bytes) == ("acme", 60000, 100000000)
    c = chunks[0]
    store.put(c.key, c)
    assert RedisStore(redis_url, tenant="acme").contains(c.key)
    assert 0 < store.client.pttl(store.redis_key(c.key)) <= 60000


def test_ttl_expires_unread_chunks_and_reads_refresh_it(redis_url: str, chunks: list[Any]) -> None:
    store = RedisStore(redis_url, ttl_s=30)
    c = chunks[0]
    store.put(c.key, c)
    key = store.redis_key(c.key)
    store.client.pexpire(key, 5000)  # pretend 25 s went by
    assert store.lookup(c.key).chunk is not None
    assert store.client.pttl(key) > 5000  # the read slid the expiry back to 30 s
    short = RedisStore(redis_url, tenant="short", ttl_s=0.2)
    short.put(c.key, c)
    deadline = time.monotonic() + 10
    while short.contains(c.key) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert short.lookup(c.key).reason == MISSING


def test_max_bytes_evicts_least_recently_used(redis_url: str, chunks: list[Any]) -> None:
    sizes = []
    for c in chunks[:3]:
        probe = RedisStore(redis_url, tenant="probe")
        probe.put(c.key, c)
        sizes.append(probe.nbytes)
        probe.clear()
    # Room for chunk 0 with either other chunk, never for all three.
    store = RedisStore(redis_url, max_bytes=max(sizes[0] + sizes[1], sizes[0] + sizes[2]))
    store.put(chunks[0].key, chunks[0])
    store.put(chunks[1].key, chunks[1])
    assert store.lookup(chunks[0].key).chunk is not None  # 0 is now more recent than 1
    store.put(chunks[2].key, chunks[2])
    assert store.stats.evictions == 1
    assert store.contains(chunks[0].key) and store.contains(chunks[2].key)
    assert not store.contains(chunks[1].key)
    assert store.nbytes <= store.max_bytes
    tiny = RedisStore(redis_url, tenant="tiny", max_bytes=sizes[0] // 2)
    tiny.put(chunks[0].key, chunks[0])  # larger than the whole budget: not kept
    assert not tiny.contains(chunks[0].key) and tiny.nbytes == 0


def test_server_down_raises_after_bounded_retries_then_recovers(
    redis_server: Any, redis_url: str, chunks: list[Any], same: Any
) -> None:
    store = RedisStore(redis_url, retries=2, backoff_s=0.01)
    c = chunks[0]
    store.put(c.key, c)
    redis_server.stop()
    try:
        for op in (lambda: store.lookup(c.key), lambda: store.put(c.key, c), lambda: store.contains(c.key)):
            with pytest.raises(StoreUnavailableError, match=r"unreachable: \w+ failed 3 times") as err:
                op()
            assert "127.0.0.1" in str(err.value)
        assert store.unavailable == 3
    finally:
        redis_server.start()
    # The server restarted empty (no persistence): a miss, then a normal write and hit.
    assert store.lookup(c.key).reason == MISSING
    store.put(c.key, c)
    found = store.lookup(c.key).chunk
    assert found is not None and same(found, c)


def test_password_passthrough_and_wrong_password(chunks: list[Any], same: Any) -> None:
    from tests.support.redis_local import LocalRedis

    with LocalRedis(password="s3cret-pass") as server:
        store = open_store(server.url)
        c = chunks[0]
        store.put(c.key, c)
        found = store.lookup(c.key).chunk
        assert found is not None and same(found, c)
        by_kwarg = RedisStore(f"redis://127.0.0.1:{server.port}/0", password="s3cret-pass")
        assert by_kwarg.contains(c.key)
        wrong = RedisStore(f"redis://:nope@127.0.0.1:{server.port}/0")
        with pytest.raises(StoreUnavailableError, match="authentication") as err:
            wrong.lookup(c.key)
        assert "nope" not in str(err.value)  # the password never shows in messages


def test_bad_settings_are_named() -> None:
    with pytest.raises(ValueError, match="tenant"):
        RedisStore("redis://127.0.0.1:1/0", tenant="a b")
    with pytest.raises(ValueError, match="ttl_s"):
        RedisStore("redis://127.0.0.1:1/0", ttl_s=0)
    with pytest.raises(ValueError, match="max_bytes"):
        open_store("redis://127.0.0.1:1/0?max_bytes=lots")
    with pytest.raises(ValueError, match="scheme"):
        open_store("s3://bucket/chunks")
    with pytest.raises(redis.RedisError):
        redis.Redis.from_url("redis://127.0.0.1:1/0", socket_connect_timeout=0.2).ping()


def test_open_store_schemes(tmp_path: Path, redis_url: str) -> None:
    from ragcompress.kv.store.memory import MemoryStore

    assert isinstance(open_store("memory://?max_bytes=1000"), MemoryStore)
    assert isinstance(open_store(f"file://{tmp_path}/a"), DiskStore)
    assert isinstance(open_store(str(tmp_path / "b")), DiskStore)
    assert isinstance(open_store(redis_url.replace("redis://", "REDIS://")), RedisStore)
    with pytest.raises(TypeError, match="open one per process"):
        import pickle

        pickle.dumps(open_store(redis_url))
