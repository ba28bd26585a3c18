#!/usr/bin/env bash
# One device call (after pdl_tail.py's own, 2026-12-03): every GPU test with the step kernels'
# programmatic dependent launch, then the warm step with it on and off (step_ab.py, $1 rounds:
# 3 in this call, 2 when run2.sh calls it).
set -u
. benchmarks/results/device_env.sh
PYTHONPATH=$PWD:/tmp/pyd timeout 230 python3 -m pytest -q -p no:cacheprovider -m gpu tests/gpu 2>&1 \
    | tail -8 > "$OUT/gpu_tests.txt"
cat "$OUT/gpu_tests.txt"
PYTHONPATH=$PWD:$PWD/benchmarks:/tmp/pyd timeout 330 python3 benchmarks/results/ttft_pdl_tail_h200/step_ab.py \
    --contexts 1024,10240,32768 --rounds "${1:-3}" > "$OUT/step_ab.txt" 2>&1
cat "$OUT/step_ab.txt"
