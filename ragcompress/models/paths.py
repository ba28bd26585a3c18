"""Where ragcompress keeps files on disk (converted models, fetched parts, downloads)."""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["cache_home"]


def cache_home() -> Path:
    """Root of ragcompress's on-disk caches (``$RAGCOMPRESS_HOME`` or ``~/.cache/ragcompress``)."""
    return Path(os.environ.get("RAGCOMPRESS_HOME", Path.home() / ".cache" / "ragcompress"))
