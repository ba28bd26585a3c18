#!/usr/bin/env bash
# One device call: the split sweep of splits_ab.py.
set -u
. benchmarks/results/device_env.sh
D=benchmarks/results/ttft_paged_splits_h200
PYTHONPATH=$PWD:$PWD/benchmarks:/tmp/pyd timeout 500 python3 $D/splits_ab.py 2>&1 | grep -v Warn > "$OUT/splits_ab.txt"
cat "$OUT/splits_ab.txt"
