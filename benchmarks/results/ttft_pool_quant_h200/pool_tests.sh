#!/usr/bin/env bash
# The pools' GPU tests and int4_insert.py into $OUT/$1 (one device call's part; run.sh, run3.sh
# and run4.sh each ran it).
set -u
. benchmarks/results/device_env.sh
R=benchmarks/results/ttft_pool_quant_h200
D="$OUT/${1:-.}"
mkdir -p "$D"
PYTHONPATH=$PWD:/tmp/pyd timeout 150 python3 -m pytest -q -m gpu tests/gpu/test_fast_paged_int4_gpu.py \
    tests/gpu/test_fast_paged_gpu.py 2>&1 | tail -15 > "$D/gpu_tests.txt"
cat "$D/gpu_tests.txt"
PYTHONPATH=$PWD:/tmp/pyd timeout 200 python3 $R/int4_insert.py > "$D/int4_insert.txt" 2>&1
cat "$D/int4_insert.txt"
