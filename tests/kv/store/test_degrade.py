"""Degrade, don't fail: a tier that cannot read is a miss, one that cannot write is logged and
skipped, and a dead tier is skipped by its circuit breaker instead of costing its retries on
every chunk of every request (issue #13, item 5)."""

from __future__ import annotations

import logging
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from ragcompress.kv.cache import ChunkCache
from ragcompress.kv.store.base import ChunkStore
from ragcompress.kv.store.breaker import CircuitBreaker, CircuitOpenError
from ragcompress.kv.store.disk import DiskStore
from ragcompress.kv.store.errors import StoreUnavailableError
from ragcompress.kv.store.memory import MemoryStore
from ragcompress.kv.store.redis import RedisStore
from ragcompress.kv.store.tiered import TieredStore
from tests.support.redis_local import free_port
from tests.support.tiny import chunks_close


class FakeClock:
    """Time that moves only when the test says so: back-off periods without sleeping."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def _dead_redis() -> RedisStore:
    """A RedisStore pointing at a loopback port nothing listens on (connection refused)."""
    return RedisStore(f"redis://127.0.0.1:{free_port()}/0", retries=1, backoff_s=0.001, timeout_s=2.0)


# The tiered store, built with a front tier too small to keep anything (every lookup reaches
# the back tier) over ``back``; returns (store, the back tier's breaker). A table, so that the
# tests also run on the bare back tier where that makes sense.
def _tiered(back: ChunkStore, breaker: CircuitBreaker) -> tuple[ChunkStore, CircuitBreaker]:
    store = TieredStore([("front", MemoryStore(1)), ("back", back)], breaker=breaker)
    return store, store.breakers["back"]


BUILDERS: dict[str, Callable[[ChunkStore, CircuitBreaker], tuple[ChunkStore, CircuitBreaker]]] = {
    "TieredStore": _tiered,
}


def _failing() -> None:
    raise ConnectionRefusedError("nothing listens")


def test_breaker_opens_backs_off_exponentially_and_closes() -> None:
    clock = FakeClock()
    breaker = CircuitBreaker(
        failures=2, backoff_s=10.0, max_backoff_s=30.0, growth=2.0, clock=clock, name="t"
    )
    for _ in range(2):
        with pytest.raises(StoreUnavailableError, match="ConnectionRefusedError"):
            breaker.call(_failing)
    assert (breaker.state, breaker.calls, breaker.failed, breaker.opened) == ("open", 2, 2, 1)
    tried = []
    with pytest.raises(CircuitOpenError):
        breaker.call(lambda: tried.append(1))
    assert not tried and breaker.skipped == 1
    # Back-offs: 10 s, then 20 s after a failed probe, then capped at 30 s.
    for period in (10.0, 20.0, 30.0, 30.0):
        clock.advance(period - 0.5)
        assert breaker.state == "open" and not breaker.allow()
        clock.advance(0.5)
        assert breaker.state == "half-open"
        assert breaker.allow()  # the probe
        assert not breaker.allow()  # one probe at a time
        breaker.failed_now("still down")
    clock.advance(30.0)
    assert breaker.call(lambda: "up") == "up"
    assert breaker.state == "closed" and breaker.retry_in_s == 0.0
    with pytest.raises(StoreUnavailableError):  # closed again: the count starts over
        breaker.call(_failing)
    assert breaker.state == "closed"
    with pytest.raises(StoreUnavailableError):
        breaker.call(_failing)
    assert breaker.state == "open" and breaker.retry_in_s == pytest.approx(10.0)  # reset to the base


def test_breaker_bugs_propagate_and_do_not_hold_the_probe() -> None:
    clock = FakeClock()
    breaker = CircuitBreaker(failures=1, backoff_s=1.0, clock=clock)
    with pytest.raises(StoreUnavailableError):
        breaker.call(_failing)
    clock.advance(1.0)

    def bug() -> None:
        raise ValueError("a caller's bug, not the tier's")

    with pytest.raises(ValueError, match="caller's bug"):
        breaker.call(bug)
    assert breaker.allow()  # the probe slot was given back


@pytest.mark.parametrize(
    ("field", "value"),
    [("failures", 0), ("backoff_s", 0.0), ("max_backoff_s", 0.5), ("growth", 0.5)],
)
def test_breaker_settings_are_checked(field: str, value: float) -> None:
    with pytest.raises(ValueError, match=field):
        CircuitBreaker(**{field: value})  # type: ignore[arg-type]


@pytest.mark.parametrize("builder", sorted(BUILDERS))
def test_dead_redis_tier_is_skipped_and_every_request_answered(
    builder: str, encoder: Any, passages: list[str]
) -> None:
    clock = FakeClock()
    dead = _dead_redis()
    store, breaker = BUILDERS[builder](dead, CircuitBreaker(failures=3, backoff_s=10.0, clock=clock))
    cache = ChunkCache(encoder, store)
    corpus = [*passages, *(f"{p} Again." for p in passages)]
    reference = {p: c for p, c in zip(corpus, encoder.encode(corpus), strict=True)}

    def ask(i: int) -> None:
        sample = [corpus[i % len(corpus)], corpus[(i + 3) % len(corpus)]]
        chunks, _ = cache.get_or_encode(sample)
        assert all(chunks_close(c, reference[p]) for c, p in zip(chunks, sample, strict=True))

    for i in range(12):
        ask(i)
    # Three calls reached the dead server (the threshold); the breaker refused all the others.
    assert (breaker.calls, breaker.opened, breaker.state) == (3, 1, "open")
    assert dead.unavailable == 3 and breaker.skipped >= 12
    clock.advance(10.0)  # back-off over: one probe, which fails and doubles the back-off
    ask(0)
    assert (breaker.calls, breaker.opened, dead.unavailable) == (4, 2, 4)
    clock.advance(10.0)  # still inside the 20 s back-off
    ask(1)
    assert breaker.calls == 4
    clock.advance(10.0)
    ask(2)
    assert (breaker.calls, dead.unavailable) == (5, 5)


@pytest.mark.parametrize("builder", sorted(BUILDERS))
def test_redis_stopped_mid_run_then_probed_back(
    builder: str, redis_server: Any, redis_url: str, encoder: Any, passages: list[str]
) -> None:
    clock = FakeClock()
    remote = RedisStore(redis_url, retries=1, backoff_s=0.001)
    store, breaker = BUILDERS[builder](remote, CircuitBreaker(failures=3, backoff_s=5.0, clock=clock))
    cache = ChunkCache(encoder, store)
    reference = {p: c for p, c in zip(passages, encoder.encode(passages), strict=True)}
    chunks, stats = cache.get_or_encode(passages[:1])
    assert stats.encoded == 1 and remote.contains(chunks[0].key)
    before = breaker.calls
    redis_server.stop()
    try:
        for _ in range(4):
            chunks, _ = cache.get_or_encode(passages[:3])
            assert all(chunks_close(c, reference[p]) for c, p in zip(chunks, passages[:3], strict=True))
        assert breaker.calls - before == 3 and breaker.state == "open"
    finally:
        redis_server.start()
    # Back up, but the breaker still holds it off: the chunk is answered and not written there.
    chunks, _ = cache.get_or_encode(passages[3:4])
    assert not remote.contains(chunks[0].key) and breaker.calls - before == 3
    clock.advance(5.0)  # the probe finds the server again and closes the breaker
    chunks, _ = cache.get_or_encode(passages[3:4])
    assert breaker.state == "closed" and remote.contains(chunks[0].key)
    assert chunks_close(chunks[0], reference[passages[3]])


def _broken_disk(tmp_path: Path) -> DiskStore:
    """A disk store whose directory was replaced by a file after it opened: every read and
    write under it fails with an OSError (as root, unlike a read-only mode)."""
    disk = DiskStore(tmp_path / "chunks")
    shutil.rmtree(tmp_path / "chunks")
    (tmp_path / "chunks").write_text("not a directory any more")
    return disk


@pytest.mark.parametrize("builder", [*sorted(BUILDERS), "bare"])
def test_failed_write_is_logged_and_the_request_answered(
    builder: str, tmp_path: Path, encoder: Any, passages: list[str], caplog: pytest.LogCaptureFixture
) -> None:
    disk = _broken_disk(tmp_path)
    if builder == "bare":
        store: ChunkStore = disk
    else:
        store, _ = BUILDERS[builder](disk, CircuitBreaker())
    reference = encoder.encode(passages[:2])
    with caplog.at_level(logging.WARNING, logger="ragcompress"):
        chunks, stats = ChunkCache(encoder, store).get_or_encode(passages[:2])
    assert stats.encoded == 2 and all(chunks_close(c, r) for c, r in zip(chunks, reference, strict=True))
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    needle = "DiskStore" if builder == "bare" else "'back': write failed"
    assert any(needle in w and "Error" in w for w in warnings), warnings


def test_tiered_store_put_no_longer_raises(tmp_path: Path, chunks: list[Any], same: Any) -> None:
    store = TieredStore([("front", MemoryStore(1 << 24)), ("back", _broken_disk(tmp_path))])
    store.put(chunks[0].key, chunks[0])  # the back tier fails; the front keeps it
    found = store.lookup(chunks[0].key).chunk
    assert found is not None and same(found, chunks[0])
    assert store.breakers["back"].failed >= 1 and store.breakers["front"].failed == 0
