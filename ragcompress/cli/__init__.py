"""The ``ragcompress`` command line (entry point :func:`ragcompress.cli.app.main`): one module per
command (demo, ask, index, bench, models), shared pieces in :mod:`ragcompress.cli.common` and
:mod:`ragcompress.cli.pipeline_args`."""

from __future__ import annotations

from ragcompress.cli.app import main

__all__ = ["main"]
