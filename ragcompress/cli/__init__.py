"""The ``ragcompress`` command line (entry point :func:`ragcompress.cli.app.main`): one module per
command (demo, ask, index, bench, models), shared pieces in :mod:`ragcompress.cli.common` and
:mod:`ragcompress.cli.pipeline_args`."""

from __future__ import annotations

from collections.abc import Sequence

__all__ = ["main"]


def main(argv: Sequence[str] | None = None) -> int:
    # Imported on call: importing a command module (or `common`) does not load every command.
    from ragcompress.cli.app import main as run

    return run(argv)
