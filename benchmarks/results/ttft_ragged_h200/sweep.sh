#!/bin/bash
# One device call: the paged kernel over ragged batches, swept (ragged_sweep.txt).
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1
mkdir -p $OUT/ttft_ragged_h200
timeout 500 python3 benchmarks/results/ttft_ragged_h200/ragged_sweep.py > $OUT/ttft_ragged_h200/ragged_sweep.txt 2>&1
cat $OUT/ttft_ragged_h200/ragged_sweep.txt
