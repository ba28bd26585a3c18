"""What the stores raise, and how a store URL may be printed in a message.

Every store module imports its error type from here (never from the URL factory
:mod:`~ragcompress.kv.store.open`, which imports the backends: that was an import cycle).
"""

from __future__ import annotations

import re
from urllib.parse import unquote_plus, urlsplit

__all__ = ["StoreUnavailableError", "redact_url"]

# Query parameters whose values are hidden in messages: matched anywhere in the name, so that
# `password`, `redis_password`, `ssl_keyfile_password`, `api_key`, `token`, `auth` all are.
_SECRET_PARAM = re.compile(r"pass|pwd|secret|token|key|auth|credential", re.IGNORECASE)


class StoreUnavailableError(RuntimeError):
    """The store cannot answer now (server down, refused, authentication failed, out of memory).

    Raised after the store's bounded retries; never turned into a hit. ``url`` is redacted.
    """

    def __init__(self, message: str, url: str = "") -> None:
        super().__init__(message)
        self.url = url


def redact_url(url: str) -> str:
    """``url`` for messages and logs: the userinfo's password (``redis://user:***@host``; a
    userinfo without a password, possibly a token, becomes ``***``) and the values of query
    parameters whose name contains ``pass``, ``pwd``, ``secret``, ``token``, ``key``, ``auth``
    or ``credential`` (``?password=***``) replaced. Never raises."""
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
