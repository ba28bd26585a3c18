#!/usr/bin/env bash
# Third device call (2026-12-03, final tree of the session): every GPU test, then bench ttft's
# int4 and int8 paged columns beside bf16 (placed, in buffer) at 10K and 32K.
set -u
. benchmarks/results/device_env.sh
PYTHONPATH=$PWD:/tmp/pyd timeout 260 python3 -m pytest -q -p no:cacheprovider -m gpu tests/gpu 2>&1 | tail -6 \
    > "$OUT/gpu_tests_all.txt"
cat "$OUT/gpu_tests_all.txt"
PYTHONPATH=$PWD:$PWD/benchmarks:/tmp/pyd timeout 200 python3 -m ragcompress.cli bench ttft --shape llama3-8b \
    --contexts 10240,32768 --repeats 10 --warmup 2 --prefill-repeats 1 --static-compile none \
    --batches 1 --no-modes --no-host --no-stored --no-ragged --out "$OUT/bench_int" > "$OUT/bench_int.log" 2>&1
tail -8 "$OUT/bench_int.log"
