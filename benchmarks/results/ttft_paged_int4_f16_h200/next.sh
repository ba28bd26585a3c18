#!/usr/bin/env bash
# Prepared for the next device call (not run yet): the GPU tests with the fp16 products, their
# error against fp32 attention, and bench ttft's int4/int8 placed columns.
set -u
. benchmarks/results/device_env.sh
R=benchmarks/results/ttft_paged_int4_f16_h200
mkdir -p "$OUT/next"
PYTHONPATH=$PWD:/tmp/pyd timeout 150 python3 -m pytest -q -m gpu tests/gpu/test_fast_paged_int4_gpu.py \
    tests/gpu/test_fast_paged_gpu.py 2>&1 | tail -15 | tee "$OUT/next/gpu_tests.txt"
PYTHONPATH=$PWD timeout 150 python3 $R/f16_ab.py --truth 2>&1 | tee "$OUT/next/truth.txt"
PYTHONPATH=$PWD:$PWD/benchmarks:/tmp/pyd timeout 280 python3 -m ragcompress.cli bench ttft --shape llama3-8b \
    --contexts 10240,32768,131072 --repeats 10 --warmup 2 --prefill-repeats 1 --static-compile none \
    --batches 1 --no-modes --no-host --no-stored --no-ragged --out "$OUT/next/bench" > "$OUT/next/bench.log" 2>&1
tail -12 "$OUT/next/bench.log"
