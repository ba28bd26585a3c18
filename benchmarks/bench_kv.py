"""KV-press benchmark: same as ``ragcompress bench kv`` (see ``--help``)."""

from __future__ import annotations

import sys

from ragcompress_bench.kv import main

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
