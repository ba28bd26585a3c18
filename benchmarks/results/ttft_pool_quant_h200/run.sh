#!/usr/bin/env bash
# One device call: the GPU tests of the pools (the kernel's own test among them), int4_insert.py,
# then bench ttft's placed columns (bf16 and int4 pools). Run from the repository root on the device.
set -u
bash benchmarks/results/ttft_pool_quant_h200/pool_tests.sh .
. benchmarks/results/device_env.sh
PYTHONPATH=$PWD:$PWD/benchmarks:/tmp/pyd timeout 280 python3 -m ragcompress.cli bench ttft --shape llama3-8b \
    --contexts 1024,10240,32768,131072 --repeats 10 --warmup 2 --prefill-repeats 1 --static-compile none \
    --batches 1 --no-modes --no-host --no-stored --no-ragged \
    --out "$OUT/bench" > "$OUT/bench.log" 2>&1
tail -12 "$OUT/bench.log"
