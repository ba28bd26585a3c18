"""Pick a chunk store by URL, as LMCache picks its storage backends.

======================================  =================================================
``memory://`` (``?max_bytes=N``)         :class:`~ragcompress.kv.store.memory.MemoryStore`
``file:///path`` or a plain path         :class:`~ragcompress.kv.store.disk.DiskStore`
``redis://[:pw@]host:port/db``           :class:`~ragcompress.kv.store.redis.RedisStore`
``rediss://…`` (TLS)                     the same over TLS
======================================  =================================================

Each scheme maps to a factory in one table (:func:`register_scheme` adds a backend); an
unknown scheme's error lists exactly the registered ones. For several tiers at once (memory
in front of disk in front of Redis) use :class:`~ragcompress.kv.store.spec.StoreSpec`.

Redis URLs may carry the store's own settings as query parameters (``tenant``,
``namespace``, ``ttl_s``, ``max_bytes``); the others go to redis-py (``ssl_ca_certs``, …).
The HMAC secret never goes into a URL: pass ``secret=`` or set ``RAGCOMPRESS_STORE_SECRET``.

URLs are printed only through :func:`~ragcompress.kv.store.errors.redact_url`.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl, unquote, urlsplit

from ragcompress.kv.store.errors import StoreUnavailableError, redact_url
from ragcompress.kv.store.integrity import SECRET_ENV, resolve_secret

if TYPE_CHECKING:
    from ragcompress.kv.store.base import ChunkStore

__all__ = [
    "SECRET_ENV",
    "StoreFactory",
    "StoreUnavailableError",
    "check_name",
    "open_store",
    "redact_url",
    "register_scheme",
    "schemes",
]

# Tenant and namespace names: they become part of Redis keys (a newline or a brace would not).
_NAME = re.compile(r"[A-Za-z0-9._-]{1,64}")

# (url, tenant, secret, device) -> store. ``secret`` is already resolved (argument or env).
StoreFactory = Callable[[str, "str | None", "bytes | str | None", str], "ChunkStore"]
_SCHEMES: dict[str, StoreFactory] = {}


def register_scheme(scheme: str, factory: StoreFactory) -> None:
    """Make :func:`open_store` open ``scheme://…`` URLs with ``factory``."""
    if not re.fullmatch(r"[a-z][a-z0-9+.-]*", scheme):
        raise ValueError(f"a URL scheme is lower-case letters, digits, '+', '.', '-': got {scheme!r}")
    _SCHEMES[scheme] = factory


def schemes() -> list[str]:
    """The URL schemes :func:`open_store` knows, sorted (a plain path opens a disk store too)."""
    return sorted(_SCHEMES)


def check_name(label: str, value: object) -> str:
    """``value`` when it is a valid tenant or namespace name (1-64 of ``A-Z a-z 0-9 . _ -``)."""
    if not isinstance(value, str) or not _NAME.fullmatch(value):
        raise ValueError(f"{label} {value!r} must be 1-64 characters of A-Z a-z 0-9 . _ - (nothing else)")
    return value


def open_store(
    url: str, *, tenant: str | None = None, secret: bytes | str | None = None, device: str = "cpu"
) -> ChunkStore:
    """The chunk store that ``url`` names (see the module docstring for the schemes).

    ``tenant`` applies to Redis stores, ``secret`` (HMAC signing) to disk and Redis; it defaults to
    the ``RAGCOMPRESS_STORE_SECRET`` environment variable when it is set. ``tenant`` (argument or
    ``?tenant=``) and ``?namespace=`` must be 1-64 characters of ``A-Z a-z 0-9 . _ -``.

    A disk store is named by a plain path (relative or absolute) or by a ``file:`` URL of an
    absolute path: ``file:///abs/path``, ``file://localhost/abs/path`` or ``file:/abs/path``.
    Any other ``file:`` URL is refused: ``file://chunks/sub`` names the host ``chunks`` (it
    would silently open ``/sub``), and ``file:chunks`` is not a path either; use ``chunks``.
    """
    if not isinstance(url, str) or not url.strip():
        raise ValueError(f"a store URL is a non-empty string, got {type(url).__name__}")
    url = url.strip()
    if tenant is not None:
        check_name("tenant", tenant)
    secret = resolve_secret(secret)
    if url[:5].lower() == "file:":  # also file:/abs (no "//")
        return _disk_url(url, tenant, secret, device)
    if "://" not in url:
        return _disk(url, device, secret)
    scheme = urlsplit(url).scheme.lower()
    factory = _SCHEMES.get(scheme)
    if factory is None:
        known = ", ".join(f"{s}://" for s in schemes())
        raise ValueError(
            f"unknown store URL scheme {scheme!r} in {redact_url(url)!r}; use one of {known} "
            "(or a plain directory path)"
        )
    return factory(url, tenant, secret, device)


def _redis(url: str, tenant: str | None, secret: bytes | str | None, device: str) -> ChunkStore:
    from ragcompress.kv.store.redis import RedisStore

    options: dict[str, Any] = {}
    parts = urlsplit(url)
    passthrough = []
    for name, value in parse_qsl(parts.query, keep_blank_values=True):
        if name in ("tenant", "namespace"):
            options[name] = check_name(name, value)
        elif name in ("ttl_s", "max_bytes"):
            options[name] = _number(name, value, url)
        else:
            passthrough.append(f"{name}={value}")
    if tenant is not None:
        options["tenant"] = tenant
    clean = parts._replace(query="&".join(passthrough)).geturl()
    return RedisStore(clean, secret=secret, device=device, **options)


def _memory(url: str, tenant: str | None, secret: bytes | str | None, device: str) -> ChunkStore:
    from ragcompress.kv.store.memory import MemoryStore

    query = dict(parse_qsl(urlsplit(url).query))
    max_bytes = _number("max_bytes", query.get("max_bytes", str(2 << 30)), url)
    return MemoryStore(max_bytes=int(max_bytes), device=device)


def _disk_url(url: str, tenant: str | None, secret: bytes | str | None, device: str) -> ChunkStore:
    """The disk store of a ``file:`` URL (see :func:`open_store` for the accepted forms)."""
    parts = urlsplit(url)
    if parts.netloc not in ("", "localhost"):
        raise ValueError(
            f"store URL {redact_url(url)!r} names the host {parts.netloc!r}: a file URL takes an "
            "absolute path (file:///abs/path); for a relative directory give the plain path"
        )
    path = unquote(parts.path)
    if not path.startswith("/") or parts.query or parts.fragment:
        raise ValueError(
            f"store URL {redact_url(url)!r} is not a file URL of an absolute directory "
            "(file:///abs/path); for a relative directory give the plain path"
        )
    return _disk(path, device, secret)


def _disk(path: str, device: str, secret: bytes | str | None) -> ChunkStore:
    from ragcompress.kv.store.disk import DiskStore

    return DiskStore(path, device=device, secret=secret)


def _number(name: str, value: str, url: str) -> float | int:
    try:
        number = float(value)
    except ValueError:
        raise ValueError(f"store URL {redact_url(url)!r}: {name}={value!r} is not a number") from None
    if number <= 0:
        raise ValueError(f"store URL {redact_url(url)!r}: {name} must be positive, got {value}")
    return int(number) if number.is_integer() else number


register_scheme("memory", _memory)
register_scheme("file", _disk_url)
register_scheme("redis", _redis)
register_scheme("rediss", _redis)
