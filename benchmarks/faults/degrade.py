"""(5) Degrade, don't fail: a tier that cannot be written is logged and the request answered; a
dead tier (a stopped Redis, a port that drops every connection, a closed port) is skipped by its
circuit breaker: connection attempts stop growing with the requests."""

from __future__ import annotations

import shutil
import socket
import threading
from collections.abc import Callable
from functools import partial
from typing import Any

from benchmarks.faults.common import Env, Tally, same_chunk
from tests.support.faults import Outcome

__all__ = ["CountingPort", "degrade"]


class CountingPort:
    """A loopback port that accepts every connection and closes it at once, counting them: a
    Redis that is "up" at the TCP level but answers nothing (a crashed proxy)."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.port = int(self.sock.getsockname()[1])
        self.accepted = 0
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return  # closed
            self.accepted += 1
            conn.close()

    def close(self) -> None:
        self.sock.close()


def _ask(env: Env, cache: Any, passages: list[str]) -> str | None:
    got, _ = cache.get_or_encode(passages)
    want = env.encoder.encode(passages)
    bad = sum(not same_chunk(a, b) for a, b in zip(got, want, strict=True))
    return f"{bad} WRONG chunk(s)" if bad else None


def _broken_disk(env: Env) -> Any:
    """A disk store whose directory was replaced by a file after it opened: writes fail."""
    from ragcompress.kv.store.disk import DiskStore

    root = env.fresh("broken")
    disk = DiskStore(root)
    shutil.rmtree(root)
    root.write_text("not a directory any more")
    return disk


def _failed_write(env: Env, build: Callable[[Any], Any]) -> str | None:
    from ragcompress.kv.cache import ChunkCache

    cache = ChunkCache(env.encoder, build(_broken_disk(env)))
    for i in range(3):
        if problem := _ask(env, cache, env.passages[i : i + 2]):
            return problem
    return None


def _builders() -> dict[str, Callable[[Any], Any]]:
    from ragcompress.kv.store.memory import MemoryStore
    from ragcompress.kv.store.tiered import TieredStore

    return {
        "bare disk": lambda back: back,
        "TieredStore(memory, disk)": lambda back: TieredStore(
            [("memory", MemoryStore(1 << 26)), ("back", back)]
        ),
        "TieredStore(tiny host, disk)": lambda back: TieredStore(
            [("host", MemoryStore(1, "cpu")), ("back", back)]
        ),
    }


def _dead_tier(
    env: Env, url: str, count: Callable[[Any], int], requests: int
) -> tuple[str | None, dict[str, Any]]:
    """``requests`` requests over host (too small to keep anything) + Redis at ``url``, then as
    many again: in the second half ``count(remote)`` (connection attempts, failed calls) must grow
    by less than one per request: only the breaker's probes reach the tier, where without a
    breaker every chunk pays a lookup and a write, each with its retries."""
    from ragcompress.kv.cache import ChunkCache
    from ragcompress.kv.store.memory import MemoryStore
    from ragcompress.kv.store.redis import RedisStore
    from ragcompress.kv.store.tiered import TieredStore

    remote = RedisStore(url, tenant=env.tenant("dead"), retries=1, backoff_s=0.01, timeout_s=1.0)
    store = TieredStore([("host", MemoryStore(1, "cpu")), ("remote", remote)])
    cache = ChunkCache(env.encoder, store)
    corpus = [f"{p} (dead tier)" for p in env.passages]
    marks = []
    for _ in range(2):
        for i in range(requests):
            if problem := _ask(env, cache, [corpus[i % len(corpus)], corpus[(i + 3) % len(corpus)]]):
                return problem, {}
        marks.append(count(remote))
    breaker = getattr(store, "breakers", {}).get("remote")
    info = {"attempts_first_half": marks[0], "attempts_second_half": marks[1] - marks[0]}
    if breaker is not None:
        info["breaker"] = breaker.state
    if marks[1] - marks[0] >= requests:
        return f"the dead tier was not skipped: {info}", info
    return None, info


def _redis_killed(env: Env, requests: int) -> str | None:
    """Redis stopped mid-run behind a host tier: every request answered, then back after a restart."""
    from ragcompress.kv.cache import ChunkCache
    from ragcompress.kv.store.memory import MemoryStore
    from ragcompress.kv.store.redis import RedisStore
    from ragcompress.kv.store.tiered import TieredStore

    remote = RedisStore(env.redis.url, tenant=env.tenant("killed"), retries=1, backoff_s=0.01)
    cache = ChunkCache(env.encoder, TieredStore([("host", MemoryStore(1, "cpu")), ("remote", remote)]))
    corpus = [f"{p} (killed)" for p in env.passages]
    try:
        for i in range(requests):
            if i == requests // 3:
                env.redis.stop()
            if problem := _ask(env, cache, [corpus[i % len(corpus)]]):
                return f"request {i}: {problem}"
    finally:
        env.redis.start()
    return None


def degrade(env: Env) -> Outcome:
    from tests.support.redis_local import free_port

    tally = Tally("(5) failed writes answered, dead tier skipped")
    for name, build in _builders().items():
        tally.run(f"failed write answered: {name}", partial(_failed_write, env, build))
    requests = 4 if env.quick else 12
    tally.run("Redis killed mid-run: answered", lambda: _redis_killed(env, requests))
    details: dict[str, Any] = {}
    port = CountingPort()
    try:

        def dropping() -> str | None:
            problem, details["dropping_port"] = _dead_tier(
                env, f"redis://127.0.0.1:{port.port}/0", lambda _: port.accepted, requests
            )
            return problem

        tally.run("port dropping connections: skipped", dropping)
    finally:
        port.close()

    def closed() -> str | None:  # nothing listens: count the calls that failed on the store
        problem, details["closed_port"] = _dead_tier(
            env, f"redis://127.0.0.1:{free_port()}/0", lambda remote: int(remote.unavailable), requests
        )
        return problem

    tally.run("closed port: skipped", closed)
    return tally.done(**details)
