"""The ``ragcompress`` command line (entry point :func:`ragcompress.cli.app.main`)."""

from __future__ import annotations

from ragcompress.cli.app import main

__all__ = ["main"]
