"""Pick a chunk store by URL, as LMCache picks its storage backends.

======================================  =================================================
``memory://`` (``?max_bytes=N``)         :class:`~ragcompress.kv.store.memory.MemoryStore`
``file:///path`` or a plain path         :class:`~ragcompress.kv.store.disk.DiskStore`
``redis://[:pw@]host:port/db``           :class:`~ragcompress.kv.store.redis.RedisStore`
``rediss://…`` (TLS)                     the same over TLS
======================================  =================================================

Redis URLs may carry the store's own settings as query parameters (``tenant``,
``namespace``, ``ttl_s``, ``max_bytes``); the others go to redis-py (``ssl_ca_certs``, …).
The HMAC secret never goes into a URL: pass ``secret=`` or set ``RAGCOMPRESS_STORE_SECRET``.

URLs are printed only through :func:`redact_url`, which hides the password of the userinfo
(``redis://user:***@host``; a userinfo without a password, possibly a token, becomes ``***``)
and the value of every query parameter whose name contains ``pass``,
``pwd``, ``secret``, ``token``, ``key``, ``auth`` or ``credential`` (``?password=***``).
"""

from __future__ import annotations

import os
import re
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl, unquote, unquote_plus, urlsplit

if TYPE_CHECKING:
    from ragcompress.kv.store.base import ChunkStore

__all__ = ["SECRET_ENV", "StoreUnavailableError", "check_name", "open_store", "redact_url"]

SECRET_ENV = "RAGCOMPRESS_STORE_SECRET"
# Query parameters whose values are hidden in messages: matched anywhere in the name, so that
# `password`, `redis_password`, `ssl_keyfile_password`, `api_key`, `token`, `auth` all are.
_SECRET_PARAM = re.compile(r"pass|pwd|secret|token|key|auth|credential", re.IGNORECASE)
# Tenant and namespace names: they become part of Redis keys (a newline or a brace would not).
_NAME = re.compile(r"[A-Za-z0-9._-]{1,64}")


class StoreUnavailableError(RuntimeError):
    """The store cannot answer now (server down, refused, authentication failed, out of memory).

    Raised after the store's bounded retries; never turned into a hit. ``url`` is redacted.
    """

    def __init__(self, message: str, url: str = "") -> None:
        super().__init__(message)
        self.url = url


def redact_url(url: str) -> str:
    """``url`` for messages and logs: the userinfo's password and the values of query parameters
    named like secrets (see the module docstring) replaced by ``***``. Never raises."""
    try:
        parts = urlsplit(str(url))
    except ValueError:  # unparsable (e.g. a bad IPv6 host): nothing of it is safe to print
        return "<unparsable URL>"
    out = str(url)
    userinfo, at, hostport = parts.netloc.rpartition("@")
    if at:  # a lone userinfo (no ':') may be a token too: some services put it there
        user = f"{userinfo.split(':', 1)[0]}:***" if ":" in userinfo else "***"
        out = out.replace(f"//{parts.netloc}", f"//{user}@{hostport}", 1)
    if parts.query:
        query = "&".join(_redact_param(item) for item in parts.query.split("&"))
        out = out.replace(f"?{parts.query}", f"?{query}", 1)
    return out


def _redact_param(item: str) -> str:
    name, eq, value = item.partition("=")
    if eq and value and _SECRET_PARAM.search(unquote_plus(name)):
        return f"{name}=***"
    return item


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
    if url[:5].lower() == "file:":
        return _disk_store(url, device, secret)
    scheme = urlsplit(url).scheme.lower() if "://" in url else ""
    if scheme in ("redis", "rediss"):
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
        return RedisStore(clean, secret=_secret(secret), device=device, **options)
    if scheme == "memory":
        from ragcompress.kv.store.memory import MemoryStore

        query = dict(parse_qsl(urlsplit(url).query))
        max_bytes = _number("max_bytes", query.get("max_bytes", str(2 << 30)), url)
        return MemoryStore(max_bytes=int(max_bytes), device=device)
    if not scheme:
        from ragcompress.kv.store.disk import DiskStore

        return DiskStore(url, device=device, secret=_secret(secret))
    raise ValueError(
        f"unknown store URL scheme {scheme!r} in {redact_url(url)!r}; "
        "use memory://, file:///path (or a plain path), redis:// or rediss://"
    )


def _disk_store(url: str, device: str, secret: bytes | str | None) -> ChunkStore:
    """The disk store of a ``file:`` URL (see :func:`open_store` for the accepted forms)."""
    from ragcompress.kv.store.disk import DiskStore

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
    return DiskStore(path, device=device, secret=_secret(secret))


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
