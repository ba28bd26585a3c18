"""StoreSpec: the tiered store users build (GPU → host → disk → Redis). Promotion through all
four tiers, each byte budget, a dead tier, validation errors that name the field."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
import torch

from ragcompress.kv.cache import ChunkCache
from ragcompress.kv.store.disk import DiskStore
from ragcompress.kv.store.memory import MemoryStore
from ragcompress.kv.store.redis import RedisStore
from ragcompress.kv.store.spec import StoreSpec

# The GPU tier lives on the device given to build(): the GPU when there is one, else the CPU.
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def _four(redis_url: str, tmp_path: Path, chunk_bytes: int) -> Any:
    spec = StoreSpec(
        gpu_bytes=chunk_bytes,  # one chunk
        host_bytes=2 * chunk_bytes,  # two chunks
        disk_dir=str(tmp_path / "disk"),
        redis_url=redis_url + "?tenant=spec",
    )
    return spec.build(DEVICE)


def test_four_tiers_promote_and_respect_each_budget(
    redis_url: str, tmp_path: Path, chunks: list[Any], same: Any
) -> None:
    size = max(c.nbytes for c in chunks)
    store = _four(redis_url, tmp_path, size)
    assert [name for name, _ in store.tiers] == ["gpu", "host", "disk", "redis"]
    gpu, host, disk, redis = (tier for _, tier in store.tiers)
    assert isinstance(gpu, MemoryStore) and isinstance(host, MemoryStore)
    assert isinstance(disk, DiskStore) and isinstance(redis, RedisStore) and redis.tenant == "spec"

    redis.put(chunks[0].key, chunks[0])  # written by another process: only Redis has it
    found = store.lookup(chunks[0].key).chunk
    assert found is not None and same(found, chunks[0])
    assert found.token_ids.device.type == DEVICE  # the GPU tier's copy is the one returned
    assert all(t.contains(chunks[0].key) for _, t in store.tiers)  # promoted into every tier
    assert store.tier_stats()["redis"]["hits"] == 1

    for c in chunks[1:]:
        store.put(c.key, c)  # written through to every tier: the memory tiers evict
    assert gpu.nbytes <= size and len(gpu) == 1
    assert host.nbytes <= 2 * size and len(host) == 2
    assert len(disk) == len(chunks) and len(redis) == len(chunks)
    assert gpu.stats.evictions >= 1 and host.stats.evictions >= 1

    # chunk 0 left both memory tiers: the next lookup is a disk hit, promoted again
    assert not gpu.contains(chunks[0].key) and not host.contains(chunks[0].key)
    again = store.lookup(chunks[0].key).chunk
    assert again is not None and same(again, chunks[0])
    assert store.tier_stats()["disk"]["hits"] == 1 and gpu.contains(chunks[0].key)
    assert gpu.nbytes <= size and host.nbytes <= 2 * size


def test_a_dead_tier_is_skipped_and_answers_stay_right(
    redis_server: Any, redis_url: str, tmp_path: Path, encoder: Any, passages: list[str], same: Any
) -> None:
    store = _four(redis_url, tmp_path, 1 << 24)
    cache = ChunkCache(encoder, store)
    first, stats = cache.get_or_encode(passages[:2])
    assert stats.encoded == 2
    redis_server.stop()
    try:
        for name in ("gpu", "host"):  # only disk and the dead Redis behind it hold the chunks
            store.tier(name).remove(first[0].key)
        got, stats = cache.get_or_encode(passages[:2])
        assert stats.encoded == 0 and all(same(a, b) for a, b in zip(got, first, strict=True))
        new, stats = cache.get_or_encode(passages[2:3])  # a miss everywhere: encoded, written
        assert stats.encoded == 1 and store.tier("disk").contains(new[0].key)
        assert store.tier_stats()["redis"]["unavailable"] >= 1
    finally:
        redis_server.start()


def test_from_dict_round_trips_and_rejects_unknown_keys(tmp_path: Path) -> None:
    spec = StoreSpec(gpu_bytes=1 << 20, host_bytes=1 << 21, disk_dir=tmp_path, disk_bytes=1 << 30)
    assert spec.disk_dir == str(tmp_path)  # a Path is kept as its string
    assert StoreSpec.from_dict(spec.to_dict()) == spec
    with pytest.raises(ValueError, match="cache_dirr"):
        StoreSpec.from_dict({"cache_dirr": "x"})
    built = spec.build("cpu")
    assert [n for n, _ in built.tiers] == ["gpu", "host", "disk"]
    assert built.tier("disk").max_bytes == 1 << 30  # type: ignore[attr-defined]


def test_secret_and_password_stay_out_of_repr_and_dict() -> None:
    spec = StoreSpec(redis_url="redis://:hunter2@127.0.0.1:1/0", secret="a-shared-secret")
    shown = repr(spec)
    assert "hunter2" not in shown and "a-shared-secret" not in shown and "127.0.0.1" in shown
    assert "secret" not in spec.to_dict()


def test_the_secret_signs_the_shared_tiers(tmp_path: Path, redis_url: str) -> None:
    store = StoreSpec(disk_dir=tmp_path, redis_url=redis_url, secret="s" * 32).build("cpu")
    assert all(store.tier(n).signer is not None for n in ("disk", "redis"))  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("settings", "field"),
    [
        ({"gpu_bytes": "2GiB"}, "gpu_bytes"),
        ({"gpu_bytes": 0}, "gpu_bytes"),
        ({"host_bytes": -1}, "host_bytes"),
        ({"host_bytes": True}, "host_bytes"),
        ({"disk_dir": "d", "disk_bytes": 1.5}, "disk_bytes"),
        ({"disk_bytes": 100}, "disk_bytes"),  # a cap without a directory
        ({"disk_dir": ""}, "disk_dir"),
        ({"disk_dir": 3}, "disk_dir"),
        ({"redis_url": "http://127.0.0.1:6379"}, "redis_url"),
        ({"redis_url": "/tmp/chunks"}, "redis_url"),
        ({"redis_url": "redis://127.0.0.1/0", "tenant": "a b"}, "tenant"),
        ({"tenant": "acme"}, "tenant"),  # a tenant without Redis
        ({"secret": ""}, "secret"),
        ({"gpu_bytes": None}, "no tier"),
    ],
)
def test_validation_errors_name_the_field(settings: dict[str, Any], field: str) -> None:
    with pytest.raises(ValueError, match=field):
        StoreSpec(**settings)


def test_from_generator_builds_the_spec(generator: Any, tmp_path: Path) -> None:
    from ragcompress.kv.answer import KVAnswerer
    from ragcompress.kv.store.tiered import TieredStore

    kv = KVAnswerer.from_generator(generator, cache_dir=tmp_path / "c", memory_bytes=1 << 24)
    store = kv.cache.store
    assert isinstance(store, TieredStore) and [n for n, _ in store.tiers] == ["gpu", "disk"]
    assert store.tier("gpu").max_bytes == 1 << 24  # type: ignore[attr-defined]
    spec = StoreSpec(gpu_bytes=1 << 24, host_bytes=1 << 24)
    kv = KVAnswerer.from_generator(generator, store=spec)
    assert [n for n, _ in kv.cache.store.tiers] == ["gpu", "host"]  # type: ignore[attr-defined]
    with pytest.raises(ValueError, match="memory_bytes"):
        KVAnswerer.from_generator(generator, memory_bytes=0)
    with pytest.raises(ValueError, match="not both"):
        KVAnswerer.from_generator(generator, store=spec, cache_dir=os.fspath(tmp_path))


def test_a_single_url_stands_for_the_mapping_that_names_it(tmp_path: Path) -> None:
    """``kv.store: URL`` and ``kv.store: {redis_url: URL}`` (or ``{disk_dir: DIR}``) are one store:
    a memory tier of the same default budget in front of the shared one."""
    url = "redis://127.0.0.1:1/0?tenant=acme&ttl_s=60"  # nothing listens: nothing is opened here
    disk = str(tmp_path / "chunks")
    assert StoreSpec.from_url(url) == StoreSpec.from_dict({"redis_url": url})
    assert StoreSpec.from_url(disk) == StoreSpec.from_dict({"disk_dir": disk})
    assert StoreSpec.from_url(f"file://{disk}") == StoreSpec.from_dict({"disk_dir": disk})
    assert StoreSpec.from_url(url).tier_names() == ["gpu", "redis"]
    assert StoreSpec.from_url(url).gpu_bytes == StoreSpec().gpu_bytes == 2 << 30
    # memory:// is the memory tier itself, of its own budget or the default one
    assert StoreSpec.from_url("memory://?max_bytes=4096") == StoreSpec(gpu_bytes=4096)
    assert StoreSpec.from_url("memory://", gpu_bytes=1 << 20) == StoreSpec(gpu_bytes=1 << 20)
    # without the memory tier: the shared store alone (a tiered store of one tier)
    alone = StoreSpec.from_url(url, gpu_bytes=None).build("cpu")
    assert [n for n, _ in alone.tiers] == ["redis"] and alone.tier("redis").tenant == "acme"  # type: ignore[attr-defined]


def test_a_url_that_is_no_tier_is_refused_with_the_way_out(monkeypatch: pytest.MonkeyPatch) -> None:
    from ragcompress.kv.store import open as store_open

    monkeypatch.setitem(store_open._SCHEMES, "blob", lambda url, tenant, secret, device: MemoryStore(1))
    with pytest.raises(ValueError, match=r"'blob'.*open_store"):
        StoreSpec.from_url("blob://bucket/chunks")
    for bad, message in (("", "non-empty"), ("file://host/x", "names the host"), ("nosuch://x", "nosuch")):
        with pytest.raises(ValueError, match=message):
            StoreSpec.from_url(bad)


def test_a_store_url_in_the_pipeline_gets_the_mappings_memory_tier(
    generator: Any, redis_url: str, passages: list[str]
) -> None:
    from ragcompress.pipeline import KVSpec

    by_url, by_map = (KVSpec(store=s).build(generator) for s in (redis_url, {"redis_url": redis_url}))
    for kv in (by_url, by_map):
        assert [n for n, _ in kv.cache.store.tiers] == ["gpu", "redis"]
        assert kv.cache.store.tier("gpu").max_bytes == 2 << 30
        assert kv.cache.store.tier("gpu").device.type == generator.lm.device.type
    # memory_bytes sizes the memory tier of both forms; a mapping's own gpu_bytes wins
    for store in (redis_url, {"redis_url": redis_url}):
        assert (
            KVSpec(store=store, memory_bytes=1 << 20).build(generator).cache.store.tier("gpu").max_bytes
            == 1 << 20
        )
    own = KVSpec(store={"redis_url": redis_url, "gpu_bytes": 1 << 21}, memory_bytes=1 << 20).build(generator)
    assert own.cache.store.tier("gpu").max_bytes == 1 << 21
    alone = KVSpec(store={"redis_url": redis_url, "gpu_bytes": None}).build(generator)
    assert [n for n, _ in alone.cache.store.tiers] == ["redis"]

    # what the memory tier is for: a repeated passage is served from memory, Redis is not asked
    store = by_url.cache.store
    _, stats = by_url.cache.get_or_encode(passages[:2])
    assert stats.encoded == 2
    _, stats = by_url.cache.get_or_encode(passages[:2])
    assert stats.encoded == 0
    tiers = store.tier_stats()
    assert tiers["gpu"]["hits"] == 2 and tiers["redis"]["hits"] == 0
    assert len(store.tier("redis")) == 2  # written through for the other processes
