"""``python -m ragcompress.cli``: the same command line as ``ragcompress``."""

from __future__ import annotations

from ragcompress.cli.app import main

raise SystemExit(main())
