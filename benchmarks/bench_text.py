"""Text-compression benchmark: same as ``ragcompress bench text`` (see ``--help``)."""

from __future__ import annotations

import sys

from ragcompress_bench.text import main

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
