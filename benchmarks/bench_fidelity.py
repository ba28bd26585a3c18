"""KV path vs full prefill on a capable reader: same as ``ragcompress bench fidelity`` (see ``--help``)."""

from __future__ import annotations

import sys

from ragcompress_bench.fidelity import main

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
