#!/usr/bin/env bash
# Second device call: the attention kernels (context passes, own pass + merge) launched with PDL
# too: run.sh's GPU tests and warm-step A/B (2 rounds), then bench ttft (placed, in buffer).
set -u
bash benchmarks/results/ttft_pdl_tail_h200/run.sh 2
PYTHONPATH=$PWD:$PWD/benchmarks:/tmp/pyd timeout 170 python3 -m ragcompress.cli bench ttft --shape llama3-8b \
    --contexts 1024,10240,32768,131072 --repeats 10 --warmup 2 --prefill-repeats 1 --static-compile none \
    --batches 1 --no-modes --no-host --no-stored --no-ragged --no-paged-int4 --no-paged-int8 \
    --out "$OUT/bench" > "$OUT/bench.log" 2>&1
tail -12 "$OUT/bench.log"
