#!/usr/bin/env bash
# One device call (2026-12-03): the placed request's host work part by part on the device's host
# (host_prof.py), then placed against in-buffer kernels on the tree with base2_weights
# (../ttft_paged_gap_h200/paged_gap.py at 1K, 10K, 32K).
set -u
. benchmarks/results/device_env.sh
lscpu | grep -E "Model name|MHz|^CPU\(s\)" > "$OUT/lscpu.txt"; cat "$OUT/lscpu.txt"
PYTHONPATH=$PWD:/tmp/pyd timeout 150 python3 benchmarks/results/ttft_placed_host2_h200/host_prof.py \
    > "$OUT/host_prof.txt" 2>&1
cat "$OUT/host_prof.txt"
PYTHONPATH=$PWD:$PWD/benchmarks:/tmp/pyd timeout 300 python3 benchmarks/results/ttft_paged_gap_h200/paged_gap.py \
    --contexts 1024,10240,32768 2>&1 | grep -v Warn > "$OUT/paged_gap.txt"
cat "$OUT/paged_gap.txt"
