"""The one least-recently-used policy of the package: a map bounded in bytes (and optionally in
entries), used by every in-memory cache (the chunk store's memory tiers, the embedding cache).

It lives at the top of the package because both ``ragcompress.kv`` and ``ragcompress.text``
use it and ``text`` must not import ``kv``.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable
from typing import Generic, TypeVar

__all__ = ["ByteLRU"]

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class ByteLRU(Generic[K, V]):
    """At most ``max_bytes`` of values (each weighing ``size(value)`` bytes) and, when
    ``max_entries`` is given, at most that many; a put evicts the least recently used values
    until both bounds hold. ``get`` counts as a use, ``peek`` does not. Thread-safe.

    A value heavier than the whole budget (or any value when ``max_entries`` is 0) is not kept,
    and the value it would have replaced is dropped too: the map never answers with a value
    older than the last one put under its key.
    """

    def __init__(self, max_bytes: int, size: Callable[[V], int], max_entries: int | None = None) -> None:
        if not isinstance(max_bytes, int) or max_bytes < 0:
            raise ValueError(f"max_bytes must be an integer >= 0, got {max_bytes!r}")
        if max_entries is not None and (not isinstance(max_entries, int) or max_entries < 0):
            raise ValueError(f"max_entries must be an integer >= 0 or None, got {max_entries!r}")
        self.max_bytes = max_bytes
        self.max_entries = max_entries
        self.evictions = 0  # values dropped to make room (not those replaced or refused)
        self._size = size
        self._items: OrderedDict[K, tuple[V, int]] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()

    @property
    def nbytes(self) -> int:
        """Bytes of the values held now."""
        return self._bytes

    def __len__(self) -> int:
        return len(self._items)

    def __contains__(self, key: object) -> bool:
        return key in self._items

    def get(self, key: K) -> V | None:
        """The value under ``key`` (now the most recently used), or None."""
        with self._lock:
            item = self._items.get(key)
            if item is None:
                return None
            self._items.move_to_end(key)
            return item[0]

    def peek(self, key: K) -> V | None:
        """The value under ``key`` without marking it used."""
        item = self._items.get(key)
        return None if item is None else item[0]

    def put(self, key: K, value: V) -> int:
        """Keep ``value`` under ``key`` as the most recently used; returns how many other values
        were evicted to make room (``key in lru`` tells whether it was kept)."""
        size = int(self._size(value))
        with self._lock:
            self._drop(key)
            if size > self.max_bytes or self.max_entries == 0:
                return 0
            self._items[key] = (value, size)
            self._bytes += size
            evicted = 0
            while self._bytes > self.max_bytes or (
                self.max_entries is not None and len(self._items) > self.max_entries
            ):
                _, (_, gone) = self._items.popitem(last=False)
                self._bytes -= gone
                evicted += 1
            self.evictions += evicted
            return evicted

    def pop(self, key: K) -> V | None:
        """Remove and return the value under ``key`` (None when there is none)."""
        with self._lock:
            item = self._items.get(key)
            self._drop(key)
            return None if item is None else item[0]

    def _drop(self, key: K) -> None:
        item = self._items.pop(key, None)
        if item is not None:
            self._bytes -= item[1]

    def clear(self) -> None:
        with self._lock:
            self._items.clear()
            self._bytes = 0
