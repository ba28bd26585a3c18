"""Pick a chunk store by URL, as LMCache picks its storage backends.

======================================  =================================================
``memory://`` (``?max_bytes=N``)         :class:`~ragcompress.kv.memory_store.MemoryStore`
``file:///path`` or a plain path         :class:`~ragcompress.kv.disk_store.DiskStore`
``redis://[:pw@]host:port/db``           :class:`~ragcompress.kv.redis_store.RedisStore`
``rediss://…`` (TLS)                     the same over TLS
======================================  =================================================

Redis URLs may carry the store's own settings as query parameters (``tenant``,
``namespace``, ``ttl_s``, ``max_bytes``); the others go to redis-py (``ssl_ca_certs``, …).
The HMAC secret never goes into a URL: pass ``secret=`` or set ``RAGCOMPRESS_STORE_SECRET``.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl, unquote, urlsplit

if TYPE_CHECKING:
    from ragcompress.kv.store import ChunkStore

__all__ = ["SECRET_ENV", "StoreUnavailableError", "open_store", "redact_url"]

SECRET_ENV = "RAGCOMPRESS_STORE_SECRET"


class StoreUnavailableError(RuntimeError):
    """The store cannot answer now (server down, refused, authentication failed, out of memory).

    Raised after the store's bounded retries; never turned into a hit. ``url`` is redacted.
    """

    def __init__(self, message: str, url: str = "") -> None:
        super().__init__(message)
        self.url = url


def redact_url(url: str) -> str:
    """``url`` with any password replaced by ``***`` (for messages and logs)."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    user = parts.username or ""
    host = parts.hostname or ""
    port = f":{parts.port}" if parts.port else ""
    return parts._replace(netloc=f"{user}:***@{host}{port}").geturl()


def open_store(
    url: str, *, tenant: str | None = None, secret: bytes | str | None = None, device: str = "cpu"
) -> ChunkStore:
    """The chunk store that ``url`` names (see the module docstring for the schemes).

    ``tenant`` applies to Redis stores, ``secret`` (HMAC signing) to disk and Redis; it defaults to the
    ``RAGCOMPRESS_STORE_SECRET`` environment variable when it is set.
    """
    if not isinstance(url, str) or not url.strip():
        raise ValueError(f"a store URL is a non-empty string, got {url!r}")
    url = url.strip()
    scheme = urlsplit(url).scheme.lower() if "://" in url else ""
    if scheme in ("redis", "rediss"):
        from ragcompress.kv.redis_store import RedisStore

        options: dict[str, Any] = {}
        parts = urlsplit(url)
        passthrough = []
        for name, value in parse_qsl(parts.query, keep_blank_values=True):
            if name in ("tenant", "namespace"):
                options[name] = value
            elif name in ("ttl_s", "max_bytes"):
                options[name] = _number(name, value, url)
            else:
                passthrough.append(f"{name}={value}")
        if tenant is not None:
            options["tenant"] = tenant
        clean = parts._replace(query="&".join(passthrough)).geturl()
        return RedisStore(clean, secret=_secret(secret), device=device, **options)
    if scheme == "memory":
        from ragcompress.kv.memory_store import MemoryStore

        query = dict(parse_qsl(urlsplit(url).query))
        max_bytes = _number("max_bytes", query.get("max_bytes", str(2 << 30)), url)
        return MemoryStore(max_bytes=int(max_bytes), device=device)
    if scheme == "file" or not scheme:
        from ragcompress.kv.disk_store import DiskStore

        path = unquote(urlsplit(url).path) if scheme == "file" else url
        if not path:
            raise ValueError(f"store URL {url!r} names no directory (use file:///absolute/path)")
        return DiskStore(path, device=device, secret=_secret(secret))
    raise ValueError(
        f"unknown store URL scheme {scheme!r} in {redact_url(url)!r}; "
        "use memory://, file:///path (or a plain path), redis:// or rediss://"
    )


def _number(name: str, value: str, url: str) -> float | int:
    try:
        number = float(value)
    except ValueError:
        raise ValueError(f"store URL {redact_url(url)!r}: {name}={value!r} is not a number") from None
    if number <= 0:
        raise ValueError(f"store URL {redact_url(url)!r}: {name} must be positive, got {value}")
    return int(number) if number.is_integer() else number


def _secret(secret: bytes | str | None) -> bytes | str | None:
    if secret is not None:
        return secret
    return os.environ.get(SECRET_ENV) or None
