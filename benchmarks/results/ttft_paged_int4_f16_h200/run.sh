#!/usr/bin/env bash
# One device call: f16_ab.py (timings), then Nsight Compute on one launch of each int4 variant.
set -u
R=benchmarks/results/ttft_paged_int4_f16_h200
PYTHONPATH=$PWD timeout 240 python3 $R/f16_ab.py 2>&1 | tee "$OUT/f16_ab.txt"
PYTHONPATH=$PWD timeout 150 ncu --kernel-name _paged_int4_kernel --launch-count 2 --section SpeedOfLight \
    --section WarpStateStats --section Occupancy --section ComputeWorkloadAnalysis \
    python3 $R/f16_ab.py --profile > "$OUT/ncu.txt" 2>&1
grep -E "Duration|Throughput|Warp Cycles|Issue|Executed Ipc|Registers|Occupancy|Stall|stall" "$OUT/ncu.txt" | head -60
# then (not run: no device time left) next.sh: GPU tests, f16_ab.py --truth, bench ttft
