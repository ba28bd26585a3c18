#!/usr/bin/env bash
# Second device call: the attention kernels (context passes, own pass + merge) launched with PDL
# too: every GPU test, the warm step with it on and off, and bench ttft (placed, in buffer).
set -u
. benchmarks/results/device_env.sh
PYTHONPATH=$PWD:/tmp/pyd timeout 200 python3 -m pytest -q -p no:cacheprovider -m gpu tests/gpu 2>&1 \
    | tail -8 > "$OUT/gpu_tests.txt"
cat "$OUT/gpu_tests.txt"
PYTHONPATH=$PWD:$PWD/benchmarks:/tmp/pyd timeout 200 python3 benchmarks/results/ttft_pdl_tail_h200/step_ab.py \
    --contexts 1024,10240,32768 --rounds 2 > "$OUT/step_ab.txt" 2>&1
cat "$OUT/step_ab.txt"
PYTHONPATH=$PWD:$PWD/benchmarks:/tmp/pyd timeout 170 python3 -m ragcompress.cli bench ttft --shape llama3-8b \
    --contexts 1024,10240,32768,131072 --repeats 10 --warmup 2 --prefill-repeats 1 --static-compile none \
    --batches 1 --no-modes --no-host --no-stored --no-ragged --no-paged-int4 --no-paged-int8 \
    --out "$OUT/bench" > "$OUT/bench.log" 2>&1
tail -12 "$OUT/bench.log"
