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
``namespace``, ``ttl_s``, ``max_bytes``) and the connection options redis-py reads from a URL
(``socket_timeout``, ``ssl_ca_certs`` on ``rediss://``, …; :func:`redis_query_names` lists
them); any other parameter is refused when the URL is opened, not at the first request. A
``memory://`` URL takes ``max_bytes`` only, a ``file:`` URL nothing. The HMAC secret never goes
into a URL: pass ``secret=`` or set ``RAGCOMPRESS_STORE_SECRET``.

Tenants are a Redis feature (the keys are namespaced per tenant): a tenant given for a disk or
memory store is refused, never ignored (give each tenant a directory of its own instead).

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
    "check_query",
    "file_path",
    "memory_bytes",
    "open_store",
    "redact_url",
    "redis_query_names",
    "register_scheme",
    "schemes",
]

#: The budget of a memory store (and of the memory tier in front of a shared store) when none is given.
DEFAULT_MEMORY_BYTES = 2 << 30

# Query parameters of a Redis URL that are the store's own settings (the rest go to redis-py).
_REDIS_OWN = ("tenant", "namespace", "ttl_s", "max_bytes")
# Options redis-py takes from a URL as strings, besides those it parses itself
# (redis.connection.URL_QUERY_ARGUMENT_PARSERS); the ssl_* ones on rediss:// only.
_REDIS_STRINGS = ("username", "password", "client_name")
_REDISS_STRINGS = (
    "ssl_keyfile", "ssl_certfile", "ssl_cert_reqs", "ssl_ca_certs", "ssl_ca_path", "ssl_ca_data",
    "ssl_password", "ssl_ciphers",
)  # fmt: skip

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

    ``tenant`` applies to Redis stores (a disk or memory store refuses one), ``secret`` (HMAC
    signing) to disk and Redis; it defaults to the ``RAGCOMPRESS_STORE_SECRET`` environment
    variable when it is set. ``tenant`` (argument or ``?tenant=``) and ``?namespace=`` must be
    1-64 characters of ``A-Z a-z 0-9 . _ -``. An unknown query parameter is a ``ValueError``
    listing the accepted ones.

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
    if url[:5].lower() == "file:" or "://" not in url:  # also file:/abs (no "//"), a plain path
        return _disk_url(url, tenant, secret, device)
    scheme = urlsplit(url).scheme.lower()
    factory = _SCHEMES.get(scheme)
    if factory is None:
        known = ", ".join(f"{s}://" for s in schemes())
        raise ValueError(
            f"unknown store URL scheme {scheme!r} in {redact_url(url)!r}; use one of {known} "
            "(or a plain directory path)"
        )
    return factory(url, tenant, secret, device)


def redis_query_names(url: str) -> list[str]:
    """The query parameters a ``redis://`` (or ``rediss://``) store URL accepts, sorted: the
    store's own settings and the connection options redis-py reads from a URL."""
    from redis.connection import URL_QUERY_ARGUMENT_PARSERS

    tls = urlsplit(url).scheme.lower() == "rediss"
    names = {*_REDIS_OWN, *_REDIS_STRINGS, *URL_QUERY_ARGUMENT_PARSERS, *(_REDISS_STRINGS if tls else ())}
    # Without TLS redis-py's plain connection takes no ssl_* option: it would fail at first use.
    return sorted(n for n in names if tls or not n.startswith("ssl_"))


def check_query(url: str, accepted: list[str]) -> list[tuple[str, str]]:
    """The query of ``url`` as (name, value) pairs, every name in ``accepted`` (else a
    ``ValueError`` naming the unknown ones and listing the accepted; values are never shown)."""
    pairs = parse_qsl(urlsplit(url).query, keep_blank_values=True)
    unknown = sorted({name for name, _ in pairs if name not in accepted})
    if unknown:
        hint = (
            "; the HMAC secret never goes into a URL: pass secret= or set " + SECRET_ENV
            if any("secret" in name.lower() for name in unknown)
            else ""
        )
        raise ValueError(
            f"store URL {redact_url(url)!r}: unknown query parameter(s) {', '.join(unknown)}; "
            f"accepted: {', '.join(accepted) or 'none'}{hint}"
        )
    return pairs


def _redis(url: str, tenant: str | None, secret: bytes | str | None, device: str) -> ChunkStore:
    from ragcompress.kv.store.redis import RedisStore

    options: dict[str, Any] = {}
    parts = urlsplit(url)
    passthrough = []
    for name, value in check_query(url, redis_query_names(url)):
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


def memory_bytes(url: str, default: int = DEFAULT_MEMORY_BYTES) -> int:
    """The byte budget a ``memory://`` URL names (``?max_bytes=N``; ``default`` without one)."""
    query = dict(check_query(url, ["max_bytes"]))
    return int(_number("max_bytes", query["max_bytes"], url)) if "max_bytes" in query else default


def _memory(url: str, tenant: str | None, secret: bytes | str | None, device: str) -> ChunkStore:
    from ragcompress.kv.store.memory import MemoryStore

    budget = memory_bytes(url)  # the URL first: its own error comes before the tenant's
    _no_tenant(tenant, "a memory store lives in one process and has no tenants: drop the tenant")
    return MemoryStore(max_bytes=budget, device=device)


def file_path(url: str) -> str:
    """The directory a disk store URL names: a plain path (relative or absolute) as given, or the
    absolute path of a ``file:`` URL (see :func:`open_store` for the accepted forms)."""
    if url[:5].lower() != "file:":
        return url
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
            "(file:///abs/path, no query); for a relative directory give the plain path"
        )
    return path


def _disk_url(url: str, tenant: str | None, secret: bytes | str | None, device: str) -> ChunkStore:
    from ragcompress.kv.store.disk import DiskStore

    path = file_path(url)
    _no_tenant(
        tenant,
        f"a disk store has no tenants: give each tenant a directory of its own "
        f"(e.g. {path.rstrip('/')}/{tenant}), or drop the tenant",
    )
    return DiskStore(path, device=device, secret=secret)


def _no_tenant(tenant: str | None, why: str) -> None:
    if tenant is not None:
        raise ValueError(f"tenant {tenant!r} applies to Redis stores (their keys are per tenant); {why}")


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
