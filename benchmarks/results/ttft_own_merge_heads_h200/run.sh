#!/usr/bin/env bash
# One device call: the own pass + merge before / after one program took a token's G heads (the launch alone), then the GPU tests
# that run it (the fast path's and the paged engine's).
set -u
. benchmarks/results/device_env.sh
D=benchmarks/results/ttft_own_merge_heads_h200
PYTHONPATH=$PWD:$PWD/benchmarks:/tmp/pyd timeout 200 python3 benchmarks/results/ttft_own_merge_loads_h200/own_merge_loads_ab.py --before .devcarry/before 2>&1 \
    | grep -v Warn > "$OUT/own_merge_heads_ab.txt"
cat "$OUT/own_merge_heads_ab.txt"
PYTHONPATH=$PWD:/tmp/pyd timeout 250 python3 -m pytest -q -p no:cacheprovider -m gpu tests/gpu 2>&1 | tail -6 > "$OUT/gpu_tests.txt"
cat "$OUT/gpu_tests.txt"
