"""The one LRU policy (ragcompress.lru.ByteLRU) that every in-memory cache uses."""

from __future__ import annotations

import pytest

from ragcompress.lru import ByteLRU


def _lru(max_bytes: int, max_entries: int | None = None) -> ByteLRU[str, bytes]:
    return ByteLRU(max_bytes, len, max_entries)


def test_evicts_least_recently_used_until_the_bytes_fit() -> None:
    lru = _lru(10)
    assert lru.put("a", b"xxxx") == 0 and lru.put("b", b"xxxx") == 0
    assert lru.get("a") == b"xxxx"  # a is now the most recent; b is the LRU
    assert lru.put("c", b"xxxx") == 1
    assert "b" not in lru and "a" in lru and "c" in lru
    assert lru.nbytes == 8 <= lru.max_bytes and lru.evictions == 1


def test_peek_does_not_count_as_a_use() -> None:
    lru = _lru(8)
    lru.put("a", b"xxxx")
    lru.put("b", b"xxxx")
    assert lru.peek("a") == b"xxxx"
    lru.put("c", b"xxxx")
    assert "a" not in lru and "b" in lru


def test_entry_bound_and_replacing_a_value_updates_the_bytes() -> None:
    lru = _lru(100, max_entries=2)
    lru.put("a", b"x")
    lru.put("b", b"x")
    lru.put("a", b"xxxxx")  # replaced, not added: nothing evicted, bytes follow the new value
    assert len(lru) == 2 and lru.nbytes == 6 and lru.evictions == 0
    lru.put("c", b"x")
    assert "b" not in lru and len(lru) == 2


def test_a_value_larger_than_the_budget_is_not_kept_and_drops_the_old_one() -> None:
    lru = _lru(4)
    lru.put("a", b"xx")
    assert lru.put("a", b"xxxxx") == 0
    assert "a" not in lru and lru.nbytes == 0 and lru.get("a") is None  # never the stale value
    assert lru.pop("a") is None


def test_zero_entries_keeps_nothing_and_bad_bounds_are_refused() -> None:
    lru = _lru(100, max_entries=0)
    lru.put("a", b"x")
    assert len(lru) == 0
    with pytest.raises(ValueError, match="max_bytes"):
        _lru(-1)
    with pytest.raises(ValueError, match="max_entries"):
        _lru(10, max_entries=-1)


def test_pop_and_clear() -> None:
    lru = _lru(10)
    lru.put("a", b"xx")
    lru.put("b", b"xxx")
    assert lru.pop("a") == b"xx" and lru.nbytes == 3
    lru.clear()
    assert len(lru) == 0 and lru.nbytes == 0
