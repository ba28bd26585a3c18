#!/usr/bin/env bash
# One device call: the skinny GEMM's weight prefetch into L2 before its PDL wait, off (0) / the
# pipeline's stages (6) / 12 tiles, in the warm step (env_ab.py); then the GPU tests.
set -u
. benchmarks/results/device_env.sh
D=benchmarks/results/ttft_gemm_prefetch_h200
PYTHONPATH=$PWD:$PWD/benchmarks:/tmp/pyd timeout 330 python3 $D/env_ab.py --var RAGCOMPRESS_GEMM_PREFETCH \
    --values 0,6,12 --contexts 1024,10240,32768 2>&1 | grep -v Warn > "$OUT/prefetch_ab.txt"
cat "$OUT/prefetch_ab.txt"
PYTHONPATH=$PWD:/tmp/pyd timeout 150 python3 -m pytest -q -p no:cacheprovider -m gpu tests/gpu 2>&1 | tail -4 > "$OUT/gpu_tests.txt"
cat "$OUT/gpu_tests.txt"
