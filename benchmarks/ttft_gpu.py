"""Time to first token from cached chunks on the GPU (see benchmarks/ragcompress_bench/ttft.py).

PYTHONPATH=. python3 benchmarks/ttft_gpu.py --contexts 1024,4096,10240,32768 --out benchmarks/results
"""

from __future__ import annotations

import sys

from ragcompress_bench.ttft import main

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
