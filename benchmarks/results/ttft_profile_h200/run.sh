#!/usr/bin/env bash
# One device call: bench ttft's placed and in-buffer columns at 1K-128K with --profile (each
# context's placed request, part by part against its own floor: ragcompress_bench/ttft_profile.py).
set -u
. benchmarks/results/device_env.sh
nvidia-smi --query-gpu=name,driver_version --format=csv > "$OUT/gpu.txt" 2>&1
PYTHONPATH=$PWD:$PWD/benchmarks:/tmp/pyd timeout 500 python3 -m ragcompress.cli bench ttft --shape llama3-8b \
    --contexts 1024,10240,32768,131072 --repeats 10 --warmup 2 --prefill-repeats 1 --static-compile none \
    --batches 1 --no-modes --no-host --no-stored --no-paged-int4 --no-paged-int8 --no-ragged --profile \
    --out "$OUT/bench" > "$OUT/bench.log" 2>&1
echo "rc=$?" >> "$OUT/bench.log"
rm -f "$OUT/bench/"*.png
grep -v Warn "$OUT/bench.log" | tail -150
