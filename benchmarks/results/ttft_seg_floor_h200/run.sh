#!/usr/bin/env bash
# One device call (2026-12-03): the placement's CUDA calls on the host (copy_api.py), then the
# segment floor's warm-request A/B (seg_floor_ab.py).
set -u
. benchmarks/results/device_env.sh
PYTHONPATH=$PWD:/tmp/pyd timeout 60 python3 benchmarks/results/ttft_seg_floor_h200/copy_api.py > "$OUT/copy_api.txt" 2>&1
cat "$OUT/copy_api.txt"
PYTHONPATH=$PWD:$PWD/benchmarks:/tmp/pyd timeout 400 python3 benchmarks/results/ttft_seg_floor_h200/seg_floor_ab.py \
    2>&1 | grep -v Warn > "$OUT/seg_floor_ab.txt"
cat "$OUT/seg_floor_ab.txt"
