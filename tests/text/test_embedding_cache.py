"""The embedding cache on its own: LRU bounds, disk tier format, no wrong hits."""

from __future__ import annotations

import numpy as np
import pytest

from ragcompress.text.embedding import EmbeddingCache


def _arr(rows: int, value: float = 1.0) -> np.ndarray:
    return np.full((rows, 4), value, dtype=np.float32)  # 16 bytes per row


def test_lru_bounded_by_entries_keeps_the_recently_used():
    cache = EmbeddingCache(max_entries=2)
    cache.put("a", _arr(1))
    cache.put("b", _arr(1))
    assert cache.get("a", 1) is not None  # a is now the most recent
    cache.put("c", _arr(1))
    assert cache.get("b", 1) is None and cache.get("a", 1) is not None and len(cache) == 2


def test_lru_bounded_by_bytes():
    cache = EmbeddingCache(max_entries=100, max_bytes=100)
    for key in "abcdef":
        cache.put(key, _arr(2))  # 32 bytes each: at most 3 fit
    assert len(cache) == 3 and cache.get("a", 2) is None and cache.get("f", 2) is not None
    cache.put("huge", _arr(10))  # larger than the whole budget: not kept in memory
    assert cache.get("huge", 10) is None and len(cache) == 3


def test_disk_tier_round_trips_and_rejects_wrong_shapes(tmp_path):
    cache = EmbeddingCache(max_entries=0, directory=str(tmp_path))  # disk only
    cache.put("k1", _arr(3, 0.5))
    np.testing.assert_array_equal(cache.get("k1", 3), _arr(3, 0.5))
    assert cache.get("k1", 4) is None  # a row count that does not match is a miss
    (tmp_path / "k2").mkdir()  # entries live under a folder named by the key's first 2 chars
    np.save(tmp_path / "k2" / "k2.npy", np.zeros((3, 4), dtype=np.float64))
    assert cache.get("k2", 3) is None  # wrong dtype: a miss
    assert not list(tmp_path.rglob("*.tmp"))


def test_object_arrays_are_never_unpickled(tmp_path):
    cache = EmbeddingCache(directory=str(tmp_path))
    path = tmp_path / "ev" / "evil.npy"
    path.parent.mkdir()
    np.save(path, np.array([{"x": 1}], dtype=object), allow_pickle=True)
    assert cache.get("evil", 1) is None


def test_negative_bounds_are_rejected():
    with pytest.raises(ValueError, match="bounds"):
        EmbeddingCache(max_entries=-1)
