"""A chunk store on a Redis server, shared by every generator and indexer that points at it.

Values are the disk store's bytes (:func:`~ragcompress.kv.serialize.chunk_to_bytes`: safetensors
with the key, layer classes and a SHA-256 checksum in its header), or, with a shared secret,
those bytes in an HMAC envelope (:mod:`ragcompress.kv.store.integrity`). One ``SET`` writes a whole
value, so a reader sees the old value, the new one or none: never a torn chunk, even when the
writer dies mid-transfer (Redis drops a half-received command).

Keys are ``rc:{<namespace>:<tenant>}:<model hash>:<key digest>``: tenants and models never
share a key, and the braces keep a tenant's keys in one Redis Cluster slot so that the
size-policy script stays atomic there too. A sorted set (last access) and a hash (sizes) per
tenant drive the ``max_bytes`` LRU policy; ``ttl_s`` expires chunks not read for that long.
"""

from __future__ import annotations

import hashlib
import logging
import re
import time
from collections import Counter
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

from ragcompress.kv.serialize import ChunkFormatError, chunk_to_bytes
from ragcompress.kv.store.base import MISSING, ChunkStore, Lookup
from ragcompress.kv.store.errors import StoreUnavailableError, redact_url
from ragcompress.kv.store.integrity import IntegrityError, Signer, open_stored, resolve_secret

if TYPE_CHECKING:
    from ragcompress.kv.chunk import KVChunk
    from ragcompress.kv.key import ChunkKey
    from ragcompress.kv.store.lease import Leases

__all__ = ["RedisStore"]

log = logging.getLogger(__name__)
T = TypeVar("T")

_NAME = re.compile(r"^[A-Za-z0-9_.\-]{1,64}$")

# LRU scores come from a per-tenant counter, not the clock: two touches within one millisecond
# (or microsecond) must still be ordered, or the wrong chunk is evicted.
# KEYS: value, lru zset, sizes hash, bytes counter, lru clock. ARGV: value, ttl ms (0: none),
# max bytes (0: none).
# Returns the number of chunks evicted, or -1 when the value alone exceeds max bytes.
_PUT = """
local size = string.len(ARGV[1])
local max = tonumber(ARGV[3])
if max > 0 and size > max then return -1 end
local now = redis.call('INCR', KEYS[5])
local old = tonumber(redis.call('HGET', KEYS[3], KEYS[1]) or '0')
if tonumber(ARGV[2]) > 0 then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
else
  redis.call('SET', KEYS[1], ARGV[1])
end
redis.call('HSET', KEYS[3], KEYS[1], size)
redis.call('ZADD', KEYS[2], now, KEYS[1])
local total = redis.call('INCRBY', KEYS[4], size - old)
-- forget the bookkeeping of a few chunks that expired (TTL) or that Redis evicted itself
for _, k in ipairs(redis.call('ZRANGE', KEYS[2], 0, 3)) do
  if redis.call('EXISTS', k) == 0 then
    total = redis.call('DECRBY', KEYS[4], tonumber(redis.call('HGET', KEYS[3], k) or '0'))
    redis.call('ZREM', KEYS[2], k)
    redis.call('HDEL', KEYS[3], k)
  end
end
local evicted = 0
while max > 0 and total > max do
  local oldest = redis.call('ZRANGE', KEYS[2], 0, 0)[1]
  if not oldest or oldest == KEYS[1] then break end
  total = redis.call('DECRBY', KEYS[4], tonumber(redis.call('HGET', KEYS[3], oldest) or '0'))
  redis.call('DEL', oldest)
  redis.call('ZREM', KEYS[2], oldest)
  redis.call('HDEL', KEYS[3], oldest)
  evicted = evicted + 1
end
return evicted
"""

# KEYS: value, lru zset, lru clock. ARGV: ttl ms (0: none). GET and touch in one round trip.
_GET = """
local v = redis.call('GET', KEYS[1])
if v then
  redis.call('ZADD', KEYS[2], 'XX', redis.call('INCR', KEYS[3]), KEYS[1])
  if tonumber(ARGV[1]) > 0 then redis.call('PEXPIRE', KEYS[1], ARGV[1]) end
end
return v
"""

# KEYS: value, lru zset, sizes hash, bytes counter.
_REMOVE = """
local n = redis.call('DEL', KEYS[1])
redis.call('DECRBY', KEYS[4], tonumber(redis.call('HGET', KEYS[3], KEYS[1]) or '0'))
redis.call('ZREM', KEYS[2], KEYS[1])
redis.call('HDEL', KEYS[3], KEYS[1])
return n
"""

# KEYS: lease. ARGV: token. Delete the lease only while it is still ours: an expired lease may
# have been taken by another process since.
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


class RedisStore(ChunkStore):
    """Chunks in Redis under ``namespace`` and ``tenant``.

    ``url``: ``redis://[[user]:password@]host:port/db`` or ``rediss://…`` for TLS; other
    redis-py settings (``password``, ``ssl_ca_certs``, ``ssl_certfile``, ``socket_timeout`` …)
    pass through ``redis_kwargs``. ``ttl_s``: chunks not read for that long expire.
    ``max_bytes``: the tenant's byte budget, least recently used chunks evicted first.
    ``secret``: sign every chunk and accept only chunks signed with it (default: the
    ``RAGCOMPRESS_STORE_SECRET`` environment variable when set; without one, the chunk digest
    detects damage but not a forger who can write the server). Operations that
    cannot reach the server are tried ``retries + 1`` times with exponential backoff from
    ``backoff_s``, then raise :class:`~ragcompress.kv.store.errors.StoreUnavailableError`.
    """

    def __init__(
        self,
        url: str = "redis://127.0.0.1:6379/0",
        namespace: str = "ragcompress",
        tenant: str = "default",
        ttl_s: float | None = None,
        max_bytes: int | None = None,
        secret: bytes | str | None = None,
        device: str = "cpu",
        retries: int = 3,
        backoff_s: float = 0.05,
        timeout_s: float = 5.0,
        max_connections: int = 32,
        **redis_kwargs: Any,
    ) -> None:
        super().__init__()
        try:
            import redis
            from redis.backoff import NoBackoff
            from redis.retry import Retry
        except ModuleNotFoundError as err:
            raise ModuleNotFoundError(
                "RedisStore needs redis-py: pip install 'ragcompress-core[redis]'"
            ) from err
        for label, value in (("namespace", namespace), ("tenant", tenant)):
            if not isinstance(value, str) or not _NAME.fullmatch(value):
                raise ValueError(f"{label} {value!r} must be 1-64 characters of A-Z a-z 0-9 _ . -")
        if ttl_s is not None and ttl_s <= 0:
            raise ValueError(f"ttl_s must be positive, got {ttl_s}")
        if max_bytes is not None and max_bytes <= 0:
            raise ValueError(f"max_bytes must be positive, got {max_bytes}")
        if retries < 0:
            raise ValueError(f"retries must be >= 0, got {retries}")
        self.url = redact_url(url)
        self.namespace, self.tenant = namespace, tenant
        self.ttl_ms = int(ttl_s * 1000) if ttl_s else 0
        self.max_bytes = int(max_bytes) if max_bytes else 0
        self.device = device
        self.retries, self.backoff_s = retries, backoff_s
        secret = resolve_secret(secret)  # default: $RAGCOMPRESS_STORE_SECRET, as for every store
        self.signer = (
            Signer(secret, {"namespace": namespace, "tenant": tenant}) if secret is not None else None
        )
        # Retries are ours (counted, bounded, with a clear error): redis-py's own are off.
        self.pool = redis.ConnectionPool.from_url(
            url,
            max_connections=max_connections,
            socket_timeout=timeout_s,
            socket_connect_timeout=timeout_s,
            retry=Retry(NoBackoff(), 0),
            **redis_kwargs,
        )
        self.client = redis.Redis(connection_pool=self.pool)
        self._put = self.client.register_script(_PUT)
        self._get = self.client.register_script(_GET)
        self._remove = self.client.register_script(_REMOVE)
        self._release = self.client.register_script(_RELEASE)
        prefix = f"rc:{{{namespace}:{tenant}}}"
        self._prefix = prefix
        self._lru, self._sizes, self._bytes = f"{prefix}:lru", f"{prefix}:sizes", f"{prefix}:bytes"
        self._clock = f"{prefix}:clock"
        self.rejections: Counter[str] = Counter()  # integrity and format failures by reason
        self.unavailable = 0  # operations that gave up after the retries
        self.bytes_read = 0
        self.bytes_written = 0

    # -- keys ------------------------------------------------------------------------------
    def redis_key(self, key: ChunkKey) -> str:
        model = hashlib.sha256(key.model.encode()).hexdigest()[:16]
        return f"{self._prefix}:{model}:{key.digest}"

    def _keys(self, key: ChunkKey) -> list[str]:
        return [self.redis_key(key), self._lru, self._sizes, self._bytes, self._clock]

    # -- retries ---------------------------------------------------------------------------
    def _call(self, what: str, fn: Callable[[], T]) -> T:
        import redis

        start = time.monotonic()
        for attempt in range(self.retries + 1):
            try:
                return fn()
            except redis.AuthenticationError as err:
                self.unavailable += 1
                raise StoreUnavailableError(
                    f"Redis at {self.url} refused authentication ({err}): check the password", self.url
                ) from err
            except (redis.ConnectionError, redis.TimeoutError) as err:
                if attempt == self.retries:
                    self.unavailable += 1
                    raise StoreUnavailableError(
                        f"Redis at {self.url} unreachable: {what} failed {attempt + 1} times in "
                        f"{time.monotonic() - start:.2f} s ({type(err).__name__}: {err})",
                        self.url,
                    ) from err
                time.sleep(self.backoff_s * (2**attempt))
            except redis.ResponseError as err:
                self.unavailable += 1
                raise StoreUnavailableError(f"Redis at {self.url} refused {what}: {err}", self.url) from err
        raise AssertionError("unreachable")

    # -- ChunkStore ------------------------------------------------------------------------
    def lookup(self, key: ChunkKey) -> Lookup:
        return self.lookup_many([key])[0]

    def _lookup_distinct(self, keys: list[ChunkKey]) -> list[Lookup]:
        """Every GET (with its LRU touch) in one pipeline: one round trip for the whole request."""

        def get_all() -> list[Any]:
            pipe = self.client.pipeline(transaction=False)
            for key in keys:
                self._get(keys=[self.redis_key(key), self._lru, self._clock], args=[self.ttl_ms], client=pipe)
            return list(pipe.execute())

        blobs = self._call("GET", get_all) if keys else []
        return [self._decode(key, blob) for key, blob in zip(keys, blobs, strict=True)]

    def _decode(self, key: ChunkKey, blob: Any) -> Lookup:
        """The verified chunk in one GET's reply (None: absent), counted."""
        if blob is None:
            return self._record(Lookup(None, MISSING))
        data = bytes(blob)
        self.bytes_read += len(data)
        try:
            chunk = open_stored(data, key, self.signer, self.device)
        except (IntegrityError, ChunkFormatError) as err:
            # A bad value is a miss; the caller re-encodes and its put overwrites it.
            self.rejections[err.reason] += 1
            log.warning("rejected chunk %s from %s: %s", key.digest[:12], self.url, err.reason)
            return self._record(Lookup(None, f"rejected: {err.reason}"))
        return self._record(Lookup(chunk))

    def put(self, key: ChunkKey, chunk: KVChunk) -> None:
        if chunk.key != key:
            raise ValueError("RedisStore.put: the chunk's own key differs from the key it is stored under")
        self.put_bytes(key, chunk_to_bytes(chunk))

    def put_bytes(self, key: ChunkKey, data: bytes) -> None:
        """Store already serialized chunk bytes (as :func:`chunk_to_bytes` makes them)."""
        value = self.signer.sign(key.digest, data) if self.signer is not None else data
        evicted = self._call(
            "SET", lambda: self._put(keys=self._keys(key), args=[value, self.ttl_ms, self.max_bytes])
        )
        if evicted == -1:
            log.info("chunk %s (%d bytes) exceeds max_bytes; not stored", key.digest[:12], len(value))
            return
        self.stats.evictions += int(evicted)
        self.stats.puts += 1
        self.bytes_written += len(value)

    def contains(self, key: ChunkKey) -> bool:
        return bool(self._call("EXISTS", lambda: self.client.exists(self.redis_key(key))))

    def remove(self, key: ChunkKey) -> bool:
        return bool(self._call("DEL", lambda: self._remove(keys=self._keys(key))))

    # -- leases: one process encodes a chunk, the others wait for it ----------------------
    def lease_key(self, key: ChunkKey) -> str:
        """Where the lease on ``key`` lives: outside the chunk prefix (``len``, ``clear`` and the
        size policy never see it) but in the same cluster slot."""
        return "rc-lease:" + self.redis_key(key).removeprefix("rc:")

    def try_lease(self, key: ChunkKey, token: str, ttl_ms: int) -> bool:
        """Take the lease on ``key`` for ``ttl_ms`` under ``token`` unless another holder has it."""
        if ttl_ms < 1:
            raise ValueError(f"ttl_ms must be >= 1, got {ttl_ms}")
        name = self.lease_key(key)
        return bool(self._call("SET NX", lambda: self.client.set(name, token, nx=True, px=ttl_ms)))

    def release_lease(self, key: ChunkKey, token: str) -> bool:
        """Drop the lease on ``key`` if ``token`` still holds it; True when it did."""
        name = self.lease_key(key)
        return bool(self._call("lease release", lambda: self._release(keys=[name], args=[token])))

    def leases(self) -> Leases:
        from ragcompress.kv.store.lease import RedisLeases

        return RedisLeases(self)

    # -- tenant-wide -----------------------------------------------------------------------
    def __len__(self) -> int:
        """Chunks this tenant holds now (a SCAN: meant for tests and tools, not hot paths)."""
        return sum(1 for _ in self._scan())

    @property
    def nbytes(self) -> int:
        """Bytes accounted to this tenant (the ``max_bytes`` budget's counter)."""
        return int(self._call("GET", lambda: self.client.get(self._bytes)) or 0)

    def _scan(self) -> list[bytes]:
        pattern = f"{self._prefix}:*"
        meta = {k.encode() for k in (self._lru, self._sizes, self._bytes, self._clock)}
        found = self._call("SCAN", lambda: list(self.client.scan_iter(match=pattern, count=500)))
        return [k for k in found if k not in meta]

    def clear(self) -> int:
        """Delete every chunk of this tenant (all models); returns how many were deleted."""
        keys = self._scan()
        if keys:
            self._call("DEL", lambda: self.client.delete(*keys))
        self._call("DEL", lambda: self.client.delete(self._lru, self._sizes, self._bytes, self._clock))
        return len(keys)

    def ping(self) -> bool:
        """True when the server answers (after the retries); raises StoreUnavailableError otherwise."""
        return bool(self._call("PING", self.client.ping))

    def info(self) -> dict[str, Any]:
        """Counters of this client: hits, misses by reason, rejections, bytes moved, errors."""
        return {
            **self.stats.as_dict(),
            "rejections": dict(self.rejections),
            "unavailable": self.unavailable,
            "bytes_read": self.bytes_read,
            "bytes_written": self.bytes_written,
        }

    def close(self) -> None:
        self.pool.disconnect()

    def __repr__(self) -> str:
        signed = ", signed" if self.signer is not None else ""
        return f"RedisStore({self.url!r}, namespace={self.namespace!r}, tenant={self.tenant!r}{signed})"

    def __getstate__(self) -> dict[str, Any]:
        raise TypeError("RedisStore holds live connections; open one per process with open_store(url)")
