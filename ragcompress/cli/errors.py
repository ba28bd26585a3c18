"""How the command line reports errors: one line on stderr and exit status 2 for every error
that bad input or the environment causes, the traceback only with ``RAGCOMPRESS_DEBUG=1``."""

from __future__ import annotations

import re

from ragcompress.cli.common import UsageError

__all__ = ["DEBUG_ENV", "error_line", "expected"]

DEBUG_ENV = "RAGCOMPRESS_DEBUG"
_URL = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://[^\s'\"<>]+")


def expected(err: Exception) -> bool:
    """Errors that bad input or the environment cause (not bugs): one line and exit 2."""
    from ragcompress.kv.store.open import StoreUnavailableError

    kinds = (UsageError, ValueError, TypeError, KeyError, OSError, ImportError, StoreUnavailableError)
    return isinstance(err, kinds)


def error_line(err: BaseException) -> str:
    """``err`` as one line for stderr: its message (a KeyError's unquoted), whitespace folded,
    every URL in it passed through :func:`~ragcompress.kv.store.open.redact_url`."""
    from ragcompress.kv.store.open import redact_url

    message = str(err.args[0]) if isinstance(err, KeyError) and err.args else str(err)
    message = " ".join(message.split()) or type(err).__name__
    if not isinstance(err, UsageError | ValueError | OSError | ImportError):
        # a TypeError or KeyError may be a bug rather than bad input: say how to see more
        message = f"{type(err).__name__}: {message} ({DEBUG_ENV}=1 shows the traceback)"
    return _URL.sub(lambda m: redact_url(m.group()), message)
