"""Leases on chunks being encoded, so that processes sharing a store encode each chunk once.

A process that misses a chunk takes its lease before encoding it; another process that misses
the same chunk finds the lease taken and waits for the chunk to appear in the store instead of
encoding it too (:class:`~ragcompress.kv.cache.ChunkCache` does the waiting). Every lease has a
deadline: a holder that dies (killed, out of memory, a lost host) blocks nobody for longer
than the lease's time to live. Leases only save work: a lease broken or taken twice costs a
duplicate encode, never a wrong chunk (puts are atomic and chunks are checked on read).

- :class:`DiskLeases`: lock files under ``<cache dir>/.leases/`` holding a token and a wall-clock
  deadline (processes on one host, or hosts sharing a filesystem with synchronised clocks).
- :class:`RedisLeases`: ``SET key token NX PX ttl``, released by a script that deletes the key
  only while it still holds this token (the pattern Redis documents for a single-instance lock).
- :class:`FirstAvailable`: the leases of several tiers, each behind its tier's circuit breaker,
  the first that answers wins (tiered stores: the most widely shared tier first).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import secrets
import time
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

from ragcompress.kv.store.errors import StoreUnavailableError

if TYPE_CHECKING:
    from ragcompress.kv.key import ChunkKey
    from ragcompress.kv.store.base import ChunkStore
    from ragcompress.kv.store.breaker import CircuitBreaker
    from ragcompress.kv.store.redis import RedisStore

__all__ = ["DiskLeases", "FirstAvailable", "Lease", "Leases", "RedisLeases", "new_token", "tier_leases"]

log = logging.getLogger(__name__)


def new_token() -> str:
    """A lease holder's token: random, with the pid to help whoever reads a stuck lock file."""
    return f"{os.getpid()}-{secrets.token_hex(12)}"


@dataclass(frozen=True)
class Lease:
    """A held lease on the chunk ``digest``; ``release()`` gives it back (once is enough)."""

    key: ChunkKey
    token: str
    backend: Leases

    def release(self) -> None:
        self.backend.release(self)


class Leases(ABC):
    """Where leases live. ``acquire`` never blocks: it returns None when another holder has an
    unexpired lease, and raises :class:`~ragcompress.kv.store.errors.StoreUnavailableError` (or
    ``OSError``) when it cannot tell."""

    @abstractmethod
    def acquire(self, key: ChunkKey, ttl_s: float) -> Lease | None: ...

    @abstractmethod
    def release(self, lease: Lease) -> None:
        """Drop ``lease`` if it is still held under its token (an expired one taken over by
        another holder is left to that holder)."""


class DiskLeases(Leases):
    """Lock files ``<directory>/.leases/<digest>.lock``: JSON with the token and the deadline
    (seconds since the epoch). An expired lock is broken by renaming it aside first, so that two
    processes breaking it at once cannot both delete a fresh lock that replaced it."""

    def __init__(self, directory: str | os.PathLike[str]) -> None:
        self.directory = Path(directory) / ".leases"

    def path(self, key: ChunkKey) -> Path:
        return self.directory / f"{key.digest}.lock"

    def acquire(self, key: ChunkKey, ttl_s: float) -> Lease | None:
        path, token = self.path(key), new_token()
        for _ in range(3):  # create; else break an expired lock and create again
            if self._create(path, token, ttl_s):
                return Lease(key, token, self)
            held = _read(path, ttl_s)
            if held is None:
                continue  # released in between
            holder, deadline = held
            if deadline > time.time():
                return None
            log.info("breaking an expired chunk lease %s (holder %s)", path.name, holder or "unknown")
            _take(path, holder, ttl_s)
        return None

    def _create(self, path: Path, token: str, ttl_s: float) -> bool:
        # A lease may be what recreates a deleted cache directory: create it (and the lease
        # folder, and the lock) private, as the disk store does, never with the default mode.
        self.directory.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        self.directory.mkdir(mode=0o700, exist_ok=True)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            return False
        # A reader may see the file before these bytes; it then dates the lock by its mtime.
        with os.fdopen(fd, "w") as f:
            json.dump({"token": token, "deadline": time.time() + ttl_s, "pid": os.getpid()}, f)
        return True

    def release(self, lease: Lease) -> None:
        _take(self.path(lease.key), lease.token, 0.0)


def _read(path: Path, ttl_s: float) -> tuple[str, float] | None:
    """(token, deadline) of the lock at ``path``; None when there is none. No lock holds
    longer than ``ttl_s`` after it was written (a deadline further out is a skewed clock or a
    planted file), and one that cannot be parsed (being written, or damaged) holds that long."""
    try:
        text = path.read_text()
        mtime = path.stat().st_mtime
    except FileNotFoundError:
        return None
    try:
        data = json.loads(text)
        return str(data["token"]), min(float(data["deadline"]), mtime + ttl_s)
    except (ValueError, KeyError, TypeError):
        return "", mtime + ttl_s


def _take(path: Path, token: str, ttl_s: float) -> bool:
    """Remove the lock at ``path`` if it holds ``token``; True when it did."""
    aside = path.with_name(f"{path.name}.{secrets.token_hex(6)}.gone")
    try:
        os.rename(path, aside)
    except FileNotFoundError:
        return False
    try:
        held = _read(aside, ttl_s)
        if held is not None and held[0] == token:
            return True
        # Someone else's lock: put it back unless a new one already took its place.
        with contextlib.suppress(OSError):
            os.link(aside, path)
        return False
    finally:
        aside.unlink(missing_ok=True)


class RedisLeases(Leases):
    """Leases as Redis keys beside the store's chunks (see :meth:`RedisStore.try_lease`)."""

    def __init__(self, store: RedisStore) -> None:
        self.store = store

    def acquire(self, key: ChunkKey, ttl_s: float) -> Lease | None:
        token = new_token()
        if self.store.try_lease(key, token, max(1, int(ttl_s * 1000))):
            return Lease(key, token, self)
        return None

    def release(self, lease: Lease) -> None:
        self.store.release_lease(lease.key, lease.token)


class _Guarded(Leases):
    """One tier's leases behind that tier's circuit breaker."""

    def __init__(self, name: str, inner: Leases, breaker: CircuitBreaker) -> None:
        self.name, self.inner, self.breaker = name, inner, breaker

    def acquire(self, key: ChunkKey, ttl_s: float) -> Lease | None:
        lease = self.breaker.call(lambda: self.inner.acquire(key, ttl_s), "lease")
        return None if lease is None else replace(lease, backend=self)

    def release(self, lease: Lease) -> None:
        self.breaker.call(lambda: self.inner.release(replace(lease, backend=self.inner)), "lease release")


class FirstAvailable(Leases):
    """``tiers``: (name, leases, breaker), most widely shared first. The first tier that answers
    decides; one that cannot answer (down, or its breaker open) is passed over."""

    def __init__(self, tiers: Sequence[tuple[str, Leases, CircuitBreaker]]) -> None:
        self.tiers = [_Guarded(name, leases, breaker) for name, leases, breaker in tiers]

    def acquire(self, key: ChunkKey, ttl_s: float) -> Lease | None:
        reasons = []
        for tier in self.tiers:
            try:
                return tier.acquire(key, ttl_s)
            except StoreUnavailableError as err:
                reasons.append(f"{tier.name}: {err}")
        raise StoreUnavailableError("no tier can hold a lease: " + "; ".join(reasons))

    def release(self, lease: Lease) -> None:
        lease.backend.release(lease)


def tier_leases(
    tiers: Sequence[tuple[str, ChunkStore]], breakers: Mapping[str, CircuitBreaker]
) -> Leases | None:
    """The leases of a tiered store: each shared tier's, most widely shared (the back, last in
    ``tiers``) first, each behind its breaker; None when no tier is shared (memory only), where
    the cache's per-key futures are enough."""
    found = [
        (name, leases, breakers[name])
        for name, tier in reversed(tiers)
        if (leases := tier.leases()) is not None
    ]
    return FirstAvailable(found) if found else None
