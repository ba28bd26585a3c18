#!/usr/bin/env bash
# Prepared for the next session's device call (not run yet): where the quantizing kernel's time
# goes (Nsight Compute, one launch) and the looped variant against it.
set -u
R=benchmarks/results/ttft_pool_quant_h200
PYTHONPATH=$PWD timeout 200 ncu --kernel-name _quantize_run --launch-count 1 --section SpeedOfLight \
    --section MemoryWorkloadAnalysis --section WarpStateStats --section Occupancy \
    python3 $R/warps.py > "$OUT/ncu.txt" 2>&1
tail -80 "$OUT/ncu.txt"
PYTHONPATH=$PWD timeout 200 python3 $R/variants.py 2>&1 | tee "$OUT/variants.txt"
